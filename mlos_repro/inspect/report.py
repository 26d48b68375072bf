"""Diff reports: our layered summary first, then diffoscope on the differing leaves only."""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlos_repro import run
from mlos_repro.fsutil import atomic_write
from mlos_repro.inspect.layers import Difference
from mlos_repro.inspect.members import printable


@dataclass(frozen=True, slots=True)
class DiffoscopeSettings:
    timeout: float = 300.0  # seconds for one diffoscope run
    max_size: int = 256 << 20  # leaves larger than this are not handed to diffoscope


def summary(label: str, diffs: list[Difference]) -> str:
    lines = [f"{label}: {len(diffs)} difference(s) found by the layered comparison"]
    for d in diffs:
        change = f"{d.first} -> {d.second}" if d.second else d.first
        lines.append(printable(f"  {d.where}: {d.aspect}: {change}"))
        if d.opaque:
            lines.append("    (not a format the layered comparison understands: "
                         "diffoscope compares the whole file)")
    return "\n".join(lines) + "\n"


def write(label: str, diffs: list[Difference], dest: Path, work: Path,
          settings: DiffoscopeSettings) -> tuple[Path, Path]:
    """Write dest.txt and dest.html; returns both paths."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    text_path, html_path = dest.with_name(dest.name + ".txt"), dest.with_name(dest.name + ".html")
    ours = summary(label, diffs)
    notes, pair = _leaves(diffs, work, settings)
    d_text, d_html = "", ""
    if pair is not None:
        d_text, d_html, note = _diffoscope(pair, work, settings)
        if note:
            notes.append(note)
    text = ours + "".join(f"note: {n}\n" for n in notes)
    if d_text:
        text += "\n# diffoscope on the differing members\n" + d_text
    atomic_write(text_path, text)
    body = d_html or f"<pre>{html.escape(text)}</pre>"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(label)}</title>"
            f"</head><body><h1>{html.escape(label)}</h1><pre>{html.escape(ours)}</pre>"
            + "".join(f"<p>note: {html.escape(n)}</p>" for n in notes) + body + "</body></html>")
    if d_html:
        page = d_html.replace("<body>", f"<body><pre>{html.escape(ours)}</pre>", 1)
    atomic_write(html_path, page)
    return text_path, html_path


def _leaves(diffs: list[Difference], work: Path, settings: DiffoscopeSettings
            ) -> tuple[list[str], tuple[Path, Path] | None]:
    """Lay the differing leaves out as two directories (first/, second/) for diffoscope."""
    notes: list[str] = []
    leaves = [d for d in diffs if d.aspect == "content" and d.sides is not None]
    if not leaves:
        return notes, None
    root = work / "diffoscope"
    first, second = root / "first", root / "second"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    for i, d in enumerate(leaves):
        assert d.sides is not None
        fa, fb = d.sides[0].file(), d.sides[1].file()
        if fa is None or fb is None:
            notes.append(f"{d.where}: its bytes could not be extracted; only digests are reported")
            continue
        size = max(fa.stat().st_size, fb.stat().st_size)
        if size > settings.max_size:
            notes.append(f"{d.where} is {size} bytes, over the diffoscope size cap "
                         f"({settings.max_size}); only its digests are reported")
            continue
        name = f"{i:03d}-" + "__".join(p.replace("/", "_") for p in d.path[-2:])
        _link_or_copy(fa, first / name)
        _link_or_copy(fb, second / name)
    if not any(first.iterdir()):
        return notes, None
    return notes, (first, second)


def _diffoscope(pair: tuple[Path, Path], work: Path, settings: DiffoscopeSettings
                ) -> tuple[str, str, str]:
    if shutil.which("diffoscope") is None:
        return "", "", "diffoscope is not installed (apt-get install diffoscope-minimal)"
    first, second = pair
    if len(list(first.iterdir())) == 1:  # one leaf: compare the files, not two folders of one
        first, second = next(first.iterdir()), next(second.iterdir())
    text, page = work / "diffoscope.txt", work / "diffoscope.html"
    argv = ["diffoscope", "--no-progress", "--exclude-directory-metadata=yes",
            "--text", str(text), "--html", str(page), str(first), str(second)]
    try:
        proc = run.run(argv, env=run.host_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       check=False, timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        return "", "", f"diffoscope did not finish within {settings.timeout:.0f} s; raise the timeout"
    if proc.returncode not in (0, 1):
        return "", "", f"diffoscope failed (exit {proc.returncode}): " \
                       f"{proc.stderr.decode(errors='replace').strip()[-500:]}"
    return (text.read_text(errors="replace") if text.exists() else "",
            page.read_text(errors="replace") if page.exists() else "", "")


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)

