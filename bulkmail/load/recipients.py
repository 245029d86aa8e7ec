"""Stream recipient rows from a CSV file: addresses checked, duplicates and suppressions marked."""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from bulkmail.errors import Location, RecipientError
from bulkmail.load.seen import SeenAddresses
from bulkmail.models import Recipient, Skipped, address_key

# Characters that must never reach a header through a display name: CR and LF above all
# (header injection), and the other C0/C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOT_WORD = re.compile(r"\W+")
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
# Between the addresses of a `cc` cell: commas, semicolons (Outlook's habit) or spaces.
_COPY_SEPARATORS = re.compile(r"[,;\s]+")
# Tried in this order on the header line; the first that yields an email column is used.
# Excel writes ";" where the decimal separator is a comma (most of Europe), tabs for .tsv.
DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "a comma", ";": "a semicolon", "\t": "a tab"}
# A domain no special-use rule applies to (RFC 2606), appended to check the rest of an
# address whose domain is special-use when the campaign allows those.
_NEUTRAL_SUFFIX = ".example"
ALLOW_SPECIAL = "allow_special_domains"


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


def read_rows(
    path: Path, *, delimiter: str | None = None, setting: str = "recipients"
) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream ``(line, {column: value})`` from a CSV with a header row that has an email column.

    Column names are trimmed; the email column is found case-insensitively and always
    given as ``email`` (and a name column as ``name``). Without a ``delimiter`` it is found
    from the header line (see `DELIMITERS`); ``setting`` is the campaign key that names the
    file, for the hint when no email column is found.
    """
    try:
        lines = _decoded_lines(path)
        first = next(lines, None)
        if delimiter is None:
            delimiter = _detect_delimiter(first or "")
            hint = (
                f"; if the columns are separated by another character, say which: "
                f'{setting}: {{path: {path.name}, delimiter: ";"}}'
            )
        else:
            hint = f" with the delimiter {delimiter!r}"
        reader = csv.reader(
            itertools.chain([first] if first is not None else [], lines),
            delimiter=delimiter,
            strict=True,
        )
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
    columns = _columns(header, path, hint)
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
                f"({_DELIMITER_NAMES.get(delimiter, repr(delimiter))} in a value needs the "
                "value in double quotes)",
                where=Location(path, line),
            )
        yield line, dict(zip(columns, cells, strict=True))


def _detect_delimiter(header_line: str) -> str:
    """The delimiter that makes an email column of the header line (a comma if none does)."""
    for delimiter in DELIMITERS:
        try:
            cells = next(csv.reader([header_line], delimiter=delimiter, strict=True), [])
        except csv.Error:
            continue  # a quoted header cell spanning lines: not worth guessing
        if any(_variable_name(cell).lower() == "email" for cell in cells):
            return delimiter
    return ","


def _columns(header: list[str], path: Path, hint: str) -> list[str]:
    columns: list[str] = []
    for index, cell in enumerate(header, start=1):
        name = _variable_name(cell)
        if name.lower() in ("email", "name", "cc"):
            name = name.lower()
        if not name:
            raise RecipientError(f"column {index} has no name", where=Location(path, 1))
        if name in columns:
            raise RecipientError(f"column {name!r} appears twice", where=Location(path, 1))
        columns.append(name)
    if "email" not in columns:
        raise RecipientError(
            f"no 'email' column (the header has: {', '.join(c.strip() for c in header)}){hint}",
            where=Location(path, 1),
        )
    return columns


def check_address(address: str, where: Location, *, allow_special_domains: bool = False) -> str:
    """Return the normalised address, or raise RecipientError saying what is wrong with it.

    Syntax only, no DNS. Special-use domains (``.test``, ``.local``, ``localhost``, a name
    without a dot...) are refused unless ``allow_special_domains``: a newsletter to them is
    usually a mistake, a campaign for an intranet or a test server says so.
    """
    address = address.strip()
    if not address:
        raise RecipientError("is empty", where=where)
    try:
        normal = _validate(address, allow_special_domains)
    except EmailNotValidError as exc:
        hint = ""
        if not allow_special_domains and _is_valid(address, allow_special_domains=True):
            hint = f" (set {ALLOW_SPECIAL}: true in the campaign to allow this domain)"
        raise RecipientError(
            f"{address!r} is not a valid address: {exc}{hint}", where=where
        ) from None
    if _ENCODED_WORD.search(address):
        # Mail readers would decode it: "=?utf-8?q?=3Cevil=40evil.example=3E?=@example.com"
        # reads as <evil@evil.example>.
        raise RecipientError(
            f"{address!r}: an address may not contain MIME encoded words (=?...?=)",
            where=where,
        )
    return normal


def _validate(address: str, allow_special: bool) -> str:
    """The normalised address; EmailNotValidError (about ``address`` itself) if invalid.

    email-validator refuses special-use domains whatever its options (``test_environment``
    frees only ``.test``, ``globally_deliverable=False`` only names without a dot), and its
    list of them is global. So with ``allow_special`` an address it refuses is checked
    again with a neutral domain appended, which no special-use rule matches while every
    other rule still applies; the suffix is then cut off.
    """
    try:
        return _normalised(_syntax(address, relaxed=allow_special))
    except EmailNotValidError as exc:
        if not allow_special:
            raise
        try:
            valid = _syntax(address + _NEUTRAL_SUFFIX, relaxed=True)
        except EmailNotValidError:
            raise exc from None
        return _normalised(valid).removesuffix(_NEUTRAL_SUFFIX)


def _syntax(address: str, *, relaxed: bool) -> ValidatedEmail:
    return validate_email(
        address,
        check_deliverability=False,
        allow_smtputf8=True,
        globally_deliverable=not relaxed,
        test_environment=relaxed,
    )


def _normalised(valid: ValidatedEmail) -> str:
    # An internationalised domain is sent as its ASCII (IDNA) form, which every server takes;
    # only a non-ASCII local part needs SMTPUTF8.
    return str(valid.ascii_email or valid.normalized)


def _is_valid(address: str, *, allow_special_domains: bool) -> bool:
    try:
        _validate(address, allow_special_domains)
    except EmailNotValidError:
        return False
    return True


def load_suppressed(
    path: Path, *, delimiter: str | None = None, allow_special_domains: bool = False
) -> frozenset[str]:
    """The address keys of a suppression list (a CSV with an email column), read like the
    recipient list."""
    keys = set()
    for line, row in read_rows(path, delimiter=delimiter, setting="suppress"):
        where = Location(path, line, "email")
        address = check_address(row["email"], where, allow_special_domains=allow_special_domains)
        keys.add(address_key(address))
    return frozenset(keys)


def _recipient(
    path: Path, line: int, row: dict[str, str], allow_special_domains: bool
) -> Recipient:
    email = check_address(
        row["email"], Location(path, line, "email"), allow_special_domains=allow_special_domains
    )
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
    cc = _row_copies(row.get("cc", ""), Location(path, line, "cc"), allow_special_domains)
    return Recipient(line=line, email=email, name=name, fields=fields, cc=cc)


def _row_copies(cell: str, where: Location, allow_special_domains: bool) -> tuple[str, ...]:
    """The addresses of a row's `cc` cell (none if empty), each checked like `email`."""
    addresses: list[str] = []
    for part in _COPY_SEPARATORS.split(cell.strip()):
        if part:
            address = check_address(part, where, allow_special_domains=allow_special_domains)
            if address not in addresses:
                addresses.append(address)
    return tuple(addresses)


def iter_recipients(
    path: Path,
    *,
    suppressed: Iterable[str] | Mapping[str, str] = frozenset(),
    delimiter: str | None = None,
    allow_special_domains: bool = False,
) -> Iterator[RecipientRow]:
    """Stream every row of the CSV as a Recipient, a Skipped row, or the RecipientError it has.

    Rows with errors are yielded (not raised) so a preflight can report them all; an error
    that makes the rest of the file unreadable (no email column, bad encoding) is raised.
    ``suppressed`` holds `address_key`s, or maps them to why (shown with the skipped row).
    ``delimiter``: None to find it from the header.
    Memory: one row at a time, plus the keys of the addresses seen (to find duplicates),
    the first few thousand in memory and the rest on disk (load/seen.py).
    """
    why: Mapping[str, str] = (
        suppressed if isinstance(suppressed, Mapping) else dict.fromkeys(suppressed, "")
    )
    with SeenAddresses() as seen:
        for line, row in read_rows(path, delimiter=delimiter):
            try:
                recipient = _recipient(path, line, row, allow_special_domains)
            except RecipientError as exc:
                yield exc
                continue
            key = recipient.key
            first = seen.line_of(key)
            if first is not None:
                yield Skipped(recipient, "duplicate", f"same address as line {first}")
                continue
            seen.add(key, line)
            if key in why:
                reason = why[key]
                detail = (
                    f"on the suppression list ({reason})" if reason else "on the suppression list"
                )
                yield Skipped(recipient, "suppressed", detail)
            else:
                yield recipient


def list_digest(path: Path) -> str | None:
    """A digest of the list's bytes (None if it can't be read): whether it changed."""
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()[:16]
    except OSError:
        return None
