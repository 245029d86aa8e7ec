"""The preflight's spool: each mail of the first part of the list is built once, kept in
a private unnamed file, and sent from there while it is fresh; the rest is built as it is
sent. Against the real test server and real files."""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir, make_mail, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, FakeClock, Server, TLSPair
from processes import finish, start

import bulkmail.build
import bulkmail.send
import bulkmail.spool
from bulkmail.compose.workers import MailFactory
from bulkmail.errors import ConfigError
from bulkmail.journal.records import Entry
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import OutgoingMail, Status
from bulkmail.reports import SendPlan
from bulkmail.send import send_campaign
from bulkmail.spool import MAX_AGE, Spool, spool_bytes


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    """40 recipients at the implicit-TLS server."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = CampaignDir(tmp_path)
    c.csv(people(40))
    c.write(smtp=smtp_settings(smtpd, tls))
    return c


class Builds:
    """Counts the mails built in this process, before and after the run's prompt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.at_prompt: int | None = None
        build = MailFactory.build

        def counted(factory: MailFactory, *args: object, **kwargs: bool) -> object:
            self.count += 1
            return build(factory, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(MailFactory, "build", counted)

    def confirm(self, plan: SendPlan) -> bool:
        self.at_prompt = self.count
        return True

    @property
    def while_sending(self) -> int:
        assert self.at_prompt is not None, "the run never reached its prompt"
        return self.count - self.at_prompt


RUN = ("run", "campaigns/test.yaml", "--yes")


def expected(n: int) -> list[str]:
    return [f"reader{i}@example.com" for i in range(n)]


# --- a send -------------------------------------------------------------------------------


def test_the_send_builds_no_mail_twice(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = Builds(monkeypatch)
    reads: list[Path] = []
    read = iter_recipients

    def counted(path: Path, **kwargs: Any) -> Any:
        reads.append(path)
        return read(path, **kwargs)

    monkeypatch.setattr(bulkmail.build, "iter_recipients", counted)

    report = send_campaign(campaign.yaml_path, confirm=builds.confirm)

    assert report.accepted == 40
    assert builds.while_sending == 0  # every mail came from the preflight
    assert reads == [campaign.csv_path]  # the list unchanged: read once, by the preflight
    assert smtpd.inbox.recipients == expected(40)  # in list order
    assert all(m.parsed()["To"] for m in smtpd.inbox.messages)


def test_past_a_full_spool_the_rest_is_built_as_it_is_sent(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", "0.02")  # 20 KB: a few of the 40 mails
    builds = Builds(monkeypatch)

    report = send_campaign(campaign.yaml_path, confirm=builds.confirm)

    assert report.accepted == 40
    assert 0 < builds.while_sending < 40
    assert smtpd.inbox.recipients == expected(40)  # each once, in list order


def test_without_a_spool_every_mail_is_built_again(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", "0")
    builds = Builds(monkeypatch)

    send_campaign(campaign.yaml_path, confirm=builds.confirm)

    assert builds.while_sending == 40
    assert smtpd.inbox.recipients == expected(40)


def test_mails_that_waited_too_long_are_built_again_with_a_fresh_date(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prompt stayed open past the spool's age limit: a spooled mail would carry the
    # Date of the preflight, so each one is built again.
    clock = FakeClock()
    monkeypatch.setattr(bulkmail.send, "Spool", functools.partial(Spool, clock=clock))
    builds = Builds(monkeypatch)

    def slow_reader(plan: SendPlan) -> bool:
        clock.advance(MAX_AGE + 1)
        return builds.confirm(plan)

    report = send_campaign(campaign.yaml_path, confirm=slow_reader)

    assert report.accepted == 40
    assert builds.while_sending == 40
    assert smtpd.inbox.recipients == expected(40)


def test_a_spooled_mail_refused_is_not_retried_again_in_the_same_run(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --retry-failed sends the failed rows again, once per run: a row that fails from the
    # spool must not be picked up again by the pass that builds the rest.
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", "0.02")
    smtpd.inbox.faults.refuse["reader1@example.com"] = "550 5.1.1 no such user"
    first = send_campaign(campaign.yaml_path)
    assert first.failed == 1

    tried: list[str] = []
    refuse = smtpd.inbox.faults.refuse

    class Watching(dict[str, str]):
        def __contains__(self, address: object) -> bool:
            tried.append(str(address))
            return super().__contains__(address)

    smtpd.inbox.faults.refuse = Watching(refuse)
    again = send_campaign(campaign.yaml_path, retry_failed=True)

    assert again.failed == 1
    assert tried == ["reader1@example.com"]  # one try, from the spool


class FailingFile:
    """A spool file whose disk fails: ``write`` after ``writes`` writes, or ``read``
    after ``reads`` reads (ENOSPC, EIO)."""

    def __init__(self, file: Any, *, writes: int = 10**9, reads: int = 10**9) -> None:
        self._file = file
        self._writes = writes
        self._reads = reads

    def write(self, data: bytes) -> int:
        self._writes -= 1
        if self._writes < 0:
            raise OSError(28, "No space left on device")
        return int(self._file.write(data))

    def read(self, *args: Any) -> bytes:
        self._reads -= 1
        if self._reads < 0:
            raise OSError(5, "Input/output error")
        return bytes(self._file.read(*args))

    def readline(self, *args: Any) -> bytes:
        return bytes(self._file.readline(*args))

    def readinto(self, buffer: Any) -> int:
        return int(self._file.readinto(buffer))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@pytest.mark.parametrize("failure", [{"writes": 5}, {"reads": 12}], ids=["disk full", "read error"])
def test_a_failing_spool_disk_costs_a_second_build_not_a_mail(
    campaign: CampaignDir,
    smtpd: Server,
    monkeypatch: pytest.MonkeyPatch,
    failure: dict[str, int],
) -> None:
    made = bulkmail.spool._private_file
    monkeypatch.setattr(
        bulkmail.spool, "_private_file", lambda folder: FailingFile(made(folder), **failure)
    )
    builds = Builds(monkeypatch)

    report = send_campaign(campaign.yaml_path, confirm=builds.confirm)

    assert report.accepted == 40
    assert smtpd.inbox.recipients == expected(40)  # each once, in list order
    # The mails the spool could not give back: all of them when writing failed, those
    # from the failed read on when reading did.
    expected_builds = range(40, 41) if "writes" in failure else range(1, 40)
    assert builds.while_sending in expected_builds


@pytest.mark.parametrize("spool_mb", ["64", "0.02", "0"], ids=["whole", "part", "none"])
def test_rows_added_to_the_list_after_the_preflight_are_counted_not_mailed(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch, spool_mb: str
) -> None:
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", spool_mb)

    def add_two(plan: SendPlan) -> bool:  # while the prompt is open
        campaign.csv(people(42))
        return True

    report = send_campaign(campaign.yaml_path, confirm=add_two)

    assert report.accepted == 40
    assert report.added == 2  # unchecked: left for the next run, and said
    assert smtpd.inbox.recipients == expected(40)
    again = send_campaign(campaign.yaml_path)
    assert again.accepted == 2
    assert smtpd.inbox.recipients == expected(42)


def test_no_spool_file_is_left_behind(campaign: CampaignDir, smtpd: Server) -> None:
    send_campaign(campaign.yaml_path)

    folder = campaign.campaigns / ".bulkmail"
    assert not [p for p in folder.iterdir() if "spool" in p.name]


def test_a_bad_spool_size_stops_the_run_before_anything_is_sent(
    campaign: CampaignDir, smtpd: Server
) -> None:
    process = start(campaign, *RUN, env={"BULKMAIL_SPOOL_MB": "lots"})
    code, _, err = finish(process)

    assert code != 0
    assert "BULKMAIL_SPOOL_MB='lots': expected a number of megabytes" in err
    assert "Traceback" not in err
    assert smtpd.inbox.messages == []


# --- the spool itself -----------------------------------------------------------------------


def entry(mail: OutgoingMail) -> Entry:
    """The journal's entry of a row planned, not yet sent."""
    r = mail.recipient
    fields = dict(r.fields)
    return Entry(r.key, r.email, r.line, fields, Status.PENDING, 0, None, None, None, None, 0)


def mails(n: int) -> list[OutgoingMail]:
    """``n`` mails, each with its HTML."""
    return [replace(make_mail(i + 1), html=f"<p>Hello {i + 1}</p>") for i in range(n)]


def test_mails_come_back_in_order_without_their_html(tmp_path: Path) -> None:
    sent = mails(5)
    with Spool(tmp_path) as spool:
        for mail in sent:
            assert spool.add(mail, entry(mail))
        back = list(spool.fresh())

    assert [mail for mail, _ in back] == [replace(mail, html="") for mail in sent]
    assert [e for _, e in back] == [entry(mail) for mail in sent]
    assert spool.taken == {mail.recipient.key for mail in sent}
    assert spool.complete


def test_a_full_spool_takes_nothing_more(tmp_path: Path) -> None:
    with Spool(tmp_path) as sizing:
        sizing.add(mails(1)[0], None)
        one = sizing.size  # what one mail takes in the file
    with Spool(tmp_path, max_bytes=int(2.5 * one)) as spool:
        added = [spool.add(mail, None) for mail in mails(10)]
        assert added == [True, True] + [False] * 8  # full once a mail did not fit
        assert len(spool) == 2
        assert not spool.room
        assert len(list(spool.fresh())) == 2
        assert not spool.complete  # mails were left out


def test_the_spool_holds_at_most_max_mails(tmp_path: Path) -> None:
    with Spool(tmp_path, max_mails=3) as spool:
        added = [spool.add(mail, None) for mail in mails(5)]
        assert added == [True, True, True, False, False]
        assert len(spool) == 3
        assert list(spool.fresh())
        assert not spool.complete


def test_only_fresh_mails_are_handed_out(tmp_path: Path, fake_clock: FakeClock) -> None:
    with Spool(tmp_path, max_age=60, clock=fake_clock) as spool:
        for i, mail in enumerate(mails(4)):
            spool.add(mail, None)
            if i == 1:
                fake_clock.advance(30)
        fake_clock.advance(40)  # the first two are 70 s old, the others 40 s
        assert list(spool.fresh()) == []  # the first is stale: it and the rest are left
        assert spool.taken == set()


def test_a_mail_grown_old_while_the_send_goes_on_is_left_with_the_rest(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    with Spool(tmp_path, max_age=60, clock=fake_clock) as spool:
        for mail in mails(4):
            spool.add(mail, None)
        handed = []
        for mail, _ in spool.fresh():
            handed.append(mail.index)
            fake_clock.advance(25)  # a slow relay
        assert handed == [1, 2, 3]
        assert spool.taken == {m.recipient.key for m in mails(3)}
        assert not spool.complete  # the fourth is left for the send to build


def test_the_file_has_no_name_and_only_its_owner_can_read_it(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.add(make_mail(1), None)
        assert list(tmp_path.iterdir()) == []  # unlinked at once
        fd = spool._file.fileno()  # type: ignore[union-attr]
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600


def test_the_spool_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert spool_bytes() == 64_000_000
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", "0")
    assert spool_bytes() == 0
    monkeypatch.setenv("BULKMAIL_SPOOL_MB", "1.5")
    assert spool_bytes() == 1_500_000
    for wrong in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv("BULKMAIL_SPOOL_MB", wrong)
        with pytest.raises(ConfigError, match="BULKMAIL_SPOOL_MB"):
            spool_bytes()
