"""User-facing output: progress and tables on stderr through rich, machine output on stdout."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any

from mlos_repro.inspect.members import printable as shown

if TYPE_CHECKING:
    from rich.console import Console

    from mlos_repro.rebuild.variations import Plan
    from mlos_repro.rebuild.varied import VerifyResult



@functools.cache
def _err() -> Console:
    """The stderr console, made on first use: rich is imported only by commands that print
    through it (a quick `verify-iso` should not pay for it)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)

_STYLE = {"cached": "dim", "running": "yellow", "varied": "magenta", "done": "green"}


def progress(stage: str, state: str, seconds: float) -> None:
    style = _STYLE.get(state, "")
    timing = f" {seconds:6.1f}s" if state == "done" else ""
    _err().print(f"[{style}]{state:>8}[/{style}]  {stage}{timing}")


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with control characters shown as \\xNN (with newlines=True, line breaks are kept)."""
    if not newlines:
        return shown(text)
    return "\n".join(shown(line) for line in text.split("\n"))


def error(message: str, hint: str | None) -> None:
    _err().print(f"[bold red]error:[/bold red] {escape(printable(message, newlines=True))}", soft_wrap=True)
    if hint:
        _err().print(f"[cyan]hint:[/cyan] {escape(printable(hint, newlines=True))}", soft_wrap=True)


def warn(message: str) -> None:
    shown = escape(printable(message, newlines=True))
    _err().print(f"[bold yellow]warning:[/bold yellow] {shown}", soft_wrap=True)


def info(message: str) -> None:
    _err().print(escape(printable(message, newlines=True)), soft_wrap=True)


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
    table.add_column("first difference / report")
    colour = {"identical": "green", "differs": "red", "failed": "red"}
    for o in result.outputs:
        detail = ""
        if o.differences:
            d = o.differences[0]
            more = f" (+{len(o.differences) - 1} more)" if len(o.differences) > 1 else ""
            detail = f"{d.where}: {d.aspect}{more}\n{o.report_txt}"
        elif o.error:
            detail = o.error.splitlines()[0]
        table.add_row(escape(o.stage), escape(o.output), f"[{colour[o.verdict]}]{o.verdict}[/]",
                      escape(detail))
    _err().print(table)
    ok = result.reproducible
    _err().print("[green]reproducible[/green]" if ok else "[red]NOT reproducible[/red]")
