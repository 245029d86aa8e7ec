"""Markdown campaigns: the body written in Markdown (with Jinja inside), made into the HTML
part (CommonMark, inside a layout) and the text part (the Markdown's own text).

Values from the CSV and ``data:`` go into Markdown source, where punctuation is markup:
``[win](https://evil.example)`` in a name would be a link, ``<b>`` (were HTML allowed) a
tag. So every ``{{ value }}`` is written with each ASCII punctuation character
backslash-escaped (CommonMark 2.4: any of them may be), which Markdown shows as the
character itself; raw HTML is off, so ``<`` is always text. A template author who means a
value as Markdown marks it ``| safe``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2
import jinja2.sandbox
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from bulkmail.compose.skeleton import finalize

_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")
_BLANK_LINES = re.compile(r"\n{3,}")


def default_layout() -> Path:
    """The layout the package ships: a 600 px column, readable on phones, dark-mode safe."""
    return Path(str(resources.files("bulkmail") / "resources" / "markdown-layout.html"))


def escape_markdown(value: object) -> str:
    """A value as Markdown text that shows exactly the value (``| safe`` values as they are)."""
    if isinstance(value, Markup):
        return str(value)
    return _PUNCTUATION.sub(r"\\\1", str(value))


def marked_markdown(value: object) -> object:
    """`escape_markdown`, then the value wrapped in the skeleton cache's marks
    (`bulkmail.compose.skeleton.finalize`): for the marked rendering of a Markdown body."""
    return finalize(value if isinstance(value, Markup) else escape_markdown(value))


def environment(folders: list[Path], *, marked: bool = False) -> jinja2.Environment:
    """The Jinja environment of a Markdown body: sandboxed and strict like every template
    (see bulkmail.compose.render), each value written Markdown-escaped (``marked``: and
    wrapped in marks, for the skeleton cache)."""
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(folders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=marked_markdown if marked else escape_markdown,
        keep_trailing_newline=True,
        auto_reload=False,
    )


@cache
def _parser() -> MarkdownIt:
    # CommonMark with raw HTML off: a "<" is always text, never a tag. Links to
    # javascript:, vbscript:, file: and data: (but images) are refused by markdown-it.
    return MarkdownIt("commonmark", {"html": False})


def to_html(source: str) -> str:
    """The rendered Markdown as an HTML fragment (for the layout's ``{{ content }}``)."""
    html: str = _parser().render(source)
    return html


def to_text(source: str) -> str:
    """The rendered Markdown as plain text: its paragraphs, headings, lists and quotes as
    written, escapes resolved, emphasis marks dropped, links as ``text (url)``."""
    return _text(_parser().parse(source))


def to_html_and_text(source: str) -> tuple[str, str]:
    """`to_html` and `to_text` of ``source``, parsed once."""
    parser = _parser()
    env: dict[str, object] = {}
    tokens = parser.parse(source, env)
    html: str = parser.renderer.render(tokens, parser.options, env)
    return html, _text(tokens)


def _text(tokens: list[Token]) -> str:
    writer = _TextWriter()
    for token in tokens:
        writer.block(token)
    return writer.text()


@dataclass
class _Frame:
    """A list item's or quote's line prefix: ``first`` once, then ``rest``."""

    first: str
    rest: str
    quote: bool = False
    used: bool = False

    def take(self) -> str:
        text, self.first, self.used = self.first, self.rest, True
        return text


@dataclass
class _TextWriter:
    out: list[str] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    lists: list[int | None] = field(default_factory=list)  # per list: next number, or None
    tight_next: bool = False  # the next block continues a tight list: no blank line
    list_start: bool = False  # a list just began: a blank line before its first item

    def block(self, token: Token) -> None:
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            start = token.attrGet("start")
            self.lists.append(None if kind == "bullet_list_open" else int(start or 1))
            self.list_start = True
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.lists.pop()
            self.tight_next = False
        elif kind == "list_item_open":
            number = self.lists[-1] if self.lists else None
            bullet = "* " if number is None else f"{number}. "
            if self.lists and number is not None:
                self.lists[-1] = number + 1
            self.frames.append(_Frame(bullet, " " * len(bullet)))
        elif kind == "blockquote_open":
            self.frames.append(_Frame("> ", "> ", quote=True))
        elif kind in ("list_item_close", "blockquote_close"):
            self.frames.pop()
        elif kind == "inline":
            self._emit(_inline(token.children or []), tight=self.tight_next)
        elif kind == "paragraph_open":
            self.tight_next = token.hidden  # a paragraph of a tight list item
        elif kind in ("fence", "code_block"):
            self._emit(token.content.rstrip("\n"), tight=False)
        elif kind == "hr":
            self._emit("-" * 20, tight=False)

    def _emit(self, text: str, *, tight: bool) -> None:
        if self.out and (not tight or self.list_start):
            blank = "".join(f.rest for f in self.frames if f.quote and f.used).rstrip()
            self.out.append(blank)
        for line in text.split("\n"):
            prefix = "".join(frame.take() for frame in self.frames)
            self.out.append((prefix + line).rstrip())
        self.list_start = False

    def text(self) -> str:
        return _BLANK_LINES.sub("\n\n", "\n".join(self.out)).strip("\n") + "\n"


def _inline(tokens: list[Token]) -> str:
    """An inline run as text: links as ``text (url)``, images as their alt text."""
    out: list[str] = []
    links: list[tuple[str, int]] = []  # (href, where its text starts in out)
    for token in tokens:
        kind = token.type
        if kind in ("text", "code_inline", "html_inline"):
            out.append(token.content)
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "image":
            out.append(_inline(token.children or []))
        elif kind == "link_open":
            links.append((str(token.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            label = "".join(out[start:])
            if href and href not in (label, f"mailto:{label}"):
                out.append(f" ({href})")
    return "".join(out)
