"""Build each recipient's complete MIME message, the exact bytes a server receives."""

from __future__ import annotations

import base64
import binascii
import email.message
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from bulkmail.compose.attachments import Attachments, Part
from bulkmail.compose.images import InlineImages
from bulkmail.errors import (
    ConfigError,
    Location,
    RecipientError,
    TemplateError,
)
from bulkmail.load.recipients import check_address
from bulkmail.models import Campaign, OutgoingMail, Recipient, RenderedMail, address_key

if TYPE_CHECKING:
    from bulkmail.compose.dkim import Signer

# Headers whose value is a list of URLs: folded between the entries only. The generic
# folder would turn a long URL into RFC 2047 encoded words, which no client follows.
_URL_LIST_HEADERS = frozenset({"list-unsubscribe"})
_URL_LIST_SPLIT = re.compile(r"(?<=>)\s*,\s*")  # between <...> entries, not inside a URL
_MAX_LINE = 998  # RFC 5322 2.1.1
_FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be no longer
_MAX_ENCODED_WORD = 75  # RFC 2047 2
# What Q-encoded text may hold as itself in a phrase (RFC 2047 5(3)); "_" stands for space.
_Q_PHRASE_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_WHITESPACE = re.compile(r"\s+")
_BARE_BREAK = re.compile(rb"\n(?![ \t])|\r(?!\n)")  # a line break that is not folding
# What the email package writes as it is, on one line (see `_plain_line`): a display name of
# atoms (RFC 5322 3.2.3 atext) separated by single spaces, a dot-atom local part, a
# domain name, a subject of printable ASCII words separated by single spaces.
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_PLAIN_NAME = re.compile(f"[{_ATEXT}]+(?: [{_ATEXT}]+)*\\Z")
_PLAIN_LOCAL = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*\\Z")
_PLAIN_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z"
)
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")


class _MailPolicy(EmailPolicy):
    """The SMTP policy (CRLF, 78-column folding), except for URL-list headers."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _URL_LIST_HEADERS:
            return self._fold_url_list(name, value)
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _URL_LIST_HEADERS:
            return self._fold_url_list(name, value).encode("ascii")
        return super().fold_binary(name, value)

    def _fold_url_list(self, name: str, value: str) -> str:
        entries = [entry.strip() for entry in _URL_LIST_SPLIT.split(str(value))]
        return f"{name}: " + f",{self.linesep} ".join(entries) + self.linesep


POLICY = _MailPolicy(linesep="\r\n")
POLICY_UTF8 = POLICY.clone(utf8=True)  # for SMTPUTF8 (RFC 6531): non-ASCII addresses


def parse_sender(text: str, where: Location, *, allow_special_domains: bool = False) -> Address:
    """Read ``Name <addr@example.com>`` (or a bare address) into a checked Address."""
    try:
        header = POLICY.header_factory("From", text)
        addresses = header.addresses
    except Exception as exc:  # the header parser raises several types on junk
        raise ConfigError(f"{text!r} is not an address: {exc}", where=where) from None
    if len(addresses) != 1 or header.defects:
        raise ConfigError(f"{text!r}: give exactly one address, e.g. Name <a@b.org>", where=where)
    address = addresses[0]
    try:
        normal = check_address(
            address.addr_spec, where, allow_special_domains=allow_special_domains
        )
    except RecipientError as exc:
        raise ConfigError(exc.message, where=where) from None
    return Address(display_name=address.display_name, addr_spec=normal)


def _quoted_printable(text: str) -> bytes:
    """A text body as quoted-printable with CRLF lines: 7-bit, no line over 76 octets, so
    relays without 8BITMIME pass it unchanged.

    The same bytes as encoding the whole text at once, made line by line through a cache:
    binascii's encoder starts afresh after each line break and decides each character by
    its own line alone, so each line is encoded with the break that follows it, and the
    lines every mail shares, most of them, are encoded once per process.
    tests/test_message.py compares the two."""
    if "\r" in text:  # rare (a value from the CSV): the scan is ~10x cheaper than two copies
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    *lines, last = text.split("\n")
    cache = _QP_LINES
    if len(cache) > _QP_CACHE_LINES:
        cache.clear()  # the lines of recipients' own values, mostly: start again
    out = list(map(cache.get, lines))
    if None in out:
        for index, line in enumerate(lines):
            if out[index] is None:
                out[index] = cache[line] = _qp(line + "\n")
    out.append(_qp(last))
    return b"".join(out)  # type: ignore[arg-type]  # no None is left


def _qp(text: str) -> bytes:
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True)
    return encoded.replace(b"\n", b"\r\n")


_QP_LINES: dict[str, bytes] = {}
_QP_CACHE_LINES = 2048


def _body_part(subtype: str, text: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii") + _quoted_printable(text)


def _text_only_part(text: str) -> bytes:
    """The single body of a plain-text campaign. ASCII text of short lines goes as 7bit,
    the text itself, readable in any client's "show source" and by any filter;
    anything else as quoted-printable (7-bit safe for relays without 8BITMIME)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if text.isascii() and "\x00" not in text and all(len(line) <= _FOLD_AT for line in lines):
        head = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
        return head + b"\r\n" + "\r\n".join(lines).encode("ascii")
    return _body_part("plain", text)


def _multipart(subtype: str, boundary: bytes, parts: Iterable[bytes]) -> bytes:
    """A multipart body. The boundary starts with "=_", which neither quoted-printable
    nor base64 can produce, so no part can contain it."""
    out = [b'Content-Type: multipart/%s; boundary="%s"\r\n\r\n' % (subtype.encode(), boundary)]
    for part in parts:
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1), so a
        # body's own last line break survives.
        out += (b"--", boundary, b"\r\n", part, b"\r\n")
    out += (b"--", boundary, b"--\r\n")
    return b"".join(out)


@dataclass(frozen=True)
class MessageBuilder:
    """Builds OutgoingMails. Everything every mail shares is prepared once in `load`: the
    sender's headers, the attachments' encoded parts; per mail only the recipient's
    headers and the two bodies are encoded, and the parts are spliced together."""

    campaign: Campaign
    sender: Address
    static_headers: bytes  # From, Reply-To, X-Bulkmail-Campaign, custom headers
    attachments: Attachments  # the fixed files read and encoded once per campaign
    boundaries: tuple[bytes, bytes, bytes]  # multipart/mixed, alternative, related
    signer: Signer | None = None  # the campaign's DKIM key, read once per run
    images: InlineImages = field(default_factory=InlineImages)  # local <img> files, encoded

    @classmethod
    def load(
        cls,
        campaign: Campaign,
        attachments: Attachments | None = None,
        template_files: Iterable[Path] | None = None,
    ) -> MessageBuilder:
        """Check the sender and prepare the headers every mail shares; ``attachments``
        (else loaded here) has the files every mail shares read and encoded;
        ``template_files`` (else the campaign's body files) are scanned for images."""
        special = campaign.allow_special_domains
        sender = parse_sender(
            campaign.sender, campaign.location("from"), allow_special_domains=special
        )
        headers: list[tuple[str, object]] = [("From", sender)]
        if campaign.reply_to:
            reply_to = parse_sender(
                campaign.reply_to, campaign.location("reply_to"), allow_special_domains=special
            )
            headers.append(("Reply-To", reply_to))
        headers.append(("X-Bulkmail-Campaign", campaign.name))
        headers.extend(campaign.headers.items())
        static = b"".join(_static_header(campaign, name, value) for name, value in headers)
        if attachments is None:
            attachments = Attachments.load(campaign, POLICY)
        # Parsers find a delimiter line by its start, so no boundary may be a prefix of
        # another (RFC 2046 5.1.1): two of the same length that differ.
        token = secrets.token_hex(12)
        mixed, alternative, related = (
            f"=_bulkmail_{token}_{kind}".encode("ascii") for kind in ("mix", "alt", "rel")
        )
        signer = None
        if campaign.dkim:
            # dkimpy, dnspython and cryptography load in ~50 ms: only for campaigns that sign.
            from bulkmail.compose.dkim import Signer

            signer = Signer.load(campaign.dkim)
        if template_files is None:
            template_files = [
                f for f in (campaign.template, campaign.markdown, campaign.layout) if f
            ]
        images = InlineImages.load(campaign, template_files, POLICY)
        boundaries = (mixed, alternative, related)
        return cls(campaign, sender, static, attachments, boundaries, signer, images)

    def build(self, index: int, recipient: Recipient, rendered: RenderedMail) -> OutgoingMail:
        """The complete message for one recipient: headers, text + HTML, attachments."""
        cc, copies = _copies(self.campaign, recipient)
        smtputf8 = not "".join((recipient.email, self.sender.addr_spec, *copies)).isascii()
        policy = POLICY_UTF8 if smtputf8 else POLICY
        row = Location(self.campaign.recipients, recipient.line)
        local, _, domain = recipient.email.rpartition("@")
        to_line = _plain_line("To", _plain_address(recipient.name, local, domain))
        if to_line is None:
            to = Address(display_name=recipient.name, username=local, domain=domain)
            to_line = _to_header(policy, to, row)
        message_id = make_msgid(domain=self.sender.domain)
        headers = [to_line]
        if cc:
            headers.append(_cc_header(policy, cc, row))
        headers.append(self._subject(policy, rendered.subject, row))
        headers.append(b"Date: %s\r\n" % formatdate(localtime=True).encode("ascii"))
        headers.append(b"Message-ID: %s\r\n" % message_id.encode("ascii"))
        unsubscribe = _unsubscribe_header(rendered)
        if unsubscribe:
            headers.append(_url_list_header(policy, "List-Unsubscribe", unsubscribe, row))
            if rendered.unsubscribe_url:
                headers.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        alternative = (
            _multipart(
                "alternative",
                self.boundaries[1],
                [_body_part("plain", rendered.text), self._html_part(rendered.html)],
            )
            if not self.campaign.text_only
            else _text_only_part(rendered.text)
        )
        attachments = self._attachments(recipient, rendered.attachments)
        body = alternative
        if attachments:
            body = _multipart(
                "mixed", self.boundaries[0], [alternative, *(p for p, _ in attachments)]
            )
        data = b"".join([self.static_headers, *headers, b"MIME-Version: 1.0\r\n", body])
        if self.signer is not None:
            data = self.signer.sign(data)  # last: it signs the headers and body as sent
        return OutgoingMail(
            index=index,
            recipient=recipient,
            sender=self.sender.addr_spec,
            message_id=message_id,
            subject=rendered.subject,
            html=rendered.html,
            data=data,
            attachments=tuple(info for _, info in attachments),
            smtputf8=smtputf8,
            size=len(data),
            copies=copies,
            image_files=self.images.file_uris(),
        )

    def _html_part(self, html: str) -> bytes:
        """The HTML body; with embedded images, multipart/related (RFC 2387) holding the
        HTML, its srcs as ``cid:``, then each image it shows (the bytes shared by all)."""
        html, images = self.images.embed(html)
        if not images:
            return _body_part("html", html)
        parts = [_body_part("html", html), *(image.part for image in images)]
        related = _multipart("related", self.boundaries[2], parts)
        return related.replace(b"multipart/related;", b'multipart/related; type="text/html";', 1)

    def _subject(self, policy: EmailPolicy, subject: str, row: Location) -> bytes:
        """The Subject header, checked to say what was meant. The email package decodes
        RFC 2047 words in the values it is given, so ``=?utf-8?q?Bob=0D=0ABcc...?=`` in a
        CSV field would otherwise come out as a line break and a header of its own.
        (Names are checked for such words when the CSV is read.)"""
        plain = _plain_line("Subject", subject if _PLAIN_TEXT.match(subject) else None)
        if plain is not None:
            return plain
        header = policy.header_factory("Subject", subject)
        if _CONTROL.search(str(header)) or _folded(str(header)) != _folded(subject):
            raise TemplateError(
                f"renders to {subject!r}, which holds encoded words (=?...?=) that "
                "decode to something else",
                where=self.campaign.location("subject"),
                row=row,
            )
        return _fold(policy, "Subject", header, row)

    def _attachments(
        self, recipient: Recipient, own: Iterable[tuple[int, Path, str]]
    ) -> list[Part]:
        """Every attachment in campaign order: the shared bytes, or the row's own file."""
        per_row = {index: (path, filename) for index, path, filename in own}
        shared = self.attachments.shared
        row = Location(self.campaign.recipients, recipient.line)
        parts = []
        for index in range(len(self.campaign.attachments)):
            if index in per_row:
                parts.append(self.attachments.part(*per_row[index], row))
            elif index in shared:
                parts.append(shared[index])  # the same bytes for every mail
        return parts


def _to_header(policy: EmailPolicy, to: Address, row: Location) -> bytes:
    """The To header, read back to make sure it names exactly this one recipient.

    Python 3.11's folder can drop a display name's quotes when it folds a long one, which
    turns ``Martin, Anne (Lyon; ...)`` or a name holding ``<evil@example.com>, y`` into
    several addresses; an encoded word in an address gets decoded. When the folded header
    does not read back as written, it is written on one line (up to 998 octets, RFC 5322),
    and if that does not read back either, the row is refused. A non-ASCII name is written
    as RFC 2047 words of legal length (`_encoded_address`).
    """
    if not policy.utf8 and not to.display_name.isascii():
        encoded = _encoded_address("To", to)
        if encoded is not None:
            return encoded
    else:
        for attempt in (policy, policy.clone(max_line_length=_MAX_LINE)):
            folded = _fold(attempt, "To", to, row)
            text = folded.decode("utf-8")[len("To:") :].replace("\r\n", "")
            addresses = attempt.header_factory("To", text.strip()).addresses
            if len(addresses) == 1 and (addresses[0].addr_spec, addresses[0].display_name) == (
                to.addr_spec,
                to.display_name,
            ):
                return folded
    raise RecipientError(
        f"{to.display_name!r} <{to.addr_spec}> cannot be written as one address in the To header",
        where=Location(row.path, row.line, "name"),
    )


def _copies(campaign: Campaign, recipient: Recipient) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The Cc header's addresses (the campaign's, then the row's), and every copy's envelope
    address (those, then the Bcc ones): each once, never the row's recipient again."""
    seen = {address_key(recipient.email)}

    def new(addresses: Iterable[str]) -> tuple[str, ...]:
        fresh = []
        for address in addresses:
            if address_key(address) not in seen:
                seen.add(address_key(address))
                fresh.append(address)
        return tuple(fresh)

    cc = new((*campaign.cc, *recipient.cc))
    return cc, cc + new(campaign.bcc)


def _plain_address(display: str, local: str, domain: str) -> str | None:
    """``Name <local@domain>`` (or the bare address), if each part is of a shape the email
    package writes as it is (see `_plain_line`); else None."""
    if not (_PLAIN_LOCAL.match(local) and _PLAIN_DOMAIN.match(domain)):
        return None
    if not display:
        return f"{local}@{domain}"
    return f"{display} <{local}@{domain}>" if _PLAIN_NAME.match(display) else None


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain


def _plain_line(name: str, value: str | None) -> bytes | None:
    """``Name: value`` as one line, which is what the email package writes for a value of
    the shapes above when it fits in 78 columns and holds no ``=?`` (an encoded word it
    would decode first): the same bytes without its parser and folder, which are a third
    of a mail's build. None for anything else, which goes through the email package;
    tests/test_message.py compares the two over many values."""
    if value is None or "=?" in value or len(name) + 2 + len(value) > _FOLD_AT:
        return None
    return f"{name}: {value}\r\n".encode("ascii")


def _cc_header(policy: EmailPolicy, cc: Iterable[str], row: Location) -> bytes:
    """The Cc header: bare addresses checked when read (no name, no line break, no encoded
    word), read back to make sure it names exactly them, as the To header is."""
    plain = [_plain_address("", *_split(address)) for address in cc]
    if all(plain):
        line = _plain_line("Cc", ", ".join(a for a in plain if a))
        if line is not None:
            return line
    addresses = [Address(addr_spec=address) for address in cc]
    folded = _fold(policy, "Cc", addresses, row)
    text = folded.decode("utf-8")[len("Cc:") :].replace("\r\n", "")
    found = [a.addr_spec for a in policy.header_factory("Cc", text.strip()).addresses]
    if found != [a.addr_spec for a in addresses]:
        raise RecipientError(
            f"{', '.join(cc)} cannot be written as the Cc header",
            where=Location(row.path, row.line, "cc"),
        )
    return folded


def _static_header(campaign: Campaign, name: str, value: object) -> bytes:
    """A header every mail shares; a sender's non-ASCII name as RFC 2047 words of legal length."""
    if not isinstance(value, Address) or value.display_name.isascii():
        return _fold(POLICY, name, value)
    folded = _encoded_address(name, value)
    if folded is None:
        raise ConfigError(
            f"{value.display_name!r} <{value.addr_spec}> cannot be written as one address",
            where=campaign.location(name.lower().replace("-", "_")),
        )
    return folded


def _encoded_address(name: str, address: Address) -> bytes | None:
    """``Name: =?utf-8?...?= <addr>``: a non-ASCII display name as RFC 2047 encoded words of
    at most 75 characters each, folded onto lines of at most 78 where the address allows.
    None if the result does not read back as exactly this address and name.

    Python 3.11's folder writes a long name as one encoded word of any length, or splits
    it where the name has a space and leaves that space outside the words, between them,
    where RFC 2047 6.2 tells readers to ignore it ("bin Abd Allah" reads "bin AbdAllah").
    Here every character of the name, spaces too, is inside a word; the folding white
    space between words carries nothing. (Python 3.11's own header parser reads a space
    there, against 6.2; readers that follow the RFC, mail clients among them, don't.)
    """
    display = address.display_name
    if _CONTROL.search(display):
        return None
    head = f"{name}: "
    words = _encoded_words(display, first=min(_MAX_ENCODED_WORD, _FOLD_AT - len(head)))
    lines = [head + words[0], *(" " + word for word in words[1:])]
    angle = f"<{address.addr_spec}>"
    if len(lines[-1]) + 1 + len(angle) <= _FOLD_AT:
        lines[-1] += " " + angle
    else:
        lines.append(" " + angle)
    folded = "\r\n".join(lines) + "\r\n"
    if not folded.isascii():
        return None  # a non-ASCII address needs SMTPUTF8, where names are not encoded
    parsed = POLICY.header_factory(name, folded[len(head) :].replace("\r\n", "").strip())
    found = [(a.addr_spec, a.username) for a in parsed.addresses]
    if found != [(address.addr_spec, address.username)]:
        return None
    if str(make_header(decode_header(" ".join(words)))) != display:
        return None
    return folded.encode("ascii")


def _encoded_words(text: str, *, first: int) -> list[str]:
    """``text`` as encoded words no longer than ``first``, then 75, each holding whole
    characters (RFC 2047 5(3)), in whichever of B and Q is shorter."""
    words: list[str] = []
    room, chunk = first, ""
    for char in text:
        if chunk and len(_encoded_word(chunk + char)) > room:
            words.append(_encoded_word(chunk))
            room, chunk = _MAX_ENCODED_WORD, ""
        chunk += char
    words.append(_encoded_word(chunk))
    return words


def _encoded_word(text: str) -> str:
    data = text.encode("utf-8")
    b = base64.b64encode(data).decode("ascii")
    q = "".join(
        "_" if byte == 0x20 else chr(byte) if byte in _Q_PHRASE_SAFE else f"={byte:02X}"
        for byte in data
    )
    return f"=?utf-8?q?{q}?=" if len(q) <= len(b) else f"=?utf-8?b?{b}?="


def _fold(policy: EmailPolicy, name: str, value: object, row: Location | None = None) -> bytes:
    """One header line as the email package folds and encodes it, refusing any line break
    that is not folding (the check Python 3.11.10+ makes for CVE-2024-6923)."""
    header = policy.header_store_parse(name, value)[1]  # as `msg[name] = value` does
    folded = policy.fold_binary(name, header)
    if _BARE_BREAK.search(folded[:-2]):
        raise RecipientError(f"the {name} header would hold a line break", where=row)
    return folded


def _url_list_header(policy: EmailPolicy, name: str, value: str, row: Location) -> bytes:
    """A URL-list header: printable ASCII folded between its entries directly, as the
    policy folds it (`_MailPolicy`), without the email package's parser; else through it."""
    if _PLAIN_TEXT.match(value) and "=?" not in value:
        return POLICY._fold_url_list(name, value).encode("ascii")
    return _fold(policy, name, value, row)


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


def text_part(message: email.message.Message) -> str | None:
    """The decoded text of a parsed mail's first text/plain part that is not an attachment
    (None if it has none): what a reader of the plain-text alternative sees."""
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not part.get_filename():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode(part.get_content_charset() or "utf-8", "replace")
            return None
    return None
