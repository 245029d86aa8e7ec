"""The ``bulkmail`` command: parse arguments, call the library, show progress and results."""

from __future__ import annotations

import contextlib
import datetime
import errno
import getpass
import json
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import rich.console
import rich.table
import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from bulkmail import (
    BulkmailError,
    CampaignError,
    CheckReport,
    Event,
    InboxReport,
    Location,
    PreflightError,
    SenderInfo,
    SendPlan,
    SendReport,
    add_suppressions,
    campaign_status,
    check_campaign,
    export_suppressions,
    list_suppressions,
    load_campaign,
    preview_campaign,
    remove_suppressions,
    send_campaign,
    send_test,
    write_failed_csv,
    write_starter,
    write_suppressions_csv,
)
from bulkmail.cli.terminal import Signals, Stream, guard_output
from bulkmail.reports import iso_time
from bulkmail.sizes import format_size

if TYPE_CHECKING:
    import rich.progress  # loaded when a bar is first shown


class _FlagsShownAsFlags:
    """Help that shows an on/off option as a bare flag: typer 0.29 shows every one as
    taking a ``<bool>`` value (``--dry-run <bool>``), which the option then refuses."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""  # (typer shows the metavar, when set, as the type)
        return params


class _Command(_FlagsShownAsFlags, TyperCommand):
    """A bulkmail command."""


class _Group(_FlagsShownAsFlags, TyperGroup):
    """The ``bulkmail`` command, which holds the others."""


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # no SMTP password in a traceback
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Send personalised newsletters over SMTP: checked first, sent once, resumable.",
)
out = rich.console.Console()
# One problem per line, never wrapped: people grep these and editors jump to file:line.
err = rich.console.Console(stderr=True, soft_wrap=True)

CampaignArg = Annotated[
    Path, typer.Argument(help="The campaign YAML file.", show_default=False, dir_okay=False)
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="Only the first N recipients.")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Preview folder (default: the campaign's preview.out)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Deliverability warnings are errors: exit 1, nothing sent."),
]


def _refuse_if_strict(report: CheckReport, strict: bool) -> None:
    """With ``--strict``, the deliverability findings stop the command as problems do."""
    if strict and report.lint:
        raise PreflightError([finding.as_error() for finding in report.lint])


def _version() -> str:
    import importlib.metadata  # ~20 ms: for --version only

    try:
        return importlib.metadata.version("bulkmail")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


def _show_version(wanted: bool) -> None:
    if wanted:
        print(f"bulkmail {_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Send personalised newsletters over SMTP: checked first, sent once, resumable."""


_signals = Signals()
_stdout: Stream | None = None  # set by `main`: the command's stdout, whose loss is told


def _stdout_lost() -> OSError | None:
    """Whether stdout could not be written (after writing out what it holds)."""
    if _stdout is None:
        return None
    _stdout.flush()
    return _stdout.lost


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn bulkmail's errors into one line per problem and the documented exit code."""
    try:
        yield
    except PreflightError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/]: {escape(str(problem))}")
        if exc.truncated:
            err.print(f"(stopped after {len(exc.problems)} problems)")
        err.print(f"{escape(exc.message)}.")
        raise typer.Exit(exc.exit_code) from None
    except CampaignError as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}")
        err.print("nothing was sent.")
        raise typer.Exit(exc.exit_code) from None
    except BulkmailError as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if not _signals.interrupted:  # (else the signal handler said why already)
            err.print(escape(_signals.message))
        raise typer.Exit(130) from None


def _shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the working directory if below it."""
    return str(Location(path))


def _summary(report: CheckReport, title: str) -> rich.table.Table:
    campaign = report.campaign
    table = rich.table.Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("campaign", escape(f"{campaign.name} ({_shown(campaign.path)})"))
    table.add_row("from", escape(campaign.sender))
    table.add_row("recipients", escape(_shown(campaign.recipients)))
    table.add_row("mails", f"{report.mails:,}")
    table.add_row("duplicates", f"{report.duplicates:,} (mailed once)")
    table.add_row("suppressed", f"{report.suppressed:,} (not mailed)")
    shared = ", ".join(f"{a.filename} ({format_size(a.size)})" for a in report.attachments)
    per_row = sum(1 for spec in campaign.attachments if spec.templated)
    if per_row:
        shared += f"{', ' if shared else ''}{per_row} per recipient"
    table.add_row("attachments", escape(shared or "none"))
    table.add_row(
        "total size",
        f"{format_size(report.total_bytes)} (largest mail {format_size(report.largest)})",
    )
    return table


def _show(report: CheckReport, title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    out.print(_summary(report, title))
    for skipped in report.skipped:
        row = f"{_shown(report.campaign.recipients)}:{skipped.recipient.line}"
        out.print(escape(f"skipped {row}: {skipped.recipient.email}: {skipped.detail}"))
    for warning in report.warnings:
        err.print(f"[yellow]warning[/]: {escape(warning)}")


_REDRAW = 0.05  # seconds between two updates of the sending bar's counts


class _Progress:
    """What a command is doing, on the terminal: a bar of the mails built ("checking",
    "writing previews"), then, once sending begins, of the mails sent, with the sent and
    failed counts and the rate. Reconnects and retries are lines on stderr, terminal or
    not: a run that slows down says why. No bar when stdout is not a terminal, nor while
    the plan, the question or the password prompt is on the screen (a live bar redraws
    its line over them)."""

    def __init__(self, label: str) -> None:
        self.enabled = out.is_terminal
        self.label = label
        self.bar: rich.progress.Progress | None = None
        self.sending = False
        self.sent = self.failed = 0
        self.started = self.shown = 0.0

    def __enter__(self) -> _Progress:
        self._show(self.label)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pause()

    def __call__(self, event: Event) -> None:
        _signals.checkpoint()
        if event.kind in ("reconnect", "retry", "waiting"):
            self._note(event.detail)
        elif event.kind in ("relay-down", "copy-refused"):
            self._note(f"warning: {event.detail}")
        elif self.sending and event.kind in ("sent", "failed", "uncertain"):
            self._count(event)
        elif not self.sending and event.kind == "built" and self.bar is not None and self.enabled:
            self.bar.update(self.task, completed=event.done, total=event.total)

    def pause(self) -> None:
        """Clear the bar (the preflight is done, or sending is)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def send(self) -> None:
        """Sending begins: count the outcomes, in a bar shown at the first one."""
        self.pause()
        self.sending = True
        self.started = time.monotonic()

    def _count(self, event: Event) -> None:
        if event.kind == "sent":
            self.sent += 1
        else:
            self.failed += 1
        if not self.enabled:
            return  # no bar to show it in (rich would format it for nothing, every mail)
        if self.bar is None:
            self._show("sending")
        assert self.bar is not None
        now = time.monotonic()
        last = event.total is not None and event.done >= event.total
        if now - self.shown < _REDRAW and not last:
            return  # the bar is redrawn ten times a second: a count a mail is wasted work
        self.shown = now
        elapsed = now - self.started
        rate = f" {(self.sent + self.failed) / elapsed:.1f}/s" if elapsed > 0 else ""
        counts = f"[green]{self.sent} sent[/] [red]{self.failed} failed[/]{rate}"
        self.bar.update(self.task, completed=event.done, total=event.total, counts=counts)

    def _show(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeRemainingColumn(),
            console=out,
            transient=True,
            disable=not self.enabled,
        )
        self.task = self.bar.add_task(label, total=None, counts="")
        self.bar.start()

    def _note(self, text: str) -> None:
        """One line on stderr, above the bar when both are on the terminal."""
        if self.bar is None or not self.enabled:
            err.print(escape(text))
        elif err.is_terminal:
            # The bar's screen: printed above the bar, which a plain write would garble.
            self.bar.console.print(escape(text), soft_wrap=True)
        else:
            # While the bar is live, rich sends sys.stderr to the bar's console (stdout);
            # the line belongs in the file stderr goes to.
            stream = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
            print(text, file=stream, flush=True)


DnsRecordOpt = Annotated[
    Path | None,
    typer.Option(
        "--dns-record",
        dir_okay=False,
        help="A file with the DKIM TXT record as published (default: look it up in DNS).",
    ),
]


@app.command(cls=_Command)
def check(
    campaign: CampaignArg,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
    dns_record: DnsRecordOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Check a campaign: render and build every mail, send nothing, report any problem.

    With `dkim:` set, also that the DNS record publishes the key's public half.

    Example: bulkmail check campaigns/june.yaml
    """
    with (
        user_errors(),
        _signals.at_once("interrupted.", deferred=True),  # workers may be starting
        _Progress("checking") as progress,
    ):
        report = check_campaign(campaign, limit=limit, on_event=progress)
    with user_errors():
        _check_dkim_record(report, dns_record)
        _refuse_if_strict(report, strict)
    _show(report, "Campaign checked: nothing was sent", as_json)


def _check_dkim_record(report: CheckReport, dns_record: Path | None) -> None:
    """The DKIM key against its DNS record: a mismatch is an error; a record that could
    not be looked up (offline) a warning on the report."""
    settings = report.campaign.dkim
    if settings is None:
        if dns_record is not None:
            raise CampaignError(
                "--dns-record: the campaign has no 'dkim:' settings to check it against",
                where=Location(report.campaign.path, field="dkim"),
            )
        return
    from bulkmail.compose.dkim import check_record

    warning = check_record(settings, dns_record)
    if warning is not None:
        report.warnings.append(warning)


@app.command(cls=_Command)
def preview(
    campaign: CampaignArg,
    out_dir: OutOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Write every mail as .html and .eml with an index.html, instead of sending.

    Example: bulkmail preview campaigns/june.yaml --limit 20
    """
    with (
        user_errors(),
        _signals.at_once("interrupted.", deferred=True),  # workers may be starting
        _Progress("writing previews") as progress,
    ):
        report = preview_campaign(campaign, out=out_dir, limit=limit, on_event=progress)
    with user_errors():
        _refuse_if_strict(report, strict)
    _show(report, "Dry run: nothing was sent", as_json)
    if not as_json:
        out.print(f"previews: {escape(_shown(report.out / 'index.html'))}")


def _describe_plan(plan: SendPlan) -> rich.table.Table:
    campaign = plan.campaign
    table = rich.table.Table(title="About to send", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    smtp = campaign.smtp
    if smtp is not None:
        server = f"{smtp.host}:{smtp.port} ({smtp.security})"
        if smtp.username:
            server += f" as {smtp.username}"
        table.add_row("server", escape(server))
    table.add_row("campaign", escape(f"{campaign.name} ({_shown(campaign.path)})"))
    table.add_row("from", escape(campaign.sender))
    table.add_row("recipients", f"{plan.to_send:,} to send")
    if plan.already_accepted:
        table.add_row("already sent", f"{plan.already_accepted:,} (accepted in an earlier run)")
    if plan.earlier_failed:
        table.add_row("failed before", f"{plan.earlier_failed:,} (--retry-failed to retry)")
    if plan.uncertain:
        table.add_row("uncertain", f"{plan.uncertain:,} (--resend-uncertain to resend)")
    table.add_row("rate", campaign.rate.text)
    if plan.estimated_seconds is not None:
        table.add_row("estimated time", _duration(plan.estimated_seconds))
    return table


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _ask(question: str, console: rich.console.Console) -> bool:
    """Ask a yes/no question on ``console`` and read the answer from stdin; no by default.

    Not typer.confirm: it turns Ctrl-C into "Aborted!" (exit 1), and echoes a character to
    stdout, which with --json holds the summary alone.
    """
    while True:
        _signals.prompting = True
        try:
            console.print(f"{question} [y/N]: ", end="", markup=False, highlight=False)
            answer = sys.stdin.readline()
        finally:
            _signals.prompting = False
        if not answer:  # end of input: no answer is not a yes
            console.print()
            return False
        answer = answer.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("", "n", "no"):
            return False


def _confirm(
    yes: bool,
    *,
    console: rich.console.Console,
    progress: _Progress,
    confirmed: Callable[[], None],
    strict: bool = False,
) -> Callable[[SendPlan], bool]:
    """Show the plan on ``console`` and, unless ``yes``, ask; call ``confirmed`` on a yes.
    ``strict``: deliverability warnings stop the run here, before anything is sent."""

    def confirm(plan: SendPlan) -> bool:
        _signals.checkpoint()
        progress.pause()
        _refuse_if_strict(plan.check, strict)
        console.print(_describe_plan(plan))
        for warning in plan.check.warnings:
            err.print(f"[yellow]warning[/]: {escape(warning)}")
        mails = f"{plan.to_send:,} mail{'' if plan.to_send == 1 else 's'}"
        with _signals.at_once(Signals.BEFORE_SENDING):
            agreed = yes or _ask(f"Send {mails} now?", console)
        if agreed:
            progress.send()
            confirmed()
            return True
        return False

    return confirm


def _password_prompt() -> Callable[[str], str] | None:
    if not sys.stdin.isatty():
        return None

    def ask(text: str) -> str:
        with _signals.at_once(Signals.BEFORE_SENDING):  # asked before connecting
            return getpass.getpass(text)

    return ask


def _show_send_report(report: SendReport, command: str) -> None:
    plan = report.plan
    skipped = [f"{plan.already_accepted:,} already sent"]
    if plan.uncertain:
        skipped.append(f"{plan.uncertain:,} uncertain (--resend-uncertain sends them again)")
    if plan.earlier_failed:
        skipped.append(f"{plan.earlier_failed:,} failed before (--retry-failed retries them)")
    skipped += [f"{plan.check.suppressed:,} suppressed", f"{plan.check.duplicates:,} duplicates"]
    out.print(
        f"[green]{report.accepted:,} accepted[/], [red]{report.failed:,} failed[/]"
        + (f", {report.uncertain:,} uncertain" if report.uncertain else "")
        + f"; skipped: {escape(', '.join(skipped))}"
        + (f" (in {_duration(report.elapsed)})" if report.elapsed else "")
    )
    for _, why in report.failures:
        err.print(f"[red]failed[/]: {escape(why)}")
    if report.failed > len(report.failures):
        err.print(f"... and {report.failed - len(report.failures):,} more: bulkmail status")
    _say_next_step(report, command)


def _say_next_step(report: SendReport, command: str) -> None:
    """On stderr: what was not sent and why, and what to do next."""
    hint = escape(command)
    for problem in report.unbuilt:
        err.print(f"[red]not sent[/]: {escape(str(problem))}")
    if report.added:
        err.print(f"{report.added:,} rows were added to the list during the run: rerun `{hint}`.")
    for relay, why in report.relays_down:
        err.print(f"[yellow]relay set aside[/]: {escape(relay)}: {escape(why)}")
    if report.relays_down and report.stopped is None:
        err.print("the other relays carried the run.")
    if report.stopped is not None:
        err.print(f"[red]error[/]: {escape(str(report.stopped))}")
        err.print(f"delivery stopped; what was sent is journaled: rerun `{hint}` to go on.")
    elif report.interrupted:
        err.print(f"interrupted; rerun `{hint}` to resume where it stopped.")


@app.command(cls=_Command)
def run(
    campaign: CampaignArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write previews instead of sending.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Send without asking.")] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Send again to recipients that failed.")
    ] = False,
    resend_uncertain: Annotated[
        bool,
        typer.Option(
            "--resend-uncertain",
            help="Send again to recipients whose outcome a crash left unknown.",
        ),
    ] = False,
    allow_changes: Annotated[
        bool,
        typer.Option("--allow-changes", help="Go on although the content changed since."),
    ] = False,
    out_dir: OutOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Send the campaign; with --dry-run, write previews instead.

    Every mail is checked first; nothing is sent if anything is wrong. The journal
    (campaigns/.bulkmail/NAME.sqlite) records each outcome, so running the same command
    again resumes: nobody is mailed twice.

    Example: bulkmail run campaigns/june.yaml --dry-run
    """
    if dry_run:
        preview(campaign, out_dir=out_dir, limit=limit, as_json=as_json, strict=strict)
        return
    options = {
        "--yes": yes,
        "--retry-failed": retry_failed,
        "--allow-changes": allow_changes,
        "--json": as_json,
    }
    command = _resume_command(campaign, options, limit)
    # The plan and the question go where the user sees them: not into stdout when it holds
    # the JSON summary, or when it is not the terminal the answer comes from.
    shown_on = err if as_json or (not yes and not out.is_terminal) else out
    stop = threading.Event()
    resume = f"interrupted; rerun `{command}` to resume where it stopped."
    with user_errors(), _signals.handled():
        # Nothing to finish: stop at once (at the next mail built: workers may be starting)
        _signals.now(Signals.BEFORE_SENDING, deferred=True)
        if not yes and not sys.stdin.isatty():
            raise CampaignError("no terminal to confirm on: add --yes to send")
        with _Progress("checking") as progress:
            report = send_campaign(
                campaign,
                limit=limit,
                retry_failed=retry_failed,
                resend_uncertain=resend_uncertain,
                allow_changes=allow_changes,
                prompt=_password_prompt(),
                confirm=_confirm(
                    yes,
                    console=shown_on,
                    progress=progress,
                    confirmed=lambda: _signals.now(resume, stop=stop),
                    strict=strict,
                ),
                stop=stop,
                on_event=progress,
            )
        _signals.now(
            "interrupted while reporting; the run had ended: "
            f"`bulkmail status {shlex.quote(str(campaign))}` shows its outcome."
        )
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
            _say_next_step(report, command)
        else:
            _show_send_report(report, command)
        _tell_if_stdout_lost(report, campaign)
    raise typer.Exit(report.exit_code)


def _resume_command(campaign: Path, options: dict[str, bool], limit: int | None) -> str:
    """The command that resumes this run, for the hints: it repeats the options that shape
    the run, so that a script (with --yes) can run it as it is. Never --resend-uncertain:
    whoever this run left in doubt must not be mailed again unasked."""
    return shlex.join(
        ["bulkmail", "run", str(campaign)]
        + [name for name, given in options.items() if given]
        + (["--limit", str(limit)] if limit is not None else [])
    )


def _tell_if_stdout_lost(report: SendReport, campaign: Path) -> None:
    """Say on stderr what went out when stdout could not say it (``| head``, a full disk)."""
    lost = _stdout_lost()
    if lost is None:
        return
    closed = lost.errno in (errno.EPIPE, errno.EBADF)
    why = "was closed" if closed else f"could not be written ({lost.strerror})"
    counts = f"{report.accepted:,} accepted, {report.failed:,} failed" + (
        f", {report.uncertain:,} uncertain" if report.uncertain else ""
    )
    err.print(
        escape(
            f"stdout {why}; this run: {counts}. Every outcome is in the journal: "
            f"bulkmail status {shlex.quote(str(campaign))}"
        )
    )


@app.command("send-test", cls=_Command)
def send_test_command(
    campaign: CampaignArg,
    to: Annotated[str, typer.Option("--to", help="The one address to send the test to.")],
    row: Annotated[
        int, typer.Option("--row", min=1, help="Render the mail of this recipient (1 = first).")
    ] = 1,
) -> None:
    """Send one recipient's mail to yourself, subject marked [TEST]. Nothing is journaled.

    Example: bulkmail send-test campaigns/june.yaml --to me@example.com --row 3
    """
    with user_errors():
        mail = send_test(campaign, to=to, row=row, prompt=_password_prompt())
    out.print(f"test mail sent to {escape(to)}: {escape(mail.subject)}")


@app.command(cls=_Command)
def status(
    campaign: CampaignArg,
    failed_csv: Annotated[
        Path | None,
        typer.Option("--failed-csv", help="Write the failed recipients' rows to this CSV."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show where a campaign stands: counts per status, failures, uncertain recipients.

    Example: bulkmail status campaigns/june.yaml --failed-csv failed.csv
    """
    with user_errors():
        state = campaign_status(campaign)
        if failed_csv is not None:
            count = write_failed_csv(state, failed_csv)
            err.print(f"wrote {count:,} failed rows to {escape(str(failed_csv))}")
    summary = state.summary
    data = state.to_dict()
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if summary is None:
        out.print(f"{escape(state.campaign.name)}: never sent (no journal yet)")
        return
    table = rich.table.Table(title=f"Campaign {escape(state.campaign.name)}", title_justify="left")
    table.add_column("status")
    table.add_column("recipients", justify="right")
    for key, count in summary.counts.items():
        table.add_row(key.value, f"{count:,}")
    for kind, count in summary.feedback.items():
        if count:  # what `bulkmail inbox` found came back, of the mails accepted
            table.add_row(f"  then {kind}", f"{count:,}")
    out.print(table)
    out.print(
        f"runs: {summary.runs}; started {data['started']}; last accepted {data['last_sent']}"
        + (f"; {summary.rate:.1f} mails/s" if summary.rate else "")
    )
    if state.senders:
        out.print(_senders_table(state.senders))
    for entry in state.failed:
        out.print(escape(f"failed: line {entry.line}: {entry.email}: {entry.reply}"))
    for entry in state.uncertain:
        out.print(
            escape(
                f"uncertain: line {entry.line}: {entry.email}: the server may have it "
                "(--resend-uncertain sends it again)"
            )
        )


def _senders_table(senders: list[SenderInfo]) -> rich.table.Table:
    """A shared journal's senders: each one's progress, and whether it is still alive."""
    table = rich.table.Table(title="Senders", title_justify="left")
    for column in ("sender", "state", "accepted", "failed", "uncertain", "holding", "last seen"):
        table.add_column(column, justify="left" if column in ("sender", "state") else "right")
    for sender in senders:
        state = sender.state
        if state == "running" and not sender.alive:
            state = "lost (no heartbeat: its unsent rows went back to the others)"
        table.add_row(
            escape(sender.id),
            escape(state),
            f"{sender.accepted:,}",
            f"{sender.failed:,}",
            f"{sender.uncertain:,}",
            f"{sender.held:,}",
            iso_time(sender.last_seen) or "",
        )
    return table


@app.command(cls=_Command)
def inbox(
    campaign: CampaignArg,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be done; change nothing anywhere."),
    ] = False,
    delete: Annotated[
        bool,
        typer.Option(
            "--delete",
            help="Delete the bounces, complaints, unsubscribe requests and auto-replies "
            "handled (never a person's reply).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Read bounces, complaints and unsubscribe requests from the campaign's mailbox
    (inbox:) into the suppression list that every later send skips.

    Example: bulkmail inbox campaigns/june.yaml --dry-run
    """
    from bulkmail import read_inbox  # IMAP, POP3 and the bounce parsers: for this command only

    with user_errors():
        report = read_inbox(
            load_campaign(campaign), dry_run=dry_run, delete=delete, prompt=_password_prompt()
        )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    _show_inbox_report(report)


def _show_inbox_report(report: InboxReport) -> None:
    dry = report.dry_run
    table = rich.table.Table(
        title=f"{escape(report.mailbox)}" + (" (dry run: nothing changed)" if dry else ""),
        title_justify="left",
    )
    table.add_column("message")
    table.add_column("count", justify="right")
    labels = {
        "hard_bounce": "hard bounces",
        "soft_bounce": "soft bounces",
        "delayed": "delay notices",
        "complaint": "complaints",
        "unsubscribe": "unsubscribe requests",
        "auto_reply": "auto-replies (ignored)",
        "other": "other mail (left for you)",
    }
    for kind, label in labels.items():
        table.add_row(label, f"{report.counts.get(kind, 0):,}")
    out.print(table)
    for handled in report.handled:
        if handled.kind in ("auto_reply", "other", "delayed"):
            continue
        who = f"{handled.address}: " if handled.address else ""
        out.print(escape(f"{handled.action}: {who}{handled.reason}"), soft_wrap=True)
    verb = "would be suppressed" if dry else "suppressed"
    parts = [f"{report.messages:,} new messages", f"{report.suppressed:,} addresses {verb}"]
    if report.unmatched:
        parts.append(f"{report.unmatched:,} about mail not sent from here (suppressing nobody)")
    if report.already:
        parts.append(f"{report.already:,} read before, passed over")
    if report.deleted:
        parts.append(f"{report.deleted:,} deleted")
    out.print("; ".join(parts))


suppress_app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    help="The suppression list: addresses no campaign of the folder mails again "
    "(filled by bulkmail inbox; shared by the campaigns beside this one).\n\n"
    "Example: bulkmail suppress list campaigns/june.yaml",
)
app.add_typer(suppress_app, name="suppress")
AddressesArg = Annotated[list[str], typer.Argument(help="One or more addresses.")]


@suppress_app.command("list", cls=_Command)
def suppress_list(campaign: CampaignArg, as_json: JsonOpt = False) -> None:
    """Show every suppressed address, why, and since when.

    Example: bulkmail suppress list campaigns/june.yaml
    """
    with user_errors():
        entries = list_suppressions(load_campaign(campaign))
    if as_json:
        rows = [
            {
                "email": e.email,
                "reason": e.reason,
                "campaign": e.campaign,
                "added": _iso_day(e.added),
                "detail": e.detail,
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = rich.table.Table(title=f"{len(entries):,} suppressed", title_justify="left")
    for column in ("email", "reason", "campaign", "added", "detail"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            *(escape(v) for v in (e.email, e.reason, e.campaign or "", _iso_day(e.added))),
            escape(e.detail),
        )
    out.print(table)


def _iso_day(timestamp: float) -> str:
    """A time in ISO 8601, to the second, in this machine's time zone."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


@suppress_app.command("add", cls=_Command)
def suppress_add(
    campaign: CampaignArg,
    addresses: AddressesArg,
    note: Annotated[str, typer.Option("--note", help="Why (shown by suppress list).")] = "",
) -> None:
    """Never mail these addresses again (from any campaign of this folder).

    Example: bulkmail suppress add campaigns/june.yaml ann@example.com --note "asked by phone"
    """
    with user_errors():
        changes = add_suppressions(load_campaign(campaign), addresses, note)
    for change in changes:
        before = change.before
        state = (
            "suppressed" if change.changed else f"already suppressed ({before and before.reason})"
        )
        out.print(escape(f"{change.address}: {state}"))


@suppress_app.command("remove", cls=_Command)
def suppress_remove(campaign: CampaignArg, addresses: AddressesArg) -> None:
    """Take addresses off the list: the next send mails them again.

    Example: bulkmail suppress remove campaigns/june.yaml ann@example.com
    """
    with user_errors():
        changes = remove_suppressions(load_campaign(campaign), addresses)
    for change in changes:
        before = change.before
        state = (
            f"removed (was: {before.reason})" if change.changed and before else "not on the list"
        )
        out.print(escape(f"{change.address}: {state}"))
    if not any(change.changed for change in changes):
        raise typer.Exit(1)


@suppress_app.command("export", cls=_Command)
def suppress_export(
    campaign: CampaignArg,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", "-o", dir_okay=False, help="Write to this CSV file (else stdout)."),
    ] = None,
) -> None:
    """Write the list as CSV: email, reason, campaign, added, detail.

    Example: bulkmail suppress export campaigns/june.yaml -o suppressed.csv
    """
    with user_errors():
        loaded = load_campaign(campaign)
        if out_file is None:
            count = export_suppressions(loaded, sys.stdout)
        else:
            count = write_suppressions_csv(loaded, out_file)
    err.print(f"{count:,} suppressed addresses")


@app.command(cls=_Command)
def init(
    folder: Annotated[
        Path,
        typer.Argument(help="Where to write the starter (made if missing).", file_okay=False),
    ] = Path("."),
) -> None:
    """Write a starter campaign: a commented campaign.yaml with HTML and text templates,
    the same campaign in Markdown, and a 3-row list, ready for a dry run. Never overwrites.

    Example: bulkmail init newsletter
    """

    with user_errors():
        paths = write_starter(folder)
    for path in paths:
        out.print(f"wrote {escape(str(path))}")
    command = shlex.join(["bulkmail", "run", str(paths[0]), "--dry-run"])
    out.print(f"next: {escape(command)}, then open the previews' index.html", soft_wrap=True)


dkim_app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    help="DKIM keys: make a key pair and the DNS record to publish.\n\n"
    "Example: bulkmail dkim keygen --selector news2026 --domain example.com --out dkim.pem",
)
app.add_typer(dkim_app, name="dkim")


@dkim_app.command("keygen", cls=_Command)
def dkim_keygen(
    selector: Annotated[
        str, typer.Option("--selector", help="The key's name in DNS, e.g. news2026.")
    ],
    domain: Annotated[str, typer.Option("--domain", help="The signing domain (d=).")],
    out_file: Annotated[
        Path,
        typer.Option("--out", dir_okay=False, help="Where to write the private key (new file)."),
    ],
    key_type: Annotated[
        str, typer.Option("--type", help="rsa (accepted everywhere) or ed25519.")
    ] = "rsa",
    bits: Annotated[int, typer.Option("--bits", min=1024, max=8192, help="RSA key size.")] = 2048,
) -> None:
    """Write a new DKIM private key (owner-only) and print the TXT record to publish.

    Example: bulkmail dkim keygen --selector news2026 --domain example.com --out dkim.pem
    """
    from bulkmail.compose import dkim
    from bulkmail.load.campaign import DKIM_DOMAIN, DKIM_SELECTOR

    domain = domain.strip().rstrip(".").lower()
    problem = None
    if key_type not in ("rsa", "ed25519"):
        problem = f"--type: {key_type!r}: must be rsa or ed25519"
    elif not DKIM_SELECTOR.fullmatch(selector):
        problem = f"--selector: {selector!r}: must be a DNS label, e.g. news2026"
    elif not DKIM_DOMAIN.fullmatch(domain):
        problem = f"--domain: {domain!r}: must be a domain name, e.g. example.com"
    if problem is not None:
        err.print(f"[red]error[/]: {escape(problem)}")
        raise typer.Exit(1)
    key = dkim.generate_key(key_type, bits)
    try:
        dkim.write_key_file(out_file, dkim.private_pem(key))
    except FileExistsError:
        err.print(f"[red]error[/]: {escape(_shown(out_file))}: exists; not overwritten")
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]error[/]: {escape(_shown(out_file))}: {escape(str(exc.strerror))}")
        raise typer.Exit(1) from None
    record = dkim.zone_line(f"{selector}._domainkey.{domain}", dkim.record_value(key))
    err.print(
        escape(
            f"wrote the private key to {_shown(out_file)} (readable by you only; keep it "
            "secret). Publish this TXT record, then set dkim: {domain, selector, "
            "private_key_file} in the campaign:"
        )
    )
    print(record)


def main() -> None:
    """Entry point of the ``bulkmail`` console script."""
    global _stdout
    _stdout = guard_output()
    sys.unraisablehook = _unraisable
    _signals.install()
    try:
        app()
    except SystemExit as exit:
        if _signals.interrupted and exit.code != 130:
            # Said "interrupted" on stderr, but some code swallowed the KeyboardInterrupt
            raise SystemExit(130) from None
        raise
    finally:
        _signals.ignore()


def _unraisable(info: Any) -> None:
    """Python's report of an exception it had to ignore, but for a KeyboardInterrupt: a
    signal handled in an at-fork hook or a __del__ is not a traceback for the user (and
    `Signals.checkpoint` raises it again)."""
    if not issubclass(info.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(info)


if __name__ == "__main__":  # pragma: no cover
    main()
