"""A private PostgreSQL server on 127.0.0.1 for the shared-journal tests: the real database
a campaign's `journal: postgresql://...` would name, in a temporary folder of its own.

Nothing of the system's PostgreSQL is used (no cluster in /var/lib/postgresql, no system
service): `initdb` makes a new cluster in a temporary folder, and the server listens on a
free port of 127.0.0.1, with its Unix socket in that folder. Over TCP every role logs in
with a password (scram-sha-256), so the journal's password handling is tested for real;
the tests' own administrative connection uses the socket, trusted.

Each test takes a database of its own (`Postgres.database`), so one server serves the
whole session and no test sees another's rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import free_port

from bulkmail.models import PostgresSettings

INSTALL_HINT = "PostgreSQL is not installed: apt-get install postgresql"
USER = "bulkmail"
PASSWORD = "pg-s3cret"
PASSWORD_ENV = "BULKMAIL_PG_PASSWORD"
ADMIN = "admin"  # the cluster's superuser, over the socket only

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
# initdb and the server refuse to run as root: then they run as this user if it exists,
# else as nobody.
_USERS_WHEN_ROOT = ("postgres", "nobody")
_PR_SET_PDEATHSIG = 1


def postgres_bin() -> Path | None:
    """The folder of initdb and postgres: on PATH, else the newest Debian-style install."""
    found = shutil.which("initdb")
    if found is not None and Path(found).with_name("postgres").exists():
        return Path(found).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    candidates.sort(key=_major)
    return Path(candidates[-1]).parent if candidates else None


def _major(initdb: str) -> int:
    """The major version in /usr/lib/postgresql/<major>/bin/initdb."""
    version = Path(initdb).parts[-3]
    return int(version) if version.isdigit() else 0


def _run_as() -> pwd.struct_passwd | None:
    """Who runs initdb and the server: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in _USERS_WHEN_ROOT:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and there is no postgres or nobody user to run as")


class Postgres:
    """A running private PostgreSQL server; `database()` gives each test an empty database."""

    host = "127.0.0.1"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        # Not under pytest's temporary folder: the server's user must reach it when the
        # tests run as root. A short path keeps the socket's under the 108-byte limit.
        self.root = Path(tempfile.mkdtemp(prefix="bulkmail-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self.port = 0
        self.user = _run_as()
        self._numbers = itertools.count(1)
        self._process: subprocess.Popen[bytes] | None = None

    # -- starting and stopping ------------------------------------------------------------

    def start(self) -> None:
        """Make the cluster, start the server in the foreground, make the test role."""
        self.sockets.mkdir()
        if self.user is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._initdb()
        self.port = free_port()
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sockets),
                    # A test server: nothing here must survive a power cut.
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=100",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not the server's
                preexec_fn=_die_with_parent,
                **self._as_user(),
            )
        try:
            self._wait_until_ready()
            with self.admin() as db:
                db.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        except BaseException:
            self.stop()
            raise

    def _as_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        done = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                ADMIN,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.root,
            check=False,
            **self._as_user(),
        )
        if done.returncode != 0:
            said = (done.stdout + done.stderr).decode("utf-8", "replace")
            raise RuntimeError(f"initdb failed ({done.returncode}): {said[-2000:]}")
        # Over TCP, every role gives its password; the socket (the tests' own admin) is trusted.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8"
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut) and remove its folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._process.returncode}: {self._log()}"
                )
            try:
                with self.admin():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not start within {_START_TIMEOUT:g} s: {self._log()}"
                    ) from None
                time.sleep(0.05)

    def _log(self) -> str:
        text = self.log_file.read_text("utf-8", "replace") if self.log_file.exists() else ""
        return text.strip()[-2000:] or "(nothing logged)"

    # -- using it -------------------------------------------------------------------------

    @contextlib.contextmanager
    def admin(self, database: str = "postgres") -> Iterator[psycopg.Connection[Any]]:
        """The superuser, over the socket, in autocommit: for what the tests set up or check."""
        with psycopg.connect(
            host=str(self.sockets),
            port=self.port,
            user=ADMIN,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        ) as db:
            yield db

    def database(self) -> str:
        """A new empty database, owned by the test role."""
        name = f"mail{next(self._numbers)}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def url(self, database: str, *, user: str = USER, port: int | None = None) -> str:
        return f"postgresql://{user}@{self.host}:{port or self.port}/{database}"

    def settings(self, database: str, **overrides: Any) -> PostgresSettings:
        """PostgresSettings for ``database`` as the test role, its password read from
        PASSWORD_ENV (set it with monkeypatch); ``overrides`` replace any field."""
        values: dict[str, Any] = {"url": self.url(database), "password_env": PASSWORD_ENV}
        values.update(overrides)
        return PostgresSettings(**values)


def _die_with_parent() -> None:
    """In the child before exec: the server gets SIGINT (a fast shutdown, which cuts its
    sessions) if pytest dies without stopping it, so no server outlives the test session.
    Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A started PostgreSQL, stopped on leaving; skips the test if it is not installed."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(INSTALL_HINT)
    server = Postgres(bin_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
