"""Diff reports: our layered summary first, then diffoscope on the differing leaves only."""

from __future__ import annotations

import datetime
import html
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
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


def shown(aspect: str, value: str) -> str:
    """A value as a person reads it: modes as rwxr-xr-x, times as dates (the raw value beside)."""
    try:
        if aspect == "mode" and value:
            return f"{stat.filemode(stat.S_IFREG | int(value, 8))[1:]} ({value})"
        if aspect == "mtime" and value:
            when = datetime.datetime.fromtimestamp(int(value), datetime.UTC)
            return f"{when:%Y-%m-%d %H:%M:%S} UTC ({value})"
    except (ValueError, OverflowError, OSError):
        pass
    return value


def summary(label: str, diffs: list[Difference], likely: Sequence[str] = ()) -> str:
    """Every difference on a line (and, under it, its likely cause when one is known)."""
    lines = [f"{label}: {len(diffs)} difference(s) found by the layered comparison"]
    for i, d in enumerate(diffs):
        change = f"{shown(d.aspect, d.first)} -> {shown(d.aspect, d.second)}" if d.second else d.first
        lines.append(printable(f"  {d.where}: {d.aspect}: {change}"))
        if i < len(likely) and likely[i]:
            lines.append(printable(f"    likely: {likely[i]}"))
        if d.opaque:
            lines.append("    (not a format the layered comparison understands: "
                         "diffoscope compares the whole file)")
    return "\n".join(lines) + "\n"


def write(label: str, diffs: list[Difference], dest: Path, work: Path,
          settings: DiffoscopeSettings, likely: Sequence[str] = (),
          fixes: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write dest.txt and dest.html; returns both paths. Both open with our summary (every
    difference: member, aspect, both values), then diffoscope on the differing members, its
    temporary paths replaced by the members' paths."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    text_path, html_path = dest.with_name(dest.name + ".txt"), dest.with_name(dest.name + ".html")
    ours = summary(label, diffs, likely)
    notes, leaves = _leaves(diffs, work, settings)
    d_text, d_html = "", ""
    if leaves is not None:
        d_text, d_html, note = _diffoscope(leaves, work, settings)
        if note:
            notes.append(note)
        d_text, d_html = leaves.named(d_text, escape=False), leaves.named(d_html, escape=True)
    text = ours + "".join(f"note: {n}\n" for n in notes)
    if fixes:
        text += "what to do:\n" + "".join(printable(f"  {f}") + "\n" for f in fixes)
    if d_text:
        text += "\n# diffoscope on the differing members\n" + d_text
    atomic_write(text_path, text)
    atomic_write(html_path, _page(label, diffs, notes, d_html, likely, fixes))
    return text_path, html_path


_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eee}code{font-family:monospace}td code{white-space:nowrap}
.v code{white-space:normal;word-break:break-all}.differs{color:#a00}
.identical{color:#070}.failed{color:#a50}"""


def _page(label: str, diffs: list[Difference], notes: list[str], d_html: str, likely: Sequence[str],
          fixes: Sequence[str]) -> str:
    esc = html.escape
    causes = [*likely, *([""] * (len(diffs) - len(likely)))]
    rows = "".join(
        f"<tr><td><code>{esc(printable(d.where))}</code></td><td>{esc(d.aspect)}</td>"
        f"<td{_digest(d.first)}><code>{esc(printable(shown(d.aspect, d.first)))}</code></td>"
        f"<td{_digest(d.second)}><code>{esc(printable(shown(d.aspect, d.second)))}</code></td>"
        f"<td>{esc(printable(cause))}</td></tr>" for d, cause in zip(diffs, causes, strict=False))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(label)}</title>",
             f"<style>{_STYLE}</style>"]
    styles, body = _diffoscope_parts(d_html)
    parts += [*styles, f"</head><body><h1>{esc(label)}</h1>",
              f"<p>{len(diffs)} difference(s) found by the layered comparison:</p>",
              "<table><tr><th>member</th><th>what differs</th><th>first build</th>"
              f"<th>second build</th><th>likely cause</th></tr>{rows}</table>",
              *(f"<p>note: {esc(n)}</p>" for n in notes)]
    if fixes:
        parts += ["<h2>what to do</h2><ul>", *(f"<li>{esc(printable(f))}</li>" for f in fixes), "</ul>"]
    if body:
        parts += ["<h2>diffoscope on the differing members</h2>", f"<div class='diffoscope'>{body}</div>"]
    parts.append("</body></html>\n")
    return "".join(parts)


def _digest(value: str) -> str:
    """A digest may break anywhere (it has no spaces); other values break between words."""
    return " class='v'" if value.startswith("sha256:") else ""


def _diffoscope_parts(page: str) -> tuple[list[str], str]:
    """diffoscope's HTML page as its style blocks and the inside of its body (it writes
    `<body class="diffoscope">`), to be set in ours."""
    if not page:
        return [], ""
    styles = re.findall(r"<style[^>]*>.*?</style>", page, flags=re.S | re.I)
    body = re.search(r"<body[^>]*>(.*)</body>", page, flags=re.S | re.I)
    return styles, body.group(1) if body else ""


def index(reports: Path, verdicts: list[tuple[str, str, Path | None, str]]) -> Path:
    """reports/index.html: every verdict (label, verdict, its report's HTML or None, a note),
    each differing output linked to its report."""
    reports.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    rows = []
    for label, verdict, page, note in verdicts:
        link = (f"<a href='{esc(os.path.relpath(page, reports))}'>report</a>" if page else "")
        rows.append(f"<tr><td><code>{esc(label)}</code></td><td class='{esc(verdict)}'>{esc(verdict)}</td>"
                    f"<td>{link}</td><td>{esc(note)}</td></tr>")
    counts = ", ".join(f"{sum(1 for v in verdicts if v[1] == k)} {k}"
                       for k in sorted({v[1] for v in verdicts}))
    text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>verdicts</title>"
            f"<style>{_STYLE}</style></head><body><h1>{len(verdicts)} output(s): {esc(counts)}</h1>"
            "<table><tr><th>output</th><th>verdict</th><th>report</th><th>note</th></tr>"
            + "".join(rows) + "</table></body></html>\n")
    atomic_write(reports / "index.html", text)
    return reports / "index.html"


@dataclass(frozen=True, slots=True)
class Leaves:
    """The differing members laid out for diffoscope: first/NAME and second/NAME, and the
    member path each NAME stands for."""

    first: Path
    second: Path
    members: dict[str, str]  # NAME -> the member's path (a → b → c)

    def named(self, text: str, *, escape: bool) -> str:
        """diffoscope's output with our temporary names replaced by the members' paths."""
        def q(value: str) -> str:
            return html.escape(value, quote=False) if escape else value

        for side, root in (("first build", self.first), ("second build", self.second)):
            for name, member in self.members.items():
                text = text.replace(q(str(root / name)), q(f"{member} ({side})"))
            text = text.replace(q(str(root)), q(side))
        for name, member in self.members.items():
            text = text.replace(q(name), q(member))
        return text


def _leaves(diffs: list[Difference], work: Path, settings: DiffoscopeSettings
            ) -> tuple[list[str], Leaves | None]:
    """Lay the differing leaves out as two directories (first/, second/) for diffoscope."""
    notes: list[str] = []
    leaves = [d for d in diffs if d.aspect == "content" and d.sides is not None]
    if not leaves:
        return notes, None
    root = work / "diffoscope"
    first, second = root / "first", root / "second"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    members: dict[str, str] = {}
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
        members[name] = printable(d.where)
    if not members:
        return notes, None
    return notes, Leaves(first, second, members)


def _diffoscope(leaves: Leaves, work: Path, settings: DiffoscopeSettings
                ) -> tuple[str, str, str]:
    if shutil.which("diffoscope") is None:
        return "", "", "diffoscope is not installed (apt-get install diffoscope-minimal)"
    first, second = leaves.first, leaves.second
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

