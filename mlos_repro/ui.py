"""User-facing output: progress and tables on stderr through rich, machine output on stdout."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlos_repro.inspect.members import printable as shown

if TYPE_CHECKING:
    from rich.console import Console

    from mlos_repro.executor import Event, StagePlan
    from mlos_repro.rebuild.variations import Plan
    from mlos_repro.rebuild.varied import VerifyResult



@functools.cache
def _err() -> Console:
    """The stderr console, made on first use: rich is imported only by commands that print
    through it (a quick `verify-iso` should not pay for it)."""
    from rich.console import Console

    if settings.color is False:
        return Console(stderr=True, highlight=False, no_color=True)
    return Console(stderr=True, highlight=False, force_terminal=settings.color or None)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)

_STYLE = {"cached": "dim", "running": "yellow", "varied": "magenta", "assembling": "cyan", "done": "green"}
LOG_LINES = 8  # lines of a running stage's log shown live with -v


@dataclass
class Settings:
    """How output is shown: set once from the global options."""

    verbose: int = 0
    quiet: bool = False
    color: bool | None = None  # None: rich decides (a terminal, NO_COLOR honoured)


settings = Settings()


def configure(verbose: int, quiet: bool, color: bool | None) -> None:
    settings.verbose, settings.quiet, settings.color = verbose, quiet, color
    _err.cache_clear()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class _Progress:
    """Build progress on stderr: on a terminal a live line per running stage (elapsed time,
    the last run's time, with -v the tail of its log); elsewhere one line per event."""

    def __init__(self) -> None:
        self._live: Any = None
        self._current: Event | None = None
        self._started = 0.0
        self._log: Path | None = None

    def __call__(self, event: Event) -> None:
        if settings.quiet:
            return
        if event.state == "log":
            self._log = event.log
            return
        self._stop()
        style = _STYLE.get(event.state, "")
        line = f"[{style}]{event.state:>10}[/{style}]  {escape(shown(event.name))}"
        if event.state == "done":
            _err().print(f"{line} {event.seconds:6.1f}s")
            return
        if event.state == "cached":
            _err().print(line)
            return
        if event.estimate is not None:
            line += f"  [dim](last time {_clock(event.estimate)})[/dim]"
        if not _err().is_terminal:
            _err().print(line)
            return
        from rich.live import Live

        self._current, self._started, self._log = event, time.monotonic(), None
        self._live = Live(get_renderable=lambda: self._render(line), console=_err(), transient=True,
                          refresh_per_second=2)
        self._live.start()

    def _render(self, line: str) -> Any:
        from rich.text import Text

        elapsed = time.monotonic() - self._started
        text = Text.from_markup(f"{line}  {_clock(elapsed)}")
        if settings.verbose and self._log is not None:
            for entry in _tail(self._log, LOG_LINES):
                text.append("\n  | " + shown(entry), style="dim")
        return text

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        self._stop()


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            data = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]


progress = _Progress()


class FetchBar:
    """fetch's progress: files and bytes with a bar on a terminal; elsewhere a line at the start
    and, with -v, one per file."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._files = -1

    def __call__(self, files: int, of_files: int, done: int, of_bytes: int) -> None:
        if settings.quiet:
            return
        if self._files < 0:
            amount = f", {size(of_bytes)}" if of_bytes else ""
            _err().print(f"downloading {count(of_files, 'file')}{amount}")
            if _err().is_terminal:
                from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

                self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                     DownloadColumn(), TimeRemainingColumn(), console=_err(), transient=True)
                self._task = self._bar.add_task("", total=of_bytes or None)
                self._bar.start()
            self._files = 0
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=f"{files}/{of_files} files")
        elif files != self._files and settings.verbose:
            _err().print(f"  {files}/{of_files} files, {size(done)}")
        self._files = files

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def size(n: int) -> str:
    """Bytes as a person reads them: 0 B, 12.3 MB."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with control characters shown as \\xNN (with newlines=True, line breaks are kept)."""
    if not newlines:
        return shown(text)
    return "\n".join(shown(line) for line in text.split("\n"))


def error(message: str, hint: str | None) -> None:
    progress.close()
    _err().print(f"[bold red]error:[/bold red] {escape(printable(message, newlines=True))}", soft_wrap=True)
    if hint:
        _err().print(f"[cyan]hint:[/cyan] {escape(printable(hint, newlines=True))}", soft_wrap=True)


def warn(message: str) -> None:
    shown = escape(printable(message, newlines=True))
    _err().print(f"[bold yellow]warning:[/bold yellow] {shown}", soft_wrap=True)


def info(message: str) -> None:
    if settings.quiet:
        return
    _err().print(escape(printable(message, newlines=True)), soft_wrap=True)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 stage', '2 stages'."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def variations(plan: Plan) -> None:
    from mlos_repro.rebuild.variations import describe

    _err().print(f"[bold]second build varies:[/bold] {escape(', '.join(plan.applied) or 'nothing')}")
    for name in plan.applied:
        _err().print(f"  [magenta]{name}[/magenta]: {escape(describe(name))}")
    for name, reason in plan.skipped:
        _err().print(f"  [yellow]skipped {name}[/yellow]: {escape(reason)}")
    if plan.disabled:
        _err().print(f"  [dim]turned off: {escape(', '.join(plan.disabled))}[/dim]")


def verdicts(result: VerifyResult) -> None:
    from rich.table import Table

    table = Table(title="bit-for-bit verdicts")
    table.add_column("stage")
    table.add_column("output")
    table.add_column("verdict")
    table.add_column("first difference, likely cause, report")
    colour = {"identical": "green", "differs": "red", "failed": "red"}
    failed: dict[str, str] = {}
    for o in result.outputs:
        detail = ""
        if o.differences:
            d = o.differences[0]
            more = f" (+{len(o.differences) - 1} more)" if len(o.differences) > 1 else ""
            names = sorted({s.variation for likely in o.likely for s in likely})
            detail = f"{d.where}: {d.aspect}{more}"
            if names:
                detail += f"\nlikely: {', '.join(names)}"
            elif o.alone is not None:
                detail += f"\ndiffers under {', '.join(o.alone) or 'no variation'} alone (--bisect)"
            else:
                detail += "\nno variation's trace in it (--bisect tries them one at a time)"
            detail += f"\n{o.report_txt}"
        elif o.error:
            failed.setdefault(o.stage, o.error)
            detail = "the varied build of the stage failed (below)"
        table.add_row(escape(o.stage), escape(o.output), f"[{colour[o.verdict]}]{o.verdict}[/]",
                      escape(printable(detail, newlines=True)))
    _err().print(table)
    for stage, error in failed.items():
        varied = ", ".join(result.plan.applied) or "none"
        _err().print(f"[red]{escape(stage)}[/red] failed only in the second build, which varied: "
                     f"{escape(varied)}", soft_wrap=True)
        if "locales" in result.plan.applied:
            _err().print("  (its messages are in et_EE.UTF-8: the locales variation)")
        _err().print(escape(printable(error, newlines=True)), soft_wrap=True)
    ok = result.reproducible
    _err().print("[green]reproducible[/green]" if ok else "[red]NOT reproducible[/red]")


def plan(plans: list[StagePlan]) -> None:
    from rich.table import Table

    table = Table(title="what a build would do")
    table.add_column("stage")
    table.add_column("")
    table.add_column("last time")
    table.add_column("why it runs")
    colour = {"cached": "dim", "runs": "yellow", "blocked": "red"}
    for p in plans:
        table.add_row(escape(p.name), f"[{colour[p.status]}]{p.status}[/]",
                      _clock(p.estimate) if p.estimate is not None else "",
                      escape(printable("\n".join(p.why), newlines=True)))
    _err().print(table)
    runs = [p for p in plans if p.status != "cached"]
    guess = sum(p.estimate or 0 for p in runs)
    _err().print(f"{count(len(runs), 'stage')} to run, {len(plans) - len(runs)} cached"
                 + (f"; about {_clock(guess)} by the last builds' times" if guess else ""))


def explain(facts: dict[str, Any]) -> None:
    lines = [f"[bold]{escape(facts['stage'])}[/bold]  ({escape(facts['recipe'])})",
             f"  environment  {escape(facts['environment'])}"
             + ("  (privileged)" if facts["privileged"] else ""),
             f"  needs        {escape(', '.join(facts['needs']) or 'no other stage')}",
             "  inputs"]
    lines += [f"    {escape(n)} = {escape(spec)}" for n, spec in facts["inputs"].items()] or ["    (none)"]
    lines.append(f"  outputs      {escape(', '.join(facts['outputs']))}")
    lines.append("  run")
    lines += [f"    {escape(printable(' '.join(c)))}" for c in facts["run"]]
    lines.append(f"  cache key    {facts['key'] or '(not known until the stages it needs are built)'}")
    lines.append(f"  a build      {facts['status']}")
    lines += [f"    because {escape(printable(w, newlines=True))}" for w in facts["why"]]
    if facts["estimate_seconds"] is not None:
        lines.append(f"  last time    {_clock(facts['estimate_seconds'])}")
    if facts["log"]:
        lines.append(f"  its log      {escape(facts['log'])}")
    for line in lines:
        _err().print(line, soft_wrap=True)
