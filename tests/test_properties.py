"""Property tests: whatever a CSV holds, the preflight accepts each row or reports it by line,
never crashes, and never lets a field add a header to a mail."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from pathlib import Path

import pytest
from builders import CampaignDir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkmail.build import Builder
from bulkmail.errors import Location, PreflightError, RecipientError
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import check_address
from bulkmail.pipeline import check_campaign

COLUMNS = ["email", "name", "first_name", "city"]
# Every mail of the builders' campaign has exactly these headers, whatever the row says.
HEADERS = sorted(
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "X-Bulkmail-Campaign",
        "MIME-Version",
        "Content-Type",
    ]
)
# Ways a field could try to add a header or a recipient: raw line breaks, RFC 2047
# encoded words that decode to them (q and b encodings), address lists and angle brackets.
INJECTIONS = [
    "=?utf-8?q?Bob=0D=0ABcc=3A_x=40evil.example?=",
    "=?UTF-8?Q?Bob=0ABcc:_x@evil.example?=",
    "=?utf-8?b?Qm9iDQpCY2M6IHhAZXZpbC5leGFtcGxl?=",  # "Bob\r\nBcc: x@evil.example"
    "=?iso-8859-1?q?Bob=0D=0AX-Evil=3A_1?=",
    "=?utf-8?q?=3Cevil=40evil.example=3E?=",
    "Bob\r\nBcc: x@evil.example",
    "Bob\nBcc: x@evil.example",
    "Bob\rBcc: x@evil.example",
    "Bob\u2028Bcc: x@evil.example",
    "Bob\x85Bcc: x@evil.example",
    'x" <evil@evil.example>, "y',
    "evil@evil.example, other@evil.example",
    "Bob <evil@evil.example>",
    "Bob, Alice",
    '"quoted, with comma" and \\ backslash',
]
ENCODED_WORD = re.compile(r"=\?[^?]*\?[bqBQ]\?[^?]*\?=")
DOMAINS = ["example.com", "Example.ORG", "sub.example.net", "例え.jp", "xn--r8jz45g.jp"]

injection = st.sampled_from(INJECTIONS)
short_text = st.text(max_size=30)  # any Unicode: controls, quotes, commas, newlines
punctuation = st.text(alphabet=st.sampled_from(",\"'\r\n\t =?;:<>@\\()[]"), max_size=20)
long_text = st.builds(
    lambda pieces, times: "".join(pieces) * times,
    st.lists(
        st.characters(exclude_categories=["Cs"]), min_size=1, max_size=4
    ),  # lone surrogates cannot be in a UTF-8 file
    st.integers(30, 300),  # up to 1,200 characters: past the 998-octet line limit
)
embedded = st.builds(lambda a, b, c: a + b + c, st.text(max_size=6), injection, st.text(max_size=6))
field_text = st.one_of(short_text, punctuation, long_text, injection, embedded)

local_part = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,30}", fullmatch=True)
valid_email = st.builds(
    lambda local, domain: f"{local}@{domain}", local_part, st.sampled_from(DOMAINS)
)
email_ish = st.one_of(
    valid_email,
    valid_email,
    st.builds(lambda email, tail: email + tail, valid_email, st.one_of(injection, punctuation)),
    st.builds(lambda head, email: head + email, st.one_of(injection, punctuation), valid_email),
    st.builds(lambda text, domain: f"{text}@{domain}", short_text, st.sampled_from(DOMAINS)),
    field_text,
)
ENCODED_WORD_ADDRESSES = [
    "=?utf-8?q?=3Cevil=40evil.example=3E?=@example.com",
    "=?utf-8?q?abc?=@example.com",
    "=?utf-8?b?ZXZpbEBldmlsLmV4YW1wbGU=?=@example.com",
]


@dataclass(frozen=True)
class Written:
    """The CSV as written: each record's first line and its fields."""

    rows: dict[int, dict[str, str]]


def write_csv(campaign: CampaignDir, rows: list[dict[str, str]]) -> Written:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)  # quotes what needs it; line ends are \r\n
    writer.writerow(COLUMNS)
    starts = {}
    for row in rows:
        starts[buffer.getvalue().count("\n") + 1] = row
        writer.writerow([row[column] for column in COLUMNS])
    campaign.csv_path.write_bytes(buffer.getvalue().encode("utf-8"))
    return Written(starts)


def named_lines(text: str) -> list[int]:
    return [int(line) for line in re.findall(r"campaigns/list\.csv:(\d+)", text)]


def parse(data: bytes, *, utf8: bool) -> EmailMessage:
    if utf8:  # SMTPUTF8 headers are raw UTF-8, which BytesParser would surrogate-escape
        message = Parser(policy=policy.default).parsestr(data.decode("utf-8"))
    else:
        message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def check_rows(rows: list[dict[str, str]]) -> None:
    """The property: each row is accepted (and its mail is clean) or reported by its line."""
    with tempfile.TemporaryDirectory() as root:
        campaign_dir = CampaignDir(Path(root))
        campaign_dir.write()
        written = write_csv(campaign_dir, rows)
        path = campaign_dir.yaml_path

        # 1. check_campaign: passes, or names rows of the list; never another exception.
        refused: PreflightError | RecipientError | None = None
        try:
            check_campaign(path, workers=0)
        except (PreflightError, RecipientError) as exc:
            refused = exc
        # (a RecipientError is raised, not collected, when the CSV cannot be read on)
        named = refused.problems if isinstance(refused, PreflightError) else [refused]
        for problem in named if refused else []:
            lines = named_lines(str(problem))
            assert lines, f"a problem that names no row: {problem}"
            assert set(lines) <= set(written.rows), str(problem)
        if isinstance(refused, RecipientError):
            return

        # 2. The mails of the accepted rows: exactly the usual headers, one To: the row's.
        campaign = load_campaign(path)
        build = Builder.load(campaign).mails(workers=0, max_problems=1000)
        mails = list(build)
        report, problems = build.result, build.result.problems
        for mail in mails:
            row = written.rows[mail.recipient.line]
            message = parse(mail.data, utf8=mail.smtputf8)
            assert sorted(message.keys()) == HEADERS, (row, message.keys())
            to = message["To"].addresses
            expected = check_address(row["email"], Location("list.csv"))
            assert [address.addr_spec for address in to] == [expected], row
            # (folding may start a long subject on the next line: compare the words)
            assert message["Subject"].split() == mail.subject.split()
            assert "evil.example" not in "".join(
                str(message[name]) for name in HEADERS if name not in ("To", "Subject")
            )
            header_block = mail.data.split(b"\r\n\r\n", 1)[0]
            assert not re.search(rb"\r\n(Bcc|Cc|X-Evil):", header_block, re.IGNORECASE), row

        # 3. Every row is accounted for once: a mail, a skipped duplicate, or a problem.
        problem_rows = sum(problems.rows.values())
        assert report.mails + report.duplicates + problem_rows == len(rows)
        for key in problems.found:
            assert problems.lines[key] in written.rows


row = st.fixed_dictionaries(
    {"email": email_ish, "name": field_text, "first_name": field_text, "city": field_text}
)
row_with_injection = st.fixed_dictionaries(
    {
        "email": st.one_of(valid_email, email_ish),
        "name": st.one_of(injection, embedded),
        "first_name": st.one_of(injection, embedded, short_text),
        "city": st.one_of(injection, embedded, short_text),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row, min_size=1, max_size=6))
def test_any_csv_row_is_accepted_cleanly_or_reported_by_line(rows: list[dict[str, str]]) -> None:
    check_rows(rows)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_with_injection, min_size=1, max_size=4))
def test_encoded_words_and_line_breaks_never_inject_a_header(rows: list[dict[str, str]]) -> None:
    check_rows(rows)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "email": st.builds(
                    lambda local, domain: f"{local}@{domain}",
                    st.text(st.characters(min_codepoint=0xA1, max_codepoint=0x9FFF), min_size=1),
                    st.sampled_from(DOMAINS),
                ),
                "name": short_text,
                "first_name": short_text,
                "city": short_text,
            }
        ),
        min_size=1,
        max_size=3,
    )
)
def test_non_ascii_local_parts_are_accepted_or_reported(rows: list[dict[str, str]]) -> None:
    check_rows(rows)


@pytest.mark.parametrize("email", ENCODED_WORD_ADDRESSES)
def test_encoded_word_in_an_address_is_refused_or_kept_verbatim(email: str) -> None:
    check_rows([{"email": email, "name": "", "first_name": "", "city": ""}])


@pytest.mark.parametrize(
    "name",
    [
        "x" * 70 + " <evil@evil.example>, y",
        "Bob, evil@evil.example " + "x" * 70,
        '"' * 39,
        "Martin, Anne-Sophie (Lyon office; marketing & communication) " + "x" * 20,
    ],
    ids=["angle address", "address list", "quotes", "ordinary long name"],
)
def test_long_display_name_with_specials_stays_one_quoted_name(name: str) -> None:
    check_rows([{"email": "reader@example.com", "name": name, "first_name": "", "city": ""}])
