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
``<script>``, ``<title>``, an unquoted attribute) is kept in the skeleton as it is, and so
becomes part of the cache key: ``class="{{ 'vip' if member }}"`` costs one premailer run
per distinct class. CSS with a text-dependent selector (``:empty``, ``:contains``) turns
the cache off for that skeleton. Values that are empty or blank, or hold markup
(``|safe``), stay in the skeleton too, as does a value right after a character reference
it could complete (``&not`` + ``in;``); a value whose characters a parser might treat
specially (control characters, CR, a raw ``<``), or that holds quotes in an attribute,
takes the slow path. Each value is serialised by lxml itself, in the same kind of place,
so escaping (``&amp;``, and the URI-escaping libxml2 applies to ``href``) matches.

With a base URL, premailer makes every ``href`` and ``src`` absolute (``urljoin``), which
depends on the whole link, values and all. Such a link is cut out of premailer's output
whole, and each recipient's is made as premailer makes it (`_Link`): the link as the
parser reads it from the real document, joined to the base URL by premailer's own rules
(bulkmail.compose.links: joined once per link, the values put in after), written by lxml.
So per-recipient links don't defeat the cache.

Finally the first uses of every skeleton are checked against premailer on the real
document; one difference and that skeleton is never used again.

The text part is made the same way: the inlined skeleton is converted once, and each
recipient's text is that with the values put in, wherever that provably equals converting
the recipient's own HTML (`SkeletonInliner._text`); elsewhere their HTML is converted.
"""

from __future__ import annotations

import functools
import html
import itertools
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lxml import etree
from markupsafe import Markup

from bulkmail.compose.links import PLAIN, between, escaped_template, joined, plain

# Wrap each personal value in the marked rendering. Private-use characters: a template
# holding them is never marked (see Renderer), and a recipient whose values hold them is
# inlined whole (`Unmarkable`), so every marker in a marked rendering is a mark.
OPEN, CLOSE = "\ue000", "\ue001"
MARKERS = frozenset(OPEN + CLOSE)

# Characters a parser may drop or normalise, so that a value holding them could serialise
# differently in the real document than on its own.
_RISKY = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufdd0-\ufdef\ufffe\uffff]")
COMMENT = "<!--"
# Elements whose text is not written back as text is. (Not <title>: lxml reads and writes
# its text as any other, see `_written`; a title often holds the personal subject.)
_RAW_TEXT = frozenset({"style", "script", "textarea", "xmp", "iframe", "noscript"})
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
# A character reference cut short at a value: the parser could read it with the value's
# first characters as one reference ("&not" + "in;" is "&notin;"), so it can't be cut there.
_OPEN_REFERENCE = re.compile(r"&#?[A-Za-z0-9]*\Z")
_LINK_ATTRIBUTES = ("href", "src")  # what premailer joins to the base URL


class Unmarkable(Exception):
    """A value holds a marker character, so the marked rendering could not tell it from
    marks: the recipient's document is rendered and inlined whole instead."""


class Marked(Markup):
    """Markup whose marker characters are marks: a part rendered marked on its own (a
    Markdown body's HTML), put whole into a marked rendering (its layout)."""


def finalize(value: object) -> object:
    """Jinja ``finalize`` hook for the marked rendering: wrap each personal value."""
    if isinstance(value, Marked):
        return value
    if isinstance(value, Markup):
        if not MARKERS.isdisjoint(value):
            raise Unmarkable
        return value  # markup from |safe is structure: it stays in the skeleton
    text = str(value)
    if not MARKERS.isdisjoint(text):
        raise Unmarkable
    if not text.strip():
        return text  # blank values shape the document (empty elements); see module doc
    return f"{OPEN}{text}{CLOSE}"


@dataclass(frozen=True)
class Slotted:
    """A marked rendering cut into literal skeleton parts and the (escaped) values."""

    literals: tuple[str, ...]  # one more than values
    values: tuple[str, ...]

    @classmethod
    def split(cls, marked: str) -> Slotted:
        # String splits: twice as fast as a regular expression on a 10 KB page. Every
        # marker is a mark: neither templates (Renderer) nor values (`finalize`) hold one.
        first, *rest = marked.split(OPEN)
        values = []
        literals = [first]
        for piece in rest:
            value, _, literal = piece.partition(CLOSE)
            values.append(value)
            literals.append(literal)
        return cls(tuple(literals), tuple(values))

    def document(self) -> str:
        """The real document: exactly what rendering without marks gives."""
        out = [self.literals[0]]
        for value, literal in zip(self.values, self.literals[1:], strict=True):
            out += (value, literal)
        return "".join(out)


class _Place(NamedTuple):
    """Where a token ended up in premailer's output. (A tuple: hashed for every value by
    the caches of `_serialise` and `_shown`.)"""

    attribute: str | None  # None: in text (or a comment)
    tag: str  # the element, or COMMENT


class _Link(NamedTuple):
    """An ``href`` or ``src`` holding values, which premailer joins to the base URL whole:
    cut out of the inlined skeleton whole, and made anew for each recipient."""

    place: _Place
    parts: tuple[str, ...]  # the link as the parser reads it, split at the values
    slots: tuple[int, ...]  # the value between each two parts


@dataclass
class _Entry:
    """One skeleton: premailer's output cut at the tokens, or None if it can't be used.
    A gap holds a value (its slot) or a whole link (slot ``len(values) + k``)."""

    pieces: tuple[str, ...] | None
    order: tuple[int, ...] = ()  # slot index for each gap between pieces
    places: dict[int, _Place] = field(default_factory=dict)
    links: tuple[_Link, ...] = ()
    linked: frozenset[int] = frozenset()  # the values in those links
    # For each link, its pieces to put plain values between (`_plain_link`), or None.
    plain_links: tuple[tuple[str, ...] | None, ...] = ()
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
        self._doubled = re.compile(f"bm{self._nonce}s(\\d+)e bm{self._nonce}s\\1e")
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
        written += map(self._link, entry.links, entry.plain_links, itertools.repeat(values))
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
        return tuple(sorted(found.unsafe))

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

    def _skeleton(self, doc: Slotted, fixed: tuple[int, ...], twice: bool = False) -> str:
        """The document with a token for each value not ``fixed``; ``twice``: the token,
        a space and the token again, to see which attributes a space would end."""
        tokens = [self._token(i) for i in range(len(doc.values))]
        if twice:
            tokens = [f"{token} {token}" for token in tokens]
        slots = [v if i in fixed else tokens[i] for i, v in enumerate(doc.values)]
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
        if found is None or found.unsafe:
            return _Entry(None)  # the kept values changed what is safe: no fast path
        first = len(doc.values)  # the slot of the first whole link
        out = self._cut_links(self._inline(skeleton), found.links, first)
        if out is None:
            return _Entry(None)  # a link is not where it was expected
        cut = self._pattern.split(out)
        pieces, order = tuple(cut[0::2]), tuple(int(n) for n in cut[1::2])
        places = dict(found.places)
        places.update((first + k, link.place) for k, link in enumerate(found.links))
        if sorted(order) != sorted(places):
            return _Entry(None)  # a token was dropped or repeated
        linked = frozenset(found.linked)
        return _Entry(
            pieces,
            order,
            places,
            tuple(found.links),
            linked,
            plain_links=tuple(map(self._plain_link, found.links)),
            checks_left=self._check,
        )

    def _cut_links(self, out: str, links: list[_Link], first: int) -> str | None:
        """premailer's output with each whole link's value replaced by the token of its
        slot (``first + k``); None if a link can't be found whole."""
        for k, link in enumerate(links):
            mine = set(link.slots)
            at = [at for at in map(out.find, map(self._token, link.slots)) if at >= 0]
            if not at:
                return None  # the join dropped every value: nothing marks where it is
            start, end = out.rfind('"', 0, min(at)) + 1, out.find('"', min(at))
            # Written as name="...": the link holds no quote, so lxml quotes it with ".
            if end < 0 or not out.endswith(f' {link.place.attribute}="', 0, start):
                return None
            if not {int(n) for n in self._pattern.findall(out, start, end)} <= mine:
                return None
            out = out[:start] + self._token(first + k) + out[end:]
        return out

    def _places(self, skeleton: str, structural: frozenset[str]) -> _Found | None:
        """Where each token stands in the parsed skeleton: the safe places, the whole links
        and the slots that are not safe to cut out. None if the skeleton can't be parsed."""
        root = etree.fromstring(skeleton, etree.HTMLParser())
        if root is None:
            return None
        found = _Found()
        places, unsafe = found.places, found.unsafe

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
                in_value = slots(value)
                if not in_value:
                    continue
                if name in structural or name.startswith("on"):
                    unsafe.update(in_value)
                elif name in _LINK_ATTRIBUTES and self._base_url and not _kept(name, value):
                    # Joined to the base URL whole, so cut out whole; a quote in it would
                    # change how lxml quotes the attribute.
                    if _QUOTES.search(value):
                        unsafe.update(in_value)
                    else:
                        cut = self._pattern.split(value)
                        found.linked.update(in_value)
                        link = _Link(_Place(name, tag), tuple(cut[0::2]), tuple(in_value))
                        found.links.append(link)
                else:
                    places.update((n, _Place(name, tag)) for n in in_value)
        unsafe |= self._cut_short(skeleton) | self._unquoted(skeleton, places, found.linked)
        for n in unsafe:
            places.pop(n, None)
        found.links = [link for link in found.links if unsafe.isdisjoint(link.slots)]
        found.linked = {n for link in found.links for n in link.slots}
        missing = set(slots(skeleton)) - places.keys() - unsafe - found.linked
        unsafe |= missing  # dropped by the parser: keep its value in the skeleton
        return found

    def _cut_short(self, skeleton: str) -> set[int]:
        """The slots right after a character reference the value could complete."""
        return {
            int(match[1])
            for match in self._pattern.finditer(skeleton)
            if _OPEN_REFERENCE.search(skeleton, max(match.start() - 40, 0), match.start())
        }

    def _unquoted(self, skeleton: str, places: dict[int, _Place], linked: set[int]) -> set[int]:
        """The slots in an attribute that a space in the value would end (unquoted): with
        each token written twice around a space, the attribute no longer holds both."""
        inside = {n for n, place in places.items() if place.attribute is not None} | linked
        if not inside:
            return set()
        twice = self._pattern.sub(lambda m: f"{m[0]} {m[0]}", skeleton)
        root = etree.fromstring(twice, etree.HTMLParser())
        whole: set[int] = set()
        for node in root.iter():
            if isinstance(node.tag, str):
                for value in node.attrib.values():
                    whole.update(int(m[1]) for m in self._doubled.finditer(value))
        return inside - whole

    # --- per recipient -----------------------------------------------------------------

    def _values_fit(self, entry: _Entry, values: tuple[str, ...]) -> bool:
        places, linked = entry.places, entry.linked
        for i, value in enumerate(values):
            place = places.get(i) or (_IN_LINK if i in linked else None)
            if place is not None and not _fits(place, value):
                return False
        return True  # (the other values are kept in the skeleton as they are)

    def _link(self, link: _Link, pieces: tuple[str, ...] | None, values: tuple[str, ...]) -> str:
        """A recipient's whole link as premailer writes it (see `_made_link`): with
        ``pieces`` (`_plain_link`) and `plain` values, those values between the pieces."""
        assert self._base_url is not None  # links are only cut with a base URL
        mine = [values[slot] for slot in link.slots]
        if pieces is not None and all(map(plain, mine)):
            return between(pieces, mine)
        return _made_link(link, tuple(mine), self._base_url)

    def _plain_link(self, link: _Link) -> tuple[str, ...] | None:
        """The link's escaped template, if lxml writes its pieces and any `PLAIN` value as
        they are: `_made_link`'s output for plain values, without a per-recipient cache
        entry, a parse or an escape (~4 us a link a mail)."""
        assert self._base_url is not None
        pieces = escaped_template(link.place.attribute or "", link.parts, self._base_url)
        unchanged = _unchanged(link.place)
        if pieces is None or not unchanged.issuperset(PLAIN):
            return None
        return pieces if all(map(unchanged.issuperset, pieces)) else None

    @staticmethod
    def _serialise(place: _Place, value: str) -> str:
        """How lxml writes ``value`` (as escaped in the document) in such a place."""
        if _unchanged(place).issuperset(value):
            return value  # the common case, without a parse: an address, a plain name
        return _serialise_cached(place, value)

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


@dataclass
class _Found:
    """What `SkeletonInliner._places` found in a skeleton."""

    places: dict[int, _Place] = field(default_factory=dict)  # the values cut out one by one
    links: list[_Link] = field(default_factory=list)  # the links cut out whole
    linked: set[int] = field(default_factory=set)  # the values in those links
    unsafe: set[int] = field(default_factory=set)  # the values kept in the skeleton


def _kept(attribute: str, value: str) -> bool:
    """Whether premailer leaves this link as it is, whatever its values: it starts (before
    any token, which starts with letters) as links premailer never joins start."""
    if attribute == "href":
        return value.startswith(("#", "tel:"))
    return value.startswith("cid:")


@functools.lru_cache(maxsize=1024)
def _made_link(link: _Link, values: tuple[str, ...], base_url: str) -> str:
    """The link with these values (escaped, one per slot) as premailer writes it: read as
    the parser reads it in the real document, joined to the base URL, written by lxml."""
    read = [_attribute_value(value) for value in values]
    url = joined(link.place.attribute or "", link.parts, read, base_url)
    return SkeletonInliner._serialise(link.place, html.escape(url))


def _attribute_value(written: str) -> str:
    """A value as the parser reads it in a quoted attribute (``written`` is how it stands
    in the document: escaped)."""
    if _AS_WRITTEN.match(written) and _NOT_AS_WRITTEN.isdisjoint(written):
        return written  # no reference, no quote: the parser reads it as it is
    return _attribute_value_parsed(written)


@functools.lru_cache(maxsize=1024)
def _attribute_value_parsed(written: str) -> str:
    root = etree.fromstring(
        f'<html><body><p title="{written}"></p></body></html>', etree.HTMLParser()
    )
    return str(root.find(".//p").get("title", ""))


def _written(place: _Place, value: str) -> str:
    """How lxml writes ``value`` (as escaped in the document) in such a place."""
    if place.tag == COMMENT:
        return value
    if place.attribute is None:
        tag = "title" if place.tag == "title" else "p"
        where = "head" if tag == "title" else "body"
        out = _tostring(f"<html><{where}><{tag}>{value}</{tag}></{where}></html>")
        start = out.index(f"<{tag}>") + len(tag) + 2
        return out[start : out.rindex(f"</{tag}>")]
    tag = "a" if place.tag == "a" else "span"
    page = f'<html><body><{tag} {place.attribute}="{value}">x</{tag}></body></html>'
    out = _tostring(page)
    start = out.index(f'{place.attribute}="') + len(place.attribute) + 2
    return out[start : out.index('">x<', start)]


_IN_LINK = _Place("href", "")  # a value in a whole link (no element has the tag "")
_PRINTABLE = frozenset(map(chr, range(0x20, 0x7F)))


@functools.lru_cache(maxsize=1024)
def _fits(place: _Place, value: str) -> bool:
    """Whether ``value`` (escaped) serialises in ``place`` as it does in the real document."""
    if _RISKY.search(value) or "\r" in value or "<" in value or ">" in value:
        return False  # (escaped values hold no < or >: these are |safe-less raw)
    if _OPEN_REFERENCE.search(value):
        return False  # could end in a reference with what follows
    if place.tag == COMMENT:
        return "-" not in value  # "--" could end or upset the comment
    if place.attribute is not None:
        # Whitespace at the ends of a value cut out alone: the start of an href is stripped.
        return not _QUOTES.search(value) and (place == _IN_LINK or value == value.strip())
    return True


@functools.lru_cache(maxsize=64)
def _unchanged(place: _Place) -> frozenset[str]:
    """The printable ASCII characters lxml writes as they are in ``place``: escaping (of
    text, attributes, and URIs in ``href``) goes character by character, so a value of
    these alone is written as it is. ``&`` never: it starts a reference."""
    probe = {c for c in _PRINTABLE - {"&"} if _written(place, f"a{c}a") == f"a{c}a"}
    return frozenset(probe)


@functools.lru_cache(maxsize=1024)
def _serialise_cached(place: _Place, value: str) -> str:
    return _written(place, value)


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


_AS_WRITTEN = re.compile(r"[\x20-\x7e]*\Z")
_NOT_AS_WRITTEN = frozenset("&<>\"'")


@functools.lru_cache(maxsize=1024)
def _shown(place: _Place, written: str) -> str | None:
    """A value as the text converter reads it in ``place`` (``written`` is how it stands
    in the HTML), if it folds like a single word there; else None."""
    if place.tag == COMMENT:
        return None  # never shown: a token from a comment in the text is a surprise
    if place.attribute is not None and (place.attribute, place.tag) != ("href", "a"):
        return None  # the converter shows no other attribute
    if _AS_WRITTEN.match(written) and _NOT_AS_WRITTEN.isdisjoint(written):
        value = written  # no reference, no markup, no quote: the parser reads it as it is
    else:
        value = _read(place, written)
    if place.attribute is not None and value.startswith("#"):
        return None  # an anchor: the converter shows no URL
    if not value or value != value.strip() or _WHITESPACE.sub(" ", value) != value:
        return None
    return value


@functools.lru_cache(maxsize=1024)
def _read(place: _Place, written: str) -> str:
    """The text, or the link of an ``<a>``, as the parser reads ``written`` there."""
    if place.attribute is None:
        root = etree.fromstring(f"<html><body><p>{written}</p></body></html>", etree.HTMLParser())
        return "".join(root.itertext())
    root = etree.fromstring(
        f'<html><body><a href="{written}">x</a></body></html>', etree.HTMLParser()
    )
    return str(root.find(".//a").get("href", ""))
