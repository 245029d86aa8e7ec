"""Streaming recipients from CSV: encodings, headers, addresses, duplicates, suppression."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from bulkmail.errors import RecipientError
from bulkmail.load.recipients import iter_recipients, load_suppressed
from bulkmail.models import Recipient, Skipped


def write(tmp_path: Path, text: str | bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def rows(path: Path, **kwargs: object) -> list[object]:
    return list(iter_recipients(path, **kwargs))  # type: ignore[arg-type]


def test_excel_bom_and_header_case_and_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, codecs.BOM_UTF8 + b" Email , Name ,First Name\na@example.com,Ann,Ann\n")
    (recipient,) = rows(path)
    assert isinstance(recipient, Recipient)
    assert recipient.email == "a@example.com"
    assert recipient.name == "Ann"
    assert recipient.fields["first_name"] == "Ann"  # usable as a template variable
    assert recipient.line == 2


def test_quoted_fields_with_commas_and_newlines_keep_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "email,city,note\n"
        'a@example.com,"Portland, Oregon","two\nlines"\n'
        "\n"
        'b@example.com,Leeds,""\n',
    )
    first, second = rows(path)
    assert isinstance(first, Recipient)
    assert isinstance(second, Recipient)
    assert first.fields["city"] == "Portland, Oregon"
    assert first.fields["note"] == "two\nlines"
    assert (first.line, second.line) == (2, 5)


def test_no_name_column_gives_an_empty_name(tmp_path: Path) -> None:
    (recipient,) = rows(write(tmp_path, "email\na@example.com\n"))
    assert isinstance(recipient, Recipient)
    assert recipient.name == ""


def test_internationalised_addresses(tmp_path: Path) -> None:
    path = write(tmp_path, "email\n用户@例子.广告\nann@bücher.example\nBob@EXAMPLE.com\n")
    first, second, third = rows(path)
    assert isinstance(first, Recipient)
    assert first.email == "用户@例子.广告"
    assert isinstance(second, Recipient)
    assert second.email == "ann@xn--bcher-kva.example"  # IDNA: no SMTPUTF8 needed
    assert isinstance(third, Recipient)
    assert third.email == "Bob@example.com"


def test_bad_rows_are_yielded_as_errors_and_the_rest_go_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'email,name\nnot-an-address,X\n,Empty\nok@example.com,"A\rB"\nfine@example.com,F\n',
    )
    bad, empty, name, fine = rows(path)
    assert isinstance(bad, RecipientError)
    assert str(bad).endswith(
        "list.csv:2: email: 'not-an-address' is not a valid address: "
        "An email address must have an @-sign."
    )
    assert isinstance(empty, RecipientError)
    assert str(empty).endswith("list.csv:3: email: is empty")
    assert isinstance(name, RecipientError)
    assert "list.csv:4: name:" in str(name)
    assert isinstance(fine, Recipient)


def test_duplicates_are_skipped_with_the_address_compared_case_insensitively(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path, "email\nann@example.com\nbob@example.com\nann@EXAMPLE.COM\nAnn@example.com\n"
    )
    results = rows(path)
    assert [type(r).__name__ for r in results] == ["Recipient", "Recipient", "Skipped", "Skipped"]
    skipped = results[2]
    assert isinstance(skipped, Skipped)
    assert (skipped.reason, skipped.detail) == ("duplicate", "same address as line 2")


def test_suppressed_addresses_are_skipped(tmp_path: Path) -> None:
    suppress = load_suppressed(write(tmp_path, "Email\nBOB@Example.com\n", "suppress.csv"))
    path = write(tmp_path, "email\nann@example.com\nBOB@example.com\n")
    ann, bob = rows(path, suppressed=suppress)
    assert isinstance(ann, Recipient)
    assert isinstance(bob, Skipped)
    assert bob.reason == "suppressed"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "list.csv: empty file: needs a header row with an email column"),
        ("name,city\nA,B\n", "list.csv:1: no 'email' column (the header has: name, city)"),
        ("email,email\na@example.com,b\n", "list.csv:1: column 'email' appears twice"),
        ("email,,x\na@example.com,,1\n", "list.csv:1: column 2 has no name"),
        ("email,name\na@example.com\n", "list.csv:2: has 1 fields but the header has 2"),
        ('email\n"a@example.com\n', "list.csv:2: malformed CSV: unexpected end of data"),
    ],
)
def test_unreadable_files_raise_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecipientError) as info:
        rows(write(tmp_path, text))
    assert message in str(info.value)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "email,city\na@example.com,Paris\nb@example.com,Gen\xe8ve\n".encode("latin-1")
    )
    results = iter_recipients(path)
    assert isinstance(next(results), Recipient)
    with pytest.raises(
        RecipientError, match=r"list.csv:3: not UTF-8 text \(byte 0xe8 at column 18\)"
    ):
        next(results)


def test_rows_are_streamed_not_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path, "email\n" + "".join(f"u{n}@example.com\n" for n in range(1000)) + "broken\n"
    )
    results = iter_recipients(path)
    first = next(results)  # reading the first row does not read (or fail on) the rest
    assert isinstance(first, Recipient)
    assert first.email == "u0@example.com"
