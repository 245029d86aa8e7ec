"""Per-recipient links and a base URL keep the skeleton cache, byte-identical to premailer.

With ``base_url`` premailer joins every ``href`` and ``src`` to it, which depends on the
whole link. The skeleton cache makes each recipient's link itself (`premailer_link`), so
every comparison here is with premailer run on the recipient's real document: many
generated rows of hostile values (quotes, ``<``, ``&``, ``javascript:``, relative,
absolute and protocol-relative URLs, spaces, non-ASCII), then a hypothesis property.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path
from urllib.parse import urljoin

import jinja2
import pytest
from builders import CampaignDir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bulkmail.compose import links, skeleton
from bulkmail.compose.inline import PremailerInliner
from bulkmail.compose.links import INERT, joined, premailer_link
from bulkmail.compose.render import Renderer
from bulkmail.compose.skeleton import MARKERS, SkeletonInliner, Slotted, Unmarkable, finalize
from bulkmail.compose.textpart import html_to_text
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import Recipient

BASES = ["https://example.com/news/june/", "http://example.org", "https://example.com/a/b?q=1#top"]

# Every kind of place a value can take in a link, and the places around links.
LINKS = """\
<!DOCTYPE html>
<html><head><style>a { color: #9c4a1a; } .note { padding: 4px; }</style></head>
<body>
<p class="note">Hi {{ name }}</p>
<a href="{{ url }}">whole</a>
<a href="https://example.com/u?id={{ id }}&amp;n={{ name | urlencode }}">query</a>
<a href="/p/{{ id }}/{{ name }}">path</a>
<a href='{{ url }}#frag'>single quotes</a>
<a href="  {{ url }}  ">spaced</a>
<a href="#{{ id }}">anchor</a> <a href="tel:{{ id }}">tel</a> <img src="cid:{{ id }}">
<img src="{{ url }}" alt="{{ name }}"> <img src="img/{{ id }}.png">
<a href=x{{ id }}>unquoted</a> <a title={{ name }} href="{{ url }}">unquoted title</a>
<p>&amp{{ id }} and &not{{ name }}</p>
<a href="{{ url }}" title="{{ name }}">{{ url }}</a>
</body></html>
"""

HOSTILE = [
    "", " ", "\t", "x y", "a\nb", "Zoë Lefèvre", "王小明", '"quoted"', "O'Brien", "<b>", "a & b",
    "&amp;", "in;", "amp;", "javascript:alert(1)", "JavaScript:alert(1)", "#top", "tel:123",
    "cid:logo", "../up", "./here", "?q=1", "//evil.example/x", "https://other.example/p?a=1&b=2",
    "HTTPS://EXAMPLE.COM", "mailto:a@example.com", "data:text/html,<x>", "%20%zz", "/abs/path",
    "http://[::1]:8080/x", "a b/c d?e f#g h", "über/straße", "x" * 200, "\\back\\slash",
]  # fmt: skip

ENV = jinja2.Environment(autoescape=True, finalize=finalize)
PLAIN = jinja2.Environment(autoescape=True)


def assert_as_premailer(template: str, rows: list[dict[str, str]], base_url: str | None) -> None:
    """Each row's HTML and text through the cache equal premailer's on its real document."""
    premailer = PremailerInliner(base_url=base_url)
    skeletons = SkeletonInliner(premailer, html_to_text, base_url=base_url, check=0)
    marked, plain = ENV.from_string(template), PLAIN.from_string(template)
    for row in rows:
        try:
            doc = Slotted.split(marked.render(row))
        except Unmarkable:  # a value holds a marker: the renderer inlines the mail whole
            assert any(not MARKERS.isdisjoint(value) for value in row.values())
            continue
        assert doc.document() == plain.render(row)
        want = premailer(doc.document())
        html, text = skeletons(doc)
        assert html == want, row
        assert text == html_to_text(want), row


def hostile_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"url": rng.choice(HOSTILE), "id": rng.choice(HOSTILE), "name": rng.choice(HOSTILE)}
        for _ in range(n)
    ]


@pytest.mark.parametrize("base_url", [None, *BASES])
def test_hostile_links_match_premailer_on_the_real_document(base_url: str | None) -> None:
    assert_as_premailer(LINKS, hostile_rows(400, seed=len(base_url or "")), base_url)


def test_every_hostile_value_in_every_link_place() -> None:
    rows = [{"url": u, "id": i, "name": "Ann"} for u, i in itertools.product(HOSTILE, HOSTILE)]
    assert_as_premailer(LINKS, rows, BASES[0])


def test_per_recipient_links_with_a_base_url_take_the_fast_path() -> None:
    template = """\
<html><head><style>a { color: red; }</style></head><body>
<p><a href="/account?id={{ id }}">Account</a> <a href="{{ url }}">Read</a>
<img src="img/{{ id }}.png" alt=""> <a href="https://example.com/u?e={{ id }}">Unsubscribe</a></p>
</body></html>
"""
    premailer = CountingInliner(BASES[0])
    skeletons = SkeletonInliner(premailer, html_to_text, base_url=BASES[0], check=2)
    marked = ENV.from_string(template)
    for n in range(50):
        row = {"id": f"u{n}", "url": ["page", "https://x.example/", "../up"][n % 3]}
        html, _ = skeletons(Slotted.split(marked.render(row)))
        assert f'href="https://example.com/account?id=u{n}"' in html
        assert f'src="https://example.com/news/june/img/u{n}.png"' in html
    assert (skeletons.stats.misses, skeletons.stats.hits) == (1, 49)
    assert skeletons.stats.slow == skeletons.stats.text_slow == 0
    assert premailer.runs == 1 + 2  # the skeleton, then the first two uses checked


def test_plain_values_go_into_a_links_template_without_a_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Values of letters, digits and the like go straight between the link's escaped
    # template; others (a slash, a quote, an ampersand) are joined link by link. Both
    # equal premailer's output (check=2 and assert_as_premailer check it).
    template = """\
<html><head><style>a { color: red; }</style></head><body>
<p><a href="/members/{{ plan }}?city={{ city }}">Plan</a>
<a href="https://example.com/u?a=1&amp;id={{ plan }}">Fixed ampersand</a></p>
</body></html>
"""
    made: list[tuple[str, ...]] = []

    def counting(link: object, values: tuple[str, ...], base_url: str) -> str:
        made.append(values)
        return made_link(link, values, base_url)

    made_link = skeleton._made_link
    monkeypatch.setattr(skeleton, "_made_link", counting)
    premailer = PremailerInliner(base_url=BASES[0])
    skeletons = SkeletonInliner(premailer, html_to_text, base_url=BASES[0])
    marked = ENV.from_string(template)
    rows = [
        {"plan": "gold", "city": "Berlin"},
        {"plan": "p%20x", "city": "a.b-c_d~e!f$g(h)i*j+k,l=m@n"},
        {"plan": "a/b", "city": "Rome"},  # a slash: joined
        {"plan": "silver", "city": "O'Brien"},  # a quote: the whole mail inlined afresh
        {"plan": "x&y", "city": "Oslo"},  # an ampersand: escaped, joined
        {"plan": "..", "city": "Lyon"},  # a dot segment: joined
    ]
    first, *_ = [skeletons(Slotted.split(marked.render(row)))[0] for row in rows]
    assert 'href="https://example.com/members/gold?city=Berlin"' in first
    assert skeletons.stats.slow == 1
    # The second link's fixed part holds "&amp;": every value of it takes the join.
    assert made == [
        ("gold",),
        ("p%20x",),
        ("a/b", "Rome"),
        ("a/b",),
        ("x&amp;y", "Oslo"),
        ("x&amp;y",),
        ("..", "Lyon"),
        ("..",),
    ]
    assert_as_premailer(template, rows, BASES[0])


class CountingInliner:
    def __init__(self, base_url: str) -> None:
        self.premailer = PremailerInliner(base_url=base_url)
        self.runs = 0

    def __call__(self, html: str) -> str:
        self.runs += 1
        return self.premailer(html)


@pytest.mark.parametrize(
    ("attribute", "url", "joined"),
    [
        ("href", "#top", "#top"),
        ("href", "tel:123", "tel:123"),
        ("src", "#top", "https://example.com/news/#top"),  # only links keep anchors
        ("src", "cid:logo", "cid:logo"),
        ("href", "cid:logo", "cid:logo"),  # a scheme: urljoin keeps it
        ("href", "page?x=1", "https://example.com/news/page?x=1"),
        ("href", "//evil.example/x", "https://evil.example/x"),
        ("href", "javascript:alert(1)", "javascript:alert(1)"),
    ],
)
def test_premailer_link_follows_premailers_rules(attribute: str, url: str, joined: str) -> None:
    assert premailer_link(attribute, url, "https://example.com/news/") == joined
    page = f'<html><body><a {attribute}="{url}">x</a></body></html>'
    out = PremailerInliner(base_url="https://example.com/news/")(page)
    assert f'{attribute}="{joined}"' in out


def test_a_campaign_with_a_base_url_and_row_links_through_the_renderer(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template(
        "issue.html",
        "<html><head><style>p { margin: 0; }</style></head><body>"
        '<p>Hi {{ first_name }}: <a href="{{ link }}">yours</a>, '
        '<a href="/u?e={{ email | urlencode }}">unsubscribe</a></p></body></html>',
    )
    rng = random.Random(3)
    c.csv(
        [
            {"email": f"u{i}@example.com", "first_name": f"U{i}", "link": rng.choice(HOSTILE)}
            for i in range(120)
        ]
    )
    campaign = load_campaign(c.write(base_url=BASES[0]))
    fast, slow = Renderer.load(campaign), Renderer.load(campaign, fast=False)
    assert fast.skeletons is not None
    fast.skeletons._check = 0  # no safety net: the fast path alone must be exact
    for recipient in iter_recipients(campaign.recipients):
        assert isinstance(recipient, Recipient)
        got, want = fast.render(recipient), slow.render(recipient)
        assert (got.html, got.text) == (want.html, want.text), recipient.line
    # One skeleton, and one for each blank link (a blank value stays in the skeleton).
    assert fast.skeletons.stats.misses <= 1 + 3, fast.skeletons.stats


# --- a property ---------------------------------------------------------------------------

URLISH = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.sampled_from("aZ09 ./?#&=:%;'\"<>éü王\\-_~@!$()*+,"), max_size=12),
    # Not other control characters: premailer itself raises on them in a link it joins.
    st.text(st.characters(exclude_categories=("Cc", "Cs")) | st.sampled_from("\t\n"), max_size=8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(URLISH, min_size=3, max_size=3),
    base=st.sampled_from([None, *BASES]),
)
@example(parts=["", "", "\ue000"], base=None)  # a marker character: inlined whole
def test_any_values_in_links_match_premailer(parts: list[str], base: str | None) -> None:
    url, id_, name = parts
    rows = [{"url": url, "id": id_, "name": name}, {"url": id_, "id": name, "name": url}]
    assert_as_premailer(LINKS, rows, base)


def test_raw_values_where_autoescape_is_off_match_premailer() -> None:
    template = (
        "<html><body>{% autoescape false %}<p>Hi {{ name }}in; {{ id }}</p>"
        '<a href="{{ url }}" title="{{ id }}">x</a> <a href="/p/{{ name }}">y</a>'
        "{% endautoescape %}</body></html>"
    )
    rows = [
        {"name": name, "id": id_, "url": url}
        for name, id_, url in zip(
            ["<b>bold", "a</p>b", "&lt", "x &amp", "<!--", "Ann", "O'Neil"],
            ["&not", "&#3", "&", "in;", "ok", "1", "2"],
            ["a<b", "/x?a=1&b", "&amp", "#x", "j>", "p", "q"],
            strict=True,
        )
    ]
    for base in [None, BASES[0]]:
        assert_as_premailer(template, rows, base)


# --- the link template (bulkmail.compose.links) against urljoin itself --------------------

PIECE = st.text(st.sampled_from("aZ09 ./?#&=:%;[]@\\-_~!$'()*+,élT\t"), max_size=10)
# Mostly values the template takes (inert), with every character that could stop it.
VALUE = st.one_of(
    st.text(st.sampled_from(sorted(INERT)), min_size=1, max_size=8),
    st.text(st.sampled_from("aB9.:/?#;[] %é\t"), max_size=6),
    st.sampled_from([".", "..", "...", "x", "Bm0Q", "tel", "l", "d", "EXAMPLE"]),
)
JOIN_BASES = [*BASES, "http://EXAMPLE.com", "https://example.com/a/./b/../c;p?q#f"]


SCHEMES = ["", "https://example.com", "http://a.example:80", "https:", "HTTP://x.y", "//x.y"]
FIRST = st.builds(str.__add__, st.sampled_from(SCHEMES), PIECE)
REST = st.lists(PIECE, min_size=1, max_size=3)
FIXED = st.builds(lambda first, rest: [first, *rest], FIRST, REST)


@settings(max_examples=3000, deadline=None)
@given(
    fixed=FIXED,
    values=st.lists(VALUE, min_size=3, max_size=3),
    attribute=st.sampled_from(["href", "src"]),
    base=st.sampled_from(JOIN_BASES),
)
def test_a_links_template_joins_as_urljoin_does(
    fixed: list[str], values: list[str], attribute: str, base: str
) -> None:
    parts, vals = fixed, values[: len(fixed) - 1]
    url = "".join(itertools.chain.from_iterable(zip(parts, [*vals, ""], strict=True)))
    try:
        want = premailer_link(attribute, url, base)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            joined(attribute, parts, vals, base)
        return
    assert joined(attribute, parts, vals, base) == want


@pytest.mark.parametrize(
    ("parts", "values"),
    [
        (["/members/", "?city=", ""], ["gold", "Berlin"]),
        (["https://example.com/account?id=", ""], ["anna.schmidt%40example.com"]),
        (["img/", ".png"], ["u42"]),
        (["te", ":1"], ["l"]),  # a tel: link once the value is in: not a template
        (["/a/", "/../b"], ["x"]),  # the value's segment is dropped: not a template
        (["h", "://example.com/"], ["ttps"]),  # the value in a scheme (lowered)
        (["/p/", ""], ["..", "."]),  # dot segments: joined one by one
        (["/p/", "/q"], ["a/b"]),  # a slash: joined one by one
        # Whole links: left as they are only if urljoin would write them so.
        *(
            (["", ""], [url])
            for url in (
                "https://example.com?",
                "https://example.com/p#",
                "https://example.com/a;b",
                "https://example.com/a;",
                "https://example.com/./a",
                "https://example.com/a/..",
                "HTTPS://example.com/",
                "https://[::1]/x",
                "https://example.com:/x",
                "http://example.com/p?q=1#f",
                "https://example.com/p?q=1#f",
                " https://x.y/",
                "https://x.y/ a",
                "https://x.y/é",
                "https:x",
                "https:///x",
                "https://x.y//z",
            )
        ),
    ],
)
def test_template_edge_cases_match_urljoin(parts: list[str], values: list[str]) -> None:
    values = values[: len(parts) - 1]
    url = "".join(itertools.chain.from_iterable(zip(parts, [*values, ""], strict=True)))
    for base in JOIN_BASES:
        for attribute in ("href", "src"):
            assert joined(attribute, parts, values, base) == premailer_link(attribute, url, base)


def test_per_recipient_links_are_joined_once_per_link(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(base: str, url: str) -> str:
        calls.append(url)
        return urljoin(base, url)

    monkeypatch.setattr(links, "urljoin", counting)
    links._template.cache_clear()
    base = "https://example.com/news/june/"
    for n in range(200):
        assert joined("href", ["/members/", "?city=", ""], [f"plan{n}", f"C{n}"], base) == (
            f"https://example.com/members/plan{n}?city=C{n}"
        )
        whole = f"https://example.com/unsubscribe?t={n}&u=x%40y"
        assert joined("href", ["", ""], [whole], base) == whole  # already as urljoin writes it
    assert calls == ["/members/Bm0Q?city=Bm1Q"]
