"""Dry-run previews: one .html and one .eml per mailed recipient, an index, atomic replacement."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import lxml.html
import pytest
from builders import CSV_ROWS, CampaignDir
from preview_folders import index_rows, leftovers, names, snapshot

from bulkmail import ConfigError, PreflightError, preview_campaign
from bulkmail.deliver.preview import MARKER

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


def parse(path: Path) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert isinstance(msg, EmailMessage)
    return msg


def test_preview_writes_an_html_and_an_eml_per_recipient_and_an_index(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/programme.pdf", PDF)
    campaign.write(attachments=["files/programme.pdf"])

    report = preview_campaign(campaign.yaml_path)

    out = tmp_path / "previews"
    assert report.out == out
    assert report.mails == 3
    stems = ["00001-alice@example.com", "00002-bob@example.org", "00003-wang@example.net"]
    assert names(out, ".html") == [f"{stem}.html" for stem in stems]
    assert names(out, ".eml") == [f"{stem}.eml" for stem in stems]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "index.html", *(f"{s}.html" for s in stems), *(f"{s}.eml" for s in stems)]
    )
    assert report.total_bytes == sum((out / f"{stem}.eml").stat().st_size for stem in stems)
    rows = index_rows(out)
    assert len(rows) == 3
    for row, stem, csv_row in zip(rows, stems, CSV_ROWS, strict=True):
        text = row.text_content()
        assert csv_row["name"] in text
        assert csv_row["email"] in text
        assert f"{csv_row['first_name']}, the June issue" in text
        assert "programme.pdf" in text
        size = (out / f"{stem}.eml").stat().st_size
        assert f"{size / 1000:.1f} kB" in text
        links = set(row.xpath(".//a/@href"))
        assert links == {f"{stem}.html", f"{stem}.eml"}
    assert leftovers(out) == []


def test_every_eml_parses_back_into_the_expected_parts(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/programme.pdf", PDF)
    campaign.write(attachments=["files/programme.pdf"])

    preview_campaign(campaign.yaml_path)

    emls = sorted((tmp_path / "previews").glob("*.eml"))
    assert len(emls) == 3
    for path, row in zip(emls, CSV_ROWS, strict=True):
        msg = parse(path)
        assert msg.defects == []
        assert msg.get_content_type() == "multipart/mixed"
        alternative, attachment = msg.iter_parts()
        assert [p.get_content_type() for p in alternative.iter_parts()] == [
            "text/plain",
            "text/html",
        ]
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_payload(decode=True) == PDF
        assert [a.addr_spec for a in msg["To"].addresses] == [row["email"]]
        html = msg.get_body(preferencelist=("html",))
        assert html is not None
        html_file = path.with_suffix(".html").read_text(encoding="utf-8")
        assert html.get_content().splitlines() == html_file.splitlines()


def test_html_preview_has_inline_style_attributes(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    preview_campaign(campaign.yaml_path)

    html = (tmp_path / "previews" / "00001-alice@example.com.html").read_text(encoding="utf-8")
    (greeting,) = lxml.html.fromstring(html).xpath("//p[@class='greeting']")
    assert "color:#c0392b" in greeting.get("style").replace(" ", "")
    assert greeting.text_content() == "Hello Alice,"


def test_index_escapes_recipient_data(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([{**CSV_ROWS[0], "name": "Eve <b>Bold</b>", "first_name": "<i>Eve</i>"}])
    campaign.write()

    preview_campaign(campaign.yaml_path)

    index = (tmp_path / "previews" / "index.html").read_text(encoding="utf-8")
    assert "Eve &lt;b&gt;Bold&lt;/b&gt;" in index
    assert "&lt;i&gt;Eve&lt;/i&gt;, the June issue" in index
    document = lxml.html.fromstring(index)
    assert document.xpath("//tbody//b|//tbody//i") == []


def test_only_mailed_recipients_are_previewed(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([*CSV_ROWS, {**CSV_ROWS[0], "email": "alice@EXAMPLE.COM"}])
    campaign.file("suppressed.csv", "email\nbob@example.org\n")
    campaign.write(suppress="suppressed.csv")

    report = preview_campaign(campaign.yaml_path)

    out = tmp_path / "previews"
    assert names(out, ".eml") == ["00001-alice@example.com.eml", "00002-wang@example.net.eml"]
    assert len(index_rows(out)) == 2
    assert (report.mails, report.duplicates, report.suppressed) == (2, 1, 1)


def test_rerun_with_fewer_rows_leaves_no_stale_files(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    campaign.csv(CSV_ROWS[2:])

    preview_campaign(campaign.yaml_path)

    out = tmp_path / "previews"
    assert names(out, ".eml") == ["00001-wang@example.net.eml"]
    assert names(out, ".html") == ["00001-wang@example.net.html"]
    assert len(index_rows(out)) == 1
    assert leftovers(out) == []


def test_failed_run_leaves_the_previous_previews_untouched(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    out = tmp_path / "previews"
    before = snapshot(out)
    campaign.csv([CSV_ROWS[0], {**CSV_ROWS[1], "email": "bob@@example.org"}])

    with pytest.raises(PreflightError) as caught:
        preview_campaign(campaign.yaml_path)

    (problem,) = caught.value.problems
    assert problem.where is not None
    assert (Path(problem.where.path), problem.where.line) == (campaign.csv_path, 3)
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_failed_first_run_creates_no_folder(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", "<p>{{ first_nme }}</p>\n")
    campaign.write()

    with pytest.raises(PreflightError):
        preview_campaign(campaign.yaml_path)

    assert not (tmp_path / "previews").exists()
    assert leftovers(tmp_path / "previews") == []


def test_limit_previews_the_first_recipients(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    report = preview_campaign(campaign.yaml_path, limit=2)

    out = tmp_path / "previews"
    assert report.mails == 2
    assert names(out, ".eml") == ["00001-alice@example.com.eml", "00002-bob@example.org.eml"]
    assert len(index_rows(out)) == 2


def test_out_overrides_the_campaign_preview_folder(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    report = preview_campaign(campaign.yaml_path, out=tmp_path / "elsewhere")

    assert report.out == tmp_path / "elsewhere"
    assert len(names(tmp_path / "elsewhere", ".eml")) == 3
    assert not (tmp_path / "previews").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_preview(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    out = tmp_path / "previews"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"years of work")

    with pytest.raises(ConfigError, match="refusing to replace it"):
        preview_campaign(campaign.yaml_path)

    assert snapshot(out) == {"thesis.docx": b"years of work"}
    assert leftovers(out) == []


def test_an_empty_existing_folder_is_used(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    (tmp_path / "previews").mkdir()

    report = preview_campaign(campaign.yaml_path)

    assert report.mails == 3
    assert (tmp_path / "previews" / MARKER).is_file()


def test_refuses_a_preview_path_that_is_a_file(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    (tmp_path / "previews").write_bytes(b"notes")

    with pytest.raises(ConfigError):
        preview_campaign(campaign.yaml_path)

    assert (tmp_path / "previews").read_bytes() == b"notes"
