"""User-facing output: progress and tables on stderr through rich, machine output on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False)

_STYLE = {"cached": "dim", "running": "yellow", "done": "green"}


def progress(stage: str, state: str, seconds: float) -> None:
    style = _STYLE.get(state, "")
    timing = f" {seconds:6.1f}s" if state == "done" else ""
    err.print(f"[{style}]{state:>8}[/{style}]  {stage}{timing}")


def error(message: str, hint: str | None) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    if hint:
        err.print(f"[cyan]hint:[/cyan] {escape(hint)}", soft_wrap=True)


def info(message: str) -> None:
    err.print(escape(message), soft_wrap=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
