"""The library's reports decide the exit code of a run and the JSON shapes the CLI prints.

The CLI prints `report.to_dict()` and exits with `report.exit_code`: a script that calls
the library gets the same answers as one that parses `bulkmail ... --json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from builders import CampaignDir
from typer.testing import CliRunner

from bulkmail import (
    Campaign,
    CampaignStatus,
    CheckReport,
    ConnectError,
    Entry,
    PreviewReport,
    Recipient,
    SendPlan,
    SendReport,
    Status,
    Summary,
    TemplateError,
    check_campaign,
    load_campaign,
    preview_campaign,
)
from bulkmail.cli.app import app

runner = CliRunner()

CHECK_KEYS = ["campaign", "mails", "duplicates", "suppressed", "total_bytes", "warnings", "lint"]
SEND_KEYS = [
    "campaign",
    "accepted",
    "failed",
    "uncertain",
    "already_accepted",
    "earlier_failed",
    "earlier_uncertain",
    "suppressed",
    "duplicates",
    "interrupted",
    "stopped",
    "failures",
    "not_sent",
    "added_during_run",
    "elapsed_seconds",
    "journal",
    "relays_down",
]
STATUS_KEYS = [
    "campaign",
    "journal",
    "counts",
    "runs",
    "started",
    "last_sent",
    "rate_per_second",
    "feedback",
    "failed",
    "uncertain",
    "senders",
]


@pytest.fixture
def campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Campaign:
    monkeypatch.chdir(tmp_path)
    return load_campaign(CampaignDir(tmp_path).write())


def plan_for(campaign: Campaign, *, earlier_failed: int = 0, uncertain: int = 0) -> SendPlan:
    check = CheckReport(campaign, mails=3, duplicates=1, suppressed=2)
    return SendPlan(campaign, check, 3, 0, earlier_failed, uncertain)


# --- exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        ({"accepted": 3}, 0),
        ({"accepted": 2, "failed": 1}, 3),
        ({"accepted": 2, "uncertain": 1}, 3),
        ({"accepted": 2, "unbuilt": [TemplateError("'x' is undefined")]}, 3),
        ({"accepted": 1, "interrupted": True}, 130),
        ({"accepted": 1, "failed": 1, "interrupted": True}, 130),
        ({"accepted": 1, "stopped": ConnectError("smtp.example.com:465: refused")}, 4),
        ({"failed": 1, "stopped": ConnectError("lost"), "interrupted": True}, 4),
    ],
    ids=[
        "all accepted",
        "one refused",
        "one uncertain",
        "one not built",
        "interrupted",
        "interrupted after a refusal",
        "stopped",
        "stopped wins",
    ],
)
def test_the_exit_code_of_a_run_follows_its_outcome(
    campaign: Campaign, outcome: dict[str, object], code: int
) -> None:
    report = SendReport(plan_for(campaign), Path("journal.sqlite"), **outcome)  # type: ignore[arg-type]

    assert report.exit_code == code


@pytest.mark.parametrize(
    "earlier", [{"earlier_failed": 1}, {"uncertain": 1}], ids=["failed", "uncertain"]
)
def test_a_run_that_left_earlier_failures_alone_does_not_exit_0(
    campaign: Campaign, earlier: dict[str, int]
) -> None:
    """0 promises every recipient was accepted: not so while an earlier run's failed or
    uncertain recipients were not retried."""
    report = SendReport(plan_for(campaign, **earlier), Path("j"), accepted=3)

    assert report.exit_code == 3


# --- JSON shapes ---------------------------------------------------------------------------


def test_a_check_report_as_data(campaign: Campaign) -> None:
    report = CheckReport(campaign, mails=3, total_bytes=9000, duplicates=1, warnings=["w"])

    assert report.to_dict() == {
        "campaign": "test-campaign",
        "mails": 3,
        "duplicates": 1,
        "suppressed": 0,
        "total_bytes": 9000,
        "warnings": ["w"],
        "lint": [],
    }


def test_a_preview_report_as_data_adds_its_folder(campaign: Campaign, tmp_path: Path) -> None:
    report = PreviewReport(campaign, mails=3, out=tmp_path / "previews")

    data = report.to_dict()

    assert list(data) == [*CHECK_KEYS, "out"]
    assert data["out"] == str(tmp_path / "previews")


def test_a_send_report_as_data(campaign: Campaign) -> None:
    alice = Recipient(2, "alice@example.com", "Alice", {})
    report = SendReport(
        plan_for(campaign, earlier_failed=4, uncertain=5),
        Path("/j/test.sqlite"),
        accepted=1,
        failed=1,
        failures=[(alice, "550 no such user")],
        stopped=ConnectError("lost"),
        unbuilt=[TemplateError("'x' is undefined")],
        elapsed=1.23456,
    )

    data = report.to_dict()

    assert list(data) == SEND_KEYS
    assert data["failures"] == [
        {"email": "alice@example.com", "line": 2, "reply": "550 no such user"}
    ]
    assert (data["earlier_failed"], data["earlier_uncertain"]) == (4, 5)
    assert (data["suppressed"], data["duplicates"]) == (2, 1)
    assert data["stopped"] == "lost"
    assert data["not_sent"] == ["'x' is undefined"]
    assert data["elapsed_seconds"] == 1.235
    assert data["journal"] == "/j/test.sqlite"
    json.dumps(data)  # JSON-ready as it is


def test_a_campaign_never_run_as_data(campaign: Campaign) -> None:
    status = CampaignStatus(campaign, Path("/j/test.sqlite"), None, [], [])

    assert status.to_dict() == {
        "campaign": "test-campaign",
        "journal": "/j/test.sqlite",
        "counts": {},
        "runs": 0,
        "started": None,
        "last_sent": None,
        "rate_per_second": None,
        "feedback": {},
        "failed": [],
        "uncertain": [],
        "senders": [],
    }


def test_a_campaign_status_as_data(campaign: Campaign) -> None:
    summary = Summary({Status.ACCEPTED: 2, Status.FAILED: 1}, 2, 1_700_000_000.0, None, 0.4567)
    failed = Entry(
        "bob@example.org",
        "bob@example.org",
        3,
        {},
        Status.FAILED,
        1,
        550,
        "550 no",
        None,
        None,
        0.0,
    )
    status = CampaignStatus(campaign, Path("j"), summary, [failed], [])

    data = status.to_dict()

    assert list(data) == STATUS_KEYS
    assert data["counts"] == {"accepted": 2, "failed": 1}
    assert data["rate_per_second"] == 0.457
    assert str(data["started"]).startswith("2023-11-1")  # ISO 8601, with the local offset
    assert data["last_sent"] is None
    assert data["failed"] == [
        {"email": "bob@example.org", "line": 3, "attempts": 1, "code": 550, "reply": "550 no"}
    ]


@pytest.mark.parametrize("command", ["check", "preview"])
def test_the_cli_prints_the_reports_data(campaign: Campaign, tmp_path: Path, command: str) -> None:
    result = runner.invoke(app, [command, "campaigns/test.yaml", "--json"])
    assert result.exit_code == 0, result.output

    printed = json.loads(result.stdout)
    do = check_campaign if command == "check" else preview_campaign
    data = do(campaign).to_dict()

    assert list(printed) == list(data)
    # The same figures (the size may differ by a byte: the Date header's width varies)
    assert {**printed, "total_bytes": 0} == {**data, "total_bytes": 0}


# --- the status command stays light --------------------------------------------------------


def test_reading_a_status_does_not_load_the_build_stack(tmp_path: Path) -> None:
    """`bulkmail status` reads a journal: it must not import the templates, the MIME
    builder or the SMTP client (slow to load, and a status has no use for them)."""
    probe = textwrap.dedent(
        """
        import sys
        import bulkmail.journal.status
        import bulkmail.reports
        heavy = sorted(
            name for name in sys.modules
            if name.startswith(("bulkmail.pipeline", "bulkmail.send", "bulkmail.compose",
                                "bulkmail.deliver.smtp", "jinja2"))
        )
        print(heavy)
        """
    )
    result = subprocess.run(  # (conftest puts the checkout on the children's PYTHONPATH)
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"
