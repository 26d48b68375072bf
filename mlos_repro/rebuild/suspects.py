"""Which variation of `build --verify` a difference most likely comes from, and what to do.

The second build's varied values are known (its hostname, build path, HOME, clock, umask, …),
so a difference names a variation when that variation's trace is in it: a varied string found in
the second build's member and not in the first's, a mode that differs by the group-write bit
(umask), owners that differ (uid/gid), a later mtime (the clock), a different order (file
ordering). What no trace explains is left unexplained (`build --verify --bisect` varies one
variation at a time to find it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlos_repro.inspect.layers import Difference

READ_LIMIT = 64 << 20  # bytes of a member searched for varied strings


@dataclass(frozen=True, slots=True)
class Suspect:
    variation: str
    evidence: str  # what was found, e.g. "'mlos-varied-host' in the second build"
    hint: str  # the usual fix

    def to_json(self) -> dict[str, str]:
        return {"variation": self.variation, "evidence": self.evidence, "hint": self.hint}


# variation -> (a trace in the second build's bytes, how to fix the build)
TRACES: dict[str, tuple[bytes | re.Pattern[bytes], str]] = {
    "hostname": (b"mlos-varied-host", "the build records the host's name (hostname, uname -n): leave it out"),
    "domain_host": (b"mlos-varied.example", "the build records the domain name: leave it out"),
    "build_path": (b"/build/mlos-varied/build-path",
                   "the build records its working directory: use relative paths, or "
                   "-ffile-prefix-map=$PWD=. for compilers"),
    "home": (b"/nonexistent/mlos-varied-home", "the build records $HOME: do not read or embed it"),
    "exec_path": (b"/nonexistent/mlos-varied/bin", "the build records $PATH: do not embed it"),
    "environment": (b"MLOS_VARIED_ENV", "the build records its whole environment: embed only what it needs"),
    "locales": (re.compile(rb"et_EE|[\xc3][\xa4\xb5\xb6\xbc]"),
                "the output depends on the locale (messages, sorting, number formats): set LC_ALL=C.UTF-8 "
                "where it matters, e.g. `LC_ALL=C sort`"),
    "timezone": (re.compile(rb"GMT-14|\+14:?00"),
                 "the output depends on the time zone: format times in UTC (TZ=UTC, date -u)"),
    "kernel": (re.compile(rb"\b2\.6\.\d+"),
               "the build records the running kernel's version (uname -r): leave it out"),
}

HINTS = {
    "umask": "file modes depend on the umask: set them explicitly (install -m, chmod), or run "
             "`umask 022` first",
    "user_group": "owners depend on who builds: store files as 0:0 (tar --owner=0 --group=0 --numeric-owner)",
    "time": "the build records the current time: use $SOURCE_DATE_EPOCH (tar --mtime, touch -d @…, "
            "clamped mtimes)",
    "fileordering": "the output follows directory order: sort what you read (tar --sort=name, sorted globs)",
}


def suspects(difference: Difference, applied: tuple[str, ...], source_date_epoch: int) -> list[Suspect]:
    """The applied variations whose trace is in `difference`."""
    found: list[Suspect] = []

    def add(name: str, evidence: str, hint: str) -> None:
        if name in applied and all(s.variation != name for s in found):
            found.append(Suspect(name, evidence, hint))

    aspect, first, second = difference.aspect, difference.first, difference.second
    if aspect == "mode" and _modes(first, second, lambda a, b: a ^ b == 0o020):
        add("umask", f"mode {first} -> {second}: only the group write bit differs", HINTS["umask"])
    elif aspect == "owner":
        add("user_group", f"owner {first} -> {second}", HINTS["user_group"])
    elif aspect == "mtime" and _later(first, second, source_date_epoch):
        add("time", f"mtime {first} -> {second}: later than SOURCE_DATE_EPOCH", HINTS["time"])
    elif aspect == "order":
        add("fileordering", "members in another order", HINTS["fileordering"])
    elif aspect in ("content", "target") and difference.sides is not None:
        texts = [_text(side.file()) for side in difference.sides] if aspect == "content" else \
            [first.encode(), second.encode()]
        for name, (trace, hint) in TRACES.items():
            hit = _only_second(trace, texts[0], texts[1])
            if hit is not None:
                add(name, f"{hit!r} in the second build only", hint)
        if texts[1] and _later_year(texts[0], texts[1], source_date_epoch):
            add("time", "a later year in the second build only", HINTS["time"])
    return found


def _modes(first: str, second: str, test: Callable[[int, int], bool]) -> bool:
    try:
        return test(int(first, 8), int(second, 8))
    except ValueError:
        return False


def _later(first: str, second: str, source_date_epoch: int) -> bool:
    try:
        return int(second) > int(first) and int(second) > source_date_epoch + 86400
    except ValueError:
        return False


def _text(path: Path | None) -> bytes:
    if path is None:
        return b""
    try:
        with path.open("rb") as f:
            return f.read(READ_LIMIT)
    except OSError:
        return b""


def _only_second(trace: bytes | re.Pattern[bytes], first: bytes, second: bytes) -> str | None:
    if isinstance(trace, bytes):
        return trace.decode() if trace in second and trace not in first else None
    theirs = {m.group(0) for m in trace.finditer(first)}
    for m in trace.finditer(second):
        if m.group(0) not in theirs:
            return m.group(0).decode(errors="replace")
    return None


_YEAR = re.compile(rb"\b(20[0-9]{2})\b")


def _later_year(first: bytes, second: bytes, source_date_epoch: int) -> bool:
    """A year after SOURCE_DATE_EPOCH's that only the second build has (the clock ran ahead)."""
    import time

    floor = time.gmtime(source_date_epoch).tm_year
    theirs = {int(y) for y in _YEAR.findall(first)}
    return any(int(y) > floor and int(y) not in theirs for y in _YEAR.findall(second))
