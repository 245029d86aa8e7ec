"""The Builder: one object that compiles a campaign once and builds its mails in list order,
in this process or in worker processes, saying what it met in a result it returns."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import pytest
from builders import CampaignDir, people, smtp_settings
from conftest import PASSWORD, PASSWORD_ENV, Server, TLSPair

from bulkmail.build import Builder
from bulkmail.errors import AttachmentError
from bulkmail.load.campaign import load_campaign
from bulkmail.send import send_campaign

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


class Compilations:
    """Every Jinja compilation, by template, in whichever process it happens: each call
    appends ``pid name`` to a file (forked workers inherit the counting method)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def lines(self) -> list[tuple[int, str]]:
        if not self.log.exists():
            return []
        text = self.log.read_text("utf-8").splitlines()
        return [(int(pid), name) for pid, name in (line.split(" ", 1) for line in text)]

    def here(self) -> Counter[str]:
        return Counter(name for pid, name in self.lines() if pid == os.getpid())

    def elsewhere(self) -> list[tuple[int, str]]:
        return [(pid, name) for pid, name in self.lines() if pid != os.getpid()]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def compilations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Compilations:
    counter = Compilations(tmp_path / "compilations.log")
    compile_ = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: Any, name: Any = None, *a: Any, **k: Any) -> Any:
        with counter.log.open("a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {name or '<string>'}\n")
        return compile_(self, source, name, *a, **k)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    return counter


def campaign_dir(root: Path, rows: int, **changes: Any) -> CampaignDir:
    c = CampaignDir(root)
    c.csv(people(rows))
    c.file("files/report.pdf", PDF)
    c.write(attachments=["files/report.pdf"], **changes)
    return c


def test_a_send_compiles_each_template_as_often_as_one_load(
    tmp_path: Path,
    compilations: Compilations,
    smtpd: Server,
    tls: TLSPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The preflight, the content fingerprint and the send share one Builder: a run
    compiles what one load compiles (it compiled three times as much before)."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    c = campaign_dir(tmp_path / "c", 30, smtp=smtp_settings(smtpd, tls))
    Builder.load(load_campaign(c.yaml_path))
    one_load = compilations.here()
    assert one_load  # the counting sees the templates being compiled
    compilations.clear()

    report = send_campaign(c.yaml_path)

    assert report.accepted == 30
    assert compilations.here() == one_load
    assert compilations.elsewhere() == []


def test_worker_processes_compile_nothing(tmp_path: Path, compilations: Compilations) -> None:
    """Forked workers inherit the Builder's compiled templates instead of compiling their own."""
    builder = Builder.load(load_campaign(campaign_dir(tmp_path / "c", 60).yaml_path))
    compilations.clear()

    result = builder.check(workers=2)

    assert result.mails == 60
    assert compilations.lines() == []


@pytest.mark.parametrize("workers", [0, 2])
def test_content_false_leaves_the_bytes_out_in_either_path(tmp_path: Path, workers: int) -> None:
    builder = Builder.load(load_campaign(campaign_dir(tmp_path / "c", 40).yaml_path))

    counted = list(builder.mails(content=False, workers=workers))
    full = list(builder.mails(workers=workers))

    assert [mail.index for mail in counted] == list(range(1, 41))
    assert all(mail.data == b"" and mail.html == "" for mail in counted)
    assert all(mail.size > len(PDF) for mail in counted)  # the size of what was built stays
    assert all(len(mail.data) == mail.size for mail in full)


def test_check_returns_what_it_found_instead_of_filling_what_it_was_given(
    tmp_path: Path,
) -> None:
    c = CampaignDir(tmp_path / "c")
    rows = people(6)
    rows[2]["email"] = "broken@@example.com"
    rows[4]["email"] = rows[0]["email"]
    c.csv(rows)
    c.write()
    builder = Builder.load(load_campaign(c.yaml_path))

    result = builder.check(workers=0)

    assert not result.ok
    assert (result.mails, result.duplicates) == (4, 1)
    (problem,) = result.problems.errors()
    assert "list.csv:4" in str(problem)
    again = builder.check(workers=0)  # a second pass starts from nothing
    assert (again.mails, again.duplicates, len(again.problems.found)) == (4, 1, 1)


def test_mails_report_their_problems_as_they_go(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path / "c")
    c.csv(people(3))
    c.template(
        "issue.html",
        "<p>{{ first_name }}{% if first_name.endswith('1') %}{{ nope }}{% endif %}</p>",
    )
    c.write()
    mails = Builder.load(load_campaign(c.yaml_path)).mails(workers=0)

    first = next(mails)
    assert (first.index, mails.result.ok) == (1, True)
    rest = list(mails)
    assert [mail.index for mail in rest] == [3]
    assert not mails.result.ok
    (problem,) = mails.result.problems.errors()
    assert "'nope' is undefined" in str(problem)


def test_a_missing_attachment_is_found_with_the_other_attachment_checks(tmp_path: Path) -> None:
    """Loading the campaign file reads settings; the files are checked where they are read."""
    c = CampaignDir(tmp_path / "c")
    c.write(attachments=["files/missing.pdf"])
    campaign = load_campaign(c.yaml_path)  # a status or a journal read needs no attachment

    with pytest.raises(AttachmentError) as caught:
        Builder.load(campaign)

    assert str(caught.value).endswith("attachments[0]: files/missing.pdf: no such file")


def test_a_folder_given_as_attachment_is_refused(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path / "c")
    c.file("files/inner/x.txt", "x")
    c.write(attachments=["files/inner"])

    with pytest.raises(AttachmentError) as caught:
        Builder.load(load_campaign(c.yaml_path))

    assert str(caught.value).endswith("attachments[0]: files/inner: is not a file")
