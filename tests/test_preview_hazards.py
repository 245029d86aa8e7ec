"""Dry-run hazards from real runs: long names, full disks, killed runs, the user's own files,
file modes, one size unit, and an index that works on a phone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lxml.html
import pytest
from builders import CSV_ROWS, CampaignDir
from preview_folders import index_rows, leftovers, names, snapshot
from typer.testing import CliRunner

from bulkmail import ConfigError, preview_campaign
from bulkmail.cli.app import app
from bulkmail.deliver.preview import MARKER

# Runs the CLI with a file size limit (RLIMIT_FSIZE): a write past it fails with EFBIG, as
# a full disk fails with ENOSPC; SIGXFSZ ignored so the write returns the error instead.
# Only the soft limit is set, and lifted on the way out: under `coverage run` the child
# saves its coverage data at exit.
LIMITED_CLI = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
try:
    runpy.run_module("bulkmail", run_name="__main__", alter_sys=True)
finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
"""
DRY_RUN = ("run", "campaigns/test.yaml", "--dry-run")
LONG_ASCII = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 53 + ".com"
LONG_UTF8 = "ü" * 60 + "@" + "例" * 20 + "." + "例" * 20 + ".jp"  # 105 chars, 245 bytes


def people(count: int) -> list[dict[str, str]]:
    return [
        {"email": f"reader{i}@example.com", "name": f"Reader {i}", "first_name": "R", "city": "X"}
        for i in range(count)
    ]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}


def cli(campaign: CampaignDir, *args: str, file_limit: int | None = None) -> subprocess.Popen[str]:
    """Start ``bulkmail ARGS`` in the campaign's root, optionally with a file size limit."""
    command = [sys.executable, "-m", "bulkmail", *args]
    if file_limit is not None:
        command = [sys.executable, "-c", LIMITED_CLI, str(file_limit), *args]
    return subprocess.Popen(
        command,
        cwd=campaign.root,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# --- 1. file names within the file system's limit ------------------------------------------


@pytest.mark.parametrize("address", [LONG_ASCII, LONG_UTF8], ids=["250 ASCII", "245 bytes UTF-8"])
def test_a_long_address_gets_a_file_name_the_file_system_takes(
    tmp_path: Path, address: str
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv([CSV_ROWS[0], {**CSV_ROWS[1], "email": address}])
    campaign.write()

    report = preview_campaign(campaign.yaml_path)

    out = tmp_path / "previews"
    assert report.mails == 2
    (long_eml,) = [name for name in names(out, ".eml") if name.startswith("00002-")]
    assert len(long_eml.encode("utf-8")) <= 255
    assert address.startswith(long_eml.removeprefix("00002-")[:20])
    (row,) = [r for r in index_rows(out) if address in r.text_content()]
    assert f"{long_eml.removesuffix('.eml')}.html" in row.xpath(".//a/@href")


def test_a_stem_is_cut_between_characters_and_numbered() -> None:
    from bulkmail.deliver.preview import preview_stem

    stem = preview_stem(12, "例" * 200 + "@example.jp")

    assert stem.startswith("00012-例")
    assert set(stem.removeprefix("00012-")) == {"例"}  # no half character, no replacement
    assert len(f"{stem}.html".encode()) <= 255
    assert preview_stem(1, "alice@example.com") == "00001-alice@example.com"


# --- 2. a full disk -----------------------------------------------------------------------


def test_a_mail_too_big_to_write_is_one_line_error_and_keeps_the_previous_previews(
    tmp_path: Path,
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    assert finish(cli(campaign, *DRY_RUN))[0] == 0
    out = tmp_path / "previews"
    before = snapshot(out)
    campaign.file("files/big.pdf", b"%PDF-1.4\n" + b"x" * 200_000)
    campaign.write(attachments=["files/big.pdf"])

    code, _, err = finish(cli(campaign, *DRY_RUN, file_limit=100_000))

    assert (code, err.splitlines()) == (
        1,
        ["error: previews: cannot write previews here: File too large", "nothing was sent."],
    )
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_an_index_too_big_to_write_is_one_line_error_and_keeps_the_previous_previews(
    tmp_path: Path,
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    assert finish(cli(campaign, *DRY_RUN))[0] == 0
    out = tmp_path / "previews"
    before = snapshot(out)
    campaign.csv(people(300))  # each .eml is a few kB; the index grows past 32 kB

    code, _, err = finish(cli(campaign, *DRY_RUN, file_limit=32_000))

    assert code == 1
    assert err.splitlines()[0] == "error: previews: cannot write previews here: File too large"
    assert "Traceback" not in err
    assert snapshot(out) == before
    assert leftovers(out) == []


# --- 3. leftovers of killed runs ----------------------------------------------------------


def test_a_rerun_removes_the_staging_folder_of_a_killed_dry_run(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.csv(people(4000))
    campaign.write()
    out = tmp_path / "previews"
    process = cli(campaign, *DRY_RUN)
    staging = tmp_path / f".previews.staging-{process.pid}"
    deadline = time.monotonic() + 60
    while not (staging.is_dir() and any(staging.glob("*.eml"))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no preview written in 60 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert leftovers(out) == [staging.name]
    campaign.csv(CSV_ROWS)

    code, _, err = finish(cli(campaign, *DRY_RUN))

    assert (code, err) == (0, "")
    assert leftovers(out) == []
    assert len(names(out, ".eml")) == 3


def test_a_rerun_leaves_the_staging_folder_of_a_live_run_alone(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    live = tmp_path / f".previews.staging-{os.getpid()}"  # this test's process is alive
    live.mkdir()
    (live / "00001-alice@example.com.eml").write_bytes(b"being written")

    code, _, _ = finish(cli(campaign, *DRY_RUN))

    assert code == 0
    assert snapshot(live) == {"00001-alice@example.com.eml": b"being written"}


def test_the_previous_previews_of_a_run_killed_while_swapping_come_back(tmp_path: Path) -> None:
    """Killed between moving the old folder aside and moving the new one in."""
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    out = tmp_path / "previews"
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    out.rename(tmp_path / f".previews.old-{dead_pid()}")
    campaign.csv(CSV_ROWS[:1])

    preview_campaign(campaign.yaml_path)

    assert leftovers(out) == []
    assert names(out, ".eml") == ["00001-alice@example.com.eml"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_the_users_files_left_in_an_old_folder_by_a_killed_run_are_carried_over(
    tmp_path: Path,
) -> None:
    """Killed after moving the new folder in, before carrying the user's files over."""
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    out = tmp_path / "previews"
    old = tmp_path / f".previews.old-{dead_pid()}"
    shutil.copytree(out, old, copy_function=shutil.copy2)
    (old / "notes.txt").write_text("mine", encoding="utf-8")

    preview_campaign(campaign.yaml_path)

    assert leftovers(out) == []
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert len(names(out, ".eml")) == 3


# --- 4. files the user saved in the preview folder ----------------------------------------


def test_a_rerun_keeps_the_files_the_user_saved_in_the_preview_folder(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    out = tmp_path / "previews"
    (out / "notes.txt").write_text("check Bob's city", encoding="utf-8")
    edited = out / "00001-alice@example.com-edited.html"
    edited.write_text("<p>my version</p>", encoding="utf-8")
    (out / "drafts").mkdir()
    (out / "drafts" / "v2.html").write_text("<p>v2</p>", encoding="utf-8")
    campaign.csv(CSV_ROWS[2:])

    preview_campaign(campaign.yaml_path)

    assert (out / "notes.txt").read_text(encoding="utf-8") == "check Bob's city"
    assert edited.read_text(encoding="utf-8") == "<p>my version</p>"
    assert (out / "drafts" / "v2.html").read_text(encoding="utf-8") == "<p>v2</p>"
    assert names(out, ".eml") == ["00001-wang@example.net.eml"]
    assert names(out, ".html") == [edited.name, "00001-wang@example.net.html"]
    assert len(index_rows(out)) == 1
    assert leftovers(out) == []


def test_a_preview_changed_in_place_is_kept_when_the_rerun_has_no_file_of_its_name(
    tmp_path: Path,
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    out = tmp_path / "previews"
    changed = out / "00003-wang@example.net.html"
    changed.write_text(changed.read_text(encoding="utf-8") + "<!-- checked -->", encoding="utf-8")
    kept = changed.read_bytes()
    campaign.csv(CSV_ROWS[:1])

    preview_campaign(campaign.yaml_path)

    assert changed.read_bytes() == kept
    assert names(out, ".eml") == ["00001-alice@example.com.eml"]


def test_a_rerun_that_would_overwrite_a_changed_preview_stops_and_names_it(
    tmp_path: Path,
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    preview_campaign(campaign.yaml_path)
    out = tmp_path / "previews"
    changed = out / "00002-bob@example.org.html"
    changed.write_text("<p>my notes on Bob's mail</p>", encoding="utf-8")
    before = snapshot(out)

    with pytest.raises(ConfigError, match="move or rename it") as caught:
        preview_campaign(campaign.yaml_path)

    assert caught.value.where is not None
    assert Path(caught.value.where.path) == changed
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_a_folder_from_an_older_bulkmail_keeps_the_users_files(tmp_path: Path) -> None:
    """Its marker lists no files: the files named like previews are bulkmail's."""
    campaign = CampaignDir(tmp_path)
    campaign.write()
    out = tmp_path / "previews"
    out.mkdir()
    (out / MARKER).write_text("written by bulkmail --dry-run\n", encoding="utf-8")
    (out / "index.html").write_text("<p>old index</p>", encoding="utf-8")
    (out / "00009-zed@example.com.eml").write_bytes(b"old")
    (out / "00009-zed@example.com.html").write_bytes(b"old")
    (out / "notes.txt").write_text("mine", encoding="utf-8")

    preview_campaign(campaign.yaml_path)

    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert len(names(out, ".eml")) == 3
    assert not (out / "00009-zed@example.com.eml").exists()
    assert "old index" not in (out / "index.html").read_text(encoding="utf-8")


# --- 5. owner-only --------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_previews_are_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()
    previous = os.umask(umask)
    try:
        preview_campaign(campaign.yaml_path)
    finally:
        os.umask(previous)

    out = tmp_path / "previews"
    assert mode(out) == 0o700
    files = list(out.iterdir())
    assert len(files) == 8  # the marker, the index, an .html and an .eml for each of 3
    assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}


# --- 6. one size unit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (2000, "2.0 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),
        (25_000_000, "25.0 MB"),
        (3 * 10**12, "3.0 TB"),
        (2 * 10**15, "2,000.0 TB"),
    ],
)
def test_sizes_are_in_si_units(size: int, text: str) -> None:
    from bulkmail.sizes import format_size

    assert format_size(size) == text


def test_the_cli_and_the_index_show_a_size_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.file("files/programme.pdf", b"%PDF-1.4\n" + b"x" * 1991)  # 2,000 bytes
    campaign.write(attachments=["files/programme.pdf"])
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["run", "campaigns/test.yaml", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "programme.pdf (2.0 kB)" in result.output
    index = (tmp_path / "previews" / "index.html").read_text(encoding="utf-8")
    assert "programme.pdf (2.0 kB)" in index
    eml = (tmp_path / "previews" / "00001-alice@example.com.eml").stat().st_size
    assert f">{eml / 1000:.1f} kB</td>" in index


# --- 7. the index on a phone ------------------------------------------------------------------


def test_the_index_fits_a_phone_screen(tmp_path: Path) -> None:
    campaign = CampaignDir(tmp_path)
    campaign.write()

    preview_campaign(campaign.yaml_path)

    document = lxml.html.fromstring(
        (tmp_path / "previews" / "index.html").read_text(encoding="utf-8")
    )
    (viewport,) = document.xpath("//meta[@name='viewport']/@content")
    assert "width=device-width" in viewport
    style = " ".join(document.xpath("//style/text()"))
    assert "overflow-wrap: anywhere" in style  # a long address wraps
    assert "@media (max-width: 600px)" in style  # rows stack into cards
    for row in index_rows(tmp_path / "previews"):
        labels = [cell.get("data-label") for cell in row.xpath("./td")]
        assert labels == ["#", "Recipient", "Subject", "Attachments", "Size", "Files"]
