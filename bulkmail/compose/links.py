"""Links made absolute as premailer makes them, joined once per link rather than per mail.

With ``base_url`` premailer joins every ``href`` and ``src`` to it (`premailer_link`). A
link holding per-recipient values (``/account?id={{ id }}``) would pay ``urljoin`` (two
URL parses) for every such link of every mail: most of what a base URL costs. Instead
each link is joined once with a token in place of each value, and each recipient's values
are put where their tokens came out (`joined`). That is exactly what ``urljoin`` gives
when no value can change how the link is parsed, which holds when:

- the link starts with a fixed part, not white space, and long enough to decide whether
  premailer keeps the link as it is (``#``, ``tel:``, ``cid:``); its fixed parts are ASCII;
- each value is non-empty, not only dots, and made of `INERT` characters: ASCII letters,
  digits and ``-._~%!$&'()*+,=@``. No ``:`` (a scheme), ``/`` (a path segment), ``?``,
  ``#`` or ``;`` (query, fragment, parameters), no brackets (an IPv6 host), no white space
  or control character (stripped), nothing outside ASCII (normalised in a host).

Such a value cannot move where a component starts or ends, is never stripped, and cannot
be or complete a ``.`` or ``..`` segment, so it comes out where its token does, as it went
in. The tokens hold capital letters: a link whose join lowers them (they would be its
scheme), drops one or repeats one (a ``..`` after it) gets no template, and is joined
mail by mail. So is a link any of whose values is not inert, except one already in the
form ``urljoin`` writes an absolute ``http(s)`` URL (`_WRITTEN_AS_JOINED`), which the
join leaves as it is. tests/test_link_cache.py checks all of it against ``urljoin``
itself, and against premailer on real documents.

Values without ``&`` or ``'`` (`plain`, nearly all: a name, an id, an urlencoded address)
need no escaping either: the skeleton cache puts them straight between the template's
escaped pieces (`escaped_template`), with no per-recipient work but the check.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from urllib.parse import urljoin

INERT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,=@")
# Of those, the ones the HTML parser reads as written and html.escape leaves alone.
PLAIN = INERT - frozenset("&'")
_KEPT = ("#", "tel:", "cid:")  # the starts premailer_link may keep a link by
# An absolute http(s) URL as urljoin writes it back: lower-case scheme, an ASCII host
# (and port), a path of inert characters, `/` and `:` with no dot segment, a non-empty
# query and fragment if any. urljoin returns such a URL unchanged, whatever the base.
_WRITTEN_AS_JOINED = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::[0-9]*)?"
    r"(?:/(?![.]{1,2}(?:[/?#]|\Z))[A-Za-z0-9\-_~%!$&'()*+,=@:.]*)*"
    r"(?:\?[\x21\x22\x24-\x7e]+)?(?:#[\x21-\x7e]+)?\Z"
)


def premailer_link(attribute: str, url: str, base_url: str) -> str:
    """What premailer (3.10, ``preserve_internal_links=True``) makes of an ``href`` or
    ``src`` with a base URL: ``#anchor`` and ``tel:`` links and ``cid:`` images stay,
    anything else is joined to it."""
    if attribute == "href" and (url.startswith("#") or url.startswith("tel:")):
        return url
    if attribute == "src" and url.startswith("cid:"):
        return url
    return urljoin(base_url, url)


def joined(attribute: str, parts: Sequence[str], values: Sequence[str], base_url: str) -> str:
    """`premailer_link` of the link made of ``parts`` with ``values`` (as the parser reads
    them) between them: from the link's template when the values allow it."""
    if all(map(_inert, values)):
        template = _template(attribute, tuple(parts), base_url)
        if template is not None:
            return between(template, values)
    url = between(parts, values)
    if _WRITTEN_AS_JOINED.match(url):
        return url
    return premailer_link(attribute, url, base_url)


def _inert(value: str) -> bool:
    return bool(value.strip(".")) and INERT.issuperset(value)


def plain(value: str) -> bool:
    """Whether ``value`` is inert and of `PLAIN` characters alone: the HTML parser reads
    it as it is written and ``html.escape`` leaves it as it is."""
    return bool(value.strip(".")) and PLAIN.issuperset(value)


def escaped_template(
    attribute: str, parts: tuple[str, ...], base_url: str
) -> tuple[str, ...] | None:
    """The link's template (see `joined`) escaped for an attribute, or None: with `plain`
    values, ``between(escaped_template(...), values)`` is ``html.escape(joined(...))``
    (escaping goes character by character, and leaves plain values alone)."""
    template = _template(attribute, parts, base_url)
    return None if template is None else tuple(html.escape(piece) for piece in template)


@functools.lru_cache(maxsize=256)
def _template(attribute: str, parts: tuple[str, ...], base_url: str) -> tuple[str, ...] | None:
    """The joined link cut where the values go, or None if the link's fixed parts leave
    room for a value to change how it is parsed (see the module's docstring)."""
    first = parts[0]
    if not first or first[0] <= " " or not all(part.isascii() for part in parts):
        return None
    if len(first) < 4 and any(kept.startswith(first) for kept in _KEPT[1:]):
        return None  # "te" + "l" + ":1" would be a tel: link, kept as it is
    tokens = [f"Bm{i}Q" for i in range(len(parts) - 1)]
    if any(token in part for token in tokens for part in parts):
        return None
    try:
        out = premailer_link(attribute, between(parts, tokens), base_url)
    except ValueError:  # (an invalid IPv6 host: urljoin raises for every value)
        return None
    pieces = []
    for token in tokens:
        before, found, out = out.partition(token)
        if not found or token in out:
            return None  # lowered (a scheme), dropped or repeated (a `..` after it)
        pieces.append(before)
    pieces.append(out)
    return tuple(pieces)


def between(parts: Sequence[str], values: Sequence[str]) -> str:
    """``parts[0] + values[0] + parts[1] + ...``"""
    out = [parts[0]]
    for value, part in zip(values, parts[1:], strict=True):
        out += (value, part)
    return "".join(out)
