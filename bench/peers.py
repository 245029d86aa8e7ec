"""What bulkmail is compared with: the transfer limit and the classic smtplib script.

Both run in the bench's own process and send to the sink over implicit TLS.
"""

from __future__ import annotations

import csv
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import premailer

TIMEOUT = 60.0  # seconds for any one socket operation: a hung sink fails the step


def read_rows(path: Path, limit: int | None = None) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        for index, row in enumerate(csv.DictReader(file)):
            if limit is not None and index >= limit:
                return
            yield row


def transfer_limit(
    *,
    port: int,
    ca_file: Path,
    username: str,
    password: str,
    sender: str,
    recipients: list[str],
    data: bytes,
    mail_options: tuple[str, ...] = (),
) -> float:
    """Send the same pre-built bytes to each recipient on one reused, verified SMTP_SSL
    connection with TCP_NODELAY: as fast as smtplib can put these mails on the wire.

    Returns the seconds from connecting to the last reply (QUIT included).
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    started = time.perf_counter()
    with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=TIMEOUT) as smtp:
        # Without it, multi-record TLS writes meet Nagle + delayed ACK: ~40 ms a mail.
        assert smtp.sock is not None  # connected by the constructor
        smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        smtp.login(username, password)
        for rcpt in recipients:
            smtp.sendmail(sender, [rcpt], data, mail_options=list(mail_options))
    return time.perf_counter() - started


class ClassicScript:
    """The script people write from the tutorials (like the seed demo): per mail, render,
    ``premailer.transform``, build with ``email.mime`` re-reading and re-encoding the
    attachment, open a new ``SMTP_SSL`` connection, log in, send, quit.

    As in that demo, ``SMTP_SSL`` gets no context: smtplib then makes its own unverified
    one per connection, which is cheaper than a verified one (so this favours the script).
    """

    def __init__(
        self,
        *,
        templates: Path,
        campaign: dict[str, Any],
        attachment: Path,
        port: int,
        username: str,
        password: str,
    ) -> None:
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True)
        self.template = self.env.get_template("june.html")
        self.subject = self.env.from_string(campaign["subject"])
        self.data = campaign["data"]
        self.sender = campaign["from"]
        self.attachment = attachment
        self.port = port
        self.username = username
        self.password = password

    def send_all(self, rows: list[dict[str, str]]) -> float:
        """Send one mail per row; return the seconds it took."""
        started = time.perf_counter()
        for row in rows:
            self.send_one(row)
        return time.perf_counter() - started

    def send_one(self, row: dict[str, str]) -> None:
        variables = {
            **self.data,
            **row,
            "unsubscribe_url": "https://example.com/unsubscribe?e=" + quote(row["email"]),
        }
        html = premailer.transform(self.template.render(variables))
        message = MIMEMultipart()
        message["From"] = self.sender
        message["To"] = formataddr((row["name"], row["email"]))
        message["Subject"] = self.subject.render(variables)
        message.attach(MIMEText(html, "html", "utf-8"))
        with self.attachment.open("rb") as file:
            part = MIMEApplication(file.read(), Name=self.attachment.name)
        part["Content-Disposition"] = f'attachment; filename="{self.attachment.name}"'
        message.attach(part)
        with smtplib.SMTP_SSL("127.0.0.1", self.port, timeout=TIMEOUT) as smtp:
            smtp.login(self.username, self.password)
            smtp.sendmail(self.sender, [row["email"]], message.as_string())
