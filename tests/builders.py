"""Build what tests feed bulkmail: small campaigns (YAML, CSV, templates, attachments)
under a temporary folder, recipient rows, SMTP settings for the test server, and
ready-made mails for the transport.

Shared by the test files, which never import each other.
"""

from __future__ import annotations

import email
import random
import textwrap
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml
from conftest import PASSWORD_ENV, USERNAME, Server, TLSPair

from bulkmail.compose.render import Renderer
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import OutgoingMail, Recipient, RenderedMail

HTML = """\
<!doctype html>
<html><head><meta charset="utf-8">
<style>
p.greeting { color: #c0392b; font-size: 18px; }
.button { background: #2c3e50 !important; color: #ffffff; }
@media only screen and (max-width: 600px) { .button { display: block !important; } }
</style></head>
<body>
<p class="greeting">Hello {{ first_name }},</p>
<p>Your city: {{ city }}. Month: {{ month }}.</p>
<p><a class="button" href="https://example.com/read?e={{ email | urlencode }}">Read</a></p>
</body></html>
"""

CSV_ROWS = [
    {"email": "alice@example.com", "name": "Alice Martin", "first_name": "Alice", "city": "Lyon"},
    {"email": "bob@example.org", "name": "Bob Stone", "first_name": "Bob", "city": "Leeds"},
    {"email": "wang@example.net", "name": "王小明", "first_name": "小明", "city": "杭州"},
]


def csv_text(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    """A CSV (with quoting) of ``rows``; ``columns`` defaults to the first row's keys."""
    import csv
    import io

    columns = columns or list(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(column, "") for column in columns])
    return buffer.getvalue()


class CampaignDir:
    """A campaign folder: ``campaigns/test.yaml``, ``campaigns/list.csv``, ``templates/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.campaigns = root / "campaigns"
        self.templates = root / "templates"
        self.campaigns.mkdir(parents=True, exist_ok=True)
        self.templates.mkdir(parents=True, exist_ok=True)
        self.settings: dict[str, Any] = {
            "name": "test-campaign",
            "from": "Bulkmail Team <news@example.com>",
            "subject": "{{ first_name }}, the {{ month }} issue",
            "template": "../templates/issue.html",
            "recipients": "list.csv",
            "data": {"month": "June"},
            "unsubscribe": {"url": "https://example.com/u?e={{ email | urlencode }}"},
            "preview": {"out": "../previews"},
            "rate": {"per_second": 0},  # no limit: tests send fast (the default is 1/s)
        }
        self.template("issue.html", HTML)
        self.csv(CSV_ROWS)

    @property
    def yaml_path(self) -> Path:
        return self.campaigns / "test.yaml"

    @property
    def csv_path(self) -> Path:
        return self.campaigns / "list.csv"

    def template(self, name: str, text: str) -> Path:
        path = self.templates / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def csv(self, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
        self.csv_path.write_text(csv_text(rows, columns), encoding="utf-8")
        return self.csv_path

    def file(self, relative: str, data: bytes | str) -> Path:
        path = self.campaigns / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode("utf-8")
        path.write_bytes(data)
        return path

    def write(self, **changes: Any) -> Path:
        """Write the YAML with ``changes`` applied (a value of None removes the key)."""
        for key, value in changes.items():
            key = "from" if key == "from_" else key
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = value
        text = yaml.safe_dump(self.settings, allow_unicode=True, sort_keys=False)
        self.yaml_path.write_text(text, encoding="utf-8")
        return self.yaml_path

    def raw(self, text: str) -> Path:
        """Write the YAML file as given, to test exact line numbers."""
        self.yaml_path.write_text(textwrap.dedent(text), encoding="utf-8")
        return self.yaml_path


# ---------------------------------------------------------------------------------------
# Recipient rows and SMTP settings
# ---------------------------------------------------------------------------------------


def people(n: int, start: int = 0) -> list[dict[str, str]]:
    """``n`` plain recipients, reader{start}@example.com onwards."""
    return [
        {
            "email": f"reader{i}@example.com",
            "name": f"Reader {i}",
            "first_name": f"R{i}",
            "city": "Lyon",
        }
        for i in range(start, start + n)
    ]


def smtp_settings(server: Server, tls: TLSPair, **extra: object) -> dict[str, object]:
    """The campaign YAML's ``smtp:`` section pointing at a test server, trusting its CA."""
    return {
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "username": USERNAME,
        "password_env": PASSWORD_ENV,
        "ca_file": str(tls.ca_file),
        "timeout": 5,
        **extra,
    }


# ---------------------------------------------------------------------------------------
# A template with every CSS hazard the skeleton inliner must match premailer on
# ---------------------------------------------------------------------------------------

TRICKY = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ month }} issue</title>
<style>
body { font-family: Georgia, serif; }
.container { width: 600px; }
tr + tr td { border-top: 1px solid #ddd; }
p ~ p { margin-top: 0; }
li:first-child { font-weight: bold; }
li:nth-child(2n) { color: #555; }
.vip { background: gold !important; }
.std { background: #eee; }
a[lang] { color: green; }
td[title] { padding: 4px; }
{% if plan == "member" %}.member-only { display: block; }{% endif %}
.accent { color: {{ accent }}; }
@media only screen and (max-width: 600px) { .container { width: 100% !important; } }
</style></head>
<body>
<table class="container">
<tr><td title="{{ city }}">Hello {{ first_name }}, from {{ city }}!</td></tr>
{% for article in articles %}
<tr><td><a href="{{ article.url }}?u={{ email | urlencode }}">{{ article.title }}</a>
<p>{{ article.summary }}</p><p>{{ note }}</p></td></tr>
{% endfor %}
</table>
<p class="{{ 'vip' if plan == 'member' else 'std' }}">Your plan: {{ plan }}</p>
<div class="member-only accent">{{ bio | safe }}</div>
<ul>{% for tag in tags.split(",") %}<li>{{ tag }}</li>{% endfor %}</ul>
<p><a href="mailto:{{ email }}">{{ email }}</a> &middot;
<img src="{{ avatar }}" alt="{{ name }}"></p>
<!-- sent to {{ email }} -->
</body></html>
"""

WORDS = ["tea", "books", "O'Brien & Co", "<b>bold</b>", "Zoë", "王小明", "a\nb", "", "  ",
         "x" * 300, "100% & more", "\"quoted\"", "tab\there", "=?utf-8?q?x?="]  # fmt: skip


def tricky_rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    """``n`` rows for `TRICKY`: markup, quotes, CJK and empty values, reproducibly mixed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = ",".join(rng.sample(["news", "<i>x</i>", "tea"], rng.randint(1, 2)))
        rows.append(
            {
                "email": f"user{i}@example.com",
                "name": rng.choice(["Ann", "Zoë Lefèvre", "王小明", "Pat O'Brien", "A & B"]),
                "first_name": rng.choice(WORDS[:6]) + str(i),
                "city": rng.choice(["Lyon", "O'Brien & Co", "王小明"]),
                "plan": rng.choice(["member", "guest"]),
                "note": rng.choice(WORDS),  # in text only: anything goes
                "bio": rng.choice(["<b>Reader</b>", "<i>since 2020</i>", ""]),
                "tags": tags,
                "accent": rng.choice(["red", "#123456"]),
                "avatar": rng.choice(["https://example.com/a.png", "a b.png", "/rel/x.png"]),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------
# Mails as the message builder hands them to a transport
# ---------------------------------------------------------------------------------------

SENDER = "news@example.com"


def make_mail(index: int, to: str | None = None, *, sender: str = SENDER) -> OutgoingMail:
    """A small mail for one recipient, as the message builder would hand it over."""
    to = to or f"reader{index}@example.org"
    smtputf8 = not (to + sender).isascii()
    message = EmailMessage(policy=policy.SMTPUTF8 if smtputf8 else policy.SMTP)
    message["From"] = f"Bulkmail Team <{sender}>"
    message["To"] = to
    message["Subject"] = f"Issue {index}"
    message["Message-ID"] = f"<{index}@bulkmail.test>"
    # A line starting with "." must survive dot-stuffing.
    message.set_content(f"Hello reader {index},\n.signature line\nBye\n")
    return OutgoingMail(
        index=index,
        recipient=Recipient(line=index + 1, email=to, name="", fields={"email": to}),
        sender=sender,
        message_id=message["Message-ID"],
        subject=message["Subject"],
        html="",
        data=message.as_bytes(),
        attachments=(),
        smtputf8=smtputf8,
    )


def parse_mail(data: bytes) -> EmailMessage:
    """A mail's bytes as the email package's modern API reads them."""
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def preview_mails(c: CampaignDir) -> list[EmailMessage]:
    """``bulkmail run campaigns/test.yaml --dry-run`` in the campaign's root (the working
    directory), and every .eml it wrote, parsed, in list order."""
    from typer.testing import CliRunner

    from bulkmail.cli.app import app

    result = CliRunner().invoke(app, ["run", "campaigns/test.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    return [parse_mail(p.read_bytes()) for p in sorted((c.root / "previews").glob("*.eml"))]


def rendered_fast_and_slow(
    campaign_file: Path,
) -> tuple[Renderer, list[tuple[Recipient, RenderedMail, RenderedMail]]]:
    """Each row of the campaign through the skeleton cache, with no safety net (the fast
    path alone must be exact), and inlined whole: the renderer and (row, fast, whole)."""
    campaign = load_campaign(campaign_file)
    fast, slow = Renderer.load(campaign), Renderer.load(campaign, fast=False)
    assert fast.skeletons is not None
    assert slow.skeletons is None
    fast.skeletons._check = 0
    found = []
    for recipient in iter_recipients(campaign.recipients):
        assert isinstance(recipient, Recipient)
        found.append((recipient, fast.render(recipient), slow.render(recipient)))
    return fast, found
