# ruff: noqa: RUF001 -- Chinese text is written with full-width punctuation
"""Inline images (issue 10, part 3): a local ``<img src="images/logo.png">`` goes inside
each mail as multipart/related (RFC 2387) with a Content-ID, read and encoded once;
``images: link`` keeps URLs; a missing or escaping image is a one-line error; previews
show the images; through check, --dry-run and a real send."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from builders import CampaignDir, preview_mails, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.pipeline import check_campaign

runner = CliRunner()

PNG_LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3
PNG_PHOTO = b"\x89PNG\r\n\x1a\n" + b"photo" * 200

HTML = """\
<!doctype html>
<html><head><meta charset="utf-8"><style>img.logo { width: 120px; }</style></head>
<body>
<p><img class="logo" src="images/logo.png" alt="标志"></p>
<p>{{ first_name }}，你好！来自{{ city }}的消息。</p>
<p>{{ filler }}</p>
<p><img src='images/photo.png' alt="照片"> <img src="https://example.com/remote.png" alt="r">
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="d"></p>
<p><img src="images/logo.png" alt="again"></p>
</body></html>
"""


@pytest.fixture
def c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignDir:
    """A campaign with two local images and a PDF; the working directory is its root."""
    monkeypatch.chdir(tmp_path)
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", HTML)
    (campaign.templates / "images").mkdir()
    (campaign.templates / "images" / "logo.png").write_bytes(PNG_LOGO)
    (campaign.templates / "images" / "photo.png").write_bytes(PNG_PHOTO)
    campaign.file("files/guide.pdf", b"%PDF-1.4 test\n")
    filler = "本月的新闻：新书上架，读书会在周六下午举行，欢迎大家参加。" * 20
    campaign.write(attachments=["files/guide.pdf"], data={"month": "六月", "filler": filler})
    return campaign


def shape(part: EmailMessage) -> object:
    """The MIME tree as nested (type, [children]) / type."""
    if part.is_multipart():
        children = [shape(p) for p in part.iter_parts()]  # type: ignore[arg-type]
        return (part.get_content_subtype(), children)
    return part.get_content_type()


def related(message: EmailMessage) -> EmailMessage:
    found = [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    assert len(found) == 1
    part = found[0]
    assert isinstance(part, EmailMessage)
    return part


def check_embedded(message: EmailMessage) -> dict[str, bytes]:
    """The mail's structure, every cid: resolving, the images base64: {cid: bytes}."""
    assert shape(message) == (
        "mixed",
        [
            ("alternative", ["text/plain", ("related", ["text/html", "image/png", "image/png"])]),
            "application/pdf",
        ],
    )
    rel = related(message)
    assert rel.get_param("type") == "text/html"
    html_part, *images = list(rel.iter_parts())
    html = html_part.get_content()
    by_cid = {}
    for image in images:
        assert image["Content-Transfer-Encoding"] == "base64"
        assert image.get_content_disposition() == "inline"
        by_cid[image["Content-ID"].strip("<>")] = image.get_content()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    cids = [s.removeprefix("cid:") for s in srcs if s.startswith("cid:")]
    assert len(cids) == 3  # logo twice, photo once
    assert set(cids) == set(by_cid)
    assert "https://example.com/remote.png" in srcs
    assert any(s.startswith("data:image/gif") for s in srcs)
    assert "images/" not in html
    return by_cid


def test_check_builds_every_mail(c: CampaignDir) -> None:
    report = check_campaign(c.yaml_path, workers=0)

    assert report.mails == 3
    assert [f.rule for f in report.lint] == []


def test_dry_run_embeds_the_images_once_as_related_parts(c: CampaignDir) -> None:
    mails = preview_mails(c)

    assert len(mails) == 3
    encoded = [check_embedded(m) for m in mails]
    assert sorted(encoded[0].values()) == sorted([PNG_LOGO, PNG_PHOTO])
    assert encoded[0] == encoded[1] == encoded[2]  # the same parts, Content-IDs and all
    raw = [p.read_bytes() for p in sorted((c.root / "previews").glob("*.eml"))]
    logo_part = raw[0][raw[0].index(b"Content-Type: image/png") :].split(b"--=_bulkmail")[0]
    assert all(logo_part in r for r in raw)
    assert "小明，你好！来自杭州的消息。" in mails[2].get_body(("html",)).get_content()  # type: ignore[union-attr]


def test_no_boundary_is_a_prefix_of_another(c: CampaignDir) -> None:
    message = preview_mails(c)[0]

    boundaries = [p.get_boundary() or "" for p in message.walk() if p.is_multipart()]
    assert len(boundaries) == 3
    assert [b[-4:] for b in boundaries] == ["_mix", "_alt", "_rel"]
    for a in boundaries:
        assert [b for b in boundaries if b.startswith(a)] == [a]


def test_the_html_preview_shows_the_image_files(c: CampaignDir) -> None:
    preview_mails(c)

    page = sorted((c.root / "previews").glob("*.html"))[0].read_text("utf-8")
    logo = (c.templates / "images" / "logo.png").resolve().as_uri()
    assert f'src="{logo}"' in page
    assert "cid:" not in page


def test_base_url_does_not_stop_embedding(c: CampaignDir) -> None:
    c.write(base_url="https://example.com/news/")

    check_embedded(preview_mails(c)[0])


def test_a_real_send_delivers_the_images(
    c: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c.write(smtp=smtp_settings(smtpd, tls))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--yes"])

    assert result.exit_code == 0, result.output
    received = [m.parsed() for m in smtpd.inbox.messages]
    assert len(received) == 3
    for message in received:
        assert sorted(check_embedded(message).values()) == sorted([PNG_LOGO, PNG_PHOTO])


def test_images_link_keeps_urls(c: CampaignDir) -> None:
    c.write(images="link", base_url="https://example.com/news/")

    message = preview_mails(c)[0]

    assert not [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert 'src="https://example.com/news/images/logo.png"' in html
    assert "cid:" not in html


def test_a_bad_images_setting_is_an_error(c: CampaignDir) -> None:
    c.write(images="attach")

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 1
    assert "images" in result.output
    assert "'attach'" in result.output


@pytest.mark.parametrize(
    ("src", "says"),
    [
        ("images/missing.png", "no such file"),
        ("../campaigns/files/guide.pdf", "outside"),
        ("/etc/hosts", "absolute"),
    ],
)
def test_a_bad_image_is_a_one_line_error_naming_the_template_line(
    c: CampaignDir, src: str, says: str
) -> None:
    c.template("issue.html", HTML.replace("images/photo.png", src))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run"])

    assert result.exit_code == 1
    first, *rest = result.output.strip().splitlines()
    assert first.startswith("error: templates/issue.html:7: image ")
    assert src in first
    assert says in first
    assert rest == ["nothing was sent."]
    assert not list(c.root.glob("previews/*.eml"))


def test_a_per_recipient_src_is_left_a_url(c: CampaignDir) -> None:
    c.template("issue.html", HTML.replace("images/photo.png", "images/{{ city }}.png"))

    html = preview_mails(c)[0].get_body(("html",)).get_content()  # type: ignore[union-attr]

    assert 'src="images/Lyon.png"' in html
    assert html.count('src="cid:') == 2


def test_lint_still_sees_an_image_without_alt(c: CampaignDir) -> None:
    c.template("issue.html", HTML.replace(' alt="标志"', ""))

    report = check_campaign(c.yaml_path, workers=0)

    assert [f.rule for f in report.lint] == ["image-no-alt"]


def test_a_markdown_image_is_embedded(c: CampaignDir) -> None:
    c.template("issue.md", "# Hi {{ first_name }}\n\n![logo](images/logo.png)\n")
    c.write(template=None, markdown="../templates/issue.md", attachments=None)

    message = preview_mails(c)[0]

    html_part, image = list(related(message).iter_parts())
    assert image.get_content() == PNG_LOGO
    assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html_part.get_content()


MARKDOWN_ZH = """\
# {{ first_name }}，{{ month }}的通讯

来自{{ city }}的读者，你好！

![标志](images/logo.png)

- 新书上架
- 读书会在周六下午举行

![照片](images/photo.png)

[阅读全文](https://example.com/news)
"""


def test_a_chinese_markdown_newsletter_with_two_images_and_a_pdf(
    c: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10's own example: checked, previewed (every .eml parsed) and sent."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c.template("issue.md", MARKDOWN_ZH)
    c.write(template=None, markdown="../templates/issue.md", smtp=smtp_settings(smtpd, tls))
    assert check_campaign(c.root / "campaigns" / "test.yaml").mails == 3

    previews = preview_mails(c)
    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--yes"])

    assert result.exit_code == 0, result.output
    sent = [m.parsed() for m in smtpd.inbox.messages]
    assert len(previews) == len(sent) == 3
    for message in [*previews, *sent]:
        related_part = ("related", ["text/html", "image/png", "image/png"])
        alternative = ("alternative", ["text/plain", related_part])
        assert shape(message) == ("mixed", [alternative, "application/pdf"])
        html_part, *images = list(related(message).iter_parts())
        assert sorted(i.get_content() for i in images) == sorted([PNG_LOGO, PNG_PHOTO])
        html = html_part.get_content()
        for image in images:
            assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html
        assert "images/" not in html
        text = message.get_body(preferencelist=("plain",))
        assert text is not None
        assert text.get_content_charset() == "utf-8"
        plain = text.get_content()
        assert "的通讯" in plain
        assert "阅读全文 (https://example.com/news)" in plain
    assert {str(m["To"]).split("<")[-1].rstrip(">") for m in sent} == set(smtpd.inbox.recipients)
