"""Dry run: write each mail as an .html and an .eml file, with an index page, instead of sending."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO

import jinja2

from bulkmail.errors import ConfigError, Location
from bulkmail.models import OutgoingMail
from bulkmail.opening import Opened

MARKER = ".bulkmail-preview"
_UNSAFE = re.compile(r"[^\w.@+-]+")
_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_HEAD = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Preview: {{ name }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
.addr { color: #666; font-size: 12px; }
</style></head><body>
<h1>Preview of {{ name }}</h1>
<p>Nothing was sent. Each row is the mail one recipient would get: open the HTML in a
browser, or the .eml in a mail client.</p>
<table><thead><tr><th>#</th><th>Recipient</th><th>Subject</th><th>Attachments</th>
<th>Size</th><th>Files</th></tr></thead><tbody>
""")
_ROW = _ENV.from_string("""<tr><td class="num">{{ mail.index }}</td>
<td>{{ mail.recipient.name }}<div class="addr">{{ mail.recipient.email }}</div></td>
<td><a href="{{ stem }}.html">{{ mail.subject }}</a></td>
<td>{% for a in mail.attachments %}{{ a.filename }} ({{ a.size | filesizeformat }})<br>
{% else %}none{% endfor %}</td>
<td class="num">{{ mail.size | filesizeformat }}</td>
<td><a href="{{ stem }}.html">html</a> · <a href="{{ stem }}.eml">eml</a></td></tr>
""")
_FOOT = _ENV.from_string("""</tbody></table>
<p>{{ count }} mail{{ "" if count == 1 else "s" }}, {{ total | filesizeformat }} in all.</p>
</body></html>
""")


class PreviewTransport(Opened):
    """Writes mails to a preview folder; the folder is replaced only when every mail is in.

    The mails go to a staging folder beside ``out``; `close` writes the index and swaps it in,
    so a rerun leaves no stale files from a previous, larger list, and a failed run leaves the
    previous previews as they were.
    """

    def __init__(self, out: Path, *, name: str) -> None:
        self.out = out
        self.name = name
        self.count = 0
        self.total = 0
        self._staging = out.parent / f".{out.name}.staging-{os.getpid()}"
        self._index: IO[str] | None = None

    def open(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(
                "is a file, not a folder: choose another preview.out or --out",
                where=Location(self.out),
            )
        if self.out.exists() and not (self.out / MARKER).exists() and any(self.out.iterdir()):
            raise ConfigError(
                "this folder exists and holds files that are not a bulkmail preview; "
                "refusing to replace it (choose another preview.out or --out)",
                where=Location(self.out),
            )
        shutil.rmtree(self._staging, ignore_errors=True)
        try:
            self._staging.mkdir(parents=True)
            marker = self._staging / MARKER
            marker.write_text("written by bulkmail --dry-run\n", encoding="utf-8")
            self._index = (self._staging / "index.html").open("w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot write previews here: {exc.strerror}", where=Location(self.out)
            ) from None
        self._index.write(_HEAD.render(name=self.name))

    def send(self, mail: OutgoingMail) -> str:
        assert self._index is not None, "open() first"
        stem = f"{mail.index:05d}-{_UNSAFE.sub('_', mail.recipient.email)}"
        (self._staging / f"{stem}.html").write_text(mail.html, encoding="utf-8")
        (self._staging / f"{stem}.eml").write_bytes(mail.data)
        self._index.write(_ROW.render(mail=mail, stem=stem))
        self.count += 1
        self.total += mail.size
        return f"written to {stem}.eml"

    def close(self) -> None:
        """Finish the index and put the new previews in place of the old ones."""
        if self._index is None:
            return
        self._index.write(_FOOT.render(count=self.count, total=self.total))
        self._index.close()
        self._index = None
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        if self.out.exists():
            self.out.rename(old)
        self._staging.rename(self.out)
        shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> None:
        """Drop what was written; the previous previews stay."""
        if self._index is not None:
            self._index.close()
            self._index = None
        shutil.rmtree(self._staging, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
