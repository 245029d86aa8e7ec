"""Benchmark bulkmail: the transfer limit, the classic smtplib script, mailmerge, memory, rate.

Run it from the repository (after ``pip install -e '.[bench]'``)::

    python bench/run.py --quick     # a smoke run, well under a minute
    python bench/run.py             # the full benchmark (about 15 minutes on 2 cores)

It makes a temporary folder with the example newsletter as a campaign (templates/june.html
with the articles of campaigns/june.yaml) for N generated recipients and a 200 KB
attachment, starts its own SMTP sink (aiosmtpd, implicit TLS with a trustme CA, AUTH) in a
separate process on 127.0.0.1, and measures, each at least 3 times, in one run:

1. ``bulkmail run --yes`` (the CLI in a subprocess, end to end) versus the transfer limit:
   one real bulkmail message's bytes sent to every recipient by a bare smtplib loop on one
   reused SMTP_SSL connection with TCP_NODELAY;
2. versus the classic script (new connection + login, premailer and re-encoding per mail);
3. versus mailmerge (its SSL/TLS mode, same list and template, no attachment);
4. ``bulkmail check`` throughput;
5. peak RSS of ``bulkmail check`` at two list sizes;
6. rate accuracy at 20 mails/s, measured at the server.

It prints a table (medians, targets, ratios, PASS/FAIL) and writes it as JSON to
bench/out/results.json. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import pstats
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import generate as gen
import peers
import trustme

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
USER = "bench@example.com"
PASSWORD = "bench-password"
MiB = 1024 * 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class StepError(Exception):
    """A step failed or hung: its measurement is reported as ERROR, the rest go on."""


# Set by SIGTERM or Ctrl-C. The handler raises SystemExit, but an exception raised while
# unwinding (smtplib's __exit__ sends QUIT and raises on the reply) can replace it: the
# flag lets the bench stop all the same, cleaning up the sink and its temporary folder.
TERMINATED = threading.Event()
EXIT_CODE = [1]


def on_signal(signum: int, frame: object) -> None:
    TERMINATED.set()
    EXIT_CODE[0] = 128 + signum
    raise SystemExit(EXIT_CODE[0])


# --- sizes ------------------------------------------------------------------------------


@dataclass
class Sizes:
    reps: int = 3
    send_n: int = 2000  # 1, 3: bulkmail run
    slow_n: int = 500  # 2, 3: classic script and mailmerge (rates are compared)
    check_n: int = 20_000  # 4
    rss_small: int = 100_000  # 5
    rss_large: int = 1_000_000  # 5
    rss_reps: int = 1  # 5: a peak of memory varies little from run to run
    rate_n: int = 400  # 6
    rate: float = 20.0  # 6
    attachment_kb: int = 200

    @classmethod
    def quick(cls) -> Sizes:
        # Lists of >= 300 rows, so that bulkmail uses its render workers as for big lists.
        return cls(send_n=150, slow_n=30, check_n=600, rss_small=400, rss_large=1600, rate_n=30)


# --- processes --------------------------------------------------------------------------


@dataclass
class Finished:
    """A finished subprocess: exit code, wall time, memory, output."""

    returncode: int
    wall: float
    maxrss: int  # bytes: the largest single process of the tree (wait4's ru_maxrss)
    tree_peak: int  # bytes: the largest sampled sum of PSS over the process tree (or 0)
    stdout: str
    stderr: str
    started: float = 0.0  # time.monotonic() at the start: the sink's clock (Linux)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found.extend(int(child) for child in file.read().split())
    return found


def _pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages are split between the sharers."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_pss(pid: int) -> int:
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _pss(current)
        todo.extend(_children(current))
    return total


def run_process(
    command: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    stdin: Path | None = None,
    cwd: Path | None = None,
    sample_memory: bool = False,
) -> Finished:
    """Run ``command`` in a new session (no controlling terminal), timing it with wait4.

    Output goes to temporary files (no pipe to fill up). Past ``timeout`` seconds the
    process group is killed and StepError raised.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        open(stdin or os.devnull, "rb") as given,
    ):
        started = time.perf_counter()
        started_monotonic = time.monotonic()
        process = subprocess.Popen(
            command,
            stdin=given,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        peak = 0
        next_sample = 0.0
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                now = time.perf_counter()
                if pid:
                    wall = now - started
                    break
                if TERMINATED.is_set():
                    raise SystemExit(EXIT_CODE[0])
                if now - started > timeout:
                    raise StepError(f"timed out after {timeout:.0f} s: {' '.join(command)}")
                if sample_memory and now >= next_sample:
                    peak = max(peak, tree_pss(process.pid))
                    next_sample = now + 0.05
                time.sleep(0.002)
        except BaseException:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(process.pid, 0)
            process.returncode = -9
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(
            returncode=process.returncode,
            wall=wall,
            maxrss=usage.ru_maxrss * 1024,  # KiB on Linux
            tree_peak=peak,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            started=started_monotonic,
        )


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def json_tail(stdout: str) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed last (after any table)."""
    lines = stdout.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads("\n".join(lines[start:])))
    return {}


# --- the sink ---------------------------------------------------------------------------


class Sink:
    """The sink process (bench/sink.py), driven over its stdin/stdout."""

    def __init__(self, folder: Path, ca: trustme.CA, *options: str) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        key_file, cert_file = folder / "sink.key", folder / "sink.pem"
        cert.private_key_pem.write_to_path(str(key_file))
        cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "sink.py"),
                *("--cert", str(cert_file), "--key", str(key_file)),
                *("--user", USER, "--password", PASSWORD),
                *options,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the bench only
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self._answer(timeout=60)["port"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _answer(self, timeout: float = 60) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise StepError(f"the sink did not answer within {timeout:.0f} s") from None
        if not line:
            raise StepError(f"the sink exited (code {self.process.poll()})")
        return dict(json.loads(line))

    def call(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise StepError(f"the sink is gone: {exc}") from None
        return self._answer()

    def reset(self) -> None:
        self.call("reset")

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# --- the bench --------------------------------------------------------------------------


@dataclass
class Row:
    id: str
    measurement: str
    bulkmail: str
    compared_with: str
    ratio: float | None
    target: str
    status: str  # PASS, FAIL, INFO or ERROR
    value: float | None = None
    unit: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class Bench:
    def __init__(
        self, sizes: Sizes, folder: Path, sink: Sink, ca_file: Path, piped: Sink | None = None
    ) -> None:
        self.sizes = sizes
        self.folder = folder
        self.sink = sink
        # The same sink offering PIPELINING, as Postfix and the big providers do: rows 1p and
        # 3p (bulkmail uses it; smtplib, and so the bare loop and mailmerge, cannot).
        self.piped = piped
        self.ca_file = ca_file
        self.templates = gen.write_templates(folder / "templates")
        self.attachment = gen.write_attachment(
            folder / "files" / "programme-2026.pdf", sizes.attachment_kb * 1024
        )
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("SSL_CERT_FILE", "SSL_CERT_DIR")
        }
        self.env[gen.PASSWORD_ENV] = PASSWORD
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("COLUMNS", "120")
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}

    # generated inputs

    def recipients(self, count: int) -> Path:
        return gen.write_list(self.folder / "lists" / f"{count}.csv", count)

    def campaign(
        self,
        label: str,
        count: int,
        *,
        attachment: bool = True,
        per_second: float = 0,
        base_url: str | None = None,
        links: bool = False,
        markdown: bool = False,
        sink: Sink | None = None,
    ) -> Path:
        """A campaign of the example newsletter; ``links``: with per-recipient links too;
        ``markdown``: written in Markdown; ``sink``: the one it sends to (the plain one by
        default)."""
        templates = self.templates
        if links:
            templates = gen.write_link_templates(self.folder / "templates-links")
        if markdown:
            templates = gen.write_markdown_templates(self.folder / "templates-markdown")
        return gen.write_campaign(
            self.folder / "campaigns" / label,
            name=f"bench-{label}",
            recipients=self.recipients(count),
            templates=templates,
            base_url=base_url,
            port=(sink or self.sink).port,
            ca_file=self.ca_file,
            username=USER,
            attachment=self.attachment if attachment else None,
            per_second=per_second,
            markdown=markdown,
        )

    # steps, each one repetition

    def bulkmail_run(self, campaign: Path, count: int, sink: Sink | None = None) -> dict[str, Any]:
        """``bulkmail run --yes --json`` in a subprocess, from a fresh journal, against
        ``sink`` (the plain one by default)."""
        sink = sink or self.sink
        shutil.rmtree(gen.journal_dir(campaign), ignore_errors=True)
        sink.reset()
        done = run_process(
            [sys.executable, "-m", "bulkmail", "run", str(campaign), "--yes", "--json"],
            timeout=120 + count * 0.1,
            env=self.env,
        )
        stats = sink.stats()
        report = json_tail(done.stdout)
        if done.returncode != 0 or stats["count"] != count:
            raise StepError(
                f"bulkmail run: exit {done.returncode}, {stats['count']} of {count} mails "
                f"arrived\n{tail(done.stderr)}\n{tail(done.stdout)}"
            )
        return {
            "wall_s": done.wall,
            # from the command's start to the first mail's arrival: Python, the check of
            # every mail, the connection
            "first_s": stats["times"][0] - done.started if stats["times"] else None,
            "delivery_s": report.get("elapsed_seconds"),
            "accepted": report.get("accepted"),
            "arrived": stats["count"],
            "bytes": stats["bytes"],
            "logins": stats["logins"],
            "times": stats["times"],
            "maxrss": done.maxrss,
        }

    def bulkmail_check(self, campaign: Path, count: int, *, memory: bool) -> dict[str, Any]:
        done = run_process(
            [sys.executable, "-m", "bulkmail", "check", str(campaign), "--json"],
            timeout=120 + count * 0.05,
            env=self.env,
            sample_memory=memory,
        )
        report = json_tail(done.stdout)
        if done.returncode != 0 or report.get("mails") != count:
            raise StepError(
                f"bulkmail check: exit {done.returncode}, mails={report.get('mails')} of "
                f"{count}\n{tail(done.stderr)}"
            )
        return {
            "wall_s": done.wall,
            "maxrss": done.maxrss,
            "tree_pss_peak": done.tree_peak,
            "bytes": report.get("total_bytes"),
        }

    def one_message(self, campaign: Path) -> tuple[str, bytes, tuple[str, ...]]:
        """One real mail of this campaign, built by bulkmail: envelope sender and bytes."""
        import bulkmail
        from bulkmail.build import Builder

        # Not check_campaign: a check builds without shipping the bytes (content=False).
        builder = Builder.load(bulkmail.load_campaign(campaign))
        mail = next(iter(builder.mails(limit=1, workers=0)))
        assert mail.data, "the bare loop needs the mail's bytes"
        return mail.sender, mail.data, ("SMTPUTF8",) if mail.smtputf8 else ()

    def bare_loop(
        self, sender: str, data: bytes, options: tuple[str, ...], rcpts: list[str]
    ) -> dict[str, Any]:
        self.sink.reset()
        seconds = peers.transfer_limit(
            port=self.sink.port,
            ca_file=self.ca_file,
            username=USER,
            password=PASSWORD,
            sender=sender,
            recipients=rcpts,
            data=data,
            mail_options=options,
        )
        stats = self.sink.stats()
        if stats["count"] != len(rcpts):
            raise StepError(f"bare loop: {stats['count']} of {len(rcpts)} mails arrived")
        return {"wall_s": seconds, "arrived": stats["count"], "bytes": stats["bytes"]}

    # measurements

    def m1_m2(self) -> None:
        """1. run vs the transfer limit; 2. vs the classic script (which reuses 1's figure)."""
        n, reps = self.sizes.send_n, self.sizes.reps
        campaign = self.campaign("send-attachment", n)
        sender, data, options = self.one_message(campaign)
        rcpts = [row["email"] for row in peers.read_rows(self.recipients(n))]
        log(f"1: one bulkmail mail is {len(data):,} bytes; {n:,} recipients, {reps} reps")
        piped = self.piped_campaign("send-attachment-piped", n)
        runs, loops, piped_runs, checks = [], [], [], []
        for rep in range(reps):  # interleaved, so drift in the machine's load hits both
            runs.append(self.bulkmail_run(campaign, n))
            log(
                f"1: rep {rep + 1}: bulkmail run {n / runs[-1]['wall_s']:.1f} mails/s "
                f"({runs[-1]['wall_s']:.2f} s, delivery {runs[-1]['delivery_s']} s)"
            )
            loops.append(self.bare_loop(sender, data, options, rcpts))
            log(f"1: rep {rep + 1}: bare loop {n / loops[-1]['wall_s']:.1f} mails/s")
            checks.append(self.bulkmail_check(campaign, n, memory=False))
            log(f"1: rep {rep + 1}: bulkmail check {checks[-1]['wall_s']:.2f} s")
            if piped is not None:
                piped_runs.append(self.bulkmail_run(piped, n, self.piped))
                log(f"1: rep {rep + 1}: bulkmail run, PIPELINING {self._rates(piped_runs[-1], n)}")
        run_rate = median([n / r["wall_s"] for r in runs])
        limit_rate = median([n / r["wall_s"] for r in loops])
        delivery = [r["delivery_s"] for r in runs if r["delivery_s"]]
        avg_bytes = median([r["bytes"] / r["arrived"] for r in runs])
        self.raw["1"] = {
            "bulkmail_run": [{k: v for k, v in r.items() if k != "times"} for r in runs],
            "bare_loop": loops,
            "message_bytes": len(data),
        }
        self.rows.append(
            Row(
                "1",
                f"bulkmail run, {n:,} mails with a {self.sizes.attachment_kb} KB attachment "
                f"({avg_bytes / 1024:.0f} KB each; CLI, end to end) vs bare smtplib loop "
                "(1 connection, TCP_NODELAY)",
                f"{run_rate:.1f} mails/s",
                f"{limit_rate:.1f} mails/s",
                run_rate / limit_rate,
                ">= 0.85",
                verdict(run_rate / limit_rate >= 0.85),
                run_rate,
                "mails/s",
                {"logins_per_run": [r["logins"] for r in runs]},
            )
        )
        if delivery:
            delivery_rate = median([n / s for s in delivery])
            self.rows.append(
                Row(
                    "1b",
                    "  same, sending phase only (report's elapsed, after the preflight)",
                    f"{delivery_rate:.1f} mails/s",
                    f"{limit_rate:.1f} mails/s",
                    delivery_rate / limit_rate,
                    ">= 0.95",
                    verdict(delivery_rate / limit_rate >= 0.95),
                    delivery_rate,
                    "mails/s",
                )
            )
        self.piped_rows("1", piped_runs, n, limit_rate, target=">= 0.85")
        self.rows.append(self.ceiling_row("1c", runs, loops, checks))
        self.run_rate = run_rate

        # 2. the classic script, on the first slow_n rows of the same list
        slow = min(self.sizes.slow_n, n)
        rows = list(peers.read_rows(self.recipients(n), slow))
        script = peers.ClassicScript(
            templates=self.templates,
            campaign=gen.example(),
            attachment=self.attachment,
            port=self.sink.port,
            username=USER,
            password=PASSWORD,
        )
        classic = []
        for rep in range(reps):
            self.sink.reset()
            seconds = script.send_all(rows)
            stats = self.sink.stats()
            if stats["count"] != slow:
                raise StepError(f"classic script: {stats['count']} of {slow} mails arrived")
            classic.append({"wall_s": seconds, "bytes": stats["bytes"], "logins": stats["logins"]})
            log(f"2: rep {rep + 1}: classic script {slow / seconds:.1f} mails/s")
        classic_rate = median([slow / r["wall_s"] for r in classic])
        self.raw["2"] = {"classic": classic, "n": slow}
        self.rows.append(
            Row(
                "2",
                f"  vs classic script (conn+login, premailer, re-encode per mail; N={slow:,})",
                f"{run_rate:.1f} mails/s",
                f"{classic_rate:.1f} mails/s",
                run_rate / classic_rate,
                ">= 10x",
                verdict(run_rate / classic_rate >= 10),
                run_rate,
                "mails/s",
            )
        )
        self.rows.append(
            Row(
                "2b",
                "  ceiling for 2 with this sink: the transfer limit vs the classic script",
                f"{limit_rate:.1f} mails/s",
                f"{classic_rate:.1f} mails/s",
                limit_rate / classic_rate,
                "(info)",
                "INFO",
                limit_rate / classic_rate,
            )
        )

    def m3(self) -> None:
        """3. mailmerge vs bulkmail, same list and template, no attachment."""
        n, reps = self.sizes.send_n, self.sizes.reps
        slow = min(self.sizes.slow_n, n)
        campaign = self.campaign("send-plain", n, attachment=False)
        files = gen.write_mailmerge(
            self.folder / "mailmerge",
            port=self.sink.port,
            username=USER,
            recipients=self.recipients(n),
        )
        bundle = self.trust_bundle()
        password = self.folder / "mailmerge" / "password.txt"
        password.write_text(PASSWORD + "\n")
        env = {**self.env, "SSL_CERT_FILE": str(bundle)}
        command = [
            sys.executable,
            "-c",
            # `python -m mailmerge` calls main() before the module defines its helpers.
            "import sys; from mailmerge.__main__ import main; sys.exit(main())",
            "--no-dry-run",
            *("--limit", str(slow)),
            *("--template", str(files["template"])),
            *("--database", str(files["database"])),
            *("--config", str(files["config"])),
            *("--output-format", "raw"),
        ]
        sender, data, options = self.one_message(campaign)
        rcpts = [row["email"] for row in peers.read_rows(self.recipients(n))]
        piped = self.piped_campaign("send-plain-piped", n, attachment=False)
        runs, merges, loops, piped_runs, checks = [], [], [], [], []
        for rep in range(reps):
            runs.append(self.bulkmail_run(campaign, n))
            log(
                f"3: rep {rep + 1}: bulkmail run (no attachment) "
                f"{n / runs[-1]['wall_s']:.1f} mails/s ({runs[-1]['wall_s']:.2f} s, "
                f"delivery {runs[-1]['delivery_s']} s)"
            )
            if piped is not None:
                piped_runs.append(self.bulkmail_run(piped, n, self.piped))
                log(f"3: rep {rep + 1}: bulkmail run, PIPELINING {self._rates(piped_runs[-1], n)}")
            loops.append(self.bare_loop(sender, data, options, rcpts))
            log(f"3: rep {rep + 1}: bare loop (no attachment) {n / loops[-1]['wall_s']:.1f}/s")
            checks.append(self.bulkmail_check(campaign, n, memory=False))
            log(f"3: rep {rep + 1}: bulkmail check {checks[-1]['wall_s']:.2f} s")
            self.sink.reset()
            # A new session has no controlling terminal: getpass falls back to stdin.
            done = run_process(
                command,
                timeout=120 + slow * 0.5,
                env=env,
                stdin=password,
                cwd=files["config"].parent,
            )
            stats = self.sink.stats()
            if done.returncode != 0 or stats["count"] != slow:
                raise StepError(
                    f"mailmerge: exit {done.returncode}, {stats['count']} of {slow} arrived\n"
                    f"{tail(done.stderr)}"
                )
            merges.append({"wall_s": done.wall, "bytes": stats["bytes"], "logins": stats["logins"]})
            log(f"3: rep {rep + 1}: mailmerge {slow / done.wall:.1f} mails/s")
        run_rate = median([n / r["wall_s"] for r in runs])
        merge_rate = median([slow / r["wall_s"] for r in merges])
        limit_rate = median([n / r["wall_s"] for r in loops])
        self.raw["3"] = {
            "bulkmail_run": [{k: v for k, v in r.items() if k != "times"} for r in runs],
            "bare_loop": loops,
            "message_bytes": len(data),
            "mailmerge": merges,
            "mailmerge_n": slow,
            "trust_bundle_certs": bundle.read_text().count("BEGIN CERTIFICATE"),
        }
        self.rows.append(
            Row(
                "3",
                f"bulkmail run, {n:,}, no attachment, vs mailmerge (SSL/TLS, "
                f"trust store + test CA; N={slow:,})",
                f"{run_rate:.1f} mails/s",
                f"{merge_rate:.1f} mails/s",
                run_rate / merge_rate,
                ">= 15x",
                verdict(run_rate / merge_rate >= 15),
                run_rate,
                "mails/s",
            )
        )
        self.rows.append(
            Row(
                "3b",
                f"  same bulkmail run ({len(data) / 1024:.0f} KB mails) vs bare smtplib loop",
                f"{run_rate:.1f} mails/s",
                f"{limit_rate:.1f} mails/s",
                run_rate / limit_rate,
                ">= 0.85",
                verdict(run_rate / limit_rate >= 0.85),
                run_rate,
                "mails/s",
            )
        )
        if piped_runs:
            piped_rate = median([n / r["wall_s"] for r in piped_runs])
            self.rows.append(
                Row(
                    "3p",
                    "  same run, the sink offering PIPELINING, vs mailmerge",
                    f"{piped_rate:.1f} mails/s",
                    f"{merge_rate:.1f} mails/s",
                    piped_rate / merge_rate,
                    ">= 15x",
                    verdict(piped_rate / merge_rate >= 15),
                    piped_rate,
                    "mails/s",
                )
            )
        self.piped_rows("3b", piped_runs, n, limit_rate, target=">= 0.85", sending=False)
        self.rows.append(self.ceiling_row("3c", runs, loops, checks, mailmerge=merge_rate))

    @staticmethod
    def ceiling_row(
        label: str,
        runs: list[dict[str, Any]],
        loops: list[dict[str, Any]],
        checks: list[dict[str, Any]],
        *,
        mailmerge: float | None = None,
    ) -> Row:
        """The best ratio a run can reach against the bare loop when no mail goes out
        before every mail is checked: the check of the same list (``bulkmail check``:
        Python, reading and validating every row, rendering and building every mail, less
        than a run's preflight, which also keeps the bytes and plans the journal) comes
        first, then sending at the bare loop's speed."""
        bare = median([r["wall_s"] for r in loops])
        check = median([r["wall_s"] for r in checks])
        firsts = [r["first_s"] for r in runs if r.get("first_s") is not None]
        first = f"; a run's first mail at {median(firsts):.2f} s" if firsts else ""
        n = runs[0]["arrived"]
        rate = n / (check + bare)
        versus = f" (for 3: {rate / mailmerge:.1f}x mailmerge)" if mailmerge else ""
        return Row(
            label,
            "  ceiling if every mail is checked before the first goes out: bare loop / "
            f"(bulkmail check of the same list + bare loop){versus}",
            f"check {check:.2f} s{first}",
            f"bare loop {bare:.2f} s",
            bare / (check + bare),
            "(info)",
            "INFO",
            rate,
            "mails/s",
        )

    def piped_campaign(self, label: str, count: int, *, attachment: bool = True) -> Path | None:
        """The campaign of a sending row, pointed at the sink offering PIPELINING."""
        if self.piped is None:
            return None
        return self.campaign(label, count, attachment=attachment, sink=self.piped)

    @staticmethod
    def _rates(run: dict[str, Any], n: int) -> str:
        return f"{n / run['wall_s']:.1f} mails/s (delivery {run['delivery_s']} s)"

    def piped_rows(
        self,
        key: str,
        runs: list[dict[str, Any]],
        n: int,
        limit_rate: float,
        *,
        target: str,
        sending: bool = True,
    ) -> None:
        """Rows ``<key>p`` (end to end) and ``<key[0]>bp`` (sending phase): the runs against
        the sink offering PIPELINING, vs the bare loop (which cannot use it)."""
        if not runs:
            return
        rate = median([n / r["wall_s"] for r in runs])
        self.rows.append(
            Row(
                f"{key}p",
                "  same run, the sink offering PIPELINING (as Postfix does), vs the bare loop",
                f"{rate:.1f} mails/s",
                f"{limit_rate:.1f} mails/s",
                rate / limit_rate,
                target,
                verdict(rate / limit_rate >= 0.85),
                rate,
                "mails/s",
            )
        )
        delivery = [n / r["delivery_s"] for r in runs if r["delivery_s"]]
        if sending and delivery:
            phase = median(delivery)
            self.rows.append(
                Row(
                    f"{key}bp",
                    "  same, sending phase only",
                    f"{phase:.1f} mails/s",
                    f"{limit_rate:.1f} mails/s",
                    phase / limit_rate,
                    ">= 0.95",
                    verdict(phase / limit_rate >= 0.95),
                    phase,
                    "mails/s",
                )
            )

    def trust_bundle(self) -> Path:
        """The default trust store (the system's CA file, else certifi) plus the test CA."""
        import ssl

        default: str | None = ssl.get_default_verify_paths().cafile
        if default is None or not Path(default).exists():
            try:
                import certifi

                default = certifi.where()
            except ImportError:
                default = None
        bundle = self.folder / "trust-bundle.pem"
        store = Path(default).read_bytes() if default else b""
        bundle.write_bytes(store + b"\n" + self.ca_file.read_bytes())
        return bundle

    def m4(self) -> None:
        """4. ``bulkmail check`` throughput; 4b, 4c: the same with ``base_url`` set, and with
        per-recipient links too, which must not be slower (the skeleton cache's cliff); 4d:
        the links of 4c without ``base_url``, to tell what the links cost from what joining
        them to the base URL does; 4m: the newsletter written in Markdown (information)."""
        n = self.sizes.check_n
        variants = {
            "4": self.campaign(f"check-{n}", n),
            "4b": self.campaign(f"check-{n}-base-url", n, base_url=gen.BASE_URL),
            "4c": self.campaign(f"check-{n}-links", n, base_url=gen.BASE_URL, links=True),
            "4d": self.campaign(f"check-{n}-links-no-base", n, links=True),
            "4m": self.campaign(f"check-{n}-markdown", n, markdown=True),
        }
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in variants}
        for rep in range(self.sizes.reps):  # interleaved: drift in the load hits them all
            for key, campaign in variants.items():
                runs[key].append(self.bulkmail_check(campaign, n, memory=False))
                rate = n / runs[key][-1]["wall_s"]
                log(f"{key}: rep {rep + 1}: bulkmail check {rate:.0f} mails/s")
        rates = {key: median([n / r["wall_s"] for r in runs[key]]) for key in variants}
        self.raw["4"] = {"bulkmail_check": runs, "n": n}
        self.rows.append(
            Row(
                "4",
                f"bulkmail check, {n:,} recipients (CLI, end to end)",
                f"{rates['4']:,.0f} mails/s",
                "",
                rates["4"] / 4000,
                ">= 4,000 mails/s",
                verdict(rates["4"] >= 4000),
                rates["4"],
                "mails/s",
            )
        )
        titles = {
            "4b": "  same with base_url (premailer makes every link absolute) vs 4",
            "4c": "  same with base_url and per-recipient links (relative, absolute) vs 4",
            "4d": "  same links without base_url vs 4 (what the links cost, unjoined)",
            "4m": "  same newsletter written in Markdown (default layout) vs 4",
        }
        for key, title in titles.items():
            ratio = rates[key] / rates["4"]
            target = key not in ("4d", "4m")
            self.rows.append(
                Row(
                    key,
                    title,
                    f"{rates[key]:,.0f} mails/s",
                    f"{rates['4']:,.0f} mails/s",
                    ratio,
                    ">= 0.9 (same speed)" if target else "",
                    verdict(ratio >= 0.9) if target else "",
                    rates[key],
                    "mails/s",
                )
            )

    def m5(self) -> None:
        sizes = (self.sizes.rss_small, self.sizes.rss_large)
        runs: dict[int, list[dict[str, Any]]] = {}
        for n in sizes:
            campaign = self.campaign(f"check-{n}", n)
            runs[n] = []
            for rep in range(self.sizes.rss_reps):
                runs[n].append(self.bulkmail_check(campaign, n, memory=True))
                r = runs[n][-1]
                log(
                    f"5: rep {rep + 1}: check {n:,}: largest process {r['maxrss'] / MiB:.1f} "
                    f"MiB, all processes {r['tree_pss_peak'] / MiB:.1f} MiB, {r['wall_s']:.1f} s"
                )
            self.raw[f"5-{n}"] = runs[n]
        metrics = [
            ("5", "maxrss", "peak RSS of the largest process (ru_maxrss, as time -v)"),
            ("5t", "tree_pss_peak", "peak memory of all processes (sum of PSS, main+workers)"),
        ]
        for key, metric, title in metrics:
            peaks = {n: median([r[metric] for r in runs[n]]) for n in sizes}
            if not all(peaks.values()):
                continue  # no /proc to sample
            for n in sizes:
                self.rows.append(
                    Row(
                        f"{key}-{n}",
                        f"bulkmail check {n:,}: {title}",
                        f"{peaks[n] / MiB:.1f} MiB",
                        "",
                        peaks[n] / (100 * MiB),
                        "<= 100 MiB",
                        verdict(peaks[n] <= 100 * MiB),
                        peaks[n] / MiB,
                        "MiB",
                        {"reps_mib": [round(r[metric] / MiB, 1) for r in runs[n]]},
                    )
                )
            ratio = peaks[sizes[1]] / peaks[sizes[0]]
            self.rows.append(
                Row(
                    f"{key}-ratio",
                    f"  the same, {sizes[1]:,} / {sizes[0]:,}",
                    f"{ratio:.3f}",
                    "",
                    ratio,
                    "<= 1.2",
                    verdict(ratio <= 1.2),
                    ratio,
                )
            )

    def m6(self) -> None:
        n, rate = self.sizes.rate_n, self.sizes.rate
        campaign = self.campaign("rate", n, per_second=rate)
        achieved, windows = [], []
        for rep in range(self.sizes.reps):
            result = self.bulkmail_run(campaign, n)
            times = sorted(result["times"])
            achieved.append((len(times) - 1) / (times[-1] - times[0]))
            windows.append(max_in_window(times, 1.0))
            log(
                f"6: rep {rep + 1}: {achieved[-1]:.3f} mails/s at the server, "
                f"at most {windows[-1]} in one second"
            )
        got = median(achieved)
        error = abs(got / rate - 1)
        bound = int(rate) + 1  # burst: the campaign sets none, so bulkmail's default of 1
        self.raw["6"] = {"achieved": achieved, "max_in_1s": windows, "n": n}
        self.rows.append(
            Row(
                "6",
                f"rate {rate:g}/s x {n}: achieved rate at the server",
                f"{got:.3f} mails/s",
                f"{rate:g} configured",
                got / rate,
                "within 2%",
                verdict(error <= 0.02),
                got,
                "mails/s",
            )
        )
        self.rows.append(
            Row(
                "6b",
                "  most mails arriving in any 1 s window (worst rep)",
                str(max(windows)),
                "",
                None,
                f"<= {bound} (rate + burst)",
                verdict(max(windows) <= bound),
                max(windows),
                "mails",
            )
        )

    def profile(self, out: Path) -> None:
        """cProfile one ``bulkmail run`` of each campaign of 1 and 3: where the time goes.

        Only the main process is profiled: the render workers' time shows as waiting.
        """
        n = self.sizes.send_n
        for label, attachment in (("attachment", True), ("plain", False)):
            campaign = self.campaign(f"send-{label}", n, attachment=attachment)
            shutil.rmtree(gen.journal_dir(campaign), ignore_errors=True)
            self.sink.reset()
            prof = out / f"profile-run-{label}.prof"
            done = run_process(
                [
                    *(sys.executable, "-m", "cProfile", "-o", str(prof)),
                    *("-m", "bulkmail", "run", str(campaign), "--yes", "--json"),
                ],
                timeout=300 + n * 0.2,
                env=self.env,
            )
            if done.returncode != 0:
                raise StepError(f"profiled run: exit {done.returncode}\n{tail(done.stderr)}")
            text = io.StringIO()
            stats = pstats.Stats(str(prof), stream=text)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(50)
            report = out / f"profile-run-{label}.txt"
            report.write_text(text.getvalue())
            log(f"profile of one run ({done.wall:.1f} s under cProfile): {report}")


def max_in_window(times: list[float], width: float) -> int:
    """The most arrivals in any window [t, t + width): windows starting at an arrival."""
    best, end = 0, 0
    for start, at in enumerate(times):
        while end < len(times) and times[end] < at + width:
            end += 1
        best = max(best, end - start)
    return best


# --- output -----------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = ["#", "measurement", "bulkmail (median)", "compared with", "ratio", "target", ""]
    body = [
        [
            row.id,
            row.measurement,
            row.bulkmail,
            row.compared_with,
            "" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            row.status,
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for line in body:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            ).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "bulkmail_files_changed": [
            line[3:] for line in git("status", "--porcelain", "bulkmail").splitlines()
        ],
    }


def compile_bytecode() -> None:
    """Compile bulkmail's modules to bytecode, as pip does for a package it installs.

    Run from the checkout (``python -m bulkmail``), bulkmail would otherwise compile its ~45
    modules from source at every start wherever Python writes no bytecode
    (``PYTHONDONTWRITEBYTECODE=1``, as on this machine): ~50 ms a run that an installed
    bulkmail does not pay, nor the peers and the bare loop, whose modules pip compiled.
    """
    import compileall

    if not compileall.compile_dir(REPO / "bulkmail", quiet=1):
        sys.exit("could not compile bulkmail's modules to bytecode")
    log("bulkmail's modules compiled to bytecode, as pip compiles an installed package's")


# --- main -------------------------------------------------------------------------------

MEASUREMENTS: dict[str, tuple[str, Callable[[Bench], None]]] = {
    "1": ("bulkmail run vs the transfer limit, then 2: vs the classic script", Bench.m1_m2),
    "3": ("bulkmail run vs mailmerge", Bench.m3),
    "4": ("bulkmail check throughput", Bench.m4),
    "5": ("peak RSS of bulkmail check at two sizes", Bench.m5),
    "6": ("rate accuracy", Bench.m6),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark bulkmail against the transfer limit, the classic script and "
        "mailmerge; check its memory and rate limit.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement (>= 3)")
    parser.add_argument("--send-n", type=int, help="recipients for 1 and 3 (2000)")
    parser.add_argument("--slow-n", type=int, help="recipients for the classic script and "
                        "mailmerge, compared as rates (500)")  # fmt: skip
    parser.add_argument("--check-n", type=int, help="recipients for 4 (20000)")
    parser.add_argument(
        "--rss-n", type=int, nargs=2, metavar=("SMALL", "LARGE"), help="5 (100000 1000000)"
    )
    parser.add_argument("--rss-reps", type=int, help="repetitions of 5 (1: peaks vary little)")
    parser.add_argument("--rate-n", type=int, help="mails for 6 (400)")
    parser.add_argument("--attachment-kb", type=int, help="attachment size (200)")
    parser.add_argument(
        "--only", help="comma-separated measurements to run: 1 (with 2),3,4,5,6 (all)"
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile one bulkmail run")
    parser.add_argument(
        "--no-pipelining",
        action="store_true",
        help="skip rows 1p, 1bp, 3p, 3bp (a second sink offering PIPELINING, as Postfix does)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="bench/out")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    sizes = Sizes.quick() if args.quick else Sizes()
    for name in ("reps", "send_n", "slow_n", "check_n", "rate_n", "attachment_kb", "rss_reps"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    if args.rss_n:
        sizes.rss_small, sizes.rss_large = args.rss_n
    if sizes.reps < 3:
        log(f"warning: {sizes.reps} repetitions; the figures want at least 3")
    wanted = args.only.split(",") if args.only else list(MEASUREMENTS)
    unknown = set(wanted) - set(MEASUREMENTS)
    if unknown:
        sys.exit(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    args.out.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    info = machine()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="bulkmail-bench-"))
        if args.keep:
            log(f"keeping {folder}")
        else:
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        ca = trustme.CA()
        ca_file = folder / "test-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        log("starting the SMTP sink (aiosmtpd, implicit TLS, AUTH) in its own process")
        sink = Sink(folder, ca)
        stack.callback(sink.close)
        piped = None
        if not args.no_pipelining and {"1", "3"} & set(wanted):
            (folder / "piped").mkdir()
            piped = Sink(folder / "piped", ca, "--pipelining")
            stack.callback(piped.close)
        log(f"sink on 127.0.0.1:{sink.port}; sizes: {asdict(sizes)}")
        bench = Bench(sizes, folder, sink, ca_file, piped)
        for key in wanted:
            title, step = MEASUREMENTS[key]
            log(f"measurement {key}: {title}")
            try:
                step(bench)
            except Exception as exc:  # one broken step must not lose the others
                if TERMINATED.is_set():
                    raise SystemExit(EXIT_CODE[0]) from exc
                log(f"measurement {key} failed: {exc}")
                bench.rows.append(Row(key, f"measurement {key}", "", "", None, "", "ERROR",
                                      detail={"error": str(exc)}))  # fmt: skip
        if args.profile:
            try:
                bench.profile(args.out)
            except StepError as exc:
                log(f"profile failed: {exc}")
        rows, raw = bench.rows, bench.raw

    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = round(time.perf_counter() - started, 1)
    result = {
        "machine": info,
        "sizes": asdict(sizes),
        "notes": {
            "bulkmail": "the CLI in a subprocess (python -m bulkmail run CAMPAIGN --yes "
            "--json), timed end to end: interpreter start, preflight and sending",
            "transfer_limit": "one bulkmail-built mail's bytes sent to each recipient over "
            "one verified SMTP_SSL connection with TCP_NODELAY (smtplib, in the bench)",
            "rates": "2 and 3 compare rates (mails/s): the slow peers send slow_n mails",
            "memory": "5: wait4 ru_maxrss of the largest single process (what time -v and "
            "resource report); 5t: the peak of the sum of PSS over the process tree (main + "
            "render workers), sampled every 50 ms",
        },
        "rows": [asdict(row) for row in rows],
        "raw": raw,
    }
    out_file = args.out / "results.json"
    out_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(rows))
    print(f"\n(medians of {sizes.reps} runs; JSON: {out_file}; {info['seconds']} s)")
    if any(row.status == "ERROR" for row in rows):
        return 1
    return 2 if any(row.status == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
