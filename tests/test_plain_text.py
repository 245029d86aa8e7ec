"""Plain-text campaigns (issue 10, part 1): ``text_template:`` without ``template:`` sends
one text/plain part (no HTML) through check, previews and a real send; a ``template:``
that is plainly not HTML (no tags, or mailmerge header lines) is a warning at its line."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
from builders import CampaignDir, parse_mail, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.pipeline import check_campaign

runner = CliRunner()

TEXT = """\
Hello {{ first_name }},

The {{ month }} issue is out. Your city: {{ city }}.

Unsubscribe: {{ unsubscribe_url }}
"""


@pytest.fixture
def c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignDir:
    """A text-only campaign of 3 rows (one Chinese); the working directory is its root."""
    monkeypatch.chdir(tmp_path)
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.txt", TEXT)
    campaign.write(template=None, text_template="../templates/issue.txt")
    return campaign


def expected(first_name: str, city: str) -> str:
    return (
        f"Hello {first_name},\n\nThe June issue is out. Your city: {city}.\n\n"
        f"Unsubscribe: https://example.com/u?e="
    )


def assert_text_only(message: EmailMessage, first_name: str, city: str) -> None:
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert not message.is_multipart()
    assert expected(first_name, city) in message.get_content().replace("\r\n", "\n")


def test_check_builds_text_only_mails_without_lint_about_html(c: CampaignDir) -> None:
    report = check_campaign(c.yaml_path, workers=0)

    assert report.mails == 3
    assert [f.rule for f in report.lint] == []


def test_a_bulk_text_only_campaign_with_its_unsubscribe_url_in_the_text_is_clean(
    c: CampaignDir,
) -> None:
    c.csv(people(120))

    report = check_campaign(c.yaml_path, workers=0)

    assert report.mails == 120
    assert [f.rule for f in report.lint] == []


def test_dry_run_writes_one_text_part_per_mail_and_a_readable_view(c: CampaignDir) -> None:
    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run"])

    assert result.exit_code == 0, result.output
    out = c.root / "previews"
    emls = sorted(out.glob("*.eml"))
    assert len(emls) == 3
    assert_text_only(parse_mail(emls[0].read_bytes()), "Alice", "Lyon")
    chinese = parse_mail(emls[2].read_bytes())
    assert_text_only(chinese, "小明", "杭州")
    assert chinese["Content-Transfer-Encoding"] == "quoted-printable"
    ascii_mail = emls[0].read_bytes()
    assert b"Content-Transfer-Encoding: 7bit" in ascii_mail
    assert b"Hello Alice," in ascii_mail  # 7bit: the text as it is
    view = (out / emls[0].with_suffix(".html").name).read_text("utf-8")
    assert "<pre>" in view
    assert "pre-wrap" in view
    assert "Hello Alice," in view
    index = (out / "index.html").read_text("utf-8")
    assert "Alice, the June issue" in index
    assert f'href="{emls[0].with_suffix(".html").name}">text</a>' in index


def test_the_text_view_escapes_markup(c: CampaignDir) -> None:
    c.csv([{"email": "a@example.com", "name": "A", "first_name": "<b>x</b>", "city": "&"}])

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run"])

    assert result.exit_code == 0, result.output
    text = next((c.root / "previews").glob("0*.html")).read_text("utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in text
    assert "<b>x</b>" not in text


def test_attachments_stay_in_multipart_mixed(c: CampaignDir) -> None:
    c.file("files/guide.pdf", b"%PDF-1.4 test\n")
    c.write(attachments=["files/guide.pdf"])

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run"])

    assert result.exit_code == 0, result.output
    message = parse_mail(sorted((c.root / "previews").glob("*.eml"))[1].read_bytes())
    assert message.get_content_type() == "multipart/mixed"
    parts = [p.get_content_type() for p in message.iter_parts()]
    assert parts == ["text/plain", "application/pdf"]
    body = next(message.iter_parts())
    assert isinstance(body, EmailMessage)
    assert expected("Bob", "Leeds") in body.get_content().replace("\r\n", "\n")


def test_a_real_send_delivers_text_only_mails(
    c: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c.write(smtp=smtp_settings(smtpd, tls))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--yes"])

    assert result.exit_code == 0, result.output
    assert sorted(smtpd.inbox.recipients) == [
        "alice@example.com", "bob@example.org", "wang@example.net",
    ]  # fmt: skip
    by_rcpt = {m.rcpt_tos[0]: m.parsed() for m in smtpd.inbox.messages}
    assert_text_only(by_rcpt["wang@example.net"], "小明", "杭州")


def test_neither_template_nor_text_template_is_an_error(c: CampaignDir) -> None:
    c.write(text_template=None)

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 1
    assert "template" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("Hello {{ first_name }},\n\nNo markup here at all.\n", 1),
        ("TO: {{ email }}\nSUBJECT: Hi\n\n<p>Hello {{ first_name }}</p>\n", 1),
        ("\nFROM: news@example.com\n<p>Hi</p>\n", 2),
    ],
)
def test_a_template_that_is_not_html_is_a_warning_at_its_line(
    c: CampaignDir, source: str, line: int
) -> None:
    c.template("issue.html", source)
    c.write(template="../templates/issue.html", text_template=None)

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 0, result.output
    assert f"warning: templates/issue.html:{line}:" in result.stderr
    assert "[template-not-html]" in result.stderr


def test_an_html_template_is_no_such_warning(c: CampaignDir) -> None:
    c.write(template="../templates/issue.html", text_template=None)

    report = check_campaign(c.yaml_path, workers=0)

    assert "template-not-html" not in {f.rule for f in report.lint}
