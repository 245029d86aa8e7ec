"""DKIM: sign each built mail with the campaign's key, make keys, check the published record.

The key is read and checked once per run (`Signer.load`, called when the mails' builder
loads), so a wrong key is one error before anything is built, and forked workers inherit
it. Signing uses dkimpy (a maintained implementation, also used to verify in the tests);
the key pair handling uses `cryptography`. The private key is never shown: not in a
repr, an error or a log line.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from bulkmail.errors import ConfigError, Location
from bulkmail.models import DkimAlgorithm, DkimSettings

# The headers a reader sees and a forwarder must not change (RFC 6376 5.4), those present
# in a mail are signed. dkimpy refuses to sign without From, which every mail has.
SIGNED_HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "List-Unsubscribe", "List-Unsubscribe-Post", "Reply-To",
)  # fmt: skip
_SIGNED = {name.lower().encode("ascii"): name.encode("ascii") for name in SIGNED_HEADERS}
_HEADER_NAME = re.compile(rb"^([!-9;-~]+):", re.MULTILINE)
# Verifiers reject RSA keys under 1024 bits (RFC 8301); 2048 is what keygen makes.
MIN_RSA_BITS = 1024
# How long `check` waits for the system resolver before saying it could not look.
DNS_TIMEOUT = 3.0

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# dkimpy makes RSA signatures in pure Python (~8 ms a mail for RSA-2048, 8 times the cost
# of building the mail); OpenSSL takes under 1 ms. dkimpy still does all of DKIM
# (canonicalization, hashes, the header); only its last step, RSASSA-PKCS1-v1_5 over the
# SHA-256 digest it computed, is done by `cryptography` for the keys a Signer loaded, by
# their modulus. Any other key or digest goes to dkimpy's own function, so the result is
# the same signature either way (RSASSA-PKCS1-v1_5 is deterministic).
_OPENSSL_KEYS: dict[int, rsa.RSAPrivateKey] = {}
_pure_rsa_sign = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)


def _rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    key = _OPENSSL_KEYS.get(private_key.get("modulus", 0))
    if key is None or getattr(digest, "name", "") != "sha256":
        assert _pure_rsa_sign is not None
        return bytes(_pure_rsa_sign(digest, private_key))
    return key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


if _pure_rsa_sign is not None:
    dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign


@dataclass(frozen=True)
class Signer:
    """Signs mails for ``selector._domainkey.domain`` with a key read once per run."""

    domain: str
    selector: str
    algorithm: DkimAlgorithm
    public_key: str  # the p= value of the DNS record this key needs
    where: Location = field(compare=False)  # where the key setting was written
    # In the form dkimpy takes: PEM (PKCS#1) for RSA, the base64 seed for ed25519.
    _key: bytes = field(repr=False, compare=False)

    @classmethod
    def load(cls, settings: DkimSettings) -> Signer:
        """Read and check the key the settings name; ConfigError (where it is set) if it
        is missing, unreadable, not a private key or not of the configured algorithm."""
        where = settings.key_where or Location("campaign", field="dkim")
        key = load_private_key(_key_bytes(settings, where), where)
        algorithm = _algorithm(key)
        if settings.algorithm is not None and settings.algorithm != algorithm:
            raise ConfigError(
                f"the key is {_kind(key)}, which signs with {algorithm}, not the configured "
                f"algorithm {settings.algorithm}",
                where=where,
            )
        return cls(
            domain=settings.domain,
            selector=settings.selector,
            algorithm=algorithm,
            public_key=public_key_text(key),
            where=where,
            _key=_signing_form(key),
        )

    @property
    def record_name(self) -> str:
        """Where the public key is published: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, data: bytes) -> bytes:
        """``data`` (a complete mail, CRLF line ends) with its DKIM-Signature in front."""
        head = data.split(b"\r\n\r\n", 1)[0]
        present = {name.lower() for name in _HEADER_NAME.findall(head)}
        include = [_SIGNED[name] for name in _SIGNED if name in present]
        signature: bytes = dkim.sign(
            data,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self._key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=self.algorithm.encode("ascii"),
            include_headers=include,
            linesep=b"\r\n",
        )
        return signature + data

    def record(self) -> str:
        """The TXT record to publish, as a zone file line."""
        value = f"v=DKIM1; k={_record_kind(self.algorithm)}; p={self.public_key}"
        return zone_line(self.record_name, value)

    def record_problem(self, record: str, source: str) -> str | None:
        """Why ``record`` (a TXT record's text, from ``source``) does not publish this
        key, or None if it does."""
        tags = parse_record(record)
        if tags is None:
            return f'{source}: not a DKIM record (expected "v=DKIM1; k=...; p=...")'
        published = re.sub(r"\s+", "", tags.get("p", ""))
        if not published:
            return f"{source}: the record publishes no key (p= is empty: the key is revoked)"
        kind = tags.get("k", "rsa")
        wanted = _record_kind(self.algorithm)
        if published != self.public_key or kind != wanted:
            return (
                f"the key in {self.where} (k={wanted}; p={_short(self.public_key)}) does not "
                f"match the record in {source} (k={kind}; p={_short(published)}); publish "
                f'{self.record_name} TXT "v=DKIM1; k={wanted}; p=..." as `bulkmail dkim '
                "keygen` printed it, or configure the key it was made for"
            )
        return None


def check_record(
    settings: DkimSettings,
    record_file: Path | None = None,
    *,
    lookup: Callable[[str], str | None] | None = None,
) -> str | None:
    """Check that the published record holds the configured key's public half: the record
    in ``record_file`` if given, else the one ``lookup`` finds in DNS. ConfigError if it
    does not; a warning (returned) if it could not be looked up: never an error offline."""
    signer = Signer.load(settings)
    if record_file is not None:
        try:
            record = record_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the DNS record file: {exc.strerror}", where=Location(record_file)
            ) from None
        source = str(Location(record_file))
    else:
        found = (lookup or lookup_record)(signer.record_name)
        if found is None:
            return f"could not look up {signer.record_name}; not checked"
        record = found
        source = f"DNS ({signer.record_name})"
    problem = signer.record_problem(record, source)
    if problem is not None:
        raise ConfigError(problem, where=signer.where)
    return None


def write_key_file(path: Path, pem: bytes) -> None:
    """Write a new private key readable by its owner only; FileExistsError if ``path``
    exists (a key in use must never be replaced by accident)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)  # whatever the umask
        file.write(pem)


def _key_bytes(settings: DkimSettings, where: Location) -> bytes:
    if settings.private_key_env is not None:
        value = os.environ.get(settings.private_key_env)
        if not value:
            raise ConfigError(
                f"the environment variable {settings.private_key_env} (the DKIM private key) "
                "is not set",
                where=where,
            )
        if "\n" not in value and "\\n" in value:  # a PEM written on one line with \n's
            value = value.replace("\\n", "\n")
        return value.encode("utf-8", "replace")
    assert settings.private_key_file is not None  # one of the two is set (load/campaign.py)
    try:
        return settings.private_key_file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{settings.private_key_file}: no such file", where=where) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the key file: {exc.strerror}", where=where) from None


def load_private_key(data: bytes, where: Location) -> PrivateKey:
    """The PEM private key in ``data``; ConfigError (never quoting the data) if it isn't one."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            "the private key is encrypted; DKIM signing needs it unencrypted (readable by "
            "its owner only)",
            where=where,
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            "not a PEM private key (make one with `bulkmail dkim keygen`)", where=where
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"the RSA key has {key.key_size} bits; receivers ignore signatures made with "
                f"fewer than {MIN_RSA_BITS} (use 2048)",
                where=where,
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ConfigError(
        f"a {type(key).__name__.removeprefix('_')} key cannot sign DKIM; use an RSA or ed25519 key",
        where=where,
    )


def generate_key(kind: str, bits: int = 2048) -> PrivateKey:
    """A new private key: ``kind`` "rsa" (of ``bits``) or "ed25519"."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (what `Signer.load` reads back)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_text(key: PrivateKey) -> str:
    """The record's p= value: the DER public key (RSA, RFC 6376) or the raw 32 bytes
    (ed25519, RFC 8463), in base64."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode("ascii")


def record_value(key: PrivateKey) -> str:
    """The TXT record's text for ``key``: ``v=DKIM1; k=rsa; p=...``."""
    return f"v=DKIM1; k={_record_kind(_algorithm(key))}; p={public_key_text(key)}"


def zone_line(name: str, value: str) -> str:
    """``name TXT "v=DKIM1; k=...; p=..."``; a long value split into 255-byte strings (the
    most one TXT string may hold), which resolvers join back."""
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{name} TXT {strings}"


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DKIM TXT record, given as its value, as quoted strings (a zone file
    line, `dig` output) or as `bulkmail dkim keygen` prints it; None if it isn't one."""
    quoted = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    value = "".join(quoted) if quoted else text
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags[name.strip()] = tag_value.strip()
    if "p" not in tags or tags.get("v", "DKIM1") != "DKIM1":
        return None
    return tags


def lookup_record(name: str, *, timeout: float = DNS_TIMEOUT) -> str | None:
    """The TXT record at ``name`` from the system's resolver, or None if it could not be
    looked up (no network, no resolver, no such record, a timeout: anything)."""
    try:
        import dns.resolver

        answer = dns.resolver.resolve(name, "TXT", lifetime=timeout)
    except Exception:  # any failure means "not checked", never an error
        return None
    for rdata in answer:
        text = b"".join(rdata.strings).decode("ascii", "replace")
        if "p=" in text:
            return text
    return None


def _algorithm(key: PrivateKey) -> DkimAlgorithm:
    return "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"


def _record_kind(algorithm: DkimAlgorithm) -> str:
    return "ed25519" if algorithm == "ed25519-sha256" else "rsa"


def _kind(key: PrivateKey) -> str:
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else f"RSA-{key.key_size}"


def _signing_form(key: PrivateKey) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        _OPENSSL_KEYS[key.private_numbers().public_numbers.n] = key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(seed)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _short(public_key: str) -> str:
    """A public key shortened for a message: its start and end (it is public anyway)."""
    return public_key if len(public_key) <= 24 else f"{public_key[:8]}...{public_key[-12:]}"
