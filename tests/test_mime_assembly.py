"""The spliced messages parse back exactly like ones the email package builds whole."""

from __future__ import annotations

import re
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from builders import CSV_ROWS, CampaignDir

from bulkmail.compose.message import MessageBuilder
from bulkmail.compose.render import Renderer
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import OutgoingMail, Recipient, RenderedMail

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 300
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


def reference(
    mail: OutgoingMail, rendered: RenderedMail, campaign_dir: CampaignDir
) -> EmailMessage:
    """The same mail built whole with the email package's high-level API."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address("Bulkmail Team", addr_spec="news@example.com")
    local, _, domain = mail.recipient.email.rpartition("@")
    msg["To"] = Address(mail.recipient.name, local, domain)
    msg["Subject"] = rendered.subject
    msg["X-Bulkmail-Campaign"] = "test-campaign"
    msg["X-Owner"] = "marketing"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="六月 report.pdf")
    for _, path, filename in rendered.attachments:
        msg.add_attachment(path.read_bytes(), maintype="image", subtype="png", filename=filename)
    return msg


def summary(msg: EmailMessage) -> list[tuple[str, object]]:
    """What a mail client sees: each part's type, name and decoded content."""
    out: list[tuple[str, object]] = []
    for part in msg.walk():
        if part.is_multipart():
            out.append((part.get_content_type(), None))
        else:
            out.append((part.get_content_type(), (part.get_filename(), part.get_content())))
    return out


@pytest.fixture
def campaign(tmp_path: Path) -> CampaignDir:
    c = CampaignDir(tmp_path)
    c.file("files/report.pdf", PDF)
    c.file("files/Alice.png", PNG)
    c.file("files/Bob.png", PNG[::-1])
    c.file("files/小明.png", PNG + b"x")
    c.write(
        attachments=[
            {"path": "files/report.pdf", "filename": "六月 report.pdf"},
            {"path": "files/{{ first_name }}.png", "filename": "photo-{{ first_name }}.png"},
        ],
        headers={"X-Owner": "marketing"},
        unsubscribe=None,
    )
    return c


def test_spliced_messages_match_the_email_packages_own(campaign: CampaignDir) -> None:
    loaded = load_campaign(campaign.yaml_path)
    renderer, builder = Renderer.load(loaded), MessageBuilder.load(loaded)
    recipients = [r for r in iter_recipients(loaded.recipients) if isinstance(r, Recipient)]
    assert len(recipients) == len(CSV_ROWS)
    for index, recipient in enumerate(recipients, start=1):
        rendered = renderer.render(recipient)
        mail = builder.build(index, recipient, rendered)
        ours = BytesParser(policy=policy.default).parsebytes(mail.data)
        theirs = BytesParser(policy=policy.default).parsebytes(
            reference(mail, rendered, campaign).as_bytes()
        )
        assert isinstance(ours, EmailMessage)
        assert isinstance(theirs, EmailMessage)
        assert summary(ours) == summary(theirs)
        for name in ("From", "To", "Subject", "X-Bulkmail-Campaign", "X-Owner", "MIME-Version"):
            assert str(ours[name]) == str(theirs[name]), name
        assert not ours.defects
        assert all(not part.defects for part in ours.walk())
        # Wire format: 7-bit, CRLF only, short lines.
        assert mail.data.isascii()
        assert b"\n" not in mail.data.replace(b"\r\n", b"")
        assert max(len(line) for line in mail.data.split(b"\r\n")) <= 998


def test_a_body_that_looks_like_a_boundary_cannot_end_its_part(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template("issue.html", "<p>{{ first_name }}</p>\n--=_bulkmail_x\n--=_bulkmail_x--\n")
    c.write()
    loaded = load_campaign(c.yaml_path)
    renderer, builder = Renderer.load(loaded), MessageBuilder.load(loaded)
    recipient = next(r for r in iter_recipients(loaded.recipients) if isinstance(r, Recipient))
    mail = builder.build(1, recipient, renderer.render(recipient))
    boundary = re.search(rb'boundary="([^"]+)"', mail.data)
    assert boundary is not None
    parsed = BytesParser(policy=policy.default).parsebytes(mail.data)
    assert isinstance(parsed, EmailMessage)
    html = parsed.get_body(("html",))
    assert html is not None
    assert "--=_bulkmail_x--" in html.get_content()
