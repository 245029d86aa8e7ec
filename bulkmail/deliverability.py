"""Deliverability checks: what in a campaign makes mail land in spam, get clipped or refused.

None of these stops a send (the mails are valid); each is a warning with a stable rule id
(``http-link``, ``html-too-large``...) and the place to fix it: the template line where the
offending text is written, else the campaign setting, plus the CSV row when the finding is
one recipient's. ``--strict`` turns them into errors.

Cost: the rules that read a mail's HTML parse it with lxml, which costs about as much as
building the mail. So they read a bounded sample (the first mails, then mails 16, 32,
64..., and the largest mail): a campaign's mails share their template, and what differs
per row is the row's values. The rules that need no parsing (mail size, subject) read
every mail.
"""

from __future__ import annotations

import email
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

from bulkmail.compose.message import text_part
from bulkmail.compose.workers import MailFactory
from bulkmail.errors import CampaignError, Location
from bulkmail.models import Campaign, OutgoingMail, Recipient
from bulkmail.reports import Finding
from bulkmail.sizes import format_size

# Gmail cuts the HTML part after about 102 kB and shows "[Message clipped] View entire
# message": the rest, footer and unsubscribe link included, is one click away.
HTML_CLIP_BYTES = 102_000
# Providers refuse mails above 10 MB (some) to 25 MB (Gmail, Outlook): warn at the lowest.
MAIL_SIZE_WARNING = 10_000_000
# Subjects longer than this are cut in every inbox (web ~70 characters, phones ~35-40).
SUBJECT_MAX_CHARS = 78
# Less visible text than this next to images reads as an image-only mail (SpamAssassin's
# HTML_IMAGE_ONLY_* rules score mails with images and under ~400-3200 bytes of words).
IMAGE_ONLY_TEXT_CHARS = 400
# Fonts below this many pixels are unreadable: only hidden text is set that small.
TINY_FONT_PX = 6.0
# Text and background closer than this contrast ratio (WCAG's formula: 1 is identical,
# body text needs 4.5) is invisible to a reader, and spam filters treat it as hidden text.
LOW_CONTRAST_RATIO = 1.5
# Mails whose HTML the content rules read, by index: the first few, then powers of two.
SAMPLE_FIRST = 10
# A missing unsubscribe link matters from this many mails, as a missing `unsubscribe:`
# does (pipeline.UNSUBSCRIBE_WARNING_AT): fewer are probably not a newsletter.
BULK_FROM = 100
MAX_FINDINGS = 20


class FindingLog:
    """The findings, the same one on many rows merged into one (like the preflight's problems)."""

    def __init__(self, limit: int = MAX_FINDINGS) -> None:
        self.limit = limit
        self.found: dict[tuple[str, str, str], Finding] = {}
        self.rows: dict[tuple[str, str, str], int] = {}

    def add(self, finding: Finding) -> None:
        # A finding of many rows at one place (a subject of 92 characters, of 95...) is one
        # line, which shows the first row's details.
        message = finding.message if finding.row is None else ""
        key = (finding.rule, str(finding.where), message)
        if key in self.found:
            self.rows[key] += 1
        elif len(self.found) < self.limit:
            self.found[key] = finding
            self.rows[key] = 1

    def findings(self) -> list[Finding]:
        return [replace(f, more_rows=self.rows[k] - 1) for k, f in self.found.items()]


# --- Where a finding is written ------------------------------------------------------------


class Places:
    """Finds where a piece of a mail is written: a template line, else a line of the
    campaign file (named by its setting), else the recipient's CSV row."""

    def __init__(self, campaign: Campaign, template_files: list[Path]) -> None:
        self.campaign = campaign
        self.files = [(path, _lines(path)) for path in template_files]
        self.campaign_lines = _lines(campaign.path)

    def of(self, recipient: Recipient, *needles: str) -> tuple[Location, Location | None]:
        """Where the first of ``needles`` found is written, and the row if it is the row's."""
        row = Location(self.campaign.recipients, recipient.line)
        for needle in needles:
            needle = needle.strip()
            if len(needle) < 3:
                continue
            for path, lines in self.files:
                for number, line in enumerate(lines, 1):
                    if needle in line:
                        return Location(path, number), None
            for number, line in enumerate(self.campaign_lines, 1):
                if needle in line:
                    return Location(self.campaign.path, number, self._setting(number)), None
            for column, value in recipient.fields.items():
                if needle in value:
                    return Location(self.campaign.recipients, recipient.line, column), None
        return Location(self.campaign.body_template), row

    def of_text(self, recipient: Recipient, text: str) -> tuple[Location, Location | None, str]:
        """Where visible ``text`` is written, its row if it is the row's, and the part of it
        to quote. Text with a value in it ("The full programme for June is...") is found
        by the longest run of its first words written on one line, and quoted by those
        words, so the same line on every row is one finding."""
        text = text.strip().split("\n", 1)[0][:40]
        where, row = self.of(recipient, text)
        if row is None:
            return where, row, text
        words = text.split()
        for end in range(len(words) - 1, 2, -1):
            start = " ".join(words[:end])
            found = self._in_templates(start)
            if found is not None:
                return found, None, f"{start}..."
        return where, row, text

    def _in_templates(self, needle: str) -> Location | None:
        if len(needle) < 12:
            return None
        for path, lines in self.files:
            for number, line in enumerate(lines, 1):
                if needle in line:
                    return Location(path, number)
        return None

    def _setting(self, line: int) -> str | None:
        """The top-level setting of the campaign file that ``line`` belongs to."""
        best: tuple[int, str] | None = None
        for key, where in self.campaign.where.items():
            if (
                where.line is not None
                and where.line <= line
                and (best is None or where.line > best[0])
            ):
                best = (where.line, key)
        return best[1] if best else None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


# --- The campaign's settings ---------------------------------------------------------------


def _organisational(domain: str) -> str:
    """The last two labels of ``domain``: DMARC's relaxed alignment compares organisational
    domains; without the public suffix list, ``news.example.co.uk`` counts as ``co.uk``."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def _from_domain(campaign: Campaign) -> str | None:
    match = re.search(r"@([^@>\s]+)>?\s*$", campaign.sender)
    return match.group(1) if match else None


def rule_dkim_domain_not_aligned(campaign: Campaign) -> Iterator[Finding]:
    """DMARC passes on DKIM only when the signing domain is the From domain's organisation."""
    dkim = campaign.dkim
    sender = _from_domain(campaign)
    if dkim is None or sender is None:
        return
    if _organisational(dkim.domain) != _organisational(sender):
        yield Finding(
            "dkim-domain-not-aligned",
            f"From is @{sender} but the mails are signed for {dkim.domain} "
            f"(dkim.domain, {campaign.location('dkim')}): DMARC needs the same organisational "
            "domain (the last two labels), or receivers with p=quarantine/reject refuse them",
            campaign.location("from"),
        )


def rule_login_domain_not_aligned(campaign: Campaign) -> Iterator[Finding]:
    """A provider signs with the account's domain: a From of another domain fails DMARC
    unless the mails carry their own aligned signature."""
    smtp = campaign.smtp
    sender = _from_domain(campaign)
    if smtp is None or not smtp.username or "@" not in smtp.username or sender is None:
        return
    if campaign.dkim is not None:
        return  # signed by us: rule_dkim_domain_not_aligned says whether that aligns
    login = smtp.username.rpartition("@")[2]
    if _organisational(login) != _organisational(sender):
        yield Finding(
            "login-domain-not-aligned",
            f"From is @{sender} but the server logs in as {smtp.username} "
            f"(smtp.username, {campaign.location('smtp')}): the provider signs for its own "
            "domain, so DMARC fails unless you sign with `dkim:` for the From domain "
            "(organisational domains compared: the last two labels)",
            campaign.location("from"),
        )


# Mail headers written at the top of a body (a mailmerge template): they would be sent
# as text of the HTML, not as headers.
_HEADER_LINE = re.compile(r"^(?:to|subject|from|cc|bcc|reply-to|content-type)\s*:", re.I)
_TAG = re.compile(r"<[a-z!/][^>]*>", re.I)
_BORROWS_MARKUP = re.compile(r"{%-?\s*(?:extends|include|import|from)\b")


def rule_template_not_html(campaign: Campaign) -> Iterator[Finding]:
    """A ``template:`` that is plain text (no tags) or a mailmerge template (``TO:`` and
    ``SUBJECT:`` lines at the top) is sent as one HTML paragraph with its line breaks
    lost; as ``text_template:`` alone it is a plain-text mail."""
    if campaign.template is None:
        return
    lines = _lines(campaign.template)
    first = next(((n, line) for n, line in enumerate(lines, 1) if line.strip()), None)
    if first is None:
        return
    number, line = first
    where = Location(campaign.template, number)
    if _HEADER_LINE.match(line.strip()):
        yield Finding(
            "template-not-html",
            f"starts with the mail header line {line.strip()[:40]!r}, as a mailmerge "
            "template does: it would be sent as text of the body; set From and Subject "
            "in the campaign file and remove the header lines",
            where,
        )
        return
    source = "\n".join(lines)
    if not _TAG.search(source) and not _BORROWS_MARKUP.search(source):
        yield Finding(
            "template-not-html",
            "has no HTML tags: as template: it is sent as HTML, its line breaks lost; for "
            "a plain-text mail, name it text_template: and remove template:",
            where,
        )


CAMPAIGN_RULES: tuple[Callable[[Campaign], Iterator[Finding]], ...] = (
    rule_dkim_domain_not_aligned,
    rule_login_domain_not_aligned,
    rule_template_not_html,
)


# --- Every mail: size and subject ----------------------------------------------------------


def rule_mail_too_large(campaign: Campaign, mail: OutgoingMail) -> Iterator[Finding]:
    if mail.size > MAIL_SIZE_WARNING:
        yield Finding(
            "mail-too-large",
            f"a mail of {format_size(mail.size)} (attachments encoded): many providers "
            f"refuse mails over {format_size(MAIL_SIZE_WARNING)} (the largest take 25 MB); "
            "link to big files instead",
            campaign.location("attachments") if campaign.attachments else Location(campaign.path),
            Location(campaign.recipients, mail.recipient.line),
        )


def _words(text: str) -> list[str]:
    return [word for word in text.split() if any(c.isalnum() for c in word)]


def rule_subject(campaign: Campaign, mail: OutgoingMail) -> Iterator[Finding]:
    """Subjects that inboxes cut, or that shout."""
    subject = mail.subject
    # Read for every mail: the common case (neither too long nor capitals) costs two tests.
    if len(subject) <= SUBJECT_MAX_CHARS and not subject.isupper():
        return
    where = campaign.location("subject")
    row = Location(campaign.recipients, mail.recipient.line)
    if len(subject) > SUBJECT_MAX_CHARS:
        yield Finding(
            "subject-too-long",
            f"the subject has {len(subject)} characters: inboxes show about 70 (phones "
            f"35-40), so keep it under {SUBJECT_MAX_CHARS} and put what matters first",
            where,
            row,
        )
    # SpamAssassin's SUBJ_ALL_CAPS: several words, at least 8 letters, none lowercase.
    letters = [c for c in subject if c.isalpha() and c.lower() != c.upper()]
    if subject.isupper() and len(_words(subject)) >= 2 and len(letters) >= 8:
        yield Finding(
            "subject-all-caps",
            "the subject is all in capitals: it reads as shouting and spam filters score it "
            "(SpamAssassin's SUBJ_ALL_CAPS)",
            where,
            row,
        )


MAIL_RULES: tuple[Callable[[Campaign, OutgoingMail], Iterator[Finding]], ...] = (
    rule_mail_too_large,
    rule_subject,
)


# --- The HTML of a sample of mails ---------------------------------------------------------

_STYLE_DECLARATION = re.compile(r"([\w-]+)\s*:\s*([^;]+)")
_URL_TEXT = re.compile(r"^(?:https?://|www\.)\S+$|^[\w-]+(?:\.[\w-]+)+(?:/\S*)?$", re.I)
_UNSUBSCRIBE_WORDS = re.compile(
    r"unsubscribe|opt.?out|abmelden|d[ée]sabonner|d[ée]sinscri|darse de baja|annulla", re.I
)
_NAMED_COLOURS = {
    "white": (255, 255, 255), "black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 128, 0),
    "blue": (0, 0, 255), "gray": (128, 128, 128), "grey": (128, 128, 128),
    "silver": (192, 192, 192), "yellow": (255, 255, 0), "whitesmoke": (245, 245, 245),
    "snow": (255, 250, 250), "ivory": (255, 255, 240), "navy": (0, 0, 128),
}  # fmt: skip
Colour = tuple[int, int, int]


def _style(node: etree._Element) -> dict[str, str]:
    style = node.get("style") or ""
    return {k.lower(): v.strip().lower() for k, v in _STYLE_DECLARATION.findall(style)}


def _colour(value: str | None) -> Colour | None:
    """An opaque CSS colour as RGB (None: not one bulkmail reads, or transparent)."""
    if not value:
        return None
    value = value.strip().lower().replace("!important", "").strip()
    if value in _NAMED_COLOURS:
        return _NAMED_COLOURS[value]
    match = re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", value)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    match = re.fullmatch(r"rgba?\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*([\d.]+)\s*)?\)", value)
    if match and (match.group(4) is None or float(match.group(4)) >= 1):
        r, g, b = (min(int(match.group(i)), 255) for i in (1, 2, 3))
        return (r, g, b)
    return None


def _background(node: etree._Element, style: dict[str, str]) -> Colour | None:
    colour = _colour(style.get("background-color")) or _colour(node.get("bgcolor"))
    if colour is None and "background" in style:
        for token in re.split(r"\s+(?![^(]*\))", style["background"]):
            colour = colour or _colour(token)
    return colour


def _luminance(colour: Colour) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: Colour, b: Colour) -> float:
    """WCAG's contrast ratio: 1 (the same colour) to 21 (black on white)."""
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _font_px(value: str | None) -> float | None:
    """A font size in pixels (pt converted), None for relative sizes bulkmail can't resolve."""
    if not value:
        return None
    match = re.fullmatch(r"([\d.]+)\s*(px|pt)?(?:\s*!important)?", value.strip())
    if not match:
        return None
    size = float(match.group(1))
    return size * 4 / 3 if match.group(2) == "pt" else size


def _is_hidden(node: etree._Element, style: dict[str, str]) -> bool:
    """Hidden on purpose (a preheader): by display, visibility, opacity or zero height."""
    if node.get("hidden") is not None or style.get("display") == "none":
        return True
    if style.get("visibility") == "hidden" or style.get("opacity", "1").strip() in ("0", "0.0"):
        return True
    return style.get("max-height", "").strip() in ("0", "0px") and style.get("overflow") == "hidden"


_SKIPPED_TAGS = frozenset({"head", "title", "style", "script", "template", "noscript"})


@dataclass
class _Seen:
    """What a walk through one mail's HTML found."""

    text: list[str] = field(default_factory=list)
    images: list[etree._Element] = field(default_factory=list)
    links: list[tuple[etree._Element, str]] = field(default_factory=list)  # (a, visible text)
    low_contrast: list[tuple[str, Colour, Colour]] = field(default_factory=list)
    tiny: list[tuple[str, float]] = field(default_factory=list)


def _walk(
    node: etree._Element, seen: _Seen, colour: Colour, background: Colour, font: float | None
) -> None:
    if not isinstance(node.tag, str):
        return
    tag = node.tag.lower()
    if tag in _SKIPPED_TAGS:
        return
    style = _style(node)
    if _is_hidden(node, style):
        return
    text_colour = _colour(style.get("color")) or (
        _colour(node.get("color")) if tag == "font" else None
    )
    colour = text_colour or colour
    background = _background(node, style) or background
    font = _font_px(style.get("font-size")) if "font-size" in style else font
    if tag == "img":
        seen.images.append(node)
    own = " ".join(t.strip() for t in [node.text or "", *(c.tail or "" for c in node)] if t.strip())
    if own:
        seen.text.append(own)
        if contrast(colour, background) < LOW_CONTRAST_RATIO:
            seen.low_contrast.append((own, colour, background))
        if font is not None and font < TINY_FONT_PX:
            seen.tiny.append((own, font))
    start = len(seen.text)
    for child in node:
        _walk(child, seen, colour, background, font)
    if tag == "a" and node.get("href"):
        visible = " ".join([own, *seen.text[start:]]) if own else " ".join(seen.text[start:])
        seen.links.append((node, visible.strip()))


def _host(url: str) -> str:
    if not re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I):
        url = "http://" + url
    host = (urlsplit(url).hostname or "").lower()
    return host.removeprefix("www.")


@dataclass
class _Mail:
    """One sampled mail as the content rules read it."""

    recipient: Recipient
    html: str
    seen: _Seen
    text_part: str | None
    unsubscribe: list[str]


def rule_images(campaign: Campaign, mail: _Mail, places: Places) -> Iterator[Finding]:
    """Images without ``alt`` show nothing when images are off (the default in many
    clients); little text beside images reads as an image-only mail."""
    for image in mail.seen.images:
        if image.get("alt") is None:
            src = image.get("src") or ""
            where, row = places.of(mail.recipient, src)
            yield Finding(
                "image-no-alt",
                f"image {src[:80]!r} has no alt text: with images off (the default in many "
                'clients) the reader sees nothing; add alt (alt="" for decoration)',
                where,
                row,
            )
    text = sum(len(t) for t in mail.seen.text)
    if mail.seen.images and text < IMAGE_ONLY_TEXT_CHARS:
        yield Finding(
            "image-only",
            f"{len(mail.seen.images)} image(s) and only {text} characters of text: spam "
            f"filters score image-only mail (SpamAssassin's HTML_IMAGE_ONLY_*); write at "
            f"least {IMAGE_ONLY_TEXT_CHARS} characters",
            Location(campaign.body_template),
        )


def rule_links(campaign: Campaign, mail: _Mail, places: Places) -> Iterator[Finding]:
    """``http:`` links and images (not encrypted: browsers warn, filters score them), and
    links whose text shows one address while they go to another (what phishing does)."""
    for element, visible in mail.seen.links:
        href = (element.get("href") or "").strip()
        if href.lower().startswith("http:"):
            where, row = places.of(mail.recipient, href)
            yield Finding(
                "http-link",
                f"link to {href[:100]!r} is not https: browsers warn and filters distrust "
                "unencrypted links",
                where,
                row,
            )
        web = href.lower().startswith(("http:", "https:"))
        if web and _URL_TEXT.match(visible) and _host(visible) != _host(href):
            where, row = places.of(mail.recipient, visible, href)
            yield Finding(
                "link-text-mismatch",
                f"the link text shows {visible[:60]!r} but the link goes to "
                f"{_host(href)!r}: that is what phishing looks like, and filters score it",
                where,
                row,
            )
    for image in mail.seen.images:
        src = (image.get("src") or "").strip()
        if src.lower().startswith("http:"):
            where, row = places.of(mail.recipient, src)
            yield Finding(
                "http-link",
                f"image {src[:100]!r} is loaded over http, not https: clients block or warn",
                where,
                row,
            )


def rule_unsubscribe_link(campaign: Campaign, mail: _Mail, places: Places) -> Iterator[Finding]:
    """With ``unsubscribe:`` set, the body should show the link too: people who find no
    way out press "Report spam", and complaints above 0.3 % get a sender blocked."""
    if campaign.unsubscribe is None or not mail.unsubscribe:
        return
    if campaign.text_only:  # a plain-text mail: the link is its URL in the text
        text = mail.text_part or ""
        if any(url in text for url in mail.unsubscribe) or _UNSUBSCRIBE_WORDS.search(text):
            return
    for element, visible in mail.seen.links:
        href = (element.get("href") or "").strip()
        if href in mail.unsubscribe or _UNSUBSCRIBE_WORDS.search(f"{href} {visible}"):
            return
    yield Finding(
        "no-unsubscribe-link",
        'no visible unsubscribe link in the body: add <a href="{{ unsubscribe_url }}">'
        "Unsubscribe</a>; readers who find no way out report the mail as spam",
        Location(campaign.body_template),
    )


def rule_hidden_text(campaign: Campaign, mail: _Mail, places: Places) -> Iterator[Finding]:
    """Text in (nearly) the background's colour or in a tiny font is hidden text to spam
    filters (SpamAssassin's HTML_FONT_LOW_CONTRAST, TINY_FONT); hide a preheader with
    ``display: none`` instead."""
    for text, colour, background in mail.seen.low_contrast:
        where, row, quoted = places.of_text(mail.recipient, text)
        yield Finding(
            "hidden-text",
            f"text {quoted!r} is in {_hex(colour)} on {_hex(background)} (contrast "
            f"{contrast(colour, background):.2f}): filters score invisible text; hide it with "
            "display: none, or give it a readable colour",
            where,
            row,
        )
    for text, size in mail.seen.tiny:
        where, row, quoted = places.of_text(mail.recipient, text)
        yield Finding(
            "tiny-font",
            f"text {quoted!r} is {size:g}px high: filters treat text under "
            f"{TINY_FONT_PX:g}px as hidden; hide it with display: none, or make it readable",
            where,
            row,
        )


def rule_text_part(campaign: Campaign, mail: _Mail, places: Places) -> Iterator[Finding]:
    """A mail whose text part is empty reads as spam (SpamAssassin's MIME_HTML_ONLY idea)
    and shows nothing in text-only clients and watches."""
    if mail.text_part is not None and not mail.text_part.strip():
        where = (
            Location(campaign.text_template)
            if campaign.text_template
            else Location(campaign.body_template)
        )
        yield Finding(
            "text-part-empty",
            "the plain-text part is empty: text-only readers see nothing and filters "
            "distrust HTML without text",
            where,
            Location(campaign.recipients, mail.recipient.line),
        )


CONTENT_RULES: tuple[Callable[[Campaign, _Mail, Places], Iterator[Finding]], ...] = (
    rule_images,
    rule_links,
    rule_unsubscribe_link,
    rule_hidden_text,
    rule_text_part,
)

RULES = (
    "html-too-large", "mail-too-large", "image-no-alt", "image-only", "http-link",
    "link-text-mismatch", "no-unsubscribe-link", "dkim-domain-not-aligned",
    "login-domain-not-aligned", "hidden-text", "tiny-font", "text-part-empty",
    "subject-too-long", "subject-all-caps", "template-not-html",
)  # fmt: skip


def _hex(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _read(recipient: Recipient, mail: OutgoingMail) -> _Mail:
    """Parse a mail's HTML (walked once for every content rule) and its text part."""
    seen = _Seen()
    if mail.html.strip():
        root = etree.fromstring(mail.html, etree.HTMLParser())
        if root is not None:
            _walk(root, seen, (0, 0, 0), (255, 255, 255), None)
    # compat32: a few times faster than the default policy, and the raw values suffice.
    message = email.message_from_bytes(mail.data)
    text = text_part(message)
    unsubscribe = re.findall(r"<([^>]+)>", re.sub(r"\s+", "", message.get("List-Unsubscribe", "")))
    return _Mail(recipient, mail.html, seen, text, unsubscribe)


def sampled(index: int) -> bool:
    """Whether the checks read the content of the mail at ``index`` (from 1): the first
    `SAMPLE_FIRST`, then one at each power of two (26 of a million)."""
    return index <= SAMPLE_FIRST or index & (index - 1) == 0


class Linter:
    """Runs the checks over one pass of a campaign's mails, as they are built.

    ``note`` sees every mail (built with or without its content); the HTML rules read the
    mails at the `sampled` indices, which a pass that drops the content builds whole
    (`build_in_order`'s ``whole``); others (the largest mail) are built again here.
    """

    def __init__(self, factory: MailFactory) -> None:
        self.factory = factory
        self.campaign = factory.campaign
        self.log = FindingLog()
        self.places = Places(self.campaign, factory.renderer.template_files)
        self.largest: tuple[int, Recipient, OutgoingMail] | None = None
        self.largest_html: tuple[int, Recipient] | None = None
        self.read: set[int] = set()
        self.mails = 0
        for rule in CAMPAIGN_RULES:
            for finding in rule(self.campaign):
                self.log.add(finding)

    def note(self, recipient: Recipient, mail: OutgoingMail) -> None:
        """Check one mail: its size and subject; its content if it is in the sample."""
        self.mails += 1
        for mail_rule in MAIL_RULES:
            for finding in mail_rule(self.campaign, mail):
                self.log.add(finding)
        if self.largest is None or mail.size > self.largest[0]:
            self.largest = (mail.size, recipient, mail)
        if mail.html:  # a pass with the content: every HTML size is known
            size = len(mail.html.encode("utf-8"))
            if self.largest_html is None or size > self.largest_html[0]:
                self.largest_html = (size, recipient)
        if sampled(mail.index):
            self._content(recipient, mail)

    def findings(self) -> list[Finding]:
        """Every finding of the pass; reads the largest mail's content first."""
        if self.largest is not None and self.largest[2].index not in self.read:
            self._content(self.largest[1], self.largest[2])
        if self.largest_html is not None and self.largest_html[0] > HTML_CLIP_BYTES:
            size, recipient = self.largest_html
            self.log.add(
                Finding(
                    "html-too-large",
                    f"the HTML part is {format_size(size)} (the largest): Gmail clips HTML "
                    f"over {format_size(HTML_CLIP_BYTES)}, hiding the rest and the footer "
                    "behind a link",
                    Location(self.campaign.body_template),
                    Location(self.campaign.recipients, recipient.line),
                )
            )
        findings = self.log.findings()
        if self.mails < BULK_FROM:
            findings = [f for f in findings if f.rule != "no-unsubscribe-link"]
        return findings

    def _content(self, recipient: Recipient, mail: OutgoingMail) -> None:
        self.read.add(mail.index)
        if not mail.data or not mail.html:  # built without its content: build it again
            built = self.factory.build(mail.index, recipient)
            if isinstance(built, CampaignError):
                return  # (the pass reports it)
            mail = built
        size = len(mail.html.encode("utf-8"))
        if self.largest_html is None or size > self.largest_html[0]:
            self.largest_html = (size, recipient)
        read = _read(recipient, mail)
        for rule in CONTENT_RULES:
            for finding in rule(self.campaign, read, self.places):
                self.log.add(finding)
