"""Several senders on one campaign, sharing a PostgreSQL journal; several relays (issue 14).

Everything real: a private PostgreSQL on 127.0.0.1 (tests/postgres.py), the recording
aiosmtpd servers of conftest, and for the kills `bulkmail run` in child processes.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, USERNAME, Server, ServerFactory, TLSPair
from postgres import PASSWORD as PG_PASSWORD
from postgres import PASSWORD_ENV as PG_PASSWORD_ENV
from postgres import Postgres

from bulkmail import Event, campaign_status, load_campaign, send_campaign, write_failed_csv
from bulkmail.compose.workers import Built, MailFactory
from bulkmail.errors import ConfigError, JournalError
from bulkmail.journal.postgres import PostgresJournal
from bulkmail.models import Recipient, Status

LEASE = 2.0  # seconds: a killed sender's rows come back quickly


@pytest.fixture
def shared(
    tmp_path: Path,
    smtpd: Server,
    tls: TLSPair,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> CampaignDir:
    """A campaign of 40 recipients whose journal is a new PostgreSQL database."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(PG_PASSWORD_ENV, PG_PASSWORD)
    monkeypatch.chdir(tmp_path)
    campaign = CampaignDir(tmp_path)
    campaign.csv(people(40))
    url = postgres.url(postgres.database())
    campaign.write(
        smtp=smtp_settings(smtpd, tls),
        journal={"url": url, "password_env": PG_PASSWORD_ENV, "lease": LEASE},
    )
    return campaign


def received(server: Server) -> collections.Counter[str]:
    """How many times each address got a mail at ``server``."""
    return collections.Counter(server.inbox.recipients)


def rows(campaign: CampaignDir) -> dict[str, Status]:
    """Each row's status in the shared journal."""
    state = campaign_status(campaign.yaml_path)
    assert state.summary is not None
    loaded = load_campaign(campaign.yaml_path)
    assert loaded.journal is not None
    with PostgresJournal(loaded.journal, loaded.name, sender=False) as journal:
        return {entry.email: entry.status for entry in journal.entries()}


# --- one sender: the same promises as the journal file ------------------------------------------


def test_a_shared_journal_keeps_every_promise_of_the_file(
    shared: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    report = send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert (report.accepted, report.failed) == (39, 1)
    assert str(report.journal).startswith("postgresql://")
    assert sorted(received(smtpd).values()) == [1] * 39

    again = send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert (again.accepted, again.plan.already_accepted, again.plan.earlier_failed) == (0, 39, 1)
    assert len(smtpd.inbox.messages) == 39  # nobody twice

    state = campaign_status(shared.yaml_path)
    assert state.summary is not None
    assert state.summary.counts[Status.ACCEPTED] == 39
    assert [e.email for e in state.failed] == ["reader3@example.com"]
    assert len(state.senders) == 2  # two runs, each a sender, both done
    assert {s.state for s in state.senders} == {"completed"}
    assert sum(s.accepted for s in state.senders) == 39
    assert all(PG_PASSWORD not in json.dumps(state.to_dict()) for _ in [0])
    # --failed-csv from the shared journal: the row as it was in the list, and the reply.
    out = shared.root / "failed.csv"
    assert write_failed_csv(state, out) == 1
    with out.open(newline="", encoding="utf-8") as file:
        (row,) = list(csv.DictReader(file))
    assert row["email"] == "reader3@example.com"
    assert row["first_name"] == "R3"
    assert row["bulkmail_reply"] == "5.1.1 No such user here"  # as the file journal writes it
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_row_marked_ahead_in_a_shared_journal_is_given_back_by_a_stop(
    shared: CampaignDir, smtpd: Server
) -> None:
    """Unpaced, the sixth row is marked while the server reads the fifth mail; a stop
    then ends the run before it goes. It is pending again, not in doubt, and the next
    sender mails it and the rest, each once."""
    stop = threading.Event()

    def stop_after_five(event: Event) -> None:
        if event.kind == "sent" and event.done == 5:
            stop.set()

    report = send_campaign(
        shared.yaml_path, confirm=lambda plan: True, stop=stop, on_event=stop_after_five
    )
    assert (report.interrupted, report.accepted) == (True, 5)
    status = rows(shared)
    assert [e for e, s in status.items() if s is Status.SENDING] == []
    assert status["reader5@example.com"] is Status.PENDING
    again = send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert again.accepted == 35
    assert sorted(received(smtpd).values()) == [1] * 40


def test_a_later_sender_of_the_same_version_does_not_check_again(shared: CampaignDir) -> None:
    first: list[Event] = []
    send_campaign(shared.yaml_path, confirm=lambda plan: True, limit=10, on_event=first.append)
    assert any(e.kind == "built" for e in first)  # the preflight built every mail
    # Same content, same list, same suppressions: the journal says it was checked.
    later: list[Event] = []
    report = send_campaign(
        shared.yaml_path, confirm=lambda plan: True, limit=10, on_event=later.append
    )
    assert not any(e.kind == "built" for e in later)
    assert report.plan.already_accepted == 10


def built_here(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[int]:
    """How many times each mail (by index) is built in this process from now on (a short
    list is built here, without worker processes)."""
    builds: collections.Counter[int] = collections.Counter()
    build = MailFactory.build

    def counted(self: MailFactory, index: int, recipient: Recipient, **options: bool) -> Built:
        builds[index] += 1
        return build(self, index, recipient, **options)

    monkeypatch.setattr(MailFactory, "build", counted)
    return builds


def test_the_sender_that_checks_sends_from_its_spool(
    shared: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As with a journal file: the preflight's mails are kept, not built a second time.
    builds = built_here(monkeypatch)
    report = send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert report.accepted == 40
    assert sorted(received(smtpd).values()) == [1] * 40
    assert set(builds) == set(range(1, 41))
    assert sum(builds.values()) <= 40 + 1  # (the largest mail, read again by the checks)


def test_a_sender_reads_no_row_again_that_it_claimed(
    shared: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claim returns each row as it stands, and no other sender can change a row this
    # one holds: the send needs no query a mail to learn what it already knows.
    reads: list[str] = []
    status_of = PostgresJournal.status_of

    def counted(self: PostgresJournal, key: str) -> object:
        reads.append(key)
        return status_of(self, key)

    monkeypatch.setattr(PostgresJournal, "status_of", counted)
    report = send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert report.accepted == 40
    assert sorted(received(smtpd).values()) == [1] * 40
    assert reads == []


def test_spooled_mails_of_rows_another_sender_holds_are_dropped(
    shared: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another sender claims the first 10 rows between the preflight and the send: this
    # one sends the other 30 from its spool, waits, and once the rows are given back,
    # builds and sends them itself. Everyone once.
    builds = built_here(monkeypatch)
    loaded = load_campaign(shared.yaml_path)
    assert loaded.journal is not None
    other = PostgresJournal(loaded.journal, loaded.name, sender=True)

    def confirm(plan: object) -> bool:
        other.open()
        held = other.claim(2, 10, [Status.PENDING])  # CSV lines 2-11: rows 1-10
        assert len(held) == 10
        return True

    def on_event(event: Event) -> None:
        if event.kind == "waiting":  # for the rows the other sender holds
            other.close()  # gives them back

    report = send_campaign(shared.yaml_path, confirm=confirm, on_event=on_event)

    assert report.accepted == 40
    assert sorted(received(smtpd).values()) == [1] * 40
    twice = {index for index, n in builds.items() if n > 1}
    assert set(range(1, 11)) <= twice  # the preflight, then the pass after the other's
    assert sum(builds.values()) <= 50 + 1
    assert smtpd.inbox.recipients[:30] == [f"reader{i}@example.com" for i in range(10, 40)]


def test_a_changed_campaign_is_refused_by_the_shared_journal(shared: CampaignDir) -> None:
    send_campaign(shared.yaml_path, confirm=lambda plan: True, limit=5)
    shared.write(subject="A different subject")
    with pytest.raises(ConfigError, match="changed since its first run"):
        send_campaign(shared.yaml_path, confirm=lambda plan: True)
    report = send_campaign(shared.yaml_path, confirm=lambda plan: True, allow_changes=True)
    assert report.accepted == 35


def test_an_unreachable_journal_stops_before_anything_is_sent(
    shared: CampaignDir, smtpd: Server, postgres: Postgres
) -> None:
    shared.write(journal={"url": postgres.url("mail", port=1), "password_env": PG_PASSWORD_ENV})
    with pytest.raises(JournalError) as caught:
        send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert "127.0.0.1:1" in str(caught.value)
    assert "test.yaml" in str(caught.value)
    assert smtpd.inbox.messages == []


def test_a_wrong_journal_password_names_the_variable_not_the_password(
    shared: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PG_PASSWORD_ENV, "not-the-password")
    with pytest.raises(JournalError) as caught:
        send_campaign(shared.yaml_path, confirm=lambda plan: True)
    assert PG_PASSWORD_ENV in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    assert smtpd.inbox.messages == []


def test_two_senders_retrying_failed_rows_retry_each_once(
    shared: CampaignDir, smtpd: Server
) -> None:
    """A row refused again during a --retry-failed run is not retried a second time by the
    other sender of the same run."""
    refused = [f"reader{i}@example.com" for i in range(0, 40, 4)]
    for address in refused:
        smtpd.inbox.faults.refuse[address] = "550 5.1.1 No such user here"
    send_campaign(shared.yaml_path, confirm=lambda plan: True)
    shared.write(rate={"per_second": 10})  # the retry lasts a second: both senders overlap
    reports = []

    def retry() -> None:
        reports.append(send_campaign(shared.yaml_path, retry_failed=True, allow_changes=True))

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(r.failed for r in reports) == len(refused)
    # One sender claimed them all (a batch); the other met each again once refused, free
    # to claim, and left it alone.
    loaded = load_campaign(shared.yaml_path)
    assert loaded.journal is not None
    with PostgresJournal(loaded.journal, loaded.name, sender=False) as journal:
        entries = list(journal.entries(Status.FAILED))
    assert sorted(e.email for e in entries) == sorted(refused)
    assert {e.attempts for e in entries} == {2}


# --- four senders, two killed ---------------------------------------------------------------------


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env[PASSWORD_ENV] = PASSWORD
    env[PG_PASSWORD_ENV] = PG_PASSWORD
    return env


def _sender(campaign: CampaignDir) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkmail", "run", "campaigns/test.yaml", "--yes", "--json"],
        cwd=campaign.root,
        env=_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_four_senders_mail_everyone_once_though_one_is_killed_twice(
    shared: CampaignDir, smtpd: Server
) -> None:
    """2,000 rows, four `bulkmail run` at once; twice a random one is killed (SIGKILL) at a
    random moment and another started in its place. In the end every row was mailed exactly
    once, but for at most two uncertain rows per kill (mailed once or not at all): the
    row in flight, and the one marked ahead while the server read it, or the one before
    (paced, a sender marks ahead only when a reply is slower than its rate's interval)."""
    shared.csv(people(2000))
    # Paced, so that the run lasts long enough to be cut in the middle (4 x 150/s).
    shared.write(rate={"per_second": 150})
    chance = random.Random(os.getpid())
    senders = [_sender(shared) for _ in range(4)]
    killed = 0
    for _ in range(2):
        # Wait for the mails to flow, then kill at a random moment.
        deadline = time.monotonic() + 60
        floor = len(smtpd.inbox.messages) + 100
        while len(smtpd.inbox.messages) < floor:
            assert time.monotonic() < deadline, "the senders did not get going"
            time.sleep(0.01)
        time.sleep(chance.uniform(0, 0.5))
        victim = chance.choice([s for s in senders if s.poll() is None])
        victim.send_signal(signal.SIGKILL)
        victim.communicate()  # reaped, its pipes closed
        killed += 1
        senders.remove(victim)
        senders.append(_sender(shared))
    outcomes = []
    for sender in senders:
        out, err = sender.communicate(timeout=120)
        assert sender.returncode in (0, 3), err.decode()
        outcomes.append(json.loads(out))

    status = rows(shared)
    uncertain = [email for email, s in status.items() if s is Status.SENDING]
    assert len(uncertain) <= 2 * killed
    assert all(s is Status.ACCEPTED for e, s in status.items() if e not in uncertain)
    counts = received(smtpd)
    assert max(counts.values()) == 1, "somebody was mailed twice"
    mailed = set(counts)
    everyone = {row["email"] for row in people(2000)}
    assert everyone - mailed <= set(uncertain), "somebody was skipped"
    # The list was shared out: the senders that lived to the end each sent part of it.
    assert sum(1 for o in outcomes if o["accepted"] > 0) >= 2
    assert sum(o["accepted"] for o in outcomes) <= len(mailed)

    state = campaign_status(shared.yaml_path)
    # A sender killed before it registered (still starting) leaves no trace.
    lost = [s for s in state.senders if s.state == "running" and not s.alive]
    assert 1 <= len(lost) <= killed
    assert all(s.state == "completed" for s in state.senders if s not in lost)
    assert sum(s.accepted for s in state.senders) == status_count(status, Status.ACCEPTED)


def status_count(status: dict[str, Status], wanted: Status) -> int:
    return sum(1 for s in status.values() if s is wanted)


def test_status_shows_each_sender(shared: CampaignDir) -> None:
    send_campaign(shared.yaml_path, confirm=lambda plan: True, limit=7)
    process = subprocess.run(
        [sys.executable, "-m", "bulkmail", "status", "campaigns/test.yaml", "--json"],
        cwd=shared.root,
        env=_environment(),
        capture_output=True,
        check=True,
    )
    data = json.loads(process.stdout)
    assert data["journal"].startswith("postgresql://")
    assert [s["accepted"] for s in data["senders"]] == [7]
    assert data["senders"][0]["state"] == "completed"
    text = subprocess.run(
        [sys.executable, "-m", "bulkmail", "status", "campaigns/test.yaml"],
        cwd=shared.root,
        env={**_environment(), "COLUMNS": "150"},
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert "Senders" in text
    assert "completed" in text


# --- several relays -------------------------------------------------------------------------------


def _rate_at(server: Server) -> float:
    times = [m.received_at for m in server.inbox.messages]
    return (len(times) - 1) / (times[-1] - times[0])


def test_two_relays_share_a_campaign_by_weight_each_at_its_own_rate(
    tmp_path: Path, make_server: ServerFactory, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.chdir(tmp_path)
    fast, slow = make_server("ssl"), make_server("ssl")
    campaign = CampaignDir(tmp_path)
    campaign.csv(people(90))
    campaign.write(
        rate=None,  # each relay at its own pace
        smtp=[
            {**smtp_settings(fast, tls), "weight": 2, "rate": {"per_second": 40}},
            {**smtp_settings(slow, tls), "weight": 1, "rate": {"per_second": 20}},
        ],
    )
    report = send_campaign(campaign.yaml_path, confirm=lambda plan: True)
    assert report.accepted == 90
    assert report.relays_down == []
    assert (len(fast.inbox.messages), len(slow.inbox.messages)) == (60, 30)
    assert 0.7 * 40 <= _rate_at(fast) <= 1.1 * 40
    assert 0.7 * 20 <= _rate_at(slow) <= 1.1 * 20


def _one_relay_refusing(
    folder: Path, make_server: ServerFactory, tls: TLSPair, *, rows: int
) -> tuple[CampaignDir, Server, Server]:
    """A campaign of ``rows`` with two relays: the first's password (OTHER_PASSWORD) wrong."""
    refusing, good = make_server("ssl"), make_server("ssl")
    campaign = CampaignDir(folder)
    campaign.csv(people(rows))
    campaign.write(
        smtp=[
            {**smtp_settings(refusing, tls), "password_env": "OTHER_PASSWORD"},
            smtp_settings(good, tls),
        ]
    )
    return campaign, refusing, good


def _command(campaign: CampaignDir, *options: str) -> subprocess.CompletedProcess[str]:
    """`bulkmail run --yes` in a child process, the first relay's password wrong."""
    return subprocess.run(
        [sys.executable, "-m", "bulkmail", "run", "campaigns/test.yaml", "--yes", *options],
        cwd=campaign.root,
        env={**_environment(), "OTHER_PASSWORD": "wrong"},
        capture_output=True,
        text=True,
    )


def test_a_relay_refusing_logins_is_set_aside_and_the_other_carries_the_run(
    tmp_path: Path, make_server: ServerFactory, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("OTHER_PASSWORD", "wrong")
    monkeypatch.chdir(tmp_path)
    campaign, refusing, good = _one_relay_refusing(tmp_path, make_server, tls, rows=20)
    events: list[Event] = []
    report = send_campaign(campaign.yaml_path, confirm=lambda plan: True, on_event=events.append)
    assert report.accepted == 20
    assert report.complete
    assert refusing.inbox.messages == []
    assert len(good.inbox.messages) == 20
    assert [relay for relay, _ in report.relays_down] == [f"{USERNAME}@127.0.0.1:{refusing.port}"]
    assert any(e.kind == "relay-down" for e in events)

    process = _command(campaign, "--retry-failed")
    assert process.returncode == 0  # nothing left to send: nobody twice
    assert len(good.inbox.messages) == 20


def test_the_command_says_which_relay_was_set_aside(
    tmp_path: Path, make_server: ServerFactory, tls: TLSPair
) -> None:
    campaign, refusing, good = _one_relay_refusing(tmp_path, make_server, tls, rows=5)
    process = _command(campaign)
    assert process.returncode == 0, process.stderr
    assert f"relay set aside: {USERNAME}@127.0.0.1:{refusing.port}" in process.stderr
    assert "the other relays carried the run" in process.stderr
    assert "wrong" not in process.stderr
    assert len(good.inbox.messages) == 5


def test_the_command_stops_on_an_unreachable_journal_with_one_line(
    shared: CampaignDir, smtpd: Server, postgres: Postgres
) -> None:
    shared.write(journal={"url": postgres.url("mail", port=1), "password_env": PG_PASSWORD_ENV})
    process = _command(shared)
    assert process.returncode == 4
    assert "Traceback" not in process.stderr
    assert "campaigns/test.yaml" in process.stderr
    assert "127.0.0.1:1" in process.stderr
    assert smtpd.inbox.messages == []
