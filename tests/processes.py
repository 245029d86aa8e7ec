"""Run the `bulkmail` command in a child process, as cron or a terminal would.

For the tests where only a real process will do: signals, kills part-way, exit codes and
what is printed. The child gets the test account's password and none of the developer's
BULKMAIL_* variables.
"""

from __future__ import annotations

import os
import subprocess
import sys

from builders import CampaignDir
from conftest import PASSWORD, PASSWORD_ENV


def bulkmail(*args: str) -> list[str]:
    """The command line running this checkout's bulkmail with this test's interpreter."""
    return [sys.executable, "-m", "bulkmail", *args]


def environment(**extra: str) -> dict[str, str]:
    """The child's environment: ours without BULKMAIL_*, plus the SMTP password and
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env[PASSWORD_ENV] = PASSWORD
    env.update(extra)
    return env


def start(
    campaign: CampaignDir, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start `bulkmail ARGS` in the campaign's folder, reading nothing (no terminal), with
    ``env`` added to its environment."""
    return subprocess.Popen(
        bulkmail(*args),
        cwd=campaign.root,
        env=environment(**(env or {})),
        stdin=subprocess.DEVNULL,  # no terminal: --yes is needed, as in cron
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for the process (at most a minute): its exit code, stdout and stderr."""
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def run(campaign: CampaignDir, *args: str) -> tuple[int, str, str]:
    """Run `bulkmail ARGS` to the end: its exit code, stdout and stderr."""
    return finish(start(campaign, *args))
