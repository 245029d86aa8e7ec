"""Building in worker processes gives the same mails, in the same order, as in one process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from builders import CampaignDir

from bulkmail.build import Builder
from bulkmail.compose import workers as workers_module
from bulkmail.compose.workers import (
    BATCH,
    COUNTING_BATCH,
    WARM_UP,
    Built,
    MailFactory,
    build_in_order,
)
from bulkmail.deliverability import sampled
from bulkmail.errors import PreflightError
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import OutgoingMail, Recipient
from bulkmail.pipeline import check_campaign, preview_campaign

VARYING = re.compile(rb"^(Date|Message-ID): .*\r\n|=_bulkmail_[0-9a-f]+", re.MULTILINE)


def people(n: int) -> list[dict[str, str]]:
    plans = ["member", "guest", "<b>vip</b>"]
    return [
        {"email": f"p{i}@example.com", "name": f"P {i}", "first_name": f"P{i}",
         "city": plans[i % 3]}
        for i in range(n)
    ]  # fmt: skip


def previews(c: CampaignDir, out: str, workers: int) -> dict[str, bytes]:
    preview_campaign(c.yaml_path, out=c.root / out, workers=workers)
    return {
        path.name: VARYING.sub(b"", path.read_bytes())
        for path in sorted((c.root / out).glob("*.eml"))
    }


def test_parallel_build_gives_the_same_mails_in_the_same_order(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.csv(people(120))
    c.write()
    one = previews(c, "one", workers=0)
    two = previews(c, "two", workers=2)
    assert len(one) == 120
    assert one == two
    assert list(one) == sorted(one)  # 00001-..., 00002-...: list order


def test_parallel_check_reports_problems_in_list_order(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    rows = people(100)
    rows[90]["email"] = "broken@@example.com"
    rows[10]["name"] = "Bad\nName"
    c.csv(rows)
    c.template(
        "issue.html", "<p>{{ first_name }} {% if city == 'guest' %}{{ nope }}{% endif %}</p>"
    )
    c.write()
    messages = []
    for workers in (0, 2):
        with pytest.raises(PreflightError) as info:
            check_campaign(c.yaml_path, workers=workers)
        messages.append([str(problem) for problem in info.value.problems])
    assert messages[0] == messages[1]
    lines = [int(re.search(r"list\.csv:(\d+)", m).group(1)) for m in messages[0]]  # type: ignore[union-attr]
    assert lines == sorted(lines)
    assert len(messages[0]) == 3
    # rows 3, 6, ... are "guest": row 12 has a bad name, so 31 more besides the first
    assert messages[0][0].endswith("campaigns/list.csv:3 and 31 more rows)")


def built_here(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indices of the mails built in this process from now on (a worker counts its own)."""
    here: list[int] = []
    build = MailFactory.build
    main = os.getpid()

    def counted(self: MailFactory, index: int, recipient: Recipient, **options: bool) -> Built:
        if os.getpid() == main:
            here.append(index)
        return build(self, index, recipient, **options)

    monkeypatch.setattr(MailFactory, "build", counted)
    return here


def test_the_first_mails_are_built_before_the_workers_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # So that the workers are forked with the templates' skeletons made and checked.
    c = CampaignDir(tmp_path)
    c.csv(people(40))
    c.write()
    factory = MailFactory.load(load_campaign(c.yaml_path))
    rows = [(i + 1, first_recipient(c, i)) for i in range(40)]
    here = built_here(monkeypatch)
    mails = list(build_in_order(factory, rows, workers=2))

    assert here == list(range(1, WARM_UP + 1))
    assert [r.email for r, _ in mails] == [r.email for _, r in rows]
    assert factory.renderer.skeletons is not None
    assert factory.renderer.skeletons.stats.checked == WARM_UP  # done here, not per worker


def test_the_mails_the_checks_read_come_whole_from_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A check ships no bytes back, but the deliverability checks read the content of a
    # sample of mails: those come whole, instead of being built a second time here.
    c = CampaignDir(tmp_path)
    c.csv(people(100))
    c.write()
    builder = Builder.load(load_campaign(c.yaml_path))
    here = built_here(monkeypatch)
    built = builder.mails(content=False, lint=True, workers=2)
    whole = [mail.index for mail in built if mail.data]
    findings = built.result.lint.findings() if built.result.lint else None

    assert whole == [i for i in range(1, 101) if sampled(i)] == [*range(1, 11), 16, 32, 64]
    assert findings is not None
    # Besides the warm-up, only the largest mail, read at the end, is built here again.
    assert here[:WARM_UP] == list(range(1, WARM_UP + 1))
    assert len(here) <= WARM_UP + 1


def test_a_worker_whose_main_process_died_while_forking_exits(tmp_path: Path) -> None:
    # The main process is killed after forking a worker but before the worker starts: the
    # worker's parent is init from its first moment. It must still exit rather than wait
    # for tasks forever, holding open the pipes the main process's caller reads to the end.
    c = CampaignDir(tmp_path)
    c.write()
    script = f"""
import os, time
from bulkmail.compose import workers
from bulkmail.load.campaign import load_campaign

factory = workers.MailFactory.load(load_campaign({str(c.yaml_path)!r}))
start = workers._start_worker
workers._start_worker = lambda *args: (time.sleep(1), start(*args))
workers._pool(1, factory).submit(os.getpid)  # forks the worker, which sleeps a second
time.sleep(0.2)
os._exit(0)  # gone before the worker has started
"""
    # The worker inherits stdout: run() returns once the worker exits too.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_pass_that_builds_nothing_starts_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CampaignDir(tmp_path)
    c.csv(people(5))
    c.write()
    factory = MailFactory.load(load_campaign(c.yaml_path))

    def no_pool(*args: object) -> None:
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(workers_module, "_pool", no_pool)
    rows = [(i + 1, first_recipient(c, i)) for i in range(WARM_UP)]
    assert len(list(build_in_order(factory, rows, workers=2))) == WARM_UP
    assert list(build_in_order(factory, [], workers=2)) == []


def first_recipient(c: CampaignDir, n: int) -> Recipient:
    """The ``n``-th recipient of the campaign's list (from 0)."""
    rows = iter_recipients(load_campaign(c.yaml_path).recipients)
    found = [row for row in rows if isinstance(row, Recipient)]
    return found[n]


def task_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of mails in each task handed to the workers from now on."""
    sizes: list[int] = []
    real = workers_module._pool

    def recording(workers: int, factory: MailFactory) -> ProcessPoolExecutor:
        pool = real(workers, factory)
        submit = pool.submit

        def recorded(fn: Any, batch: list[Any], *args: Any) -> Any:
            sizes.append(len(batch))
            return submit(fn, batch, *args)

        pool.submit = recorded  # type: ignore[method-assign, assignment]
        return pool

    monkeypatch.setattr(workers_module, "_pool", recording)
    return sizes


def built_with_bytes(c: CampaignDir, rows: int) -> None:
    factory = MailFactory.load(load_campaign(c.yaml_path))
    recipients = [r for r in iter_recipients(c.csv_path) if isinstance(r, Recipient)]
    items = list(enumerate(recipients[:rows], start=1))
    mails = [built for _, built in build_in_order(factory, items, workers=2, content=True)]
    assert all(isinstance(mail, OutgoingMail) and mail.data for mail in mails)


def test_small_mails_go_to_the_workers_in_larger_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CampaignDir(tmp_path)
    c.csv(people(300))
    c.write()
    sizes = task_sizes(monkeypatch)
    built_with_bytes(c, 300)
    assert sizes[0] == COUNTING_BATCH
    assert sum(sizes) == 300 - WARM_UP


@pytest.mark.parametrize("per_recipient", [False, True])
def test_large_mails_and_attachments_chosen_per_recipient_keep_tasks_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_recipient: bool
) -> None:
    c = CampaignDir(tmp_path)
    c.csv(people(100))
    if per_recipient:  # small files: their sizes could still differ from row to row
        for i in range(100):
            c.file(f"files/p{i}.txt", f"note {i}\n")
        c.write(attachments=["files/{{ first_name | lower }}.txt"])
    else:
        c.file("files/report.bin", os.urandom(200_000))
        c.write(attachments=["files/report.bin"])
    sizes = task_sizes(monkeypatch)
    built_with_bytes(c, 100)
    assert max(sizes) == BATCH


def test_tasks_shrink_once_larger_mails_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CampaignDir(tmp_path)
    rows = people(600)
    for row in rows[200:]:
        row["first_name"] = "x" * 100_000  # ~100 KB more in each mail from row 201 on
    c.csv(rows)
    c.write()
    sizes = task_sizes(monkeypatch)
    built_with_bytes(c, 600)
    assert sizes[0] == COUNTING_BATCH
    assert sizes[-2] == BATCH  # (the last may be the rest)
