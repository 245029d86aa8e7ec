"""Make the plain-text alternative of a mail from its HTML."""

from __future__ import annotations

import re

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

# inscriptis lays tables out as text, which suits table-based mail layouts; links are kept
# as "[text](url)" so every URL of the HTML part is in the text part too.
_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)
_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: paragraphs and table cells kept, links written out."""
    text = get_text(html, _CONFIG)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", text).strip("\n") + "\n"
