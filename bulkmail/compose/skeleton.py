"""Inline CSS once per document skeleton instead of once per recipient, with identical output.

premailer costs ~10 ms a mail, almost all of it parsing CSS, matching selectors and
serialising, work that depends only on the document's elements, not on the personal
values in its text and links. So the HTML template is rendered with every ``{{ value }}``
marked (a Jinja ``finalize`` hook), the marked values are cut out, and what is left, the
*skeleton*, is the cache key: premailer runs once per distinct skeleton, on the skeleton
with a token in place of each value, and each recipient's HTML is the inlined skeleton
with the tokens replaced by the values as premailer would have written them.

That is exactly premailer's output only where a value cannot change what premailer does.
A token may stand in plain text or a comment, or in an attribute that no selector or
premailer rule reads. A value anywhere else (a ``class``, ``id`` or ``style``, a
presentational attribute, an attribute named in an ``[attr]`` selector, ``<style>``,
``<script>``, ``<title>``, the start of a link premailer joins to the base URL) is kept
in the skeleton as it is, and so becomes part of the cache key: ``class="{{ 'vip' if
member }}"`` costs one premailer run per distinct class. CSS with a text-dependent
selector (``:empty``, ``:contains``) turns the cache off for that skeleton. Values that
are empty or blank, or hold markup (``|safe``), stay in the skeleton too; a value whose
characters a parser might treat specially (control characters, CR), or that holds quotes
in an attribute, takes the slow path. Each value is serialised by lxml itself, in the
same kind of place, so escaping (``&amp;``, and the URI-escaping libxml2 applies to
``href``) matches. Finally the first uses of every skeleton are checked against premailer
on the real document; one difference and that skeleton is never used again.

The text part is made the same way: the inlined skeleton is converted once, and each
recipient's text is that with the values put in, wherever that provably equals converting
the recipient's own HTML (`SkeletonInliner._text`); elsewhere their HTML is converted.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from markupsafe import Markup

# Wrap each personal value in the marked rendering. Private-use characters: a template or
# value that contains them is not split (see Renderer), so they can never be confused.
OPEN, CLOSE = "\ue000", "\ue001"
MARKERS = frozenset(OPEN + CLOSE)
_MARKED = re.compile(f"{OPEN}(.*?){CLOSE}", re.DOTALL)

# Characters a parser may drop or normalise, so that a value holding them could serialise
# differently in the real document than on its own.
_RISKY = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufdd0-\ufdef\ufffe\uffff]")
COMMENT = "<!--"
_RAW_TEXT = frozenset({"style", "script", "title", "textarea", "xmp", "iframe", "noscript"})
# Attributes premailer reads or writes besides the style-related ones.
_PRESENTATIONAL = frozenset(
    {"width", "height", "align", "valign", "bgcolor", "border", "cellpadding",
     "cellspacing", "background", "color", "face", "size"}
)  # fmt: skip
_ALWAYS_STRUCTURAL = frozenset({"class", "id", "style"})
_TEXT_SELECTORS = re.compile(r":(empty|contains|blank|-?\w*-?contains)", re.IGNORECASE)
_ATTR_SELECTOR = re.compile(r"\[\s*([\w:-]+)")
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)
_QUOTES = re.compile(r"[\"']|&#34;|&#39;|&quot;")
_ABSOLUTE = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*:")


def finalize(value: object) -> object:
    """Jinja ``finalize`` hook for the marked rendering: wrap each personal value."""
    if isinstance(value, Markup):
        return value  # markup from |safe is structure: it stays in the skeleton
    text = str(value)
    if not text.strip() or not MARKERS.isdisjoint(text):
        return text  # blank values shape the document (empty elements); see module doc
    return f"{OPEN}{text}{CLOSE}"


@dataclass(frozen=True)
class Slotted:
    """A marked rendering cut into literal skeleton parts and the (escaped) values."""

    literals: tuple[str, ...]  # one more than values
    values: tuple[str, ...]

    @classmethod
    def split(cls, marked: str) -> Slotted:
        parts = _MARKED.split(marked)
        return cls(tuple(parts[0::2]), tuple(parts[1::2]))

    def document(self) -> str:
        """The real document: exactly what rendering without marks gives."""
        out = [self.literals[0]]
        for value, literal in zip(self.values, self.literals[1:], strict=True):
            out += (value, literal)
        return "".join(out)


@dataclass(frozen=True)
class _Place:
    """Where a token ended up in premailer's output."""

    attribute: str | None  # None: in text (or a comment)
    tag: str  # the element, or COMMENT


@dataclass
class _Entry:
    """One skeleton: premailer's output cut at the tokens, or None if it can't be used."""

    pieces: tuple[str, ...] | None
    order: tuple[int, ...] = ()  # slot index for each gap between pieces
    places: dict[int, _Place] = field(default_factory=dict)
    checks_left: int = 0
    text: tuple[tuple[str, ...], tuple[int, ...]] | None = None  # the text part, cut likewise


@dataclass
class Stats:
    """How the fast path fared, for benchmarks and tests."""

    hits: int = 0
    misses: int = 0
    slow: int = 0  # recipients whose HTML was inlined whole
    unusable: int = 0  # skeletons that can't be used (or failed their check)
    checked: int = 0
    text_slow: int = 0  # recipients whose text part was converted from their own HTML


_Key = tuple[tuple[str, ...], tuple[str, ...]]


class SkeletonInliner:
    """Inlines a `Slotted` document through a cache of inlined skeletons.

    A value that lands where premailer looks (a ``class``, a ``<style>`` block, a link
    rewritten against the base URL...) is kept in the skeleton as it is: the cache key is
    the literal text plus those values, so ``class="{{ 'vip' if member }}"`` costs one
    premailer run per distinct class, not one per recipient.

    ``inline`` is the real inliner (premailer, configured); ``to_text`` makes the text
    part from inlined HTML. ``check`` is how many uses of each new skeleton are compared
    with ``inline`` on the real document; ``max_entries`` bounds each cache.
    """

    def __init__(
        self,
        inline: Callable[[str], str],
        to_text: Callable[[str], str],
        *,
        base_url: str | None = None,
        check: int = 2,
        max_entries: int = 256,
    ) -> None:
        self._inline = inline
        self._to_text = to_text
        self._base_url = base_url
        self._check = check
        self._max = max_entries
        # literal parts -> the slots whose values must stay in the skeleton (None: unusable)
        self._layouts: OrderedDict[tuple[str, ...], tuple[int, ...] | None] = OrderedDict()
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._nonce = secrets.token_hex(4)
        self._pattern = re.compile(f"bm{self._nonce}s(\\d+)e")
        self.stats = Stats()

    def __call__(self, doc: Slotted) -> tuple[str, str]:
        """The inlined HTML and the text part of one recipient's document."""
        fixed = self._layout(doc)
        if fixed is None:
            return self._slow(doc)
        entry = self._entry(doc, fixed)
        values = doc.values
        if entry.pieces is None or not self._values_fit(entry, values):
            return self._slow(doc)
        places = entry.places  # the kept values are part of the pieces: "" for their slots
        written = [
            self._serialise(places[i], v) if i in places else "" for i, v in enumerate(values)
        ]
        inlined = _join(entry.pieces, entry.order, written)
        if entry.checks_left > 0:
            entry.checks_left -= 1
            self.stats.checked += 1
            expected = self._inline(doc.document())
            if inlined != expected:
                entry.pieces = None
                self.stats.unusable += 1
                self.stats.slow += 1
                return expected, self._to_text(expected)
        return inlined, self._text(entry, written, inlined)

    # --- the caches --------------------------------------------------------------------

    def _layout(self, doc: Slotted) -> tuple[int, ...] | None:
        if doc.literals in self._layouts:
            self._layouts.move_to_end(doc.literals)
            return self._layouts[doc.literals]
        layout = self._find_layout(doc)
        _put(self._layouts, doc.literals, layout, self._max)
        return layout

    def _find_layout(self, doc: Slotted) -> tuple[int, ...] | None:
        """The slots whose values must stay in the skeleton, or None if none can be cut."""
        skeleton = self._skeleton(doc, ())
        structural = self._structural(skeleton)
        if structural is None:
            return None
        found = self._places(skeleton, structural)
        if found is None:
            return None
        return tuple(sorted(found[1]))

    def _entry(self, doc: Slotted, fixed: tuple[int, ...]) -> _Entry:
        key = (doc.literals, tuple(doc.values[i] for i in fixed))
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry
        self.stats.misses += 1
        entry = self._analyse(doc, fixed)
        if entry.pieces is None:
            self.stats.unusable += 1
        _put(self._entries, key, entry, self._max)
        return entry

    def _token(self, index: int) -> str:
        # Letters and digits only: no parser, serialiser or URI escaper changes them.
        return f"bm{self._nonce}s{index}e"

    def _skeleton(self, doc: Slotted, fixed: tuple[int, ...]) -> str:
        slots = [v if i in fixed else self._token(i) for i, v in enumerate(doc.values)]
        return _join(doc.literals, tuple(range(len(slots))), slots)

    def _structural(self, skeleton: str) -> frozenset[str] | None:
        """The attributes premailer's rules read, or None if its CSS reads text."""
        css = " ".join(_STYLE_BLOCK.findall(skeleton))
        if _TEXT_SELECTORS.search(css):
            return None
        names = {name.lower() for name in _ATTR_SELECTOR.findall(css)}
        return _ALWAYS_STRUCTURAL | _PRESENTATIONAL | names

    def _analyse(self, doc: Slotted, fixed: tuple[int, ...]) -> _Entry:
        skeleton = self._skeleton(doc, fixed)
        structural = self._structural(skeleton)
        found = self._places(skeleton, structural) if structural is not None else None
        if found is None or found[1]:
            return _Entry(None)  # the kept values changed what is safe: no fast path
        places = found[0]
        out = self._inline(skeleton)
        cut = self._pattern.split(out)
        pieces, order = tuple(cut[0::2]), tuple(int(n) for n in cut[1::2])
        if sorted(order) != sorted(places):
            return _Entry(None)  # a token was dropped or repeated
        return _Entry(pieces, order, places, checks_left=self._check)

    def _places(
        self, skeleton: str, structural: frozenset[str]
    ) -> tuple[dict[int, _Place], set[int]] | None:
        """Where each token stands in the parsed skeleton: the safe places, and the slots
        that are not safe to cut out. None if the skeleton can't be parsed."""
        root = etree.fromstring(skeleton, etree.HTMLParser())
        if root is None:
            return None
        places: dict[int, _Place] = {}
        unsafe: set[int] = set()

        def slots(text: str) -> list[int]:
            return [int(n) for n in self._pattern.findall(text)]

        for node in root.iter():
            if not isinstance(node.tag, str):
                # A comment is written back as it was read; anything else is unusual.
                is_comment = node.tag is etree.Comment
                for n in slots(etree.tostring(node, encoding="unicode")):
                    if is_comment:
                        places[n] = _Place(None, COMMENT)
                    else:
                        unsafe.add(n)
                for n in slots(node.tail or ""):
                    places[n] = _Place(None, _parent_tag(node))
                continue
            tag = node.tag.lower()
            unsafe.update(slots(tag))
            for text, owner in ((node.text, tag), (node.tail, _parent_tag(node))):
                if text:
                    for n in slots(text):
                        if owner in _RAW_TEXT:
                            unsafe.add(n)
                        else:
                            places[n] = _Place(None, owner)
            for name, value in node.attrib.items():
                name = name.lower()
                unsafe.update(slots(name))
                found = slots(value)
                if not found:
                    continue
                if name in structural or name.startswith("on"):
                    unsafe.update(found)
                    continue
                if name in ("href", "src") and self._base_url:
                    # premailer joins the link to the base URL unless it is absolute, so
                    # whatever decides that (the start of the link) must stay.
                    prefix = value[: value.index(self._token(found[0]))]
                    if not _ABSOLUTE.match(prefix):
                        unsafe.add(found.pop(0))
                for n in found:
                    places[n] = _Place(name, tag)
        for n in unsafe:
            places.pop(n, None)
        missing = set(slots(skeleton)) - places.keys() - unsafe
        unsafe |= missing  # dropped by the parser: keep its value in the skeleton
        return places, unsafe

    # --- per recipient -----------------------------------------------------------------

    def _values_fit(self, entry: _Entry, values: tuple[str, ...]) -> bool:
        for i, value in enumerate(values):
            if i not in entry.places:
                continue  # kept in the skeleton as it is
            if _RISKY.search(value) or "\r" in value:
                return False
            if entry.places[i].tag == COMMENT and "-" in value:
                return False  # "--" could end or upset the comment
            if entry.places[i].attribute is not None and (
                value != value.strip()
                or "&#34;" in value
                or "&#39;" in value
                or '"' in value
                or "'" in value
            ):
                return False
        return True

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _serialise(place: _Place, value: str) -> str:
        """How lxml writes ``value`` (as escaped in the document) in such a place."""
        if place.tag == COMMENT:
            return value
        if place.attribute is None:
            page = f"<html><body><p>{value}</p></body></html>"
            out = _tostring(page)
            start = out.index("<p>") + 3
            return out[start : out.rindex("</p>")]
        tag = "a" if place.tag == "a" else "span"
        page = f'<html><body><{tag} {place.attribute}="{value}">x</{tag}></body></html>'
        out = _tostring(page)
        start = out.index(f'{place.attribute}="') + len(place.attribute) + 2
        return out[start : out.index('">x<', start)]

    def _slow(self, doc: Slotted) -> tuple[str, str]:
        self.stats.slow += 1
        inlined = self._inline(doc.document())
        return inlined, self._to_text(inlined)

    def _text(self, entry: _Entry, written: list[str], inlined: str) -> str:
        """The text part: the skeleton's text with each value put in, or, if that is not
        provably what converting ``inlined`` gives, the conversion of ``inlined`` itself.

        ``to_text`` never measures, aligns or compares text (bulkmail.compose.textpart), so a value
        changes its output only through how white space around and inside it folds, and
        through a link that starts with ``#``. A token is a single word; a value shown as
        it is parsed, non-empty, without white space at its ends or other than single
        spaces inside, and not starting with ``#``, folds exactly like a word in every
        place (text, ``<pre>``, a link's URL). Any other value takes the slow path.
        """
        if entry.text is None:
            assert entry.pieces is not None
            tokens = [self._token(i) for i in range(len(written))]
            text = self._to_text(_join(entry.pieces, entry.order, tokens))
            cut = self._pattern.split(text)
            entry.text = (tuple(cut[0::2]), tuple(int(n) for n in cut[1::2]))
        pieces, order = entry.text
        shown = [""] * len(written)
        for i in order:
            value = _shown(entry.places[i], written[i]) if i in entry.places else None
            if value is None:
                self.stats.text_slow += 1
                return self._to_text(inlined)
            shown[i] = value
        return _join(pieces, order, shown)


def _put(cache: OrderedDict[Any, Any], key: object, value: object, limit: int) -> None:
    cache[key] = value
    if len(cache) > limit:
        cache.popitem(last=False)


def _tostring(html: str) -> str:
    root = etree.fromstring(html, etree.HTMLParser())
    return str(etree.tostring(root, method="html", encoding="utf-8", pretty_print=True).decode())


def _parent_tag(node: etree._Element) -> str:
    parent = node.getparent()
    return parent.tag.lower() if parent is not None and isinstance(parent.tag, str) else ""


def _join(pieces: tuple[str, ...], order: tuple[int, ...], values: list[str]) -> str:
    out = [pieces[0]]
    for slot, piece in zip(order, pieces[1:], strict=True):
        out += (values[slot], piece)
    return "".join(out)


_WHITESPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=4096)
def _shown(place: _Place, written: str) -> str | None:
    """A value as the text converter reads it in ``place`` (``written`` is how it stands
    in the HTML), if it folds like a single word there; else None."""
    if place.tag == COMMENT:
        return None  # never shown: a token from a comment in the text is a surprise
    if place.attribute is None:
        root = etree.fromstring(f"<html><body><p>{written}</p></body></html>", etree.HTMLParser())
        value = "".join(root.itertext())
    elif place.attribute == "href" and place.tag == "a":
        root = etree.fromstring(
            f'<html><body><a href="{written}">x</a></body></html>', etree.HTMLParser()
        )
        value = root.find(".//a").get("href", "")
        if value.startswith("#"):
            return None  # an anchor: the converter shows no URL
    else:
        return None  # the converter shows no other attribute
    if not value or value != value.strip() or _WHITESPACE.sub(" ", value) != value:
        return None
    return value
