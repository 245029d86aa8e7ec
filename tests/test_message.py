"""Building each recipient's MIME message: headers, parts, attachments, encodings, injection."""

from __future__ import annotations

import binascii
import csv
import email.policy
import hashlib
import io
import random
import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser, Parser
from pathlib import Path

import pytest
from builders import CSV_ROWS, CampaignDir
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail import (
    AttachmentError,
    OutgoingMail,
    PreflightError,
    Recipient,
    RecipientError,
    TemplateError,
    check_campaign,
    load_campaign,
)
from bulkmail.compose.message import (
    _PLAIN_TEXT,
    POLICY,
    POLICY_UTF8,
    MessageBuilder,
    _cc_header,
    _fold,
    _plain_address,
    _plain_line,
    _quoted_printable,
    _to_header,
    _url_list_header,
)
from bulkmail.compose.render import Renderer
from bulkmail.errors import Location
from bulkmail.load.recipients import iter_recipients

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 3
CSV = "id;city\r\n1;Zürich\r\n2;Kraków\r\n".encode("latin-1", errors="replace")


def build_all(campaign_dir: CampaignDir) -> list[OutgoingMail]:
    """Render and build every mailed recipient's message, as the pipeline does."""
    campaign = load_campaign(campaign_dir.yaml_path)
    renderer = Renderer.load(campaign)
    builder = MessageBuilder.load(campaign)
    rows = [row for row in iter_recipients(campaign.recipients) if isinstance(row, Recipient)]
    return [
        builder.build(index, recipient, renderer.render(recipient))
        for index, recipient in enumerate(rows, start=1)
    ]


def parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def decoded(part: MIMEPart) -> bytes:
    """A leaf part's payload with its transfer encoding undone."""
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def shape(part: MIMEPart) -> object:
    """The MIME tree as nested (content type, [children]) for one assert."""
    if part.is_multipart():
        return (part.get_content_type(), [shape(child) for child in part.iter_parts()])
    return part.get_content_type()


def header_line(data: bytes, name: str) -> str:
    """A header as written in the raw message, continuation lines unfolded."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    found = [line for line in unfolded.split("\r\n") if line.lower().startswith(name.lower() + ":")]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def attachments(msg: EmailMessage) -> dict[str, EmailMessage]:
    found = {}
    for part in msg.iter_attachments():
        assert isinstance(part, EmailMessage)
        filename = part.get_filename()
        assert filename is not None
        found[filename] = part
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_quoted_csv(campaign_dir: CampaignDir, rows: list[dict[str, str]]) -> None:
    """The CSV as Excel writes it: every field quoted, CRLF line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(list(rows[0]))
    writer.writerows([list(row.values()) for row in rows])
    campaign_dir.file("list.csv", buffer.getvalue())


def problem_text(campaign_dir: CampaignDir) -> list[str]:
    with pytest.raises(PreflightError) as caught:
        check_campaign(campaign_dir.yaml_path)
    return [str(problem) for problem in caught.value.problems]


# --- structure and headers ---------------------------------------------------------------------


def test_mail_parses_into_mixed_alternative_and_attachments(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/report.pdf", PDF)
    campaign.file("files/chart.png", PNG)
    campaign.write(attachments=["files/report.pdf", "files/chart.png"])

    for mail in build_all(campaign):
        msg = parse(mail.data)
        assert msg.defects == []
        assert shape(msg) == (
            "multipart/mixed",
            [
                ("multipart/alternative", ["text/plain", "text/html"]),
                "application/pdf",
                "image/png",
            ],
        )
        assert msg["MIME-Version"] == "1.0"


def test_mail_without_attachments_is_multipart_alternative(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    msg = parse(build_all(campaign)[0].data)

    assert shape(msg) == ("multipart/alternative", ["text/plain", "text/html"])


def test_every_mail_has_the_headers_a_bulk_sender_needs(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(reply_to="Editor <editor@example.com>")

    mails = build_all(campaign)

    for mail, row in zip(mails, CSV_ROWS, strict=True):
        msg = parse(mail.data)
        assert str(msg["From"]) == "Bulkmail Team <news@example.com>"
        assert [a.addr_spec for a in msg["To"].addresses] == [row["email"]]
        assert msg["To"].addresses[0].display_name == row["name"]
        assert str(msg["Reply-To"]) == "Editor <editor@example.com>"
        assert msg["Subject"] == f"{row['first_name']}, the June issue"
        assert msg["X-Bulkmail-Campaign"] == "test-campaign"
        date = msg["Date"].datetime
        assert isinstance(date, datetime)
        assert date.tzinfo is not None
        assert re.fullmatch(r"<[^<>@\s]+@example\.com>", msg["Message-ID"])
        assert msg["Message-ID"] == mail.message_id
        assert mail.sender == "news@example.com"
        assert mail.smtputf8 is False
    assert len({mail.message_id for mail in mails}) == len(mails)


def test_reply_to_is_absent_when_not_set(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    msg = parse(build_all(campaign)[0].data)

    assert msg["Reply-To"] is None


def test_campaign_headers_are_added(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(headers={"X-Mailer-Tag": "june-2026"})

    msg = parse(build_all(campaign)[0].data)

    assert msg["X-Mailer-Tag"] == "june-2026"


def test_to_holds_only_that_recipient(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    rows = [
        {**CSV_ROWS[0], "name": "Martin, Alice"},
        {**CSV_ROWS[1], "name": "Bob <carol@example.com>, dave@example.com"},
        {**CSV_ROWS[2], "name": "王, 小明"},
        {**CSV_ROWS[0], "email": "erin@example.com", "name": 'Erin "E" O\'Neil'},
    ]
    campaign.csv(rows)
    campaign.write()

    mails = build_all(campaign)

    assert len(mails) == len(rows)
    for mail, row in zip(mails, rows, strict=True):
        msg = parse(mail.data)
        (address,) = msg["To"].addresses
        assert (address.display_name, address.addr_spec) == (row["name"], row["email"])
        assert msg["Cc"] is None
        assert msg["Bcc"] is None
        for other in rows:
            if other["email"] != row["email"]:
                assert other["email"].encode() not in mail.data
                assert other["email"].replace("@", "%40").encode() not in mail.data


# --- encodings ---------------------------------------------------------------------------------


def test_chinese_display_names_are_encoded_words_beside_a_visible_address(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(from_="灯笼编辑部 <news@example.com>")

    wang = build_all(campaign)[2]

    encoded_word = r"(=\?utf-8\?[bq]\?[^?\s]+\?=\s*)+"
    assert re.fullmatch(f"To: {encoded_word}<wang@example.net>", header_line(wang.data, "To"))
    assert re.fullmatch(f"From: {encoded_word}<news@example.com>", header_line(wang.data, "From"))
    msg = parse(wang.data)
    assert msg["To"].addresses[0].display_name == "王小明"
    assert msg["To"].addresses[0].addr_spec == "wang@example.net"
    assert msg["From"].addresses[0].display_name == "灯笼编辑部"
    assert msg["From"].addresses[0].addr_spec == "news@example.com"


@pytest.mark.parametrize(
    "subject",
    [
        "{{ first_name }}\uff0c六月刊来了",
        "{{ first_name }}\uff0c"
        + "这是一个非常长的中文主题行\uff0c用来检查折行和编码是否正确。" * 4,
        "Grüße aus {{ city }} \u2013 the “June” issue €",
    ],
)
def test_non_ascii_subject_is_encoded_and_round_trips(tmp_path: Path, subject: str) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(subject=subject)

    wang = build_all(campaign)[2]

    raw = header_line(wang.data, "Subject")
    assert raw.isascii()
    assert "=?utf-8?" in raw
    assert parse(wang.data)["Subject"] == wang.subject
    assert wang.subject == subject.replace("{{ first_name }}", "小明").replace("{{ city }}", "杭州")


def test_raw_message_is_seven_bit_with_no_line_over_998_octets(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    one_line = "".join(
        f'<td style="padding:4px">第{n}篇 \u2013 «{{{{ city }}}}» café</td>' for n in range(400)
    )
    campaign.template(
        "issue.html",
        "<html><body><p>Hello {{ first_name }}</p>"
        f"<table><tr>{one_line}</tr></table></body></html>",
    )
    campaign.file("files/données 报告.pdf", PDF)
    campaign.write(
        subject="{{ first_name }}: " + "長い件名 " * 40,
        attachments=["files/données 报告.pdf"],
        unsubscribe={"url": "https://example.com/unsubscribe/" + "x" * 200 + "?e={{ email }}"},
    )

    mails = build_all(campaign)

    for mail in mails:
        assert len(mail.html) > 10_000
        assert mail.data.isascii()
        lines = mail.data.split(b"\r\n")
        assert max(len(line) for line in lines) <= 998
        assert b"\n" not in mail.data.replace(b"\r\n", b"")  # CRLF only, no bare LF
        msg = parse(mail.data)
        html = msg.get_body(preferencelist=("html",))
        assert html is not None
        assert html["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        assert html.get_content().splitlines() == mail.html.splitlines()
    assert "第399篇 \u2013 «杭州» café" in mails[2].html


# --- attachments -------------------------------------------------------------------------------


def test_attachments_have_real_types_and_exact_bytes(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    files = {
        "report.pdf": ("application/pdf", PDF),
        "chart.png": ("image/png", PNG),
        "data.csv": ("text/csv", CSV),
        "notes.bin": ("application/octet-stream", b"\x00\x01\x02"),
    }
    for name, (_, data) in files.items():
        campaign.file(f"files/{name}", data)
    campaign.write(attachments=[f"files/{name}" for name in files])

    mail = build_all(campaign)[0]

    found = attachments(parse(mail.data))
    assert list(found) == list(files)
    for name, (content_type, data) in files.items():
        part = found[name]
        assert part.get_content_type() == content_type
        assert part.get_content_disposition() == "attachment"
        assert sha256(decoded(part)) == sha256(data)
    assert [(a.filename, a.content_type, a.size) for a in mail.attachments] == [
        (name, content_type, len(data)) for name, (content_type, data) in files.items()
    ]


def test_attached_eml_file_arrives_intact(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    forwarded = b"From: a@example.com\r\nSubject: old news\r\n\r\nHello\r\n"
    campaign.file("files/forwarded.eml", forwarded)
    campaign.write(attachments=["files/forwarded.eml"])

    part = attachments(parse(build_all(campaign)[0].data))["forwarded.eml"]

    if part.get_content_maintype() == "message":
        assert part["Content-Transfer-Encoding"] in (None, "7bit", "8bit", "binary")
        assert part.get_content()["Subject"] == "old news"
    else:
        assert part.get_payload(decode=True) == forwarded


@pytest.mark.parametrize(
    "filename",
    ["résumé 报告.pdf", "年度报告-" * 20 + ".pdf"],
    ids=["short", "long"],
)
def test_non_ascii_attachment_filename_is_encoded_per_rfc_2231(
    tmp_path: Path, filename: str
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/report.pdf", PDF)
    campaign.write(attachments=[{"path": "files/report.pdf", "filename": filename}])

    mail = build_all(campaign)[0]

    assert re.search(rb"Content-Disposition: attachment;\s+filename\*(0\*)?=utf-8''", mail.data)
    part = attachments(parse(mail.data))[filename]
    assert part.get_content_type() == "application/pdf"
    assert part.get_payload(decode=True) == PDF
    assert mail.attachments[0].filename == filename


def test_per_recipient_attachments_follow_each_row(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    ids = ["A-1", "B-2", "C-3"]
    campaign.csv([{**row, "customer_id": cid} for row, cid in zip(CSV_ROWS, ids, strict=True)])
    invoices = {cid: PDF + cid.encode() * 50 for cid in ids}
    for cid, data in invoices.items():
        campaign.file(f"files/{cid}.pdf", data)
    campaign.file("files/programme.pdf", b"%PDF-1.4 programme")
    campaign.write(
        attachments=[
            "files/programme.pdf",
            {"path": "files/{{ customer_id }}.pdf", "filename": "invoice-{{ customer_id }}.pdf"},
        ]
    )

    mails = build_all(campaign)

    for mail, cid in zip(mails, ids, strict=True):
        found = attachments(parse(mail.data))
        assert list(found) == ["programme.pdf", f"invoice-{cid}.pdf"]
        invoice = found[f"invoice-{cid}.pdf"]
        assert invoice.get_content_type() == "application/pdf"
        assert sha256(decoded(invoice)) == sha256(invoices[cid])


def test_missing_per_recipient_attachment_names_the_row(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([{**row, "customer_id": f"c{n}"} for n, row in enumerate(CSV_ROWS)])
    campaign.file("files/c0.pdf", PDF)
    campaign.file("files/c2.pdf", PDF)
    campaign.write(attachments=[{"path": "files/{{ customer_id }}.pdf"}])

    with pytest.raises(PreflightError) as caught:
        check_campaign(campaign.yaml_path)

    (problem,) = caught.value.problems
    assert isinstance(problem, AttachmentError)
    assert "c1.pdf: no such file" in problem.message
    assert problem.row is not None
    assert (Path(problem.row.path), problem.row.line) == (campaign.csv_path, 3)


def test_shared_attachment_is_read_once_per_campaign(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    report = campaign.file("files/report.pdf", PDF)
    campaign.write(attachments=["files/report.pdf"])
    loaded = load_campaign(campaign.yaml_path)
    renderer = Renderer.load(loaded)
    builder = MessageBuilder.load(loaded)
    rows = [row for row in iter_recipients(loaded.recipients) if isinstance(row, Recipient)]

    report.unlink()  # every mail must use what load() read and encoded
    mails = [builder.build(n, row, renderer.render(row)) for n, row in enumerate(rows, 1)]

    assert len(mails) == 3
    bodies = set()
    for mail in mails:
        part = attachments(parse(mail.data))["report.pdf"]
        assert part.get_payload(decode=True) == PDF
        bodies.add(part.get_payload())
    assert len(bodies) == 1


# --- List-Unsubscribe (RFC 2369, RFC 8058) -----------------------------------------------------


def test_list_unsubscribe_is_one_click(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    alice = build_all(campaign)[0]

    assert header_line(alice.data, "List-Unsubscribe") == (
        "List-Unsubscribe: <https://example.com/u?e=alice%40example.com>"
    )
    assert header_line(alice.data, "List-Unsubscribe-Post") == (
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    )


def test_long_list_unsubscribe_url_is_not_mangled(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    url = "https://newsletters.example.com/unsubscribe/june-2026/" + "t0k3n" * 30
    campaign.write(unsubscribe={"url": url + "?e={{ email | urlencode }}"})

    for mail, row in zip(build_all(campaign), CSV_ROWS, strict=True):
        expected = f"{url}?e={row['email'].replace('@', '%40')}"
        assert len(expected) > 100
        assert f"<{expected}>".encode() in mail.data  # on one line, not folded or encoded
        assert "=?" not in header_line(mail.data, "List-Unsubscribe")
        assert parse(mail.data)["List-Unsubscribe"] == f"<{expected}>"


def test_list_unsubscribe_with_mailto_as_well(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(
        unsubscribe={
            "url": "https://example.com/u?e={{ email | urlencode }}",
            "mailto": "unsubscribe@example.com?subject=unsubscribe%20{{ email | urlencode }}",
        }
    )

    msg = parse(build_all(campaign)[1].data)

    entries = [entry.strip() for entry in msg["List-Unsubscribe"].split(",")]
    assert entries == [
        "<https://example.com/u?e=bob%40example.org>",
        "<mailto:unsubscribe@example.com?subject=unsubscribe%20bob%40example.org>",
    ]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_mailto_only_unsubscribe_has_no_one_click_post(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(unsubscribe={"mailto": "mailto:unsubscribe@example.com"})

    msg = parse(build_all(campaign)[0].data)

    assert msg["List-Unsubscribe"] == "<mailto:unsubscribe@example.com>"
    assert msg["List-Unsubscribe-Post"] is None  # RFC 8058 one-click needs an https URI


def test_no_unsubscribe_means_no_list_headers(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(unsubscribe=None)

    msg = parse(build_all(campaign)[0].data)

    assert msg["List-Unsubscribe"] is None
    assert msg["List-Unsubscribe-Post"] is None


def test_list_unsubscribe_url_with_a_comma_is_not_split(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(unsubscribe={"url": "https://example.com/u?lists=news,offers&e={{ email }}"})

    alice = build_all(campaign)[0]

    assert parse(alice.data)["List-Unsubscribe"] == (
        "<https://example.com/u?lists=news,offers&e=alice@example.com>"
    )


def test_non_ascii_unsubscribe_url_is_a_preflight_problem_naming_the_row(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write(unsubscribe={"url": "https://example.com/u/{{ city }}"})

    problems = problem_text(campaign)

    assert any("unsubscribe.url" in p and "campaigns/list.csv:4" in p for p in problems)


# --- header injection and international addresses ----------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("name", "Bob\r\nBcc: x@evil.example", RecipientError),
        ("name", "Bob\nBcc: x@evil.example", RecipientError),
        ("email", "bob@example.org\r\nBcc: x@evil.example", RecipientError),
        ("first_name", "Bob\r\nBcc: x@evil.example", TemplateError),
        ("first_name", "Bob\rBcc: x@evil.example", TemplateError),
        ("first_name", "Bob\u2028Bcc: x@evil.example", TemplateError),
    ],
    ids=["name-crlf", "name-lf", "email-crlf", "subject-crlf", "subject-cr", "subject-u2028"],
)
def test_header_injection_in_csv_is_rejected_naming_the_row(
    tmp_path: Path, field: str, value: str, error: type[Exception]
) -> None:
    campaign = CampaignDir(tmp_path)
    rows = [dict(row) for row in CSV_ROWS]
    rows[1][field] = value
    write_quoted_csv(campaign, rows)
    campaign.write()

    with pytest.raises(PreflightError) as caught:
        check_campaign(campaign.yaml_path)

    (problem,) = caught.value.problems
    assert isinstance(problem, error)
    where = problem.row or problem.where
    assert where is not None
    assert (Path(where.path), where.line) == (campaign.csv_path, 3)


def test_header_injection_through_attachment_filename_is_rejected(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/c1.pdf", PDF)
    write_quoted_csv(
        campaign, [{**CSV_ROWS[0], "customer_id": "c1", "label": "june\r\nBcc: x@evil.example"}]
    )
    campaign.write(
        attachments=[{"path": "files/{{ customer_id }}.pdf", "filename": "report-{{ label }}.pdf"}]
    )

    problems = problem_text(campaign)

    assert len(problems) == 1
    assert "line break" in problems[0]
    assert "campaigns/list.csv:2" in problems[0]


def test_templated_filename_of_a_shared_file_is_rendered(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/report.pdf", PDF)
    campaign.csv([{**row, "label": row["first_name"]} for row in CSV_ROWS[:2]])
    campaign.write(attachments=[{"path": "files/report.pdf", "filename": "report-{{ label }}.pdf"}])

    alice, bob = build_all(campaign)

    assert [a.filename for a in alice.attachments] == ["report-Alice.pdf"]
    assert list(attachments(parse(bob.data))) == ["report-Bob.pdf"]


def built_or_refused(campaign_dir: CampaignDir) -> tuple[list[EmailMessage], list[str]]:
    """The parsed mails, or the preflight's problems if it refuses the campaign."""
    try:
        check_campaign(campaign_dir.yaml_path)
    except PreflightError as exc:
        return [], [str(problem) for problem in exc.problems]
    return [parse(mail.data) for mail in build_all(campaign_dir)], []


@pytest.mark.parametrize(
    "field",
    ["name", "first_name"],
    ids=["display-name", "subject"],
)
def test_encoded_word_in_csv_cannot_inject_a_header(tmp_path: Path, field: str) -> None:
    campaign = CampaignDir(tmp_path)
    rows = [dict(row) for row in CSV_ROWS]
    rows[1][field] = "=?utf-8?q?Bob=0D=0ABcc=3A_x=40evil.example?="
    campaign.csv(rows)
    campaign.write()

    mails, problems = built_or_refused(campaign)

    # Either the preflight refuses the row, or every mail is built without an extra header.
    if problems:
        assert any("campaigns/list.csv:3" in p for p in problems)
    else:
        assert len(mails) == 3
        assert all(msg["Bcc"] is None for msg in mails)
        assert [len(msg["To"].addresses) for msg in mails] == [1, 1, 1]


def test_international_domain_is_sent_in_ascii_form(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([{**CSV_ROWS[0], "email": "yuki@例え.jp", "name": "Yuki"}])
    campaign.write()

    (mail,) = build_all(campaign)

    assert mail.smtputf8 is False
    assert mail.data.isascii()
    assert parse(mail.data)["To"].addresses[0].addr_spec == "yuki@xn--r8jz45g.jp"


def test_non_ascii_local_part_sets_smtputf8(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([CSV_ROWS[0], {**CSV_ROWS[2], "email": "小明@example.cn"}])
    campaign.write()

    check_campaign(campaign.yaml_path)
    alice, wang = build_all(campaign)

    assert alice.smtputf8 is False
    assert wang.smtputf8 is True
    assert "To: 王小明 <小明@example.cn>".encode() in wang.data  # UTF-8 headers (RFC 6532)
    msg = Parser(policy=email.policy.SMTPUTF8).parsestr(wang.data.decode("utf-8"))
    assert msg["To"].addresses[0].addr_spec == "小明@example.cn"


# --- To, Cc and Subject written directly: the same bytes as the email package ------------

NAME_PARTS = [
    "Jordan", "O'Brien", "Miller", "A", "x" * 40, "Zoë", "王小明", "Dr.", "a,b", '"q"', "(c)",
    "<e@x>", "a;b", "b@x", "=?utf-8?q?x?=", "!#$%&*+/=?^_`{|}~-", "!#$%&*+/?=^_`{|}~-", "\\",
    "[x]", "a:b", "",
]  # fmt: skip
LOCALS = ["u", "first.last", "a+tag", "o'brien", "x" * 50, "a..b", '"q"', "zoë", "=?x?="]
DOMAINS = ["example.com", "ex-ample.co.uk", "a" * 40 + ".org", "xn--bcher-kva.example"]


def library_to(policy: email.policy.EmailPolicy, name: str, local: str, domain: str) -> bytes:
    """The To header through the email package alone (the path every other name takes)."""
    to = Address(display_name=name, username=local, domain=domain)
    return _to_header(policy, to, Location(Path("list.csv"), 2))


def names() -> list[str]:
    rng = random.Random(13)
    made = {" ".join(rng.sample(NAME_PARTS, rng.randint(1, 4))) for _ in range(600)}
    made |= {f"{a}{b}" for a in NAME_PARTS for b in ("", " ", "  ", "x")}
    made |= {"J" + "o" * n for n in range(40, 80)}  # around the folding width
    return sorted(made)


@pytest.mark.parametrize("policy", [POLICY, POLICY_UTF8], ids=["ascii", "utf8"])
def test_to_written_directly_is_the_email_packages_bytes(
    policy: email.policy.EmailPolicy,
) -> None:
    direct = 0
    for name in names():
        for local in LOCALS:
            for domain in DOMAINS:
                line = _plain_line("To", _plain_address(name, local, domain))
                if line is None:
                    continue
                direct += 1
                assert line == library_to(policy, name, local, domain), (name, local, domain)
    assert direct > 300  # the common shapes are written directly


def test_plain_shapes_refuse_what_needs_quoting_encoding_or_folding() -> None:
    assert _plain_line("To", _plain_address("Jordan Miller", "j", "example.com")) == (
        b"To: Jordan Miller <j@example.com>\r\n"
    )
    for name in ["Dr. No", "A, B", 'Say "hi"', "Zoë", "A  B", " A", "=?utf-8?q?QQ?=", "J" * 70]:
        assert _plain_line("To", _plain_address(name, "j", "example.com")) is None, name
    assert _plain_address("A", "a..b", "example.com") is None
    assert _plain_address("A", "j", "exämple.com") is None


@pytest.mark.parametrize(
    "subject",
    [
        "Jordan, the June issue of The Lantern is here",
        "A subject of exactly the width: " + "x" * (78 - 9 - 32),
        "A subject one over the width: " + "x" * (78 - 9 - 29),
        "Price: $5 (50% off) <today> \"quoted\" 'single' [x] a;b a@b",
        "=?utf-8?q?Bob?= wrote",
        "two  spaces",
        " leading",
        "Zoë's news",
        "tab\there",
    ],
)
def test_subject_written_directly_is_the_email_packages_bytes(subject: str) -> None:
    line = _plain_line("Subject", subject if _PLAIN_TEXT.match(subject) else None)
    library = _fold(POLICY, "Subject", POLICY.header_factory("Subject", subject))
    assert line is None or line == library
    plain = re.fullmatch("[ -~]+", subject) and "  " not in subject and "=?" not in subject
    assert (line is not None) == bool(plain and subject == subject.strip() and len(subject) <= 69)


def test_subjects_of_every_printable_character_match_the_email_package() -> None:
    rng = random.Random(5)
    printable = [chr(c) for c in range(0x21, 0x7F)]
    for _ in range(3000):
        words = ["".join(rng.choices(printable, k=rng.randint(1, 12))) for _ in range(6)]
        subject = " ".join(words[: rng.randint(1, 6)])
        line = _plain_line("Subject", subject if _PLAIN_TEXT.match(subject) else None)
        if line is not None:
            header = POLICY.header_factory("Subject", subject)
            assert line == _fold(POLICY, "Subject", header), subject


def test_cc_written_directly_is_the_email_packages_bytes() -> None:
    row = Location(Path("list.csv"), 2)
    for cc in (
        ["a@example.com"],
        ["a@example.com", "b.c+d@example.org"],
        ["x" * 30 + "@e.com"] * 3,
    ):
        library = _fold(POLICY, "Cc", [Address(addr_spec=a) for a in cc], row)
        assert _cc_header(POLICY, cc, row) == library


def whole_quoted_printable(text: str) -> bytes:
    """Quoted-printable of the whole text at once: what the line cache must equal."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    return binascii.b2a_qp(lines.encode("utf-8"), quotetabs=False, istext=True).replace(
        b"\n", b"\r\n"
    )


LINE_PIECES = ["", " ", "\t", ".", "=", "From ", "x" * 75, "y" * 74, "z" * 80, "é", "王", "\x00",
               "\x0c", " .", ". ", "a=", "=\n", "\r", "\r\n", "\n", "\n.", ".\n", " \n",
               "\t\r\n"]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(LINE_PIECES) | st.text(max_size=5), max_size=12))
def test_quoted_printable_by_line_equals_the_whole_text_at_once(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert _quoted_printable(text) == whole_quoted_printable(text)
    assert _quoted_printable(text) == whole_quoted_printable(text)  # now from the cache


@pytest.mark.parametrize(
    "value",
    [
        "<https://example.com/u?e=a%40b.com>",
        "<https://example.com/u?e=a%40b.com>, <mailto:unsubscribe@example.com>",
        "<https://example.com/" + "x" * 120 + ">, <mailto:u@example.com?subject=unsubscribe>",
        "<https://example.com/a,b>, <mailto:x@example.com>",
    ],
)
def test_list_unsubscribe_written_directly_is_the_policys_folding(value: str) -> None:
    row = Location(Path("list.csv"), 2)
    want = _fold(POLICY, "List-Unsubscribe", value, row)
    assert _url_list_header(POLICY, "List-Unsubscribe", value, row) == want
