"""`check --json` and `preview --json`: the shapes scripts read, key by key.

A script pipes these into jq or json.loads, so stdout holds the JSON alone (progress and
errors go to stderr), every key is always there, and the figures agree with what a
preview leaves on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from builders import CSV_ROWS, CampaignDir
from typer.testing import CliRunner

from bulkmail.cli.app import app

runner = CliRunner()
EXAMPLE = Path(__file__).parent.parent / "campaigns" / "june.yaml"
CHECK_KEYS = {"campaign", "mails", "duplicates", "suppressed", "total_bytes", "warnings", "lint"}
PREVIEW_KEYS = CHECK_KEYS | {"out"}


def summary(*args: str) -> dict[str, Any]:
    """Run the command in-process; it succeeds and its stdout is exactly one JSON object."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def eml_bytes(out: Path) -> int:
    return sum(path.stat().st_size for path in out.glob("*.eml"))


@pytest.fixture
def messy(tmp_path: Path) -> CampaignDir:
    """The builders' three rows, Alice listed again in capitals, Bob on the suppression list."""
    campaign = CampaignDir(tmp_path)
    again = {**CSV_ROWS[0], "email": "ALICE@example.com", "name": "Alice again"}
    campaign.csv([*CSV_ROWS, again])
    campaign.file("suppress.csv", "email\nbob@example.org\n")
    campaign.write(suppress="suppress.csv")
    return campaign


# --- the example campaign ----------------------------------------------------------------


def test_check_json_of_the_example_campaign() -> None:
    data = summary("check", str(EXAMPLE), "--json")

    assert set(data) == CHECK_KEYS
    total = data.pop("total_bytes")
    # 8 rows, one of them (sam.taylor) on suppressed.csv; nothing to warn about
    assert data == {
        "campaign": "june-2026",
        "mails": 7,
        "duplicates": 0,
        "suppressed": 1,
        "warnings": [],
        "lint": [],
    }
    assert isinstance(total, int)
    assert 7 * 10_000 < total < 7 * 40_000  # each mail carries the programme PDF


def test_preview_json_of_the_example_campaign_matches_the_files_written(tmp_path: Path) -> None:
    out = tmp_path / "june"

    data = summary("preview", str(EXAMPLE), "--out", str(out), "--json")

    assert set(data) == PREVIEW_KEYS
    assert data["campaign"] == "june-2026"
    assert (data["mails"], data["duplicates"], data["suppressed"]) == (7, 0, 1)
    assert data["warnings"] == []
    assert Path(data["out"]) == out
    assert len(list(out.glob("*.eml"))) == 7
    assert data["total_bytes"] == eml_bytes(out)


# --- duplicates and suppressed rows ------------------------------------------------------


def test_check_json_counts_duplicates_and_suppressed_rows_and_warns_of_duplicates(
    messy: CampaignDir,
) -> None:
    data = summary("check", str(messy.yaml_path), "--json")

    assert set(data) == CHECK_KEYS
    assert data["campaign"] == "test-campaign"
    assert (data["mails"], data["duplicates"], data["suppressed"]) == (2, 1, 1)
    assert data["warnings"] == ["1 duplicate address in the list: each address is mailed once"]
    assert isinstance(data["total_bytes"], int)
    assert data["total_bytes"] > 0


def test_preview_json_writes_only_the_mailed_rows(messy: CampaignDir, tmp_path: Path) -> None:
    out = tmp_path / "out"

    data = summary("preview", str(messy.yaml_path), "--out", str(out), "--json")

    assert set(data) == PREVIEW_KEYS
    assert (data["mails"], data["duplicates"], data["suppressed"]) == (2, 1, 1)
    assert data["warnings"] == ["1 duplicate address in the list: each address is mailed once"]
    assert Path(data["out"]) == out
    mailed = sorted(path.name.split("-", 1)[1] for path in out.glob("*.eml"))
    assert mailed == ["alice@example.com.eml", "wang@example.net.eml"]
    assert data["total_bytes"] == eml_bytes(out)


def test_check_and_preview_json_agree_on_the_figures(messy: CampaignDir, tmp_path: Path) -> None:
    checked = summary("check", str(messy.yaml_path), "--json")
    previewed = summary("preview", str(messy.yaml_path), "--out", str(tmp_path / "o"), "--json")

    for key in ("campaign", "mails", "duplicates", "suppressed", "warnings"):
        assert checked[key] == previewed[key], key


# --- a campaign error --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "preview"])
def test_an_error_with_json_goes_to_stderr_and_leaves_stdout_empty(
    tmp_path: Path, command: str
) -> None:
    campaign = CampaignDir(tmp_path)
    path = campaign.write(subject=None)  # a required key missing

    result = runner.invoke(app, [command, str(path), "--json"])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}: missing required key 'subject'",
        "nothing was sent.",
    ]
