"""The ``bulkmail`` command: parse arguments, call the library, show progress and results."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import rich.console
import rich.table
import typer
from rich.markup import escape

from bulkmail.errors import BulkmailError, CampaignError, PreflightError, display_path
from bulkmail.pipeline import CheckReport, Event, check_campaign, preview_campaign

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # no SMTP password in a traceback
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
        err.print("interrupted; rerun the same command to resume.")
        raise typer.Exit(130) from None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _summary(report: CheckReport, title: str) -> rich.table.Table:
    campaign = report.campaign
    table = rich.table.Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("campaign", escape(f"{campaign.name} ({display_path(campaign.path)})"))
    table.add_row("from", escape(campaign.sender))
    table.add_row("recipients", escape(display_path(campaign.recipients)))
    table.add_row("mails", f"{report.mails:,}")
    table.add_row("duplicates", f"{report.duplicates:,} (mailed once)")
    table.add_row("suppressed", f"{report.suppressed:,} (not mailed)")
    shared = ", ".join(f"{a.filename} ({_size(a.size)})" for a in report.attachments)
    per_row = sum(1 for spec in campaign.attachments if spec.templated)
    if per_row:
        shared += f"{', ' if shared else ''}{per_row} per recipient"
    table.add_row("attachments", escape(shared or "none"))
    table.add_row(
        "total size", f"{_size(report.total_bytes)} (largest mail {_size(report.largest)})"
    )
    return table


def _show(report: CheckReport, title: str, as_json: bool, **extra: object) -> None:
    if as_json:
        data = {
            "campaign": report.campaign.name,
            "mails": report.mails,
            "duplicates": report.duplicates,
            "suppressed": report.suppressed,
            "total_bytes": report.total_bytes,
            "warnings": report.warnings,
            **extra,
        }
        print(json.dumps(data, indent=2, default=str))
        return
    out.print(_summary(report, title))
    for skipped in report.skipped:
        row = f"{display_path(report.campaign.recipients)}:{skipped.recipient.line}"
        out.print(escape(f"skipped {row}: {skipped.recipient.email}: {skipped.detail}"))
    for warning in report.warnings:
        err.print(f"[yellow]warning[/]: {escape(warning)}")


class _Progress:
    """A rich progress bar fed by pipeline events; silent when stdout is not a terminal."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.enabled = out.is_terminal
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=out,
            transient=True,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(label, total=None)

    def __call__(self, event: Event) -> None:
        if self.enabled and event.kind == "built":
            self.progress.update(self.task, completed=event.done, total=event.total)

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@app.command()
def check(campaign: CampaignArg, limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Check a campaign: render and build every mail, send nothing, report any problem.

    Example: bulkmail check campaigns/june.yaml
    """
    with user_errors(), _Progress("checking") as progress:
        report = check_campaign(campaign, limit=limit, on_event=progress)
    _show(report, "Campaign checked: nothing was sent", as_json)


@app.command()
def preview(
    campaign: CampaignArg, out_dir: OutOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False
) -> None:
    """Write every mail as .html and .eml with an index.html, instead of sending.

    Example: bulkmail preview campaigns/june.yaml --limit 20
    """
    with user_errors(), _Progress("writing previews") as progress:
        report = preview_campaign(campaign, out=out_dir, limit=limit, on_event=progress)
    _show(report, "Dry run: nothing was sent", as_json, out=str(report.out))
    if not as_json:
        out.print(f"previews: {escape(display_path(report.out / 'index.html'))}")


@app.command()
def run(
    campaign: CampaignArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write previews instead of sending.")
    ] = False,
    out_dir: OutOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send the campaign (or, with --dry-run, write previews).

    Example: bulkmail run campaigns/june.yaml --dry-run
    """
    if dry_run:
        preview(campaign, out_dir=out_dir, limit=limit, as_json=as_json)
        return
    err.print("[red]error[/]: sending is not available yet; use --dry-run")
    raise typer.Exit(2)


def main() -> None:
    """Entry point of the ``bulkmail`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
