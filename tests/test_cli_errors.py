"""Every input error a user can make: its exact message, exit code 1, no traceback, nothing out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from builders import CSV_ROWS, CampaignDir
from typer.testing import CliRunner

from bulkmail.cli.app import app

runner = CliRunner()


def _bad_row(**fields: str) -> list[dict[str, str]]:
    row = {"email": "carol@example.com", "name": "Carol", "first_name": "Carol", "city": "Oslo"}
    return [*CSV_ROWS, {**row, **fields}]


def _per_recipient_attachment(c: CampaignDir) -> None:
    c.csv([{**row, "cid": str(n)} for n, row in enumerate(CSV_ROWS, start=1)])
    c.file("files/1.pdf", b"%PDF-1.4 one")
    c.file("files/3.pdf", b"%PDF-1.4 three")
    c.write(attachments=[{"path": "files/{{ cid }}.pdf", "filename": "invoice-{{ cid }}.pdf"}])


MINIMAL = """\
name: x
from: a@example.com
subject: hi
template: ../templates/issue.html
recipients: list.csv
"""

# (setup, the exact stderr lines). Paths are relative to the campaign folder's parent.
CASES: dict[str, tuple[Callable[[CampaignDir], object], list[str]]] = {
    "malformed YAML": (
        lambda c: c.raw(MINIMAL + "data: {month: June\n"),
        [
            "error: campaigns/test.yaml:7: malformed YAML: expected ',' or '}', but got "
            "'<stream end>' (while parsing a flow mapping)",
            "nothing was sent.",
        ],
    ),
    "unknown key with a suggestion": (
        lambda c: c.raw(MINIMAL + "subjcet: typo\n"),
        [
            "error: campaigns/test.yaml:6: subjcet: unknown key (did you mean 'subject'?)",
            "nothing was sent.",
        ],
    ),
    "unknown nested key": (
        lambda c: c.raw(MINIMAL + "smtp:\n  host: smtp.example.com\n  secuirty: ssl\n"),
        [
            "error: campaigns/test.yaml:8: smtp.secuirty: unknown key (did you mean 'security'?)",
            "nothing was sent.",
        ],
    ),
    "password in the YAML": (
        lambda c: c.raw(MINIMAL + "smtp:\n  host: smtp.example.com\n  password: hunter2\n"),
        [
            "error: campaigns/test.yaml:8: smtp.password: a password is never written in "
            "the campaign file; name the environment variable that holds it with "
            "password_env (or type it when asked)",
            "nothing was sent.",
        ],
    ),
    "missing required key": (
        lambda c: c.write(subject=None),
        ["error: campaigns/test.yaml: missing required key 'subject'", "nothing was sent."],
    ),
    "missing template file": (
        lambda c: c.write(template="../templates/missing.html"),
        [
            "error: campaigns/test.yaml:4: template: ../templates/missing.html: no such file",
            "nothing was sent.",
        ],
    ),
    "undefined variable": (
        lambda c: c.template("issue.html", "<p>Hi {{ first_nme }}</p>\n"),
        [
            "error: templates/issue.html:1: 'first_nme' is undefined "
            "(for campaigns/list.csv:2 and 2 more rows)",
            "1 problem; nothing was sent.",
        ],
    ),
    "undefined variable on one row only": (
        lambda c: c.template(
            "issue.html",
            "<p>Hi</p>\n{% if city == 'Leeds' %}\n<p>{{ postcode }}</p>\n{% endif %}\n",
        ),
        [
            "error: templates/issue.html:3: 'postcode' is undefined (for campaigns/list.csv:3)",
            "1 problem; nothing was sent.",
        ],
    ),
    "Jinja syntax error": (
        lambda c: c.template("issue.html", "<p>\n{% if city %}\n{{ city }}</p>\n"),
        [
            "error: templates/issue.html:3: syntax error: Unexpected end of template. "
            "Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. "
            "The innermost block that needs to be closed is 'if'.",
            "nothing was sent.",
        ],
    ),
    "syntax error in an included template": (
        lambda c: (
            c.template("issue.html", "<p>Hi</p>\n{% include 'footer.html' %}\n"),
            c.template("footer.html", "<p>\n{{ city }\n</p>\n"),
        ),
        [
            "error: templates/footer.html:2: syntax error: unexpected '}'",
            "nothing was sent.",
        ],
    ),
    "template that is not UTF-8": (
        lambda c: (c.templates / "issue.html").write_bytes("<p>Ren\xe9</p>".encode("latin-1")),
        ["error: templates/issue.html: not UTF-8 text; save it as UTF-8", "nothing was sent."],
    ),
    "missing email column": (
        lambda c: c.csv([{"mail": "a@example.com", "first_name": "A"}]),
        [
            "error: campaigns/list.csv:1: no 'email' column (the header has: mail, first_name); "
            "if the columns are separated by another character, say which: "
            'recipients: {path: list.csv, delimiter: ";"}',
            "nothing was sent.",
        ],
    ),
    "invalid address": (
        lambda c: c.csv(_bad_row(email="bob@@example.com")),
        [
            "error: campaigns/list.csv:5: email: 'bob@@example.com' is not a valid address: "
            "The part after the @-sign contains invalid characters: '@'.",
            "1 problem; nothing was sent.",
        ],
    ),
    "CSV that is not UTF-8": (
        lambda c: c.csv_path.write_bytes(
            "email,first_name,city\nrene@example.com,Ren\xe9,Paris\n".encode("latin-1")
        ),
        [
            "error: campaigns/list.csv:2: not UTF-8 text (byte 0xe9 at column 21); "
            "save the file as UTF-8 CSV",
            "nothing was sent.",
        ],
    ),
    "row with too many fields": (
        lambda c: c.csv_path.write_text(
            "email,first_name,city\nann@example.com,Ann,Portland, Oregon\n", encoding="utf-8"
        ),
        [
            "error: campaigns/list.csv:2: has 4 fields but the header has 3 "
            "(a comma in a value needs the value in double quotes)",
            "nothing was sent.",
        ],
    ),
    "missing attachment": (
        lambda c: c.write(attachments=["files/report.pdf"]),
        [
            "error: campaigns/test.yaml:15: attachments[0]: files/report.pdf: no such file",
            "nothing was sent.",
        ],
    ),
    "per-recipient attachment missing for one row": (
        _per_recipient_attachment,
        [
            "error: campaigns/test.yaml:15: attachments[0]: campaigns/files/2.pdf: "
            "no such file (for campaigns/list.csv:3)",
            "1 problem; nothing was sent.",
        ],
    ),
    "undefined variable in an attachment's name": (
        lambda c: (
            c.file("files/a.pdf", b"%PDF-1.4"),
            c.write(attachments=[{"path": "files/a.pdf", "filename": "x-{{ nope }}.pdf"}]),
        ),
        [
            "error: campaigns/test.yaml:15: attachments[0]: 'nope' is undefined "
            "(for campaigns/list.csv:2 and 2 more rows)",
            "1 problem; nothing was sent.",
        ],
    ),
    "newline in a rendered subject": (
        lambda c: c.csv(_bad_row(first_name="Carol\nBcc: x@evil.example")),
        [
            "error: campaigns/test.yaml:3: subject: renders to "
            "'Carol\\nBcc: x@evil.example, the June issue', which has a line break; "
            "a header must be one line (for campaigns/list.csv:5)",
            "1 problem; nothing was sent.",
        ],
    ),
    "header injection through the name column": (
        lambda c: c.csv(_bad_row(name="Bob\r\nBcc: x@evil.example")),
        [
            "error: campaigns/list.csv:5: name: 'Bob\\r\\nBcc: x@evil.example': a name may "
            "not contain line breaks or control characters",
            "1 problem; nothing was sent.",
        ],
    ),
    "header injection through the email column": (
        lambda c: c.csv(_bad_row(email="carol@example.com\r\nBcc: x@evil.example")),
        [
            "error: campaigns/list.csv:5: email: 'carol@example.com\\r\\nBcc: x@evil.example' "
            "is not a valid address: The part after the @-sign contains invalid characters: "
            "':', '@', SPACE, U+000A, U+000D.",
            "1 problem; nothing was sent.",
        ],
    ),
    "unsubscribe URL that is not https": (
        lambda c: c.write(unsubscribe={"url": "http://example.com/u"}),
        [
            "error: campaigns/test.yaml:9: unsubscribe.url: 'http://example.com/u': must be "
            "an https:// URL (one-click unsubscribe, RFC 8058)",
            "nothing was sent.",
        ],
    ),
    "several problems at once": (
        lambda c: c.csv(
            [
                *CSV_ROWS,
                {"email": "nope", "first_name": "N", "city": "x"},
                {"email": "x@example.com", "first_name": "X", "city": "y", "name": "A\nB"},
            ]
        ),
        [
            "error: campaigns/list.csv:5: email: 'nope' is not a valid address: "
            "An email address must have an @-sign.",
            "error: campaigns/list.csv:6: name: 'A\\nB': a name may not contain line breaks "
            "or control characters",
            "2 problems; nothing was sent.",
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", [["check"], ["run", "--dry-run"]])
def test_user_error_is_one_line_per_problem_and_exit_1(
    case: str, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup, expected = CASES[case]
    c = CampaignDir(tmp_path)
    c.write()
    setup(c)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, "campaigns/test.yaml"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == expected
    assert "Traceback" not in result.output
    assert not (tmp_path / "previews").exists()  # nothing was produced


def test_missing_campaign_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check", "nope.yaml"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: nope.yaml: no such campaign file",
        "nothing was sent.",
    ]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", "--bogus", "x.yaml"])
    assert result.exit_code == 2
    assert "No such option: --bogus" in result.stderr


def test_preview_folder_that_cannot_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CampaignDir(tmp_path)
    c.write()
    c.file("blocker", b"a file where a folder would have to be")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["run", "campaigns/test.yaml", "--dry-run", "--out", "campaigns/blocker/previews"]
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: campaigns/blocker/previews: cannot write previews here: Not a directory",
        "nothing was sent.",
    ]
