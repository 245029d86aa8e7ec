"""Loading campaign YAML: typed settings, paths, defaults and errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import CampaignDir

from bulkmail.errors import ConfigError
from bulkmail.load.campaign import load_campaign

EXAMPLE = Path(__file__).parent.parent / "campaigns" / "june.yaml"


def test_example_campaign_loads_with_paths_resolved_beside_the_yaml() -> None:
    campaign = load_campaign(EXAMPLE)
    root = EXAMPLE.parent.parent
    assert campaign.name == "june-2026"
    assert campaign.template == root / "templates" / "june.html"
    assert campaign.recipients == root / "campaigns" / "june.csv"
    assert campaign.preview_out == root / "previews" / "june"
    assert campaign.journal_dir == root / "campaigns" / ".bulkmail"
    assert campaign.smtp is not None
    assert (campaign.smtp.host, campaign.smtp.port, campaign.smtp.security) == (
        "smtp.example.com",
        465,
        "ssl",
    )
    assert campaign.smtp.password_env == "BULKMAIL_SMTP_PASSWORD"
    assert campaign.rate.per_second == 5
    assert campaign.data["month"] == "June"


def test_loading_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_campaign(EXAMPLE).template == EXAMPLE.parent.parent / "templates" / "june.html"


def test_defaults(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    path = c.write(name=None, preview=None, unsubscribe=None, rate=None)
    campaign = load_campaign(path)
    assert campaign.name == "test"  # the file's stem
    assert campaign.preview_out == c.campaigns / "previews" / "test"
    assert (campaign.rate.per_second, campaign.rate.burst) == (1.0, 1)  # conservative
    assert campaign.smtp is None
    assert campaign.attachments == ()


@pytest.mark.parametrize(("security", "port"), [("ssl", 465), ("starttls", 587), ("none", 25)])
def test_smtp_port_defaults_to_the_security_mode(tmp_path: Path, security: str, port: int) -> None:
    path = CampaignDir(tmp_path).write(smtp={"host": "smtp.example.com", "security": security})
    smtp = load_campaign(path).smtp
    assert smtp is not None
    assert (smtp.port, smtp.security, smtp.timeout) == (port, security, 30.0)


@pytest.mark.parametrize(
    ("rate", "per_second", "text"),
    [
        ({"per_second": 5}, 5.0, "5 per second"),
        ({"per_minute": 120}, 2.0, "120 per minute"),
        ({"per_hour": 3600, "burst": 10}, 1.0, "3600 per hour"),
        ({"per_second": 0}, None, "unlimited"),
    ],
)
def test_rate_is_normalised_to_per_second(
    tmp_path: Path, rate: dict[str, int], per_second: float | None, text: str
) -> None:
    campaign = load_campaign(CampaignDir(tmp_path).write(rate=rate))
    assert campaign.rate.per_second == per_second
    assert campaign.rate.text == text
    assert campaign.rate.burst == rate.get("burst", 1)


def test_attachments_plain_and_templated(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.file("files/report.pdf", b"%PDF-1.4")
    path = c.write(
        attachments=[
            "files/report.pdf",
            {"path": "files/{{ cid }}.pdf", "filename": "invoice-{{ cid }}.pdf"},
        ]
    )
    first, second = load_campaign(path).attachments
    assert (first.path, first.templated, first.filename) == (
        str(c.campaigns / "files" / "report.pdf"),
        False,
        None,
    )
    assert second.templated
    assert second.path == str(c.campaigns / "files/{{ cid }}.pdf")
    assert second.filename == "invoice-{{ cid }}.pdf"
    assert str(second.where).endswith("test.yaml:16: attachments[1]")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"smtp": {"host": "h", "security": "tls"}}, "'tls': must be one of ssl"),
        ({"smtp": {"host": "h", "port": 70000}}, "70000: not a TCP port"),
        ({"smtp": {"host": "h", "port": "x"}}, "must be a whole number of at least 1, not str"),
        ({"smtp": {"port": 25}}, "smtp: needs a 'host'"),
        ({"smtp": {"host": "h", "password_env": "s3cr3t!"}}, "must be the name of an environment"),
        ({"rate": {"per_second": 1, "per_minute": 2}}, "give exactly one of per_second"),
        ({"rate": {"per_second": -1}}, "must be a number of at least 0"),
        ({"name": "june 2026"}, "'june 2026': use letters, digits"),
        ({"subject": ""}, "subject: must be a non-empty text"),
        ({"data": ["a"]}, "data: must be a mapping of settings, not a list"),
        ({"attachments": "x.pdf"}, "attachments: must be a list"),
        ({"headers": {"Bcc": "x@example.com"}}, "'Bcc': not a header a campaign may set"),
        ({"base_url": "ftp://x"}, "must be an http(s) URL"),
        ({"unsubscribe": {}}, "unsubscribe: needs a 'url' (https) and/or a 'mailto' address"),
    ],
)
def test_wrong_settings_are_refused_with_their_place(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    path = CampaignDir(tmp_path).write(**changes)
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert message in str(info.value)
    assert info.value.where is not None
    assert info.value.where.path == path
    assert info.value.where.line is not None


def test_empty_file(tmp_path: Path) -> None:
    path = CampaignDir(tmp_path).raw("")
    with pytest.raises(ConfigError, match="the campaign file is empty"):
        load_campaign(path)


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    path = c.raw(
        "from: a@example.com\nsubject: one\nsubject: two\n"
        "template: ../templates/issue.html\nrecipients: list.csv\n"
    )
    with pytest.raises(ConfigError, match="subject: is set twice") as info:
        load_campaign(path)
    assert info.value.where is not None
    assert info.value.where.line == 3


def test_custom_headers_are_kept(tmp_path: Path) -> None:
    path = CampaignDir(tmp_path).write(headers={"X-Campaign-Owner": "marketing"})
    assert load_campaign(path).headers == {"X-Campaign-Owner": "marketing"}
