"""The skeleton cache's safety net and its bound.

The fast path is only as good as the claim that an inlined skeleton with the values put
back equals premailer on the real document. The first uses of each skeleton are checked
against the real inliner; a skeleton that fails once is never used again, and the mail
that revealed it gets the real output. And however many skeletons a campaign makes, the
cache holds at most ``max_entries`` of them, the least recently used going first.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.compose.inline import PremailerInliner
from bulkmail.compose.skeleton import (
    CLOSE,
    OPEN,
    SkeletonInliner,
    Slotted,
    _attribute_value,
    _attribute_value_parsed,
    _Place,
    _read,
    _shown,
    _written,
)
from bulkmail.compose.textpart import html_to_text

PAGE = """\
<!DOCTYPE html>
<html><head><style>p.greeting {{ color: #c0392b; }}</style></head>
<body><p class="greeting">Hello {name}, from {city}!</p><p>{section}</p></body></html>
"""


def doc(name: str, city: str = "Lyon", section: str = "News") -> Slotted:
    """A recipient's marked rendering of PAGE: the values ``name`` and ``city`` are
    personal; ``section`` is part of the literal text, so each section is a new skeleton."""
    marked = PAGE.format(name=f"{OPEN}{name}{CLOSE}", city=f"{OPEN}{city}{CLOSE}", section=section)
    return Slotted.split(marked)


class Inliner:
    """premailer, recording each document it is given; for a document holding ``odd``,
    its output carries one more comment, as if premailer treated that value differently."""

    def __init__(self, odd: str | None = None) -> None:
        self.premailer = PremailerInliner()
        self.odd = odd
        self.documents: list[str] = []

    def __call__(self, html: str) -> str:
        self.documents.append(html)
        out = self.premailer(html)
        if self.odd is not None and self.odd in html:
            out = out.replace("</body>", "<!-- treated differently --></body>")
        return out

    def real_runs(self, value: str) -> int:
        """How many times a recipient's real document (holding ``value``) was inlined."""
        return sum(value in document for document in self.documents)


# --- the check against the real document -------------------------------------------------


def test_the_fast_path_matches_premailer_when_nothing_is_odd() -> None:
    inliner = Inliner()
    skeletons = SkeletonInliner(inliner, html_to_text)

    for name in ["Ann", "Bob", "Cy", "Dee"]:
        html, text = skeletons(doc(name))
        real = PremailerInliner()(doc(name).document())
        assert html == real
        assert text == html_to_text(real)

    assert skeletons.stats.misses == 1
    assert skeletons.stats.checked == 2  # the first two uses, then trusted
    assert skeletons.stats.unusable == 0
    assert skeletons.stats.slow == 0
    assert inliner.real_runs("Cy") == inliner.real_runs("Dee") == 0  # the fast path


def test_a_skeleton_that_differs_from_premailer_once_is_never_used_again() -> None:
    inliner = Inliner(odd="Bob")
    skeletons = SkeletonInliner(inliner, html_to_text, check=2)

    ann = skeletons(doc("Ann"))  # checked: matches
    bob = skeletons(doc("Bob"))  # checked: the real output differs
    later = [skeletons(doc(name)) for name in ["Cy", "Dee", "Ann"]]

    # Bob gets what the real inliner made of his document, and the text made from it.
    bobs_real = inliner(doc("Bob").document())
    assert "<!-- treated differently -->" in bobs_real
    assert bob == (bobs_real, html_to_text(bobs_real))
    # The skeleton is dropped: everyone after Bob is inlined whole, on their own document.
    for name, (html, text) in zip(["Cy", "Dee", "Ann"], later, strict=True):
        real = PremailerInliner()(doc(name).document())
        assert (html, text) == (real, html_to_text(real))
    assert inliner.real_runs("Cy") == inliner.real_runs("Dee") == 1
    assert inliner.real_runs("Ann") == 2  # its check, then the slow path
    assert ann[0] == PremailerInliner()(doc("Ann").document())
    assert skeletons.stats.unusable == 1
    assert skeletons.stats.checked == 2  # no more checks: nothing left to check
    assert skeletons.stats.slow == 4  # Bob, then Cy, Dee and Ann
    assert skeletons.stats.hits == 4  # the entry is found, and found unusable


def test_a_mismatch_condemns_only_its_own_skeleton() -> None:
    inliner = Inliner(odd="Bob")
    skeletons = SkeletonInliner(inliner, html_to_text, check=1)

    skeletons(doc("Bob", section="News"))  # the News skeleton fails its check
    skeletons(doc("Bob", section="Events"))  # so does the Events one: same odd value
    skeletons(doc("Ann", section="Letters"))  # Letters passes its check
    skeletons(doc("Cy", section="Letters"))

    assert skeletons.stats.unusable == 2
    assert inliner.real_runs("Cy") == 0  # Letters is still fast


# --- the bound on the cache --------------------------------------------------------------


def test_the_cache_keeps_at_most_max_entries_skeletons_dropping_the_least_recently_used() -> None:
    inliner = Inliner()
    skeletons = SkeletonInliner(inliner, html_to_text, check=0, max_entries=2)

    def use(section: str) -> None:
        name = f"R{len(inliner.documents)}"
        html, _ = skeletons(doc(name, section=section))
        assert html == PremailerInliner()(doc(name, section=section).document())

    use("A")
    use("B")
    use("A")  # a hit: A is now the most recently used
    assert (skeletons.stats.misses, skeletons.stats.hits) == (2, 1)

    use("C")  # the third skeleton: B, least recently used, is dropped
    use("A")  # still cached
    assert (skeletons.stats.misses, skeletons.stats.hits) == (3, 2)

    use("B")  # dropped, so analysed (and premailer run on its skeleton) again
    assert (skeletons.stats.misses, skeletons.stats.hits) == (4, 2)
    skeleton_runs = sum("bm" in document for document in inliner.documents)
    assert skeleton_runs == 4  # one premailer run per analysis, none per recipient
    assert skeletons.stats.slow == 0


def test_a_campaign_of_many_skeletons_stays_correct_through_evictions() -> None:
    skeletons = SkeletonInliner(PremailerInliner(), html_to_text, check=0, max_entries=3)
    sections = [f"Section {i % 7}" for i in range(30)]

    for i, section in enumerate(sections):
        html, _ = skeletons(doc(f"R{i}", section=section))
        assert html == PremailerInliner()(doc(f"R{i}", section=section).document())

    assert skeletons.stats.misses + skeletons.stats.hits == 30
    assert skeletons.stats.misses > 7  # skeletons were dropped and made again


# --- values written without a parse ---------------------------------------------------------

PLACES = [
    _Place(None, "p"), _Place(None, "td"), _Place("href", "a"), _Place("href", "link"),
    _Place("src", "img"), _Place("title", "span"), _Place("alt", "img"), _Place("name", "a"),
    _Place(None, "title"),
]  # fmt: skip


# As values stand in the document: escaped, so no raw quote or angle bracket.
ESCAPED = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\"'<>")


@settings(max_examples=400, deadline=None)
@given(st.text(ESCAPED, max_size=12))
def test_values_written_without_a_parse_are_what_lxml_writes(value: str) -> None:
    for place in PLACES:
        assert SkeletonInliner._serialise(place, value) == _written(place, value), place
        shown = _shown(place, value)
        assert shown is None or shown == _read(place, value), place
    assert _attribute_value(value) == _attribute_value_parsed(value)


@given(st.lists(st.text(st.sampled_from(["a", " ", "<", "&"]), max_size=6), max_size=8))
def test_a_marked_rendering_splits_into_its_values_and_back(chunks: list[str]) -> None:
    """Every other chunk a value, marked unless blank (`finalize`): the split gives back
    each marked value whole, and the literal text between them as it was."""
    marked = "".join(
        f"{OPEN}{chunk}{CLOSE}" if i % 2 and chunk.strip() else chunk
        for i, chunk in enumerate(chunks)
    )
    doc = Slotted.split(marked)
    assert list(doc.values) == [c for i, c in enumerate(chunks) if i % 2 and c.strip()]
    rebuilt = [doc.literals[0]]
    for value, literal in zip(doc.values, doc.literals[1:], strict=True):
        rebuilt += (OPEN, value, CLOSE, literal)
    assert "".join(rebuilt) == marked
