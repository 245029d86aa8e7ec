"""Resume: kill, interrupt and race real `bulkmail run` processes, then count at the server.

The sends run in subprocesses (``python -m bulkmail``) against the in-process aiosmtpd
server; DATA is slowed a little so that a kill lands part-way. After each scenario the
command is run again to completion, and the server's inbox is the judge: every recipient
has exactly one mail, except those `bulkmail status` reports as uncertain (zero or one
each): after a kill, at most two next to each other in the list, the mail in flight and
either the one before (its outcome not yet committed) or the one marked ahead of it
while the server read it (never handed over). Any other way a run ends leaves at most
the one in flight.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, DataHold, Inbox, Server, TLSPair
from processes import bulkmail, environment, finish, run, start
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.deliver.smtp import SMTPTransport
from bulkmail.journal.status import campaign_status
from bulkmail.models import Event, Status
from bulkmail.send import send_campaign

RECIPIENTS = 200
ADDRESSES = [f"reader{i}@example.com" for i in range(RECIPIENTS)]
RUN = ("run", "campaigns/test.yaml", "--yes")
STATUS = ("status", "campaigns/test.yaml", "--json")
runner = CliRunner()


@pytest.fixture
def campaign(tmp_path: Path, smtpd: Server, tls: TLSPair) -> CampaignDir:
    """200 recipients at the implicit-TLS server, which takes 3 ms to answer each DATA."""
    c = CampaignDir(tmp_path)
    c.csv(people(RECIPIENTS))
    c.write(smtp=smtp_settings(smtpd, tls))
    smtpd.inbox.faults.data_delay = 0.003
    return c


# --- running the command -------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the run ended (exit {process.returncode}) too early: {err}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def wait_for_line(process: subprocess.Popen[str], text: str) -> None:
    """Read the run's stderr up to a line holding ``text``."""
    assert process.stderr is not None
    while text not in (line := process.stderr.readline()):
        assert line, f"the run ended without saying {text!r}"


def status(campaign: CampaignDir, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`bulkmail status --json`, run in-process (it only reads the journal)."""
    monkeypatch.chdir(campaign.root)
    result = runner.invoke(app, list(STATUS))
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def assert_each_mailed_once_but_the_uncertain(
    inbox: Inbox, state: dict[str, Any], *, most: int = 1
) -> set[str]:
    """Every recipient got exactly one mail, except the uncertain ones (at most ``most``,
    next to each other in the list): 0 or 1 each."""
    uncertain = {entry["email"] for entry in state["uncertain"]}
    assert len(uncertain) <= most, uncertain
    if uncertain:
        lines = sorted(ADDRESSES.index(address) for address in uncertain)
        assert lines == list(range(lines[0], lines[0] + len(lines))), uncertain
    counts = Counter(inbox.recipients)
    assert set(counts) <= set(ADDRESSES)
    wrong = {
        address: counts[address]
        for address in ADDRESSES
        if counts[address] not in ((0, 1) if address in uncertain else (1,))
    }
    assert wrong == {}, "mailed a wrong number of times"
    assert state["counts"]["accepted"] == RECIPIENTS - len(uncertain)
    assert state["counts"]["pending"] == 0
    return uncertain


# --- SIGKILL at several points ---------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """When to kill: once the server holds ``messages`` mails, or (``hold``) while it is
    inside the DATA of mail number ``messages + 1``: before queueing it, or after."""

    messages: int
    hold: str | None = None  # "before queueing" | "after queueing"

    def __str__(self) -> str:
        if self.hold:
            return f"inside DATA {self.hold} mail {self.messages + 1}"
        return f"after mail {self.messages}" if self.messages else "right after login"


KILL_POINTS = [
    KillPoint(0),  # as soon as it logged in: before or at the first mail
    KillPoint(57),
    KillPoint(199),  # at the very end: during the last mail, or while finishing
    KillPoint(80, hold="before queueing"),  # the server never gets it: uncertain, 0 mails
    KillPoint(140, hold="after queueing"),  # the server has it, no reply: uncertain, 1 mail
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=str)
def test_sigkill_then_rerun_mails_everyone_exactly_once(
    campaign: CampaignDir, smtpd: Server, point: KillPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = smtpd.inbox
    killed_at = ADDRESSES[point.messages]
    hold = None
    if point.hold:
        hold = DataHold(inbox, point.messages + 1, queued=point.hold == "after queueing")
    process = start(campaign, *RUN)
    if hold is not None:
        wait_until(hold.entered.is_set, process)
    elif point.messages == 0:
        wait_until(lambda: len(inbox.logins) > 0, process)
    else:
        wait_until(lambda: len(inbox.messages) >= point.messages, process)
    process.kill()
    assert finish(process)[0] == -signal.SIGKILL
    if hold is not None:
        hold.release()
        time.sleep(0.05)  # let the server see the connection go
        assert inbox.recipients.count(killed_at) == (point.hold == "after queueing")
    assert len(inbox.messages) < RECIPIENTS

    code, out, err = run(campaign, *RUN)

    state = status(campaign, monkeypatch)
    uncertain = assert_each_mailed_once_but_the_uncertain(inbox, state, most=2)
    if hold is not None:
        # The recipient whose DATA was cut off is in doubt, and the next one, marked while
        # the server read that DATA, but never handed over.
        marked_ahead = ADDRESSES[point.messages + 1]
        assert uncertain == {killed_at, marked_ahead}
        assert marked_ahead not in inbox.recipients
    # A rerun that leaves someone in doubt does not claim that everyone got the mail.
    assert code == (3 if uncertain else 0), err
    assert f"{len(uncertain)} uncertain" in out if uncertain else "uncertain" not in out


# --- SIGINT and SIGTERM: stop after the current mail -----------------------------------------


def resume_hint(err: str) -> list[str]:
    found = re.search(r"rerun `([^`]+)` to resume", err)
    assert found, err
    argv = shlex.split(found.group(1))
    assert argv[0] == "bulkmail"
    return argv


@pytest.mark.parametrize(
    ("signum", "during_data"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT inside DATA", "SIGTERM between mails"],
)
def test_signal_stops_cleanly_and_the_printed_hint_resumes(
    campaign: CampaignDir,
    smtpd: Server,
    signum: signal.Signals,
    during_data: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox = smtpd.inbox
    hold = DataHold(inbox, 61, queued=False) if during_data else None
    process = start(campaign, *RUN)
    if hold is not None:
        wait_until(hold.entered.is_set, process)
    else:
        wait_until(lambda: len(inbox.messages) >= 60, process)
    process.send_signal(signum)
    if hold is not None:
        # The transaction in progress is finished, not abandoned: once the run says it
        # will stop, the server answers, and that mail is recorded as accepted.
        wait_for_line(process, "stopping after the current mail")
        hold.release()
    code, _, err = finish(process)

    assert code == 130, err
    state = status(campaign, monkeypatch)
    assert state["uncertain"] == []
    sent = len(inbox.messages)
    assert state["counts"]["accepted"] == sent
    # inside DATA: the held mail is finished; between mails: at most the one under way
    assert sent == 61 if during_data else 60 <= sent <= 61
    assert inbox.recipients == ADDRESSES[:sent]
    argv = resume_hint(err)
    assert argv[1:] == list(RUN)

    process = start(campaign, *argv[1:])
    code, out, err = finish(process)

    assert code == 0, err
    assert inbox.recipients == ADDRESSES  # each once, in list order
    assert f"{sent:,} already sent" in out
    assert status(campaign, monkeypatch)["counts"]["accepted"] == RECIPIENTS


def test_second_ctrl_c_stops_at_once_leaving_one_recipient_in_doubt(
    campaign: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = smtpd.inbox
    timeout = 2  # seconds the client waits for any reply
    campaign.write(smtp=smtp_settings(smtpd, tls, timeout=timeout))
    hold = DataHold(inbox, 31, queued=True)  # the server has mail 31 and does not answer
    process = start(campaign, *RUN)
    wait_until(hold.entered.is_set, process)
    process.send_signal(signal.SIGINT)
    wait_for_line(process, "stopping after the current mail")
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    hold.release()

    assert code == 130
    # At once, but for the QUIT on the way out, whose reply the hung server never sends
    assert time.monotonic() - interrupted < timeout + 1.5
    assert "rerun" in err
    state = status(campaign, monkeypatch)
    assert [entry["email"] for entry in state["uncertain"]] == [ADDRESSES[30]]
    assert state["counts"]["accepted"] == 30

    code, out, err = run(campaign, *RUN)

    assert code == 3  # done, except the one in doubt, which is not resent
    assert "1 uncertain" in out
    assert inbox.recipients == ADDRESSES


# --- long lists: mails are built in worker processes ----------------------------------------


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (an exited orphan stays a zombie
    until whatever adopted it reaps it, which in a container may take a while)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def worker_pids(process: subprocess.Popen[str]) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


@pytest.fixture
def long_list(campaign: CampaignDir) -> CampaignDir:
    """320 recipients: enough for the pipeline to build in worker processes."""
    campaign.csv(people(320))
    return campaign


# No spool: the mails are built by the workers while they are sent, so the workers are
# alive when the signal comes.
NO_SPOOL = {"BULKMAIL_SPOOL_MB": "0"}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_to_the_whole_process_group_stops_cleanly_with_workers(
    long_list: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As systemd or a container runtime stops a service: every process of the group at once.
    inbox = smtpd.inbox
    process = subprocess.Popen(
        bulkmail(*RUN),
        cwd=long_list.root,
        env=environment(**NO_SPOOL),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        start_new_session=True,
    )
    wait_until(lambda: len(inbox.messages) >= 30, process)
    assert worker_pids(process), "expected worker processes for a list this long"
    os.killpg(process.pid, signal.SIGTERM)
    code, _, err = finish(process)

    assert code == 130, err
    assert "Traceback" not in err
    state = status(long_list, monkeypatch)
    assert state["uncertain"] == []
    assert state["counts"]["accepted"] == len(inbox.messages)

    code, _, err = run(long_list, *resume_hint(err)[1:])

    assert code == 0, err
    assert inbox.recipients == [f"reader{i}@example.com" for i in range(320)]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_leaves_no_worker_processes_behind(long_list: CampaignDir, smtpd: Server) -> None:
    process = start(long_list, *RUN, env=NO_SPOOL)
    wait_until(lambda: len(smtpd.inbox.messages) >= 10, process)
    workers = alive = worker_pids(process)
    assert workers
    try:
        process.kill()
        process.wait()  # not communicate(): orphaned workers would hold its pipes open
        deadline = time.monotonic() + 5
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in workers if running(pid)]
    finally:
        for pid in alive:  # clean up what this test started
            os.kill(pid, signal.SIGKILL)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert alive == []


# --- one run at a time ------------------------------------------------------------------------


def test_concurrent_run_is_refused_and_nobody_gets_two_mails(
    campaign: CampaignDir, smtpd: Server
) -> None:
    # Both start at once; whichever gets the journal first is held inside its tenth DATA
    # until the other has given up, so the two surely overlap.
    hold = DataHold(smtpd.inbox, 10, queued=False)
    processes = [start(campaign, *RUN), start(campaign, *RUN)]
    deadline = time.monotonic() + 30

    def ended() -> list[bool]:
        return [p.poll() is not None for p in processes]

    while not (hold.entered.is_set() and any(ended())):
        assert not all(ended()), [finish(p) for p in processes]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)
    (loser,) = [process for process in processes if process.poll() is not None]
    hold.release()
    (winner,) = [process for process in processes if process is not loser]

    code, out, err = finish(loser)
    assert (code, out) == (4, ""), err
    assert err.splitlines() == [
        "error: campaigns/.bulkmail/test-campaign.sqlite: another bulkmail run of this "
        "campaign is in progress; wait for it to finish (or stop it) before starting again"
    ]
    assert finish(winner)[0] == 0
    assert smtpd.inbox.recipients == ADDRESSES  # each once, in list order


# --- changes between runs (through the CLI, in-process) --------------------------------------


@pytest.fixture
def small(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    """20 recipients; the working directory is the campaign's root."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.chdir(tmp_path)
    c = CampaignDir(tmp_path)
    c.csv(people(20))
    c.write(smtp=smtp_settings(smtpd, tls))
    return c


def test_rows_added_after_a_completed_run_are_the_only_ones_mailed(
    small: CampaignDir, smtpd: Server
) -> None:
    assert runner.invoke(app, list(RUN)).exit_code == 0
    small.csv(people(3, start=100) + people(20) + people(2, start=200))  # new rows anywhere

    result = runner.invoke(app, list(RUN))

    assert result.exit_code == 0, result.stderr
    assert "2 accepted" not in result.stdout
    assert "5 accepted" in result.stdout
    assert "20 already sent" in result.stdout
    new = [f"reader{i}@example.com" for i in (100, 101, 102, 200, 201)]
    assert smtpd.inbox.recipients[20:] == new
    assert Counter(smtpd.inbox.recipients) == Counter(
        [f"reader{i}@example.com" for i in range(20)] + new
    )


def test_changed_template_between_runs_needs_allow_changes(
    small: CampaignDir, smtpd: Server
) -> None:
    assert runner.invoke(app, [*RUN, "--limit", "8"]).exit_code == 0
    small.template("issue.html", "<p>Hello {{ first_name }}, corrected edition</p>")

    refused = runner.invoke(app, list(RUN))

    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [
        "error: campaigns/test.yaml: the campaign changed since its first run (template "
        "../templates/issue.html); earlier recipients got the old version. Rerun with "
        "--allow-changes to send the new one to the rest",
        "nothing was sent.",
    ]
    assert len(smtpd.inbox.messages) == 8

    allowed = runner.invoke(app, [*RUN, "--allow-changes"])

    assert allowed.exit_code == 0, allowed.stderr
    assert "12 accepted" in allowed.stdout
    assert smtpd.inbox.recipients == [f"reader{i}@example.com" for i in range(20)]
    html = [m.html() for m in smtpd.inbox.messages]
    assert ["corrected edition" in text for text in html] == [False] * 8 + [True] * 12


def test_a_run_that_sent_nothing_does_not_make_its_version_the_reference(
    small: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, [*RUN, "--limit", "5"]).exit_code == 0
    original = (small.templates / "issue.html").read_text(encoding="utf-8")
    small.template("issue.html", "<p>Hello {{ first_name }}, a draft</p>")
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    assert runner.invoke(app, [*RUN, "--allow-changes"]).exit_code == 4  # nothing sent
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    small.template("issue.html", original)  # back to what the first five got

    result = runner.invoke(app, list(RUN))

    assert result.exit_code == 0, result.stderr
    assert smtpd.inbox.recipients == [f"reader{i}@example.com" for i in range(20)]


def test_changed_subject_between_runs_is_detected(small: CampaignDir, smtpd: Server) -> None:
    assert runner.invoke(app, [*RUN, "--limit", "3"]).exit_code == 0
    small.write(subject="{{ first_name }}: the {{ month }} issue, corrected")

    result = runner.invoke(app, list(RUN))

    assert result.exit_code == 1
    assert "changed since its first run (subject)" in result.stderr
    assert len(smtpd.inbox.messages) == 3


# --- journal consistency when a run is cut short (library level) -----------------------------


def test_rows_appended_to_the_csv_during_a_run_wait_for_the_next_run(
    small: CampaignDir, smtpd: Server
) -> None:
    appended = False

    def append_rows(event: Event) -> None:
        nonlocal appended
        if event.kind == "sent" and not appended:
            appended = True
            with small.csv_path.open("a", encoding="utf-8") as file:
                file.write(
                    "".join(
                        f"{r['email']},{r['name']},{r['first_name']},Lyon\n"
                        for r in people(3, start=50)
                    )
                )

    report = send_campaign(small.yaml_path, on_event=append_rows)

    # Rows the preflight did not see are not sent unjournaled: the next run sends them.
    assert report.accepted == 20
    assert len(smtpd.inbox.messages) == 20
    again = send_campaign(small.yaml_path)
    assert (again.plan.already_accepted, again.accepted) == (20, 3)
    assert Counter(smtpd.inbox.recipients) == Counter(
        f"reader{i}@example.com" for i in [*range(20), 50, 51, 52]
    )


def test_run_stopped_by_a_lost_server_leaves_nobody_uncertain(
    small: CampaignDir, smtpd: Server, tls: TLSPair
) -> None:
    inbox = smtpd.inbox

    def server_goes_bad(event: Event) -> None:
        if event.kind == "sent" and event.done == 5:
            inbox.faults.close_421 = 100  # every MAIL from now on: 421 and close

    transport = SMTPTransport(
        smtpd.settings(), password=PASSWORD, ssl_context=tls.client, sleep=lambda s: None
    )
    report = send_campaign(small.yaml_path, transport=transport, on_event=server_goes_bad)

    assert report.stopped is not None
    assert "the connection was lost 4 times while sending to reader5@example.com" in str(
        report.stopped
    )
    assert report.accepted == 5
    # reader5 was never handed over (every MAIL was answered 421): not in doubt, pending
    state = campaign_status(small.yaml_path)
    assert state.uncertain == []
    assert state.summary is not None
    assert state.summary.counts[Status.PENDING] == 15
    inbox.faults.close_421 = 0
    again = send_campaign(small.yaml_path)
    assert again.accepted == 15
    assert inbox.recipients == [f"reader{i}@example.com" for i in range(20)]


def test_failed_build_during_the_send_is_not_passed_over_silently(
    small: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An attachment of one row vanishes between the preflight and its turn, and the
    # mail is built again as it is sent (no spool: as for the rows past a full one).
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", "0")
    for i in range(20):
        small.file(f"files/r{i}.txt", f"for reader {i}")
    small.write(attachments=[{"path": "files/r{{ first_name[1:] }}.txt"}])
    doomed = small.campaigns / "files" / "r7.txt"

    def delete_one(event: Event) -> None:
        if event.kind == "sent" and event.done == 3:
            doomed.unlink()

    report = send_campaign(small.yaml_path, on_event=delete_one)

    assert report.accepted == 19
    (problem,) = report.unbuilt
    assert "campaigns/list.csv:9" in str(problem)
    assert "reader7@example.com" not in smtpd.inbox.recipients
    state = campaign_status(small.yaml_path)
    assert state.summary is not None
    assert state.summary.counts[Status.PENDING] == 1  # so the next run sends it
    doomed.write_text("for reader 7")
    again = send_campaign(small.yaml_path)
    assert again.accepted == 1
    assert Counter(smtpd.inbox.recipients) == Counter(f"reader{i}@example.com" for i in range(20))
