"""Deliverability checks (issue 12, parts 2 and 3): each rule fires on a minimal bad
campaign, with its id and the place to fix it, and never on the example campaign;
``--strict`` makes the warnings errors (exit 1, nothing sent); ``--json`` lists them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.deliverability import RULES, rule_dkim_domain_not_aligned
from bulkmail.load.campaign import load_campaign
from bulkmail.models import DkimSettings
from bulkmail.pipeline import check_campaign, preview_campaign
from bulkmail.reports import Finding

EXAMPLE = Path(__file__).parent.parent / "campaigns" / "june.yaml"
runner = CliRunner()

# A clean mail: enough text, https links, an unsubscribe link, images with alt.
CLEAN = """\
<!doctype html>
<html><head><meta charset="utf-8"></head>
<body>
<div style="display: none; font-size: 1px; color: #ffffff; opacity: 0">A hidden preheader</div>
<p>Hello {{ first_name }}, here is the {{ month }} issue of our newsletter, with news
from {{ city }}, the books we read this month and the events coming up at the shop.
We hope you enjoy reading it as much as we enjoyed writing it for you this time.</p>
{BODY}
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> &middot;
<a href="https://example.com/past">Past issues</a></p>
</body></html>
"""


def page(body: str) -> str:
    return CLEAN.replace("{BODY}", body)


def without_unsubscribe_link() -> str:
    return (
        page("")
        .replace(">Unsubscribe<", ">Our shop<")
        .replace("{{ unsubscribe_url }}", "https://example.com/")
    )


def findings(c: CampaignDir) -> list[Finding]:
    return check_campaign(c.yaml_path, workers=0).lint


def rules(c: CampaignDir) -> set[str]:
    return {finding.rule for finding in findings(c)}


def only(c: CampaignDir, rule: str) -> Finding:
    found = [f for f in findings(c) if f.rule == rule]
    assert len(found) == 1, found
    return found[0]


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text("utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if needle in line)


@pytest.fixture
def c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignDir:
    """A clean campaign of 3 rows; the working directory is its root (places are relative)."""
    monkeypatch.chdir(tmp_path)
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", page(""))
    campaign.write()
    return campaign


# --- the example is the model ------------------------------------------------------------


def test_the_example_campaign_triggers_no_deliverability_warning() -> None:
    report = check_campaign(EXAMPLE, workers=0)

    assert report.lint == []
    assert report.warnings == []


def test_the_example_previews_trigger_none_either(tmp_path: Path) -> None:
    report = preview_campaign(EXAMPLE, out=tmp_path / "out", workers=0)

    assert report.lint == []


def test_the_clean_test_campaign_triggers_none(c: CampaignDir) -> None:
    assert findings(c) == []


# --- each rule -----------------------------------------------------------------------------


def test_html_over_102_kb_is_clipped_by_gmail_and_the_size_is_shown(c: CampaignDir) -> None:
    filler = "{% for i in range(2500) %}<p>Paragraph {{ i }} of a very long issue.</p>{% endfor %}"
    c.template("issue.html", page(filler))

    finding = only(c, "html-too-large")

    assert str(finding.where) == "templates/issue.html"
    assert "the HTML part is 1" in finding.message
    assert "kB (the largest)" in finding.message
    assert "102.0 kB" in finding.message


def test_a_mail_over_10_mb_warns_with_its_row(c: CampaignDir) -> None:
    c.file("files/big.bin", b"\0" * 7_600_000)  # base64: over 10 MB in the mail
    c.write(attachments=["files/big.bin"])

    finding = only(c, "mail-too-large")

    assert str(finding.row) == "campaigns/list.csv:2"
    assert finding.more_rows == 2  # every mail is checked, merged into one line
    assert "and 2 more rows" in str(finding)
    assert "[mail-too-large] (for campaigns/list.csv:2 and 2 more rows)" in str(finding)


def test_an_image_without_alt_is_found_on_its_template_line(c: CampaignDir) -> None:
    path = c.template("issue.html", page('<p><img src="https://example.com/logo.png"></p>'))

    finding = only(c, "image-no-alt")

    line = line_of(path, "logo.png")
    assert str(finding.where) == f"templates/issue.html:{line}"
    assert finding.row is None  # the template's: every mail has it
    assert str(finding).startswith(f"templates/issue.html:{line}: image ")


def test_an_empty_alt_is_a_decorative_image_and_fine(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><img src="https://example.com/rule.png" alt=""></p>'))

    assert "image-no-alt" not in rules(c)


def test_an_image_with_little_text_is_an_image_only_mail(c: CampaignDir) -> None:
    c.template(
        "issue.html",
        '<html><body><img src="https://example.com/sale.png" alt="Sale">'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>',
    )

    assert "image-only" in rules(c)


def test_an_http_link_is_found_on_its_template_line(c: CampaignDir) -> None:
    path = c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))

    finding = only(c, "http-link")

    assert str(finding.where) == f"templates/issue.html:{line_of(path, 'http://')}"
    assert "'http://example.com/shop'" in finding.message


def test_an_http_link_from_the_list_names_the_csv_row_and_column(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><a href="{{ site }}">Your page</a></p>'))
    rows = [dict(r, site="https://example.com/a") for r in people(3)]
    rows[1]["site"] = "http://example.com/b"
    c.csv(rows)

    finding = only(c, "http-link")

    assert str(finding.where) == "campaigns/list.csv:3: site"


def test_an_http_link_from_the_campaign_data_names_the_setting(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><a href="{{ shop }}">Shop</a></p>'))
    c.write(data={"month": "June", "shop": "http://example.com/shop"})

    finding = only(c, "http-link")

    assert finding.where.path == c.yaml_path
    assert finding.where.field == "data"
    assert finding.where.line == line_of(c.yaml_path, "http://example.com/shop")


def test_a_link_showing_another_address_than_it_goes_to(c: CampaignDir) -> None:
    c.template(
        "issue.html",
        page('<p><a href="https://login.example.net/x">https://example.com/account</a></p>'),
    )

    finding = only(c, "link-text-mismatch")

    assert "'login.example.net'" in finding.message


def test_a_link_showing_its_own_address_is_fine(c: CampaignDir) -> None:
    c.template(
        "issue.html", page('<p><a href="https://www.example.com/a?utm=x">example.com/a</a></p>')
    )

    assert "link-text-mismatch" not in rules(c)


def test_no_visible_unsubscribe_link_in_a_bulk_campaign(c: CampaignDir) -> None:
    c.template("issue.html", without_unsubscribe_link())
    c.csv(people(100))

    finding = only(c, "no-unsubscribe-link")

    assert str(finding.where) == "templates/issue.html"


def test_an_unsubscribe_link_hidden_with_the_preheader_does_not_count(c: CampaignDir) -> None:
    c.template(
        "issue.html",
        without_unsubscribe_link().replace(
            "A hidden preheader", '<a href="{{ unsubscribe_url }}">u</a>'
        ),
    )
    c.csv(people(100))

    assert "no-unsubscribe-link" in rules(c)


def test_no_unsubscribe_warning_for_a_short_list(c: CampaignDir) -> None:
    """Below 100 mails a campaign is probably not a newsletter (as for `unsubscribe:`)."""
    c.template("issue.html", without_unsubscribe_link())

    assert "no-unsubscribe-link" not in rules(c)


def test_a_from_domain_the_dkim_domain_does_not_align_with(c: CampaignDir) -> None:
    campaign = load_campaign(c.yaml_path)
    other = DkimSettings(domain="mailer.example.org", selector="s1")
    same_org = DkimSettings(domain="mail.example.com", selector="s1")

    found = list(rule_dkim_domain_not_aligned(dataclasses.replace(campaign, dkim=other)))
    aligned = list(rule_dkim_domain_not_aligned(dataclasses.replace(campaign, dkim=same_org)))

    assert [f.rule for f in found] == ["dkim-domain-not-aligned"]
    assert "mailer.example.org" in found[0].message
    assert "last two labels" in found[0].message
    assert found[0].where.field == "from"
    assert aligned == []


def test_a_from_domain_the_login_does_not_align_with(c: CampaignDir) -> None:
    smtp = {"host": "smtp.example.com", "username": "news@mailer.example.org"}
    c.write(smtp={**smtp, "password_env": PASSWORD_ENV})

    finding = only(c, "login-domain-not-aligned")

    assert finding.where.path == c.yaml_path
    assert finding.where.field == "from"
    assert "news@mailer.example.org" in finding.message


def test_a_login_of_a_subdomain_of_the_from_domain_aligns(c: CampaignDir) -> None:
    smtp = {"host": "smtp.example.com", "username": "bulk@mail.example.com"}
    c.write(smtp={**smtp, "password_env": PASSWORD_ENV})

    assert "login-domain-not-aligned" not in rules(c)


def test_text_in_the_background_colour_is_hidden_text(c: CampaignDir) -> None:
    path = c.template(
        "issue.html",
        page(
            '<p style="color: #ffffff">cheap pills here</p>'
            '<table><tr><td bgcolor="#000000"><span style="color: #0a0a0a">dark on dark</span>'
            "</td></tr></table>"
        ),
    )

    found = [f for f in findings(c) if f.rule == "hidden-text"]

    assert len(found) == 2
    assert str(found[0].where) == f"templates/issue.html:{line_of(path, 'cheap pills')}"
    assert "#ffffff on #ffffff" in found[0].message
    assert "#0a0a0a on #000000" in found[1].message


def test_light_text_on_a_dark_background_is_fine(c: CampaignDir) -> None:
    c.template(
        "issue.html",
        page('<div style="background: #2c3e50 !important"><p style="color: #fff">Read</p></div>'),
    )

    assert "hidden-text" not in rules(c)


def test_a_tiny_font_is_hidden_text(c: CampaignDir) -> None:
    c.template("issue.html", page('<p style="font-size: 2px">small print</p>'))

    finding = only(c, "tiny-font")

    assert "2px" in finding.message


def test_a_preheader_hidden_with_display_none_fires_nothing(c: CampaignDir) -> None:
    # CLEAN's preheader: display none, 1px, white on white, opacity 0
    assert rules(c) == set()


def test_an_empty_text_part(c: CampaignDir) -> None:
    c.template("issue.txt", "\n")
    c.write(text_template="../templates/issue.txt")

    finding = only(c, "text-part-empty")

    assert str(finding.where) == "templates/issue.txt"


def test_a_subject_too_long_for_any_inbox(c: CampaignDir) -> None:
    c.write(subject="{{ first_name }}, " + "all the news of the month in one long line " * 2)

    finding = only(c, "subject-too-long")

    assert finding.where.path == c.yaml_path
    assert finding.where.field == "subject"
    assert finding.more_rows == 2  # the three rows merged


def test_a_subject_in_capitals(c: CampaignDir) -> None:
    c.write(subject="HUGE SALE FOR {{ first_name | upper }}")

    finding = only(c, "subject-all-caps")

    assert str(finding).endswith("[subject-all-caps] (for campaigns/list.csv:2 and 2 more rows)")


def test_a_subject_with_one_capitalised_word_is_fine(c: CampaignDir) -> None:
    c.write(subject="{{ first_name }}, the NEW issue")

    assert rules(c) == set()


def test_every_rule_id_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    section = readme.split("## Deliverability checks", 1)[1].split("\n## ", 1)[0]

    assert [rule for rule in RULES if f"`{rule}`" not in section] == []


# --- the CLI: --strict and --json ------------------------------------------------------------


def test_check_json_lists_the_warnings_with_their_ids(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))

    result = runner.invoke(app, ["check", "campaigns/test.yaml", "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [item["rule"] for item in data["lint"]] == ["http-link"]
    assert data["lint"][0]["where"].startswith("templates/issue.html:")
    assert data["warnings"] == [data["lint"][0]["text"]]


def test_check_shows_the_warning_and_exits_0(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 0
    assert "warning: templates/issue.html:" in result.stderr
    assert "[http-link]" in result.stderr


def test_check_strict_makes_the_warning_an_error(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))

    result = runner.invoke(app, ["check", "campaigns/test.yaml", "--strict", "--json"])

    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: templates/issue.html:")
    assert lines[0].endswith("[http-link]")
    assert lines[-1] == "1 problem; nothing was sent."


def test_check_strict_of_a_clean_campaign_passes(c: CampaignDir) -> None:
    result = runner.invoke(app, ["check", "campaigns/test.yaml", "--strict"])

    assert result.exit_code == 0, result.output


def test_run_strict_sends_nothing(
    c: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))
    c.write(smtp=smtp_settings(smtpd, tls))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--yes", "--strict"])

    assert result.exit_code == 1
    assert "[http-link]" in result.stderr
    assert "nothing was sent" in result.stderr
    assert smtpd.inbox.messages == []
    assert smtpd.inbox.connections == []


def test_run_without_strict_sends_with_the_warning_shown(
    c: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))
    c.write(smtp=smtp_settings(smtpd, tls))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--yes"])

    assert result.exit_code == 0, result.output
    assert "warning: templates/issue.html:" in result.stderr
    assert len(smtpd.inbox.messages) == 3


def test_hidden_text_with_a_value_in_it_is_found_by_its_first_words(c: CampaignDir) -> None:
    path = c.template(
        "issue.html", page('<p style="color: #fefefe">A secret offer for {{ first_name }}</p>')
    )

    finding = only(c, "hidden-text")

    assert str(finding.where) == f"templates/issue.html:{line_of(path, 'A secret offer')}"
    assert finding.row is None


def test_a_strict_dry_run_exits_1(c: CampaignDir) -> None:
    c.template("issue.html", page('<p><a href="http://example.com/shop">Shop</a></p>'))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run", "--strict"])

    assert result.exit_code == 1
    assert "[http-link]" in result.stderr
