"""SMTPTransport against a real aiosmtpd server on 127.0.0.1; faults are made in its handler."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from builders import SENDER, make_mail
from conftest import (
    PASSWORD,
    PASSWORD_ENV,
    USERNAME,
    Server,
    ServerFactory,
    Sleeps,
    TLSPair,
    free_port,
    transport,
)

from bulkmail.deliver.smtp import SMTPTransport, resolve_password
from bulkmail.errors import (
    AuthError,
    ConnectError,
    DeliveryError,
    DeliveryUncertain,
    RecipientRefused,
    TLSError,
)
from bulkmail.models import OutgoingMail, SmtpSettings

# Every test against a server without PIPELINING, then against one offering it.
pytestmark = pytest.mark.both_ways


class Events:
    """Collects on_event calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        self.calls.append((name, info))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def send_all(smtp: SMTPTransport, mails: list[OutgoingMail]) -> list[str]:
    with smtp:
        return [smtp.send(mail) for mail in mails]


# -- the happy path ---------------------------------------------------------------------


def test_batch_of_50_uses_one_connection_one_login_and_one_envelope_per_mail(
    smtpd: Server, tls: TLSPair
) -> None:
    mails = [make_mail(i) for i in range(50)]
    events = Events()
    smtp = transport(smtpd, tls, on_event=events)

    replies = send_all(smtp, mails)

    inbox = smtpd.inbox
    assert smtp.connections == 1
    assert len(inbox.connections) == 1
    assert inbox.connections[0].quit
    assert [(login.username, login.success) for login in inbox.logins] == [(USERNAME, True)]
    assert [m.rcpt_tos for m in inbox.messages] == [(m.recipient.email,) for m in mails]
    for mail, received in zip(mails, inbox.messages, strict=True):
        assert received.mail_from == SENDER
        assert received.content == mail.data  # byte for byte, dots unstuffed
        assert received.parsed()["To"] == mail.recipient.email
    assert replies[0].startswith("250 ")
    assert events.names() == ["connect", "login"]
    assert events.calls[0][1]["connection"] == 1


def test_starttls_upgrades_before_logging_in(smtpd_starttls: Server, tls: TLSPair) -> None:
    send_all(transport(smtpd_starttls, tls), [make_mail(1), make_mail(2)])

    (connection,) = smtpd_starttls.inbox.connections
    assert [over_tls for _, over_tls in connection.ehlo] == [False, True]
    assert [login.success for login in smtpd_starttls.inbox.logins] == [True]
    assert len(smtpd_starttls.inbox.messages) == 2


def test_plain_relay_without_login(smtpd_plain: Server, tls: TLSPair) -> None:
    send_all(transport(smtpd_plain, tls, password=None), [make_mail(1)])

    assert smtpd_plain.inbox.logins == []
    assert smtpd_plain.inbox.recipients == ["reader1@example.org"]


def test_ca_file_from_settings_is_trusted(smtpd: Server, tls: TLSPair) -> None:
    settings = smtpd.settings(ca_file=tls.ca_file)
    smtp = SMTPTransport(settings, password=PASSWORD)  # builds its own verifying context

    send_all(smtp, [make_mail(1)])

    assert smtpd.inbox.recipients == ["reader1@example.org"]


def test_constructor_does_no_io(tmp_path: Path) -> None:
    settings = SmtpSettings("127.0.0.1", free_port(), ca_file=tmp_path / "missing.pem")

    smtp = SMTPTransport(settings, password=None)

    assert smtp.connections == 0
    assert smtp.socket is None


def test_close_without_open_and_twice_is_harmless(smtpd_plain: Server, tls: TLSPair) -> None:
    smtp = transport(smtpd_plain, tls, password=None)
    smtp.close()
    smtp.open()
    smtp.close()
    smtp.close()
    assert smtpd_plain.inbox.connections[0].quit


# -- errors that stop the batch ---------------------------------------------------------


def test_wrong_password_is_refused_and_nothing_is_sent(smtpd: Server, tls: TLSPair) -> None:
    smtp = transport(smtpd, tls, password="wrong-horse")

    with pytest.raises(AuthError) as caught:
        send_all(smtp, [make_mail(1)])

    message = str(caught.value)
    assert message.startswith(f"{smtpd.host}:{smtpd.port}: login refused for {USERNAME}: 535")
    assert "wrong-horse" not in message
    assert "wrong-horse" not in repr(caught.value)
    assert caught.value.exit_code == 4
    assert smtpd.inbox.messages == []
    # One attempt: smtplib's login() would try LOGIN after PLAIN failed, and a provider
    # counts both toward its lockout.
    assert [login.success for login in smtpd.inbox.logins] == [False]


def test_username_without_password_fails_before_connecting(smtpd: Server, tls: TLSPair) -> None:
    with pytest.raises(AuthError, match=f"no password for {USERNAME}: set .*{PASSWORD_ENV}"):
        transport(smtpd, tls, password=None).open()
    assert smtpd.inbox.connections == []


def test_server_that_wants_a_login_stops_the_batch(smtpd: Server, tls: TLSPair) -> None:
    smtp = transport(smtpd, tls, password=None, settings=smtpd.settings(username=None))

    with pytest.raises(AuthError, match="wants a login before sending: 530"):
        send_all(smtp, [make_mail(1)])


@pytest.mark.parametrize("server_fixture", ["smtpd", "smtpd_starttls"])
def test_untrusted_certificate_is_refused(
    server_fixture: str, tls: TLSPair, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(server_fixture)
    smtp = transport(server, tls, ssl_context=tls.untrusting_client)

    with pytest.raises(TLSError) as caught:
        send_all(smtp, [make_mail(1)])

    assert str(caught.value).startswith(f"{server.host}:{server.port}: certificate verify failed: ")
    assert "unable to get local issuer certificate" in str(caught.value)
    assert server.inbox.logins == []
    assert server.inbox.messages == []


def test_missing_ca_file_is_a_tls_error(smtpd: Server, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    smtp = SMTPTransport(smtpd.settings(ca_file=missing), password=PASSWORD)

    with pytest.raises(TLSError, match=f"{missing}: cannot load the CA certificates"):
        smtp.open()


def test_starttls_requested_but_not_offered_is_refused(
    smtpd_no_starttls: Server, tls: TLSPair
) -> None:
    smtp = transport(
        smtpd_no_starttls, tls, settings=smtpd_no_starttls.settings(security="starttls")
    )

    with pytest.raises(TLSError, match="does not offer STARTTLS; refusing to continue"):
        smtp.open()

    assert smtpd_no_starttls.inbox.logins == []  # the password never went out in clear


def test_login_on_a_server_without_auth_is_an_auth_error(smtpd_plain: Server, tls: TLSPair) -> None:
    smtp = transport(smtpd_plain, tls, settings=smtpd_plain.settings(username=USERNAME))

    with pytest.raises(AuthError, match=f"cannot log in as {USERNAME}: the server offers no AUTH"):
        smtp.open()


def test_connection_refused() -> None:
    port = free_port()
    smtp = SMTPTransport(SmtpSettings("127.0.0.1", port, security="none"), password=None)

    with pytest.raises(ConnectError) as caught:
        smtp.open()

    assert str(caught.value) == f"127.0.0.1:{port}: connection refused"


def test_implicit_tls_against_a_plain_server_is_a_tls_error(
    smtpd_plain: Server, tls: TLSPair
) -> None:
    smtp = transport(smtpd_plain, tls, password=None, settings=smtpd_plain.settings(security="ssl"))

    with pytest.raises(TLSError, match=f"{smtpd_plain.port}: TLS failed: "):
        smtp.open()


# -- per-recipient outcomes -------------------------------------------------------------


def test_permanent_refusal_is_reported_and_the_next_mail_goes_through(
    smtpd: Server, tls: TLSPair
) -> None:
    refused = make_mail(2, "gone@example.org")
    smtpd.inbox.faults.refuse[refused.recipient.email] = "550 5.1.1 No such user here"

    with transport(smtpd, tls) as smtp:
        smtp.send(make_mail(1))
        with pytest.raises(RecipientRefused) as caught:
            smtp.send(refused)
        smtp.send(make_mail(3))

    error = caught.value
    assert (error.code, error.reply, error.permanent) == (550, "5.1.1 No such user here", True)
    assert str(error) == (
        f"gone@example.org: refused by {smtpd.host}:{smtpd.port} at RCPT TO:"
        " 550 5.1.1 No such user here"
    )
    # Without RSET the server would answer "503 nested MAIL command" to the third mail.
    assert smtpd.inbox.recipients == ["reader1@example.org", "reader3@example.org"]
    assert smtpd.inbox.connections[0].rsets == 1
    assert len(smtpd.inbox.connections) == 1


def test_temporary_failure_is_retried_after_the_first_delay(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.defer["reader1@example.org"] = 1
    sleeps, events = Sleeps(), Events()

    send_all(transport(smtpd, tls, sleep=sleeps, on_event=events), [make_mail(1), make_mail(2)])

    assert sleeps == [1]
    assert smtpd.inbox.recipients == ["reader1@example.org", "reader2@example.org"]
    retry = dict(events.calls)["retry"]
    assert retry == {
        "recipient": "reader1@example.org",
        "code": 451,
        "reply": "4.3.0 Temporary failure, try again later",
        "delay": 1,
        "attempt": 1,
    }


def test_temporary_failure_that_persists_ends_as_a_temporary_refusal(
    smtpd: Server, tls: TLSPair
) -> None:
    smtpd.inbox.faults.defer["reader1@example.org"] = 99
    sleeps = Sleeps()

    with transport(smtpd, tls, sleep=sleeps) as smtp:
        with pytest.raises(RecipientRefused) as caught:
            smtp.send(make_mail(1))
        smtp.send(make_mail(2))

    assert sleeps == [1, 2, 4]
    assert caught.value.permanent is False
    assert caught.value.code == 451
    assert "still deferred" in str(caught.value)
    assert "after 3 retries" in str(caught.value)
    assert smtpd.inbox.recipients == ["reader2@example.org"]


# -- reconnecting ---------------------------------------------------------------------


def test_server_dropping_after_message_10_gets_every_mail_exactly_once(
    smtpd: Server, tls: TLSPair
) -> None:
    smtpd.inbox.faults.drop_after = 10
    mails = [make_mail(i) for i in range(50)]
    events = Events()

    send_all(transport(smtpd, tls, on_event=events), mails)

    assert smtpd.inbox.recipients == [mail.recipient.email for mail in mails]
    assert len(smtpd.inbox.connections) == 2
    assert [login.connection for login in smtpd.inbox.logins] == [1, 2]
    assert [m.connection for m in smtpd.inbox.messages].count(1) == 10
    assert events.names() == ["connect", "login", "reconnect", "connect", "login"]


def test_421_reconnects_and_sends_the_same_mail(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.close_421 = 1

    send_all(transport(smtpd, tls), [make_mail(1), make_mail(2)])

    assert smtpd.inbox.recipients == ["reader1@example.org", "reader2@example.org"]
    assert len(smtpd.inbox.connections) == 2


def test_reconnects_are_bounded(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.close_421 = 100
    sleeps = Sleeps()

    with pytest.raises(ConnectError) as caught:
        send_all(transport(smtpd, tls, sleep=sleeps, max_reconnects=3), [make_mail(1)])

    assert str(caught.value) == (
        f"127.0.0.1:{smtpd.port}: the connection was lost 4 times while sending to"
        " reader1@example.org; last: the server is closing the connection:"
        " 421 4.3.2 Service shutting down, closing the connection"
    )
    assert len(smtpd.inbox.connections) == 4
    assert sleeps == [1, 2]  # the first reconnect is immediate, then the backoff


def test_max_per_connection_opens_a_new_connection_every_20_mails(
    smtpd: Server, tls: TLSPair
) -> None:
    smtp = transport(smtpd, tls, settings=smtpd.settings(max_per_connection=20))

    send_all(smtp, [make_mail(i) for i in range(50)])

    assert smtp.connections == 3
    assert len(smtpd.inbox.connections) == 3
    assert all(connection.quit for connection in smtpd.inbox.connections)
    assert [login.connection for login in smtpd.inbox.logins] == [1, 2, 3]
    per_connection = [m.connection for m in smtpd.inbox.messages]
    assert [per_connection.count(n) for n in (1, 2, 3)] == [20, 20, 10]


def test_drop_after_the_mail_was_sent_is_uncertain_not_resent(smtpd: Server, tls: TLSPair) -> None:
    smtpd.inbox.faults.vanish_at_data = 1

    with transport(smtpd, tls) as smtp:
        with pytest.raises(DeliveryUncertain) as caught:
            smtp.send(make_mail(1))
        smtp.send(make_mail(2))  # the next mail reconnects

    assert isinstance(caught.value, ConnectError)
    assert caught.value.recipient == "reader1@example.org"
    assert "may or may not have been delivered" in str(caught.value)
    assert smtpd.inbox.recipients == ["reader1@example.org", "reader2@example.org"]
    assert smtp.connections == 2


def test_no_answer_to_data_within_the_timeout_is_uncertain(
    smtpd_plain: Server, tls: TLSPair
) -> None:
    smtpd_plain.inbox.faults.data_delay = 1.0
    settings = smtpd_plain.settings(timeout=0.3)

    with pytest.raises(DeliveryUncertain):
        send_all(transport(smtpd_plain, tls, password=None, settings=settings), [make_mail(1)])


# -- socket options -------------------------------------------------------------------


@pytest.mark.parametrize("server_fixture", ["smtpd", "smtpd_starttls", "smtpd_plain"])
def test_tcp_nodelay_is_set_and_survives_starttls(
    server_fixture: str, tls: TLSPair, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(server_fixture)

    with transport(server, tls) as smtp:
        sock = smtp.socket
        assert sock is not None
        assert isinstance(sock, ssl.SSLSocket) == (server.security != "none")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        smtp.send(make_mail(1))


# -- SMTPUTF8 -------------------------------------------------------------------------


def test_non_ascii_address_uses_smtputf8_when_offered(smtpd: Server, tls: TLSPair) -> None:
    mail = make_mail(1, "小明@example.net")
    assert mail.smtputf8

    send_all(transport(smtpd, tls), [mail])

    (received,) = smtpd.inbox.messages
    assert received.rcpt_tos == ("小明@example.net",)
    assert "SMTPUTF8" in received.mail_options
    assert received.content == mail.data


def test_non_ascii_address_is_refused_clearly_without_smtputf8(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    server = make_server("ssl", smtputf8=False)

    with transport(server, tls) as smtp:
        with pytest.raises(RecipientRefused) as caught:
            smtp.send(make_mail(1, "小明@example.net"))
        smtp.send(make_mail(2))

    assert caught.value.permanent
    assert str(caught.value) == (
        f"小明@example.net: this mail needs SMTPUTF8 (non-ASCII addresses), which"
        f" {server.host}:{server.port} does not offer; not sent"
    )
    assert server.inbox.recipients == ["reader2@example.org"]


def test_ascii_mail_does_not_ask_for_smtputf8(smtpd: Server, tls: TLSPair) -> None:
    send_all(transport(smtpd, tls), [make_mail(1)])

    assert "SMTPUTF8" not in smtpd.inbox.messages[0].mail_options


# -- the password ---------------------------------------------------------------------


def test_password_comes_from_the_named_variable(smtpd: Server) -> None:
    environ = {PASSWORD_ENV: PASSWORD}
    assert resolve_password(smtpd.settings(), environ=environ) == PASSWORD


def test_password_prompt_is_used_when_the_variable_is_unset(smtpd: Server) -> None:
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return PASSWORD

    assert resolve_password(smtpd.settings(), environ={}, prompt=prompt) == PASSWORD
    assert prompts == [f"SMTP password for {USERNAME} at 127.0.0.1: "]


@pytest.mark.parametrize("environ", [{}, {PASSWORD_ENV: ""}])
def test_missing_password_names_the_variable_to_set(smtpd: Server, environ: dict[str, str]) -> None:
    with pytest.raises(AuthError) as caught:
        resolve_password(smtpd.settings(), environ=environ)

    assert str(caught.value) == (
        f"127.0.0.1:{smtpd.port}: no password for {USERNAME}:"
        f" set the environment variable {PASSWORD_ENV}"
    )


def test_missing_password_without_password_env_says_how_to_configure(smtpd: Server) -> None:
    with pytest.raises(AuthError, match="add `password_env: SOME_VARIABLE`"):
        resolve_password(smtpd.settings(password_env=None), environ={})


def test_no_username_needs_no_password(smtpd_plain: Server) -> None:
    assert resolve_password(smtpd_plain.settings(), environ={}) is None


def test_password_appears_in_no_error_and_no_repr(
    smtpd: Server, tls: TLSPair, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "pa55-w0rd-XYZ"
    errors: list[DeliveryError] = []
    smtp = transport(smtpd, tls, password=secret)
    for attempt in (smtp.open, lambda: transport(smtpd, tls, password=None).open()):
        with pytest.raises(DeliveryError) as caught:
            attempt()
        errors.append(caught.value)

    texts = [repr(smtp), str(smtp.__dict__.get("settings")), caplog.text]
    texts += [text for error in errors for text in (str(error), repr(error), repr(error.args))]
    assert not [text for text in texts if secret in text]
