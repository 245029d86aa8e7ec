"""An SMTP sink for the benchmark: aiosmtpd on 127.0.0.1, implicit TLS, AUTH required.

It discards every message but counts it, with its size and arrival time, so the bench can
check that every mail arrived and measure the rate at the server. Run it as a separate
process; it is driven over stdin/stdout, one JSON object a line:

    python bench/sink.py --cert server.pem --key server.key --user U --password P
    -> {"port": 40123}             once it is listening
    <- reset                       forget what was counted
    <- stats                       -> {"count": ..., "bytes": ..., "logins": ..., "times": [...]}
    <- quit  (or end of stdin)     stop and exit

Arrival times are ``time.monotonic()`` when the message's DATA is complete: on Linux that
clock is system-wide, so the bench can compare it with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import ssl
import sys
import threading
import time
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Counter:
    """aiosmtpd handler: require the one account, count messages, keep nothing."""

    def __init__(
        self, user: str, password: str, per_connection: float = 0, pipelining: bool = False
    ) -> None:
        self.user = user.encode()
        # Say PIPELINING in the EHLO reply, as Postfix and the big providers do (aiosmtpd
        # reads pipelined commands in order, but does not advertise the extension).
        self.pipelining = pipelining
        self.password = password.encode()
        # Like a relay that throttles each connection: at most this many mails a second
        # on one connection (0: no limit); other connections are not held up.
        self.interval = 1.0 / per_connection if per_connection else 0.0
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.count = 0
            self.bytes = 0
            self.logins = 0
            self.failed_logins = 0
            self.recipients = 0
            self.times: list[float] = []

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "count": self.count,
                "bytes": self.bytes,
                "logins": self.logins,
                "failed_logins": self.failed_logins,
                "recipients": self.recipients,
                "times": list(self.times),
            }

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        with self.lock:
            if ok:
                self.logins += 1
            else:
                self.failed_logins += 1
        return AuthResult(success=ok, handled=False)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.interval:
            due = getattr(session, "bench_next", 0.0)
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            session.bench_next = max(due, time.monotonic()) + self.interval
        now = time.monotonic()
        with self.lock:
            self.count += 1
            self.bytes += len(envelope.content or b"")
            self.recipients += len(envelope.rcpt_tos)
            self.times.append(now)
        return "250 2.0.0 OK: discarded"


def free_port() -> int:
    # aiosmtpd's Controller checks that it is up by connecting to its port: it cannot
    # be given port 0, so find a free one first.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reply(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument(
        "--per-connection", type=float, default=0, help="at most this many mails/s a connection"
    )
    parser.add_argument("--pipelining", action="store_true", help="advertise PIPELINING")
    args = parser.parse_args()
    # aiosmtpd's own AUTH code logs a deprecation warning on every login.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    handler = Counter(args.user, args.password, args.per_connection, args.pipelining)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        ssl_context=context,  # implicit TLS, as on port 465
        authenticator=handler.authenticate,
        # aiosmtpd counts only STARTTLS as TLS: with implicit TLS it would not offer AUTH.
        auth_require_tls=False,
        server_hostname="sink.test",  # else it calls socket.getfqdn() per connection
        data_size_limit=64 * 1024 * 1024,
        ready_timeout=30.0,
    )
    controller.start()
    try:
        reply({"port": controller.port})
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                handler.reset()
                reply({"ok": True})
            elif command == "stats":
                reply(handler.snapshot())
            elif command == "quit":
                break
            else:
                reply({"error": f"unknown command {command!r}"})
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
