"""Generate the benchmark's inputs: recipient lists, bulkmail campaigns, mailmerge's files.

Everything is made from the example newsletter in this repository (templates/june.html,
which extends base.html and includes _signoff.html, and the articles of
campaigns/june.yaml), so the bench measures the mail people would actually send.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "campaigns" / "june.yaml"
TEMPLATES = REPO / "templates"
PASSWORD_ENV = "BENCH_SMTP_PASSWORD"
UNSUBSCRIBE = "https://example.com/unsubscribe?e={{ email | urlencode }}"

# ASCII names: mailmerge hands smtplib the message as a str, which smtplib encodes as
# ASCII, so a non-ASCII To or Subject header crashes it. Cities (body only) may be
# non-ASCII, and some contain commas so the CSV has quoted fields.
FIRST = [
    "Jordan", "Patrick", "Amara", "Lena", "Priya", "Xiaoming", "Zoe", "Tomas", "Mei",
    "Olusegun", "Ingrid", "Mateo", "Aiko", "Farah", "Noah", "Siobhan", "Ravi", "Elena",
]  # fmt: skip
LAST = [
    "Miller", "O'Brien", "Okafor", "Hoffmann", "Raman", "Wang", "Lefevre", "Novak",
    "Tanaka", "Adeyemi", "Larsen", "Garcia", "Kowalski", "Haddad", "Smith", "Murphy",
]  # fmt: skip
CITIES = [
    "Portland, Oregon", "Cork", "Lagos", "Berlin", "Chennai", "Hangzhou", "Montréal",
    "Kraków", "Zürich", "São Paulo", "Porthaven", "Kyoto", "Bristol", "Austin, Texas",
]  # fmt: skip


@dataclass(frozen=True)
class Paths:
    """Where one benchmark's generated files live."""

    root: Path
    ca_file: Path
    attachment: Path


def example() -> dict[str, Any]:
    """The example campaign's YAML, as data."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def write_list(path: Path, count: int, *, seed: int = 2026) -> Path:
    """A recipient CSV of ``count`` distinct people (deterministic for a seed)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["email", "name", "first_name", "city", "plan"])
        for index in range(count):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            local = f"{first}.{last}".lower().replace("'", "")
            domain = rng.choice(("example.com", "example.org", "example.net"))
            writer.writerow(
                [
                    f"{local}.{index + 1}@{domain}",
                    f"{first} {last}",
                    first,
                    rng.choice(CITIES),
                    "member" if rng.random() < 0.6 else "guest",
                ]
            )
    tmp.replace(path)
    return path


def write_attachment(path: Path, size: int, *, seed: int = 465) -> Path:
    """A ``size``-byte file of random bytes behind a PDF header: incompressible, like a PDF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b"%PDF-1.4\n% bulkmail bench attachment\n"
    path.write_bytes(head + random.Random(seed).randbytes(max(size - len(head), 0)))
    return path


def write_templates(folder: Path) -> Path:
    """Copy the example newsletter's templates (june.html + base.html + _signoff.html)."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in TEMPLATES.glob("*.html"):
        shutil.copy(source, folder / source.name)
    return folder


# Per-recipient links of every kind premailer treats differently with a base URL: absolute
# with a value in the query, relative with values in the path and query, a value alone.
LINKS = """
            <p><a href="https://example.com/account?id={{ email | urlencode }}">Your account</a>
            &middot; <a href="/members/{{ plan }}?city={{ city | urlencode }}">Your plan</a>
            &middot; <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
"""
BASE_URL = "https://example.com/newsletter/june/"


def write_link_templates(folder: Path) -> Path:
    """The example newsletter with `LINKS` above its sign-off."""
    write_templates(folder)
    june = folder / "june.html"
    signoff = '{% include "_signoff.html" %}'
    june.write_text(june.read_text("utf-8").replace(signoff, LINKS + signoff), "utf-8")
    return folder


# The example newsletter written in Markdown (`markdown:` instead of `template:`, in the
# package's default layout): its greeting, articles, offer and sign-off.
MARKDOWN = """\
# The {{ month }} issue of The Lantern

Hello {{ first_name }},

Here is what we have been tasting and reading in {{ city }} and beyond this month.

{% for article in articles %}
## [{{ article.title }}]({{ article.url | safe }})

{{ article.summary }}

{% endfor %}
As a {{ plan }}, you get 10% off everything in the shop until the end of the month.

* Tea tastings every Saturday
* Book club on the first Thursday
* New opening hours from July

> A cup of tea is an excuse to share great thoughts.

Warmly, the Lantern team
"""


def write_markdown_templates(folder: Path) -> Path:
    """The example newsletter as a Markdown body, `MARKDOWN`, in ``folder``/june.md."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "june.md").write_text(MARKDOWN, "utf-8")
    return folder


def write_campaign(
    folder: Path,
    *,
    name: str,
    recipients: Path,
    templates: Path,
    port: int,
    ca_file: Path,
    username: str,
    attachment: Path | None,
    per_second: float = 0,
    burst: int | None = None,
    base_url: str | None = None,
    markdown: bool = False,
) -> Path:
    """A campaign YAML like campaigns/june.yaml, pointed at the sink; returns its path.
    ``markdown``: the body is ``templates``/june.md (`write_markdown_templates`).

    ``per_second: 0`` is bulkmail's "no rate limit".
    """
    source = example()
    folder.mkdir(parents=True, exist_ok=True)
    rate: dict[str, Any] = {"per_second": per_second}
    if burst is not None:
        rate["burst"] = burst
    campaign: dict[str, Any] = {
        "name": name,
        "from": source["from"],
        "reply_to": source.get("reply_to"),
        "subject": source["subject"],
        "template": str(templates / "june.html"),
        "recipients": str(recipients),
        "data": source["data"],
        "unsubscribe": {"url": UNSUBSCRIBE},
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "security": "ssl",
            "username": username,
            "password_env": PASSWORD_ENV,
            "ca_file": str(ca_file),
            "timeout": 60,
        },
        "rate": rate,
        "preview": {"out": str(folder / "previews")},
    }
    if base_url is not None:
        campaign["base_url"] = base_url
    if markdown:
        del campaign["template"]
        campaign["markdown"] = str(templates / "june.md")
    if campaign["reply_to"] is None:
        del campaign["reply_to"]
    if attachment is not None:
        campaign["attachments"] = [str(attachment)]
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def newsletter(
    folder: Path, *, name: str, rows: int, port: int, ca_file: Path, username: str
) -> Path:
    """The example newsletter without attachment for ``rows`` generated recipients, list,
    templates and campaign all in ``folder``; returns the campaign's path."""
    return write_campaign(
        folder,
        name=name,
        recipients=write_list(folder / "list.csv", rows),
        templates=write_templates(folder / "templates"),
        port=port,
        ca_file=ca_file,
        username=username,
        attachment=None,
    )


def journal_dir(campaign_yaml: Path) -> Path:
    """bulkmail keeps a campaign's journal here; the bench deletes it before each run."""
    return campaign_yaml.parent / ".bulkmail"


def write_mailmerge(folder: Path, *, port: int, username: str, recipients: Path) -> dict[str, Path]:
    """mailmerge's three files for the same newsletter, list and server, no attachment.

    mailmerge renders its template with Jinja (a FileSystemLoader on the template's
    folder, so the example's june.html can be included as it is), then parses the result
    as a mail: headers, a blank line, the body. It knows only the CSV row's columns, so
    the campaign-wide data (month, articles) and the unsubscribe link are set at the top.
    It neither inlines CSS nor adds a text part.
    """
    write_templates(folder)
    source = example()
    data = source["data"]
    sets = "".join(
        f"{{% set {key} = {json.dumps(value, ensure_ascii=True)} %}}" for key, value in data.items()
    )
    unsubscribe = json.dumps(UNSUBSCRIBE.split("{{")[0])
    sets += f"{{% set unsubscribe_url = {unsubscribe} ~ (email | urlencode) %}}"
    subject = source["subject"]
    template = folder / "mailmerge_template.txt"
    template.write_text(
        sets
        + '\nTO: "{{ name }}" <{{ email }}>\n'.lstrip("\n")
        + f"SUBJECT: {subject}\n"
        + f"FROM: {source['from']}\n"
        + f"REPLY-TO: {source.get('reply_to', source['from'])}\n"
        + "MIME-VERSION: 1.0\n"
        + "CONTENT-TYPE: text/html; charset=utf-8\n"
        + "\n"
        + '{% include "june.html" %}\n',
        encoding="utf-8",
    )
    config = folder / "mailmerge_server.conf"
    config.write_text(
        "[smtp_server]\n"
        "host = 127.0.0.1\n"
        f"port = {port}\n"
        "security = SSL/TLS\n"
        f"username = {username}\n"
        "ratelimit = 0\n",
        encoding="utf-8",
    )
    return {"template": template, "config": config, "database": recipients}
