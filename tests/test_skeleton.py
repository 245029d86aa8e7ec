"""The fast inlining path gives byte-identical HTML to premailer run on each recipient."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from builders import CampaignDir

from bulkmail.compose.render import Renderer
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import Recipient

TRICKY = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ month }} issue</title>
<style>
body { font-family: Georgia, serif; }
.container { width: 600px; }
tr + tr td { border-top: 1px solid #ddd; }
p ~ p { margin-top: 0; }
li:first-child { font-weight: bold; }
li:nth-child(2n) { color: #555; }
.vip { background: gold !important; }
.std { background: #eee; }
a[lang] { color: green; }
td[title] { padding: 4px; }
{% if plan == "member" %}.member-only { display: block; }{% endif %}
.accent { color: {{ accent }}; }
@media only screen and (max-width: 600px) { .container { width: 100% !important; } }
</style></head>
<body>
<table class="container">
<tr><td title="{{ city }}">Hello {{ first_name }}, from {{ city }}!</td></tr>
{% for article in articles %}
<tr><td><a href="{{ article.url }}?u={{ email | urlencode }}">{{ article.title }}</a>
<p>{{ article.summary }}</p><p>{{ note }}</p></td></tr>
{% endfor %}
</table>
<p class="{{ 'vip' if plan == 'member' else 'std' }}">Your plan: {{ plan }}</p>
<div class="member-only accent">{{ bio | safe }}</div>
<ul>{% for tag in tags.split(",") %}<li>{{ tag }}</li>{% endfor %}</ul>
<p><a href="mailto:{{ email }}">{{ email }}</a> &middot;
<img src="{{ avatar }}" alt="{{ name }}"></p>
<!-- sent to {{ email }} -->
</body></html>
"""

WORDS = ["tea", "books", "O'Brien & Co", "<b>bold</b>", "Zoë", "王小明", "a\nb", "", "  ",
         "x" * 300, "100% & more", "\"quoted\"", "tab\there", "=?utf-8?q?x?="]  # fmt: skip


def _rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = ",".join(rng.sample(["news", "<i>x</i>", "tea"], rng.randint(1, 2)))
        rows.append(
            {
                "email": f"user{i}@example.com",
                "name": rng.choice(["Ann", "Zoë Lefèvre", "王小明", "Pat O'Brien", "A & B"]),
                "first_name": rng.choice(WORDS[:6]) + str(i),
                "city": rng.choice(["Lyon", "O'Brien & Co", "王小明"]),
                "plan": rng.choice(["member", "guest"]),
                "note": rng.choice(WORDS),  # in text only: anything goes
                "bio": rng.choice(["<b>Reader</b>", "<i>since 2020</i>", ""]),
                "tags": tags,
                "accent": rng.choice(["red", "#123456"]),
                "avatar": rng.choice(["https://example.com/a.png", "a b.png", "/rel/x.png"]),
            }
        )
    return rows


@pytest.mark.parametrize("base_url", [None, "https://example.com/news/"])
def test_fast_inlining_is_byte_identical_to_premailer_per_recipient(
    tmp_path: Path, base_url: str | None
) -> None:
    c = CampaignDir(tmp_path)
    c.template("tricky.html", TRICKY)
    c.csv(_rows(300))
    data = {
        "month": "June",
        "articles": [
            {"title": "First & best", "url": "https://example.com/a", "summary": "One"},
            {"title": "Second", "url": "https://example.com/b", "summary": "Two < three"},
        ],
    }
    changes: dict[str, object] = {"template": "../templates/tricky.html", "data": data}
    if base_url:
        changes["base_url"] = base_url
    campaign = load_campaign(c.write(**changes))
    fast = Renderer.load(campaign)
    slow = Renderer.load(campaign, fast=False)
    assert fast.skeletons is not None
    fast.skeletons._check = 0  # no safety net: the fast path alone must be exact
    recipients = [r for r in iter_recipients(campaign.recipients) if isinstance(r, Recipient)]
    assert len(recipients) == 300
    for recipient in recipients:
        got, want = fast.render(recipient), slow.render(recipient)
        assert got.html == want.html, recipient.line
    stats = fast.skeletons.stats
    # Many values here shape the document (classes, loops, |safe, blanks), so many
    # recipients have a skeleton of their own; the rest share one.
    assert stats.hits > 100, stats


def test_example_newsletter_takes_the_fast_path(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "campaigns" / "june.yaml"
    campaign = load_campaign(example)
    fast = Renderer.load(campaign)
    slow = Renderer.load(campaign, fast=False)
    assert fast.skeletons is not None
    recipients = [r for r in iter_recipients(campaign.recipients) if isinstance(r, Recipient)]
    for recipient in recipients * 3:
        got, want = fast.render(recipient), slow.render(recipient)
        assert got.html == want.html
        assert "https://example.com/" in got.text
    stats = fast.skeletons.stats
    assert stats.slow == 0
    assert stats.misses <= 2  # one skeleton per plan: member and guest
    assert stats.unusable == 0


def test_a_template_holding_the_marker_characters_is_inlined_whole(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template("issue.html", "<p>\ue000 {{ first_name }}</p>")
    campaign = load_campaign(c.write())
    assert Renderer.load(campaign).skeletons is None


def test_values_in_attributes_that_selectors_read_stay_in_the_skeleton(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template(
        "issue.html",
        '<style>a[href^="mailto"] { color: green }</style>'
        '<p><a href="{{ city }}">{{ first_name }}</a></p>',
    )
    links = ["mailto:x@example.com", "https://example.com/"]
    c.csv(
        [
            {"email": f"u{i}@example.com", "first_name": f"U{i}", "city": links[i % 2]}
            for i in range(10)
        ]
    )
    campaign = load_campaign(c.write())
    fast, slow = Renderer.load(campaign), Renderer.load(campaign, fast=False)
    for recipient in iter_recipients(campaign.recipients):
        assert isinstance(recipient, Recipient)
        assert fast.render(recipient).html == slow.render(recipient).html
    assert fast.skeletons is not None
    assert (fast.skeletons.stats.misses, fast.skeletons.stats.hits) == (2, 8)


def test_text_selectors_disable_the_cache_for_that_skeleton(tmp_path: Path) -> None:
    c = CampaignDir(tmp_path)
    c.template("issue.html", "<style>p:empty { display: none }</style><p>{{ first_name }}</p>")
    campaign = load_campaign(c.write())
    fast, slow = Renderer.load(campaign), Renderer.load(campaign, fast=False)
    for recipient in iter_recipients(campaign.recipients):
        assert isinstance(recipient, Recipient)
        assert fast.render(recipient).html == slow.render(recipient).html
    assert fast.skeletons is not None
    assert fast.skeletons.stats.slow == 3
