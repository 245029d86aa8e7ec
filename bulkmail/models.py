"""Plain data that flows through the pipeline: campaign settings, recipients, built mails,
and the events a run reports."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from bulkmail.errors import Location

Security = Literal["ssl", "starttls", "none"]

DEFAULT_PORTS: dict[str, int] = {"ssl": 465, "starttls": 587, "none": 25}
# Mailbox ports by protocol and security.
MAILBOX_PORTS: dict[str, dict[str, int]] = {
    "imap": {"ssl": 993, "starttls": 143, "none": 143},
    "pop3": {"ssl": 995, "starttls": 110, "none": 110},
}
# The suppression store every campaign of a folder shares, in its journal folder.
STORE_FILE = "suppressions.db"


@dataclass(frozen=True)
class Rate:
    """At most ``per_second`` mails per second on average, ``burst`` of them back to back."""

    per_second: float | None  # None: no limit
    burst: int = 1
    text: str = "unlimited"  # as the user wrote it, e.g. "5 per second"


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the user's submission server. The password itself is never stored here."""

    host: str
    port: int
    security: Security = "ssl"
    username: str | None = None
    password_env: str | None = None
    timeout: float = 30.0
    ca_file: Path | None = None
    local_hostname: str | None = None
    max_per_connection: int | None = None
    # Log in over a connection without TLS to a host other than this machine (the
    # password crosses the network readable): only when the user said so.
    allow_plaintext_auth: bool = False
    # With several relays (`smtp:` a list): this relay's share of the mails, relative to
    # the others' weights, and its own pace (None: only the campaign's `rate:`).
    weight: float = 1.0
    rate: Rate | None = None

    @property
    def name(self) -> str:
        """Names the relay in messages: ``user@host:port`` (never a password)."""
        who = f"{self.username}@" if self.username else ""
        return f"{who}{self.host}:{self.port}"

    @property
    def host_is_loopback(self) -> bool:
        """Whether ``host`` names this machine as written: localhost, 127.0.0.0/8 or ::1.

        Nothing is looked up: a DNS answer can change or be forged, so any other name (even
        one that resolves to 127.0.0.1 today) counts as another machine.
        """
        name = self.host.strip().rstrip(".").lower()
        if name == "localhost":
            return True
        try:
            address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback

    def plaintext_auth_problem(self) -> str | None:
        """Why logging in with these settings would expose the password, or None.

        Without TLS the password crosses the network readable by anyone on the way:
        harmless only to this machine, or where the user vouches for the network.
        """
        if self.security != "none" or self.username is None:
            return None
        if self.allow_plaintext_auth or self.host_is_loopback:
            return None
        return (
            f"refusing to send the password for {self.username} in clear to {self.host}"
            " (security: none); use `security: starttls` or `security: ssl`, or set"
            " `allow_plaintext_auth: true` if the network to that host is trusted"
        )


MailboxProtocol = Literal["imap", "pop3"]


DEFAULT_LEASE = 30.0  # seconds a sender's claim on rows outlives its last heartbeat


@dataclass(frozen=True)
class PostgresSettings:
    """A journal kept in PostgreSQL (`journal: postgresql://user@host/db`), which several
    senders of one campaign share. ``url`` never holds a password: libpq finds it
    (PGPASSWORD, ~/.pgpass, a service file) or ``password_env`` names the variable."""

    url: str
    password_env: str | None = None
    # A sender that stops heartbeating for this long loses its claim on its unsent rows.
    lease: float = DEFAULT_LEASE

    @property
    def name(self) -> str:
        """Names the database in messages: the URL as written (it holds no password)."""
        return self.url


@dataclass(frozen=True)
class InboxSettings:
    """The mailbox that bounces, complaints and unsubscribe requests come back to (the
    campaign's `inbox:`): read over IMAP or POP3, TLS verified as for SMTP. The password
    itself is never stored here: it comes from ``password_env`` or a prompt."""

    protocol: MailboxProtocol
    host: str
    port: int
    username: str
    security: Security = "ssl"
    password_env: str | None = None
    folder: str = "INBOX"  # IMAP only: POP3 has one mailbox
    timeout: float = 30.0
    ca_file: Path | None = None
    allow_plaintext_auth: bool = False

    @property
    def identity(self) -> str:
        """Names this mailbox in the suppression store's record of processed messages."""
        return f"{self.protocol}://{self.username}@{self.host}:{self.port}/{self.folder}"


# What a message that came back is (feedback/classify.py): a permanent or temporary
# delivery failure, a delay notice, a spam complaint (ARF), an unsubscribe request, an
# automatic reply (vacation, RFC 3834), or anything else (a person's reply).
FeedbackKind = Literal[
    "hard_bounce", "soft_bounce", "delayed", "complaint", "unsubscribe", "auto_reply", "other"
]
# Why an address is on the suppression list.
SuppressionReason = Literal["hard_bounce", "soft_bounces", "complaint", "unsubscribe", "manual"]


@dataclass(frozen=True)
class AttachmentSpec:
    """One attachment entry of the campaign; ``path`` may be a Jinja template.

    A templated path is rendered from ``written`` (the path as the campaign file has it),
    and what it renders to must lie inside ``folder``: the folder named by the literal part
    before the first ``{{``, so CSV data can pick a file there but never leave it.
    """

    path: str
    filename: str | None
    where: Location
    templated: bool
    written: str = ""
    folder: Path | None = None


@dataclass(frozen=True)
class Unsubscribe:
    """Where the one-click unsubscribe goes (RFC 8058); both may be Jinja templates."""

    url: str | None
    mailto: str | None


DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]


@dataclass(frozen=True)
class DkimSettings:
    """Whose DKIM signature the mails carry: ``selector._domainkey.domain`` publishes the key.

    Only where the private key is kept is stored here (a file or an environment variable),
    never the key: compose/dkim.py reads it once per run, so it is in no repr or error.
    """

    domain: str
    selector: str
    private_key_file: Path | None = None
    private_key_env: str | None = None
    algorithm: DkimAlgorithm | None = None  # None: the one the key's type calls for
    # Where the key setting was written, for the errors found when the key is read.
    key_where: Location | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Campaign:
    """A loaded, validated campaign file. Paths are absolute."""

    path: Path
    name: str
    sender: str
    subject: str
    template: Path | None  # None: a plain-text mail, from text_template alone
    recipients: Path
    preview_out: Path
    journal_dir: Path
    reply_to: str | None = None
    text_template: Path | None = None
    # A Markdown body (instead of template), in a layout (None: the package's default).
    markdown: Path | None = None
    layout: Path | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    attachments: tuple[AttachmentSpec, ...] = ()
    unsubscribe: Unsubscribe | None = None
    suppress: Path | None = None
    smtp: SmtpSettings | None = None  # the first relay (the only one, usually)
    # Every relay when `smtp:` is a list; () when it is one relay (see `all_relays`).
    relays: tuple[SmtpSettings, ...] = ()
    # Where the journal is kept: None, a file in journal_dir; else a PostgreSQL database.
    journal: PostgresSettings | None = None
    rate: Rate = field(default_factory=lambda: Rate(per_second=None))
    base_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # The CSV delimiters if the campaign sets them (None: found from the header line).
    recipients_delimiter: str | None = None
    suppress_delimiter: str | None = None
    # Accept .test, .local, localhost and other special-use domains (intranets, test servers).
    allow_special_domains: bool = False
    # Sign every mail with this key (None: leave signing to the relay, if it does).
    dkim: DkimSettings | None = None
    # Copies of every mail (normalised addresses): Cc in the header and the envelope,
    # Bcc in the envelope only (e.g. an archive copy to the sender).
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    # "embed": local <img> files go inside each mail (multipart/related); "link": URLs.
    images: str = "embed"
    # The envelope sender (MAIL FROM), where bounces go: each mail gets its own VERP
    # address of it (bounces+<token>@...), so a bounce names the row it came from; the
    # token's key comes from this environment variable (None: a key file in journal_dir).
    return_path: str | None = None
    return_path_secret_env: str | None = None
    # The mailbox `bulkmail inbox` reads bounces, complaints and unsubscribes from.
    inbox: InboxSettings | None = None
    # The suppression store this campaign skips and `inbox` fills (None: the one shared
    # by the campaigns of this folder, in journal_dir); soft bounces that suppress.
    suppression_store: Path | None = None
    soft_bounce_limit: int = 3
    # Where each top-level setting was written, for error messages.
    where: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def location(self, key: str) -> Location:
        """Where ``key`` stands in the campaign file (the file itself if unknown)."""
        return self.where.get(key, Location(self.path, field=key))

    @property
    def all_relays(self) -> tuple[SmtpSettings, ...]:
        """The relays to send through: `relays`, else `smtp` alone, else none."""
        if self.relays:
            return self.relays
        return () if self.smtp is None else (self.smtp,)

    @property
    def store_path(self) -> Path:
        """The suppression store: the campaign's own setting, else the folder's shared one."""
        return self.suppression_store or self.journal_dir / STORE_FILE

    @property
    def text_only(self) -> bool:
        """A plain-text campaign: text_template alone, so no HTML part at all."""
        return self.template is None and self.markdown is None

    @property
    def body_template(self) -> Path:
        """The template the mail's body comes from: the HTML one, else the Markdown, else
        the text one (a plain-text campaign); where a finding about the body is placed."""
        body = self.template or self.markdown or self.text_template
        assert body is not None  # the loader requires one of them
        return body


@dataclass(frozen=True)
class Recipient:
    """One CSV row: its line number, the address (normalised), the name and every column."""

    line: int
    email: str
    name: str
    fields: Mapping[str, str]
    cc: tuple[str, ...] = ()  # the row's own Cc addresses (its `cc` column), normalised

    @property
    def key(self) -> str:
        """The identity used for duplicates and the journal."""
        return address_key(self.email)


def address_key(address: str) -> str:
    """The identity of a normalised address: the whole address compared case-insensitively.

    RFC 5321 lets a server treat ``Bob@`` and ``bob@`` as two mailboxes, but no provider
    does, and people type their address in any case: a suppression must stop every
    spelling, and one person must not be mailed twice. The address is sent as written.
    """
    return address.lower()


SkipReason = Literal["duplicate", "suppressed"]


@dataclass(frozen=True)
class Skipped:
    """A valid row that is not mailed: a duplicate of an earlier row, or suppressed."""

    recipient: Recipient
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class RenderedMail:
    """What the templates make of one recipient."""

    subject: str
    html: str
    text: str
    unsubscribe_url: str | None
    unsubscribe_mailto: str | None
    # Attachments that differ per recipient, by index in campaign.attachments:
    # (index, path, filename) for a templated path or file name.
    attachments: tuple[tuple[int, Path, str], ...]


@dataclass(frozen=True)
class Attachment:
    """An attachment as it is named in the mail."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class OutgoingMail:
    """One recipient's mail, complete: the exact bytes a server would receive."""

    index: int
    recipient: Recipient
    sender: str  # envelope MAIL FROM
    message_id: str
    subject: str
    html: str  # empty in a send (only previews and the checks read it)
    data: bytes
    attachments: tuple[Attachment, ...]
    smtputf8: bool  # the envelope or headers need the SMTPUTF8 extension
    size: int = 0  # of data, kept when a check drops the content (see workers.py)
    # Envelope recipients besides the row's (Cc and Bcc copies): a copy refused by the
    # server does not fail the row, whose outcome is its recipient's.
    copies: tuple[str, ...] = ()
    # Each embedded image's src in ``html`` and its file's URI, for the .html preview.
    image_files: tuple[tuple[str, str], ...] = ()


class Status(StrEnum):
    """A recipient's state in the journal."""

    PENDING = "pending"
    SENDING = "sending"
    ACCEPTED = "accepted"
    FAILED = "failed"
    SKIPPED = "skipped"


# What a run reports, in the order a mail meets them: a row skipped or its mail built
# (check, preview and the send's preflight); then, sending, the mail's outcome, and the
# transport's reconnects and 4xx retries (``detail`` says why the run slows down), and a
# Cc/Bcc copy the server refused while it took the mail for the row's recipient.
EventKind = Literal[
    "skipped",
    "built",
    "sent",
    "failed",
    "uncertain",
    "reconnect",
    "retry",
    "copy-refused",
    "relay-down",  # a relay was set aside (connect or login failed); the others go on
    "waiting",  # a sender waits for rows other senders hold (shared journal)
]


@dataclass(frozen=True)
class Event:
    """Progress of a run, for a CLI or a log; ``done`` of ``total`` (None: not known)."""

    kind: EventKind
    done: int = 0
    total: int | None = None
    mail: OutgoingMail | None = None
    skipped: Skipped | None = None
    detail: str = ""


# What hears a run's events: the CLI's progress display, a log, a test.
OnEvent = Callable[[Event], None]
