"""The fast inlining path gives byte-identical HTML to premailer run on each recipient."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pytest
from builders import TRICKY, CampaignDir, rendered_fast_and_slow, tricky_rows

from bulkmail.compose.render import Renderer
from bulkmail.load.campaign import load_campaign
from bulkmail.load.recipients import iter_recipients
from bulkmail.models import Recipient


@pytest.mark.parametrize("base_url", [None, "https://example.com/news/"])
def test_fast_inlining_is_byte_identical_to_premailer_per_recipient(
    tmp_path: Path, base_url: str | None
) -> None:
    c = CampaignDir(tmp_path)
    c.template("tricky.html", TRICKY)
    c.csv(tricky_rows(300))
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


def test_a_personal_title_keeps_the_fast_path(tmp_path: Path) -> None:
    # The <title> often holds the personal subject; lxml writes its text as any other, so
    # a value in it is cut out like one in a paragraph instead of keying a skeleton.
    c = CampaignDir(tmp_path)
    c.template(
        "titled.html",
        TRICKY.replace("<title>{{ month }} issue</title>", "<title>{{ name }}: {{ note }}</title>"),
    )
    c.csv(tricky_rows(120, seed=11))
    article = {"title": "A", "url": "https://x.example/", "summary": "S"}
    data = {"month": "June", "articles": [article]}
    fast, found = rendered_fast_and_slow(c.write(template="../templates/titled.html", data=data))
    for recipient, got, want in found:
        assert (got.html, got.text) == (want.html, want.text), recipient.line
        assert f"<title>{escape(recipient.fields['name'], quote=False)}:" in got.html
    # As many skeletons as without the title's values (TRICKY's own keep some apart).
    assert fast.skeletons is not None
    stats = fast.skeletons.stats
    assert stats.hits > 40, stats

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


@pytest.mark.parametrize(
    "name",
    ["\ue000Ann\ue001", "Ann\ue000", "\ue001Ann", "A\ue000n\ue001n \ue000x"],
)
def test_a_value_holding_the_marker_characters_comes_out_as_premailer_writes_it(
    tmp_path: Path, name: str
) -> None:
    """Such a value can't be marked; in the marked rendering it would pass for marks of
    its own, and the mail would lose its characters."""
    c = CampaignDir(tmp_path)
    c.template("issue.html", "<p>Dear {{ first_name }}, from {{ city }}</p>")
    c.csv([{"email": f"u{i}@example.com", "first_name": name, "city": "Lyon"} for i in range(3)])
    campaign = load_campaign(c.write())
    fast, slow = Renderer.load(campaign), Renderer.load(campaign, fast=False)
    assert fast.skeletons is not None
    fast.skeletons._check = 0  # no safety net: the fast path alone must be exact
    for recipient in iter_recipients(campaign.recipients):
        assert isinstance(recipient, Recipient)
        got = fast.render(recipient)
        assert got.html == slow.render(recipient).html
        assert name in got.html
        assert name in got.text


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
