"""Render one recipient's subject, HTML (CSS inlined) and plain text from the campaign templates."""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import jinja2
import jinja2.meta
import jinja2.sandbox
from markupsafe import Markup

from bulkmail.compose.attachments import check_filename, locate
from bulkmail.compose.inline import Inliner, PremailerInliner
from bulkmail.compose.skeleton import (
    CLOSE,
    MARKERS,
    OPEN,
    Marked,
    SkeletonInliner,
    Slotted,
    Unmarkable,
    finalize,
)
from bulkmail.compose.textpart import html_to_text
from bulkmail.errors import Location, TemplateError, display_path
from bulkmail.models import AttachmentSpec, Campaign, Recipient, RenderedMail

_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# What a URL in List-Unsubscribe may hold: printable ASCII, no spaces, no angle brackets.
_UNSAFE_IN_HEADER = re.compile(r"[^\x21-\x7e]|[<>]")
# What XML (and so lxml, in an attribute it sets) refuses: C0 controls but tab, LF, CR.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_OPEN_IN_URL, _CLOSE_IN_URL = quote(OPEN), quote(CLOSE)  # %EE%80%80, %EE%80%81


def _template_line(tb: TracebackType | None, files: Set[str]) -> tuple[str, int] | None:
    """The innermost template file and line in a traceback Jinja has rewritten."""
    found = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in files:
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _environment(folders: list[Path], *, html: bool, marked: bool = False) -> jinja2.Environment:
    """A sandboxed environment: templates are often written by someone other than the
    person who runs the send, so they may read their variables but not reach Python
    (``cycler.__init__.__globals__``...) nor change the campaign data shared by every
    recipient (``articles.pop()``). A refused access raises SecurityError, which is a
    jinja2.TemplateError and so reported with the template line and the row."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(folders),
        undefined=jinja2.StrictUndefined,
        autoescape=html,
        finalize=finalize if marked else None,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    if marked:
        env.filters["safe"] = _safe_keeping_marks
    return env


def _safe_keeping_marks(value: object) -> Markup:
    """Jinja's ``|safe`` in a marked rendering: a `Marked` part (a Markdown body, which
    layouts often write ``{{ content | safe }}``) stays one, its marks still marks."""
    return value if isinstance(value, Marked) else Markup(value)


@dataclass(frozen=True)
class Compiled:
    """One compiled template and where its source is written, which its errors name."""

    template: jinja2.Template
    where: Location  # the template file, or the campaign setting (file:line: field)


@dataclass(frozen=True)
class AttachmentTemplates:
    """An attachment entry's per-recipient parts: its path and/or its file name."""

    index: int  # in campaign.attachments
    spec: AttachmentSpec
    path: Compiled | None  # a templated path
    filename: Compiled | None
    made_of: tuple[str, ...]  # the variables the path is made from, to name in errors


@dataclass(frozen=True)
class Templates:
    """Every template of a campaign, compiled: the HTML (also with each value marked,
    for the skeleton cache), the text, the one-line settings and the attachments' paths
    and names. ``files``: every template file read, extended and included ones too."""

    html: Compiled | None  # None: a plain-text campaign (text_template alone)
    html_marked: Compiled | None
    text: Compiled | None
    subject: Compiled
    unsubscribe_url: Compiled | None
    unsubscribe_mailto: Compiled | None
    attachments: tuple[AttachmentTemplates, ...]
    files: frozenset[str]
    markdown: Compiled | None = None  # a Markdown body, rendered into ``layout``
    layout: Compiled | None = None
    markdown_marked: Compiled | None = None  # both with each value marked
    layout_marked: Compiled | None = None

    @classmethod
    def compile(cls, campaign: Campaign, *, marked: bool) -> Templates:
        """Compile every template; TemplateError with file and line. ``marked``: also the
        HTML with each value marked, unless a template file holds the markers itself."""
        folders = [campaign.body_template.parent]
        if campaign.text_template and campaign.text_template.parent not in folders:
            folders.append(campaign.text_template.parent)
        text_env = _environment(folders, html=False)
        files: set[str] = set()
        html_env = _environment(folders, html=True)
        html = None
        if campaign.template is not None:
            html = _compiled_file(html_env, campaign.template, folders, files)
        markdown = layout = None
        if campaign.markdown is not None:
            from bulkmail.compose import markdown as md  # markdown-it: for Markdown campaigns

            markdown = _compiled_file(md.environment(folders), campaign.markdown, folders, files)
            layout_file = campaign.layout or md.default_layout()
            layout_env = _environment([layout_file.parent], html=True)
            layout = _compiled_file(layout_env, layout_file, [layout_file.parent], files)
            _check_layout(layout_env, layout_file, campaign.location("layout"))
        text = None
        if campaign.text_template:
            text = _compiled_file(text_env, campaign.text_template, folders, files)
        html_marked = markdown_marked = layout_marked = None
        marked = marked and all(MARKERS.isdisjoint(Path(name).read_text("utf-8")) for name in files)
        if campaign.template is not None and marked:
            marked_env = _environment(folders, html=True, marked=True)
            html_marked = _compiled_file(marked_env, campaign.template, folders, set())
        if campaign.markdown is not None and marked:
            from bulkmail.compose import markdown as md

            env = md.environment(folders, marked=True)
            markdown_marked = _compiled_file(env, campaign.markdown, folders, set())
            layout_file = campaign.layout or md.default_layout()
            env = _environment([layout_file.parent], html=True, marked=True)
            layout_marked = _compiled_file(env, layout_file, [layout_file.parent], set())
        url = campaign.unsubscribe.url if campaign.unsubscribe else None
        mailto = campaign.unsubscribe.mailto if campaign.unsubscribe else None
        subject = _setting(text_env, campaign, campaign.subject, "subject")
        assert subject is not None  # a campaign always has one
        return cls(
            html=html,
            html_marked=html_marked,
            text=text,
            subject=subject,
            unsubscribe_url=_setting(text_env, campaign, url, "unsubscribe", "url"),
            unsubscribe_mailto=_setting(text_env, campaign, mailto, "unsubscribe", "mailto"),
            attachments=_attachment_templates(campaign, text_env),
            files=frozenset(files),
            markdown=markdown,
            layout=layout,
            markdown_marked=markdown_marked,
            layout_marked=layout_marked,
        )


def _compiled_file(
    env: jinja2.Environment, path: Path, folders: list[Path], files: set[str]
) -> Compiled:
    return Compiled(_compile_file(env, path, folders, files), Location(path))


def _setting(
    env: jinja2.Environment,
    campaign: Campaign,
    source: str | None,
    setting: str,
    part: str | None = None,
) -> Compiled | None:
    """A one-line template from the campaign file, located as ``june.yaml:12: unsubscribe.url``."""
    if not source:
        return None
    field = f"{setting}.{part}" if part else setting
    where = Location(campaign.path, campaign.location(setting).line, field)
    return Compiled(_compile_string(env, source, where), where)


def _attachment_templates(
    campaign: Campaign, env: jinja2.Environment
) -> tuple[AttachmentTemplates, ...]:
    """The attachment entries with a per-recipient path or name, compiled."""
    found = []
    for index, spec in enumerate(campaign.attachments):
        source = spec.written or spec.path
        path = (
            Compiled(_compile_string(env, source, spec.where), spec.where)
            if spec.templated
            else None
        )
        filename = None
        if spec.filename and (spec.templated or _is_template(spec.filename)):
            filename = Compiled(_compile_string(env, spec.filename, spec.where), spec.where)
        if path is not None or filename is not None:
            made_of = _variables(source) if spec.templated else ()
            found.append(AttachmentTemplates(index, spec, path, filename, made_of))
    return tuple(found)


class Renderer:
    """Renders a campaign's templates for one recipient at a time.

    Jinja with StrictUndefined (a missing variable is an error, never an empty string).
    The HTML template and what it includes are autoescaped (CSV data can't add markup);
    the text template, the subject, URLs and file names are not. Compiling happens in
    `load`; `render` only renders. CSS is inlined through a `SkeletonInliner`, which does
    premailer's work once per document structure (see bulkmail.compose.skeleton).
    """

    def __init__(
        self,
        campaign: Campaign,
        templates: Templates,
        inliner: Inliner,
    ) -> None:
        self.campaign = campaign
        self.templates = templates
        self._inliner = inliner
        # Every environment's templates see the same globals (Jinja's defaults).
        self._globals: dict[str, Any] = dict(_environment([], html=False).globals)
        self.skeletons = None
        if templates.html_marked is not None:
            to_text = html_to_text if templates.text is None else _no_text
            self.skeletons = SkeletonInliner(inliner, to_text, base_url=campaign.base_url)
        elif templates.layout_marked is not None:  # Markdown: the text is the Markdown's
            self.skeletons = SkeletonInliner(inliner, _no_text, base_url=campaign.base_url)

    @classmethod
    def load(
        cls,
        campaign: Campaign,
        *,
        inliner: Inliner | None = None,
        fast: bool = True,
    ) -> Renderer:
        """Compile every template of the campaign; raise TemplateError with file and line.

        ``fast=False`` inlines every recipient's HTML whole (the reference the fast path is
        tested against).
        """
        templates = Templates.compile(campaign, marked=fast)
        if inliner is None:
            inliner = PremailerInliner(base_url=campaign.base_url)
        return cls(campaign, templates, inliner)

    @property
    def template_files(self) -> list[Path]:
        """Every template file the campaign uses (extended and included ones too)."""
        return sorted(Path(name) for name in self.templates.files)

    def context(self, recipient: Recipient) -> dict[str, Any]:
        """The variables a recipient's templates see: Jinja's globals (``range``,
        ``namespace``...), the campaign data, then the CSV row (a later one wins)."""
        return {**self._globals, **self.campaign.data, **recipient.fields}

    def render(self, recipient: Recipient) -> RenderedMail:
        """Render everything for one recipient; TemplateError/AttachmentError name the row."""
        context = self.context(recipient)
        row = Location(self.campaign.recipients, recipient.line)
        t = self.templates
        unsubscribe_url = self._header_url(t.unsubscribe_url, context, row)
        unsubscribe_mailto = self._header_url(t.unsubscribe_mailto, context, row)
        if unsubscribe_url is not None:
            context["unsubscribe_url"] = unsubscribe_url
        subject = self._one_line(t.subject, context, row)
        if not subject:
            raise TemplateError(
                "renders empty; every mail needs a subject", where=t.subject.where, row=row
            )
        try:
            html, text = self._html_and_text(context, row, subject)
        except ValueError as exc:  # premailer or lxml refusing what a value of this row made
            raise self._not_inlined(exc, recipient, row) from None
        if t.text is not None:
            text = self._render(t.text, context, row)
        return RenderedMail(
            subject=subject,
            html=html,
            text=text,
            unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=unsubscribe_mailto,
            attachments=self._attachments(context, row),
        )

    def _header_url(
        self, compiled: Compiled | None, context: dict[str, Any], row: Location
    ) -> str | None:
        """An unsubscribe URL or address, which goes in List-Unsubscribe as it is."""
        if compiled is None:
            return None
        value = self._one_line(compiled, context, row)
        if _UNSAFE_IN_HEADER.search(value):
            raise TemplateError(
                f"renders to {value!r}, which has spaces or characters a header can't "
                "carry (use the urlencode filter)",
                where=compiled.where,
                row=row,
            )
        return value

    def _html_and_text(
        self, context: dict[str, Any], row: Location, subject: str = ""
    ) -> tuple[str, str]:
        """The inlined HTML and the text made from it (unless a text template is used);
        a plain-text campaign has neither here (its text is the text template's)."""
        body, layout = self.templates.markdown, self.templates.layout
        if body is not None and layout is not None:
            return self._markdown(body, layout, context, row, subject)
        if self.templates.html is None:
            return "", ""
        if self.skeletons is not None and self.templates.html_marked is not None:
            try:
                marked = self._render(self.templates.html_marked, context, row)
            except Unmarkable:  # a value holds a marker character: inlined whole below
                self.skeletons.stats.slow += 1
            else:
                return self.skeletons(Slotted.split(marked))
        html = self._inliner(self._render(self.templates.html, context, row))
        return html, html_to_text(html) if self.templates.text is None else ""

    def _markdown(
        self,
        body: Compiled,
        layout: Compiled,
        context: dict[str, Any],
        row: Location,
        subject: str,
    ) -> tuple[str, str]:
        """A Markdown body: Jinja first (values escaped as Markdown), then CommonMark into
        the layout's ``{{ content }}``, CSS inlined; the text part is the Markdown's own
        text (with the unsubscribe URL the default layout shows under it)."""
        from bulkmail.compose import markdown as md  # loaded once; a lookup after that

        content, text = md.to_html_and_text(self._render(body, context, row))  # raw HTML off
        html = self._inlined_markdown(context, row, subject, content)
        if html is None:
            around = {**context, "content": Markup(content), "subject": subject}
            html = self._inliner(self._render(layout, around, row))
        if self.templates.text is not None:
            return html, ""
        if self.campaign.layout is None and "unsubscribe_url" in context:
            text += f"\nUnsubscribe: {context['unsubscribe_url']}\n"
        return html, text

    def _inlined_markdown(
        self, context: dict[str, Any], row: Location, subject: str, content: str
    ) -> str | None:
        """The layout around a Markdown body's HTML (``content``), inlined through the
        skeleton cache; None if that can't be done (then it is inlined whole).

        The body is rendered again with its values marked, and that rendering is used only
        if its HTML is ``content`` once the marks are taken out: a mark can change how
        Markdown reads what stands next to it (an emphasis, a link's URL, an indented line).
        """
        from bulkmail.compose import markdown as md

        t, skeletons = self.templates, self.skeletons
        if skeletons is None or t.markdown_marked is None or t.layout_marked is None:
            return None
        try:
            marked = md.to_html(self._render(t.markdown_marked, context, row))
            # In a link's URL markdown-it percent-encodes the marks, as any character
            # outside ASCII: they are marks still.
            marked = marked.replace(_OPEN_IN_URL, OPEN).replace(_CLOSE_IN_URL, CLOSE)
            if marked.replace(OPEN, "").replace(CLOSE, "") != content:
                skeletons.stats.slow += 1
                return None
            around = {**context, "content": Marked(marked), "subject": subject}
            html, _ = skeletons(Slotted.split(self._render(t.layout_marked, around, row)))
        except Unmarkable:  # a value holds a marker character
            skeletons.stats.slow += 1
            return None
        return html

    def _render(self, compiled: Compiled, context: dict[str, Any], row: Location) -> str:
        """``compiled`` rendered with ``context`` (globals included, see `context`) as it
        is: Jinja's `render` would copy it and the globals for each of a mail's four or
        five templates (~4 us each). An error is raised again by `render` itself, which
        points its traceback at the template's lines for `_error`."""
        template = compiled.template
        try:
            shared = template.new_context(context, shared=True)
            return template.environment.concat(template.root_render_func(shared))
        except Unmarkable:
            raise
        except Exception:  # a template error, or a filter or test raised on this row
            return self._render_to_report(compiled, context, row)

    def _render_to_report(self, compiled: Compiled, context: dict[str, Any], row: Location) -> str:
        """``compiled`` rendered through Jinja's own `render`, after the shared rendering
        raised: what it raises has its traceback pointed at the template's lines, which
        `_error` names."""
        try:
            return compiled.template.render(context)
        except Unmarkable:
            raise
        except Exception as exc:
            raise self._error(exc, row, compiled) from None

    def _one_line(self, compiled: Compiled, context: dict[str, Any], row: Location) -> str:
        """Render a one-line template (subject, URL): a line break in it is an error."""
        value = self._render(compiled, context, row).strip()
        if _LINE_BREAK.search(value):
            raise TemplateError(
                f"renders to {value!r}, which has a line break; a header must be one line",
                row=row,
                where=compiled.where,
            )
        return value

    def _not_inlined(self, exc: ValueError, recipient: Recipient, row: Location) -> TemplateError:
        """Why this row's HTML could not be inlined, naming the value to blame where one
        holds a control character (lxml refuses them in an attribute premailer rewrites,
        such as a link joined to ``base_url``); else what premailer said (a link it could
        not parse, such as ``http://[::1``)."""
        compiled = self.templates.html or self.templates.markdown
        where = compiled.where if compiled is not None else self.campaign.location("template")
        blamed = "control characters" in str(exc)  # lxml's words for it
        for name, value in recipient.fields.items() if blamed else ():
            found = _CONTROL.search(value)
            if found:
                return TemplateError(
                    f"the value of {name!r} holds a control character "
                    f"({found.group()!r}), which the HTML cannot carry; remove it from the list",
                    where=where,
                    row=Location(row.path, row.line, name),
                )
        return TemplateError(
            f"this row's HTML could not be inlined: {type(exc).__name__}: {exc}",
            where=where,
            row=row,
        )

    def _error(self, exc: Exception, row: Location, compiled: Compiled) -> TemplateError:
        """The error as the user needs it: the template line it happened on, else where
        the template is written, and the row."""
        found = _template_line(exc.__traceback__, self.templates.files)
        where = Location(found[0], found[1]) if found else compiled.where
        message = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        if not isinstance(exc, jinja2.TemplateError):
            message = f"{type(exc).__name__}: {message}"
        return TemplateError(message, where=where, row=row)

    def _attachments(
        self, context: dict[str, Any], row: Location
    ) -> tuple[tuple[int, Path, str], ...]:
        """The attachments chosen or named per recipient: (index, file, name in the mail)."""
        files = []
        for entry in self.templates.attachments:
            if entry.path is not None:
                rendered = self._one_line(entry.path, context, row)
                path = locate(self.campaign, entry.index, rendered, row, entry.made_of)
            else:
                path = Path(entry.spec.path)  # the same file for all, named per recipient
            name = path.name
            if entry.filename is not None:
                name = check_filename(entry.spec, self._one_line(entry.filename, context, row), row)
            files.append((entry.index, path, name))
        return tuple(files)


def _compile_file(
    env: jinja2.Environment,
    path: Path,
    folders: list[Path],
    files: set[str],
) -> jinja2.Template:
    """Compile a template and, now rather than mid-run, every template it extends or
    includes; the file name of each goes in ``files``."""
    name = next(path.relative_to(f).as_posix() for f in folders if path.is_relative_to(f))
    pending, seen, first = [name], set(), None
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            template = env.get_template(current)
            assert env.loader is not None
            source = env.loader.get_source(env, current)[0]
            references = jinja2.meta.find_referenced_templates(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            where = Location(exc.filename or path, exc.lineno)
            raise TemplateError(f"syntax error: {exc.message}", where=where) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"{exc.name!r} is not in the template folder", where=Location(path)
            ) from None
        except UnicodeDecodeError:
            found = next((f / current for f in folders if (f / current).is_file()), path)
            raise TemplateError("not UTF-8 text; save it as UTF-8", where=Location(found)) from None
        first = first or template
        if template.filename:
            files.add(template.filename)
        pending.extend(ref for ref in references if ref is not None)
    assert first is not None
    return first


def _compile_string(env: jinja2.Environment, source: str, where: Location) -> jinja2.Template:
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"syntax error: {exc.message}", where=where) from None


def _variables(source: str) -> tuple[str, ...]:
    """The variables a one-line template uses, sorted."""
    try:
        return tuple(
            sorted(jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source)))
        )
    except jinja2.TemplateSyntaxError:
        return ()  # reported when it is compiled


def _no_text(html: str) -> str:
    return ""  # the campaign has a text template: no text is made from the HTML


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _check_layout(env: jinja2.Environment, path: Path, setting: Location) -> None:
    """A layout must place the Markdown body: without ``{{ content }}`` every mail would
    go out with the layout alone."""
    source = path.read_text("utf-8")
    if "content" not in jinja2.meta.find_undeclared_variables(env.parse(source)):
        raise TemplateError(
            f"{display_path(path)} has no {{{{ content }}}}: the Markdown body has nowhere to go",
            where=setting,
        )
