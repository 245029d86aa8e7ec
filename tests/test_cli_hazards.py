"""The CLI where a terminal, a pipe or a signal is involved: what a run does when the user
presses Ctrl-C, closes the terminal or pipes the output into `head`, and how it asks.

Signals and pipes need a real process: these tests run ``python -m bulkmail`` against the
in-process aiosmtpd server, and count at the server and in the journal. The prompt needs
a terminal: a pseudo-terminal is its stdin.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, DataHold, Server, TLSPair
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.models import Recipient, Status

RUN = ("run", "campaigns/test.yaml", "--yes")
runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def addresses(n: int) -> list[str]:
    return [f"reader{i}@example.com" for i in range(n)]


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


# --- running the command in a process ---------------------------------------------------------


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env[PASSWORD_ENV] = PASSWORD
    env["COLUMNS"] = "100"
    return env


def start(
    campaign: CampaignDir,
    *args: str,
    stdin: int = subprocess.DEVNULL,
    stderr: int = subprocess.PIPE,
    wrapper: tuple[str, ...] = (),
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """``bulkmail ARGS`` in the campaign's root, stdout and stderr piped (as bytes)."""
    return subprocess.Popen(
        [*wrapper, sys.executable, "-m", "bulkmail", *args],
        cwd=campaign.root,
        env=environment(),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=new_session,
    )


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, (out or b"").decode(), (err or b"").decode()


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) too early: {finish(process)}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def read_until(fd: int, text: str, seconds: float = 30) -> str:
    """Read ``fd`` until ``text`` has come (or the writer is done, or time is up)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while text.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def status_json(campaign: CampaignDir) -> dict[str, Any]:
    result = runner.invoke(app, ["status", "campaigns/test.yaml", "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def no_noise(err: str) -> None:
    """Nothing Python says when it dies untidily."""
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err, err


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the side a user types into, the side the process reads)."""
    main_fd, tty_fd = pty.openpty()
    yield main_fd, tty_fd
    os.close(main_fd)
    os.close(tty_fd)


# --- 1. --json changes the output only: the question is still asked ---------------------------


def test_run_json_without_yes_and_without_a_terminal_refuses(
    campaign: CampaignDir, smtpd: Server
) -> None:
    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--json"])

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: no terminal to confirm on: add --yes to send",
        "nothing was sent.",
    ]
    assert result.stdout == ""
    assert smtpd.inbox.connections == []


def test_run_json_on_a_terminal_asks_on_stderr_and_keeps_stdout_json(
    campaign: CampaignDir, smtpd: Server, terminal: tuple[int, int]
) -> None:
    main_fd, tty_fd = terminal
    declined = start(campaign, "run", "campaigns/test.yaml", "--json", stdin=tty_fd)
    assert declined.stderr is not None
    asked = read_until(declined.stderr.fileno(), "now?")
    assert "Send 50 mails now? [y/N]" in asked, asked
    os.write(main_fd, b"n\n")
    code, out, err = finish(declined)

    assert code == 1, asked + err
    assert out == ""
    assert smtpd.inbox.connections == []

    accepted = start(campaign, "run", "campaigns/test.yaml", "--json", stdin=tty_fd)
    assert accepted.stderr is not None
    asked = read_until(accepted.stderr.fileno(), "now?")
    os.write(main_fd, b"y\n")
    code, out, err = finish(accepted)

    assert code == 0, asked + err
    assert "About to send" in asked  # the plan, on stderr with the question
    assert out.startswith("{")  # stdout is the summary alone
    assert json.loads(out)["accepted"] == 50
    assert smtpd.inbox.recipients == addresses(50)


# --- 2. -h, --version, the question's grammar, flags shown as flags ---------------------------


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)], ids=str)
def test_dash_h_is_help(command: list[str]) -> None:
    short = runner.invoke(app, [*command, "-h"])
    long = runner.invoke(app, [*command, "--help"])

    assert short.exit_code == 0, short.output
    assert short.stdout == long.stdout
    assert "Usage: " in short.stdout


def test_version_comes_from_the_package_metadata() -> None:
    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"bulkmail {importlib.metadata.version('bulkmail')}\n"


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)], ids=str)
def test_help_shows_flags_as_flags_without_a_value(command: list[str]) -> None:
    text = runner.invoke(app, [*command, "--help"], terminal_width=100).stdout

    assert "<bool>" not in text
    assert "--help" in text


def test_run_help_lists_dry_run_as_a_flag_and_a_value_is_refused(campaign: CampaignDir) -> None:
    text = runner.invoke(app, ["run", "--help"], terminal_width=100).stdout
    (line,) = [line for line in text.splitlines() if line.startswith("│ --dry-run")]

    # nothing between the flag and what it does
    assert " ".join(line.strip("│ ").split()).startswith("--dry-run Write previews instead")
    assert runner.invoke(app, ["run", "campaigns/test.yaml", "--dry-run", "true"]).exit_code == 2


def test_the_question_for_one_mail_says_mail(
    campaign: CampaignDir, smtpd: Server, terminal: tuple[int, int]
) -> None:
    main_fd, tty_fd = terminal
    campaign.csv(people(1))
    process = start(campaign, "run", "campaigns/test.yaml", stdin=tty_fd, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    asked = read_until(process.stdout.fileno(), "now?")
    os.write(main_fd, b"n\n")
    code, _, _ = finish(process)

    assert "Send 1 mail now? [y/N]" in asked, asked
    assert code == 1
    assert smtpd.inbox.connections == []


# --- 3. Ctrl-C at every moment: one line, exit 130, never a traceback -------------------------


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_during_the_preflight_with_workers_stops_at_once_sending_nothing(
    campaign: CampaignDir, smtpd: Server
) -> None:
    campaign.csv(people(4000))  # a preflight of a few seconds, in worker processes
    # As a terminal sends Ctrl-C: to the whole foreground process group.
    process = start(campaign, *RUN, new_session=True)
    wait_until(lambda: bool(worker_pids(process)), process)
    workers = worker_pids(process)
    os.killpg(process.pid, signal.SIGINT)
    code, out, err = finish(process)

    assert code == 130, err
    assert err.splitlines() == ["interrupted; nothing was sent."]
    assert out == ""
    assert smtpd.inbox.connections == []  # it did not even log in
    time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


# Runs the console script's entry point with the import of jinja2 held until Ctrl-C comes,
# so that the signal lands while bulkmail is still loading.
SLOW_IMPORT = """
import sys, time
class HoldJinja:
    def find_spec(self, name, path=None, target=None):
        if name == "jinja2":
            sys.stderr.write("loading jinja2\\n"); sys.stderr.flush()
            time.sleep(30)
        return None
sys.meta_path.insert(0, HoldJinja())
sys.argv = ["bulkmail", *sys.argv[1:]]
from bulkmail.cli.launch import main
main()
"""


def test_ctrl_c_while_bulkmail_is_still_loading_is_one_line(campaign: CampaignDir) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_IMPORT, *RUN],
        cwd=campaign.root, env=environment(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    assert "loading jinja2" in read_until(process.stderr.fileno(), "loading jinja2")
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)

    assert code == 130
    assert err == "interrupted; nothing was sent.\n"
    assert out == ""


def test_ctrl_c_at_the_question_stops_at_once(
    campaign: CampaignDir, smtpd: Server, terminal: tuple[int, int]
) -> None:
    _, tty_fd = terminal
    process = start(campaign, "run", "campaigns/test.yaml", stdin=tty_fd, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    asked = read_until(process.stdout.fileno(), "now?")
    assert "now?" in asked, asked
    process.send_signal(signal.SIGINT)
    code, out, _ = finish(process)

    assert code == 130
    assert out == "\ninterrupted; nothing was sent.\n"  # below the question, one line
    assert smtpd.inbox.connections == []


def many_failures(campaign: CampaignDir, count: int) -> None:
    """A journal in which ``count`` recipients failed (a status of them fills any pipe)."""
    path = journal_path(campaign.campaigns / ".bulkmail", "test-campaign")
    with Journal(path) as journal:
        journal.begin_batch()
        for i in range(count):
            email = f"reader{i}@example.com"
            recipient = Recipient(i + 2, email, f"Reader {i}", {"email": email})
            journal.plan(recipient)
            journal.outcome(recipient, Status.FAILED, 550, "5.1.1 No such user here, sorry")
        journal.flush()


def test_ctrl_c_while_the_output_is_being_written(campaign: CampaignDir) -> None:
    many_failures(campaign, 4000)
    process = start(campaign, "status", "campaigns/test.yaml")
    assert process.stdout is not None
    assert "failed" in read_until(process.stdout.fileno(), "failed: line")
    time.sleep(0.5)  # the pipe is full: the process waits to write
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)

    assert code == 130
    assert err.splitlines() == ["interrupted."]


# --- 4. status --failed-csv to a place it cannot write ----------------------------------------


@pytest.fixture
def one_failure(campaign: CampaignDir, smtpd: Server) -> CampaignDir:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    assert runner.invoke(app, [*RUN, "--limit", "5"]).exit_code == 3
    return campaign


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("missing/failed.csv", "No such file or directory"),
        ("campaigns", "Is a directory"),
    ],
)
def test_failed_csv_that_cannot_be_written_is_one_line_naming_it(
    one_failure: CampaignDir, target: str, why: str
) -> None:
    result = runner.invoke(app, ["status", "campaigns/test.yaml", "--failed-csv", target])

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {target}: cannot write the failed rows here: {why}"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_failed_csv_in_a_folder_without_permission(one_failure: CampaignDir) -> None:
    locked = one_failure.root / "locked"
    locked.mkdir(mode=0o500)

    result = runner.invoke(
        app, ["status", "campaigns/test.yaml", "--failed-csv", "locked/failed.csv"]
    )

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: locked/failed.csv: cannot write the failed rows here: Permission denied"
    ]


def test_failed_csv_is_owner_only_even_over_a_readable_file(one_failure: CampaignDir) -> None:
    existing = one_failure.root / "old.csv"
    existing.write_text("stale\n", encoding="utf-8")
    existing.chmod(0o644)

    for name in ("failed.csv", "old.csv"):
        result = runner.invoke(app, ["status", "campaigns/test.yaml", "--failed-csv", name])
        assert result.exit_code == 0, result.output
        path = one_failure.root / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with path.open(encoding="utf-8", newline="") as file:
            rows = list(csv.reader(file))
        assert [row[0] for row in rows] == ["email", "reader3@example.com"]


# --- 5. a closed stdout changes nothing that is sent, and is said -----------------------------


STDOUT_NOT_OPEN = (  # as `bulkmail ... >&-`
    sys.executable,
    "-c",
    "import os, sys; os.close(1); os.execv(sys.argv[1], sys.argv[1:])",
)


@pytest.mark.parametrize(
    ("when", "extra"),
    [
        ("never open", ()),
        ("at once", ()),
        ("during the run", ()),
        ("during the run", ("--json",)),
    ],
    ids=["not open", "closed at once", "closed during the run", "closed during a --json run"],
)
def test_run_into_a_closed_pipe_sends_everyone_and_says_so_on_stderr(
    campaign: CampaignDir, smtpd: Server, when: str, extra: tuple[str, ...]
) -> None:
    hold = DataHold(smtpd.inbox, 10, queued=False)
    wrapper = STDOUT_NOT_OPEN if when == "never open" else ()
    process = start(campaign, *RUN, *extra, wrapper=wrapper)
    assert process.stdout is not None
    if when == "during the run":
        if not extra:  # as `| head -1`: the first line, then the pipe is gone
            assert read_until(process.stdout.fileno(), "\n")
        wait_until(hold.entered.is_set, process)
    process.stdout.close()
    hold.release()
    code, _, err = finish(process)

    assert code == 0, err  # README's code for "every recipient was accepted"
    no_noise(err)
    assert "stdout was closed" in err
    assert "50 accepted" in err
    assert Counter(smtpd.inbox.recipients) == Counter(addresses(50))
    assert status_json(campaign)["counts"]["accepted"] == 50


def test_run_into_a_closed_pipe_keeps_the_exit_code_of_the_outcome(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.refuse["reader3@example.com"] = "550 5.1.1 No such user here"
    process = start(campaign, *RUN)
    assert process.stdout is not None
    process.stdout.close()
    code, _, err = finish(process)

    assert code == 3, err
    no_noise(err)
    assert "49 accepted, 1 failed" in err
    assert len(smtpd.inbox.messages) == 49


@pytest.mark.parametrize("command", ["status", "check"])
def test_status_and_check_into_a_closed_pipe_end_quietly(
    campaign: CampaignDir, smtpd: Server, command: str
) -> None:
    assert runner.invoke(app, list(RUN)).exit_code == 0
    process = start(campaign, command, "campaigns/test.yaml")
    assert process.stdout is not None
    process.stdout.close()
    code, _, err = finish(process)

    assert (code, err) == (0, "")


# --- 6. SIGHUP: the terminal closed -----------------------------------------------------------


@pytest.fixture
def long_run(campaign: CampaignDir, smtpd: Server) -> CampaignDir:
    """200 recipients, DATA answered after 3 ms: a run lasts long enough to be hung up on."""
    campaign.csv(people(200))
    smtpd.inbox.faults.data_delay = 0.003
    return campaign


def test_sighup_finishes_the_mail_in_flight_and_stops_with_the_hint(
    long_run: CampaignDir, smtpd: Server
) -> None:
    hold = DataHold(smtpd.inbox, 61, queued=False)
    process = start(long_run, *RUN)
    wait_until(hold.entered.is_set, process)
    process.send_signal(signal.SIGHUP)
    assert process.stderr is not None
    said = read_until(process.stderr.fileno(), "stopping after the current mail")
    hold.release()
    code, _, err = finish(process)
    assert "stopping after the current mail" in said, said + err

    assert code == 130, err
    assert "rerun `bulkmail run campaigns/test.yaml --yes` to resume" in err
    state = status_json(long_run)
    assert state["uncertain"] == []
    assert state["counts"]["accepted"] == len(smtpd.inbox.messages) == 61
    assert smtpd.inbox.recipients == addresses(61)


# Run on a terminal of its own, as a login shell runs a job: the controlling terminal of a
# new session, so that when the terminal goes the kernel hangs up on it.
ON_ITS_OWN_TERMINAL = (
    sys.executable,
    "-c",
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def test_terminal_closed_mid_send_leaves_nobody_uncertain(
    long_run: CampaignDir, smtpd: Server
) -> None:
    # An SSH session drops or the window is closed: every process of the job (the
    # workers building mails too) gets SIGHUP, and writes to the terminal fail. (No
    # spool, so that the workers are still building while the mails go.)
    main_fd, tty_fd = pty.openpty()
    long_run.csv(people(320))
    process = subprocess.Popen(
        [*ON_ITS_OWN_TERMINAL, sys.executable, "-m", "bulkmail", *RUN],
        cwd=long_run.root,
        env={**environment(), "BULKMAIL_SPOOL_MB": "0"},
        stdin=tty_fd,
        stdout=tty_fd,
        stderr=tty_fd,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while len(smtpd.inbox.messages) < 60:  # (reading keeps the terminal from filling up)
        assert read_until(main_fd, "\n", seconds=1) or process.poll() is None
        assert time.monotonic() < deadline, "timed out"
    assert worker_pids(process)
    os.close(tty_fd)
    os.close(main_fd)  # the terminal is gone
    code = process.wait(timeout=60)

    assert code == 130
    state = status_json(long_run)
    assert state["uncertain"] == []
    assert state["counts"]["accepted"] == len(smtpd.inbox.messages) < 320

    assert runner.invoke(app, list(RUN)).exit_code == 0
    assert smtpd.inbox.recipients == addresses(320)


IGNORING_SIGHUP = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def test_sighup_ignored_at_start_as_under_nohup_stays_ignored(
    long_run: CampaignDir, smtpd: Server
) -> None:
    process = start(long_run, *RUN, wrapper=IGNORING_SIGHUP)
    wait_until(lambda: len(smtpd.inbox.messages) >= 60, process)
    process.send_signal(signal.SIGHUP)
    code, _, err = finish(process)

    assert code == 0, err
    assert smtpd.inbox.recipients == addresses(200)
