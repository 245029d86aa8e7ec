"""DKIM: mails signed with the campaign's key verify with dkimpy's own verifier (the DNS
answered by a stub holding the public key), as built, as previewed and as received by a
real SMTP server; keys made by `bulkmail dkim keygen`; the record checked by `check`.

No test looks anything up in DNS: the verifier's DNS is a stub and `check` gets the
record in a file.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner, Result

import bulkmail.compose.dkim as dkim_module
from bulkmail.build import Builder
from bulkmail.cli.app import app
from bulkmail.compose.dkim import (
    Signer,
    check_record,
    generate_key,
    parse_record,
    private_pem,
    record_value,
)
from bulkmail.errors import ConfigError
from bulkmail.load.campaign import load_campaign
from bulkmail.models import DkimSettings, OutgoingMail
from bulkmail.pipeline import preview_campaign
from bulkmail.send import send_campaign

runner = CliRunner()
DOMAIN = "example.com"
SELECTOR = "news2026"


def dns_stub(record: str) -> Callable[..., bytes | None]:
    """The DNS as the verifier asks it, holding ``record`` at the selector's name only."""

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        return record.encode() if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return get_txt


def verifies(data: bytes, record: str) -> bool:
    return bool(dkim.verify(data, dnsfunc=dns_stub(record)))


@pytest.fixture(params=["rsa", "ed25519"])
def key_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def signed_campaign(tmp_path: Path, kind: str, **dkim_settings: object) -> tuple[CampaignDir, str]:
    """A campaign whose mails are signed with a new ``kind`` key; and the key's record."""
    key = generate_key(kind)
    c = CampaignDir(tmp_path)
    key_file = c.file("keys/dkim.pem", private_pem(key))
    key_file.chmod(0o600)
    settings = {"domain": DOMAIN, "selector": SELECTOR, "private_key_file": "keys/dkim.pem"}
    c.write(dkim={**settings, **dkim_settings})
    return c, record_value(key)


def built_mails(c: CampaignDir) -> list[OutgoingMail]:
    return list(Builder.load(load_campaign(c.yaml_path)).mails(workers=0))


# --- signing ----------------------------------------------------------------------------


def test_each_built_mail_verifies_against_the_published_key(tmp_path: Path, key_kind: str) -> None:
    c, record = signed_campaign(tmp_path, key_kind)
    mails = built_mails(c)
    assert len(mails) == 3  # one of them with a non-ASCII name and city
    for mail in mails:
        assert mail.data.startswith(b"DKIM-Signature: v=1; a=")
        assert mail.size == len(mail.data)
        assert verifies(mail.data, record)
    algorithm = b"ed25519-sha256" if key_kind == "ed25519" else b"rsa-sha256"
    assert b"a=" + algorithm + b";" in mails[0].data
    assert b"c=relaxed/relaxed;" in mails[0].data


def test_the_signature_covers_the_headers_a_reader_sees(tmp_path: Path) -> None:
    c, _ = signed_campaign(tmp_path, "ed25519")
    c.write(reply_to="Help <help@example.com>")
    data = built_mails(c)[0].data
    signature = data.split(b"\r\n\r\n", 1)[0].split(b"DKIM-Signature:", 1)[1]
    tag = b"".join(signature.split()).split(b"h=", 1)[1].split(b";", 1)[0]
    assert tag.split(b":") == [
        b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
        b"content-type", b"list-unsubscribe", b"list-unsubscribe-post", b"reply-to",
    ]  # fmt: skip


def test_a_changed_subject_or_body_fails_verification(tmp_path: Path, key_kind: str) -> None:
    c, record = signed_campaign(tmp_path, key_kind)
    data = built_mails(c)[0].data
    assert verifies(data, record)
    assert not verifies(data.replace(b"Subject: Alice", b"Subject: Alicia", 1), record)
    assert not verifies(data.replace(b"Lyon", b"Paris", 1), record)


def test_a_signature_from_another_key_fails(tmp_path: Path) -> None:
    c, _ = signed_campaign(tmp_path, "rsa")
    assert not verifies(built_mails(c)[0].data, record_value(generate_key("rsa")))


def test_built_in_worker_processes_the_mails_are_signed_too(tmp_path: Path) -> None:
    c, record = signed_campaign(tmp_path, "ed25519")
    c.csv(people(40))
    mails = list(Builder.load(load_campaign(c.yaml_path)).mails(workers=2))
    assert len(mails) == 40
    assert all(verifies(mail.data, record) for mail in mails)


def test_the_previews_eml_files_carry_the_signature(tmp_path: Path) -> None:
    c, record = signed_campaign(tmp_path, "rsa")
    report = preview_campaign(c.yaml_path, workers=0)
    files = sorted(report.out.glob("*.eml"))
    assert len(files) == 3
    assert all(verifies(file.read_bytes(), record) for file in files)


def test_the_signature_survives_a_real_smtp_round_trip(
    tmp_path: Path,
    smtpd: Server,
    tls: TLSPair,
    key_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c, record = signed_campaign(tmp_path, key_kind)
    c.write(smtp=smtp_settings(smtpd, tls))
    report = send_campaign(c.yaml_path)
    assert report.accepted == 3
    assert len(smtpd.inbox.messages) == 3
    for message in smtpd.inbox.messages:
        assert verifies(message.content, record)


def test_the_key_can_come_from_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_key("rsa")
    # As a one-line variable with \n escapes, the way CI secrets are often stored.
    monkeypatch.setenv("NEWS_DKIM_KEY", private_pem(key).decode().replace("\n", "\\n"))
    c = CampaignDir(tmp_path)
    c.write(dkim={"domain": DOMAIN, "selector": SELECTOR, "private_key_env": "NEWS_DKIM_KEY"})
    assert all(verifies(mail.data, record_value(key)) for mail in built_mails(c))


# --- bad key settings: one line each, never the key --------------------------------------


def _key_error(c: CampaignDir) -> str:
    with pytest.raises(ConfigError) as caught:
        Builder.load(load_campaign(c.yaml_path))
    message = str(caught.value)
    assert "\n" not in message
    assert "PRIVATE KEY" not in message
    assert "MII" not in message
    return message


def raw_campaign(c: CampaignDir, dkim_lines: str) -> None:
    c.raw(
        "from: news@example.com\n"
        "subject: Hi\n"
        "template: ../templates/issue.html\n"
        "recipients: list.csv\n"
        "data: {month: June}\n"
        "dkim:\n" + dkim_lines
    )


def test_a_missing_key_file_names_the_setting_and_its_line(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/no.pem\n")
    with pytest.raises(ConfigError) as caught:
        load_campaign(c.yaml_path)
    assert str(caught.value) == (
        f"{c.yaml_path}:9: dkim.private_key_file: keys/no.pem: no such file"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"hello, not a key\n", "not a PEM private key"),
        (b"", "not a PEM private key"),
    ],
)
def test_a_file_that_is_not_a_private_key_is_refused(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    c = CampaignDir(tmp_path)
    c.file("keys/k.pem", content)
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/k.pem\n")
    message = _key_error(c)
    assert message.startswith(f"{c.yaml_path}:9: dkim.private_key_file: {expected}")


def test_a_public_key_is_refused_without_being_shown(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    public = generate_key("rsa").public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    c.file("keys/k.pem", pem)
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/k.pem\n")
    assert "not a PEM private key" in _key_error(c)


def test_an_ec_key_and_a_wrong_algorithm_are_refused(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    c.file("keys/ec.pem", pem)
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/ec.pem\n")
    assert "key cannot sign DKIM; use an RSA or ed25519 key" in _key_error(c)
    c.file("keys/ed.pem", private_pem(generate_key("ed25519")))
    raw_campaign(
        c,
        "  domain: example.com\n  selector: s1\n  algorithm: rsa-sha256\n"
        "  private_key_file: keys/ed.pem\n",
    )
    message = _key_error(c)
    assert message.startswith(f"{c.yaml_path}:10: dkim.private_key_file: the key is ed25519")
    assert "not the configured algorithm rsa-sha256" in message


def small_rsa_key() -> rsa.RSAPrivateKey:
    """A 512-bit RSA key, which `cryptography` will load but not generate."""
    rng = random.Random(512)

    def prime() -> int:
        while True:
            n = rng.getrandbits(256) | (1 << 255) | 1
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17)) and n % 65537 != 1:
                return n

    p, q = prime(), prime()
    d = pow(65537, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(65537, p * q)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), public
    )
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def test_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.file("keys/k.pem", private_pem(small_rsa_key()))
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/k.pem\n")
    assert "the RSA key has 512 bits" in _key_error(c)


def test_an_unset_key_variable_is_one_line(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_env: NO_SUCH_KEY\n")
    assert _key_error(c) == (
        f"{c.yaml_path}:9: dkim.private_key_env: the environment variable NO_SUCH_KEY "
        "(the DKIM private key) is not set"
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("  domain: example.com\n  selector: s1\n", "dkim: give exactly one of"),
        ("  selector: s1\n  private_key_env: K\n", "dkim: needs a 'domain'"),
        (
            "  domain: example.com\n  selector: s1\n  private_key: abc\n",
            "dkim.private_key: the private key is never written in the campaign file",
        ),
        (
            "  domain: example.com\n  selector: s1\n  private_key_env: '-----BEGIN'\n",
            "dkim.private_key_env: must be the name of an environment variable, not the key",
        ),
        (
            "  domain: example.com\n  selector: s1\n  private_key_env: K\n  algorithm: rsa\n",
            "dkim.algorithm: 'rsa': must be one of rsa-sha256, ed25519-sha256",
        ),
        ("  domain: x\n  selector: s1\n  private_key_env: K\n", "dkim.domain: 'x': must be"),
        ("  domain: a.org\n  selector: a b\n  private_key_env: K\n", "dkim.selector: 'a b'"),
    ],
)
def test_bad_dkim_settings_are_one_line_errors(tmp_path: Path, lines: str, expected: str) -> None:
    c = CampaignDir(tmp_path)
    raw_campaign(c, lines)
    with pytest.raises(ConfigError) as caught:
        load_campaign(c.yaml_path)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_key_is_in_no_repr(tmp_path: Path) -> None:
    c, _ = signed_campaign(tmp_path, "rsa")
    campaign = load_campaign(c.yaml_path)
    assert campaign.dkim is not None
    signer = Signer.load(campaign.dkim)
    assert "PRIVATE" not in repr(signer)
    assert "PRIVATE" not in repr(campaign)


# --- keygen -----------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_keygen_writes_an_owner_only_key_and_the_record_that_verifies(
    tmp_path: Path, key_kind: str
) -> None:
    out = tmp_path / "dkim.pem"
    result = invoke(
        "dkim", "keygen", "--selector", SELECTOR, "--domain", DOMAIN, "--type", key_kind,
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    line = result.stdout.strip()
    assert line.startswith(f'{SELECTOR}._domainkey.{DOMAIN} TXT "v=DKIM1; k={key_kind}; p=')
    assert "PRIVATE" not in result.output
    # The record printed is the one the key verifies against.
    c = CampaignDir(tmp_path / "c")
    c.file("dkim.pem", out.read_bytes())
    c.write(dkim={"domain": DOMAIN, "selector": SELECTOR, "private_key_file": "dkim.pem"})
    tags = parse_record(line)
    assert tags is not None
    record = "; ".join(f"{name}={value}" for name, value in tags.items())
    assert verifies(built_mails(c)[0].data, record)


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    out = tmp_path / "dkim.pem"
    out.write_text("the key in use")
    result = invoke("dkim", "keygen", "--selector", "s", "--domain", DOMAIN, "--out", str(out))
    assert result.exit_code == 1
    assert "exists; not overwritten" in result.output
    assert out.read_text() == "the key in use"


def test_keygen_refuses_a_bad_type_or_name(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    for args, expected in [
        (["--type", "dsa"], "--type: 'dsa': must be rsa or ed25519"),
        (["--domain", "nodots"], "--domain: 'nodots': must be a domain name"),
    ]:
        base = {"--selector": "s", "--domain": DOMAIN, "--out": str(out)}
        merged = {**base, **dict(zip(args[::2], args[1::2], strict=True))}
        result = invoke("dkim", "keygen", *[item for pair in merged.items() for item in pair])
        assert result.exit_code == 1
        assert expected in result.output
        assert not out.exists()


# --- check: the key against its record ---------------------------------------------------


def test_check_with_the_matching_record_passes(tmp_path: Path, key_kind: str) -> None:
    c, record = signed_campaign(tmp_path, key_kind)
    as_printed = tmp_path / "record.txt"
    as_printed.write_text(f'{SELECTOR}._domainkey.{DOMAIN} TXT "{record}"\n')
    result = invoke("check", str(c.yaml_path), "--dns-record", str(as_printed))
    assert result.exit_code == 0, result.output
    assert "not checked" not in result.output


def test_check_with_another_keys_record_fails_naming_both(tmp_path: Path) -> None:
    c, _ = signed_campaign(tmp_path, "rsa")
    other = tmp_path / "record.txt"
    # A zone file's form: the value in several quoted strings.
    value = record_value(generate_key("rsa"))
    other.write_text(f'{SELECTOR}._domainkey IN TXT ( "{value[:100]}"\n "{value[100:]}" )\n')
    result = invoke("check", str(c.yaml_path), "--dns-record", str(other))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2  # the error, and "nothing was sent."
    assert "dkim.private_key_file" in lines[0]
    assert "record.txt" in lines[0]
    assert "does not match the record" in lines[0]


def test_check_refuses_a_record_file_that_is_no_dkim_record(tmp_path: Path) -> None:
    c, _ = signed_campaign(tmp_path, "ed25519")
    junk = tmp_path / "record.txt"
    junk.write_text("v=spf1 -all\n")
    result = invoke("check", str(c.yaml_path), "--dns-record", str(junk))
    assert result.exit_code == 1
    assert "not a DKIM record" in result.stderr


def test_a_record_that_cannot_be_looked_up_is_a_warning_not_an_error(tmp_path: Path) -> None:
    c, _ = signed_campaign(tmp_path, "ed25519")
    campaign = load_campaign(c.yaml_path)
    assert campaign.dkim is not None
    warning = check_record(campaign.dkim, lookup=lambda name: None)  # offline
    assert warning == f"could not look up {SELECTOR}._domainkey.{DOMAIN}; not checked"


def test_the_openssl_rsa_step_makes_dkimpys_own_signature(tmp_path: Path) -> None:
    """RSASSA-PKCS1-v1_5 is deterministic: the fast path must give the very same bytes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(private_pem(key))
    Signer.load(DkimSettings(DOMAIN, SELECTOR, key_file))  # registers it for OpenSSL
    numbers = key.private_numbers()
    as_dkimpy_has_it = {
        "modulus": numbers.public_numbers.n, "publicExponent": numbers.public_numbers.e,
        "privateExponent": numbers.d, "prime1": numbers.p, "prime2": numbers.q,
        "exponent1": numbers.dmp1, "exponent2": numbers.dmq1, "coefficient": numbers.iqmp,
    }  # fmt: skip
    digest = dkim.HashThrough(hashlib.sha256(b"the canonical headers"))
    assert dkim_module._pure_rsa_sign is not None
    pure = bytes(dkim_module._pure_rsa_sign(digest, as_dkimpy_has_it))
    assert dkim.RSASSA_PKCS1_v1_5_sign(digest, as_dkimpy_has_it) == pure


def test_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    key = generate_key("rsa")
    encryption = serialization.BestAvailableEncryption(b"passphrase")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    c.file("keys/k.pem", pem)
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/k.pem\n")
    assert _key_error(c) == (
        f"{c.yaml_path}:9: dkim.private_key_file: the private key is encrypted; DKIM signing "
        "needs it unencrypted (readable by its owner only)"
    )


def test_a_bad_key_through_the_cli_is_one_line_and_exit_1(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.file("keys/k.pem", b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    raw_campaign(c, "  domain: example.com\n  selector: s1\n  private_key_file: keys/k.pem\n")
    result = invoke("check", str(c.yaml_path))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {c.yaml_path}:9: dkim.private_key_file: not a PEM private key (make one with "
        "`bulkmail dkim keygen`)",
        "nothing was sent.",
    ]
    assert "bm90IGEga2V5" not in result.output
