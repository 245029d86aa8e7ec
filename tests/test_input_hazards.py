"""Hostile or unusual inputs from issue 8: paths, template code, YAML aliases, numbers, names,
special-use domains, CSV delimiters, address case and empty subjects."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import CSV_ROWS, CampaignDir
from typer.testing import CliRunner

from bulkmail import (
    AttachmentError,
    ConfigError,
    Location,
    PreflightError,
    Recipient,
    RecipientError,
    TemplateError,
    check_campaign,
    load_campaign,
)
from bulkmail.cli.app import app
from bulkmail.compose.render import Renderer
from bulkmail.load.recipients import iter_recipients, load_suppressed
from bulkmail.models import Skipped, address_key

runner = CliRunner()


def first_recipient(c: CampaignDir) -> Recipient:
    campaign = load_campaign(c.yaml_path)
    return next(r for r in iter_recipients(campaign.recipients) if isinstance(r, Recipient))


def problems_of(c: CampaignDir) -> list[str]:
    """The preflight's problems, as the CLI prints them (one line each)."""
    with pytest.raises(PreflightError) as caught:
        check_campaign(c.yaml_path, workers=0)
    return [str(problem) for problem in caught.value.problems]


def cli_check(c: CampaignDir, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """stderr of `bulkmail check` on the campaign, which must fail with exit code 1."""
    monkeypatch.chdir(c.root)
    result = runner.invoke(app, ["check", os.path.relpath(c.yaml_path, c.root)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.stderr.splitlines()


# --- 1. per-recipient attachment paths stay in their folder -----------------------------------


def _note_attachment(c: CampaignDir, path: str, notes: list[str]) -> None:
    rows = [{**row, "note": note} for row, note in zip(CSV_ROWS, notes, strict=False)]
    c.csv(rows)
    c.file("files/1.pdf", b"%PDF-1.4 one")
    c.file("files/sub/2.pdf", b"%PDF-1.4 two")
    c.write(attachments=[{"path": path, "filename": "doc.pdf"}])


@pytest.mark.parametrize(
    ("path", "note"),
    [
        ("files/{{ note }}", "../../secret.txt"),  # .. out of files/ (and the campaign)
        ("files/{{ note }}", "../test.yaml"),  # .. out of files/ into the campaign folder
        ("files/{{ note }}", "link/secret.txt"),  # a symlink inside files/ pointing out
        ("{{ note }}", "/etc/passwd"),  # absolute, but the template is not
        ("{{ note }}", "~/secret.txt"),  # home, but the template does not start with ~
        ("files/sub/{{ note }}", "../1.pdf"),  # the folder is the template's, not the file's
    ],
)
def test_attachment_path_from_csv_data_may_not_leave_the_template_folder(
    tmp_path: Path, path: str, note: str
) -> None:
    c = CampaignDir(tmp_path)
    (tmp_path / "secret.txt").write_text("secret")
    (c.campaigns / "files").mkdir(parents=True, exist_ok=True)
    (c.campaigns / "files" / "link").symlink_to(tmp_path)
    _note_attachment(c, path, [note])
    renderer = Renderer.load(load_campaign(c.yaml_path))

    with pytest.raises(AttachmentError) as caught:
        renderer.render(first_recipient(c))

    message = str(caught.value)
    assert "test.yaml:" in message
    assert "attachments[0]" in message
    assert "note" in message  # the CSV field it came from
    assert "list.csv:2" in message  # the row
    assert "outside" in message
    assert "\n" not in message


def test_attachment_paths_inside_the_folder_still_work(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    _note_attachment(c, "files/{{ note }}", ["1.pdf", "sub/2.pdf", "sub/../1.pdf"])

    report = check_campaign(c.yaml_path, workers=0)

    assert report.mails == 3


def test_attachment_path_template_starting_absolute_or_with_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "invoices").mkdir(parents=True)
    (home / "invoices" / "1.pdf").write_bytes(b"%PDF-1.4")
    (home / "invoices" / "2.pdf").write_bytes(b"%PDF-1.4")
    monkeypatch.setenv("HOME", str(home))
    c = CampaignDir(tmp_path)
    _note_attachment(c, "~/invoices/{{ note }}", ["1.pdf", "2.pdf"])
    assert check_campaign(c.yaml_path, workers=0).mails == 2

    _note_attachment(c, f"{home}/invoices/{{{{ note }}}}", ["1.pdf", "../invoices/2.pdf"])
    assert check_campaign(c.yaml_path, workers=0).mails == 2

    _note_attachment(c, f"{home}/invoices/{{{{ note }}}}", ["1.pdf", "../../secret.txt"])
    (problem,) = problems_of(c)
    assert "outside" in problem
    assert "list.csv:3" in problem


# --- 2. templates are sandboxed ---------------------------------------------------------------

_ESCAPE = "{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}"


@pytest.mark.parametrize("where", ["html", "html-slow", "text", "subject", "url", "filename"])
def test_templates_cannot_run_code(tmp_path: Path, where: str) -> None:
    c = CampaignDir(tmp_path)
    marker = tmp_path / "pwned"
    payload = _ESCAPE % marker
    c.file("files/a.pdf", b"%PDF-1.4")
    settings: dict[str, object] = {}
    if where.startswith("html"):
        c.template("issue.html", f"<p>Hello</p>\n<p>{payload}</p>\n")
    elif where == "text":
        c.template("issue.txt", f"Hello\n{payload}\n")
        settings["text_template"] = "../templates/issue.txt"
    elif where == "subject":
        settings["subject"] = f"Hi {payload}"
    elif where == "url":
        settings["unsubscribe"] = {"url": "https://example.com/u?x=" + payload}
    else:
        settings["attachments"] = [{"path": "files/a.pdf", "filename": payload}]
    c.write(**settings)
    renderer = Renderer.load(load_campaign(c.yaml_path), fast=where != "html-slow")

    with pytest.raises(TemplateError) as caught:
        renderer.render(first_recipient(c))

    assert not marker.exists()
    assert "unsafe" in caught.value.message
    assert caught.value.row == Location(c.csv_path, 2)
    where_ = caught.value.where
    assert where_ is not None
    if where.startswith("html"):
        assert (Path(where_.path), where_.line) == (c.templates / "issue.html", 2)
    elif where == "text":
        assert (Path(where_.path), where_.line) == (c.templates / "issue.txt", 2)
    else:
        assert Path(where_.path) == c.yaml_path
        assert where_.line is not None


def test_templates_cannot_change_the_campaign_data(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template("issue.html", "<p>{{ items.pop() }} {{ first_name }}</p>\n")
    c.write(data={"month": "June", "items": ["a", "b", "c"]})

    (problem,) = problems_of(c)

    assert "issue.html:1: access to attribute 'pop' of 'list' object is unsafe" in problem


def test_the_example_campaign_still_renders_in_the_sandbox() -> None:
    example = Path(__file__).parent.parent / "campaigns" / "june.yaml"
    report = check_campaign(example, workers=0)
    assert report.mails > 0


# --- 3. YAML aliases ------------------------------------------------------------------------

_MINIMAL = """\
name: x
from: a@example.com
subject: hi
template: ../templates/issue.html
recipients: list.csv
"""

_BOMB = "".join(
    [
        "data:\n",
        '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(
            f"  {x}: &{x} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, x in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def test_yaml_alias_bomb_is_a_quick_one_line_error(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.raw(_MINIMAL + _BOMB)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bulkmail", "check", "campaigns/test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "nothing was sent."
    (error,) = lines[:-1]
    assert error.startswith("error: campaigns/test.yaml:")
    assert "aliases expand" in error


def test_yaml_alias_bomb_is_refused_when_loading(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.raw(_MINIMAL + _BOMB)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="aliases expand") as caught:
        load_campaign(c.yaml_path)
    assert time.monotonic() - started < 5
    assert caught.value.where is not None
    assert caught.value.where.line is not None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("data: &d\n  month: June\n  me: *d\n", 8),
        ("data:\n  list: &l [1, *l]\n", 7),
        ("subject2: &s [*s]\n", 6),
    ],
)
def test_recursive_yaml_alias_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: int
) -> None:
    c = CampaignDir(tmp_path)
    c.raw(_MINIMAL + text)

    stderr = cli_check(c, monkeypatch)

    assert stderr == [
        f"error: campaigns/test.yaml:{line}: a YAML alias refers to the value that contains "
        "it (a recursive alias)",
        "nothing was sent.",
    ]


def test_yaml_nested_too_deep_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CampaignDir(tmp_path)
    c.raw(_MINIMAL + "data:\n  x: " + "[" * 5000 + "]" * 5000 + "\n")

    stderr = cli_check(c, monkeypatch)

    assert stderr == [
        "error: campaigns/test.yaml:7: lists and mappings nested more than 100 deep",
        "nothing was sent.",
    ]


def test_plain_anchors_and_aliases_keep_working(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.raw(
        _MINIMAL.replace("subject: hi", "subject: &s Hello {{ month }}")
        + "data:\n"
        + "  month: June\n"
        + "  base: &base {colour: red, size: 2}\n"
        + "  big: {<<: *base, size: 3}\n"
        + "  title: *s\n"
        + "  again: [*base, *base]\n"
    )
    campaign = load_campaign(c.yaml_path)
    assert campaign.subject == "Hello {{ month }}"
    assert campaign.data["big"] == {"colour": "red", "size": 3}
    assert campaign.data["title"] == "Hello {{ month }}"
    assert campaign.data["again"] == [{"colour": "red", "size": 2}] * 2


# --- 4. nan and infinity --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("rate: {per_second: .nan}\n", "rate.per_second"),
        ("rate: {per_second: .inf}\n", "rate.per_second"),
        ("rate: {per_second: -.inf}\n", "rate.per_second"),
        ("rate: {per_minute: .NaN}\n", "rate.per_minute"),
        ("rate: {per_hour: .Inf}\n", "rate.per_hour"),
        ("rate: {per_second: 1, burst: .nan}\n", "rate.burst"),
        ("rate: {per_second: 1, burst: .inf}\n", "rate.burst"),
        ("smtp: {host: h, timeout: .nan}\n", "smtp.timeout"),
        ("smtp: {host: h, timeout: .inf}\n", "smtp.timeout"),
        ("smtp: {host: h, port: .nan}\n", "smtp.port"),
        ("smtp: {host: h, port: .inf}\n", "smtp.port"),
        ("smtp: {host: h, max_per_connection: .inf}\n", "smtp.max_per_connection"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, field: str
) -> None:
    c = CampaignDir(tmp_path)
    c.raw(_MINIMAL + text)

    (error, last) = cli_check(c, monkeypatch)

    assert error.startswith(f"error: campaigns/test.yaml:6: {field}: must be ")
    assert "finite" in error or "whole number" in error
    assert last == "nothing was sent."
    with pytest.raises(ConfigError):
        load_campaign(c.yaml_path)


# --- 5. a campaign name from the file name ------------------------------------------------


def test_file_name_with_spaces_gives_a_usable_name(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.write(name=None)
    spaced = c.campaigns / "June news (final).yaml"
    c.yaml_path.rename(spaced)

    campaign = load_campaign(spaced)

    assert campaign.name == "June-news-final"


def test_file_name_with_nothing_usable_asks_for_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CampaignDir(tmp_path)
    c.write(name=None)
    c.yaml_path.rename(c.campaigns / "★ ★.yaml")
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["check", "campaigns/★ ★.yaml"])

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: campaigns/★ ★.yaml: name: cannot make a campaign name from the file name; "
        "add name: (letters, digits, '.', '-' and '_')",
        "nothing was sent.",
    ]


# --- 6. local_hostname goes into EHLO ---------------------------------------------------------


@pytest.mark.parametrize(
    "value", ['"mailer.example.com\\r\\nRSET"', '"mailer example.com"', '"mailer\\x00.example"']
)
def test_local_hostname_must_be_one_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    c = CampaignDir(tmp_path)
    c.raw(_MINIMAL + f"smtp:\n  host: smtp.example.com\n  local_hostname: {value}\n")

    (error, _) = cli_check(c, monkeypatch)

    assert error.startswith("error: campaigns/test.yaml:8: smtp.local_hostname: ")
    assert "host name" in error


# --- 7. special-use domains ---------------------------------------------------------------

_SPECIAL = ["ann@mail.test", "bob@localhost", "cy@printer.local", "dee@intranet", "eve@x.arpa"]


def test_special_use_domains_are_refused_naming_the_setting(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.csv([{**CSV_ROWS[0], "email": address} for address in _SPECIAL])
    c.write()

    problems = problems_of(c)

    assert len(problems) == len(_SPECIAL)
    for address, problem in zip(_SPECIAL, problems, strict=True):
        assert repr(address) in problem
        assert "allow_special_domains: true" in problem


def test_allow_special_domains_for_recipients_suppression_from_and_reply_to(
    tmp_path: Path,
) -> None:
    c = CampaignDir(tmp_path)
    c.csv([{**CSV_ROWS[0], "email": address} for address in _SPECIAL])
    c.file("suppress.csv", "email\nBOB@localhost\n")
    c.write(
        allow_special_domains=True,
        suppress="suppress.csv",
        from_="News <news@mailer.internal.test>",
        reply_to="editor@localhost",
    )

    report = check_campaign(c.yaml_path, workers=0)

    assert report.mails == len(_SPECIAL) - 1
    assert report.suppressed == 1
    assert load_campaign(c.yaml_path).allow_special_domains


@pytest.mark.parametrize("key", ["from_", "reply_to"])
def test_special_domain_in_from_or_reply_to_names_the_setting(tmp_path: Path, key: str) -> None:
    c = CampaignDir(tmp_path)
    c.write(**{key: "news@localhost"})

    with pytest.raises(ConfigError, match="allow_special_domains: true") as caught:
        check_campaign(c.yaml_path, workers=0)

    assert caught.value.where is not None
    assert caught.value.where.field == key.rstrip("_")


def test_allow_special_domains_must_be_true_or_false(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.write(allow_special_domains="yes please")
    with pytest.raises(ConfigError, match="allow_special_domains: must be true or false"):
        load_campaign(c.yaml_path)


def test_special_domains_still_need_valid_syntax(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email\nann@@localhost\nbob@x..test\nok@box.local\n")
    bad, worse, ok = iter_recipients(path, allow_special_domains=True)
    assert isinstance(bad, RecipientError)
    assert isinstance(worse, RecipientError)
    assert isinstance(ok, Recipient)
    assert ok.email == "ok@box.local"


# --- 8. CSV delimiters ----------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_delimiter_is_detected_from_the_header(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "list.csv"
    rows = [
        ["Email", "Name", "City"],
        ["ann@example.com", "Ann", "Lyon, France"],
        ["bob@example.com", "Bob; Jr | Sr", "Leeds\tWest"],
    ]
    with path.open("w", newline="") as file:
        csv.writer(file, delimiter=delimiter, lineterminator="\n").writerows(rows)

    ann, bob = iter_recipients(path)

    assert isinstance(ann, Recipient)
    assert isinstance(bob, Recipient)
    assert ann.fields == {"email": "ann@example.com", "name": "Ann", "City": "Lyon, France"}
    assert bob.name == "Bob; Jr | Sr"
    assert bob.fields["City"] == "Leeds\tWest"


def test_delimiter_setting_and_suppression_list_with_semicolons(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.file("list.csv", "email;name;first_name;city\nann@example.com;Ann;Ann;Lyon\n")
    c.file("people.csv", "email:first_name:city\nbob@example.com:Bob:Oslo\n")
    c.file("suppress.csv", "email;reason\nann@example.com;bounced\n")
    c.write(recipients={"path": "people.csv", "delimiter": ":"}, suppress="suppress.csv")
    campaign = load_campaign(c.yaml_path)
    assert campaign.recipients == c.campaigns / "people.csv"
    assert campaign.recipients_delimiter == ":"

    report = check_campaign(campaign, workers=0)

    assert report.mails == 1
    c.write(recipients="list.csv")
    report = check_campaign(c.yaml_path, workers=0)
    assert (report.mails, report.suppressed) == (0, 1)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"path": "list.csv", "delimiter": ";;"}, "recipients.delimiter: must be one character"),
        ({"path": "list.csv", "delimiter": "\n"}, "recipients.delimiter: must be one character"),
        ({"delimiter": ";"}, "recipients: needs a 'path'"),
        ({"path": "list.csv", "sep": ";"}, "recipients.sep: unknown key"),
    ],
)
def test_wrong_recipients_settings(tmp_path: Path, setting: dict[str, str], message: str) -> None:
    c = CampaignDir(tmp_path)
    c.write(recipients=setting)
    with pytest.raises(ConfigError, match=message):
        load_campaign(c.yaml_path)


def test_no_email_column_suggests_the_delimiter_setting(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("mail:name\nann@example.com:Ann\n")
    with pytest.raises(RecipientError) as caught:
        list(iter_recipients(path))
    assert str(caught.value).endswith(
        "list.csv:1: no 'email' column (the header has: mail:name); if the columns are "
        'separated by another character, say which: recipients: {path: list.csv, delimiter: ";"}'
    )


def test_explicit_delimiter_wins_over_detection(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email;name\nann@example.com;Ann\n")
    with pytest.raises(RecipientError, match="no 'email' column"):
        list(iter_recipients(path, delimiter=","))
    path.write_text("email:name\nann@example.com:Ann\n")  # not one of those detected
    (ann,) = iter_recipients(path, delimiter=":")
    assert isinstance(ann, Recipient)
    assert ann.name == "Ann"


# --- 9. addresses compared case-insensitively -------------------------------------------------


def test_address_key_ignores_case_of_the_whole_address() -> None:
    assert address_key("Bob@Example.COM") == address_key("bob@example.com")
    assert address_key("Ünal@bücher.example") == address_key("ünal@BÜCHER.example")


def test_suppression_and_duplicates_ignore_case_but_keep_the_address_as_written(
    tmp_path: Path,
) -> None:
    suppress = tmp_path / "suppress.csv"
    suppress.write_text("email\nBOB@example.com\n")
    path = tmp_path / "list.csv"
    path.write_text("email\nbob@example.com\nAnn@Example.com\nann@example.com\n")

    bob, ann, again = iter_recipients(path, suppressed=load_suppressed(suppress))

    assert isinstance(bob, Skipped)
    assert bob.reason == "suppressed"
    assert isinstance(ann, Recipient)
    assert ann.email == "Ann@example.com"  # sent as written (the domain normalised)
    assert isinstance(again, Skipped)
    assert (again.reason, again.detail) == ("duplicate", "same address as line 3")


# --- 10. an empty subject -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "   "])
def test_subject_that_renders_empty_is_an_error(tmp_path: Path, prefix: str) -> None:
    c = CampaignDir(tmp_path)
    c.csv([{**CSV_ROWS[0], "prefix": "Hi"}, {**CSV_ROWS[1], "prefix": prefix}])
    c.write(subject="{{ prefix }}")

    (problem,) = problems_of(c)

    assert "test.yaml:3: subject: renders empty; every mail needs a subject (for " in problem
    assert problem.endswith("list.csv:3)")


# --- 11. values premailer or lxml cannot put in the HTML ------------------------------------


def test_a_control_character_in_a_joined_link_names_the_row_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With base_url premailer rewrites each link, and lxml refuses a control character
    # in an attribute: this was a traceback.
    c = CampaignDir(tmp_path)
    c.template("links.html", '<p>Hi {{ name }}</p><a href="/p/{{ code }}">your page</a>')
    c.csv(
        [
            {**CSV_ROWS[0], "code": "ok"},
            {**CSV_ROWS[1], "code": "a\x01b"},
        ]
    )
    c.write(template="../templates/links.html", base_url="https://news.example.com/")

    (problem,) = problems_of(c)
    lines = cli_check(c, monkeypatch)

    assert "the value of 'code' holds a control character ('\\x01')" in problem
    assert problem.endswith("list.csv:3: code)")
    assert any("list.csv:3: code" in line for line in lines)


def test_a_link_premailer_cannot_parse_names_the_row(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template("links.html", '<p>Hi</p><a href="{{ link }}">your page</a>')
    c.csv(
        [
            {**CSV_ROWS[0], "link": "https://news.example.com/a"},
            {**CSV_ROWS[1], "link": "http://[::1"},
        ]
    )
    c.write(template="../templates/links.html", base_url="https://news.example.com/")

    (problem,) = problems_of(c)

    assert "this row's HTML could not be inlined: ValueError: Invalid IPv6 URL" in problem
    assert problem.endswith("list.csv:3)")
