"""`bulkmail run`, `send-test` and `status` through the CLI, against the real test server.

Exit codes are a contract (0 all accepted, 1 invalid / nothing sent, 3 some refused,
4 delivery stopped, 130 interrupted): each one is asserted here with its message.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, USERNAME, Server, TLSPair
from typer.testing import CliRunner, Result

from bulkmail.cli.app import app

runner = CliRunner()
RUN = ["run", "campaigns/test.yaml", "--yes"]
ADDRESSES = [f"reader{i}@example.com" for i in range(50)]


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    """50 recipients at the implicit-TLS server; the working directory is the campaign's root."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.chdir(tmp_path)
    c = CampaignDir(tmp_path)
    c.csv(people(50))
    c.write(smtp=smtp_settings(smtpd, tls))
    return c


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def words(text: str) -> str:
    """The text with its whitespace (and rich's wrapping at 80 columns) made single spaces."""
    return " ".join(text.split())


def status_json() -> dict[str, Any]:
    result = invoke("status", "campaigns/test.yaml", "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# --- run: confirmation and exit codes ----------------------------------------------------------


def test_run_without_yes_and_without_a_terminal_refuses_and_sends_nothing(
    campaign: CampaignDir, smtpd: Server
) -> None:
    result = invoke("run", "campaigns/test.yaml")

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: no terminal to confirm on: add --yes to send",
        "nothing was sent.",
    ]
    assert smtpd.inbox.connections == []
    assert not (campaign.campaigns / ".bulkmail").exists()


def test_exit_0_when_every_recipient_is_accepted(campaign: CampaignDir, smtpd: Server) -> None:
    result = invoke(*RUN)

    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    text = words(result.stdout)
    assert "About to send" in text
    assert "recipients │ 50 to send" in text
    assert "50 accepted, 0 failed; skipped: 0 already sent, 0 suppressed, 0 duplicates" in text
    assert smtpd.inbox.recipients == ADDRESSES


def test_exit_3_when_a_recipient_is_refused_naming_it_with_the_reply(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"

    result = invoke(*RUN)

    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"failed: reader3@example.com: refused by 127.0.0.1:{smtpd.port} at RCPT TO: "
        "550 5.1.1 No such user here"
    ]
    assert "49 accepted, 1 failed" in words(result.stdout)
    assert len(smtpd.inbox.messages) == 49


def test_rerun_that_leaves_earlier_failures_does_not_claim_success(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    assert invoke(*RUN).exit_code == 3

    again = invoke(*RUN)

    assert again.exit_code == 3
    assert "1 failed before (--retry-failed retries them)" in words(again.stdout)
    smtpd.inbox.faults.refuse.clear()
    retried = invoke(*RUN, "--retry-failed")
    assert retried.exit_code == 0, retried.stderr
    assert "1 accepted" in words(retried.stdout)
    assert sorted(smtpd.inbox.recipients) == sorted(ADDRESSES)


def test_exit_4_on_a_wrong_password_with_the_auth_error_and_nothing_sent(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")

    result = invoke(*RUN)

    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"error: 127.0.0.1:{smtpd.port}: login refused for {USERNAME}: "
        "535 5.7.8 Authentication credentials invalid",
        "delivery stopped; what was sent is journaled: rerun "
        "`bulkmail run campaigns/test.yaml --yes` to go on.",
    ]
    assert "not-the-password" not in result.output
    assert smtpd.inbox.messages == []
    # (smtplib tries each AUTH mechanism the server offers: PLAIN, then LOGIN)
    assert {(login.username, login.success) for login in smtpd.inbox.logins} == {(USERNAME, False)}
    assert len(smtpd.inbox.connections) == 1
    assert status_json()["counts"]["pending"] == 50


def test_recipient_in_doubt_is_reported_not_resent_and_resent_only_when_asked(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.vanish_at_data = 1  # the first mail is kept, then the line goes dead

    first = invoke(*RUN)

    assert first.exit_code == 3
    assert "49 accepted, 0 failed, 1 uncertain" in words(first.stdout)
    state = status_json()
    assert [entry["email"] for entry in state["uncertain"]] == ["reader0@example.com"]
    text = words(invoke("status", "campaigns/test.yaml").stdout)
    assert (
        "uncertain: line 2: reader0@example.com: the server may have it "
        "(--resend-uncertain sends it again)"
    ) in text

    again = invoke(*RUN)

    assert again.exit_code == 3  # still not everyone is known to have it
    assert "1 uncertain (--resend-uncertain sends them again)" in words(again.stdout)
    assert smtpd.inbox.recipients.count("reader0@example.com") == 1

    resent = invoke(*RUN, "--resend-uncertain")

    assert resent.exit_code == 0, resent.stderr
    assert smtpd.inbox.recipients.count("reader0@example.com") == 2  # as the user asked
    assert status_json()["uncertain"] == []


# --- run: --json and --limit -------------------------------------------------------------------


def test_json_summary_is_the_whole_of_stdout_with_every_field(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    campaign.file("suppress.csv", "email\nreader9@example.com\n")
    rows = people(50)
    campaign.csv([*rows, rows[0]])  # one duplicate
    campaign.write(suppress="suppress.csv")

    result = invoke(*RUN, "--json")

    assert result.exit_code == 3
    summary = json.loads(result.stdout)
    elapsed = summary.pop("elapsed_seconds")
    assert isinstance(elapsed, float)
    assert elapsed >= 0
    assert summary == {
        "campaign": "test-campaign",
        "accepted": 48,
        "failed": 1,
        "uncertain": 0,
        "already_accepted": 0,
        "earlier_failed": 0,
        "earlier_uncertain": 0,
        "suppressed": 1,
        "duplicates": 1,
        "interrupted": False,
        "stopped": None,
        "failures": [
            {
                "email": "reader3@example.com",
                "line": 5,
                "reply": f"reader3@example.com: refused by 127.0.0.1:{smtpd.port} at RCPT TO: "
                "550 5.1.1 No such user here",
            }
        ],
        "not_sent": [],
        "added_during_run": 0,
        "journal": str(campaign.campaigns / ".bulkmail" / "test-campaign.sqlite"),
        "relays_down": [],
    }

    rerun = json.loads(invoke(*RUN, "--json").stdout)
    assert (rerun["accepted"], rerun["already_accepted"], rerun["earlier_failed"]) == (0, 48, 1)


def test_limit_sends_to_the_first_n_only_and_a_rerun_goes_on_from_there(
    campaign: CampaignDir, smtpd: Server
) -> None:
    first = invoke(*RUN, "--limit", "5", "--json")

    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["accepted"] == 5
    assert smtpd.inbox.recipients == ADDRESSES[:5]
    # The same limit again: those five are done, nobody else is mailed.
    same = invoke(*RUN, "--limit", "5", "--json")
    assert same.exit_code == 0
    assert json.loads(same.stdout)["already_accepted"] == 5
    assert len(smtpd.inbox.messages) == 5
    # A larger limit, then none: each time only the ones not yet mailed.
    assert json.loads(invoke(*RUN, "--limit", "20", "--json").stdout)["accepted"] == 15
    rest = invoke(*RUN)
    assert rest.exit_code == 0
    assert "30 accepted" in words(rest.stdout)
    assert smtpd.inbox.recipients == ADDRESSES


def test_limit_below_one_is_a_usage_error(campaign: CampaignDir, smtpd: Server) -> None:
    result = invoke(*RUN, "--limit", "0")
    assert result.exit_code == 2
    assert smtpd.inbox.connections == []


def test_every_suppressed_address_is_journaled_as_skipped(
    campaign: CampaignDir, smtpd: Server
) -> None:
    # More than the 20 skipped rows a report lists.
    suppressed = ADDRESSES[10:35]
    campaign.file("suppress.csv", "email\n" + "\n".join(suppressed) + "\n")
    campaign.write(suppress="suppress.csv")

    result = invoke(*RUN)

    assert result.exit_code == 0, result.stderr
    assert "25 accepted" in words(result.stdout)
    assert "25 suppressed" in words(result.stdout)
    assert not set(suppressed) & set(smtpd.inbox.recipients)
    assert status_json()["counts"] == {
        "pending": 0,
        "sending": 0,
        "accepted": 25,
        "failed": 0,
        "skipped": 25,
    }


# --- rate limit at the server --------------------------------------------------------------------


def test_rate_limit_holds_at_the_server_over_every_window(
    campaign: CampaignDir, smtpd: Server
) -> None:
    per_second, burst, count = 10, 1, 22
    campaign.csv(people(count))
    campaign.write(rate={"per_second": per_second})

    result = invoke(*RUN)

    assert result.exit_code == 0, result.stderr
    assert f"rate │ {per_second} per second" in words(result.stdout)
    arrivals = sorted(message.received_at for message in smtpd.inbox.messages)
    assert len(arrivals) == count
    # Over any window of one second, at most per_second + burst mails. The limiter is
    # exact; the tolerance for scheduling jitter is only here: a 0.95 s window.
    busiest = max(sum(1 for t in arrivals if start <= t < start + 0.95) for start in arrivals)
    assert busiest <= per_second * 1 + burst
    # and it is not slower than asked: 22 mails at 10/s start over 2.1 s
    span = arrivals[-1] - arrivals[0]
    assert (count - burst) / per_second - 0.1 <= span <= (count - burst) / per_second + 1.0


# --- send-test ---------------------------------------------------------------------------------


def test_send_test_mails_the_rendered_row_to_the_given_address_only(
    campaign: CampaignDir, smtpd: Server
) -> None:
    result = invoke("send-test", "campaigns/test.yaml", "--to", "me@example.org", "--row", "4")

    assert result.exit_code == 0, result.stderr
    assert words(result.stdout) == "test mail sent to me@example.org: [TEST] R3, the June issue"
    (received,) = smtpd.inbox.messages
    assert received.rcpt_tos == ("me@example.org",)
    message = received.parsed()
    assert message["Subject"] == "[TEST] R3, the June issue"
    assert [a.addr_spec for a in message["To"].addresses] == ["me@example.org"]
    html = message.get_body(("html",))
    assert html is not None
    assert "Hello R3," in html.get_content()
    assert not (campaign.campaigns / ".bulkmail").exists()  # nothing journaled


def test_send_test_to_a_row_past_the_end_is_an_error(campaign: CampaignDir, smtpd: Server) -> None:
    result = invoke("send-test", "campaigns/test.yaml", "--to", "me@example.org", "--row", "51")

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: campaigns/list.csv: the list has 50 recipients; there is no row 51",
        "nothing was sent.",
    ]
    assert smtpd.inbox.connections == []


def test_send_test_with_a_bad_address_is_an_error(campaign: CampaignDir, smtpd: Server) -> None:
    result = invoke("send-test", "campaigns/test.yaml", "--to", "me@@example.org")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: --to: 'me@@example.org' is not a valid address")
    assert smtpd.inbox.connections == []


# --- status ------------------------------------------------------------------------------------


def test_status_before_any_run(campaign: CampaignDir) -> None:
    result = invoke("status", "campaigns/test.yaml")

    assert result.exit_code == 0
    assert words(result.stdout) == "test-campaign: never sent (no journal yet)"
    assert status_json()["counts"] == {}


def test_status_shows_counts_failures_and_timing(campaign: CampaignDir, smtpd: Server) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    invoke(*RUN, "--limit", "10")

    result = invoke("status", "campaigns/test.yaml")

    assert result.exit_code == 0
    rows = {
        cells[0]: cells[1]
        for line in result.stdout.splitlines()
        if len(cells := [cell.strip() for cell in line.strip("│ ").split("│")]) == 2
    }
    assert rows == {  # the journal knows the rows a run has seen: the first 10
        "pending": "0",
        "sending": "0",
        "accepted": "9",
        "failed": "1",
        "skipped": "0",
    }
    text = words(result.stdout)
    assert "failed: line 5: reader3@example.com: 5.1.1 No such user here" in text
    assert "runs: 1; started 20" in text
    assert "mails/s" in text


def test_status_json_and_failed_csv(campaign: CampaignDir, smtpd: Server) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    smtpd.inbox.faults.refuse["reader8@example.com"] = '553 5.1.3 Bad, "quoted" address'
    invoke(*RUN)

    result = invoke("status", "campaigns/test.yaml", "--json", "--failed-csv", "failed.csv")

    assert result.exit_code == 0
    assert result.stderr.splitlines() == ["wrote 2 failed rows to failed.csv"]
    state = json.loads(result.stdout)
    assert state["counts"] == {
        "pending": 0,
        "sending": 0,
        "accepted": 48,
        "failed": 2,
        "skipped": 0,
    }
    assert state["runs"] == 1
    assert state["started"] is not None
    assert state["last_sent"] is not None
    assert state["rate_per_second"] > 0
    assert state["failed"] == [
        {
            "email": "reader3@example.com",
            "line": 5,
            "attempts": 1,
            "code": 550,
            "reply": "5.1.1 No such user here",
        },
        {
            "email": "reader8@example.com",
            "line": 10,
            "attempts": 1,
            "code": 553,
            "reply": '5.1.3 Bad, "quoted" address',
        },
    ]
    assert state["uncertain"] == []
    with (campaign.root / "failed.csv").open(encoding="utf-8", newline="") as file:
        written = list(csv.reader(file))
    assert written == [
        ["email", "name", "first_name", "city", "bulkmail_reply"],
        ["reader3@example.com", "Reader 3", "R3", "Lyon", "5.1.1 No such user here"],
        ["reader8@example.com", "Reader 8", "R8", "Lyon", '5.1.3 Bad, "quoted" address'],
    ]
    # The failed CSV is a campaign list itself: a follow-up campaign can use it as it is.
    campaign.file("list.csv", (campaign.root / "failed.csv").read_text(encoding="utf-8"))
    assert invoke("check", "campaigns/test.yaml").exit_code == 0


class CountingBar:
    """Stands in for rich's Progress: counts the updates of the sending bar."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def update(self, task: object, **fields: Any) -> None:
        self.updates.append(fields)

    def stop(self) -> None:
        pass


def test_the_sending_bar_is_updated_ten_times_a_second_not_every_mail() -> None:
    """Formatting the counts for rich at every mail cost the sending loop ~20 µs a mail:
    the bar is redrawn ten times a second anyway. The last mail's counts are always shown,
    and without a terminal there is no bar to update at all."""
    from bulkmail.cli.app import _Progress
    from bulkmail.models import Event

    progress = _Progress("checking")
    progress.enabled = True
    bar = CountingBar()
    progress.bar, progress.task = bar, 0  # type: ignore[assignment]
    progress.sending = True
    progress.started = progress.shown = 0.0
    for done in range(1, 501):
        progress(Event("failed" if done % 50 == 0 else "sent", done, 500))
    assert 1 <= len(bar.updates) < 20  # 500 mails in far less than two seconds
    assert bar.updates[-1]["completed"] == 500
    assert "490 sent" in bar.updates[-1]["counts"]
    assert "10 failed" in bar.updates[-1]["counts"]

    quiet = _Progress("checking")
    quiet.enabled = False
    quiet.sending = True
    quiet.bar = CountingBar()  # type: ignore[assignment]
    for done in range(1, 11):
        quiet(Event("sent", done, 10))
    assert quiet.sent == 10
    assert quiet.bar.updates == []  # type: ignore[union-attr]
