# ruff: noqa: RUF001 -- Chinese text is written with full-width punctuation
"""Markdown campaigns (issue 10, part 2): ``markdown: body.md`` (Jinja first, values
escaped as Markdown, then CommonMark) makes the HTML part inside a layout, CSS inlined, and
the text part from the Markdown itself; through check, --dry-run and a real send."""

from __future__ import annotations

import itertools
from email.message import EmailMessage
from pathlib import Path

import pytest
from builders import CampaignDir, preview_mails, rendered_fast_and_slow, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.compose.markdown import escape_markdown, to_html, to_html_and_text, to_text
from bulkmail.compose.render import Renderer
from bulkmail.models import RenderedMail
from bulkmail.pipeline import check_campaign

runner = CliRunner()

BODY = """\
# The {{ month }} issue

Hello {{ first_name }}, news from **{{ city }}**.

- [Read the programme](https://example.com/programme)
- Our *new* shop

> A quote
> on two lines

{{ note }}
"""

CHINESE = """\
# {{ month }}通讯

{{ first_name }}，你好！来自{{ city }}的消息。

1. [阅读全文](https://example.com/全文)
2. 新书上架

谢谢阅读。
"""


@pytest.fixture
def c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignDir:
    """A Markdown campaign of 3 rows (one Chinese); the working directory is its root."""
    monkeypatch.chdir(tmp_path)
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.md", BODY)
    rows = [
        {"email": "alice@example.com", "name": "Alice", "first_name": "Alice", "city": "Lyon",
         "note": "See you soon."},
        {"email": "bob@example.org", "name": "Bob", "first_name": "Bob", "city": "Leeds",
         "note": "[win a prize](https://evil.example) <b>bold</b> **loud** &copy; # no"},
        {"email": "wang@example.net", "name": "王小明", "first_name": "小明", "city": "杭州",
         "note": "再见。"},
    ]  # fmt: skip
    campaign.csv(rows)
    campaign.write(template=None, markdown="../templates/issue.md")
    return campaign


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and HTML parts, checked to be utf-8 alternatives."""
    found = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            assert part.get_content_charset() == "utf-8"
            assert isinstance(part, EmailMessage)
            found[part.get_content_type()] = part.get_content().replace("\r\n", "\n")
    return found["text/plain"], found["text/html"]


def test_check_builds_every_mail_with_no_warning(c: CampaignDir) -> None:
    report = check_campaign(c.yaml_path, workers=0)

    assert report.mails == 3
    assert [f.rule for f in report.lint] == []


def test_the_html_part_is_commonmark_in_the_default_layout_with_css_inlined(
    c: CampaignDir,
) -> None:
    alice = preview_mails(c)[0]

    assert alice.get_content_type() == "multipart/alternative"
    _, html = parts(alice)
    assert "<h1" in html
    assert "The June issue</h1>" in html
    assert "<strong>Lyon</strong>" in html
    assert '<a href="https://example.com/programme"' in html
    assert "<blockquote" in html
    assert 'width="600"' in html
    assert "@media only screen and (max-width: 600px)" in html  # phones: the full width
    assert "prefers-color-scheme: dark" in html  # stays in a <style> block
    assert 'name="viewport"' in html
    assert "https://example.com/u?e=alice%40example.com" in html  # the footer's link


def test_the_text_part_is_the_markdown_as_text(c: CampaignDir) -> None:
    text, _ = parts(preview_mails(c)[0])

    assert text == (
        "The June issue\n\n"
        "Hello Alice, news from Lyon.\n\n"
        "* Read the programme (https://example.com/programme)\n"
        "* Our new shop\n\n"
        "> A quote\n> on two lines\n\n"
        "See you soon.\n\n"
        "Unsubscribe: https://example.com/u?e=alice%40example.com\n"
    )


def test_a_csv_value_cannot_inject_markdown_links_or_html(c: CampaignDir) -> None:
    text, html = parts(preview_mails(c)[1])

    assert "evil.example" not in html.replace(
        "[win a prize](https://evil.example)", ""
    )  # only as the literal text
    assert 'href="https://evil.example' not in html
    assert "<b>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<strong>loud</strong>" not in html
    assert "&amp;copy;" in html
    value = "[win a prize](https://evil.example) <b>bold</b> **loud** &copy; # no"
    assert value in text


def test_a_chinese_markdown_newsletter_with_a_pdf(c: CampaignDir) -> None:
    c.template("issue.md", CHINESE)
    c.file("files/guide.pdf", b"%PDF-1.4 test\n")
    c.write(attachments=["files/guide.pdf"], data={"month": "六月"})

    wang = preview_mails(c)[2]

    assert wang.get_content_type() == "multipart/mixed"
    kinds = [p.get_content_type() for p in wang.iter_parts()]
    assert kinds == ["multipart/alternative", "application/pdf"]
    text, html = parts(wang)
    assert text.startswith("六月通讯\n\n小明，你好！来自杭州的消息。\n\n1. 阅读全文 (")
    assert "2. 新书上架\n\n谢谢阅读。\n" in text
    assert "六月通讯</h1>" in html
    assert "<ol" in html


def test_a_layout_of_ones_own_replaces_the_default(c: CampaignDir) -> None:
    c.template(
        "mine.html",
        "<!doctype html><html><head><style>.mine { color: #123456; }</style></head>"
        '<body><div class="mine">{{ content }}</div><p>{{ subject }}</p></body></html>\n',
    )
    c.write(layout="../templates/mine.html")

    _, html = parts(preview_mails(c)[0])

    assert 'style="color:#123456"' in html
    assert "The June issue</h1>" in html
    assert "<p>Alice, the June issue</p>" in html
    assert 'width="600"' not in html


def test_a_layout_without_content_is_an_error_naming_the_setting(c: CampaignDir) -> None:
    c.template("bare.html", "<!doctype html><html><body><p>Nothing here</p></body></html>\n")
    c.write(layout="../templates/bare.html")

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 1
    assert "test.yaml:" in result.output
    assert "layout" in result.output
    assert "has no {{ content }}" in result.output
    assert "Traceback" not in result.output


def test_a_real_send_delivers_markdown_mails(
    c: CampaignDir, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c.write(smtp=smtp_settings(smtpd, tls))

    result = runner.invoke(app, ["run", "campaigns/test.yaml", "--yes"])

    assert result.exit_code == 0, result.output
    by_rcpt = {m.rcpt_tos[0]: m.parsed() for m in smtpd.inbox.messages}
    assert len(by_rcpt) == 3
    text, html = parts(by_rcpt["wang@example.net"])
    assert "小明, news from 杭州." in text
    assert "<strong>杭州</strong>" in html


def test_a_template_error_names_the_markdown_line_and_the_row(c: CampaignDir) -> None:
    c.template("issue.md", "# Hi\n\nHello {{ frist_name }}\n")

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 1
    assert "templates/issue.md:3" in result.stderr
    assert "frist_name" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"template": "../templates/issue.html"}, "template and markdown"),
        ({"markdown": None, "layout": "../templates/issue.html"}, "a layout wraps"),
    ],
)
def test_conflicting_body_settings_are_one_line_errors(
    c: CampaignDir, changes: dict[str, str | None], message: str
) -> None:
    c.write(**changes)

    result = runner.invoke(app, ["check", "campaigns/test.yaml"])

    assert result.exit_code == 1
    assert message in result.stderr
    assert "campaigns/test.yaml:" in result.stderr
    assert [line for line in result.stderr.splitlines() if "error" in line] == [
        result.stderr.splitlines()[0]
    ]


def test_escaping_shows_every_value_as_written() -> None:
    for value in ["a_b*c*", "1. not a list", "# not a heading", "<i>x</i>", "\\[x\\]", "100%"]:
        source = escape_markdown(value)
        assert to_text(source) == value + "\n"
        assert "<i>" not in to_html(source)


# --- the skeleton cache -------------------------------------------------------------------

# Values in every kind of place Markdown gives them: a heading, a line's start and end, an
# emphasis, a link's text, a code span, after "&" (an entity with what follows), a list.
CACHED = """\
# {{ month }} for {{ first_name }}

{{ first_name }} from *{{ city }}*, **{{ note }}**_{{ note }}_ and {{ note }}.
{{ note }}. is a line that starts with a value
Ends with {{ note }}
[{{ note }}](https://example.com/{{ note }}) and `{{ note }}` and &{{ note }};

- {{ city }}
- item {{ note }}

{{ note }}
"""

NOTES = [
    "plain", "Zoë", "王小明", "2025", "1", "amp", "copy", "  indented", "x  ", "tab\there",
    "«quoted»", "[x]", "a\n\nb", "a\nb", "*", "_", "**bold**", "<b>", "&amp;", "https://x.y/",
    "# h", "- item", "> q", "---", "a\\", "`code`", "", " ", "é" * 30, "\ue000", "x\ue001y",
]  # fmt: skip


def rendered_both_ways(
    c: CampaignDir, rows: list[dict[str, str]]
) -> tuple[Renderer, list[tuple[RenderedMail, RenderedMail]]]:
    """`CACHED` for each row, through the skeleton cache and inlined whole."""
    c.template("issue.md", CACHED)
    c.csv(rows)
    fast, found = rendered_fast_and_slow(c.write(template=None, markdown="../templates/issue.md"))
    return fast, [(got, want) for _, got, want in found]


def test_markdown_through_the_skeleton_cache_is_as_inlined_whole(c: CampaignDir) -> None:
    rows = [
        {"email": f"u{i}@example.com", "first_name": f"U{i}", "city": city, "note": note}
        for i, (note, city) in enumerate(
            itertools.product(NOTES, ["Lyon", "São Paulo", "a*b", "1."])
        )
    ]
    fast, pairs = rendered_both_ways(c, rows)

    for (got, want), row in zip(pairs, rows, strict=True):
        assert (got.html, got.text) == (want.html, want.text), row
    stats = fast.skeletons.stats if fast.skeletons else None
    assert stats is not None
    # Most rows take the cache; the values whose marks change how Markdown reads the
    # text around them (a digit that starts a list, an entity, a value in a URL...) and
    # those holding a marker character are inlined whole.
    assert stats.hits > len(rows) // 2, stats
    assert stats.slow > 0, stats


def test_a_markdown_newsletter_runs_premailer_once_per_skeleton(c: CampaignDir) -> None:
    rows = [
        {"email": f"u{i}@example.com", "first_name": f"Reader{i}", "city": "Lyon", "note": f"n{i}"}
        for i in range(40)
    ]
    fast, pairs = rendered_both_ways(c, rows)

    assert all((got.html, got.text) == (want.html, want.text) for got, want in pairs)
    assert fast.skeletons is not None
    assert (fast.skeletons.stats.misses, fast.skeletons.stats.slow) == (1, 0)
    assert "Reader39" in pairs[-1][0].html


def test_a_layout_that_writes_content_safe_keeps_the_cache(c: CampaignDir) -> None:
    c.template(
        "mine.html",
        "<!doctype html><html><head><title>{{ subject }}</title>"
        "<style>.mine { color: #123456; }</style></head>"
        '<body><div class="mine">{{ content | safe }}</div></body></html>\n',
    )
    c.template("issue.md", CACHED)
    rows = [
        {"email": f"u{i}@example.com", "first_name": f"R{i}", "city": "Lyon", "note": f"n{i}"}
        for i in range(20)
    ]
    c.csv(rows)
    path = c.write(template=None, markdown="../templates/issue.md", layout="../templates/mine.html")
    fast, found = rendered_fast_and_slow(path)
    assert all((got.html, got.text) == (want.html, want.text) for _, got, want in found)
    assert fast.skeletons is not None
    assert (fast.skeletons.stats.misses, fast.skeletons.stats.slow) == (1, 0)
    assert 'class="mine" style="color:#123456"' in found[-1][1].html


@pytest.mark.parametrize("note", NOTES)
def test_one_parse_gives_the_html_and_the_text(note: str) -> None:
    source = CACHED.replace("{{ note }}", escape_markdown(note)).replace("{{", "").replace("}}", "")
    assert to_html_and_text(source) == (to_html(source), to_text(source))


MARKDOWNISH = st.text(
    st.sampled_from("aZ9 \n\t.-*_#>[]()!&;`\\<\"'1)é王«—\ue000"), min_size=0, max_size=10
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MARKDOWNISH, min_size=3, max_size=3))
def test_any_values_in_markdown_come_out_as_inlined_whole(
    tmp_path_factory: pytest.TempPathFactory, values: list[str]
) -> None:
    c = CampaignDir(tmp_path_factory.mktemp("md"))
    first, city, note = values
    first = first.replace("\n", " ").strip() or "x"  # in the subject too: one line
    rows = [
        {"email": "a@example.com", "first_name": first, "city": city, "note": note},
        {"email": "b@example.com", "first_name": "Ann", "city": note, "note": city},
    ]
    _, pairs = rendered_both_ways(c, rows)
    for got, want in pairs:
        assert (got.html, got.text) == (want.html, want.text)
