"""Render one recipient's subject, HTML (CSS inlined) and plain text from the campaign templates."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox

from bulkmail.compose.inline import Inliner, PremailerInliner
from bulkmail.compose.skeleton import MARKERS, SkeletonInliner, Slotted, finalize
from bulkmail.compose.textpart import html_to_text
from bulkmail.errors import AttachmentError, Location, TemplateError, display_path
from bulkmail.models import Campaign, Recipient

_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# What a URL in List-Unsubscribe may hold: printable ASCII, no spaces, no angle brackets.
_UNSAFE_IN_HEADER = re.compile(r"[^\x21-\x7e]|[<>]")


@dataclass(frozen=True)
class RenderedMail:
    """What the templates make of one recipient."""

    subject: str
    html: str
    text: str
    unsubscribe_url: str | None
    unsubscribe_mailto: str | None
    # Attachments that differ per recipient, by index in campaign.attachments:
    # (index, path, filename) for a templated path or file name.
    attachments: tuple[tuple[int, Path, str], ...]


def _template_line(tb: TracebackType | None, files: set[str]) -> tuple[str, int] | None:
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
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(folders),
        undefined=jinja2.StrictUndefined,
        autoescape=html,
        finalize=finalize if marked else None,
        keep_trailing_newline=True,
        auto_reload=False,
    )


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
        templates: Mapping[str, jinja2.Template],
        inliner: Inliner,
        skeletons: SkeletonInliner | None,
    ) -> None:
        self.campaign = campaign
        self._t = templates
        self._inliner = inliner
        self.skeletons = skeletons
        self._files = {
            t.filename for key, t in templates.items() if key.startswith("file:") and t.filename
        }
        # The variables each per-recipient attachment path is made of, to name in errors.
        self._path_fields = {
            index: _variables(spec.written or spec.path)
            for index, spec in enumerate(campaign.attachments)
            if spec.templated
        }

    @classmethod
    def load(
        cls, campaign: Campaign, *, inliner: Inliner | None = None, fast: bool = True
    ) -> Renderer:
        """Compile every template of the campaign; raise TemplateError with file and line.

        ``fast=False`` inlines every recipient's HTML whole (the reference the fast path is
        tested against).
        """
        folders = [campaign.template.parent]
        if campaign.text_template and campaign.text_template.parent not in folders:
            folders.append(campaign.text_template.parent)
        html_env = _environment(folders, html=True)
        text_env = _environment(folders, html=False)
        templates: dict[str, jinja2.Template] = {}
        templates["html"] = _compile_file(html_env, campaign.template, folders, templates)
        if campaign.text_template:
            templates["text"] = _compile_file(text_env, campaign.text_template, folders, templates)

        def one_line(key: str, source: str, where: Location) -> None:
            templates[key] = _compile_string(text_env, source, where)

        one_line("subject", campaign.subject, campaign.location("subject"))
        if campaign.unsubscribe and campaign.unsubscribe.url:
            one_line("unsubscribe_url", campaign.unsubscribe.url, campaign.location("unsubscribe"))
        if campaign.unsubscribe and campaign.unsubscribe.mailto:
            one_line(
                "unsubscribe_mailto", campaign.unsubscribe.mailto, campaign.location("unsubscribe")
            )
        for index, spec in enumerate(campaign.attachments):
            if spec.templated:
                one_line(f"attachment{index}", spec.written or spec.path, spec.where)
            if spec.filename:
                one_line(f"filename{index}", spec.filename, spec.where)
        if inliner is None:
            inliner = PremailerInliner(base_url=campaign.base_url)
        skeletons = None
        sources = [
            Path(t.filename).read_text("utf-8")
            for key, t in templates.items()
            if key.startswith("file:") and t.filename
        ]
        if fast and all(MARKERS.isdisjoint(source) for source in sources):
            marked_env = _environment(folders, html=True, marked=True)
            templates["html_marked"] = _compile_file(marked_env, campaign.template, folders, {})
            to_text = html_to_text if "text" not in templates else _no_text
            skeletons = SkeletonInliner(inliner, to_text, base_url=campaign.base_url)
        return cls(campaign, templates, inliner, skeletons)

    @property
    def template_files(self) -> list[Path]:
        """Every template file the campaign uses (extended and included ones too)."""
        return sorted(Path(name) for name in self._files)

    def context(self, recipient: Recipient) -> dict[str, Any]:
        """The variables a recipient's templates see: campaign data, then the CSV row."""
        return {**self.campaign.data, **recipient.fields}

    def render(self, recipient: Recipient) -> RenderedMail:
        """Render everything for one recipient; TemplateError/AttachmentError name the row."""
        context = self.context(recipient)
        row = Location(self.campaign.recipients, recipient.line)
        unsubscribe_url = self._one_line("unsubscribe_url", context, row, "unsubscribe.url")
        unsubscribe_mailto = self._one_line(
            "unsubscribe_mailto", context, row, "unsubscribe.mailto"
        )
        for value, field in ((unsubscribe_url, "url"), (unsubscribe_mailto, "mailto")):
            if value is not None and _UNSAFE_IN_HEADER.search(value):
                raise TemplateError(
                    f"renders to {value!r}, which has spaces or characters a header can't "
                    "carry (use the urlencode filter)",
                    where=Location(
                        self.campaign.path, self._line("unsubscribe"), f"unsubscribe.{field}"
                    ),
                    row=row,
                )
        if unsubscribe_url is not None:
            context["unsubscribe_url"] = unsubscribe_url
        subject = self._one_line("subject", context, row, "subject") or ""
        if not subject:
            raise TemplateError(
                "renders empty; every mail needs a subject",
                where=Location(self.campaign.path, self._line("subject"), "subject"),
                row=row,
            )
        html, text = self._html_and_text(context, row)
        if "text" in self._t:
            text = self._render("text", context, row)
        return RenderedMail(
            subject=subject,
            html=html,
            text=text,
            unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=unsubscribe_mailto,
            attachments=self._attachments(context, row),
        )

    def _html_and_text(self, context: dict[str, Any], row: Location) -> tuple[str, str]:
        """The inlined HTML and the text made from it (unless a text template is used)."""
        if self.skeletons is not None:
            marked = self._render("html_marked", context, row)
            return self.skeletons(Slotted.split(marked))
        html = self._inliner(self._render("html", context, row))
        return html, html_to_text(html) if "text" not in self._t else ""

    def _line(self, key: str) -> int | None:
        return self.campaign.location(key).line

    def _render(self, key: str, context: dict[str, Any], row: Location) -> str:
        try:
            return self._t[key].render(context)
        except jinja2.TemplateError as exc:
            raise self._error(exc, row, key) from None
        except Exception as exc:  # a filter or test raised on this row's data
            raise self._error(exc, row, key) from None

    def _one_line(self, key: str, context: dict[str, Any], row: Location, field: str) -> str | None:
        """Render a one-line template (subject, URL): a line break in it is an error."""
        if key not in self._t:
            return None
        value = self._render(key, context, row).strip()
        if _LINE_BREAK.search(value):
            raise TemplateError(
                f"renders to {value!r}, which has a line break; a header must be one line",
                row=row,
                where=Location(self.campaign.path, self._line(field.split(".")[0]), field),
            )
        return value

    def _error(self, exc: Exception, row: Location, key: str) -> TemplateError:
        found = _template_line(exc.__traceback__, self._files)
        if found:
            where = Location(found[0], found[1])
        elif key.startswith("html"):  # "html" or "html_marked"
            where = Location(self.campaign.template)
        elif key == "text":
            where = Location(self.campaign.text_template or self.campaign.template)
        elif key.startswith(("attachment", "filename")):  # attachment3, filename3
            where = self.campaign.attachments[int(key.lstrip("abcdefghijklmnopqrstuvwxyz"))].where
        else:  # subject, unsubscribe_url, unsubscribe_mailto
            setting = key.split("_")[0]
            field = key.replace("_", ".") if setting != key else key
            where = Location(self.campaign.path, self._line(setting), field)
        message = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        if not isinstance(exc, jinja2.TemplateError):
            message = f"{type(exc).__name__}: {message}"
        return TemplateError(message, where=where, row=row)

    def _attachments(
        self, context: dict[str, Any], row: Location
    ) -> tuple[tuple[int, Path, str], ...]:
        files = []
        for index, spec in enumerate(self.campaign.attachments):
            if spec.templated:
                path = self._attachment_path(index, context, row)
                if not path.is_file():
                    raise AttachmentError(
                        f"{display_path(path)}: no such file", where=spec.where, row=row
                    )
            elif spec.filename and _is_template(spec.filename):
                path = Path(spec.path)  # the same file for all, named per recipient
            else:
                continue
            files.append((index, path, self.filename(index, context, row) or path.name))
        return tuple(files)

    def _attachment_path(self, index: int, context: dict[str, Any], row: Location) -> Path:
        """A per-recipient attachment's path, which must lie in the folder its template
        names: CSV data picks a file there, it can't reach /etc/passwd with ``..``, an
        absolute path, ``~`` or a symbolic link pointing out."""
        spec = self.campaign.attachments[index]
        rendered = self._one_line(f"attachment{index}", context, row, "attachments") or ""
        base = self.campaign.path.parent
        folder = spec.folder or base
        # A path starting with / or ~ is honoured only if the template itself starts so.
        anchored = (spec.written or spec.path).startswith(("/", "~"))
        escapes = not anchored and rendered.startswith(("/", "~"))
        try:
            path = base / (Path(rendered).expanduser() if anchored else Path(rendered))
            escapes = escapes or not path.resolve().is_relative_to(folder)
        except (OSError, RuntimeError, ValueError) as exc:  # a loop, ~nobody, a NUL byte
            raise AttachmentError(
                f"{rendered!r} is not a usable path: {exc}", where=spec.where, row=row
            ) from None
        if escapes:
            made_of = ", ".join(self._path_fields.get(index, ()))
            raise AttachmentError(
                f"{rendered!r} is outside {display_path(folder)}/"
                + (f" (the path is made from {made_of})" if made_of else "")
                + "; a per-recipient attachment must stay in the folder its path names",
                where=spec.where,
                row=row,
            )
        return path

    def filename(self, index: int, context: dict[str, Any], row: Location) -> str | None:
        """The name an attachment is given in the mail, if the campaign sets one."""
        name = self._one_line(f"filename{index}", context, row, "attachments")
        if name is not None and ("/" in name or "\\" in name or not name.strip(".")):
            spec = self.campaign.attachments[index]
            raise AttachmentError(f"{name!r} is not a file name", where=spec.where, row=row)
        return name


def _compile_file(
    env: jinja2.Environment,
    path: Path,
    folders: list[Path],
    compiled: dict[str, jinja2.Template],
) -> jinja2.Template:
    """Compile a template and, now rather than mid-run, every template it extends or includes."""
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
        compiled[f"file:{current}"] = template
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
