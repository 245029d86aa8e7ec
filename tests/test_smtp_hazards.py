"""SMTP hazards from real runs: a password sent in clear, the wrong security for a port, a
server that never speaks or never answers, retries and reconnects nobody saw, a backoff
that slept through Ctrl-C, and a refused login left without QUIT.

Servers are real and on 127.0.0.1 only: the aiosmtpd fixtures, and for a server that
never speaks (or stops answering at one command) a raw socket server in a thread.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir, make_mail, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, USERNAME, Server, Sleeps, TLSPair, transport
from processes import bulkmail, environment, finish, start

from bulkmail.deliver.smtp import SMTPTransport
from bulkmail.errors import AuthError, ConfigError, ConnectError, DeliveryUncertain, TLSError
from bulkmail.journal.status import campaign_status
from bulkmail.load.campaign import load_campaign
from bulkmail.models import Event, SmtpSettings, Status
from bulkmail.send import send_campaign

# Every test against a server without PIPELINING, then against one offering it.
pytestmark = pytest.mark.both_ways

# -- a raw socket server ------------------------------------------------------------------

Talk = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A TCP server on 127.0.0.1; ``talk(connection, stopped)`` speaks (or not) for it."""

    def __init__(self, talk: Talk) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._talk = talk
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._speak, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _speak(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(0.05)
            self._talk(connection, self._stopped)

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(5)
        self.listener.close()


def lines(connection: socket.socket, stopped: threading.Event) -> Iterator[bytes]:
    """The CRLF-ended lines the client sends, until it hangs up or the server stops."""
    buffer = b""
    while not stopped.is_set():
        try:
            chunk = connection.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while b"\r\n" in buffer:
            line, buffer = buffer.split(b"\r\n", 1)
            yield line


def never_speaks(connection: socket.socket, stopped: threading.Event) -> None:
    """Accept the connection and say nothing, whatever the client sends."""
    for _ in lines(connection, stopped):
        pass


def silent_at(command: str) -> Talk:
    """A minimal SMTP server that stops answering at ``command`` ("MAIL FROM", "RCPT TO",
    "DATA" or "end of data") and only listens from then on."""

    def talk(connection: socket.socket, stopped: threading.Event) -> None:
        connection.sendall(b"220 raw.test ESMTP\r\n")
        in_data = silent = False
        for line in lines(connection, stopped):
            if silent:
                continue
            if in_data:
                if line != b".":
                    continue
                in_data, step, reply = False, "end of data", b"250 queued\r\n"
            else:
                verb = line[:4].upper()
                step, reply = {
                    b"EHLO": ("EHLO", b"250-raw.test\r\n250 PIPELINING\r\n"),
                    b"MAIL": ("MAIL FROM", b"250 OK\r\n"),
                    b"RCPT": ("RCPT TO", b"250 OK\r\n"),
                    b"DATA": ("DATA", b"354 go ahead\r\n"),
                    b"RSET": ("RSET", b"250 OK\r\n"),
                    b"QUIT": ("QUIT", b"221 bye\r\n"),
                }.get(verb, ("?", b"500 what?\r\n"))
                in_data = step == "DATA" and step != command
            if step == command:
                silent = True
                continue
            connection.sendall(reply)
            if step == "QUIT":
                return

    return talk


@pytest.fixture
def raw_server() -> Iterator[Callable[[Talk], RawServer]]:
    servers: list[RawServer] = []

    def make(talk: Talk) -> RawServer:
        servers.append(RawServer(talk))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


# -- 1. no password in clear to a host that is not this machine ---------------------------


def alias_of_127_0_0_1() -> list[str]:
    """Names for 127.0.0.1 that do not look like loopback: the decimal form (resolved by
    the C library, no DNS), and this machine's name if /etc/hosts maps it there."""
    names = ["2130706433"]
    hostname = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(hostname, 25, socket.AF_INET)}
    except OSError:
        addresses = set()
    if addresses == {"127.0.0.1"}:
        names.append(hostname)
    return names


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.45.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("::ffff:127.0.0.1", True),
        ("2130706433", False),  # 127.0.0.1 in disguise: a name, as far as the rule can tell
        ("127.1", False),
        ("localhost.example.com", False),
        ("mail.localhost.evil.test", False),
        ("10.0.0.1", False),
        ("smtp.example.com", False),
        ("::2", False),
    ],
)
def test_only_literal_loopback_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert SmtpSettings(host, 25).host_is_loopback is loopback


def test_plaintext_auth_is_a_problem_only_without_tls_to_another_host() -> None:
    remote = SmtpSettings("smtp.example.com", 25, security="none", username=USERNAME)

    problem = remote.plaintext_auth_problem()

    assert problem is not None
    assert "in clear" in problem
    assert "smtp.example.com" in problem
    assert "allow_plaintext_auth: true" in problem
    assert "security: starttls" in problem
    for fine in (
        SmtpSettings("smtp.example.com", 587, security="starttls", username=USERNAME),
        SmtpSettings("smtp.example.com", 465, security="ssl", username=USERNAME),
        SmtpSettings("smtp.example.com", 25, security="none"),  # no login at all
        SmtpSettings("127.0.0.1", 25, security="none", username=USERNAME),
        SmtpSettings("localhost", 25, security="none", username=USERNAME),
        SmtpSettings(
            "smtp.example.com", 25, security="none", username=USERNAME, allow_plaintext_auth=True
        ),
    ):
        assert fine.plaintext_auth_problem() is None, fine


@pytest.mark.parametrize("host", alias_of_127_0_0_1())
def test_password_never_reaches_a_host_not_known_as_loopback(
    host: str, smtpd_no_starttls: Server, tls: TLSPair
) -> None:
    # The server would take a plaintext login (it does from 127.0.0.1): the name it is
    # reached by is all that differs.
    smtp = transport(smtpd_no_starttls, tls, settings=smtpd_no_starttls.settings(host=host))

    with pytest.raises(AuthError) as caught:
        smtp.send(make_mail(1))

    message = str(caught.value)
    assert message.startswith(f"{host}:{smtpd_no_starttls.port}: ")
    assert "allow_plaintext_auth: true" in message
    assert PASSWORD not in message
    assert smtpd_no_starttls.inbox.connections == []  # refused before connecting
    assert smtpd_no_starttls.inbox.logins == []
    assert smtpd_no_starttls.inbox.messages == []


@pytest.mark.parametrize("host", alias_of_127_0_0_1())
def test_allow_plaintext_auth_lets_the_login_through(
    host: str, smtpd_no_starttls: Server, tls: TLSPair
) -> None:
    settings = smtpd_no_starttls.settings(host=host, allow_plaintext_auth=True)

    with transport(smtpd_no_starttls, tls, settings=settings) as smtp:
        smtp.send(make_mail(1))

    assert [login.success for login in smtpd_no_starttls.inbox.logins] == [True]


def test_plaintext_login_on_loopback_needs_no_setting(
    smtpd_no_starttls: Server, tls: TLSPair
) -> None:
    with transport(smtpd_no_starttls, tls) as smtp:
        smtp.send(make_mail(1))

    assert [login.success for login in smtpd_no_starttls.inbox.logins] == [True]


def test_campaign_with_a_plaintext_login_elsewhere_is_refused_where_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    c = CampaignDir(tmp_path)
    smtp = {"host": "mail.example.com", "security": "none", "username": USERNAME}
    c.write(smtp=smtp)
    line = next(
        number
        for number, text in enumerate(c.yaml_path.read_text().splitlines(), 1)
        if "username:" in text
    )

    with pytest.raises(ConfigError) as caught:
        load_campaign(c.yaml_path)

    text = str(caught.value)
    assert text.startswith(f"campaigns/test.yaml:{line}: smtp.username: ")
    assert "in clear to mail.example.com" in text
    assert "allow_plaintext_auth: true" in text

    c.write(smtp={**smtp, "allow_plaintext_auth": True})
    settings = load_campaign(c.yaml_path).smtp
    assert settings is not None
    assert settings.allow_plaintext_auth

    c.write(smtp={**smtp, "allow_plaintext_auth": "yes"})
    with pytest.raises(ConfigError, match=r"smtp\.allow_plaintext_auth: must be true or false"):
        load_campaign(c.yaml_path)


# -- 2. the wrong security for the port ----------------------------------------------------


def test_starttls_against_an_implicit_tls_port_fails_fast_and_says_use_ssl(
    smtpd: Server, tls: TLSPair
) -> None:
    settings = smtpd.settings(security="starttls", timeout=30)
    smtp = SMTPTransport(settings, password=PASSWORD, ssl_context=tls.client, greeting_timeout=1)
    began = time.monotonic()

    with pytest.raises(ConnectError) as caught:
        smtp.open()

    assert time.monotonic() - began < 3
    message = str(caught.value)
    assert message.startswith(f"127.0.0.1:{smtpd.port}: no greeting within 1 s; ")
    assert "security: ssl" in message
    assert smtpd.inbox.logins == []


def test_the_greeting_wait_is_the_shorter_of_timeout_and_10_s() -> None:
    assert SMTPTransport(SmtpSettings("h", 465, timeout=30), password=None).greeting_timeout == 10
    assert SMTPTransport(SmtpSettings("h", 465, timeout=2.5), password=None).greeting_timeout == 2.5


def test_ssl_against_a_plain_port_says_use_starttls(smtpd_plain: Server, tls: TLSPair) -> None:
    smtp = transport(smtpd_plain, tls, password=None, settings=smtpd_plain.settings(security="ssl"))

    with pytest.raises(TLSError) as caught:
        smtp.open()

    message = str(caught.value)
    assert message.startswith(f"127.0.0.1:{smtpd_plain.port}: TLS failed: wrong version number")
    assert "use `security: starttls`" in message
    assert "`none`" in message  # for a local relay on port 25


# -- 3. a server that never speaks, or never answers -------------------------------------


def test_server_that_never_speaks_is_no_greeting_not_a_closed_connection(
    raw_server: Callable[[Talk], RawServer],
) -> None:
    server = raw_server(never_speaks)
    smtp = SMTPTransport(SmtpSettings("127.0.0.1", server.port, "none", timeout=0.5), password=None)

    with pytest.raises(ConnectError) as caught:
        smtp.open()

    message = str(caught.value)
    assert message.startswith(f"127.0.0.1:{server.port}: no greeting within 0.5 s")
    assert "closed" not in message
    assert server.accepted == 1


@pytest.mark.parametrize("command", ["MAIL FROM", "RCPT TO", "DATA"])
def test_no_reply_to_a_command_says_which(
    command: str, raw_server: Callable[[Talk], RawServer]
) -> None:
    server = raw_server(silent_at(command))
    settings = SmtpSettings("127.0.0.1", server.port, "none", timeout=0.3)
    smtp = SMTPTransport(settings, password=None, sleep=Sleeps(), max_reconnects=0)

    with smtp, pytest.raises(ConnectError) as caught:
        smtp.send(make_mail(1))

    assert not isinstance(caught.value, DeliveryUncertain)
    assert str(caught.value).endswith(f"last: no reply to {command} within 0.3 s")


def test_no_reply_to_the_end_of_data_is_uncertain_and_says_so(
    raw_server: Callable[[Talk], RawServer],
) -> None:
    server = raw_server(silent_at("end of data"))
    settings = SmtpSettings("127.0.0.1", server.port, "none", timeout=0.3)

    with SMTPTransport(settings, password=None) as smtp, pytest.raises(DeliveryUncertain) as caught:
        smtp.send(make_mail(1))

    message = str(caught.value)
    assert message.startswith(f"127.0.0.1:{server.port}: no reply to end of data within 0.3 s")
    assert "reader1@example.org" in message
    assert "may or may not have been delivered" in message


# -- 4. reconnects and retries are shown -------------------------------------------------


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    """12 recipients at the implicit-TLS server."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = CampaignDir(tmp_path)
    c.csv(people(12))
    c.write(smtp=smtp_settings(smtpd, tls))
    return c


def expected_notes(port: int) -> tuple[str, str]:
    """The retry line for reader3 (one 451) and the start of the reconnect line."""
    where = f"127.0.0.1:{port}"
    return (
        f"451 from {where} for reader3@example.com: retrying in 1 s",
        f"reconnecting to {where} (the server closed the connection",
    )


def test_library_on_event_hears_of_retries_and_reconnects(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.defer["reader3@example.com"] = 1
    smtpd.inbox.faults.drop_after = 6
    events: list[Event] = []

    report = send_campaign(campaign.yaml_path, on_event=events.append)

    assert report.accepted == 12
    notes = [(e.kind, e.detail) for e in events if e.kind in ("retry", "reconnect")]
    retry, reconnect = expected_notes(smtpd.port)
    assert [kind for kind, _ in notes] == ["retry", "reconnect"]
    assert notes[0][1] == retry
    assert notes[1][1].startswith(reconnect)
    assert [e.done for e in events if e.kind == "retry"] == [3]
    assert {e.total for e in events if e.kind in ("retry", "reconnect")} == {12}


def test_cli_shows_retries_and_reconnects_on_stderr_without_a_terminal(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.defer["reader3@example.com"] = 1
    smtpd.inbox.faults.drop_after = 6

    code, out, err = finish(start(campaign, "run", "campaigns/test.yaml", "--yes"))

    assert code == 0, err
    retry, reconnect = expected_notes(smtpd.port)
    notes = err.splitlines()
    assert notes[0] == retry
    assert notes[1].startswith(reconnect)
    assert len(notes) == 2
    assert retry not in out


def test_cli_shows_retries_and_reconnects_on_a_terminal(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.defer["reader3@example.com"] = 1
    smtpd.inbox.faults.drop_after = 6
    controller, terminal = pty.openpty()
    env = {**environment(), "TERM": "xterm", "COLUMNS": "200"}
    process = subprocess.Popen(
        bulkmail("run", "campaigns/test.yaml", "--yes"),
        cwd=campaign.root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, "the run went quiet"
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the run ended and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(controller)
        code = process.wait(30)

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
    assert code == 0, text
    retry, reconnect = expected_notes(smtpd.port)
    assert retry in text
    assert reconnect in text


# -- 5. Ctrl-C during a 4xx backoff ----------------------------------------------------------


def test_stop_during_a_retry_wait_leaves_the_mail_unsent_and_pending(
    campaign: CampaignDir, smtpd: Server
) -> None:
    smtpd.inbox.faults.defer["reader3@example.com"] = 99
    stop = threading.Event()

    def stop_at_the_first_retry(event: Event) -> None:
        if event.kind == "retry":
            stop.set()

    began = time.monotonic()
    report = send_campaign(campaign.yaml_path, stop=stop, on_event=stop_at_the_first_retry)

    assert time.monotonic() - began < 5  # not 1 + 2 + 4 s of backoff
    assert report.interrupted
    assert (report.accepted, report.failed, report.uncertain) == (3, 0, 0)
    assert "reader3@example.com" not in smtpd.inbox.recipients
    state = campaign_status(campaign.yaml_path)
    assert state.summary is not None
    assert state.summary.counts[Status.PENDING] == 9
    assert state.failed == []
    assert state.uncertain == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_retry_wait_exits_at_once_with_the_mail_pending(
    campaign: CampaignDir, smtpd: Server, signum: signal.Signals
) -> None:
    smtpd.inbox.faults.defer["reader3@example.com"] = 99
    process = start(campaign, "run", "campaigns/test.yaml", "--yes")
    assert process.stderr is not None
    while "retrying in 2 s" not in (line := process.stderr.readline()):
        assert line, "the run ended without retrying"
    process.send_signal(signum)
    signalled = time.monotonic()
    code, _, err = finish(process)

    assert time.monotonic() - signalled < 1.5  # not the 2 s wait, then 4 more
    assert code == 130, err
    assert "Traceback" not in err
    assert "rerun `bulkmail run campaigns/test.yaml --yes` to resume" in err
    assert "reader3@example.com" not in smtpd.inbox.recipients
    status = subprocess.run(
        bulkmail("status", "campaigns/test.yaml", "--json"),
        cwd=campaign.root,
        env=environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    state: dict[str, Any] = json.loads(status.stdout)
    assert state["counts"]["accepted"] == 3
    assert state["counts"]["pending"] == 9
    assert state["failed"] == []
    assert state["uncertain"] == []


# -- 6. QUIT after a refusal -------------------------------------------------------------------


def test_refused_login_says_quit_before_closing(smtpd: Server, tls: TLSPair) -> None:
    with pytest.raises(AuthError, match="535"):
        transport(smtpd, tls, password="wrong-horse").open()

    (connection,) = smtpd.inbox.connections
    assert connection.quit


def test_starttls_not_offered_says_quit_before_closing(
    smtpd_no_starttls: Server, tls: TLSPair
) -> None:
    settings = smtpd_no_starttls.settings(security="starttls")

    with pytest.raises(TLSError, match="does not offer STARTTLS"):
        transport(smtpd_no_starttls, tls, settings=settings).open()

    (connection,) = smtpd_no_starttls.inbox.connections
    assert connection.quit
