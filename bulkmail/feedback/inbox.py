"""Read the campaign's mailbox and act on what came back.

Each new message is classified (classify.py), tied to the mail it answers (the VERP token
of the address it came back to, else the Message-ID of the returned original, else a row
of a journal in this folder that was mailed at the address it names), and then:

- a hard bounce, a complaint or an unsubscribe request puts the address on the
  suppression list (store.py), and the row's journal says what came back;
- a soft bounce counts toward the `soft_bounce_limit` campaigns in a row that suppress;
- delay notices, auto-replies and people's replies are counted and left as they are.

A bounce or complaint that can't be tied to a mail sent from this folder suppresses
nobody (anyone can send a message that looks like a bounce); an unsubscribe request is
the person asking for themselves and is always honoured.

Safe to rerun: each message is remembered in the store (mailbox, uid) in the same
transaction as its suppression, and flagged in the mailbox (an IMAP keyword) after; a
message seen before is passed over. Nothing is deleted unless asked (``delete``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulkmail.errors import AuthError, ConfigError, JournalError
from bulkmail.feedback import verp
from bulkmail.feedback.classify import Verdict, classify
from bulkmail.feedback.mailbox import Mailbox, open_mailbox
from bulkmail.feedback.store import SuppressionStore
from bulkmail.journal.records import Entry, RunJournal
from bulkmail.journal.sqlite import Journal
from bulkmail.models import (
    Campaign,
    InboxSettings,
    Status,
    SuppressionReason,
    address_key,
)
from bulkmail.opening import Opened
from bulkmail.reports import Handled, InboxReport

if TYPE_CHECKING:
    from bulkmail.journal.postgres import PostgresJournal

OnHandled = Callable[[Handled], None]
# What each kind writes in the journal row of the mail it answers.
_JOURNAL_FEEDBACK = {
    "hard_bounce": "bounced",
    "soft_bounce": "soft-bounced",
    "complaint": "complained",
    "unsubscribe": "unsubscribed",
}
# Messages bulkmail acted on or recognised as machine-made: deleted when asked. A
# person's reply ("other") is never deleted.
_DELETABLE = {"hard_bounce", "soft_bounce", "delayed", "complaint", "unsubscribe", "auto_reply"}
_MAILED = (Status.ACCEPTED, Status.SENDING)
_REASONS: dict[str, SuppressionReason] = {
    "hard_bounce": "hard_bounce",
    "complaint": "complaint",
    "unsubscribe": "unsubscribe",
}


def inbox_password(
    settings: InboxSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """The mailbox password: the ``password_env`` variable, else ``prompt``, else an error."""
    if settings.password_env and environ.get(settings.password_env):
        return environ[settings.password_env]
    if prompt is not None:
        return prompt(f"Password for {settings.username} at {settings.host}: ")
    where = f"{settings.host}:{settings.port}: no password for {settings.username}"
    if settings.password_env:
        raise AuthError(f"{where}: set the environment variable {settings.password_env}")
    raise AuthError(f"{where}: add `password_env: SOME_VARIABLE` to inbox: and set that variable")


def read_inbox(
    campaign: Campaign,
    *,
    password: str | None = None,
    prompt: Callable[[str], str] | None = None,
    dry_run: bool = False,
    delete: bool = False,
    on_handled: OnHandled | None = None,
) -> InboxReport:
    """Read the new messages of ``campaign.inbox`` and act on them (see the module).

    ``dry_run``: classify and report what would be done, writing nothing anywhere (the
    mailbox, the store, the journals). ``delete``: delete the messages acted on or
    recognised as machine-made (never a person's reply, never one not ours).

    Example::

        report = read_inbox(load_campaign("campaigns/june.yaml"), dry_run=True)
        print(report.counts, report.suppressed)
    """
    settings = campaign.inbox
    if settings is None:
        raise ConfigError(
            "no inbox: to read; add inbox: {protocol: imap, host: ..., username: ...,"
            " password_env: ...} naming the mailbox bounces come back to",
            where=campaign.location("inbox"),
        )
    if password is None:
        password = inbox_password(settings, prompt=prompt)
    report = InboxReport(campaign, settings.identity, dry_run=dry_run)
    reader = _Reader(campaign, report, dry_run=dry_run, delete=delete, on_handled=on_handled)
    with (
        SuppressionStore(campaign.store_path, create=not dry_run) as store,
        _Journals(campaign) as journals,
        open_mailbox(settings, password) as mailbox,
    ):
        reader.run(mailbox, store, journals)
    return report


@dataclass
class _Match:
    """The journal row of the mail a message answers."""

    campaign: str
    entry: Entry
    how: str  # "VERP token", "Message-ID", "address"


class _Journals:
    """The journals of the campaigns of one folder, opened when first needed (unlocked:
    a send may be going on; each write is a short transaction of its own); the campaign's
    own journal in its shared database, if it has one (`journal: postgresql://...`)."""

    def __init__(self, campaign: Campaign) -> None:
        self.folder = campaign.journal_dir
        self.campaign = campaign
        self._open: dict[str, RunJournal | None] = {}

    def __enter__(self) -> _Journals:
        return self

    def __exit__(self, *exc: object) -> None:
        for journal in self._open.values():
            if isinstance(journal, Opened):
                journal.close()

    def names(self) -> list[str]:
        try:
            names = {p.stem for p in self.folder.glob("*.sqlite")}
        except OSError:
            names = set()
        if self.campaign.journal is not None:
            names.add(self.campaign.name)
        return sorted(names)

    def get(self, name: str) -> RunJournal | None:
        """The journal of campaign ``name``; None if there is none or it can't be used
        (it is not ours to repair here: `bulkmail status` says what is wrong)."""
        if name not in self._open:
            journal = self._journal(name)
            try:
                journal.open()
            except JournalError:
                self._open[name] = None
            else:
                self._open[name] = journal
        return self._open[name]

    def _journal(self, name: str) -> Journal | PostgresJournal:
        shared = self.campaign.journal
        if shared is not None and name == self.campaign.name:
            from bulkmail.journal.postgres import PostgresJournal as Shared  # psycopg here only

            return Shared(shared, name, sender=False, where=self.campaign.location("journal"))
        return Journal(self.folder / f"{name}.sqlite", lock=False, campaign=name)

    def all(self) -> Iterator[tuple[str, RunJournal]]:
        for name in self.names():
            journal = self.get(name)
            if journal is not None:
                yield name, journal

    def by_token(self, token: verp.Token, secret: bytes) -> _Match | None:
        for name in self.names():
            if verp.campaign_tag(name) != token.tag:
                continue
            journal = self.get(name)
            entry = journal.entry_at_line(token.line) if journal else None
            if entry is not None and verp.verify(token, secret, campaign=name, key=entry.key):
                return _Match(name, entry, "VERP token")
        return None

    def by_message_id(self, message_id: str) -> _Match | None:
        for name, journal in self.all():
            entry = journal.entry_for_message(message_id)
            if entry is not None:
                return _Match(name, entry, "Message-ID")
        return None

    def by_address(self, address: str, prefer: str | None) -> _Match | None:
        """A row mailed at ``address``: of campaign ``prefer`` if it has one."""
        names = sorted(self.names(), key=lambda name: name != prefer)
        for name in names:
            journal = self.get(name)
            entry = journal.status_of(address_key(address)) if journal else None
            if entry is not None and entry.status in _MAILED:
                return _Match(name, entry, "address")
        return None


class _Reader:
    """One pass over the mailbox."""

    def __init__(
        self,
        campaign: Campaign,
        report: InboxReport,
        *,
        dry_run: bool,
        delete: bool,
        on_handled: OnHandled | None,
    ) -> None:
        self.campaign = campaign
        self.report = report
        self.dry_run = dry_run
        self.delete = delete
        self.on_handled = on_handled
        self.unsubscribe_addresses = _unsubscribe_addresses(campaign)
        self.secret: bytes | None = None
        if campaign.return_path is not None:
            if campaign.return_path_secret_env is not None:
                self.secret = verp.secret_from_env(campaign.return_path_secret_env)
            elif (campaign.journal_dir / verp.SECRET_FILE).exists():
                self.secret = verp.load_secret(campaign.journal_dir / verp.SECRET_FILE)

    def run(self, mailbox: Mailbox, store: SuppressionStore, journals: _Journals) -> None:
        identity = self.report.mailbox
        for message in mailbox.messages():
            if store.processed(identity, message.uid):
                self.report.already += 1
                if not self.dry_run:
                    mailbox.mark_processed(message.uid)  # a run cut short before flagging it
                continue
            verdict = classify(message.raw, unsubscribe_addresses=self.unsubscribe_addresses)
            handled = self._act(message.uid, verdict, store, journals)
            self.report.note(handled)
            if self.on_handled is not None:
                self.on_handled(handled)
            if self.dry_run:
                continue
            mailbox.mark_processed(message.uid)
            if self.delete and verdict.kind in _DELETABLE and handled.acted:
                mailbox.delete(message.uid)
                self.report.deleted += 1

    def _act(
        self, uid: str, verdict: Verdict, store: SuppressionStore, journals: _Journals
    ) -> Handled:
        kind = verdict.kind
        if kind in ("delayed", "auto_reply", "other"):
            self._remember(store, uid, kind)
            return Handled(uid, kind, verdict.reason, "counted")
        if kind == "unsubscribe":
            address = verdict.recipients[0] if verdict.recipients else None
            if address is None:
                self._remember(store, uid, kind)
                return Handled(
                    uid, kind, verdict.reason, "not acted on: no sender address", acted=False
                )
            match = journals.by_address(address, prefer=verdict.campaign)
            return self._suppress(uid, verdict, address, match, store, journals)
        match, problem = self._attribute(verdict, journals)
        if match is None:
            self.report.unmatched += 1
            self._remember(store, uid, kind)
            return Handled(uid, kind, verdict.reason, f"not ours: {problem}", acted=False)
        return self._suppress(uid, verdict, match.entry.email, match, store, journals)

    def _attribute(self, verdict: Verdict, journals: _Journals) -> tuple[_Match | None, str]:
        """The row whose mail this bounce or complaint is about, or None and why not."""
        failed = {address_key(a) for a in verdict.recipients}
        if self.campaign.return_path is not None:
            for address in verdict.delivered_to:
                if not _verp_form(address, self.campaign.return_path):
                    continue
                token = verp.read_token(address, self.campaign.return_path)
                match = journals.by_token(token, self.secret) if token and self.secret else None
                if match is None:
                    return None, f"the token of {address} does not verify"
                if self._a_copy_bounced(failed, match.entry):
                    return None, "a copy (cc/bcc) bounced, not the row's recipient"
                return match, ""
        for message_id in verdict.message_ids:
            match = journals.by_message_id(message_id)
            if match is not None:
                if self._a_copy_bounced(failed, match.entry):
                    return None, "a copy (cc/bcc) bounced, not the row's recipient"
                return match, ""
        for address in verdict.recipients:
            match = journals.by_address(address, prefer=verdict.campaign)
            if match is not None:
                return match, ""
        named = ", ".join(verdict.recipients) or "no address"
        return None, f"no mail from this folder's campaigns went to {named}"

    def _a_copy_bounced(self, failed: set[str], entry: Entry) -> bool:
        """Whether the addresses that failed are Cc/Bcc copies the row's envelope carried
        (the campaign's, or the row's cc column), not the row's reader. A failed address
        that is neither (an alias the reader's server expanded) counts as the reader's."""
        if not failed or entry.key in failed:
            return False
        row_cc = entry.fields.get("cc", "").replace(";", ",").split(",")
        copies = {address_key(a.strip()) for a in (*self.campaign.cc, *self.campaign.bcc, *row_cc)}
        return failed <= copies

    def _suppress(
        self,
        uid: str,
        verdict: Verdict,
        address: str,
        match: _Match | None,
        store: SuppressionStore,
        journals: _Journals,
    ) -> Handled:
        kind = verdict.kind
        campaign = match.campaign if match else None
        detail = verdict.reason
        if verdict.diagnostic:
            detail = f"{detail}: {verdict.diagnostic}"
        known = store.is_suppressed(address)
        if self.dry_run:
            if kind == "soft_bounce":
                action = "would count a soft bounce"
            else:
                action = "already suppressed" if known else "would suppress"
            return Handled(uid, kind, verdict.reason, action, address, campaign)
        if match is not None:
            journal = journals.get(match.campaign)
            if journal is not None:  # first, and idempotent: a crash before the store redoes it
                journal.note_feedback(match.entry.key, _JOURNAL_FEEDBACK[kind], detail)
        with store.transaction():
            # A concurrent `inbox` that took this message first has made its changes.
            if not store.mark_processed(self.report.mailbox, uid, kind):
                added = False
            elif kind == "soft_bounce":
                added = store.soft_bounce(
                    address,
                    campaign=campaign or "(unknown)",
                    detail=detail,
                    limit=self.campaign.soft_bounce_limit,
                )
            else:
                added = store.add(address, _REASONS[kind], campaign=campaign, detail=detail)
        if added:
            self.report.suppressed += 1
        if kind == "soft_bounce":
            action = "suppressed (soft bounces in a row)" if added else "soft bounce counted"
        else:
            action = "suppressed" if added else "already suppressed"
        return Handled(uid, kind, verdict.reason, action, address, campaign)

    def _remember(self, store: SuppressionStore, uid: str, kind: str) -> None:
        if not self.dry_run:
            with store.transaction():
                store.mark_processed(self.report.mailbox, uid, kind)


def _verp_form(address: str, return_path: str) -> bool:
    """Whether ``address`` is the return path with a +detail: a token, or a forged one."""
    local, _, domain = return_path.rpartition("@")
    got_local, _, got_domain = address.rpartition("@")
    return got_domain.lower() == domain.lower() and got_local.lower().startswith(
        f"{local}+".lower()
    )


def _unsubscribe_addresses(campaign: Campaign) -> tuple[str, ...]:
    """The List-Unsubscribe mailto address, without its ?query and any per-recipient
    +detail (classify ignores +details on both sides)."""
    unsubscribe = campaign.unsubscribe
    if unsubscribe is None or unsubscribe.mailto is None:
        return ()
    address = unsubscribe.mailto.split("?", 1)[0]
    local, _, domain = address.rpartition("@")
    if "{" in domain or not local:
        return ()
    return (f"{local.split('+', 1)[0].split('{', 1)[0]}@{domain}",)
