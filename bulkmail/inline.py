"""Inline a mail's CSS into ``style=`` attributes (premailer), behind a small interface."""

from __future__ import annotations

import logging
from typing import Protocol

import premailer


class Inliner(Protocol):
    """Turns a rendered HTML document into one whose CSS sits in ``style=`` attributes."""

    def __call__(self, html: str) -> str: ...


class PremailerInliner:
    """premailer, configured for mail that is sent, not browsed.

    - ``allow_network=False``: a ``<link>`` stylesheet is never downloaded mid-campaign.
    - ``strip_important=False``: ``!important`` is what lets ``@media`` rules (kept in a
      ``<style>`` block) override the inlined styles on small screens.
    - ``base_url``: relative links and images are made absolute, as a mail client needs.
    """

    def __init__(self, *, base_url: str | None = None) -> None:
        self.base_url = base_url

    def __call__(self, html: str) -> str:
        return str(
            premailer.Premailer(
                html,
                base_url=self.base_url,
                allow_network=False,
                strip_important=False,
                cssutils_logging_level=logging.CRITICAL,
                disable_validation=True,
            ).transform()
        )
