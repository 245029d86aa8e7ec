"""classify(): what a message that came back to the bounce mailbox is, read from messages
shaped like what real MTAs, mailbox providers and people send (tests/corpus/feedback/).

The corpus, and what each file imitates:

    postfix_user_unknown.eml     Postfix 3 DSN, "Undelivered Mail Returned to Sender": the
                                 MAILER-DAEMON text, message/delivery-status, text/rfc822-headers
    bulkmail_june_dsn.eml        the same for a mail bulkmail sent: VERP Delivered-To, the whole
                                 original returned as message/rfc822 (X-Bulkmail-Campaign: june)
    postfix_delayed.eml          Postfix "Delayed Mail (still being retried)", Action: delayed
    postfix_soft_422.eml         Postfix giving up after the queue lifetime: failed, 4.2.2
    mailbox_full_522.eml         Postfix relaying Dovecot LMTP's "552 5.2.2 Quota exceeded"
    postfix_old.eml              Postfix 1.x/2.0: multipart/mixed, no delivery-status part
    sendmail_dsn.eml             Sendmail 8 DSN, "Returned mail: see transcript for details",
                                 two failed recipients
    sendmail_old.eml             Sendmail 8.9 plain text, "----- The following addresses had
                                 permanent fatal errors -----"
    exim_failed.eml              Exim 4.97 multipart/report (Status: 5.0.0, 5.1.1 in the reply)
    exim_plain.eml               Exim 4.94 plain "Mail delivery failed: returning message to
                                 sender", X-Failed-Recipients, the copy inline with its headers
    qmail.eml                    qmail-send QSBMF, "Hi. This is the qmail-send program"
    office365_ndr.eml            Exchange Online / Office 365 NDR: text + HTML alternative,
                                 550 5.1.10 RESOLVER.ADR.RecipientNotFound
    exchange_legacy.eml          Exchange 5.5 Internet Mail Service, "did not reach the
                                 following recipient(s)", MSEXCH:IMS
    gmail_failure.eml            Gmail, mailer-daemon@googlemail.com, "Delivery Status
                                 Notification (Failure)", multipart/related with the icon
    yahoo_arf.eml                Yahoo/AOL-style ARF feedback loop report (Original-Rcpt-To,
                                 the returned To redacted)
    microsoft_jmrp.eml           Microsoft JMRP (Hotmail FBL): ARF without Original-Rcpt-To,
                                 X-HmXmrOriginalRecipient in the returned message
    unsubscribe_mailto.eml       a List-Unsubscribe mailto request to unsubscribe+june@
    unsubscribe_subject.eml      an Outlook reply titled "Re:  UNSUBSCRIBE "
    vacation_sieve.eml           Dovecot Pigeonhole vacation, Auto-Submitted: auto-replied,
                                 German RFC 2047 subject "Abwesenheitsnotiz"
    outlook_automatic_reply.eml  Exchange Online "Automatic reply:" with
                                 X-Auto-Response-Suppress and no Auto-Submitted
    human_reply.eml              Gmail reply "Thanks for the newsletter!" naming a colleague's
                                 address between commas
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkmail.feedback.classify import Verdict, classify
from bulkmail.models import FeedbackKind

CORPUS = Path(__file__).parent / "corpus" / "feedback"
UNSUBSCRIBE = ("unsubscribe@example.com",)

# file: (kind, recipients, status)
EXPECTED: dict[str, tuple[FeedbackKind, tuple[str, ...], str | None]] = {
    "postfix_user_unknown.eml": ("hard_bounce", ("bob@example.org",), "5.1.1"),
    "bulkmail_june_dsn.eml": ("hard_bounce", ("Dana.Whitfield@example.net",), "5.1.1"),
    "postfix_delayed.eml": ("delayed", ("frank@example.net",), "4.4.1"),
    "postfix_soft_422.eml": ("soft_bounce", ("grace@example.org",), "4.2.2"),
    "mailbox_full_522.eml": ("soft_bounce", ("heidi@example.net",), "5.2.2"),
    "postfix_old.eml": ("hard_bounce", ("yvonne@example.org",), None),
    "sendmail_dsn.eml": ("hard_bounce", ("ivan@example.org", "judy@example.org"), "5.1.1"),
    "sendmail_old.eml": ("hard_bounce", ("kim@example.net",), None),
    "exim_failed.eml": ("hard_bounce", ("leo@example.net",), "5.1.1"),
    "exim_plain.eml": ("hard_bounce", ("mallory@example.org",), "5.1.1"),
    "qmail.eml": ("hard_bounce", ("niaj@example.net",), "5.1.1"),
    "office365_ndr.eml": ("hard_bounce", ("olivia@example.org",), "5.1.10"),
    "exchange_legacy.eml": ("hard_bounce", ("quentin@example.net",), None),
    "gmail_failure.eml": ("hard_bounce", ("peggy@example.org",), "5.1.1"),
    "yahoo_arf.eml": ("complaint", ("carol@example.net",), None),
    "microsoft_jmrp.eml": ("complaint", ("Ruth.Bell@example.net",), None),
    "unsubscribe_mailto.eml": ("unsubscribe", ("Sybil@example.net",), None),
    "unsubscribe_subject.eml": ("unsubscribe", ("trent@example.org",), None),
    "vacation_sieve.eml": ("auto_reply", (), None),
    "outlook_automatic_reply.eml": ("auto_reply", (), None),
    "human_reply.eml": ("other", (), None),
}


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def verdict_of(name: str, **options: tuple[str, ...]) -> Verdict:
    return classify(corpus(name), unsubscribe_addresses=options.get("unsubscribe", UNSUBSCRIBE))


def test_every_corpus_file_has_an_expected_verdict() -> None:
    files = sorted(path.name for path in CORPUS.glob("*.eml"))

    assert files == sorted(EXPECTED)
    assert len(files) >= 16


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_corpus_verdict(name: str, expected: tuple[str, tuple[str, ...], str | None]) -> None:
    verdict = verdict_of(name)

    assert (verdict.kind, verdict.recipients, verdict.status) == expected


# --- What ties a report to the mail bulkmail sent ----------------------------------------


def test_delivered_to_reads_the_verp_address_lower_cased_once() -> None:
    verdict = verdict_of("bulkmail_june_dsn.eml")

    # Delivered-To, X-Original-To and To all name it, To in mixed case.
    assert verdict.delivered_to == ("bounces+jn26.4.q7xk2mpz@example.com",)


def test_delivered_to_lists_every_header_in_order() -> None:
    raw = (
        b"To: Newsletter <News@Example.com>, other@example.com\n"
        b"Envelope-To: env@example.com\n"
        b"X-Original-To: orig@example.com\n"
        b"Delivered-To: DELIVERED@example.com\n"
        b"Delivered-To: second@example.com\n"
        b"Subject: hello\n\nhi\n"
    )

    assert classify(raw).delivered_to == (
        "delivered@example.com",
        "second@example.com",
        "orig@example.com",
        "env@example.com",
        "news@example.com",
        "other@example.com",
    )


def test_exim_envelope_to_is_read() -> None:
    assert verdict_of("exim_plain.eml").delivered_to == ("bounces@example.com",)


@pytest.mark.parametrize(
    ("name", "message_id"),
    [
        # text/rfc822-headers
        ("postfix_user_unknown.eml", "<178047084301.2241.5318736170144812551@example.com>"),
        # message/rfc822
        ("bulkmail_june_dsn.eml", "<178047251377.3107.9182736450012345678@example.com>"),
        # ARF's returned message
        ("yahoo_arf.eml", "<178047301122.3107.9900112233445566778@example.com>"),
        # In-Reply-To / References of a reply
        ("vacation_sieve.eml", "<178047310255.3107.5566001122334455667@example.com>"),
        ("human_reply.eml", "<178047320077.3107.7788223344556677889@example.com>"),
        # quoted in a non-standard bounce's text, the header folded
        ("exim_plain.eml", "<178047278903.3107.5566778899001122334@example.com>"),
        ("qmail.eml", "<178047282417.3107.6677889900112233445@example.com>"),
    ],
)
def test_message_ids_of_the_original(name: str, message_id: str) -> None:
    assert verdict_of(name).message_ids == (message_id,)


def test_message_ids_never_include_the_reports_own() -> None:
    verdict = verdict_of("gmail_failure.eml")

    # The returned message, In-Reply-To and References name the same mail: once.
    assert verdict.message_ids == ("<178047297601.3107.8899001122334455667@example.com>",)


def test_a_message_id_in_a_persons_text_is_not_taken() -> None:
    raw = (
        b"From: ann@example.org\nTo: news@example.com\nSubject: question\n\n"
        b"Message-ID: <not-ours@example.org>\n"
    )

    assert classify(raw).message_ids == ()


@pytest.mark.parametrize(
    ("name", "campaign"),
    [
        ("bulkmail_june_dsn.eml", "june"),  # message/rfc822
        ("postfix_delayed.eml", "june"),  # text/rfc822-headers
        ("microsoft_jmrp.eml", "june"),  # ARF
        ("exim_plain.eml", "june"),  # the copy inline in the text
        ("qmail.eml", "june"),
        ("postfix_user_unknown.eml", None),  # returned headers without it
        ("human_reply.eml", None),
    ],
)
def test_campaign_of_the_returned_original(name: str, campaign: str | None) -> None:
    assert verdict_of(name).campaign == campaign


# --- Diagnostics and reasons ---------------------------------------------------------------


def test_diagnostic_is_the_dsn_diagnostic_code_on_one_line() -> None:
    assert verdict_of("postfix_user_unknown.eml").diagnostic == (
        "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in "
        "virtual mailbox table"
    )


def test_a_long_diagnostic_is_cut_at_300_characters() -> None:
    diagnostic = verdict_of("gmail_failure.eml").diagnostic

    assert diagnostic is not None
    assert len(diagnostic) == 300
    assert diagnostic.startswith("smtp; 550-5.1.1 The email account that you tried to reach")
    assert "\n" not in diagnostic
    assert "  " not in diagnostic


@pytest.mark.parametrize(
    ("name", "diagnostic"),
    [
        ("qmail.eml", "Sorry, no mailbox here by that name. (#5.1.1)"),
        ("sendmail_old.eml", "<<< 550 <kim@example.net>... User unknown"),
        ("exchange_legacy.eml", None),
    ],
)
def test_diagnostic_of_a_nonstandard_bounce_is_its_line_with_a_code(
    name: str, diagnostic: str | None
) -> None:
    assert verdict_of(name).diagnostic == diagnostic


def test_exims_class_only_status_gives_way_to_the_replys_precise_one() -> None:
    verdict = verdict_of("exim_failed.eml")

    # The delivery-status part says "Status: 5.0.0"; the server said 550 5.1.1.
    assert verdict.status == "5.1.1"
    assert verdict.reason == "hard bounce 5.1.1 (user unknown)"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("postfix_user_unknown.eml", "hard bounce 5.1.1 (user unknown)"),
        ("mailbox_full_522.eml", "soft bounce 5.2.2 (mailbox full)"),
        ("postfix_delayed.eml", "delivery delayed 4.4.1 (no answer from host)"),
        ("office365_ndr.eml", "hard bounce 5.1.10 (recipient not found)"),
        ("exchange_legacy.eml", "hard bounce (no status code)"),
        ("yahoo_arf.eml", "complaint (abuse) from Yahoo!-Mail-Feedback/2.0"),
        ("unsubscribe_subject.eml", "unsubscribe request from trent@example.org"),
    ],
)
def test_reason(name: str, reason: str) -> None:
    assert verdict_of(name).reason == reason


# --- Decisions at the edges ----------------------------------------------------------------


def test_an_arf_report_without_report_type_is_still_a_complaint() -> None:
    raw = corpus("yahoo_arf.eml").replace(b"; report-type=feedback-report", b"")

    verdict = classify(raw)

    assert (verdict.kind, verdict.recipients) == ("complaint", ("carol@example.net",))


def test_a_complaint_without_original_rcpt_to_names_the_returned_to() -> None:
    raw = re.sub(rb"Original-Rcpt-To: [^\n]*\n", b"", corpus("yahoo_arf.eml"))

    assert classify(raw).recipients == ("redacted@example.net",)


def dsn(*blocks: str) -> bytes:
    """A minimal RFC 3464 report with these per-recipient blocks."""
    report = "\n\n".join(["Reporting-MTA: dns; mx.example.net", *blocks])
    return (
        "From: MAILER-DAEMON@mx.example.net\nTo: bounces@example.com\n"
        "Subject: Delivery Status Notification\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nSee below.\n\n"
        f"--b\nContent-Type: message/delivery-status\n\n{report}\n\n--b--\n"
    ).encode()


def test_a_dsn_reports_its_most_severe_outcome_and_only_its_recipients() -> None:
    raw = dsn(
        "Final-Recipient: rfc822; late@example.org\nAction: delayed\nStatus: 4.4.1",
        "Final-Recipient: rfc822; gone@example.org\nAction: failed\nStatus: 5.1.1",
        "Final-Recipient: rfc822; fine@example.org\nAction: delivered\nStatus: 2.0.0",
    )

    verdict = classify(raw)

    assert (verdict.kind, verdict.recipients, verdict.status) == (
        "hard_bounce",
        ("gone@example.org",),
        "5.1.1",
    )


def test_a_success_dsn_is_other() -> None:
    raw = dsn("Final-Recipient: rfc822; fine@example.org\nAction: relayed\nStatus: 2.0.0")

    assert classify(raw).kind == "other"


def test_original_recipient_when_there_is_no_final_recipient() -> None:
    raw = dsn("Original-Recipient: rfc822;<Zoe@EXAMPLE.org>\nAction: failed\nStatus: 5.1.1")

    assert classify(raw).recipients == ("Zoe@example.org",)


def test_a_failure_with_a_4xx_reply_and_no_status_is_soft() -> None:
    raw = dsn(
        "Final-Recipient: rfc822; busy@example.org\nAction: failed\n"
        "Diagnostic-Code: smtp; 421 Try again later"
    )

    assert (classify(raw).kind, classify(raw).status) == ("soft_bounce", None)


def test_a_bounce_with_8bit_headers_still_reaches_flufl_bounce() -> None:
    # flufl.bounce calls .lower() on header values; the stdlib gives a Header object for
    # a raw UTF-8 From, which made its sina detector raise before qmail's was tried.
    raw = corpus("qmail.eml").replace(
        b"From: MAILER-DAEMON@mail.example.net",
        "From: Système de messagerie <MAILER-DAEMON@mail.example.net>".encode(),
    )

    verdict = classify(raw)

    assert (verdict.kind, verdict.recipients) == ("hard_bounce", ("niaj@example.net",))


def test_an_address_between_commas_in_a_reply_is_no_bounce() -> None:
    # flufl.bounce's LLNL detector alone would report xavier@example.org as bouncing.
    verdict = verdict_of("human_reply.eml")

    assert (verdict.kind, verdict.recipients) == ("other", ())


@pytest.mark.parametrize(
    "raw",
    [
        # a person forwarding a bounce, with an address between commas
        b"From: ann@example.org\nTo: news@example.com\nSubject: Fwd: Undeliverable: June\n\n"
        b"Got this, sent to my colleague, bea@example.org, yesterday. 550 5.1.1 it says.\n",
        # a vacation notice (null sender, as RFC 3834 asks) naming a colleague the same way
        b"Return-Path: <>\nFrom: cy@example.org\nTo: bounces@example.com\n"
        b"Auto-Submitted: auto-replied\nSubject: Away\n\n"
        b"I am away; please write to my colleague, dee@example.org, instead.\n",
        # titled like a bounce, with a reply code, but from a person and naming nobody
        b"From: eve@example.org\nTo: news@example.com\nSubject: Mail delivery failed\n\n"
        b"Your last issue gave me a 550 error when I replied.\n",
    ],
)
def test_bounce_heuristics_stay_away_from_peoples_mail(raw: bytes) -> None:
    verdict = classify(raw)

    assert verdict.kind in ("other", "auto_reply")
    assert verdict.recipients == ()


def test_a_bounce_is_no_auto_reply_though_it_says_auto_submitted() -> None:
    assert b"Auto-Submitted: auto-replied" in corpus("postfix_user_unknown.eml")
    assert verdict_of("postfix_user_unknown.eml").kind == "hard_bounce"


@pytest.mark.parametrize(
    "headers",
    [
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "X-Autorespond: on vacation",
        "Precedence: auto_reply",
        "Subject: Réponse automatique : absent",
        "Subject: =?utf-8?b?6Ieq5Yqo5Zue5aSNOiBKdW5l?=",  # 自动回复: June
        "Subject: Out of Office: June",
    ],
)
def test_auto_reply_signs(headers: str) -> None:
    raw = f"From: x@example.org\nTo: news@example.com\n{headers}\n\nAway.\n".encode()

    assert classify(raw).kind == "auto_reply"


def test_auto_submitted_no_is_a_person() -> None:
    raw = b"From: x@example.org\nAuto-Submitted: no\nSubject: Re: June\n\nHi\n"

    assert classify(raw).kind == "other"


# --- Unsubscribe requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "kind"),
    [
        (("unsubscribe@example.com",), "unsubscribe"),  # +june on the message's side
        (("Unsubscribe+june@EXAMPLE.COM",), "unsubscribe"),
        (("unsubscribe+other@example.com",), "unsubscribe"),  # +detail on both sides
        (("news@example.com", "unsubscribe@example.com"), "unsubscribe"),
        (("unsub@example.com",), "other"),
        (("unsubscribe@example.net",), "other"),
        ((), "other"),
    ],
)
def test_unsubscribe_address_ignores_case_and_detail(
    configured: tuple[str, ...], kind: str
) -> None:
    assert verdict_of("unsubscribe_mailto.eml", unsubscribe=configured).kind == kind


@pytest.mark.parametrize(
    ("subject", "kind"),
    [
        ("unsubscribe", "unsubscribe"),
        ("  Unsubscribe  ", "unsubscribe"),
        ("Re: RE: UNSUBSCRIBE", "unsubscribe"),
        ("Please unsubscribe me", "other"),
        ("Re: how do I unsubscribe?", "other"),
    ],
)
def test_unsubscribe_subject(subject: str, kind: str) -> None:
    raw = f"From: Ann <ann@Example.ORG>\nTo: news@example.com\nSubject: {subject}\n\n\n".encode()

    verdict = classify(raw)

    assert verdict.kind == kind
    assert verdict.recipients == (("ann@example.org",) if kind == "unsubscribe" else ())


def test_an_auto_reply_to_the_unsubscribe_address_is_no_request() -> None:
    raw = (
        b"From: away@example.org\nTo: unsubscribe@example.com\n"
        b"Auto-Submitted: auto-replied\nSubject: unsubscribe\n\nI am away.\n"
    )

    assert classify(raw, unsubscribe_addresses=UNSUBSCRIBE).kind == "auto_reply"


# --- Never raises --------------------------------------------------------------------------

KINDS = set(get_args(FeedbackKind))
CORPUS_FILES = sorted(EXPECTED)


def assert_well_formed(verdict: Verdict) -> None:
    assert verdict.kind in KINDS
    assert "\n" not in verdict.reason
    if verdict.diagnostic is not None:
        assert len(verdict.diagnostic) <= 300
        assert "\n" not in verdict.diagnostic
    for address in verdict.recipients:
        assert "@" in address
        assert not address.startswith("<")
    assert all(address == address.lower() for address in verdict.delivered_to)
    # Stored in SQLite and printed: no lone surrogates from undecodable bytes.
    texts = [verdict.reason, verdict.diagnostic or "", verdict.campaign or ""]
    for text in [*texts, *verdict.recipients, *verdict.delivered_to, *verdict.message_ids]:
        text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert_well_formed(classify(raw, unsubscribe_addresses=UNSUBSCRIBE))


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["replace", "delete", "duplicate", "truncate", "insert"]),
        st.floats(0, 1),
        st.integers(0, 300),
        st.sampled_from(
            [
                b"\n\n",
                b"--",
                b"\xff\xfe\xc3",
                b"=?utf-8?b?",
                b";",
                b"<",
                b"Content-Type: message/rfc822\n\n",
                b"Content-Type: multipart/mixed\n\n",
                b"Content-Type: message/delivery-status\n\n",
                b"Content-Transfer-Encoding: base64\n",
                "From: Système <MAILER-DAEMON@example.net>\n".encode(),
            ]
        ),
    ),
    min_size=1,
    max_size=6,
)


def mutated(raw: bytes, mutations: list[tuple[str, float, int, bytes]]) -> bytes:
    data = bytearray(raw)
    for how, where, length, piece in mutations:
        start = int(where * len(data))
        end = min(len(data), start + length)
        if how == "replace":
            data[start:end] = piece
        elif how == "delete":
            del data[start:end]
        elif how == "duplicate":
            data[start:start] = data[start:end]
        elif how == "truncate":
            del data[start:]
        else:
            data[start:start] = piece
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CORPUS_FILES), MUTATIONS)
def test_mutated_corpus_files_never_raise(
    name: str, mutations: list[tuple[str, float, int, bytes]]
) -> None:
    assert_well_formed(classify(mutated(corpus(name), mutations)))
