"""What one message that came back to the bounce mailbox is: a bounce (hard, soft or a delay
notice), a spam complaint, an unsubscribe request, an automatic reply, or anything else.

`classify` reads the raw bytes as they lie in the mailbox and returns a `Verdict`: the kind,
the addresses it concerns, and what ties it to the mail bulkmail sent (the address it was
delivered to, for a VERP token; the Message-IDs and campaign of the returned original).

The checks run from the most to the least certain, and the first that answers wins:

1. an ARF feedback report (RFC 5965): a complaint;
2. a delivery status notification (RFC 3464): each recipient block, read by the stdlib
   parser, says failed (hard or soft by its status), delayed, or delivered;
3. the non-standard bounces many MTAs still send (Exim, qmail, old Sendmail and Postfix,
   Microsoft, Yahoo...): recipients from flufl.bounce, the status from the text;
4. an automatic reply (RFC 3834 Auto-Submitted, vendor headers, vacation subjects) — after
   the bounces, since bounces say Auto-Submitted too;
5. an unsubscribe request: sent to an unsubscribe address, or titled "unsubscribe";
6. anything else, typically a person's reply.

Nothing in a message can make `classify` raise: the mailbox holds whatever anyone sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, message_from_string
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from bulkmail.models import FeedbackKind

# flufl.bounce logs a detector's exception with its traceback before re-raising it; with no
# handler anywhere, logging's last resort would print that to stderr for every odd message.
# `classify` handles the exception itself, so the library's log stays quiet unless the
# application configures logging.
logging.getLogger("flufl.bounce").addHandler(logging.NullHandler())

DIAGNOSTIC_LENGTH = 300
# How much of a message flufl.bounce reads. A bounce says what failed before the copy of
# the returned message, and its detectors each read every line of every part (the
# heuristic ones ~50 times over): a returned 10 MB newsletter would take seconds.
_FLUFL_READS = 512 * 1024

# An enhanced status code (RFC 3463), not part of a longer dotted number (an IP address).
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# An SMTP reply code as it starts a server's answer: "550 ", "550-", "554 #5.0.0".
_REPLY_CODE = re.compile(r"(?<![\d.])([45][0-5]\d)(?:[ -]|$)")
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
# A Message-ID or campaign header quoted in the text of a non-standard bounce.
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*\r?\n?[ \t]*(<[^<>\s]+>)", re.I | re.M)
_QUOTED_CAMPAIGN = re.compile(r"^[ \t>]*X-Bulkmail-Campaign:[ \t]*([^\r\n]+)", re.I | re.M)
# Where a bounce's own words end and the copy of the returned message begins.
_RETURNED_COPY = re.compile(
    r"^\s*--.*(?:copy of|original message|returned|message follows|message headers)"
    r"|^\s*original message headers:|^\s*message headers follow",
    re.I,
)

_BOUNCE_SENDERS = frozenset(
    {"mailer-daemon", "mail-daemon", "mailerdaemon", "postmaster", "mail.delivery.system"}
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|returned mail|mail delivery (?:failed|failure|problem)"
    r"|delivery status notification|failure notice|delivery failure|delivery has failed"
    r"|could not be delivered|non[- ]?deliver|mail system error|delivery problem"
    r"|unzustellbar|non remis|no se puede entregar|non recapitabile",
    re.I,
)
_VACATION_SUBJECT = re.compile(
    r"out of (?:the )?office|automatic reply|auto[- ]?reply|auto[- ]?response|autoresponder"
    r"|automatische antwort|abwesenheitsnotiz|abwesend|r[ée]ponse automatique"
    r"|respuesta autom[áa]tica|risposta automatica|resposta autom[áa]tica"
    r"|automatisch antwoord|afwezig|autosvar|automaattinen vastaus|on vacation|on holiday"
    r"|自动回复|自動回覆|自動返信|自動応答|자동 응답",
    re.I,
)
_REPLY_PREFIX = re.compile(r"\s*(?:re|fwd?|aw|wg|sv|vs|tr|antw|r)\s*:", re.I)
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*(?:(?:re|aw|sv|antw)\s*:\s*)*unsubscribe\s*$", re.I)

# Short names for the enhanced status codes bounces carry most, by subject and detail.
_STATUS_MEANING = {
    "0.0": "other",
    "1.0": "bad address",
    "1.1": "user unknown",
    "1.2": "domain not found",
    "1.3": "bad address syntax",
    "1.6": "mailbox moved",
    "1.10": "recipient not found",
    "2.0": "mailbox problem",
    "2.1": "mailbox disabled",
    "2.2": "mailbox full",
    "2.3": "message too large",
    "3.0": "mail system problem",
    "3.4": "message too large",
    "4.0": "routing problem",
    "4.1": "no answer from host",
    "4.2": "connection dropped",
    "4.4": "unable to route",
    "4.7": "delivery time expired",
    "5.0": "protocol error",
    "7.0": "refused by policy",
    "7.1": "delivery not authorised",
    "7.26": "authentication failed",
}


@dataclass(frozen=True)
class Verdict:
    """What a message that came back is, and whom it concerns.

    ``recipients``: for a bounce the original recipients that failed; for a complaint the
    original recipient complained about; for an unsubscribe request its sender; else empty.
    ``delivered_to`` and ``message_ids`` tie the message to what bulkmail sent even when
    ``recipients`` is empty or rewritten: the address it came to (a VERP token) and the
    Message-IDs of the original mail.
    """

    kind: FeedbackKind
    recipients: tuple[str, ...]
    status: str | None
    diagnostic: str | None
    delivered_to: tuple[str, ...]
    message_ids: tuple[str, ...]
    campaign: str | None
    reason: str


@dataclass(frozen=True)
class _Answer:
    """What one check found: the fields of a `Verdict` that depend on the kind."""

    kind: FeedbackKind
    recipients: tuple[str, ...]
    status: str | None
    diagnostic: str | None
    reason: str


def classify(raw: bytes, *, unsubscribe_addresses: Collection[str] = ()) -> Verdict:
    """Classify one raw message from the bounce mailbox; never raises.

    ``unsubscribe_addresses``: the List-Unsubscribe mailto addresses; a message delivered
    to one of them (ignoring case and a +detail) is an unsubscribe request.
    """
    msg = message_from_bytes(raw, policy=compat32)
    original = _returned_original(msg)
    delivered_to = _delivered_addresses(msg)
    answer = (
        _complaint(msg, original)
        or _delivery_status(msg)
        or _nonstandard_bounce(msg, raw)
        or _auto_reply(msg)
        or _unsubscribe(msg, delivered_to, unsubscribe_addresses)
        or _Answer("other", (), None, None, "no bounce, complaint, unsubscribe or auto-reply")
    )
    bounced = answer.kind in ("hard_bounce", "soft_bounce", "delayed")
    return Verdict(
        kind=answer.kind,
        recipients=answer.recipients,
        status=answer.status,
        diagnostic=answer.diagnostic,
        delivered_to=delivered_to,
        message_ids=_original_message_ids(msg, original, quoted=bounced),
        campaign=_campaign_of(msg, original, quoted=bounced),
        reason=answer.reason,
    )


# --- 1. ARF complaints -------------------------------------------------------------------


def _complaint(msg: Message, original: Message | None) -> _Answer | None:
    """A feedback report (RFC 5965): a message/feedback-report part, with or without the
    report-type on its multipart/report, since some feedback loops leave that out."""
    fields = _feedback_fields(msg)
    if fields is None:
        return None
    feedback_type = _header(fields, "Feedback-Type").strip().lower() or "abuse"
    named = _addresses(_header_values(fields, "Original-Rcpt-To"))
    if not named and original is not None:
        # Microsoft's JMRP names no Original-Rcpt-To; Hotmail added this at delivery.
        named = _addresses(_header_values(original, "X-HmXmrOriginalRecipient"))
        named = named or _addresses(_header_values(original, "To"))
    agent = _header(fields, "User-Agent").strip()
    reason = f"complaint ({feedback_type})" + (f" from {_one_line(agent, 60)}" if agent else "")
    return _Answer("complaint", _unique(named), None, None, reason)


def _feedback_fields(msg: Message) -> Message | None:
    """The fields of the message's feedback report, as a header block, if it has one."""
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            return _header_block(part)
    if _is_report(msg, "feedback-report"):
        for part in msg.walk():
            if part.get_content_maintype() == "text" and part.get_content_subtype() != "html":
                fields = HeaderParser(policy=compat32).parsestr(_part_text(part))
                if fields.get("Feedback-Type"):
                    return fields
    return None


# --- 2. RFC 3464 delivery status notifications --------------------------------------------


@dataclass(frozen=True)
class _RecipientStatus:
    """One per-recipient block of a delivery-status part."""

    address: str | None
    kind: FeedbackKind
    status: str | None
    diagnostic: str | None


_SEVERITY: tuple[FeedbackKind, ...] = ("hard_bounce", "soft_bounce", "delayed", "other")


def _delivery_status(msg: Message) -> _Answer | None:
    """A DSN: the recipients of its most severe outcome (a failure before a delay before a
    success), with the status and diagnostic of the first of them."""
    read = (_status_of(block) for block in _delivery_status_blocks(msg))
    blocks = [block for block in read if block is not None]
    if not blocks:
        return None
    kind = next(kind for kind in _SEVERITY if any(block.kind == kind for block in blocks))
    chosen = [block for block in blocks if block.kind == kind]
    first = chosen[0]
    diagnostic = first.diagnostic or _body_diagnostic(msg)[1]
    return _Answer(
        kind,
        _unique(block.address for block in chosen if block.address),
        first.status,
        diagnostic,
        _reason_for(kind, first.status),
    )


def _delivery_status_blocks(msg: Message) -> Iterator[Message]:
    """Every field block of every message/delivery-status part. The stdlib parser reads
    each block as a sub-message; a part that holds text instead is split here."""
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            yield from (block for block in payload if isinstance(block, Message))
        else:  # a part built in code with a text payload
            for text in re.split(r"\r?\n[ \t]*\r?\n", _part_text(part)):
                yield HeaderParser(policy=compat32).parsestr(text.strip())


def _status_of(block: Message) -> _RecipientStatus | None:
    """One recipient's outcome, or None for the per-message block (no Action, no
    recipient)."""
    action = _header(block, "Action").strip().lower()
    final = _typed_address(_header(block, "Final-Recipient"))
    address = final or _typed_address(_header(block, "Original-Recipient"))
    if not action and address is None:
        return None
    diagnostic_code = _header(block, "Diagnostic-Code")
    diagnostic = _one_line(diagnostic_code) or None
    status = _specific_status(_status_code(_header(block, "Status")), _status_code(diagnostic_code))
    kind: FeedbackKind
    # Some MTAs add a comment to the action; OpenSMTPD says "error" for "failed".
    if action.startswith(("failed", "error")):
        kind = _failure_kind(status, _reply_code(diagnostic_code))
    elif action.startswith("delayed"):
        kind = "delayed"
    else:
        kind = "other"  # delivered, relayed, expanded
    return _RecipientStatus(address, kind, status, diagnostic)


def _specific_status(declared: str | None, diagnosed: str | None) -> str | None:
    """The Status field, unless it is only its class (Exim always says 5.0.0) and the
    remote server's reply names a precise code of the same class (5.1.1)."""
    if declared is None:
        return diagnosed
    if diagnosed and declared.endswith(".0.0") and diagnosed[0] == declared[0]:
        return diagnosed
    return declared


def _typed_address(value: str) -> str | None:
    """The address of a Final-Recipient or Original-Recipient field: ``rfc822; <a@b>``."""
    _type, _semicolon, address = value.rpartition(";")
    return _normalised(address)


def _failure_kind(status: str | None, reply: str | None) -> FeedbackKind:
    """Hard or soft, for a delivery that failed: by its status code, else its SMTP reply
    code; a failure that says neither is taken as permanent, as a failure is final."""
    if status is None:
        return "soft_bounce" if reply is not None and reply.startswith("4") else "hard_bounce"
    # 5.2.2, mailbox full, is a permanent failure by its class, but a full mailbox empties
    # again: mailbox providers send it for a full but living mailbox, and ESPs (SES,
    # SendGrid, Mailgun) count it as a soft bounce, suppressed only once it repeats.
    if status.startswith("4") or status == "5.2.2":
        return "soft_bounce"
    return "hard_bounce"


# --- 3. Non-standard bounces ---------------------------------------------------------------


def _nonstandard_bounce(msg: Message, raw: bytes) -> _Answer | None:
    """A bounce in one of the many older or vendor formats: only a message that looks like a
    bounce at all is given to flufl.bounce, since its looser detectors find "failed"
    addresses in any text (LLNL's takes any ", someone@example.org," from a person's reply).
    """
    from_daemon = _from_mail_system(msg)
    if not (from_daemon or _titled_like_bounce(msg)):
        return None
    temporary, permanent = _failures(raw)
    status, diagnostic, reply = _body_diagnostic(msg)
    kind: FeedbackKind
    if permanent:
        kind = _failure_kind(status, reply)
        named = permanent | temporary
    elif temporary:
        # flufl.bounce's only temporary failures from a non-DSN are "still trying" warnings.
        kind = "delayed"
        named = temporary
    elif from_daemon and (status is not None or reply is not None):
        # A failure that names nobody flufl.bounce can read still ties to a recipient by the
        # address it came back to (VERP) or the returned Message-ID.
        kind = _failure_kind(status, reply)
        named = frozenset(_header_values(msg, "X-Failed-Recipients"))
    else:
        return None
    return _Answer(
        kind,
        _unique(sorted(_addresses(named))),
        status,
        diagnostic,
        _reason_for(kind, status),
    )


def _from_mail_system(msg: Message) -> bool:
    """Sent by a mail system, not a person: from a mailer daemon or postmaster, naming
    failed recipients (Exim's X-Failed-Recipients), or a delivery report whose
    delivery-status part could not be read."""
    name, address = parseaddr(_header(msg, "From"))
    local = address.rpartition("@")[0].lower() if "@" in address else address.lower()
    return bool(
        local in _BOUNCE_SENDERS
        or local.startswith("microsoftexchange")  # Exchange's NDRs from its system mailbox
        or name.strip().lower() in ("mail delivery system", "mail delivery subsystem")
        or msg.get("X-Failed-Recipients") is not None
        or _is_report(msg, "delivery-status")
    )


def _titled_like_bounce(msg: Message) -> bool:
    """A bounce's subject ("Undeliverable: ...", "failure notice"), but not a person's
    reply to or forward of one."""
    subject = _header(msg, "Subject")
    return bool(_BOUNCE_SUBJECT.search(subject)) and not _REPLY_PREFIX.match(subject)


def _failures(raw: bytes) -> tuple[frozenset[str], frozenset[str]]:
    """flufl.bounce's temporary and permanent failures, as text.

    Its detectors call string methods on header values (``msg.get("from", "").lower()``),
    but the stdlib parser returns a header with 8-bit bytes in it (a raw UTF-8 name in
    From, common enough) as a `Header` object, and every detector after the first such
    one would be skipped by the AttributeError. So flufl.bounce reads its own copy, parsed
    from text in which undecodable bytes are already replaced: its headers are all `str`.
    Its detectors are heuristics over arbitrary text and a few still raise on malformed
    input (Yale's on a From that yields no address): such a message has no failures it can
    read.
    """
    try:
        text = raw[:_FLUFL_READS].decode("utf-8", "replace")
        text_msg = message_from_string(text, policy=compat32)
        temporary, permanent = all_failures(text_msg)
    except Exception:
        return frozenset(), frozenset()
    return _decoded_set(temporary), _decoded_set(permanent)


def _decoded_set(found: Iterable[bytes]) -> frozenset[str]:
    """flufl.bounce's byte addresses as text (they are ASCII; anything else is dropped)."""
    return frozenset(
        address.decode("ascii", "replace") for address in found if isinstance(address, bytes)
    )


def _body_diagnostic(msg: Message) -> tuple[str | None, str | None, str | None]:
    """(enhanced status, the line saying it, the SMTP reply code) from a bounce's own text,
    before the copy of the returned message: the first line with a status code, else the
    first with an SMTP reply code."""
    lines = list(_own_lines(msg))
    for line in lines:
        if match := _STATUS.search(line):
            return ".".join(match.groups()), _one_line(line) or None, _reply_code(line)
    for line in lines:
        if match := _REPLY_CODE.search(line):
            return None, _one_line(line) or None, match.group(1)
    return None, None, None


def _own_lines(msg: Message) -> Iterator[str]:
    """The lines of the message's own text parts (plain text before HTML), up to where a
    copy of the returned message begins; never the returned message itself."""
    parts = [part for part in _own_parts(msg) if part.get_content_maintype() == "text"]
    parts.sort(key=lambda part: part.get_content_subtype() != "plain")
    for part in parts:
        text = _part_text(part)
        if part.get_content_subtype() == "html":
            text = re.sub(r"<[^<>]*>", " ", text)
        for line in text.splitlines():
            if _RETURNED_COPY.search(line):
                break
            yield line


def _own_parts(msg: Message) -> Iterator[Message]:
    """The leaf parts of ``msg`` outside any attached message or returned headers."""
    if msg.is_multipart():
        if msg.get_content_maintype() == "message":
            return
        for part in msg.get_payload():
            if isinstance(part, Message):
                yield from _own_parts(part)
    elif msg.get_content_type() not in ("text/rfc822-headers", "message/rfc822"):
        yield msg


def _status_code(text: str) -> str | None:
    """The first enhanced status code in ``text``, e.g. ``5.1.1``."""
    match = _STATUS.search(text)
    return ".".join(match.groups()) if match else None


def _reply_code(text: str) -> str | None:
    """The first SMTP reply code in ``text``, e.g. ``550``."""
    match = _REPLY_CODE.search(text)
    return match.group(1) if match else None


# --- 4. Automatic replies ------------------------------------------------------------------


def _auto_reply(msg: Message) -> _Answer | None:
    """An automatic reply: RFC 3834's Auto-Submitted, the vendor headers that came before
    it, or a vacation notice's subject (Outlook's says only "Automatic reply:")."""
    submitted = re.split(r"[;(\s]", _header(msg, "Auto-Submitted").strip().lower(), maxsplit=1)[0]
    if submitted and submitted != "no":
        return _auto_answer(f"Auto-Submitted: {submitted}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply"):
        if msg.get(name) is not None:
            return _auto_answer(name)
    if _header(msg, "Precedence").strip().lower() == "auto_reply":
        return _auto_answer("Precedence: auto_reply")
    if _VACATION_SUBJECT.search(_header(msg, "Subject")):
        if msg.get("X-Auto-Response-Suppress") is not None:
            return _auto_answer("Microsoft's out-of-office subject")
        return _auto_answer("a vacation subject")
    return None


def _auto_answer(sign: str) -> _Answer:
    return _Answer("auto_reply", (), None, None, f"auto-reply ({sign})")


# --- 5. Unsubscribe requests ---------------------------------------------------------------


def _unsubscribe(
    msg: Message, delivered_to: tuple[str, ...], unsubscribe_addresses: Collection[str]
) -> _Answer | None:
    """A request by mail: sent to an unsubscribe address (a List-Unsubscribe mailto, maybe
    with a +detail), or titled just "unsubscribe"; it concerns whoever sent it."""
    wanted = {_base_address(address) for address in unsubscribe_addresses}
    to_unsubscribe = any(_base_address(address) in wanted for address in delivered_to)
    if not (to_unsubscribe or _UNSUBSCRIBE_SUBJECT.match(_header(msg, "Subject"))):
        return None
    sender = _unique(_addresses(_header_values(msg, "From")))[:1]
    who = sender[0] if sender else "an unknown sender"
    return _Answer("unsubscribe", sender, None, None, f"unsubscribe request from {who}")


def _base_address(address: str) -> str:
    """The address without its +detail, lower-cased, for comparing mailboxes."""
    local, _at, domain = address.strip().strip("<>").rpartition("@")
    return f"{local.partition('+')[0]}@{domain}".lower()


# --- What ties a message to what bulkmail sent ----------------------------------------------


def _delivered_addresses(msg: Message) -> tuple[str, ...]:
    """Where this message was delivered: Delivered-To, X-Original-To, Envelope-To, then
    To; lower-cased, each once, in that order."""
    found: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "To"):
        found.extend(address.lower() for address in _addresses(_header_values(msg, name)))
    return _unique(found)


def _returned_original(msg: Message) -> Message | None:
    """The headers of the original mail a report returns: its message/rfc822 part, or its
    text/rfc822-headers part."""
    for part in msg.walk():
        if part is msg:
            continue
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            return _header_block(part)
        if content_type == "text/rfc822-headers":
            return HeaderParser(policy=compat32).parsestr(_part_text(part).lstrip())
    return None


def _original_message_ids(
    msg: Message, original: Message | None, *, quoted: bool
) -> tuple[str, ...]:
    """Message-IDs of the mail this message answers or returns: the returned original's,
    In-Reply-To and References, and (``quoted``, for a bounce) Message-ID lines in its text."""
    found: list[str] = []
    if original is not None:
        found.extend(_MESSAGE_ID.findall(_header(original, "Message-ID")))
    for name in ("In-Reply-To", "References"):
        for value in _header_values(msg, name):
            found.extend(_MESSAGE_ID.findall(value))
    if quoted:
        for part in _own_parts(msg):
            if part.get_content_maintype() == "text":
                found.extend(_QUOTED_MESSAGE_ID.findall(_part_text(part)))
    return _unique(found)


def _campaign_of(msg: Message, original: Message | None, *, quoted: bool) -> str | None:
    """The X-Bulkmail-Campaign of the returned original, from its headers or (``quoted``,
    for a bounce) from the copy of it in the bounce's text."""
    if original is not None and (name := _one_line(_header(original, "X-Bulkmail-Campaign"))):
        return name
    if quoted:
        for part in _own_parts(msg):
            match = _QUOTED_CAMPAIGN.search(_part_text(part))
            if part.get_content_maintype() == "text" and match:
                return _one_line(match.group(1)) or None
    return None


# --- Reading a message that may be malformed ------------------------------------------------


def _header(msg: Message, name: str) -> str:
    """The first ``name`` field of ``msg``, RFC 2047 words decoded; "" when absent."""
    values = _header_values(msg, name)
    return values[0] if values else ""


def _header_values(msg: Message, name: str) -> list[str]:
    """Every ``name`` field of ``msg``, decoded as far as it can be.

    Read raw: for a field with 8-bit bytes (raw UTF-8, as RFC 6532 allows and many
    clients send) the stdlib would give a `Header` whose text has lost them."""
    wanted = name.lower()
    return [_decoded(value) for key, value in msg.raw_items() if key.lower() == wanted]


def _decoded(value: object) -> str:
    """A header value as text: raw bytes read as UTF-8, encoded words decoded, folding
    undone; what cannot be decoded is replaced, never raised."""
    raw = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = re.sub(r"\r?\n(?=[ \t])", "", raw)
    try:
        return str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError, AssertionError):
        return text


def _header_block(part: Message) -> Message:
    """The fields of a message/* part as one header block, whether the parser read it as
    a sub-message or left it as (encoded) text."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    return HeaderParser(policy=compat32).parsestr(_part_text(part).lstrip())


def _part_text(part: Message) -> str:
    """A leaf part's content as text: transfer encoding undone, its charset decoded."""
    try:
        payload = part.get_payload(decode=True)
    except (AssertionError, ValueError, TypeError):
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _is_report(msg: Message, report_type: str) -> bool:
    """Whether ``msg`` is a multipart/report of ``report_type``."""
    if msg.get_content_type() != "multipart/report":
        return False
    declared = msg.get_param("report-type", "")
    return isinstance(declared, str) and declared.strip().lower() == report_type


def _addresses(values: Iterable[str]) -> list[str]:
    """The normalised addresses in address-list header values."""
    found = (_normalised(address) for _name, address in getaddresses(list(values)))
    return [address for address in found if address]


def _normalised(address: str) -> str | None:
    """``<Bob@Example.ORG>`` as ``Bob@example.org``; None for what is no address."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or any(char.isspace() for char in address):
        return None
    return f"{local}@{domain.lower()}"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """``items`` in their order, each once."""
    return tuple(dict.fromkeys(items))


def _one_line(text: str, limit: int = DIAGNOSTIC_LENGTH) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    return " ".join(text.split())[:limit]


def _reason_for(kind: FeedbackKind, status: str | None) -> str:
    """ "hard bounce 5.1.1 (user unknown)": the kind, the status and what it means."""
    words = {
        "hard_bounce": "hard bounce",
        "soft_bounce": "soft bounce",
        "delayed": "delivery delayed",
    }.get(kind, "delivery report")
    if status is None:
        return f"{words} (no status code)"
    meaning = _STATUS_MEANING.get(status.split(".", 1)[1])
    return f"{words} {status}" + (f" ({meaning})" if meaning else "")
