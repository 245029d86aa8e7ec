"""Inline a mail's CSS into ``style=`` attributes (premailer), behind a small interface."""

from __future__ import annotations

import logging
import re
from typing import Protocol

import premailer

_DOCTYPE = re.compile(r"\s*(<!doctype[^>]*>)", re.IGNORECASE)


class Inliner(Protocol):
    """Turns a rendered HTML document into one whose CSS sits in ``style=`` attributes."""

    def __call__(self, html: str) -> str: ...


class PremailerInliner:
    """premailer, configured for mail that is sent, not browsed.

    - ``allow_network=False``: a ``<link>`` stylesheet is never downloaded mid-campaign.
    - ``strip_important=False``: ``!important`` is what lets ``@media`` rules (kept in a
      ``<style>`` block) override the inlined styles on small screens.
    - ``base_url``: relative links and images are made absolute, as a mail client needs;
      ``#anchor`` links stay as they are.
    - the template's ``<!doctype>`` is kept as the template wrote it, once: premailer keeps
      ``<!DOCTYPE html>`` but drops the others (``<!doctype html>``, HTML 4's), and
      without one mail clients render in quirks mode.
    """

    def __init__(self, *, base_url: str | None = None) -> None:
        self.base_url = base_url

    def __call__(self, html: str) -> str:
        out = premailer.Premailer(
            html,
            base_url=self.base_url,
            allow_network=False,
            strip_important=False,
            preserve_internal_links=True,
            cssutils_logging_level=logging.CRITICAL,
            disable_validation=True,
        ).transform()
        text = str(out)
        kept = _DOCTYPE.match(text)  # premailer's copy, if it kept one
        if kept:
            text = text[kept.end() :].lstrip()
        doctype = _DOCTYPE.match(html)
        return f"{doctype.group(1)}\n{text}" if doctype else text
