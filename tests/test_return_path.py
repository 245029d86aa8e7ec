"""return_path: each mail's envelope sender is its own VERP address, shown in previews and
the journal; the settings of the loop (return_path, inbox, the store) are checked at load."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair

from bulkmail.build import Builder
from bulkmail.errors import ConfigError
from bulkmail.feedback import verp
from bulkmail.journal.sqlite import Journal, journal_path
from bulkmail.load.campaign import load_campaign
from bulkmail.models import STORE_FILE, address_key
from bulkmail.pipeline import preview_campaign
from bulkmail.send import send_campaign, send_test


@pytest.fixture
def campaign(
    tmp_path: Path, smtpd: Server, tls: TLSPair, monkeypatch: pytest.MonkeyPatch
) -> CampaignDir:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = CampaignDir(tmp_path)
    c.csv(people(5))
    c.write(smtp=smtp_settings(smtpd, tls), return_path="bounces@example.com")
    return c


def _secret(c: CampaignDir) -> bytes:
    return verp.load_secret(c.campaigns / ".bulkmail" / verp.SECRET_FILE)


def test_each_mail_goes_out_with_its_own_verifiable_envelope_sender(
    campaign: CampaignDir, smtpd: Server
) -> None:
    send_campaign(campaign.yaml_path)

    senders = [m.mail_from for m in smtpd.inbox.messages]
    assert len(set(senders)) == 5
    secret = _secret(campaign)
    for message, person in zip(smtpd.inbox.messages, people(5), strict=True):
        assert message.rcpt_tos == (person["email"],)
        token = verp.read_token(message.mail_from, "bounces@example.com")
        assert token is not None
        assert token.tag == verp.campaign_tag("test-campaign")
        key = address_key(person["email"])
        assert verp.verify(token, secret, campaign="test-campaign", key=key)
        assert not verp.verify(token, secret, campaign="test-campaign", key="x@example.com")
        # The header From is the campaign's, whatever the envelope says.
        assert message.parsed()["From"] == "Bulkmail Team <news@example.com>"


def test_the_journal_shows_each_rows_envelope_sender(campaign: CampaignDir, smtpd: Server) -> None:
    send_campaign(campaign.yaml_path)

    path = journal_path(campaign.campaigns / ".bulkmail", "test-campaign")
    with Journal(path, lock=False) as journal:
        entries = list(journal.entries())
    assert [e.envelope_from for e in entries] == [m.mail_from for m in smtpd.inbox.messages]
    with Journal(path, lock=False) as journal:
        assert journal.entry_at_line(3) == entries[1]
        assert journal.entry_for_message(entries[1].message_id or "") == entries[1]


def test_without_return_path_the_envelope_sender_is_the_from_address(
    campaign: CampaignDir, smtpd: Server
) -> None:
    campaign.write(return_path=None)
    send_campaign(campaign.yaml_path)

    assert {m.mail_from for m in smtpd.inbox.messages} == {"news@example.com"}
    assert not (campaign.campaigns / ".bulkmail" / verp.SECRET_FILE).exists()


def test_the_key_is_made_once_owner_only_and_kept(campaign: CampaignDir, smtpd: Server) -> None:
    send_campaign(campaign.yaml_path)
    key_file = campaign.campaigns / ".bulkmail" / verp.SECRET_FILE
    first = key_file.read_bytes()
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    campaign.csv(people(5, start=10))
    send_campaign(campaign.yaml_path)
    assert key_file.read_bytes() == first


def test_a_key_from_the_environment_is_used_instead_of_a_file(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERP_KEY", "k" * 32)
    campaign.write(return_path={"address": "bounces@example.com", "secret_env": "VERP_KEY"})
    send_campaign(campaign.yaml_path)

    assert not (campaign.campaigns / ".bulkmail" / verp.SECRET_FILE).exists()
    token = verp.read_token(smtpd.inbox.messages[0].mail_from, "bounces@example.com")
    assert token is not None
    key = address_key(people(1)[0]["email"])
    assert verp.verify(token, b"k" * 32, campaign="test-campaign", key=key)


def test_previews_show_the_envelope_sender(campaign: CampaignDir) -> None:
    report = preview_campaign(campaign.yaml_path)

    index = (report.out / "index.html").read_text(encoding="utf-8")
    emls = sorted(report.out.glob("*.eml"))
    assert len(emls) == 5
    first = emls[0].read_bytes()
    assert first.startswith(b"Return-Path: <bounces+")
    address = first.split(b"<", 1)[1].split(b">", 1)[0].decode()
    assert f"bounces to {address}" in index
    token = verp.read_token(address, "bounces@example.com")
    assert token is not None
    assert token.line == 2


def test_a_test_mail_bounces_to_the_plain_return_path(campaign: CampaignDir, smtpd: Server) -> None:
    send_test(campaign.yaml_path, to="me@example.org", row=1)

    (message,) = smtpd.inbox.messages
    assert message.mail_from == "bounces@example.com"


def test_builder_gives_the_same_address_to_the_same_row_in_every_pass(
    campaign: CampaignDir,
) -> None:
    builder = Builder.load(load_campaign(campaign.yaml_path))
    first = [m.sender for m in builder.mails(workers=0)]
    again = [m.sender for m in builder.mails(workers=2)]
    assert first == again
    assert all(s.startswith("bounces+") and s.endswith("@example.com") for s in first)


# --- settings checked at load -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bounces+x@example.com", "has a +detail already"),
        ("not an address", "not a valid address"),
        ("b" * 40 + "@example.com", "too long to carry a token"),
        ({"secret_env": "X"}, "needs an 'address'"),
        ({"address": "bounces@example.com", "secret_env": "not a name"}, "environment variable"),
    ],
)
def test_a_bad_return_path_is_an_error_naming_the_setting(
    tmp_path: Path, value: object, message: str
) -> None:
    c = CampaignDir(tmp_path)
    c.write(return_path=value)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_campaign(c.yaml_path)
    assert "test.yaml" in str(caught.value)
    assert "return_path" in str(caught.value)


def test_a_missing_key_variable_stops_before_anything_is_sent(
    campaign: CampaignDir, smtpd: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERP_KEY", raising=False)
    campaign.write(return_path={"address": "bounces@example.com", "secret_env": "VERP_KEY"})
    with pytest.raises(ConfigError, match="VERP_KEY"):
        send_campaign(campaign.yaml_path)
    assert smtpd.inbox.messages == []


def _inbox(**fields: object) -> dict[str, object]:
    return {"protocol": "imap", "host": "127.0.0.1", "username": "bounces", **fields}


@pytest.mark.parametrize(
    ("inbox", "message"),
    [
        ({"host": "h", "username": "u"}, "needs a 'protocol'"),
        (_inbox(protocol="smtp"), "must be imap or pop3"),
        (_inbox(security="tls"), "must be one of ssl"),
        (_inbox(port=70000), "not a TCP port"),
        (_inbox(password="hunter2"), "never written in the campaign file"),
        (_inbox(password_env="hunter 2"), "name of an environment variable"),
        (_inbox(protocol="pop3", folder="Bounces"), "POP3 has one mailbox"),
        (_inbox(host="mail.example.com", security="none"), "refusing to send the password"),
        (_inbox(folder='a"b'), "not a folder name"),
    ],
)
def test_a_bad_inbox_is_an_error_naming_the_setting(
    tmp_path: Path, inbox: dict[str, object], message: str
) -> None:
    c = CampaignDir(tmp_path)
    c.write(inbox=inbox)
    with pytest.raises(ConfigError, match=message) as caught:
        load_campaign(c.yaml_path)
    assert "inbox" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_inbox_ports_follow_protocol_and_security(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    expected = {
        ("imap", "ssl"): 993,
        ("imap", "starttls"): 143,
        ("pop3", "ssl"): 995,
        ("pop3", "starttls"): 110,
    }
    for (protocol, security), port in expected.items():
        c.write(inbox=_inbox(protocol=protocol, security=security))
        inbox = load_campaign(c.yaml_path).inbox
        assert inbox is not None
        assert (inbox.port, inbox.folder) == (port, "INBOX")


def test_the_store_is_shared_by_the_folder_unless_the_campaign_names_one(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.write()
    campaign = load_campaign(c.yaml_path)
    assert campaign.store_path == c.campaigns / ".bulkmail" / STORE_FILE
    assert campaign.soft_bounce_limit == 3
    c.write(suppression_store="../shared/suppressed.db", soft_bounce_limit=2)
    campaign = load_campaign(c.yaml_path)
    assert campaign.store_path == (tmp_path / "shared" / "suppressed.db").resolve()
    assert campaign.soft_bounce_limit == 2
    c.write(soft_bounce_limit=0)
    with pytest.raises(ConfigError, match="soft_bounce_limit"):
        load_campaign(c.yaml_path)
