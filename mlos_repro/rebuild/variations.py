"""How the second build of `build --verify` differs from the first.

Modelled on reprotest: the build is described by an immutable BuildVariant; each variation
is a small pure function from one BuildVariant to another. The first build runs with the
contract's environment (CONTROL); the second applies every enabled variation, in the order
of VARIATIONS. The order matters only where variations interact: environment variables
first, then the file system the stage sees, then the identity it runs as, then wrappers
around its command (personality, ASLR, domain name), then properties of the host process
(CPU affinity, umask). SOURCE_DATE_EPOCH is an input of the build, never a variation.

A variation that this host cannot apply is reported as skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mlos_repro.errors import BadInputError
from mlos_repro.sandbox.variant import FAKETIME_LIB, BuildVariant

CONTROL = BuildVariant()


@dataclass(frozen=True, slots=True)
class Host:
    """What the host and builder environment offer, for deciding what can be varied."""

    env_root: Path
    cpus: int
    backend: str

    @classmethod
    def probe(cls, env_root: Path, backend: str) -> Host:
        return cls(env_root=env_root, cpus=len(os.sched_getaffinity(0)), backend=backend)


Apply = Callable[[BuildVariant], BuildVariant]
Check = Callable[[Host], str | None]  # None when applicable, else why not


def _always(host: Host) -> str | None:
    return None


def _bwrap_only(host: Host) -> str | None:
    return None if host.backend == "bwrap" else f"not supported by the {host.backend} sandbox"


def _faketime(host: Host) -> str | None:
    if not (host.env_root / FAKETIME_LIB).exists():
        return "libfaketime is not in the builder environment (add 'faketime' to its packages)"
    return None


def _locale(host: Host) -> str | None:
    if not (host.env_root / "usr/lib/locale/et_EE.utf8").is_dir():
        return "locale et_EE.UTF-8 is not in the builder environment (add it to its locales)"
    return None


def _fileordering(host: Host) -> str | None:
    if shutil.which("disorderfs") is None:
        return "disorderfs is not installed (apt-get install disorderfs)"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "FUSE is not available on this host (/dev/fuse, fusermount3)"
    return _bwrap_only(host)


def _cpus(host: Host) -> str | None:
    if host.cpus < 2:
        return "the host has a single CPU: there is no other count to vary to"
    return _bwrap_only(host)


def _tz(host: Host) -> str | None:
    if not (host.env_root / "usr/share/zoneinfo/Etc/GMT-14").exists():
        return "tzdata is not in the builder environment"
    return None


@dataclass(frozen=True, slots=True)
class Variation:
    name: str
    what: str
    apply: Apply
    check: Check = _always


VARIATIONS: tuple[Variation, ...] = (
    # Environment variables.
    Variation("environment", "an extra variable MLOS_VARIED_ENV=1",
              lambda v: replace(v, extra_env=(*v.extra_env, ("MLOS_VARIED_ENV", "1")))),
    Variation("exec_path", "PATH gains a trailing /nonexistent/mlos-varied/bin",
              lambda v: replace(v, path_suffix=":/nonexistent/mlos-varied/bin")),
    Variation("home", "HOME=/nonexistent/mlos-varied-home",
              lambda v: replace(v, home="/nonexistent/mlos-varied-home")),
    Variation("locales", "LANG=LC_ALL=et_EE.UTF-8", lambda v: replace(v, locale="et_EE.UTF-8"), _locale),
    Variation("timezone", "TZ=Etc/GMT-14 (UTC+14)", lambda v: replace(v, tz="Etc/GMT-14"), _tz),
    Variation("time", "the clock 398 days ahead (libfaketime)",
              lambda v: replace(v, faketime="+398d"), _faketime),
    # The file system the stage sees.
    Variation("build_path", "working directory /build/mlos-varied/build-path instead of /build",
              lambda v: replace(v, workdir="/build/mlos-varied/build-path")),
    Variation("fileordering", "inputs seen through disorderfs, directory entries shuffled",
              lambda v: replace(v, fileordering=True), _fileordering),
    # Identity.
    Variation("user_group", "uid/gid 1000 instead of 0 (in the sandbox's user namespace)",
              lambda v: replace(v, uid=1000, gid=1000), _bwrap_only),
    Variation("hostname", "hostname mlos-varied-host", lambda v: replace(v, hostname="mlos-varied-host")),
    Variation("domain_host", "domain name mlos-varied.example",
              lambda v: replace(v, domainname="mlos-varied.example"), _bwrap_only),
    # Wrappers around the command.
    Variation("kernel", "kernel personality: setarch --uname-2.6",
              lambda v: replace(v, uname_26=True), _bwrap_only),
    Variation("aslr", "address space randomisation off (setarch -R)",
              lambda v: replace(v, aslr=False), _bwrap_only),
    # The host process.
    Variation("num_cpus", "CPU affinity restricted to 1 CPU (what nproc reports)",
              lambda v: replace(v, cpus=1), _cpus),
    Variation("umask", "umask 002 instead of 022", lambda v: replace(v, umask=0o002)),
)
NAMES = tuple(v.name for v in VARIATIONS)


def alone(name: str) -> BuildVariant:
    """The contract's build with the one variation `name` (for --bisect)."""
    return next(v for v in VARIATIONS if v.name == name).apply(CONTROL)


def parse_vary(spec: str | None) -> frozenset[str]:
    """reprotest's syntax: comma-separated, '-name' turns off, '+name' or 'name' on, 'all'."""
    enabled = set(NAMES)
    if not spec:
        return frozenset(enabled)
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        sign, name = ("-", item[1:]) if item[0] == "-" else ("+", item.lstrip("+"))
        names = set(NAMES) if name == "all" else {name}
        if not names <= set(NAMES):
            raise BadInputError(f"--vary: unknown variation {name!r}",
                                f"known variations: all, {', '.join(NAMES)}")
        if sign == "-":
            enabled -= names
        else:
            enabled |= names
    return frozenset(enabled)


@dataclass(frozen=True, slots=True)
class Plan:
    variant: BuildVariant
    applied: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (name, reason)
    disabled: tuple[str, ...]


def plan(enabled: frozenset[str], host: Host) -> Plan:
    variant = CONTROL
    applied: list[str] = []
    skipped: list[tuple[str, str]] = []
    for variation in VARIATIONS:
        if variation.name not in enabled:
            continue
        reason = variation.check(host)
        if reason is not None:
            skipped.append((variation.name, reason))
            continue
        variant = variation.apply(variant)
        applied.append(variation.name)
    disabled = tuple(n for n in NAMES if n not in enabled)
    return Plan(variant, tuple(applied), tuple(skipped), disabled)


def describe(name: str) -> str:
    return next(v.what for v in VARIATIONS if v.name == name)
