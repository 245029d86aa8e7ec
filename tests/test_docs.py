"""The docs cannot fall behind: every command has help with an example; README's promises hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from bulkmail.cli.app import app

ROOT = Path(__file__).parent.parent
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert f"Example: bulkmail {name} " in result.output


def test_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text("utf-8"), re.S)
    venv = "python3 -m venv .venv && . .venv/bin/activate && python3 -m pip install"
    assert blocks[0] == f"{venv} . && bulkmail run campaigns/june.yaml --dry-run"
    assert blocks[1] == f"{venv} -e '.[test]' && python3 -m pytest"


def test_ci_runs_readmes_test_command() -> None:
    """.ci/run takes the second command block of README and runs it as it is."""
    script = (ROOT / ".ci" / "run").read_text("utf-8")
    extract = next(line for line in script.splitlines() if line.startswith("test_command="))
    found = subprocess.run(
        ["bash", "-c", f'{extract}\nprintf %s "$test_command"'],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text("utf-8"), re.S)
    assert found == blocks[1]
    assert '\nbash -c "$test_command"\n' in script


def test_the_example_campaign_dry_run_works_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bulkmail", "run", str(ROOT / "campaigns" / "june.yaml"),
         "--dry-run", "--out", str(tmp_path / "previews")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "previews" / "index.html").is_file()
    assert len(list((tmp_path / "previews").glob("*.eml"))) == 7  # 8 rows, 1 suppressed
