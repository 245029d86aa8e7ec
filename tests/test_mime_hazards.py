"""What the mails themselves must get right (issue 8): a test send carries no real recipient's
one-click unsubscribe, MIME boundaries never collide, one doctype, a text part that is the
conversion of that mail's HTML without layout padding, RFC 2047 words of legal length in
long names, and nothing in the example that spam filters score."""

from __future__ import annotations

import email.policy
import functools
import mailbox
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from builders import HTML, TRICKY, CampaignDir, tricky_rows
from conftest import PASSWORD, PASSWORD_ENV, USERNAME, Server, TLSPair
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from bulkmail.compose.message import MessageBuilder
from bulkmail.compose.render import Renderer
from bulkmail.compose.textpart import html_to_text
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import Campaign, OutgoingMail, Recipient, RenderedMail
from bulkmail.send import send_test

EXAMPLE = Path(__file__).parent.parent / "campaigns" / "june.yaml"
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def recipients(campaign: Campaign) -> list[Recipient]:
    return [r for r in iter_recipients(campaign.recipients) if isinstance(r, Recipient)]


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


# --- 1. send-test carries no one-click unsubscribe of the row -----------------------------------

FOOTER_HTML = HTML.replace(
    "</body>", '<p class="footer"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n</body>'
)


@pytest.fixture
def tls_campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = CampaignDir(tmp_path)
    c.template("issue.html", FOOTER_HTML)
    c.write(
        unsubscribe={
            "url": "https://example.com/u?e={{ email | urlencode }}",
            "mailto": "unsubscribe@example.com?subject={{ email | urlencode }}",
        },
        smtp={
            "host": smtpd.host,
            "port": smtpd.port,
            "security": "ssl",
            "username": USERNAME,
            "password_env": PASSWORD_ENV,
            "ca_file": str(tls.ca_file),
            "timeout": 5,
        },
    )
    return c


def test_send_test_has_no_list_unsubscribe_of_the_row(
    tls_campaign: CampaignDir, smtpd: Server
) -> None:
    send_test(tls_campaign.yaml_path, to="me@example.org", row=2)

    (received,) = smtpd.inbox.messages
    head = received.content.split(b"\r\n\r\n", 1)[0]
    message = received.parsed()
    assert received.rcpt_tos == ("me@example.org",)
    assert b"list-unsubscribe" not in head.lower()
    assert message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None
    assert b"bob@example.org" not in head
    assert b"bob%40example.org" not in head
    # The footer is the row's own, so the tester sees the mail as Bob will (README says so).
    assert 'href="https://example.com/u?e=bob%40example.org"' in body(message, "html")


def test_a_real_send_still_has_the_one_click_headers(tls_campaign: CampaignDir) -> None:
    campaign = load_campaign(tls_campaign.yaml_path)
    bob = recipients(campaign)[1]
    mail = MessageBuilder.load(campaign).build(1, bob, Renderer.load(campaign).render(bob))
    message = parse(mail.data)
    assert "https://example.com/u?e=bob%40example.org" in message["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


# --- 2. MIME boundaries (RFC 2046 5.1.1) --------------------------------------------------------

LOOKALIKES = ["--", "--=_", "=_bulkmail_", "--=_bulkmail_", "--=_bulkmail_alt", "--=_bulkmail_mix"]
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
content = st.lists(st.one_of(any_text, st.sampled_from(LOOKALIKES)), max_size=6).map("\n".join)
file_name = st.text(
    st.characters(exclude_categories=["Cs", "Cc"], exclude_characters='/\\"'), min_size=1
).filter(lambda name: name.strip(".").strip() == name and bool(name))
files = st.lists(st.tuples(st.binary(max_size=400), file_name), max_size=3)


def boundary_campaign(root: Path, shared: bytes) -> Campaign:
    """Three attachment slots chosen per mail, and one shared file."""
    c = CampaignDir(root)
    c.file("files/shared.txt", shared)
    per_mail = [{"path": f"files/{{{{ a{n} }}}}", "filename": f"{{{{ n{n} }}}}"} for n in range(3)]
    return load_campaign(c.write(attachments=["files/shared.txt", *per_mail]))


def build(
    builder: MessageBuilder, root: Path, text: str, html: str, attached: list[tuple[bytes, str]]
) -> OutgoingMail:
    chosen = []
    for n, (data, name) in enumerate(attached):
        path = root / f"attachment{n}"
        path.write_bytes(data)
        chosen.append((n + 1, path, name))
    rendered = RenderedMail("Hello", html, text, None, None, tuple(chosen))
    recipient = Recipient(line=2, email="reader@example.com", name="Reader", fields={})
    return builder.build(1, recipient, rendered)


def check_boundaries(mail: OutgoingMail) -> list[bytes]:
    """No boundary is a prefix of another, and the only lines that start with a dash-boundary
    are that multipart's own delimiters: one per part and one close."""
    message = parse(mail.data)
    multiparts = [part for part in message.walk() if part.is_multipart()]
    boundaries = [part.get_boundary().encode() for part in multiparts]  # type: ignore[union-attr]
    assert len(set(boundaries)) == len(boundaries)
    for a in boundaries:
        for b in boundaries:
            assert a == b or not a.startswith(b), (a, b)
    lines = mail.data.split(b"\r\n")
    for part, boundary in zip(multiparts, boundaries, strict=True):
        dash = b"--" + boundary
        starting = [line for line in lines if line.startswith(dash)]
        parts = len(list(part.iter_parts()))
        assert starting.count(dash) == parts
        assert starting.count(dash + b"--") == 1
        assert len(starting) == parts + 1, [s for s in starting if s not in (dash, dash + b"--")]
    return boundaries


def test_inner_and_outer_boundaries_are_not_prefixes_of_each_other(tmp_path: Path) -> None:
    campaign = boundary_campaign(tmp_path, b"shared")
    mail = build(MessageBuilder.load(campaign), tmp_path, "text", "<p>html</p>", [])
    assert len(check_boundaries(mail)) == 2  # mixed (the shared file) and alternative


@settings(SLOW, max_examples=60)
@given(shared=st.binary(max_size=200), files=files, data=st.data())
def test_no_body_line_starts_with_a_boundary(
    shared: bytes, files: list[tuple[bytes, str]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        campaign = boundary_campaign(root / "c", shared)
        builder = MessageBuilder.load(campaign)
        # The builder's real boundaries, as lines of the bodies, among generated content.
        real = check_boundaries(build(builder, root, "x", "y", [(b"z", "z.bin")]))
        delimiters = [f"--{b.decode()}{end}" for b in real for end in ("", "--", "_alt", "x")]
        text_lines = st.lists(st.one_of(content, st.sampled_from(delimiters)), max_size=5)
        text = "\n".join(data.draw(text_lines))
        html = "\r\n".join(data.draw(text_lines))

        mail = build(builder, root, text, html, files)

        check_boundaries(mail)
        message = parse(mail.data)
        assert body(message, "plain").splitlines() == text.splitlines()
        assert body(message, "html").splitlines() == html.splitlines()
        found = [(p.get_filename(), p.get_payload(decode=True)) for p in message.iter_attachments()]
        assert found == [("shared.txt", shared), *((name, data) for data, name in files)]


# --- 3. one doctype, as the template wrote it ---------------------------------------------------

BODY = "<html><head><style>p { color: #c0392b; }</style></head><body><p>{{ first_name }}</p></body></html>\n"  # noqa: E501
DOCTYPES = [
    "<!DOCTYPE html>",
    "<!doctype html>",
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" '
    '"http://www.w3.org/TR/html4/loose.dtd">',
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">',
]


@pytest.mark.parametrize("fast", [True, False], ids=["skeleton", "whole"])
@pytest.mark.parametrize(
    "doctype", [*DOCTYPES, None], ids=["html5", "lower", "html4", "xhtml", "none"]
)
def test_html_part_has_the_templates_doctype_once(
    tmp_path: Path, doctype: str | None, fast: bool
) -> None:
    c = CampaignDir(tmp_path)
    c.template("issue.html", f"{doctype}\n{BODY}" if doctype else BODY)
    campaign = load_campaign(c.write())
    renderer = Renderer.load(campaign, fast=fast)
    for recipient in recipients(campaign):
        html = renderer.render(recipient).html
        assert len(re.findall("<!doctype", html, re.IGNORECASE)) == (1 if doctype else 0)
        assert html.startswith(f"{doctype}\n<html>" if doctype else "<html>")


def test_example_mails_have_one_doctype() -> None:
    campaign = load_campaign(EXAMPLE)
    renderer, builder = Renderer.load(campaign), MessageBuilder.load(campaign)
    for n, recipient in enumerate(recipients(campaign), start=1):
        html = body(parse(builder.build(n, recipient, renderer.render(recipient)).data), "html")
        assert html.startswith("<!DOCTYPE html>\n<html")
        assert html.upper().count("<!DOCTYPE") == 1


# --- 4. the text part is the conversion of that mail's HTML, without layout -----------------------


def layout_problems(text: str) -> list[str]:
    """Lines a person would not write: padded, trailing spaces, gaps from aligned columns."""
    problems = []
    for line in text.splitlines():
        body_of_line = re.sub(r"^(?:> ?)*", "", line)
        indent = len(body_of_line) - len(body_of_line.lstrip(" "))
        rest = body_of_line.lstrip(" ")
        is_list_item = re.match(r"(?:\* |\d+\. )", rest) is not None
        if line != line.rstrip():
            problems.append(f"trailing space: {line!r}")
        if indent and not (indent <= 6 and (is_list_item or indent in (2, 3, 4))):
            problems.append(f"padded by {indent}: {line!r}")
        if "   " in rest:
            problems.append(f"aligned gap: {line!r}")
    return problems


def skeleton_campaigns(root: Path) -> Iterator[tuple[str, Campaign]]:
    """The example and the skeleton tests' templates (with and without a base URL)."""
    yield "example", load_campaign(EXAMPLE)
    plain = CampaignDir(root / "plain")
    yield "builders", load_campaign(plain.write())
    for base_url in (None, "https://example.com/news/"):
        c = CampaignDir(root / f"tricky-{bool(base_url)}")
        c.template("tricky.html", TRICKY)
        c.csv(tricky_rows(120))
        data = {
            "month": "June",
            "articles": [
                {"title": "First & best", "url": "https://example.com/a", "summary": "One"},
                {"title": "Second", "url": "https://example.com/b", "summary": "Two < three"},
            ],
        }
        changes: dict[str, object] = {"template": "../templates/tricky.html", "data": data}
        if base_url:
            changes["base_url"] = base_url
        yield f"tricky base_url={base_url}", load_campaign(c.write(**changes))
    selectors = CampaignDir(root / "selectors")
    selectors.template(
        "issue.html",
        '<style>a[href^="mailto"] { color: green }</style>'
        '<p><a href="{{ city }}">{{ first_name }}</a></p>',
    )
    selectors.csv(
        [{"email": f"u{i}@example.com", "first_name": f"U{i}", "city": link}
         for i, link in enumerate(["mailto:x@example.com", "https://example.com/"] * 3)]
    )  # fmt: skip
    yield "attribute selector", load_campaign(selectors.write())
    empty = CampaignDir(root / "empty")
    empty.template("issue.html", "<style>p:empty { display: none }</style><p>{{ first_name }}</p>")
    yield "text selector", load_campaign(empty.write())


def test_text_part_is_the_conversion_of_each_mails_html(tmp_path: Path) -> None:
    for name, campaign in skeleton_campaigns(tmp_path):
        renderer, builder = Renderer.load(campaign), MessageBuilder.load(campaign)
        assert renderer.skeletons is not None
        renderer.skeletons._check = 0  # the fast path alone must be exact
        for n, recipient in enumerate(recipients(campaign), start=1):
            message = parse(builder.build(n, recipient, renderer.render(recipient)).data)
            text, html = body(message, "plain"), body(message, "html")
            assert text == html_to_text(html), (name, recipient.line)
            assert layout_problems(text) == [], (name, recipient.line)


def test_example_text_takes_the_fast_path_and_reads_like_a_letter() -> None:
    campaign = load_campaign(EXAMPLE)
    renderer = Renderer.load(campaign)
    rendered = [renderer.render(recipient) for recipient in recipients(campaign)]
    assert renderer.skeletons is not None
    assert renderer.skeletons.stats.text_slow == 0
    text = rendered[0].text
    assert "\nYou are receiving The Lantern at xiaoming.wang@example.org because" in text
    assert "[Unsubscribe](https://example.com/unsubscribe?e=xiaoming.wang%40example.org)" in text
    assert "a solstice evening at the shop" not in text  # the hidden preheader


def test_aligned_and_side_by_side_cells_are_written_as_lines() -> None:
    html = """<html><body><table width="600"><tr>
      <td align="center" style="text-align:center">Centred, a long line of footer text here</td>
      <td align="right">Right</td><td width="20">&nbsp;</td></tr>
      <tr><td colspan="3" style="text-align: center"><p>One</p><p>Two</p></td></tr></table>
      <ul><li>a<ol><li>b</li><li>c</li></ol></li></ul>
      <blockquote><p>q1</p><p>q2</p></blockquote>
      <p>A <a href="https://example.com/x">link</a>, an <a href="#top">anchor</a>,
      <a href="https://example.com/y"><img src="y.png" alt=""></a></p>
      <div style="display: none">hidden</div><p hidden>also hidden</p></body></html>"""

    assert html_to_text(html) == (
        "Centred, a long line of footer text here\nRight\n\nOne\n\nTwo\n\n"
        "* a\n  1. b\n  2. c\n\n> q1\n>\n> q2\n\n"
        "A [link](https://example.com/x), an anchor, https://example.com/y\n"
    )


# Values that fold, escape or link differently: each must give the text of its own HTML.
AWKWARD = ["#top", " lead", "trail ", "a  b", "a\nb", "a\u00a0b", "&amp;", "x&y", "<b>", "'q'",
           "Tom &amp; Jerry", "-->", "https://e.com/?a=1&b=2", "a\tb", "\u3000x"]  # fmt: skip
tricky_value = st.one_of(
    st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=12), st.sampled_from(AWKWARD)
)
TEXT_TEMPLATE = """<!DOCTYPE html><html><head><style>.c { color: #333; }</style></head><body>
<p class="c">Hi {{ a }},</p><pre>  {{ b }}  kept</pre><div>{{ c }}<br>{{ a }} {{ b }}</div>
<p><a href="{{ url }}">{{ c }}</a> <a href="https://example.com/?q={{ a | urlencode }}"></a>
<a href="{{ url }}/more">more</a></p><ul><li>{{ b }}</li><li>x {{ c }} y</li></ul>
<blockquote>{{ a }}</blockquote><img alt="{{ c }}" src="x.png"><!-- {{ a }} --></body></html>
"""


@settings(SLOW, max_examples=40)
@example(rows=[(value, value, value, value) for value in AWKWARD])
@given(rows=st.lists(st.tuples(tricky_value, tricky_value, tricky_value, tricky_value), max_size=6))
def test_text_part_equals_the_conversion_for_any_values(
    rows: list[tuple[str, str, str, str]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        c = CampaignDir(Path(folder))
        c.template("issue.html", TEXT_TEMPLATE)
        c.csv(
            [{"email": f"u{n}@example.com", "a": a, "b": b, "c": cc, "url": url}
             for n, (a, b, cc, url) in enumerate([("Ann", "Bo", "Cy", "https://e.com/p"), *rows])]
        )  # fmt: skip
        campaign = load_campaign(c.write(subject="News"))
        renderer = Renderer.load(campaign)
        assert renderer.skeletons is not None
        renderer.skeletons._check = 0
        for recipient in recipients(campaign) * 2:  # the second time from the cache
            rendered = renderer.render(recipient)
            assert rendered.text == html_to_text(rendered.html), recipient.fields


# --- 5. long names: encoded words of at most 75 characters ---------------------------------------

SCRIPTS = [(0x4E00, 0x9FFF), (0x0400, 0x04FF), (0x0370, 0x03FF), (0x0600, 0x06FF),
           (0x0900, 0x097F), (0x00C0, 0x00FF), (0x1F600, 0x1F64F), (0xAC00, 0xD7A3)]  # fmt: skip
script_text = st.one_of(
    *(st.text(st.characters(min_codepoint=lo, max_codepoint=hi), min_size=1) for lo, hi in SCRIPTS)
)
name_piece = st.one_of(script_text, st.sampled_from([" ", "  ", ", ", " (", ")", '"', "O'", "-"]))
long_name = (
    st.lists(name_piece, min_size=1, max_size=30)
    .map("".join)
    .map(str.strip)
    .filter(lambda name: not name.isascii() and len(name.encode()) > 40 and "=?" not in name)
)
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


@functools.cache
def plain_builder() -> MessageBuilder:
    """The builders' campaign (no attachments): nothing is read from disk after `load`."""
    with tempfile.TemporaryDirectory() as folder:
        return MessageBuilder.load(load_campaign(CampaignDir(Path(folder)).write()))


def to_header(mail: OutgoingMail) -> list[bytes]:
    head = mail.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(n for n, line in enumerate(head) if line.startswith(b"To: "))
    end = next((n for n in range(start + 1, len(head)) if head[n][:1] not in b" \t"), len(head))
    return head[start:end]


def check_name(mail: OutgoingMail, name: str, address: str) -> None:
    lines = to_header(mail)
    assert all(len(line) <= 78 for line in lines), lines
    words = ENCODED_WORD.findall(b"\r\n".join(lines))
    assert words, lines
    assert all(len(word) <= 75 for word in words), lines
    value = b" ".join(line.strip() for line in lines)[len(b"To: ") :].decode("ascii")
    shown, _, rest = value.rpartition(" <")
    assert rest == f"{address}>"
    # RFC 2047 6.2: white space between adjacent encoded words is not part of the name.
    assert str(make_header(decode_header(shown))) == name
    (parsed,) = parse(mail.data)["To"].addresses
    assert parsed.addr_spec == address


@pytest.mark.parametrize(
    "name",
    ["王小明" * 10, "Zoë Lefèvre-Dupont de la Fontaine-Marchand " * 3,
     "Ζωή Παπαδοπούλου-Κωνσταντινίδου Αλεξάνδρα",
     "محمد بن عبد الرحمن بن عبد الله الفلاني القحطاني"],
    ids=["chinese", "french", "greek", "arabic"],
)  # fmt: skip
def test_long_non_ascii_name_is_folded_into_short_encoded_words(name: str) -> None:
    name = name.strip()
    recipient = Recipient(line=2, email="reader@example.com", name=name, fields={})
    rendered = RenderedMail("Hi", "<p>x</p>", "x\n", None, None, ())
    check_name(plain_builder().build(1, recipient, rendered), name, recipient.email)


@settings(SLOW, max_examples=150)
@given(name=long_name, local=st.from_regex(r"[a-z][a-z0-9.]{0,20}", fullmatch=True))
def test_any_long_name_reads_back_as_one_address_with_that_name(name: str, local: str) -> None:
    assume(not local.endswith(".") and ".." not in local)
    address = f"{local}@example.com"
    recipient = Recipient(line=2, email=address, name=name, fields={})
    rendered = RenderedMail("Hi", "<p>x</p>", "x\n", None, None, ())
    check_name(plain_builder().build(1, recipient, rendered), name, address)


# --- 6. nothing in the example that spam filters score ------------------------------------------

_NAMED = {"white": "#ffffff", "black": "#000000"}


def _colour(value: str) -> str | None:
    value = value.strip().lower().removesuffix("!important").strip()
    value = _NAMED.get(value, value)
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        value = "#" + "".join(ch * 2 for ch in value[1:])
    return value if re.fullmatch(r"#[0-9a-f]{6}", value) else None


def _distance(fg: str, bg: str) -> float:
    """SpamAssassin's HTML_FONT_LOW_CONTRAST measure (HTML.pm): under 12 is 'invisible'."""
    f = [int(fg[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(bg[i : i + 2], 16) for i in (1, 3, 5)]
    weights = (0.2126, 0.7152, 0.0722)
    return float(sum((w * (x - y)) ** 2 for w, x, y in zip(weights, f, b, strict=True)) ** 0.5)


def low_contrast_text(html: str) -> list[str]:
    """Text whose colour is (nearly) its background's, hidden or not, as SpamAssassin sees it."""
    found: list[str] = []

    def walk(node: etree._Element, fg: str, bg: str) -> None:
        if not isinstance(node.tag, str):
            return
        bg = _colour(node.get("bgcolor", "")) or bg
        for declaration in node.get("style", "").split(";"):
            key, _, value = declaration.partition(":")
            key = key.strip().lower()
            if key == "color":
                fg = _colour(value) or fg
            elif key in ("background-color", "background"):
                bg = next(filter(None, map(_colour, value.split())), bg)
        texts = [node.text or ""] + [child.tail or "" for child in node]
        if any(text.strip() for text in texts) and _distance(fg, bg) < 12:
            found.append(f"<{node.tag} class={node.get('class')}>: {fg} on {bg}")
        for child in node:
            walk(child, fg, bg)

    walk(etree.fromstring(html, etree.HTMLParser()), "#000000", "#ffffff")
    return found


def test_example_has_no_text_in_its_background_colour() -> None:
    campaign = load_campaign(EXAMPLE)
    renderer = Renderer.load(campaign)
    for recipient in recipients(campaign):
        html = renderer.render(recipient).html
        assert 'class="preheader"' in html
        assert low_contrast_text(html) == []


# Rules SpamAssassin reports on any mail that has not yet passed a relay, scored 0.
INFORMATIONAL = {"NO_RECEIVED", "NO_RELAYS", "HTML_MESSAGE"}


@pytest.mark.skipif(
    shutil.which("spamassassin") is None,
    reason="spamassassin is not installed (apt-get install spamassassin; .ci/run installs it)",
)
def test_spamassassin_scores_no_rule_on_the_example(tmp_path: Path) -> None:
    out = tmp_path / "previews"
    subprocess.run(
        [sys.executable, "-m", "bulkmail", "run", str(EXAMPLE), "--dry-run", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    emls = sorted(out.glob("*.eml"))
    box = mailbox.mbox(tmp_path / "all.mbox")
    for eml in emls:
        box.add(eml.read_bytes())
    box.close()
    report = subprocess.run(
        ["spamassassin", "-t", "-L", "--mbox"],  # -L: local tests only, no network
        input=(tmp_path / "all.mbox").read_bytes(),
        capture_output=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},  # its user_prefs go here
        check=True,
    ).stdout.decode("utf-8", "replace")
    sections = report.split("Content analysis details:")[1:]
    assert len(sections) == len(emls) == 7
    for eml, section in zip(emls, sections, strict=True):
        points = float(re.match(r"\s*\((-?[\d.]+) points", section).group(1))  # type: ignore[union-attr]
        fired = set(re.findall(r"^\s*-?\d+\.\d+ ([A-Z][A-Z0-9_]+)", section, re.MULTILINE))
        assert fired - INFORMATIONAL == set(), (eml.name, fired)
        assert points <= 0, eml.name
