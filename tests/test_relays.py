"""Several SMTP relays (issue 14): `smtp:` as a list, mails shared by weight, each relay at
its own rate, a relay that fails set aside while the others carry the run.

Everything is measured at real aiosmtpd servers (conftest.py): which server got which
mail, and when it recorded it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from builders import CampaignDir, make_mail, smtp_settings
from conftest import (
    PASSWORD,
    USERNAME,
    Inbox,
    Received,
    Server,
    ServerFactory,
    TLSPair,
    free_port,
)

from bulkmail.deliver.outcome import Accepted, Refused, send_one
from bulkmail.deliver.ratelimit import NoLimit, TokenBucket
from bulkmail.deliver.relays import (
    Relay,
    RelayPool,
    relay_event_text,
    relay_passwords,
    relay_pool,
)
from bulkmail.deliver.smtp import SendCancelled
from bulkmail.errors import AuthError, ConfigError, ConnectError
from bulkmail.load.campaign import load_campaign
from bulkmail.models import Rate, SmtpSettings

Events = list[tuple[str, dict[str, Any]]]


# ---------------------------------------------------------------------------------------
# Loading `smtp:` as a list
# ---------------------------------------------------------------------------------------


def test_a_list_of_relays_loads_each_with_its_weight_and_rate(tmp_path: Path) -> None:
    path = CampaignDir(tmp_path).write(
        smtp=[
            {"host": "a.example.com", "username": "u1", "password_env": "PW_A", "weight": 2},
            {
                "host": "b.example.com",
                "port": 587,
                "security": "starttls",
                "username": "u2",
                "password_env": "PW_B",
                "rate": {"per_minute": 600, "burst": 3},
            },
        ]
    )
    campaign = load_campaign(path)
    a, b = campaign.relays
    assert campaign.smtp == a
    assert campaign.all_relays == (a, b)
    assert (a.name, a.weight, a.rate, a.password_env) == ("u1@a.example.com:465", 2.0, None, "PW_A")
    assert (b.name, b.weight, b.password_env) == ("u2@b.example.com:587", 1.0, "PW_B")
    assert b.rate == Rate(per_second=10.0, burst=3, text="600 per minute")


def test_one_relay_as_a_mapping_leaves_relays_empty(tmp_path: Path) -> None:
    path = CampaignDir(tmp_path).write(smtp={"host": "a.example.com", "weight": 3})
    campaign = load_campaign(path)
    assert campaign.relays == ()
    assert campaign.smtp is not None
    assert campaign.smtp.weight == 3.0
    assert campaign.all_relays == (campaign.smtp,)


RELAYS_YAML = """\
from: news@example.com
subject: Hello
template: ../templates/issue.html
recipients: list.csv
smtp:
  - host: a.example.com
    username: u1
    password_env: PW_A
  - host: b.example.com
    username: u2
    password_env: PW_B
  - host: c.example.com
    username: u3
{last}
"""


@pytest.mark.parametrize(
    ("last", "line", "message"),
    [
        ("    weight: 0", 14, "smtp[2].weight: must be a number above 0"),
        ("    weight: -1", 14, "smtp[2].weight: must be a number of at least 0"),
        ("    weight: many", 14, "smtp[2].weight: must be a number of at least 0, not str"),
        ("    password: hunter2", 14, "smtp[2].password: a password is never written"),
        ("    rate: {per_second: 1, per_hour: 2}", 14, "smtp[2].rate: give exactly one of"),
        ("    hots: c.example.com", 14, "smtp[2].hots: unknown key (did you mean 'host'?)"),
        ("    port: 70000", 14, "smtp[2].port: 70000: not a TCP port"),
        ("  - port: 25", 14, "smtp[3]: needs a 'host'"),
        ("  - host: a.example.com\n    username: u1", 14, "smtp[3]: u1@a.example.com:465 is"),
    ],
)
def test_a_wrong_relay_is_named_with_its_place(
    tmp_path: Path, last: str, line: int, message: str
) -> None:
    path = CampaignDir(tmp_path).raw(RELAYS_YAML.format(last=last))
    with pytest.raises(ConfigError) as info:
        load_campaign(path)
    assert message in str(info.value)
    assert info.value.where is not None
    assert (info.value.where.path, info.value.where.line) == (path, line)
    assert "hunter2" not in str(info.value)


def test_an_empty_list_of_relays_is_refused(tmp_path: Path) -> None:
    path = CampaignDir(tmp_path).write(smtp=[])
    with pytest.raises(ConfigError, match=r"smtp: an empty list") as info:
        load_campaign(path)
    assert info.value.where is not None
    assert info.value.where.line is not None
    lines = path.read_text().splitlines()
    assert lines[info.value.where.line - 1] == "smtp: []"


def test_a_relay_given_twice_is_refused(tmp_path: Path) -> None:
    relay = {"host": "a.example.com", "username": "u1"}
    path = CampaignDir(tmp_path).write(smtp=[relay, {**relay, "weight": 2}])
    with pytest.raises(ConfigError, match=r"smtp\[1\]: u1@a.example.com:465 is already smtp\[0\]"):
        load_campaign(path)


# ---------------------------------------------------------------------------------------
# The pool against real servers
# ---------------------------------------------------------------------------------------


def recipients(server: Server) -> list[str]:
    return server.inbox.recipients


def rate_at(messages: list[Received]) -> float:
    """Mails a second as the server saw them arrive, first to last."""
    times = [message.received_at for message in messages]
    return (len(times) - 1) / (times[-1] - times[0])


def settings(server: Server, tls: TLSPair, **overrides: Any) -> SmtpSettings:
    return server.settings(ca_file=tls.ca_file, **overrides)


def recorder(events: Events) -> Callable[[str, dict[str, Any]], None]:
    return lambda name, info: events.append((name, info))


def send_all(pool: RelayPool, count: int) -> list[str]:
    """Send ``count`` mails through ``pool``; return the replies."""
    with pool:
        return [pool.send(make_mail(i)) for i in range(count)]


def test_mails_are_shared_by_weight_and_interleaved(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    a, b = make_server("ssl"), make_server("starttls")
    pool = relay_pool(
        [settings(a, tls, weight=2), settings(b, tls, weight=1)], [PASSWORD, PASSWORD]
    )
    send_all(pool, 30)
    assert abs(len(a.inbox.messages) - 20) <= 1
    assert abs(len(b.inbox.messages) - 10) <= 1
    assert sorted(recipients(a) + recipients(b)) == sorted(
        make_mail(i).recipient.email for i in range(30)
    )
    assert pool.shares == {
        a.settings().name: len(a.inbox.messages),
        b.settings().name: len(b.inbox.messages),
    }
    assert pool.down == []
    # Smooth: never more than two mails in a row to the heavier relay, so B's wait
    # for its turn is short and both relays are busy all along.
    order = [f"reader{i}@example.org" in recipients(a) for i in range(30)]
    assert "AAA" not in "".join("A" if at_a else "B" for at_a in order)
    assert [c.number for c in a.inbox.connections] == [1]  # one login each, kept
    assert [c.number for c in b.inbox.connections] == [1]


def test_each_relay_keeps_its_own_rate(make_server: ServerFactory, tls: TLSPair) -> None:
    a, b = make_server("ssl"), make_server("ssl")
    fast = settings(a, tls, weight=2, rate=Rate(per_second=20.0))
    slow = settings(b, tls, weight=1, rate=Rate(per_second=10.0))
    pool = relay_pool([fast, slow], [PASSWORD, PASSWORD])
    started = time.monotonic()
    send_all(pool, 60)
    elapsed = time.monotonic() - started
    assert abs(len(a.inbox.messages) - 40) <= 1
    assert abs(len(b.inbox.messages) - 20) <= 1
    # Each relay at its own pace, never above it: 40 mails at 20/s and 20 at 10/s take
    # about two seconds side by side (one after the other would take four).
    assert 20 * 0.7 < rate_at(a.inbox.messages) <= 20 * 1.08
    assert 10 * 0.7 < rate_at(b.inbox.messages) <= 10 * 1.08
    assert 1.8 < elapsed < 3.5


def test_a_relay_refusing_the_login_is_set_aside_and_the_other_carries_the_run(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    a, b = make_server("ssl"), make_server("ssl")
    events: Events = []
    pool = relay_pool(
        [settings(a, tls), settings(b, tls)],
        ["wrong password", PASSWORD],
        on_event=recorder(events),
    )
    send_all(pool, 12)
    assert a.inbox.messages == []
    assert len(b.inbox.messages) == 12
    assert [(login.username, login.success) for login in a.inbox.logins] == [(USERNAME, False)]
    name = a.settings().name
    assert pool.down == [(name, pool.down[0][1])]
    assert "login refused" in pool.down[0][1]
    assert pool.shares == {name: 0, b.settings().name: 12}
    down = [info for kind, info in events if kind == "relay-down"]
    assert len(down) == 1
    assert down[0]["relay"] == name
    assert down[0]["left"] == [b.settings().name]
    text = relay_event_text("relay-down", down[0])
    assert text is not None
    assert text.startswith(f"relay {name} set aside: ")
    assert "login refused" in text
    assert "wrong password" not in text


GoAway = Callable[[], None]


@pytest.fixture
def stoppable(tls: TLSPair) -> Iterator[Callable[[], tuple[Server, GoAway]]]:
    """Implicit-TLS servers with AUTH, as make_server starts them, each with a way to make
    it go away in the middle of a run: its connections cut, then the server stopped."""
    controllers: list[Controller] = []

    def start() -> tuple[Server, GoAway]:
        inbox = Inbox()
        inbox.require_auth = True
        controller = Controller(
            inbox,
            hostname="127.0.0.1",
            port=free_port(),
            server_hostname="mx.test",
            ssl_context=tls.server,
            authenticator=inbox.authenticate,
            auth_require_tls=False,
        )
        controller.start()
        controllers.append(controller)

        def go_away() -> None:
            cut_connections(controller, inbox)
            controllers.remove(controller)
            controller.stop()

        return Server("127.0.0.1", controller.port, "ssl", True, inbox), go_away

    yield start
    for controller in controllers:
        controller.stop()


def cut_connections(controller: Controller, inbox: Inbox) -> None:
    """Abort every connection of the server (in its loop) and wait until each is gone:
    stopping the controller alone would leave them open, never answering."""
    sessions = list(inbox._by_server)

    def abort() -> None:
        for session in sessions:
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()

    controller.loop.call_soon_threadsafe(abort)
    deadline = time.monotonic() + 5
    while any(session.transport is not None for session in sessions):
        assert time.monotonic() < deadline, "the server's connections did not close"
        time.sleep(0.005)


def test_a_relay_that_goes_away_mid_run_hands_over_to_the_other(
    stoppable: Callable[[], tuple[Server, GoAway]], tls: TLSPair
) -> None:
    (a, go_away), (b, _) = stoppable(), stoppable()
    events: Events = []
    pool = relay_pool(
        [settings(a, tls, timeout=2.0), settings(b, tls, timeout=2.0)],
        [PASSWORD, PASSWORD],
        on_event=recorder(events),
        retry_delays=(0.05,),
    )
    replies = []
    with pool:
        for i in range(20):
            replies.append(pool.send(make_mail(i)))
            if i == 9:  # turn about: a has had 5 of the first 10
                assert len(a.inbox.messages) == 5
                go_away()
    everyone = [make_mail(i).recipient.email for i in range(20)]
    at_a, at_b = recipients(a), recipients(b)
    assert len(at_a) == 5
    assert sorted(at_a + at_b) == sorted(everyone)  # nobody lost, nobody twice
    assert len(set(at_a + at_b)) == 20
    assert pool.shares == {a.settings().name: 5, b.settings().name: 15}
    assert [name for name, _ in pool.down] == [a.settings().name]
    assert [info["relay"] for kind, info in events if kind == "relay-down"] == [a.settings().name]
    assert len(replies) == 20
    assert all(reply.startswith("250") for reply in replies)


def test_every_relay_refusing_the_login_stops_the_run_with_the_first_error(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    a, b = make_server("ssl"), make_server("starttls")
    events: Events = []
    pool = relay_pool(
        [settings(a, tls), settings(b, tls)], ["wrong", "also wrong"], on_event=recorder(events)
    )
    with pytest.raises(AuthError, match=f"{a.host}:{a.port}: login refused"):
        pool.open()
    assert [name for name, _ in pool.down] == [a.settings().name, b.settings().name]
    assert [
        kind for kind, _ in events if kind == "relay-down"
    ] == []  # the run says it stopped, and why: no "carrying on" to say
    pool.close()


def test_the_last_relay_failing_mid_run_raises_its_error_and_the_mail_is_nowhere(
    stoppable: Callable[[], tuple[Server, GoAway]], tls: TLSPair
) -> None:
    (a, stop_a), (b, stop_b) = stoppable(), stoppable()
    pool = relay_pool(
        [settings(a, tls, timeout=2.0), settings(b, tls, timeout=2.0)],
        [PASSWORD, PASSWORD],
        retry_delays=(0.05,),
    )
    with pool:
        pool.send(make_mail(0))
        pool.send(make_mail(1))
        stop_a()
        stop_b()
        outcome = send_one(pool, make_mail(2))
        with pytest.raises(ConnectError):  # and asked again: still the same answer
            pool.send(make_mail(3))
    assert type(outcome).__name__ == "Stopped"
    assert sorted(recipients(a) + recipients(b)) == [
        make_mail(0).recipient.email,
        make_mail(1).recipient.email,
    ]
    assert len(pool.down) == 2


def test_a_refused_recipient_fails_its_row_and_the_relay_stays_in_use(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    a, b = make_server("ssl"), make_server("ssl")
    refused = make_mail(1).recipient.email
    a.inbox.faults.refuse[refused] = "550 5.1.1 No such user"
    b.inbox.faults.refuse[refused] = "550 5.1.1 No such user"
    pool = relay_pool([settings(a, tls), settings(b, tls)], [PASSWORD, PASSWORD])
    with pool:
        outcomes = [send_one(pool, make_mail(i)) for i in range(6)]
    assert isinstance(outcomes[1], Refused)
    assert outcomes[1].permanent
    assert all(isinstance(outcomes[i], Accepted) for i in (0, 2, 3, 4, 5))
    assert pool.down == []
    assert len(a.inbox.messages) + len(b.inbox.messages) == 5
    assert refused not in recipients(a) + recipients(b)
    assert sum(pool.shares.values()) == 5


def test_a_stop_during_a_relays_wait_gives_the_mail_up_unsent(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    a = make_server("ssl")
    stop = threading.Event()
    pool = relay_pool(
        [settings(a, tls, rate=Rate(per_second=0.2))], [PASSWORD], sleep=stop.wait, stop=stop
    )
    with pool:
        pool.send(make_mail(0))
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(SendCancelled, match="stopped while waiting"):
            pool.send(make_mail(1))
        timer.join()
    assert time.monotonic() - started < 2.0  # not the five seconds the rate asks
    assert recipients(a) == [make_mail(0).recipient.email]


def test_the_next_mail_is_got_ready_only_if_any_relay_could_start_it_at_once(
    make_server: ServerFactory, tls: TLSPair
) -> None:
    """``after_data`` (the run marks the next mail there) is called while a relay's server
    reads a mail, but only when every live relay's rate would let the next one start
    then: whichever relay it goes to, it must not wait once marked."""
    a, b = make_server("ssl"), make_server("ssl")
    calls: list[int] = []

    def after_data() -> None:
        calls.append(1)

    unpaced = relay_pool([settings(a, tls), settings(b, tls)], [PASSWORD, PASSWORD])
    with unpaced:
        for i in range(4):
            unpaced.send(make_mail(i), after_data=after_data)
    assert len(calls) == 4

    calls.clear()
    paced = settings(a, tls, rate=Rate(per_second=0.5))  # its next mail waits two seconds
    pool = relay_pool([paced, settings(b, tls)], [PASSWORD, PASSWORD])
    with pool:
        for i in range(4, 6):
            pool.send(make_mail(i), after_data=after_data)
    assert calls == []
    assert len(a.inbox.messages) + len(b.inbox.messages) == 6


class Scripted:
    """A Transport that fails as told, for what the servers cannot easily be made to do."""

    def __init__(self, fail_open: Exception | None = None) -> None:
        self.fail_open = fail_open
        self.sent: list[str] = []
        self.closed = 0

    def open(self) -> None:
        if self.fail_open is not None:
            raise self.fail_open

    def send(self, mail: Any) -> str:
        self.sent.append(mail.recipient.email)
        return "250 OK"

    def close(self) -> None:
        self.closed += 1
        if self.fail_open is not None:
            raise ConnectError("already gone")

    def __enter__(self) -> Scripted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_unequal_weights_hold_over_a_long_run_and_after_a_relay_goes() -> None:
    ones = [SmtpSettings(f"h{i}.example.com", 465, weight=w) for i, w in enumerate((5, 3, 1))]
    transports = [Scripted(), Scripted(), Scripted(ConnectError("h2: connection refused"))]
    pool = RelayPool([Relay(s, t) for s, t in zip(ones, transports, strict=True)])
    pool.open()
    for i in range(800):
        pool.send(make_mail(i))
    assert [len(t.sent) for t in transports] == [500, 300, 0]
    assert pool.down == [(ones[2].name, "h2: connection refused")]
    pool.close()  # a set-aside relay's failure to close is not worth a word
    assert transports[2].closed >= 1


def test_a_relay_is_paced_by_its_own_limiter() -> None:
    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    a, b = SmtpSettings("a.example.com", 465), SmtpSettings("b.example.com", 465)
    pool = RelayPool(
        [
            Relay(a, Scripted(), TokenBucket(2.0, clock=lambda: clock[0], sleep=sleep)),
            Relay(b, Scripted(), NoLimit()),
        ]
    )
    with pool:
        for i in range(6):
            pool.send(make_mail(i))
    assert slept == [0.5, 0.5]  # a's three mails, half a second apart; b never waits


def test_each_relay_has_its_own_password_and_a_prompt_names_the_relay() -> None:
    a = SmtpSettings("a.example.com", 465, username="u", password_env="PW_A")
    b = SmtpSettings("b.example.com", 587, username="u", password_env="PW_B")
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    assert relay_passwords([a, b], environ={"PW_A": "one"}, prompt=prompt) == ["one", "typed"]
    assert asked == ["SMTP password for relay u@b.example.com:587: "]
    with pytest.raises(AuthError, match=r"b\.example\.com:587: no password for u: set .* PW_B"):
        relay_passwords([a, b], environ={"PW_A": "one"})


def test_relays_loaded_from_a_campaign_carry_its_mails(
    make_server: ServerFactory, tls: TLSPair, tmp_path: Path
) -> None:
    a, b = make_server("ssl"), make_server("starttls")
    path = CampaignDir(tmp_path).write(
        smtp=[
            smtp_settings(a, tls, weight=3, password_env="PW_A"),
            smtp_settings(b, tls, password_env="PW_B", rate={"per_second": 50}),
        ]
    )
    relays = load_campaign(path).relays
    passwords = relay_passwords(relays, environ={"PW_A": PASSWORD, "PW_B": PASSWORD})
    send_all(relay_pool(relays, passwords), 8)
    assert (len(a.inbox.messages), len(b.inbox.messages)) == (6, 2)
