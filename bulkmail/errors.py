"""The exceptions bulkmail raises, and where in the user's files each one points.

Library code raises only these; errors from yaml, csv, jinja2, smtplib and sqlite3
are translated in one place per dependency, chained with ``from``::

    BulkmailError                  exit_code = 1
    ├── CampaignError              an input is wrong; found before anything is sent
    │   ├── ConfigError            june.yaml:14: smtp.secuirty: unknown key (did you mean …?)
    │   ├── RecipientError         june.csv:48: email: 'bob@@example.com' is not a valid address
    │   ├── TemplateError          newsletter.html:9: 'first_nme' is undefined (june.csv:47)
    │   └── AttachmentError        june.yaml:20: attachments[1]: files/x.pdf: no such file
    ├── PreflightError             .problems: list[CampaignError]; nothing was sent
    ├── DeliveryError              exit_code = 4; from the SMTP conversation
    │   ├── ConnectError           smtp.example.com:465: connection refused
    │   │   └── DeliveryUncertain  lost after the whole mail was sent: maybe delivered
    │   ├── TLSError               certificate verify failed / server has no STARTTLS
    │   ├── AuthError              535 ..., for news@example.com (never the password)
    │   └── RecipientRefused       5xx for one address: recorded as failed, the run goes on
    └── JournalError               exit_code = 4; journal locked, busy or from a newer bulkmail
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """A place in a user's file: ``campaigns/june.csv:48: email``."""

    path: Path | str
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        text = display_path(self.path)
        if self.line is not None:
            text += f":{self.line}"
        if self.field:
            text += f": {self.field}"
        return text


def display_path(path: Path | str) -> str:
    """Show ``path`` relative to the working directory when it lies below it."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return os.path.normpath(path) if not path.is_absolute() else str(path)


class BulkmailError(Exception):
    """Base of every error bulkmail raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, where: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class CampaignError(BulkmailError):
    """Something in the campaign's inputs is wrong; found before anything is sent.

    ``row`` is the recipient row it happened for, when the place in ``where`` is shared by
    every row (a template line, a campaign setting).
    """

    def __init__(
        self, message: str, *, where: Location | None = None, row: Location | None = None
    ) -> None:
        super().__init__(message, where=where)
        self.row = row
        self.more_rows = 0  # the same problem on this many other rows (set by the preflight)

    def __str__(self) -> str:
        text = super().__str__()
        if self.row is None:
            return text
        more = self.more_rows
        also = f" and {more:,} more row{'s' if more > 1 else ''}" if more else ""
        return f"{text} (for {self.row}{also})"


class ConfigError(CampaignError):
    """The campaign YAML is malformed or has a wrong, missing or unknown setting."""


class RecipientError(CampaignError):
    """A row of the recipient CSV (or suppression list) cannot be used."""


class TemplateError(CampaignError):
    """A template does not compile, or does not render for some recipient."""


class AttachmentError(CampaignError):
    """An attachment is missing or unreadable."""


class PreflightError(BulkmailError):
    """The preflight found problems; nothing was sent or written."""

    def __init__(self, problems: list[CampaignError], *, truncated: bool = False) -> None:
        self.problems = problems
        self.truncated = truncated
        count = f"{len(problems)}{'+' if truncated else ''}"
        noun = "problem" if len(problems) == 1 and not truncated else "problems"
        super().__init__(f"{count} {noun}; nothing was sent")


class DeliveryError(BulkmailError):
    """The SMTP conversation failed."""

    exit_code = 4


class ConnectError(DeliveryError):
    """The server could not be reached, or dropped the connection for good."""


class DeliveryUncertain(ConnectError):
    """The connection was lost after a whole mail was sent, before the server's answer.

    The server may have accepted the mail: do not resend it blindly.
    """

    def __init__(self, message: str, *, recipient: str) -> None:
        super().__init__(message)
        self.recipient = recipient


class TLSError(DeliveryError):
    """TLS could not be set up: an untrusted certificate, or no STARTTLS offered."""


class AuthError(DeliveryError):
    """The server refused the login, or wants one and no credentials were given."""


class RecipientRefused(DeliveryError):
    """The server refused the mail for one recipient; the batch goes on."""

    def __init__(self, message: str, *, code: int, reply: str, permanent: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply
        self.permanent = permanent


class MailboxError(DeliveryError):
    """The mailbox bounces come back to can't be read: unreachable, TLS not trusted, login
    refused, no such folder, or a server that can't do what bulkmail needs (POP3 without
    UIDL)."""


class JournalError(BulkmailError):
    """The journal cannot be opened or written: locked, busy, or from a newer bulkmail."""

    exit_code = 4
