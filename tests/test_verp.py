"""VERP return paths: each mail's envelope sender names its campaign and row, survives an
MTA's change of case, fits in 64 octets, and can't be forged or reused for another row;
its key is made once, owner-only, and shared by processes that make it at once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.errors import ConfigError, JournalError
from bulkmail.feedback.verp import (
    MAX_LINE,
    SECRET_BYTES,
    TOKEN_ROOM,
    Token,
    campaign_tag,
    load_secret,
    make_address,
    read_token,
    return_path_problem,
    secret_from_env,
    verify,
)

SECRET = bytes(range(32))
RETURN = "bounces@example.com"
BOB = "bob@example.com"


def verp(line: int = 48, *, campaign: str = "june", key: str = BOB) -> str:
    return make_address(RETURN, SECRET, campaign=campaign, line=line, key=key)


def token_of(address: str) -> Token:
    token = read_token(address, RETURN)
    assert token is not None
    return token


# --- 1. addresses and tokens --------------------------------------------------------------------


def test_address_is_the_return_path_with_a_token_after_a_plus() -> None:
    address = verp()

    local, _, domain = address.partition("@")
    assert domain == "example.com"
    assert local.startswith("bounces+")
    assert len(local) == len("bounces") + TOKEN_ROOM
    assert local.isascii()
    assert local.islower()
    assert local.replace("+", "").isalnum()


def test_token_names_campaign_and_line_and_verifies_for_its_row() -> None:
    token = token_of(verp(48))

    assert token.tag == campaign_tag("june")
    assert token.line == 48
    assert verify(token, SECRET, campaign="june", key=BOB)


def test_campaign_tag_is_short_stable_and_tells_campaigns_apart() -> None:
    assert campaign_tag("june") == campaign_tag("june")
    assert campaign_tag("june") != campaign_tag("July")
    assert len(campaign_tag("a long campaign name, with spaces and é")) == 8


@pytest.mark.parametrize("change", [str.upper, str.lower, str.title, lambda a: f"<{a}>"])
def test_token_survives_a_change_of_case(change: Callable[[str], str]) -> None:
    token = read_token(change(verp()), "BOUNCES@Example.COM")

    assert token == token_of(verp())
    assert verify(token, SECRET, campaign="june", key=BOB.upper())


def test_every_changed_letter_fails() -> None:
    address = verp()
    start = len("bounces+")
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for n in range(start, start + TOKEN_ROOM - 1):
        for letter in alphabet.replace(address[n], ""):
            changed = address[:n] + letter + address[n + 1 :]
            token = read_token(changed, RETURN)
            assert token is None or not verify(token, SECRET, campaign="june", key=BOB), changed


def test_another_secret_fails() -> None:
    assert not verify(token_of(verp()), bytes(32), campaign="june", key=BOB)


def test_another_row_fails() -> None:
    token = token_of(verp(48))

    assert not verify(token, SECRET, campaign="june", key="ann@example.com")
    assert not verify(token, SECRET, campaign="july", key=BOB)
    moved = Token(token.tag, 49, token.mac)  # the row at another line
    assert not verify(moved, SECRET, campaign="june", key=BOB)


@pytest.mark.parametrize(
    "address",
    [
        "bounces@example.com",  # the return path itself
        "bounces+@example.com",
        "other+aaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",
        "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org",
        "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",  # one letter short
        "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",  # one too many
        "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaa1@example.com",  # 1 is no base32 letter
        "xbounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",
    ],
)
def test_what_is_not_a_verp_address_of_the_return_path_has_no_token(address: str) -> None:
    assert read_token(address, RETURN) is None


def test_only_one_spelling_of_a_token_is_read() -> None:
    # The last letter carries 4 bits past the 17 bytes: set, they'd spell the same bytes.
    address = verp()
    local, _, domain = address.partition("@")
    last = local[-1]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    twin = alphabet[alphabet.index(last) | 1] if alphabet.index(last) % 2 == 0 else None
    assert twin is not None, "the token's last letter has its unused bits clear"

    assert read_token(f"{local[:-1]}{twin}@{domain}", RETURN) is None


def test_largest_line_fits_and_a_larger_one_is_refused() -> None:
    assert token_of(verp(MAX_LINE)).line == MAX_LINE
    assert token_of(verp(0)).line == 0
    with pytest.raises(ValueError, match="does not fit"):
        verp(MAX_LINE + 1)
    with pytest.raises(ValueError, match="does not fit"):
        verp(-1)


# --- 2. the return path -------------------------------------------------------------------------


def test_longest_return_path_makes_a_local_part_of_64_octets() -> None:
    longest = "b" * (64 - TOKEN_ROOM) + "@example.com"
    assert return_path_problem(longest) is None

    address = make_address(longest, SECRET, campaign="june", line=MAX_LINE, key=BOB)

    assert len(address.partition("@")[0].encode()) == 64
    assert read_token(address, longest) is not None


def test_return_path_one_octet_longer_is_refused() -> None:
    too_long = "b" * (65 - TOKEN_ROOM) + "@example.com"

    problem = return_path_problem(too_long)

    assert problem is not None
    assert f"at most {64 - TOKEN_ROOM} characters" in problem
    with pytest.raises(ValueError, match="too long"):
        make_address(too_long, SECRET, campaign="june", line=2, key=BOB)


@pytest.mark.parametrize(
    ("address", "phrase"),
    [
        ("bounces+news@example.com", "+detail already"),
        ("bounces", "not an address"),
        ("@example.com", "not an address"),
        ("bounces@", "not an address"),
        ("bounçes@example.com", "ASCII"),
        ("bounces@exämple.com", "ASCII"),
        ('"bounces here"@example.com', "plain address"),
        ("bounces..x@example.com", "plain address"),
        ("bounces@exa mple.com", "plain address"),
        ("bounces@-example.com", "plain address"),
    ],
)
def test_return_path_that_cannot_carry_a_token_is_a_problem(address: str, phrase: str) -> None:
    problem = return_path_problem(address)

    assert problem is not None
    assert phrase in problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    "address", ["bounces@example.com", "b.o-u_n=c'es@mail.example.com", "x@example.com."]
)
def test_plain_return_paths_are_fine(address: str) -> None:
    assert return_path_problem(address) is None


# --- 3. property: every token made is read back and verifies for its row only ------------------

campaigns = st.text(min_size=1, max_size=40)
local_parts = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
keys = st.emails()


@settings(max_examples=200, deadline=None)
@given(
    secret=st.binary(min_size=16, max_size=64),
    campaign=campaigns,
    line=st.integers(min_value=0, max_value=MAX_LINE),
    key=keys,
    local=local_parts,
    upper=st.booleans(),
)
def test_round_trip(
    secret: bytes, campaign: str, line: int, key: str, local: str, upper: bool
) -> None:
    return_path = f"{local}@example.com"
    address = make_address(return_path, secret, campaign=campaign, line=line, key=key)
    assert len(address.partition("@")[0]) <= 64

    token = read_token(address.upper() if upper else address, return_path)

    assert token is not None
    assert (token.tag, token.line) == (campaign_tag(campaign), line)
    assert verify(token, secret, campaign=campaign, key=key.upper())
    assert not verify(token, secret, campaign=campaign, key="x" + key)
    assert not verify(token, secret + b"x", campaign=campaign, key=key)


# --- 4. the key ---------------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
def test_key_is_made_owner_only_whatever_the_umask(
    tmp_path: Path, umask: Callable[[int], int], mask: int
) -> None:
    path = tmp_path / "campaigns" / ".bulkmail" / "verp.key"
    umask(mask)

    secret = load_secret(path)

    assert len(secret) == SECRET_BYTES
    assert path.read_bytes() == secret
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["verp.key"]


def test_key_is_made_once_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "verp.key"

    first = load_secret(path)

    assert load_secret(path) == first
    assert load_secret(tmp_path / "other" / "verp.key") != first  # random, not derived


def test_key_readable_by_others_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "verp.key"
    secret = load_secret(path)
    path.chmod(0o644)

    assert load_secret(path) == secret
    assert mode(path) == 0o600


@pytest.mark.parametrize("size", [0, 31, 33, 100])
def test_key_of_the_wrong_size_is_refused_untouched(tmp_path: Path, size: int) -> None:
    path = tmp_path / "verp.key"
    path.write_bytes(b"k" * size)

    with pytest.raises(JournalError) as error:
        load_secret(path)

    line = str(error.value)
    assert line.startswith(f"{path}: the VERP key is {size} bytes, not 32")
    assert "\n" not in line
    assert error.value.exit_code == 4
    assert path.read_bytes() == b"k" * size


def test_unreadable_key_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "verp.key"
    path.mkdir()  # readable by nobody as a file, root included

    with pytest.raises(JournalError) as error:
        load_secret(path)

    assert str(error.value).startswith(f"{path}: cannot read the VERP key: ")
    assert "\n" not in str(error.value)


def test_key_that_cannot_be_made_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    path = tmp_path / "file" / "verp.key"

    with pytest.raises(JournalError) as error:
        load_secret(path)

    assert str(error.value).startswith(f"{path}: cannot ")
    assert "\n" not in str(error.value)


MAKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bulkmail.feedback.verp import load_secret

    sys.stdin.readline()  # all start together
    print(load_secret(Path(sys.argv[1])).hex())
    """
)


def test_processes_making_the_key_at_once_end_with_the_same(tmp_path: Path) -> None:
    path = tmp_path / ".bulkmail" / "verp.key"
    makers = [
        subprocess.Popen(
            [sys.executable, "-c", MAKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for maker in makers:
        assert maker.stdin is not None
        maker.stdin.write("go\n")
        maker.stdin.flush()
    keys = []
    for maker in makers:
        out, _ = maker.communicate(timeout=60)
        assert maker.returncode == 0
        keys.append(out.strip())

    assert set(keys) == {path.read_bytes().hex()}
    assert sorted(p.name for p in path.parent.iterdir()) == ["verp.key"]


def test_key_made_by_a_rival_in_the_meantime_is_the_one_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministically the window two processes rarely hit: the rival's key appears after
    # this process found none and before it puts its own in place.
    path = tmp_path / "verp.key"
    rival = bytes(range(100, 132))
    link = os.link

    def rival_first(source: str | Path, destination: str | Path) -> None:
        path.write_bytes(rival)
        link(source, destination)

    monkeypatch.setattr(os, "link", rival_first)

    assert load_secret(path) == rival
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verp.key"]


# --- 5. the key from the environment ------------------------------------------------------------


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWS_VERP_KEY", "correct horse battery staple")

    assert secret_from_env("NEWS_VERP_KEY") == b"correct horse battery staple"


@pytest.mark.parametrize(("value", "phrase"), [(None, "is not set"), ("", "is not set")])
def test_missing_key_in_the_environment_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str | None, phrase: str
) -> None:
    monkeypatch.delenv("NEWS_VERP_KEY", raising=False)
    if value is not None:
        monkeypatch.setenv("NEWS_VERP_KEY", value)

    with pytest.raises(ConfigError, match=f"NEWS_VERP_KEY \\(the VERP key\\) {phrase}"):
        secret_from_env("NEWS_VERP_KEY")


def test_short_key_in_the_environment_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWS_VERP_KEY", "hunter2-secret!")  # 15 characters

    with pytest.raises(ConfigError) as error:
        secret_from_env("NEWS_VERP_KEY")

    assert "at least 16 characters" in str(error.value)
    assert "hunter2" not in str(error.value)
