"""Make the plain-text alternative of a mail from its HTML: the text a person would write.

Mail HTML is laid out with tables, centred cells and hidden preheaders; none of that is
text. So the conversion keeps the reading order and the words, and drops the layout:

- every table cell, row, ``div`` and list item starts a line; paragraphs, headings,
  lists, tables and quotes are separated by a blank line;
- no alignment: a centred or right-aligned cell is written from the left margin, and
  cells are never put side by side, so no line is padded or wider than its own text;
- the only indentation is that of list items (``* `` or ``1. ``, nested ones indented)
  and quotes (``> ``); ``<pre>`` keeps its spacing;
- links are written ``[text](url)`` (a link without text as its URL), so every URL of the
  HTML part is in the text part too; ``#anchor`` links keep only their text;
- hidden content (``<head>``, ``<style>``, ``display: none``, ``hidden``) and images are
  left out; white space is folded as a browser folds it.

The result depends on a value in the text only through the value itself: nothing is
measured, aligned, wrapped or compared. That is what lets bulkmail.compose.skeleton convert a
skeleton once and put each recipient's values into the text (see `SkeletonInliner`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

_WHITESPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")
_DISPLAY_NONE = re.compile(r"(?:^|;)\s*display\s*:\s*none\b", re.IGNORECASE)
# Elements whose content is never shown as text in a mail.
_HIDDEN = frozenset(
    {"head", "title", "style", "script", "template", "noscript", "iframe", "object", "svg",
     "img", "meta", "link"}
)  # fmt: skip
# Blocks set apart by a blank line, and blocks that only start a line of their own.
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "listing", "xmp",
     "plaintext", "table", "dl", "hr", "figure", "fieldset", "form"}
)  # fmt: skip
_LINES = frozenset(
    {"div", "tr", "td", "th", "caption", "thead", "tbody", "tfoot", "dt", "dd",
     "section", "article", "header", "footer", "nav", "main", "aside", "address", "center",
     "figcaption", "details", "summary", "legend", "option", "body", "html"}
)  # fmt: skip
_LISTS = frozenset({"ul", "ol", "menu", "dir"})
_PREFORMATTED = frozenset({"pre", "listing", "xmp", "plaintext", "textarea"})
_QUOTE = "> "


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: one paragraph, cell or item a line, links written out."""
    root = etree.fromstring(html, etree.HTMLParser()) if html.strip() else None
    writer = _Writer()
    if root is not None:
        writer.element(root)
    return writer.text()


@dataclass
class _Frame:
    """What starts each line inside a list item or a quote: ``first`` once, then ``rest``."""

    first: str
    rest: str
    used: bool = False

    def take(self) -> str:
        text = self.rest if self.used else self.first
        self.used = True
        return text


@dataclass
class _Writer:
    """Walks the parsed document and writes the text, folding white space as it goes."""

    out: list[str] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    counters: list[int | None] = field(default_factory=list)  # per list: None for bullets
    breaks: int = 0  # line breaks owed before the next text (2: a blank line)
    space: bool = False  # a folded space owed before the next word
    at_line_start: bool = True
    started: bool = False
    link_opener: str = ""  # "[" of a link, written with the link's first word
    preformatted: int = 0

    def element(self, node: etree._Element) -> None:
        if not isinstance(node.tag, str):
            return  # a comment or processing instruction: its tail is the parent's
        tag = node.tag.lower()
        if tag in _HIDDEN or _is_hidden(node):
            return
        before = self._open(tag, node)
        if node.text:
            self.write(node.text)
        for child in node:
            self.element(child)
            if child.tail:
                self.write(child.tail)
        self._close(tag, before)

    def write(self, text: str) -> None:
        """Text as a browser shows it: white space folded, or kept inside ``<pre>``."""
        if self.preformatted:
            first, *others = text.split("\n")
            self._put(first)
            for line in others:
                self.breaks += 1 if self.started else 0
                self._put(line)
            return
        words = _WHITESPACE.split(text)
        for index, word in enumerate(words):
            if index:
                self.space = True
            if word:
                self._put(word)

    def text(self) -> str:
        """The text written so far, without trailing spaces or runs of blank lines."""
        lines = "".join(self.out).split("\n")
        text = "\n".join(line.rstrip() for line in lines)
        return _BLANK_LINES.sub("\n\n", text).strip("\n") + "\n"

    # --- elements ----------------------------------------------------------------------

    def _open(self, tag: str, node: etree._Element) -> tuple[int, str | None]:
        """Start an element; returns what `_close` needs to end it."""
        frames = len(self.frames)
        link = None
        if tag in _LISTS:
            self._block(1 if self._in_list_item() else 2)
            self.counters.append(1 if tag == "ol" else None)
        elif tag == "li":
            self._block(1)
            number = self.counters[-1] if self.counters else None
            bullet = "* " if number is None else f"{number}. "
            if self.counters and number is not None:
                self.counters[-1] = number + 1
            self.frames.append(_Frame(bullet, " " * len(bullet)))
        elif tag == "blockquote":
            self._block(2)
            self.frames.append(_Frame(_QUOTE, _QUOTE))
        elif tag in _PARAGRAPHS:
            self._block(2)
        elif tag in _LINES:
            self._block(1)
        elif tag == "br":
            if self.started:
                self.breaks += 1
                self.space = False
        elif tag == "a":
            href = (node.get("href") or "").strip()
            if href and not href.startswith("#"):
                link = href
                self.link_opener = "["
        if tag in _PREFORMATTED:
            self.preformatted += 1
        return frames, link

    def _close(self, tag: str, before: tuple[int, str | None]) -> None:
        frames, link = before
        if tag in _PREFORMATTED:
            self.preformatted -= 1
        if link is not None:
            if self.link_opener:  # nothing was written between <a> and </a>
                self.link_opener = ""
                self._put(link)
            else:
                self._glue(f"]({link})")
        del self.frames[frames:]
        if tag in _LISTS:
            self.counters.pop()
            self._block(1 if self._in_list_item() else 2)
        elif tag in _PARAGRAPHS:
            self._block(2)
        elif tag in _LINES or tag == "li":
            self._block(1)

    def _in_list_item(self) -> bool:
        return any(frame.first != _QUOTE for frame in self.frames)

    # --- output ------------------------------------------------------------------------

    def _block(self, breaks: int) -> None:
        """A block starts or ends here: the next text goes on a new line (2: after a blank)."""
        if self.started:
            self.breaks = max(self.breaks, breaks)
        self.space = False

    def _put(self, piece: str) -> None:
        """Write a piece of text, after the line breaks, line prefix or space owed."""
        if not piece:
            return
        if self.breaks:
            # A blank line inside a quote is quoted too, as mail clients write it.
            quoted = "".join(f.rest for f in self.frames if f.first == _QUOTE and f.used)
            quoted = quoted.rstrip()
            self.out.append("\n" + (quoted + "\n") * (self.breaks - 1))
            self.breaks = 0
            self.at_line_start = True
        if self.at_line_start:
            self.out.append("".join(frame.take() for frame in self.frames))
            self.at_line_start = False
        elif self.space:
            self.out.append(" ")
        self.out += (self.link_opener, piece)
        self.link_opener = ""
        self.space = False
        self.started = True

    def _glue(self, piece: str) -> None:
        """Write right after the last text, whatever breaks or space are owed after it."""
        self.out.append(piece)


def _is_hidden(node: etree._Element) -> bool:
    if node.get("hidden") is not None:
        return True
    style = node.get("style")
    return bool(style and _DISPLAY_NONE.search(style))
