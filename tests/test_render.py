"""Rendering: Jinja with StrictUndefined and HTML autoescape, CSS inlining, the text part."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import jinja2
import lxml.html
import pytest
from builders import CSV_ROWS, CampaignDir

from bulkmail import (
    Location,
    PreflightError,
    Recipient,
    TemplateError,
    check_campaign,
    load_campaign,
)
from bulkmail.compose.message import MessageBuilder
from bulkmail.compose.render import Renderer
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import RenderedMail

LINKS = """\
<!doctype html>
<html><head><meta charset="utf-8"></head><body>
<p><a id="about" href="/about">About us</a></p>
<p><a id="archive" href="archive/june.html">Archive</a></p>
<p><a id="top" href="#articles">Articles</a></p>
<p><a id="abs" href="https://other.example/x?a=1">Elsewhere</a></p>
<p><a id="mail" href="mailto:editor@example.com">Write to us</a></p>
<p><img id="logo" src="img/logo.png" alt="Logo"></p>
</body></html>
"""


def recipients(campaign_dir: CampaignDir) -> list[Recipient]:
    campaign = load_campaign(campaign_dir.yaml_path)
    return [row for row in iter_recipients(campaign.recipients) if isinstance(row, Recipient)]


def render_all(campaign_dir: CampaignDir) -> list[RenderedMail]:
    """Render every recipient of the campaign, as the pipeline does."""
    campaign = load_campaign(campaign_dir.yaml_path)
    renderer = Renderer.load(campaign)
    return [renderer.render(recipient) for recipient in recipients(campaign_dir)]


def parsed_mails(campaign_dir: CampaignDir) -> list[EmailMessage]:
    """Render and build every mail, then parse its bytes back as a mail client would."""
    campaign = load_campaign(campaign_dir.yaml_path)
    renderer = Renderer.load(campaign)
    builder = MessageBuilder.load(campaign)
    parser = BytesParser(policy=email.policy.default)
    return [
        parser.parsebytes(builder.build(index, recipient, renderer.render(recipient)).data)
        for index, recipient in enumerate(recipients(campaign_dir), start=1)
    ]


def body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def element(html: str, element_id: str) -> lxml.html.HtmlElement:
    found = lxml.html.fromstring(html).get_element_by_id(element_id)
    assert found is not None
    return found


def style_of(html: str, xpath: str) -> str:
    (node,) = lxml.html.fromstring(html).xpath(xpath)
    return str(node.get("style", ""))


# --- autoescaping ---------------------------------------------------------------------------


def test_csv_markup_is_escaped_in_html_and_literal_in_text(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv(
        [{**CSV_ROWS[0], "first_name": "<script>alert(1)</script>", "city": "<b>Lyon</b> & co"}]
    )
    campaign.write(subject="The June issue")

    (msg,) = parsed_mails(campaign)

    html = body(msg, "html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;Lyon&lt;/b&gt; &amp; co" in html
    assert "<script" not in html
    assert "<b>" not in html
    document = lxml.html.fromstring(html)
    assert document.xpath("//script|//b") == []
    text = body(msg, "plain")
    assert "<script>alert(1)</script>" in text
    assert "<b>Lyon</b> & co" in text
    assert "&lt;" not in text
    assert "&amp;" not in text


def test_subject_is_not_html_escaped(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([{**CSV_ROWS[0], "first_name": "Tom & <Jerry>"}])
    campaign.write()

    (rendered,) = render_all(campaign)

    assert rendered.subject == "Tom & <Jerry>, the June issue"


# --- StrictUndefined --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "use",
    [
        "{{ first_nme }}",
        "{{ first_nme | upper }}",
        "{% if first_nme %}yes{% endif %}",
        "{% for article in first_nme %}{{ article }}{% endfor %}",
    ],
)
def test_undefined_variable_is_an_error_naming_template_line_and_row(
    tmp_path: Path, use: str
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", f"<html><body>\n<p>Hello</p>\n<p>{use}</p>\n</body></html>\n")
    campaign.write()
    renderer = Renderer.load(load_campaign(campaign.yaml_path))
    first = recipients(campaign)[0]

    with pytest.raises(TemplateError) as caught:
        renderer.render(first)

    message = str(caught.value)
    assert "'first_nme' is undefined" in message
    assert "issue.html:3" in message
    assert "list.csv:2" in message


def test_undefined_variable_is_reported_once_for_all_rows_by_the_preflight(
    tmp_path: Path,
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", "<p>{{ first_nme }}</p>\n")
    campaign.write()

    with pytest.raises(PreflightError) as caught:
        check_campaign(campaign.yaml_path)

    (problem,) = caught.value.problems
    assert isinstance(problem, TemplateError)
    assert problem.message == "'first_nme' is undefined"
    assert problem.where is not None
    assert (Path(problem.where.path), problem.where.line) == (campaign.templates / "issue.html", 1)
    assert problem.row == Location(campaign.csv_path, 2)
    assert problem.more_rows == 2


def test_undefined_variable_in_subject_names_the_campaign_line(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(subject="{{ frist_name }}, the June issue")
    renderer = Renderer.load(load_campaign(campaign.yaml_path))

    with pytest.raises(TemplateError) as caught:
        renderer.render(recipients(campaign)[0])

    assert caught.value.message == "'frist_name' is undefined"
    where = caught.value.where
    assert where is not None
    assert (Path(where.path), where.line, where.field) == (campaign.yaml_path, 3, "subject")
    assert caught.value.row == Location(campaign.csv_path, 2)


# --- extends / include --------------------------------------------------------------------------


def test_templates_extend_and_include_from_the_template_folder(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template(
        "base.html",
        """\
        <html><body>
        <h1>The Lantern</h1>
        {% block content %}{% endblock %}
        {% include "partials/footer.html" %}
        </body></html>
        """,
    )
    (campaign.templates / "partials").mkdir()
    campaign.template("partials/footer.html", '<p id="footer">Sent to {{ name }}</p>\n')
    campaign.template(
        "issue.html",
        """\
        {% extends "base.html" %}
        {% block content %}<p id="greeting">Hello {{ first_name }}</p>{% endblock %}
        """,
    )
    campaign.csv([{**CSV_ROWS[0], "name": "Alice <i>M</i>"}])
    campaign.write()

    (rendered,) = render_all(campaign)

    assert "<h1>The Lantern</h1>" in rendered.html
    assert element(rendered.html, "greeting").text_content() == "Hello Alice"
    footer = element(rendered.html, "footer")
    assert footer.text_content() == "Sent to Alice <i>M</i>"  # included HTML is escaped too
    assert len(footer) == 0


def test_missing_included_template_is_found_when_loading(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", '<p>{% include "partials/missing.html" %}</p>\n')
    campaign.write()

    with pytest.raises(TemplateError, match=r"'partials/missing\.html' is not in the template"):
        Renderer.load(load_campaign(campaign.yaml_path))


# --- CSS inlining ------------------------------------------------------------------------------


def test_css_is_inlined_into_style_attributes(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    rendered = render_all(campaign)[0]

    greeting = style_of(rendered.html, "//p[@class='greeting']")
    assert "color:#c0392b" in greeting.replace(" ", "")
    assert "font-size:18px" in greeting.replace(" ", "")
    assert style_of(rendered.html, "//p[not(@class)][1]") == ""


def test_media_rules_stay_in_a_style_block_and_important_is_kept(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    rendered = render_all(campaign)[0]

    document = lxml.html.fromstring(rendered.html)
    styles = " ".join(node.text_content() for node in document.xpath("//style"))
    assert "@media only screen and (max-width: 600px)" in styles
    assert "display: block !important" in styles
    assert "p.greeting" not in styles  # inlined rules leave the block
    (button,) = document.xpath("//a[@class='button']")  # the class the @media rule needs
    assert "background:#2c3e50 !important" in button.get("style").replace(": ", ":")


def test_relative_links_and_images_become_absolute_with_base_url(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", LINKS)
    campaign.write(base_url="https://example.com/news/")

    html = render_all(campaign)[0].html

    assert element(html, "about").get("href") == "https://example.com/about"
    assert element(html, "archive").get("href") == "https://example.com/news/archive/june.html"
    assert element(html, "logo").get("src") == "https://example.com/news/img/logo.png"
    assert element(html, "abs").get("href") == "https://other.example/x?a=1"
    assert element(html, "mail").get("href") == "mailto:editor@example.com"


def test_links_are_left_alone_without_base_url(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", LINKS)
    campaign.write()

    html = render_all(campaign)[0].html

    assert element(html, "about").get("href") == "/about"
    assert element(html, "logo").get("src") == "img/logo.png"


def test_in_page_anchor_links_stay_in_page_with_base_url(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", LINKS)
    campaign.write(base_url="https://example.com/news/")

    html = render_all(campaign)[0].html

    assert element(html, "top").get("href") == "#articles"


def test_doctype_survives_css_inlining(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    html = render_all(campaign)[0].html

    assert html.lstrip().lower().startswith("<!doctype html>")


# --- the plain-text part -----------------------------------------------------------------------


def test_text_part_derived_from_html_keeps_link_urls(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    alice, bob, wang = render_all(campaign)

    assert "https://example.com/read?e=alice%40example.com" in alice.text
    assert "Hello Alice," in alice.text
    assert "Your city: Lyon. Month: June." in alice.text
    assert "https://example.com/read?e=bob%40example.org" in bob.text
    assert "Hello 小明," in wang.text
    assert "<p" not in alice.text
    assert "color" not in alice.text  # the <style> block is not text


def test_text_part_links_are_absolute_with_base_url(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", LINKS)
    campaign.write(base_url="https://example.com/news/")

    text = render_all(campaign)[0].text

    assert "https://example.com/about" in text
    assert "https://example.com/news/archive/june.html" in text


@pytest.mark.parametrize(
    "name",
    [
        "issue.txt",
        "issue.text",
        "issue.txt.j2",
    ],
)
def test_text_template_is_used_and_not_autoescaped(tmp_path: Path, name: str) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([{**CSV_ROWS[0], "city": "Tom & Jerry <Lyon>"}])
    campaign.template(name, "TEXT EDITION\nHello {{ first_name }} in {{ city }}\n")
    campaign.write(text_template=f"../templates/{name}")

    (msg,) = parsed_mails(campaign)

    assert body(msg, "plain") == "TEXT EDITION\nHello Alice in Tom & Jerry <Lyon>\n"
    assert "Tom &amp; Jerry &lt;Lyon&gt;" in body(msg, "html")


# --- variables ---------------------------------------------------------------------------------


def test_csv_column_wins_over_campaign_data(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv(
        [
            {**CSV_ROWS[0], "month": "July"},
            {**CSV_ROWS[1], "month": "August"},
        ]
    )
    campaign.write(data={"month": "June", "issue_no": 42}, subject="{{ month }} #{{ issue_no }}")

    alice, bob = render_all(campaign)

    assert alice.subject == "July #42"
    assert bob.subject == "August #42"
    assert "Month: July." in alice.html
    assert "Month: August." in bob.html


def test_campaign_data_fills_variables_the_csv_lacks(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    alice = render_all(campaign)[0]

    assert alice.subject == "Alice, the June issue"
    assert "Month: June." in alice.html


GLOBALS_HTML = """<html><head><style>p { color: #333; }</style></head><body>
{% set ns = namespace(total=0) %}
{% for i in range(3) %}{% set ns.total = ns.total + i %}{% endfor %}
{% set row = cycler("odd", "even") %}
<p class="{{ row.next() }}">Hello {{ first_name }}, total {{ ns.total }}</p>
<p class="{{ row.next() }}">{{ dict(a=1) | length }} {{ joiner(",")() }}end</p>
</body></html>
"""


@pytest.mark.parametrize("fast", [True, False])
def test_jinja_globals_are_there_in_every_template(
    tmp_path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each recipient's context carries Jinja's globals (range, namespace, cycler...) once
    # for all its templates: the HTML (marked for the skeleton cache or not), the text
    # template and the one-line settings. Each renders once, in the shared context:
    # Jinja's own `render` is only there to report an error.
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", GLOBALS_HTML)
    campaign.template("issue.txt", "{% for i in range(2) %}{{ i }}{% endfor %} {{ first_name }}\n")
    campaign.write(
        text_template="../templates/issue.txt",
        subject="{{ first_name }} {% for i in range(3) %}{{ i }}{% endfor %}",
    )
    renderer = Renderer.load(load_campaign(campaign.yaml_path), fast=fast)
    monkeypatch.setattr(jinja2.Template, "render", None)

    alice, bob = (renderer.render(row) for row in recipients(campaign)[:2])

    assert alice.subject == "Alice 012"
    assert alice.text == "01 Alice\n"
    assert bob.text == "01 Bob\n"
    html = lxml.html.fromstring(bob.html)
    (first, second) = html.xpath("//p")
    assert (first.get("class"), first.text_content()) == ("odd", "Hello Bob, total 3")
    assert (second.get("class"), second.text_content()) == ("even", "1 end")
    assert "color:#333" in str(first.get("style")).replace(" ", "")


def test_a_csv_column_named_like_a_jinja_global_wins(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([{**CSV_ROWS[0], "range": "north"}])
    campaign.template("issue.html", "<p>{{ range }} {{ first_name }}</p>\n")
    campaign.write(subject="{{ range }} region")

    (alice,) = render_all(campaign)

    assert alice.subject == "north region"
    assert "<p>north Alice</p>" in alice.html


@pytest.mark.parametrize(
    ("use", "error"),
    [
        ("{{ 10 // (first_name | length - 5) }}", "ZeroDivisionError: integer division"),
        ("{{ articles.pop() }}", "access to attribute 'pop' of 'list' object is unsafe"),
    ],
)
def test_an_error_raised_while_rendering_names_the_template_line(
    tmp_path: Path, use: str, error: str
) -> None:
    # Raised by an operation on this row's value (Alice: 5 letters) or refused by the
    # sandbox: the message names the template's line and the row, as for an undefined one.
    campaign = CampaignDir(tmp_path)
    campaign.template("issue.html", f"<html><body>\n<p>Hi</p>\n<p>{use}</p>\n</body></html>\n")
    campaign.write(data={"month": "June", "articles": ["a", "b"]})
    renderer = Renderer.load(load_campaign(campaign.yaml_path))

    with pytest.raises(TemplateError) as caught:
        renderer.render(recipients(campaign)[0])

    message = str(caught.value)
    assert error in message
    assert "issue.html:3" in message
    assert "list.csv:2" in message


def test_unsubscribe_url_is_a_template_variable(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.template(
        "issue.html", '<p>Hi {{ first_name }}</p><a id="u" href="{{ unsubscribe_url }}">Leave</a>\n'
    )
    campaign.write(unsubscribe={"url": "https://example.com/u?list=june&e={{ email | urlencode }}"})

    alice, bob, _ = render_all(campaign)

    assert alice.unsubscribe_url == "https://example.com/u?list=june&e=alice%40example.com"
    assert element(alice.html, "u").get("href") == alice.unsubscribe_url
    assert "list=june&amp;e=alice%40example.com" in alice.html  # valid HTML in the attribute
    assert element(bob.html, "u").get("href") == (
        "https://example.com/u?list=june&e=bob%40example.org"
    )
    assert "https://example.com/u?list=june&e=alice%40example.com" in alice.text
