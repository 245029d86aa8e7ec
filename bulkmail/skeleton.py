"""Inline CSS once per document skeleton instead of once per recipient, with identical output.

premailer costs ~10 ms a mail, almost all of it parsing CSS, matching selectors and
serialising, work that depends only on the document's elements, not on the personal
values in its text and links. So the HTML template is rendered with every ``{{ value }}``
marked (a Jinja ``finalize`` hook), the marked values are cut out, and what is left, the
*skeleton*, is the cache key: premailer runs once per distinct skeleton, on the skeleton
with a token in place of each value, and each recipient's HTML is the inlined skeleton
with the tokens replaced by the values as premailer would have written them.

That is exactly premailer's output only where a value cannot change what premailer does.
A skeleton is used only if every token sits in plain text (not in ``<style>``, ``<script>``
or a comment) or in an attribute that no selector or premailer rule reads (``class``,
``id``, ``style``, presentational attributes and attributes named in ``[attr]`` selectors
are out; ``href``/``src`` only behind an absolute URL prefix when links are rewritten
against a base URL), and if the CSS has no text-dependent selector (``:empty``,
``:contains``). Values that are empty or blank, or hold markup (``|safe``), stay in the
skeleton as they are; a value whose characters a parser might treat specially (control
characters, CR) or that holds quotes in an attribute, takes the slow path. Each value is
serialised by lxml itself, in the same kind of place, so escaping (``&amp;``, and the
URI-escaping libxml2 applies to ``href``) matches. Finally the first uses of every
skeleton are checked against premailer on the real document; one difference and that
skeleton is never used again.
"""

from __future__ import annotations

import functools
import html
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

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

    attribute: str | None  # None: in text
    tag: str


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


class SkeletonInliner:
    """Inlines a `Slotted` document through a cache of inlined skeletons.

    ``inline`` is the real inliner (premailer, configured); ``to_text`` makes the text
    part from inlined HTML. ``check`` is how many uses of each new skeleton are compared
    with ``inline`` on the real document; ``max_entries`` bounds the cache.
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
        self._cache: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()
        self._nonce = secrets.token_hex(4)
        self.stats = Stats()

    def __call__(self, doc: Slotted) -> tuple[str, str]:
        """The inlined HTML and the text part of one recipient's document."""
        entry = self._entry(doc)
        values = doc.values
        if entry.pieces is None or not self._values_fit(entry, values):
            return self._slow(doc)
        html = _join(
            entry.pieces,
            entry.order,
            [self._serialise(entry.places[i], v) for i, v in enumerate(values)],
        )
        if entry.checks_left > 0:
            entry.checks_left -= 1
            self.stats.checked += 1
            expected = self._inline(doc.document())
            if html != expected:
                entry.pieces = None
                self.stats.unusable += 1
                self.stats.slow += 1
                return expected, self._to_text(expected)
        text = self._text(entry, values)
        return html, text

    # --- the cache ---------------------------------------------------------------------

    def _entry(self, doc: Slotted) -> _Entry:
        entry = self._cache.get(doc.literals)
        if entry is not None:
            self._cache.move_to_end(doc.literals)
            self.stats.hits += 1
            return entry
        self.stats.misses += 1
        entry = self._analyse(doc)
        if entry.pieces is None:
            self.stats.unusable += 1
        self._cache[doc.literals] = entry
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return entry

    def _token(self, index: int) -> str:
        # Letters and digits only: no parser, serialiser or URI escaper changes them.
        return f"bm{self._nonce}s{index}e"

    def _analyse(self, doc: Slotted) -> _Entry:
        tokens = [self._token(i) for i in range(len(doc.values))]
        skeleton = _join(doc.literals, tuple(range(len(tokens))), tokens)
        css = " ".join(_STYLE_BLOCK.findall(skeleton))
        if _TEXT_SELECTORS.search(css):
            return _Entry(None)
        structural = _ALWAYS_STRUCTURAL | _PRESENTATIONAL
        structural |= {name.lower() for name in _ATTR_SELECTOR.findall(css)}
        places = self._places(skeleton, tokens, structural)
        if places is None:
            return _Entry(None)
        out = self._inline(skeleton)
        pattern = re.compile(f"bm{self._nonce}s(\\d+)e")
        cut = pattern.split(out)
        pieces, order = tuple(cut[0::2]), tuple(int(n) for n in cut[1::2])
        if sorted(order) != list(range(len(tokens))):
            return _Entry(None)  # a token was dropped or repeated
        return _Entry(pieces, order, places, checks_left=self._check)

    def _places(
        self, skeleton: str, tokens: list[str], structural: set[str] | frozenset[str]
    ) -> dict[int, _Place] | None:
        """Where each token stands in the parsed skeleton, or None if anywhere unsafe."""
        root = etree.fromstring(skeleton, etree.HTMLParser())
        if root is None:
            return None
        index = {token: n for n, token in enumerate(tokens)}
        pattern = re.compile(f"bm{self._nonce}s(\\d+)e")
        places: dict[int, _Place] = {}
        for node in root.iter():
            if not isinstance(node.tag, str):  # a comment or processing instruction
                if pattern.search(etree.tostring(node, encoding="unicode")):
                    return None
                continue
            tag = node.tag.lower()
            if pattern.search(tag):
                return None
            for text, parent in ((node.text, tag), (node.tail, None)):
                if text and pattern.search(text):
                    owner = parent if parent is not None else _parent_tag(node)
                    if owner in _RAW_TEXT:
                        return None
                    for n in pattern.findall(text):
                        places[int(n)] = _Place(None, owner)
            for name, value in node.attrib.items():
                name = name.lower()
                found = pattern.findall(value)
                if pattern.search(name):
                    return None
                if not found:
                    continue
                if name in structural or name.startswith("on"):
                    return None
                if name in ("href", "src") and self._base_url:
                    prefix = value[: value.index(self._token(int(found[0])))]
                    if not _ABSOLUTE.match(prefix):
                        return None
                for n in found:
                    places[int(n)] = _Place(name, tag)
        if len(places) != len(index):
            return None
        return places

    # --- per recipient -----------------------------------------------------------------

    def _values_fit(self, entry: _Entry, values: tuple[str, ...]) -> bool:
        for i, value in enumerate(values):
            if _RISKY.search(value) or "\r" in value:
                return False
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
        if place.attribute is None:
            html = f"<html><body><p>{value}</p></body></html>"
            out = _tostring(html)
            start = out.index("<p>") + 3
            return out[start : out.rindex("</p>")]
        tag = "a" if place.tag == "a" else "span"
        html = f'<html><body><{tag} {place.attribute}="{value}">x</{tag}></body></html>'
        out = _tostring(html)
        start = out.index(f'{place.attribute}="') + len(place.attribute) + 2
        return out[start : out.index('">x<', start)]

    def _slow(self, doc: Slotted) -> tuple[str, str]:
        self.stats.slow += 1
        html = self._inline(doc.document())
        return html, self._to_text(html)

    def _text(self, entry: _Entry, values: tuple[str, ...]) -> str:
        if entry.text is None:
            assert entry.pieces is not None
            tokens = [self._token(i) for i in range(len(values))]
            text = self._to_text(_join(entry.pieces, entry.order, tokens))
            cut = re.compile(f"bm{self._nonce}s(\\d+)e").split(text)
            entry.text = (tuple(cut[0::2]), tuple(int(n) for n in cut[1::2]))
        pieces, order = entry.text
        plain = [_plain(v, entry.places[i]) for i, v in enumerate(values)]
        return _join(pieces, order, plain)


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


def _plain(value: str, place: _Place) -> str:
    """A value as the text converter shows it: unescaped, white space folded in text."""
    text = html.unescape(value)
    return text if place.attribute else _WHITESPACE.sub(" ", text)
