"""Record what a send run does: every outcome to the journal, the report and the events.

`send._send_each` decides which mail goes next; `deliver.outcome.send_one` hands it over;
the `Recorder` here is the one place that turns what happened into the journal's marks,
the `SendReport`'s counters and the `Event`s a user sees. `RunEvents` is that event
stream, shared with the SMTP transport's reconnects and retries, so that every event of a
run says how far the run got in the same way.

The journal's rules, which the resume guarantees rest on:

- a mail is marked ``sending``, and the mark committed and synced, before it is handed
  over (`Recorder.mark`); the content's fingerprint is committed with the run's first mark;
- accepted and refused mails get their outcome, committed with the next mark (made, as
  a rule, while the server reads the next mail: see `send._Upcoming`);
- an uncertain mail stays ``sending``: the next run reports it and does not resend it;
- a cancelled or stopped mail was never handed over: its mark is undone (`unmark`) to the
  status it had, and the run ends;
- the run itself ends as "completed", "interrupted" or "stopped: <why>".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import assert_never

from bulkmail.deliver.outcome import Accepted, Cancelled, Outcome, Refused, Stopped, Uncertain
from bulkmail.errors import CampaignError, DeliveryError
from bulkmail.journal.records import RunJournal
from bulkmail.models import Event, EventKind, OnEvent, OutgoingMail, Status
from bulkmail.reports import SendReport

MAX_FAILURES = 20  # refusals kept in the report to show; the journal has them all


class RunEvents:
    """A run's events, each saying how many mails are done of how many to send."""

    def __init__(self, report: SendReport, on_event: OnEvent | None) -> None:
        self._report = report
        self._on_event = on_event

    def emit(self, kind: EventKind, *, mail: OutgoingMail | None = None, detail: str = "") -> None:
        if self._on_event is None:
            return
        report = self._report
        done = report.accepted + report.failed + report.uncertain
        self._on_event(Event(kind, done, report.plan.to_send, mail=mail, detail=detail))


class Recorder:
    """Maps each mail's `Outcome` to the journal, the report and the event stream.

    Call `start` once, `mark` before handing each mail over, `record` with its outcome,
    and `finish` at the end, whatever happened (in a ``finally``).
    """

    def __init__(
        self,
        journal: RunJournal,
        report: SendReport,
        fingerprint: dict[str, str],
        on_event: OnEvent | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.report = report
        self.events = RunEvents(report, on_event)
        self._fingerprint: dict[str, str] | None = fingerprint  # None once stored
        self._clock = clock
        self._started = clock()
        self.run_outcome = "completed"  # as the journal's list of runs will say

    def start(self) -> None:
        """Note the run in the journal and start its clock."""
        self.journal.start_run()
        self._started = self._clock()

    def mark(self, mail: OutgoingMail, *, durable: bool = True) -> bool:
        """Mark ``mail`` as being sent, committed and synced: only then may it go.

        ``durable=False``: the mark may still be on its way to the disk when this returns;
        the transport must call ``journal.settle`` before handing the mail over.

        False: the journal refused the mark (a shared journal, where another sender took
        the row over after this one's lease ran out): the mail must not go.
        The fingerprint describes what was sent, so it is stored with the first mark (a
        run that sends nothing does not make its version the reference).
        """
        if self._fingerprint is not None:
            self.journal.begin_batch()
            self.journal.set_meta("fingerprint", json.dumps(self._fingerprint, sort_keys=True))
            self._fingerprint = None
        return self.journal.sending(mail.recipient, mail.message_id, mail.sender, durable=durable)

    def record(self, mail: OutgoingMail, outcome: Outcome, *, was: Status) -> None:
        """Record what became of ``mail``, marked before; ``was``: its status before."""
        match outcome:
            case Accepted(reply=reply, refused_copies=refused_copies):
                self.journal.outcome(mail.recipient, Status.ACCEPTED, 250, reply)
                self.report.accepted += 1
                self.events.emit("sent", mail=mail, detail=reply)
                for refusal in refused_copies:  # the row's outcome is its recipient's
                    self.events.emit("copy-refused", mail=mail, detail=refusal)
            case Refused():
                self._refused(mail, outcome)
            case Uncertain(why=why):
                self.report.uncertain += 1  # the journal keeps it as "sending"
                self.events.emit("uncertain", mail=mail, detail=why)
            case Cancelled():
                self.journal.unmark(mail.recipient, was)
                self.interrupted()
            case Stopped(error=error):
                self.journal.unmark(mail.recipient, was)
                self.stopped(error)
            case _:
                assert_never(outcome)

    def _refused(self, mail: OutgoingMail, refused: Refused) -> None:
        self.journal.outcome(mail.recipient, Status.FAILED, refused.code, refused.reply)
        self.report.failed += 1
        if len(self.report.failures) < MAX_FAILURES:
            self.report.failures.append((mail.recipient, refused.why))
        self.events.emit("failed", mail=mail, detail=refused.why)

    def added(self) -> None:
        """A row the preflight did not see (added to the list since): sending it now would
        leave no journal row for it (marks update existing rows only), so a later run
        would mail it again. It is left for the next run, which checks it first."""
        self.report.added += 1

    def interrupted(self) -> None:
        """The run was stopped (a stop request, Ctrl-C) before its end."""
        self.report.interrupted = True
        self.run_outcome = "interrupted"

    def stopped(self, error: DeliveryError) -> None:
        """The batch cannot go on: ``error`` is what the user will read."""
        self.report.stopped = error
        self.run_outcome = f"stopped: {error}"

    def finish(self, unbuilt: Sequence[CampaignError]) -> None:
        """Close the run: the mails that could not be built, the time taken, and the
        journal's last outcomes and the run's end, committed."""
        self.report.unbuilt = list(unbuilt)
        self.report.elapsed = self._clock() - self._started
        self.journal.flush()
        self.journal.finish_run(self.run_outcome)
