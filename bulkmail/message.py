"""Build each recipient's complete MIME message, the exact bytes a server receives."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid
from pathlib import Path

from bulkmail.errors import AttachmentError, ConfigError, Location, RecipientError
from bulkmail.models import Attachment, Campaign, OutgoingMail, Recipient
from bulkmail.recipients import check_address
from bulkmail.render import RenderedMail

# Headers whose value is a list of URLs: folded between the entries only. The generic
# folder would turn a long URL into RFC 2047 encoded words, which no client follows.
_URL_LIST_HEADERS = frozenset({"list-unsubscribe"})
_MAX_LINE = 998  # RFC 5322 2.1.1


class _MailPolicy(EmailPolicy):
    """The SMTP policy (CRLF, 78-column folding), except for URL-list headers."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _URL_LIST_HEADERS:
            return self._fold_url_list(name, value)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _URL_LIST_HEADERS:
            return self._fold_url_list(name, value).encode("ascii")
        return super().fold_binary(name, value)

    def _fold_url_list(self, name: str, value: str) -> str:
        entries = [entry.strip() for entry in str(value).split(",")]
        return f"{name}: " + f",{self.linesep} ".join(entries) + self.linesep


POLICY = _MailPolicy(linesep="\r\n")
POLICY_UTF8 = POLICY.clone(utf8=True)  # for SMTPUTF8 (RFC 6531): non-ASCII addresses


def parse_sender(text: str, where: Location) -> Address:
    """Read ``Name <addr@example.com>`` (or a bare address) into a checked Address."""
    try:
        header = POLICY.header_factory("From", text)
        addresses = header.addresses  # type: ignore[attr-defined]
    except Exception as exc:  # the header parser raises several types on junk
        raise ConfigError(f"{text!r} is not an address: {exc}", where=where) from None
    if len(addresses) != 1 or header.defects:  # type: ignore[attr-defined]
        raise ConfigError(f"{text!r}: give exactly one address, e.g. Name <a@b.org>", where=where)
    address = addresses[0]
    try:
        normal = check_address(address.addr_spec, where)
    except RecipientError as exc:
        raise ConfigError(exc.message, where=where) from None
    return Address(display_name=address.display_name, addr_spec=normal)


def attachment_part(path: Path, filename: str) -> tuple[MIMEPart, Attachment]:
    """Read and encode one file as a MIME attachment with its real content type."""
    content_type = mimetypes.guess_type(filename)[0] or mimetypes.guess_type(path.name)[0]
    content_type = content_type or "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    data = path.read_bytes()
    part = MIMEPart(policy=POLICY)
    part.set_content(
        data, maintype=maintype, subtype=subtype, disposition="attachment", filename=filename
    )
    return part, Attachment(filename=filename, content_type=content_type, size=len(data))


@dataclass(frozen=True)
class MessageBuilder:
    """Builds OutgoingMails; what every mail shares is prepared once in `load`."""

    campaign: Campaign
    sender: Address
    reply_to: Address | None
    shared: tuple[tuple[MIMEPart, Attachment], ...]  # attachments encoded once per campaign

    @classmethod
    def load(cls, campaign: Campaign) -> MessageBuilder:
        """Check the sender and read and encode the attachments every mail shares."""
        sender = parse_sender(campaign.sender, campaign.location("from"))
        reply_to = (
            parse_sender(campaign.reply_to, campaign.location("reply_to"))
            if campaign.reply_to
            else None
        )
        shared = []
        for spec in campaign.attachments:
            if spec.templated:
                continue
            path = Path(spec.path)
            try:
                shared.append(attachment_part(path, spec.filename or path.name))
            except OSError as exc:
                raise AttachmentError(f"{path}: {exc.strerror}", where=spec.where) from None
        return cls(campaign, sender, reply_to, tuple(shared))

    def build(self, index: int, recipient: Recipient, rendered: RenderedMail) -> OutgoingMail:
        """The complete message for one recipient: headers, text + HTML, attachments."""
        smtputf8 = not (recipient.email + self.sender.addr_spec).isascii()
        msg = EmailMessage(policy=POLICY_UTF8 if smtputf8 else POLICY)
        msg["From"] = self.sender
        msg["To"] = Address(display_name=recipient.name, addr_spec=recipient.email)
        if self.reply_to:
            msg["Reply-To"] = self.reply_to
        msg["Subject"] = rendered.subject
        msg["Date"] = formatdate(localtime=True)
        message_id = make_msgid(domain=self.sender.domain)
        msg["Message-ID"] = message_id
        unsubscribe = _unsubscribe_header(rendered)
        if unsubscribe:
            msg["List-Unsubscribe"] = unsubscribe
            if rendered.unsubscribe_url:
                msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg["X-Bulkmail-Campaign"] = self.campaign.name
        for name, value in self.campaign.headers.items():
            msg[name] = value
        # Quoted-printable keeps every line short and 7-bit, so relays without 8BITMIME
        # pass the bodies unchanged.
        msg.set_content(rendered.text, cte="quoted-printable")
        msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
        attachments = self._attach(msg, recipient, rendered.attachments)
        data = msg.as_bytes()
        return OutgoingMail(
            index=index,
            recipient=recipient,
            sender=self.sender.addr_spec,
            message_id=message_id,
            subject=rendered.subject,
            html=rendered.html,
            data=data,
            attachments=attachments,
            smtputf8=smtputf8,
        )

    def _attach(
        self, msg: EmailMessage, recipient: Recipient, own: Iterable[tuple[Path, str]]
    ) -> tuple[Attachment, ...]:
        parts = list(self.shared)
        for path, filename in own:
            try:
                parts.append(attachment_part(path, filename))
            except OSError as exc:
                row = Location(self.campaign.recipients, recipient.line)
                raise AttachmentError(f"{path}: {exc.strerror}", where=row) from None
        if parts:
            msg.make_mixed()
            for part, _ in parts:
                msg.attach(part)  # shared parts are the same objects for every mail
        return tuple(info for _, info in parts)


def _unsubscribe_header(rendered: RenderedMail) -> str | None:
    entries = []
    if rendered.unsubscribe_url:
        entries.append(f"<{rendered.unsubscribe_url}>")
    if rendered.unsubscribe_mailto:
        entries.append(f"<mailto:{rendered.unsubscribe_mailto}>")
    if any(len(entry) > _MAX_LINE - 30 for entry in entries):
        raise ConfigError("the unsubscribe URL is too long for a mail header")
    return ", ".join(entries) or None
