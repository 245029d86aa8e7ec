"""Per-recipient envelope senders (VERP) that tell whose mail bounced, and can't be forged.

Each mail's MAIL FROM is the campaign's return path with a token after a ``+``:
``bounces+<token>@example.com``. A bounce goes back to that address, so its token says
which campaign (by `campaign_tag`) and which CSV line the mail was for, whatever the
bounce itself says or fails to say. The token carries a MAC of tag, line and the row's
address key, made with a secret only the sender has: a stranger cannot make a token that
suppresses someone else's address, and a token that no longer matches its row (the CSV
was edited since) fails to verify instead of suppressing the wrong person.

The token is RFC 4648 base32 (lower case, no padding) of 17 bytes: the tag (5 bytes), the
line (4 bytes, big-endian) and the MAC (HMAC-SHA256 truncated to 8 bytes): 28 letters and
digits, which every MTA passes unchanged, give or take their case.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from bulkmail.errors import ConfigError, JournalError, Location
from bulkmail.models import address_key
from bulkmail.owner_only import place_once, sync_folder, tighten

SECRET_FILE = "verp.key"  # in the campaign folder's .bulkmail, beside the journals
SECRET_BYTES = 32
MIN_ENV_SECRET = 16  # characters of a secret given in an environment variable
TAG_BYTES, LINE_BYTES, MAC_BYTES = 5, 4, 8
TOKEN_LENGTH = 28  # base32 letters of the 17 bytes
SEPARATOR = "+"
MAX_LOCAL_PART = 64  # octets (RFC 5321 4.5.3.1.1)
# What the token and its separator take of the local part.
TOKEN_ROOM = len(SEPARATOR) + TOKEN_LENGTH
MAX_LINE = 2 ** (8 * LINE_BYTES) - 1
_DOMAIN = b"bulkmail VERP v1\0"  # keeps these MACs apart from any other use of the secret
# A dot-atom local part (RFC 5322) in ASCII, without the separator: no quoting, nothing an
# MTA might rewrite.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+)*")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class Token:
    """What a VERP address says: the campaign's tag, the CSV line and the MAC."""

    tag: str
    line: int
    mac: bytes


# --- the secret --------------------------------------------------------------------------------


def load_secret(path: Path) -> bytes:
    """The VERP key kept in ``path``, made (32 random bytes) if there is none yet.

    The file is 0600 in a 0700 folder whatever the umask. A new key is written beside its
    place and linked there, which never replaces a file: when two processes make it at
    once, both end with the first one's. A key that is lost or changed makes the tokens
    of mails already sent unverifiable, so a file of the wrong size is refused, never
    replaced (JournalError, one line, naming the file).
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        return _new_secret(path)
    except OSError as exc:
        raise _secret_error(path, f"cannot read the VERP key: {exc.strerror or exc}") from None


def _new_secret(path: Path) -> bytes:
    """Make the key (unless another process does first) and read the one that won."""
    try:
        _make_secret(path)
        return _read_secret(path)
    except OSError as exc:
        raise _secret_error(path, f"cannot create the VERP key: {exc.strerror or exc}") from None


def _read_secret(path: Path) -> bytes:
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        data = file.read(SECRET_BYTES + 1)  # never more: a wrong file may be huge
    if len(data) != SECRET_BYTES:
        raise _secret_error(
            path,
            f"the VERP key is {max(size, len(data))} bytes, not {SECRET_BYTES}: it is damaged "
            "or not a bulkmail key; restore it from a backup, or delete it (bounces of mails "
            "already sent will then not be recognised)",
        )
    tighten(path)
    return data


def _make_secret(path: Path) -> None:
    folder = path.parent
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)  # the umask may have taken the owner's own bits
    tighten(folder)
    new = path.with_name(f"{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        place_once(new, path)
    finally:
        new.unlink(missing_ok=True)
    sync_folder(folder)


def _secret_error(path: Path, message: str) -> JournalError:
    return JournalError(message, where=Location(path))


def secret_from_env(name: str, *, where: Location | None = None) -> bytes:
    """The VERP key in the environment variable ``name``, for several machines that send
    and read bounces with one key. ConfigError if it is unset or shorter than 16
    characters; its value is never shown."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"the environment variable {name} (the VERP key) is not set", where=where)
    if len(value) < MIN_ENV_SECRET:
        raise ConfigError(
            f"the environment variable {name} (the VERP key) is too short: it needs at "
            f"least {MIN_ENV_SECRET} characters (e.g. `openssl rand -hex 32`)",
            where=where,
        )
    return value.encode("utf-8", "surrogatepass")


# --- addresses ---------------------------------------------------------------------------------


def campaign_tag(campaign: str) -> str:
    """A short tag that names ``campaign`` (its name) in tokens: 8 base32 letters."""
    return _b32(_tag_bytes(campaign))


def return_path_problem(address: str) -> str | None:
    """Why ``address`` can't be a VERP return path, or None if it can.

    It must be a plain ASCII ``local@domain`` (a dot-atom local part: the envelope sender
    goes out without SMTPUTF8), without a ``+`` (the token's separator), and short enough
    that the local part with ``+`` and the token fits in 64 octets.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"{address!r}: not an address (local@domain)"
    if not address.isascii():
        return f"{address!r}: must be ASCII (the envelope sender of every mail is made from it)"
    if SEPARATOR in local:
        return (
            f"{address!r}: has a {SEPARATOR}detail already; give the plain address: each "
            f"mail's token goes after its {SEPARATOR}"
        )
    if not _LOCAL_PART.fullmatch(local) or not _HOSTNAME.fullmatch(domain.removesuffix(".")):
        return f"{address!r}: must be a plain address such as bounces@example.com"
    if len(local) + TOKEN_ROOM > MAX_LOCAL_PART:
        return (
            f"{address!r}: the part before @ is too long to carry a token (at most "
            f"{MAX_LOCAL_PART - TOKEN_ROOM} characters)"
        )
    return None


def make_address(return_path: str, secret: bytes, *, campaign: str, line: int, key: str) -> str:
    """The envelope sender of the mail for CSV line ``line`` (address key ``key``) of
    ``campaign``: ``bounces@example.com`` -> ``bounces+<token>@example.com``.

    ValueError if ``return_path`` can't be one (`return_path_problem`; the campaign's
    loader checks it first) or the line doesn't fit in the token.
    """
    problem = return_path_problem(return_path)
    if problem is not None:
        raise ValueError(problem)
    if not 0 <= line <= MAX_LINE:
        raise ValueError(f"line {line} does not fit in a VERP token (0 to {MAX_LINE})")
    tag = _tag_bytes(campaign)
    body = tag + line.to_bytes(LINE_BYTES, "big")
    token = _b32(body + _mac(secret, tag, line, key))
    local, _, domain = return_path.rpartition("@")
    return f"{local}{SEPARATOR}{token}@{domain}"


def read_token(address: str, return_path: str) -> Token | None:
    """The token of ``address`` if it is a VERP address of ``return_path``, else None.

    Compared without regard to case (some MTAs change the case of the local part), and
    with any <angle brackets> around ``address`` left out. A token is taken only in its
    one exact spelling, so no two spellings name the same token.
    """
    candidate = address.strip().removeprefix("<").removesuffix(">").lower()
    local, _, domain = return_path.lower().rpartition("@")
    prefix, suffix = local + SEPARATOR, "@" + domain
    if not (candidate.startswith(prefix) and candidate.endswith(suffix)):
        return None
    text = candidate[len(prefix) : len(candidate) - len(suffix)]
    if len(text) != TOKEN_LENGTH:
        return None
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8), casefold=True)
    except ValueError:
        return None
    if _b32(data) != text:  # unused low bits of the last letter set: not one we made
        return None
    tag, rest = data[:TAG_BYTES], data[TAG_BYTES:]
    line = int.from_bytes(rest[:LINE_BYTES], "big")
    return Token(tag=_b32(tag), line=line, mac=rest[LINE_BYTES:])


def verify(token: Token, secret: bytes, *, campaign: str, key: str) -> bool:
    """Whether ``token`` was made with ``secret`` for ``campaign``'s row with address
    key ``key`` at the token's line: False for a forged, altered or stale token."""
    tag = _tag_bytes(campaign)
    if not hmac.compare_digest(token.tag, _b32(tag)):
        return False
    return hmac.compare_digest(token.mac, _mac(secret, tag, token.line, key))


def _tag_bytes(campaign: str) -> bytes:
    return hashlib.sha256(campaign.encode("utf-8", "surrogatepass")).digest()[:TAG_BYTES]


def _mac(secret: bytes, tag: bytes, line: int, key: str) -> bytes:
    """The MAC of tag, line and address key. Tag and line have fixed lengths, so the
    message is unambiguous."""
    message = (
        _DOMAIN
        + tag
        + line.to_bytes(LINE_BYTES, "big")
        + address_key(key).encode("utf-8", "surrogatepass")
    )
    return hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()
