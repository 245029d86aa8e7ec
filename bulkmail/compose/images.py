"""Inline images: a local ``<img src="images/logo.png">`` sent inside the mail.

Most clients block remote images until the reader allows them; an image carried in the
mail (a ``multipart/related`` part, RFC 2387, referenced as ``cid:``) shows at once and
needs no web server. The template files are scanned when the campaign is loaded: each
literal local ``src`` must name a file in the body template's folder, which is read and
encoded once per run, so every mail splices in the same bytes (like shared attachments).
A missing file is an error naming the template line before anything is sent.

``http(s):``, ``data:``, ``cid:`` and any other URL with a scheme are left alone, as is a
per-recipient ``src="{{ x }}"`` (its value is unknown at load time; it stays a URL, made
absolute with ``base_url`` like any link). ``images: link`` keeps every image a URL.
"""

from __future__ import annotations

import html as html_lib
import mimetypes
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import MIMEPart
from email.policy import EmailPolicy
from pathlib import Path
from urllib.parse import urljoin

from bulkmail.errors import Location, TemplateError, display_path
from bulkmail.models import Campaign

IMAGE_MODES = ("embed", "link")

# The src attribute of an <img> tag; group 3 is its value as written (entities and all).
_IMG_SRC = re.compile(r"""(<img\b[^>]*?\ssrc\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
# A Markdown image: ![alt](path "title").
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)")
_HAS_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:|//", re.IGNORECASE)


@dataclass(frozen=True)
class Image:
    """One embedded file: its Content-ID and its encoded MIME part."""

    cid: str
    part: bytes
    path: Path


@dataclass(frozen=True)
class InlineImages:
    """The campaign's embedded images by ``src``: as the template wrote it, and as the
    CSS inliner made it absolute with ``base_url`` (it rewrites relative URLs)."""

    by_src: Mapping[str, Image] = field(default_factory=dict)

    @classmethod
    def load(
        cls, campaign: Campaign, template_files: Iterable[Path], policy: EmailPolicy
    ) -> InlineImages:
        """Find every local image the templates name, check, read and encode it once."""
        if campaign.images == "link" or campaign.text_only:
            return cls()
        folder = campaign.body_template.parent.resolve()
        by_path: dict[Path, Image] = {}
        by_src: dict[str, Image] = {}
        for template in template_files:
            if template == campaign.text_template:
                continue  # plain text: an <img> there is text, not an image
            for src, line in _local_sources(template):
                where = Location(template, line)
                path = _confined(folder, src, where)
                if path not in by_path:
                    by_path[path] = _image_part(path, len(by_path), policy, where)
                by_src[src] = by_path[path]
                if campaign.base_url:
                    by_src[urljoin(campaign.base_url, src)] = by_path[path]
        return cls(by_src)

    def embed(self, html: str) -> tuple[str, list[Image]]:
        """The HTML with each known image's src as ``cid:``, and those images, each once."""
        used: dict[str, Image] = {}

        def to_cid(src: str) -> str | None:
            image = self.by_src.get(src)
            if image is None:
                return None
            used.setdefault(image.cid, image)
            return f"cid:{image.cid}"

        return rewrite_sources(html, to_cid), list(used.values())

    def file_uris(self) -> tuple[tuple[str, str], ...]:
        """Each src and the file's URI, for a preview a browser shows."""
        return tuple((src, image.path.as_uri()) for src, image in self.by_src.items())


def rewrite_sources(html: str, new: Mapping[str, str] | Callable[[str], str | None]) -> str:
    """``html`` with each ``<img>`` src for which ``new`` (a callable or a mapping) gives
    a value replaced by it; the other srcs and all other text untouched."""
    lookup = new.get if isinstance(new, Mapping) else new

    def replace(match: re.Match[str]) -> str:
        value = lookup(html_lib.unescape(match.group(3)))
        if value is None:
            return match.group(0)
        quote = match.group(2)
        return f"{match.group(1)}{quote}{html_lib.escape(value)}{quote}"

    return _IMG_SRC.sub(replace, html)


def _local_sources(template: Path) -> list[tuple[str, int]]:
    """The literal local image paths a template (HTML or Markdown) names, with their line."""
    try:
        text = template.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # the renderer has already reported an unreadable template
    pattern, group = (
        (_MD_IMAGE, 1)
        if template.suffix.lower() in (".md", ".markdown")
        else (
            _IMG_SRC,
            3,
        )
    )
    found = []
    for match in pattern.finditer(text):
        src = html_lib.unescape(match.group(group)).strip()
        if not src or _HAS_SCHEME.match(src) or "{{" in src or "{%" in src:
            continue
        found.append((src, text.count("\n", 0, match.start(group)) + 1))
    return found


def _confined(folder: Path, src: str, where: Location) -> Path:
    """The file ``src`` names, which must be in the template's folder (no ``..`` out,
    no absolute path, no symbolic link out) and exist."""
    if src.startswith(("/", "~", "\\")):
        raise TemplateError(
            f"image {src!r}: an absolute path; name a file in {display_path(folder)}/",
            where=where,
        )
    path = (folder / src).resolve()
    if not path.is_relative_to(folder):
        raise TemplateError(
            f"image {src!r} is outside {display_path(folder)}/; an embedded image must "
            "be in the template's folder",
            where=where,
        )
    if not path.is_file():
        raise TemplateError(f"image {src!r}: no such file", where=where)
    return path


def _image_part(path: Path, number: int, policy: EmailPolicy, where: Location) -> Image:
    """Read and encode one image as an inline part with a Content-ID."""
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"image {display_path(path)}: {exc.strerror}", where=where) from None
    cid = f"img{number}.{secrets.token_hex(8)}@bulkmail"
    part = MIMEPart(policy=policy)
    part.set_content(
        data,
        maintype=maintype,
        subtype=subtype,
        disposition="inline",
        filename=path.name,
        cid=f"<{cid}>",
    )
    del part["MIME-Version"]
    return Image(cid, part.as_bytes(policy=policy), path)
