"""`bulkmail init`: the starter it writes works at once (a dry run and a strict check pass),
documents every setting, ships with the package, and never overwrites a file."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from email import policy
from email.parser import BytesParser
from pathlib import Path

from typer.testing import CliRunner

from bulkmail.cli.app import app
from bulkmail.load.campaign import DKIM_KEYS, SMTP_KEYS, TOP_KEYS

ROOT = Path(__file__).parent.parent
STARTER = ROOT / "bulkmail" / "resources" / "starter"
FILES = [
    "campaign.yaml", "campaign-markdown.yaml", "newsletter.html", "newsletter.md",
    "newsletter.txt", "list.csv",
]  # fmt: skip
runner = CliRunner()


def _bulkmail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulkmail", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_init_writes_a_starter_that_a_dry_run_renders_at_once(tmp_path: Path) -> None:
    result = _bulkmail("init", "news", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "news").iterdir()) == sorted(FILES)
    assert "bulkmail run news/campaign.yaml --dry-run" in result.stdout

    run = _bulkmail("run", "news/campaign.yaml", "--dry-run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr.lower()
    emls = sorted((tmp_path / "news" / "previews").glob("*.eml"))
    assert len(emls) == 3
    message = BytesParser(policy=policy.default).parsebytes(emls[0].read_bytes())
    assert message["To"].addresses[0].addr_spec == "ada@example.com"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "Hello Ada," in text.get_content()
    assert "{{ first_name }}" in text.get_content()  # the template shows how to write one
    assert "https://example.com/unsubscribe?e=ada%40example.com" in html.get_content()

    strict = _bulkmail("check", "news/campaign.yaml", "--strict", cwd=tmp_path)
    assert strict.returncode == 0, strict.stderr
    assert "warning" not in strict.stderr.lower()


def test_the_starter_markdown_campaign_renders_at_once_too(tmp_path: Path) -> None:
    assert _bulkmail("init", "news", cwd=tmp_path).returncode == 0
    run = _bulkmail("run", "news/campaign-markdown.yaml", "--dry-run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr.lower()
    emls = sorted((tmp_path / "news" / "previews-markdown").glob("*.eml"))
    assert len(emls) == 3
    message = BytesParser(policy=policy.default).parsebytes(emls[2].read_bytes())
    assert message["To"].addresses[0].addr_spec == "wang@example.net"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "Hello 小明," in text.get_content()
    assert "like {{ first_name }}" in text.get_content()  # shown, not escaped
    assert "Read more on our website (https://example.com/)" in text.get_content()
    body = html.get_content()
    assert re.search(r"<h1[^>]*>Hello 小明,</h1>", body)
    assert re.search(r'<a href="https://example.com/"[^>]*>Read more on our website</a>', body)
    assert "<li>what comes next</li>" in body
    assert "https://example.com/unsubscribe?e=wang%40example.net" in body

    strict = _bulkmail("check", "news/campaign-markdown.yaml", "--strict", cwd=tmp_path)
    assert strict.returncode == 0, strict.stderr
    assert "warning" not in strict.stderr.lower()


def test_both_starter_campaigns_run_side_by_side(tmp_path: Path) -> None:
    """Their own names and preview folders: trying one never disturbs the other."""
    assert _bulkmail("init", cwd=tmp_path).returncode == 0
    for campaign in ("campaign.yaml", "campaign-markdown.yaml"):
        run = _bulkmail("run", campaign, "--dry-run", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "previews").glob("*.eml"))) == 3
    assert len(list((tmp_path / "previews-markdown").glob("*.eml"))) == 3
    names = [
        re.findall(r"^name: (\S+)", (tmp_path / c).read_text(encoding="utf-8"), re.M)
        for c in ("campaign.yaml", "campaign-markdown.yaml")
    ]
    assert names == [["first-issue"], ["first-issue-markdown"]]  # one journal each


def test_init_into_the_current_folder(tmp_path: Path) -> None:
    result = _bulkmail("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / name).is_file() for name in FILES)


def test_init_never_overwrites_and_writes_nothing_then(tmp_path: Path) -> None:
    folder = tmp_path / "news"
    folder.mkdir()
    (folder / "list.csv").write_text("email\nmine@example.com\n", encoding="utf-8")
    result = _bulkmail("init", "news", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: news/list.csv: already exists; bulkmail init never overwrites a file: "
        "choose another folder"
    ]
    assert "Traceback" not in result.stderr
    assert (folder / "list.csv").read_text(encoding="utf-8") == "email\nmine@example.com\n"
    assert [p.name for p in folder.iterdir()] == ["list.csv"]


def test_init_refuses_when_only_a_markdown_file_exists(tmp_path: Path) -> None:
    (tmp_path / "newsletter.md").write_text("# mine\n", encoding="utf-8")
    result = _bulkmail("init", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: newsletter.md: already exists; bulkmail init never overwrites a file: "
        "choose another folder"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["newsletter.md"]
    assert (tmp_path / "newsletter.md").read_text(encoding="utf-8") == "# mine\n"


def test_the_starter_campaign_shows_every_setting() -> None:
    """Every key the loader accepts is in campaign.yaml, so the starter can't fall behind."""
    text = (STARTER / "campaign.yaml").read_text(encoding="utf-8")
    for key in TOP_KEYS:
        assert re.search(rf"^(# )?{key}:", text, re.M), key
    for key in (*SMTP_KEYS, *DKIM_KEYS):
        assert re.search(rf"^#   {key}:", text, re.M), key


def test_the_starter_ships_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["bulkmail"]
    for name in FILES:
        relative = f"resources/starter/{name}"
        assert any(_glob_matches(glob, relative) for glob in globs), relative


def _glob_matches(glob: str, path: str) -> bool:
    """As setuptools reads a package-data glob: ``*`` does not cross a ``/``."""
    pattern = "[^/]*".join(re.escape(part) for part in glob.split("*"))
    return re.fullmatch(pattern, path) is not None


def test_help_has_an_example() -> None:
    result = runner.invoke(app, ["init", "--help"])
    assert result.exit_code == 0
    assert "Example: bulkmail init newsletter" in result.output
