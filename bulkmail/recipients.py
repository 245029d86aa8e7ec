"""Stream recipient rows from a CSV file: addresses checked, duplicates and suppressions marked."""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from email_validator import EmailNotValidError, validate_email

from bulkmail.errors import Location, RecipientError
from bulkmail.models import Recipient, address_key

# Characters that must never reach a header through a display name: CR and LF above all
# (header injection), and the other C0/C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOT_WORD = re.compile(r"\W+")
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")


@dataclass(frozen=True)
class Skipped:
    """A valid row that is not mailed: a duplicate of an earlier row, or suppressed."""

    recipient: Recipient
    reason: str  # "duplicate" | "suppressed"
    detail: str


RecipientRow = Recipient | Skipped | RecipientError


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, naming the line that is not UTF-8 (Excel adds a BOM: drop it)."""
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecipientError(
                    f"not UTF-8 text (byte {line[exc.start]:#04x} at column {exc.start + 1}); "
                    "save the file as UTF-8 CSV",
                    where=Location(path, number),
                ) from None


def _variable_name(header: str) -> str:
    """A column header as a template variable: trimmed, and usable as a Jinja name."""
    name = header.strip()
    if name.isidentifier():
        return name
    return _NOT_WORD.sub("_", name).strip("_").lower() or name


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream ``(line, {column: value})`` from a CSV with a header row that has an email column.

    Column names are trimmed; the email column is found case-insensitively and always
    given as ``email`` (and a name column as ``name``).
    """
    try:
        lines = _decoded_lines(path)
        reader = csv.reader(lines, strict=True)
        header = next(reader, None)
    except FileNotFoundError:
        raise RecipientError("no such file", where=Location(path)) from None
    except OSError as exc:
        raise RecipientError(f"cannot read: {exc.strerror}", where=Location(path)) from exc
    except csv.Error as exc:
        raise RecipientError(f"malformed CSV: {exc}", where=Location(path, 1)) from exc
    if not header or not any(cell.strip() for cell in header):
        raise RecipientError(
            "empty file: needs a header row with an email column", where=Location(path)
        )
    columns = _columns(header, path)
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RecipientError(
                f"malformed CSV: {exc}", where=Location(path, reader.line_num)
            ) from exc
        line, start = start, reader.line_num + 1
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        if len(cells) != len(columns):
            raise RecipientError(
                f"has {len(cells)} fields but the header has {len(columns)} "
                "(a comma in a value needs the value in double quotes)",
                where=Location(path, line),
            )
        yield line, dict(zip(columns, cells, strict=True))


def _columns(header: list[str], path: Path) -> list[str]:
    columns: list[str] = []
    for index, cell in enumerate(header, start=1):
        name = _variable_name(cell)
        if name.lower() in ("email", "name"):
            name = name.lower()
        if not name:
            raise RecipientError(f"column {index} has no name", where=Location(path, 1))
        if name in columns:
            raise RecipientError(f"column {name!r} appears twice", where=Location(path, 1))
        columns.append(name)
    if "email" not in columns:
        raise RecipientError(
            f"no 'email' column (the header has: {', '.join(columns)})", where=Location(path, 1)
        )
    return columns


def check_address(address: str, where: Location) -> str:
    """Return the normalised address, or raise RecipientError saying what is wrong with it."""
    address = address.strip()
    if not address:
        raise RecipientError("is empty", where=where)
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise RecipientError(f"{address!r} is not a valid address: {exc}", where=where) from None
    if _ENCODED_WORD.search(address):
        # Mail readers would decode it: "=?utf-8?q?=3Cevil=40evil.example=3E?=@example.com"
        # reads as <evil@evil.example>.
        raise RecipientError(
            f"{address!r}: an address may not contain MIME encoded words (=?...?=)",
            where=where,
        )
    # An internationalised domain is sent as its ASCII (IDNA) form, which every server takes;
    # only a non-ASCII local part needs SMTPUTF8.
    return valid.ascii_email or valid.normalized


def load_suppressed(path: Path) -> frozenset[str]:
    """The addresses of a suppression list (a CSV with an email column)."""
    keys = set()
    for line, row in read_rows(path):
        keys.add(address_key(check_address(row["email"], Location(path, line, "email"))))
    return frozenset(keys)


def _recipient(path: Path, line: int, row: dict[str, str]) -> Recipient:
    email = check_address(row["email"], Location(path, line, "email"))
    name = row.get("name", "").strip()
    if _CONTROL.search(name):
        raise RecipientError(
            f"{name!r}: a name may not contain line breaks or control characters",
            where=Location(path, line, "name"),
        )
    if _ENCODED_WORD.search(name):
        # The email package decodes such words when it writes the header, so
        # "=?utf-8?q?Bob=0D=0ABcc...?=" would come out as a line break and a header.
        raise RecipientError(
            f"{name!r}: a name may not contain MIME encoded words (=?...?=); write it as "
            "plain text",
            where=Location(path, line, "name"),
        )
    fields = dict(row)
    fields["email"] = email
    fields["name"] = name
    return Recipient(line=line, email=email, name=name, fields=fields)


def iter_recipients(
    path: Path, *, suppressed: Iterable[str] = frozenset()
) -> Iterator[RecipientRow]:
    """Stream every row of the CSV as a Recipient, a Skipped row, or the RecipientError it has.

    Rows with errors are yielded (not raised) so a preflight can report them all; an error
    that makes the rest of the file unreadable (no email column, bad encoding) is raised.
    Memory: one row at a time, plus the keys of the addresses seen (to find duplicates).
    """
    suppressed = frozenset(suppressed)
    seen: dict[str, int] = {}
    for line, row in read_rows(path):
        try:
            recipient = _recipient(path, line, row)
        except RecipientError as exc:
            yield exc
            continue
        key = recipient.key
        if key in seen:
            yield Skipped(recipient, "duplicate", f"same address as line {seen[key]}")
        elif key in suppressed:
            seen[key] = line
            yield Skipped(recipient, "suppressed", "on the suppression list")
        else:
            seen[key] = line
            yield recipient
