"""Building in worker processes gives the same mails, in the same order, as in one process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from builders import CampaignDir

from bulkmail.errors import PreflightError
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
