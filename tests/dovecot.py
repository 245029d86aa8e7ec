"""A private Dovecot on 127.0.0.1 for the mailbox tests: the real IMAP and POP3 server a
user's mailbox would be, with its own configuration in a temporary folder.

Nothing of the system's Dovecot is used (no /etc/dovecot, no system service): the
configuration, sockets, state, log, certificate, accounts and mail all live in one folder
that is removed when the server stops. It listens on free ports for IMAP with STARTTLS,
IMAPS, POP3 with STARTTLS and POP3S, with a certificate from the session's trustme CA.

Each test takes an :class:`Account` of its own (`Dovecot.account`), so one server serves
the whole session and no test sees another's mail.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import imaplib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import free_port

from bulkmail.models import InboxSettings, MailboxProtocol, Security

INSTALL_HINT = "Dovecot is not installed: apt-get install dovecot-imapd dovecot-pop3d"
PASSWORD = "inbox-s3cret"
PASSWORD_ENV = "BULKMAIL_INBOX_PASSWORD"
# The keyword bulkmail sets on a processed IMAP message.
PROCESSED = "$BulkmailProcessed"

# How long Dovecot may take to open its ports, and to stop.
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
# Dovecot refuses mail access as root, so when the tests run as root the mail belongs to
# this unprivileged user; otherwise everything runs as the user running the tests.
_MAIL_USER_WHEN_ROOT = "nobody"
_PR_SET_PDEATHSIG = 1


def dovecot_binary() -> str | None:
    """The dovecot executable, or None when the packages are not installed."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    return found


@dataclass(frozen=True)
class _Users:
    """Who Dovecot's processes and the mail run as."""

    login: str  # default_login_user: the pre-login processes
    internal: str  # default_internal_user: auth workers and such
    internal_group: str  # default_internal_group: owns the internal sockets
    mail_uid: int
    mail_gid: int


def _users() -> _Users:
    """As root: Dovecot's own system users, and an unprivileged owner for the mail (Dovecot
    refuses mail access as root). Otherwise the current user for everything, since a
    non-root master cannot switch users."""
    if os.geteuid() == 0:
        mail = pwd.getpwnam(_MAIL_USER_WHEN_ROOT)
        return _Users("dovenull", "dovecot", "dovecot", mail.pw_uid, mail.pw_gid)
    me = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(os.getegid()).gr_name
    return _Users(me.pw_name, me.pw_name, group, me.pw_uid, os.getegid())


class Dovecot:
    """A running private Dovecot; `account()` gives each test a user and mailbox of its own."""

    host = "127.0.0.1"

    def __init__(self, binary: str, ca: trustme.CA, *, tls: bool = True) -> None:
        self.binary = binary
        self.ca = ca
        self.tls = tls  # False: no TLS at all (ssl = no), IMAP and POP3 in clear only
        # Not under pytest's temporary folder: that one is private to the user running the
        # tests, and the mail owner must reach the homes below this folder when that is root.
        # A short path also keeps Dovecot's socket paths under the 108-byte limit.
        self.root = Path(tempfile.mkdtemp(prefix="bulkmail-dovecot-"))
        self.root.chmod(0o755)
        self.users = _users()
        self.ca_file = self.root / "ca.pem"
        # One passwd-file per user: Dovecot rereads a changed file at most once a second,
        # but opens a file it has not seen at once.
        self.users_folder = self.root / "users"
        self.log_file = self.root / "dovecot.log"
        self.config_file = self.root / "dovecot.conf"
        self.homes = self.root / "homes"
        self.ports: dict[tuple[MailboxProtocol, Security], int] = {}
        self._numbers = itertools.count(1)
        self._process: subprocess.Popen[bytes] | None = None

    # -- starting and stopping ------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration, start Dovecot in the foreground, wait for its ports."""
        self._write_files()
        self._process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not Dovecot's
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Dovecot (its master stops every process it started) and remove its folder."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            if process.stderr is not None:
                process.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _write_files(self) -> None:
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.root / "server.pem"))
        (self.root / "server.pem").chmod(0o600)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        for folder in ("run", "state", "homes", "users"):
            (self.root / folder).mkdir()
        self._give_to_mail_user(self.homes)
        self.ports = {("imap", "none"): free_port(), ("pop3", "none"): free_port()}
        if self.tls:
            self.ports[("imap", "starttls")] = self.ports[("imap", "none")]
            self.ports[("pop3", "starttls")] = self.ports[("pop3", "none")]
            self.ports[("imap", "ssl")] = free_port()
            self.ports[("pop3", "ssl")] = free_port()
        self.config_file.write_text(self._config(), encoding="utf-8")

    def _config(self) -> str:
        """The whole configuration: nothing is included from /etc/dovecot."""
        root, users = self.root, self.users
        return f"""\
protocols = imap pop3
listen = {self.host}
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_file}
instance_name = bulkmail-test-{root.name}
default_login_user = {users.login}
default_internal_user = {users.internal}
default_internal_group = {users.internal_group}
first_valid_uid = 1
first_valid_gid = 0
{self._tls_config()}
# A wrong password is answered at once: the tests try some on purpose.
auth_failure_delay = 0
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.users_folder}/%u
}}
userdb {{
  driver = passwd-file
  args = {self.users_folder}/%u
}}
# No growing delay for an address that failed to log in (anvil's auth penalty).
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{_no_chroot("ipc", "old-stats", "aggregator")}
mail_location = maildir:~/Maildir
mail_fsync = never
namespace inbox {{
  inbox = yes
}}
{self._listeners("imap")}
{self._listeners("pop3")}
"""

    def _tls_config(self) -> str:
        if not self.tls:
            return "ssl = no"
        pem = self.root / "server.pem"
        return f"ssl = yes\nssl_cert = <{pem}\nssl_key = <{pem}"

    def _listeners(self, protocol: MailboxProtocol) -> str:
        """The login service of ``protocol``: its port in clear (STARTTLS when TLS is on),
        and its implicit-TLS port. No chroot (see _no_chroot)."""
        implicit = ""
        if self.tls:
            implicit = f"""
  inet_listener {protocol}s {{
    port = {self.ports[protocol, "ssl"]}
    ssl = yes
  }}"""
        return f"""\
service {protocol}-login {{
  chroot =
  inet_listener {protocol} {{
    port = {self.ports[protocol, "none"]}
  }}{implicit}
}}"""

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        waiting = set(self.ports.values())
        while waiting:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._process.returncode}: {self._log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dovecot did not listen within {_START_TIMEOUT:g} s: {self._log()}"
                )
            waiting = {port for port in waiting if not _accepts(self.host, port)}
            if waiting:
                time.sleep(0.05)

    def _log(self) -> str:
        """What Dovecot said on stderr and in its log, for an error message."""
        said = b""
        process = self._process
        if process is not None and process.stderr is not None and process.poll() is not None:
            said = process.stderr.read()
        logged = self.log_file.read_text("utf-8", "replace") if self.log_file.exists() else ""
        return (said.decode("utf-8", "replace") + logged).strip()[-2000:] or "(nothing logged)"

    def _give_to_mail_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.users.mail_uid, self.users.mail_gid)

    # -- accounts -------------------------------------------------------------------------

    def account(self, password: str = PASSWORD) -> Account:
        """A new user with an empty Maildir (INBOX only), in a passwd-file of its own."""
        username = f"user{next(self._numbers)}"
        home = self.homes / username
        users = self.users
        line = f"{username}:{{PLAIN}}{password}:{users.mail_uid}:{users.mail_gid}::{home}::\n"
        users_file = self.users_folder / username
        users_file.write_text(line, encoding="utf-8")
        users_file.chmod(0o644)  # read by the auth process, which is not root
        account = Account(self, username, password, home)
        account.create_folder("INBOX")
        return account


@dataclass(frozen=True)
class Account:
    """One user of the test Dovecot: deliver mail into its Maildir, read its state over IMAP."""

    server: Dovecot
    username: str
    password: str
    home: Path

    def settings(
        self, protocol: MailboxProtocol = "imap", security: Security = "ssl", **overrides: Any
    ) -> InboxSettings:
        """InboxSettings for this account over ``protocol`` and ``security``, trusting the
        test CA; ``overrides`` replace any field."""
        values: dict[str, Any] = {
            "protocol": protocol,
            "host": self.server.host,
            "port": self.server.ports[protocol, security],
            "username": self.username,
            "security": security,
            "password_env": PASSWORD_ENV,
            "timeout": 5.0,
            "ca_file": self.server.ca_file,
        }
        values.update(overrides)
        return InboxSettings(**values)

    def folder_path(self, folder: str = "INBOX") -> Path:
        """The Maildir++ folder: the Maildir itself for INBOX, else ``.name`` inside it."""
        maildir = self.home / "Maildir"
        return maildir if folder == "INBOX" else maildir / f".{folder}"

    def create_folder(self, folder: str) -> None:
        """Create the folder's cur/, new/ and tmp/ (and the home), owned by the mail user."""
        path = self.folder_path(folder)
        for directory in (self.home, self.home / "Maildir", path):
            if not directory.exists():
                directory.mkdir()
                self.server._give_to_mail_user(directory)
        for part in ("cur", "new", "tmp"):
            if not (path / part).exists():
                (path / part).mkdir()
                self.server._give_to_mail_user(path / part)

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put ``raw`` into the folder as an MDA would: written in tmp/, renamed into new/."""
        path = self.folder_path(folder)
        if not path.exists():
            self.create_folder(folder)
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.bulkmail-test"
        written = path / "tmp" / name
        written.write_bytes(raw)
        self.server._give_to_mail_user(written)
        written.rename(path / "new" / name)

    @contextlib.contextmanager
    def imap(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in IMAP session of the test itself (IMAPS where the server has TLS),
        to look at the mailbox."""
        server = self.server
        client: imaplib.IMAP4
        if server.tls:
            context = ssl.create_default_context(cafile=server.ca_file)
            port = server.ports["imap", "ssl"]
            client = imaplib.IMAP4_SSL(server.host, port, ssl_context=context, timeout=5)
        else:
            client = imaplib.IMAP4(server.host, server.ports["imap", "none"], timeout=5)
        try:
            client.login(self.username, self.password)
            yield client
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()

    def flags(self, folder: str = "INBOX") -> list[frozenset[str]]:
        """The flags and keywords of each message in the folder, in UID order (read-only:
        EXAMINE changes nothing)."""
        with self.imap() as client:
            _ok(client.select(_quoted(folder), readonly=True))
            typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
            _ok((typ, data))
        found: list[tuple[int, frozenset[str]]] = []
        for item in data:
            if not isinstance(item, bytes):
                continue
            uid = re.search(rb"UID (\d+)", item)
            if uid is not None:
                flags = frozenset(f.decode() for f in imaplib.ParseFlags(item)) - {"\\Recent"}
                found.append((int(uid.group(1)), flags))
        return [flags for _, flags in sorted(found)]

    def keywords(self, folder: str = "INBOX") -> list[frozenset[str]]:
        """The keywords (flags without a backslash) of each message, in UID order."""
        return [
            frozenset(f for f in flags if not f.startswith("\\")) for flags in self.flags(folder)
        ]

    def message_count(self, folder: str = "INBOX") -> int:
        """How many messages the folder holds, as the server counts them (STATUS)."""
        with self.imap() as client:
            typ, data = client.status(_quoted(folder), "(MESSAGES)")
            _ok((typ, data))
        found = re.search(rb"MESSAGES (\d+)", data[0] if isinstance(data[0], bytes) else b"")
        assert found is not None, data
        return int(found.group(1))


def _no_chroot(*services: str) -> str:
    """Service blocks that keep their processes out of a chroot, which a master that is not
    root cannot set up (the login services say so in their own blocks)."""
    return "\n".join(f"service {name} {{\n  chroot =\n}}" for name in services)


def _ok(response: tuple[str, Any]) -> None:
    assert response[0] == "OK", response


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child before exec: Dovecot gets SIGTERM if pytest dies without stopping it
    (killed, or crashed), so no server outlives the test session. Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def running_dovecot(ca: trustme.CA, *, tls: bool = True) -> Iterator[Dovecot]:
    """A started Dovecot, stopped on leaving; skips the test if Dovecot is not installed.
    ``tls=False``: a server that offers no TLS at all."""
    binary = dovecot_binary()
    if binary is None:
        pytest.skip(INSTALL_HINT)
    server = Dovecot(binary, ca, tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
