"""Write small campaigns (YAML, CSV, templates, attachments) under a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

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
