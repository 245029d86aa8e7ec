"""Build each recipient's complete MIME message, the exact bytes a server receives."""

from __future__ import annotations

import copy
import dataclasses
import email.errors
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid
from pathlib import Path

from bulkmail.errors import (
    AttachmentError,
    ConfigError,
    Location,
    RecipientError,
    TemplateError,
)
from bulkmail.models import Attachment, Campaign, OutgoingMail, Recipient
from bulkmail.recipients import check_address
from bulkmail.render import RenderedMail

# Headers whose value is a list of URLs: folded between the entries only. The generic
# folder would turn a long URL into RFC 2047 encoded words, which no client follows.
_URL_LIST_HEADERS = frozenset({"list-unsubscribe"})
_URL_LIST_SPLIT = re.compile(r"(?<=>)\s*,\s*")  # between <...> entries, not inside a URL
_MAX_LINE = 998  # RFC 5322 2.1.1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_WHITESPACE = re.compile(r"\s+")
# Content types that may not be sent base64-encoded (RFC 2046 5.2.1): sent as plain files.
_COMPOSITE = ("message/", "multipart/")
# Python 3.11.10+ refuses to write a header that would inject another (CVE-2024-6923).
_HEADER_WRITE_ERRORS: tuple[type[Exception], ...] = tuple(
    error for error in (getattr(email.errors, "HeaderWriteError", None),) if error is not None
)


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
        entries = [entry.strip() for entry in _URL_LIST_SPLIT.split(str(value))]
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
    if content_type is None or content_type.startswith(_COMPOSITE):
        content_type = "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    data = path.read_bytes()
    part = MIMEPart(policy=POLICY)
    part.set_content(
        data, maintype=maintype, subtype=subtype, disposition="attachment", filename=filename
    )
    return part, Attachment(filename=filename, content_type=content_type, size=len(data))


def _renamed(part: MIMEPart, filename: str) -> MIMEPart:
    """The same encoded file under another name (the payload is shared, not re-encoded)."""
    renamed = copy.deepcopy(part)
    del renamed["Content-Disposition"]
    renamed.add_header("Content-Disposition", "attachment", filename=filename)
    return renamed


@dataclass(frozen=True)
class MessageBuilder:
    """Builds OutgoingMails; what every mail shares is prepared once in `load`."""

    campaign: Campaign
    sender: Address
    reply_to: Address | None
    # Attachments of a fixed file, read and encoded once per campaign, by attachment index.
    shared: dict[int, tuple[MIMEPart, Attachment]]

    @classmethod
    def load(cls, campaign: Campaign) -> MessageBuilder:
        """Check the sender and read and encode the attachments every mail shares."""
        sender = parse_sender(campaign.sender, campaign.location("from"))
        reply_to = (
            parse_sender(campaign.reply_to, campaign.location("reply_to"))
            if campaign.reply_to
            else None
        )
        shared = {}
        for index, spec in enumerate(campaign.attachments):
            if spec.templated:
                continue
            path = Path(spec.path)
            try:
                shared[index] = attachment_part(path, spec.filename or path.name)
            except OSError as exc:
                raise AttachmentError(f"{path}: {exc.strerror}", where=spec.where) from None
        return cls(campaign, sender, reply_to, shared)

    def build(self, index: int, recipient: Recipient, rendered: RenderedMail) -> OutgoingMail:
        """The complete message for one recipient: headers, text + HTML, attachments."""
        smtputf8 = not (recipient.email + self.sender.addr_spec).isascii()
        msg = EmailMessage(policy=POLICY_UTF8 if smtputf8 else POLICY)
        msg["From"] = self.sender
        local, _, domain = recipient.email.rpartition("@")
        msg["To"] = Address(display_name=recipient.name, username=local, domain=domain)
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
        self._check_headers(msg, recipient, rendered)
        # Quoted-printable keeps every line short and 7-bit, so relays without 8BITMIME
        # pass the bodies unchanged.
        msg.set_content(rendered.text, cte="quoted-printable")
        msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
        attachments = self._attach(msg, recipient, rendered.attachments)
        try:
            data = msg.as_bytes()
        except _HEADER_WRITE_ERRORS as exc:
            row = Location(self.campaign.recipients, recipient.line)
            raise RecipientError(f"a value would add a header: {exc}", where=row) from None
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

    def _check_headers(
        self, msg: EmailMessage, recipient: Recipient, rendered: RenderedMail
    ) -> None:
        """Check that the subject says what was meant. The email package decodes RFC 2047
        words in the values it is given, so ``=?utf-8?q?Bob=0D=0ABcc...?=`` in a CSV field
        would otherwise come out as a line break and a header of its own. (Names are
        checked for such words when the CSV is read.)"""
        row = Location(self.campaign.recipients, recipient.line)
        subject = str(msg["Subject"])
        if _CONTROL.search(subject) or _folded(subject) != _folded(rendered.subject):
            raise TemplateError(
                f"renders to {rendered.subject!r}, which holds encoded words (=?...?=) that "
                "decode to something else",
                where=self.campaign.location("subject"),
                row=row,
            )

    def _attach(
        self,
        msg: EmailMessage,
        recipient: Recipient,
        own: Iterable[tuple[int, Path, str]],
    ) -> tuple[Attachment, ...]:
        per_row = {index: (path, filename) for index, path, filename in own}
        parts = []
        for index in range(len(self.campaign.attachments)):
            if index in self.shared:
                part, info = self.shared[index]
                if index in per_row:  # a fixed file, named per recipient
                    filename = per_row[index][1]
                    part, info = (
                        _renamed(part, filename),
                        dataclasses.replace(info, filename=filename),
                    )
                parts.append((part, info))
            elif index in per_row:
                path, filename = per_row[index]
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


def _folded(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _unsubscribe_header(rendered: RenderedMail) -> str | None:
    entries = []
    if rendered.unsubscribe_url:
        entries.append(f"<{rendered.unsubscribe_url}>")
    if rendered.unsubscribe_mailto:
        entries.append(f"<mailto:{rendered.unsubscribe_mailto}>")
    if any(len(entry) > _MAX_LINE - 30 for entry in entries):
        raise ConfigError("the unsubscribe URL is too long for a mail header")
    return ", ".join(entries) or None
