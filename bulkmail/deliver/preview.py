"""Dry run: write each mail as an .html and an .eml file, with an index page, instead of sending.

The preview folder is replaced as a whole, yet it is also the user's: they read it, and may
save notes or edited copies in it. So the marker file lists the files bulkmail wrote (with
their size and modification time); a rerun replaces those that are unchanged and carries
every other file over into the new folder. The previews hold the list (names, addresses),
so the folder and its files are owner-only.
"""

from __future__ import annotations

import contextlib
import email
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import jinja2

from bulkmail.compose.images import rewrite_sources
from bulkmail.compose.message import text_part
from bulkmail.errors import ConfigError, Location
from bulkmail.models import OutgoingMail
from bulkmail.opening import Opened
from bulkmail.sizes import format_size

MARKER = ".bulkmail-preview"
MARKER_HEAD = (
    "written by bulkmail --dry-run; a rerun replaces the files listed below "
    "(size, mtime_ns, name) while unchanged, and keeps every other file"
)
# A marker of bulkmail before it listed its files: files named like these were its own.
_LEGACY_OWN = re.compile(r"[0-9]{5,}-.+\.(?:html|eml)|index\.html")
# Bytes of the address in a file name: with the number and extension well below the 255
# bytes most file systems allow, and below eCryptfs' 143 (encrypted home folders).
ADDRESS_BYTES = 100
Stamp = tuple[int, int]  # size and mtime_ns: a changed file no longer counts as bulkmail's

_UNSAFE = re.compile(r"[^\w.@+-]+")
_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENV.filters["size"] = format_size
_HEAD = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview: {{ name }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }
td { overflow-wrap: anywhere; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
td[data-label="Files"] { white-space: nowrap; }
.addr { color: #666; font-size: 12px; }
@media (max-width: 600px) {
  body { margin: 1em; }
  thead { display: none; }
  table, tbody, tr, td { display: block; }
  tr { border-bottom: 1px solid #ddd; padding: 8px 0; }
  td, td.num { border: 0; padding: 2px 0; text-align: left; }
  td[data-label]::before { content: attr(data-label) ": "; color: #666; }
  td[data-label="#"]::before, td[data-label="Recipient"]::before { content: none; }
  td[data-label="#"] { font-weight: bold; }
}
</style></head><body>
<h1>Preview of {{ name }}</h1>
<p>Nothing was sent. Each row is the mail one recipient would get: open the HTML in a
browser, or the .eml in a mail client.</p>
<table><thead><tr><th>#</th><th>Recipient</th><th>Subject</th><th>Attachments</th>
<th>Size</th><th>Files</th></tr></thead><tbody>
""")
_ROW = _ENV.from_string("""<tr><td class="num" data-label="#">{{ mail.index }}</td>
<td data-label="Recipient">{{ mail.recipient.name }}
<div class="addr">{{ mail.recipient.email }}</div>
{%- if return_path %}<div class="addr">bounces to {{ mail.sender }}</div>{% endif %}</td>
<td data-label="Subject"><a href="{{ stem }}.html">{{ mail.subject }}</a></td>
<td data-label="Attachments">{% for a in mail.attachments %}
{{- a.filename }} ({{ a.size | size }})<br>
{% else %}none{% endfor %}</td>
<td class="num" data-label="Size">{{ mail.size | size }}</td>
<td data-label="Files"><a href="{{ stem }}.html">{{ "html" if mail.html else "text" }}</a>
· <a href="{{ stem }}.eml">eml</a></td>
</tr>
""")
_FOOT = _ENV.from_string("""</tbody></table>
<p>{{ count }} mail{{ "" if count == 1 else "s" }}, {{ total | size }} in all.</p>
</body></html>
""")


# A plain-text mail's .html view: the text as the reader's client shows it, escaped,
# in its own line breaks, wrapped to the window rather than scrolled sideways.
_TEXT_VIEW = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ mail.subject }}</title>
<style>
body { margin: 2em; color: #222; background: #fff; }
pre { font: 14px/1.5 ui-monospace, monospace; white-space: pre-wrap;
      overflow-wrap: anywhere; max-width: 80ch; }
@media (max-width: 600px) { body { margin: 1em; } }
</style></head><body>
<pre>{{ text }}</pre>
</body></html>
""")


def text_view(mail: OutgoingMail) -> str:
    """The readable .html preview of a plain-text mail: its text part, escaped, in <pre>."""
    text = text_part(email.message_from_bytes(mail.data)) or ""
    return _TEXT_VIEW.render(mail=mail, text=text.replace("\r\n", "\n"))


def preview_stem(index: int, email: str) -> str:
    """The file name (without extension) of a recipient's previews: ``00001-alice@example.com``.

    The address is cut to ADDRESS_BYTES of UTF-8, between characters; the number keeps
    names unique however addresses are cut.
    """
    safe = _UNSAFE.sub("_", email).encode("utf-8")[:ADDRESS_BYTES]
    return f"{index:05d}-{safe.decode('utf-8', errors='ignore')}"


class PreviewTransport(Opened):
    """Writes mails to a preview folder; the folder is replaced only when every mail is in.

    The mails go to a staging folder beside ``out``; `close` writes the index and swaps it in,
    so a rerun leaves no stale files from a previous, larger list, and a failed run leaves the
    previous previews as they were. Files in ``out`` that bulkmail did not write (or that
    were changed since) are carried over into the new folder; a run that would need one's
    name stops with an error naming it.
    """

    def __init__(self, out: Path, *, name: str, return_path: bool = False) -> None:
        self.out = out
        self.name = name
        # Each mail has its own envelope sender (VERP): shown in the index, and at the top
        # of the .eml as the Return-Path the receiving server will put there.
        self.return_path = return_path
        self.count = 0
        self.total = 0
        self._staging = out.parent / f".{out.name}.staging-{os.getpid()}"
        self._index: IO[str] | None = None
        self._written: dict[str, Stamp] = {}
        self._taken: frozenset[str] = frozenset()  # the user's names in ``out``

    def open(self) -> None:
        with _disk_errors(self.out):
            clean_leftovers(self.out)
            self._check_folder()
            self._taken = frozenset(foreign_entries(self.out))
            self._claim("index.html")
            self._staging.parent.mkdir(parents=True, exist_ok=True)
            self._staging.mkdir(mode=0o700)
            os.chmod(self._staging, 0o700)  # whatever the umask
            self._index = io.TextIOWrapper(self._create("index.html"), encoding="utf-8")
            self._index.write(_HEAD.render(name=self.name))

    def _check_folder(self) -> None:
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

    def send(self, mail: OutgoingMail) -> str:
        assert self._index is not None, "open() first"
        stem = preview_stem(mail.index, mail.recipient.email)
        with _disk_errors(self.out):
            view = mail.html or text_view(mail)  # no HTML: a plain-text campaign
            if mail.image_files:  # embedded in the .eml; the browser reads the files
                view = rewrite_sources(view, dict(mail.image_files))
            self._write(f"{stem}.html", view.encode("utf-8"))
            eml = mail.data
            if self.return_path:
                eml = b"Return-Path: <%s>\r\n%s" % (mail.sender.encode(), eml)
            self._write(f"{stem}.eml", eml)
            self._index.write(_ROW.render(mail=mail, stem=stem, return_path=self.return_path))
        self.count += 1
        self.total += mail.size
        return f"written to {stem}.eml"

    def _claim(self, name: str) -> None:
        """Stop before writing a file whose name a file of the user's has in ``out``."""
        if name in self._taken:
            raise ConfigError(
                "not written by bulkmail, or changed since it was, and the new previews "
                "have a file of this name: move or rename it, then rerun",
                where=Location(self.out / name),
            )

    def _create(self, name: str) -> IO[bytes]:
        """A new file in the staging folder, owner-only whatever the umask."""
        fd = os.open(self._staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
        return os.fdopen(fd, "wb")

    def _write(self, name: str, data: bytes) -> None:
        self._claim(name)
        with self._create(name) as file:
            file.write(data)
        self._written[name] = _stamp(self._staging / name)

    def close(self) -> None:
        """Finish the index and put the new previews in place of the old ones."""
        if self._index is None:
            return
        try:
            with _disk_errors(self.out):
                self._index.write(_FOOT.render(count=self.count, total=self.total))
                self._index.close()
                self._index = None
                self._written["index.html"] = _stamp(self._staging / "index.html")
                self._write_marker()
                self._swap()
        except BaseException:
            self.abandon()
            raise

    def _write_marker(self) -> None:
        lines = [MARKER_HEAD]
        lines += [f"{size} {mtime} {name}" for name, (size, mtime) in sorted(self._written.items())]
        with self._create(MARKER) as file:
            file.write("".join(f"{line}\n" for line in lines).encode("utf-8"))

    def _swap(self) -> None:
        """Move the staging folder in as ``out``, then carry the user's files over to it."""
        self._taken = frozenset(foreign_entries(self.out))  # saved while the run went on?
        for name in sorted(self._written):
            self._claim(name)
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        replacing = self.out.exists()
        if replacing:
            self.out.rename(old)
        try:
            self._staging.rename(self.out)
        except OSError:
            if replacing:
                old.rename(self.out)
            raise
        if replacing:
            carry_over(old, self.out)
            remove_own(old)

    def abandon(self) -> None:
        """Drop what was written; the previous previews stay."""
        if self._index is not None:
            with contextlib.suppress(OSError):  # the write that failed may fail again here
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


@contextlib.contextmanager
def _disk_errors(out: Path) -> Iterator[None]:
    """A full disk, a file too large, a read-only or forbidden folder: one line naming it."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot write previews here: {reason}", where=Location(out)) from exc


def _stamp(path: Path) -> Stamp:
    status = path.lstat()
    return status.st_size, status.st_mtime_ns


def _listed(folder: Path) -> dict[str, Stamp] | None:
    """The files the marker in ``folder`` says bulkmail wrote; None: an older marker, no list."""
    try:
        head, *lines = (folder / MARKER).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # unreadable: nothing counts as bulkmail's, so nothing is deleted
    if head != MARKER_HEAD:
        return None
    listed = {}
    for line in lines:
        size, _, rest = line.partition(" ")
        mtime, _, name = rest.partition(" ")
        if size.isdigit() and mtime.isdigit() and name:
            listed[name] = (int(size), int(mtime))
    return listed


def own_files(folder: Path) -> set[str]:
    """The files in ``folder`` that bulkmail wrote and nobody changed since (not the marker)."""
    if not (folder / MARKER).is_file():
        return set()
    listed = _listed(folder)
    own = set()
    for entry in os.scandir(folder):
        if entry.name == MARKER or not entry.is_file(follow_symlinks=False):
            continue
        if listed is None:
            mine = _LEGACY_OWN.fullmatch(entry.name) is not None
        else:
            status = entry.stat(follow_symlinks=False)
            mine = listed.get(entry.name) == (status.st_size, status.st_mtime_ns)
        if mine:
            own.add(entry.name)
    return own


def foreign_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that are the user's: files bulkmail did not write, or that
    were changed since, and folders."""
    if not folder.is_dir():
        return []
    own = own_files(folder) | {MARKER}
    return sorted(name for name in os.listdir(folder) if name not in own)


def carry_over(old: Path, new: Path) -> None:
    """Move the user's files from the old preview folder into the new one.

    One whose name the new folder has stays where it is (it is never overwritten).
    """
    for name in foreign_entries(old):
        if not os.path.lexists(new / name):
            (old / name).rename(new / name)


def remove_own(folder: Path) -> None:
    """Delete the files bulkmail wrote in ``folder``, and the folder once it is empty."""
    for name in own_files(folder):
        (folder / name).unlink()
    (folder / MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something of the user's is still there
        folder.rmdir()


def clean_leftovers(out: Path) -> None:
    """Finish what dry runs killed mid-way left beside ``out``, once their process is gone.

    A staging folder holds only files bulkmail wrote: it goes. An ``old`` folder is the
    previous previews moved aside while swapping, perhaps with files of the user's: it
    comes back as ``out`` if the new one never arrived, else the user's files are carried
    over into ``out``. A running process's folders are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(staging|old)-([0-9]+)")
    try:
        entries = sorted(out.parent.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if not found or not entry.is_dir() or entry.is_symlink() or _running(int(found[2])):
            continue
        if found[1] == "staging":
            shutil.rmtree(entry)
        elif not out.exists():
            entry.rename(out)
        else:
            carry_over(entry, out)
            remove_own(entry)


def _running(pid: int) -> bool:
    """Whether the process ``pid`` (named in a leftover folder) may still be writing it."""
    if pid == os.getpid():
        return False  # this process is not writing it: an earlier run here left it
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no pid at all: not ours to judge
    return True
