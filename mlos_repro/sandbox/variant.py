"""A stage run that differs from the contract's: the variant of `build --verify`'s second build.

A BuildVariant is an immutable description of everything a variation may change;
apply_variant turns it into the SandboxSpec the stage runs in (a pure function of both).
Which variations exist, and in what order they apply, is mlos_repro.rebuild.variations.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mlos_repro.sandbox import SandboxSpec

FAKETIME_LIB = "usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@dataclass(frozen=True, slots=True)
class BuildVariant:
    """Everything about a stage run that a variation may change (defaults: the contract)."""

    workdir: str = "/build"
    home: str = "/build"
    locale: str = "C.UTF-8"
    tz: str = "UTC"
    path_suffix: str = ""
    extra_env: tuple[tuple[str, str], ...] = ()
    faketime: str = ""  # libfaketime offset, e.g. "+398d"
    hostname: str = "mlos-build"
    domainname: str = ""  # "" leaves the kernel's "(none)"
    uid: int = 0
    gid: int = 0
    fileordering: bool = False  # inputs seen through disorderfs (shuffled directory entries)
    uname_26: bool = False  # setarch --uname-2.6
    aslr: bool = True
    cpus: int = 0  # 0: every CPU of the host; n: affinity restricted to n CPUs
    umask: int = 0o022

    def environment(self, base: dict[str, str], faketime_lib: str) -> dict[str, str]:
        """The stage environment with this variant's changes applied to the contract's."""
        env = dict(base)
        env["HOME"] = self.home
        env["LANG"] = env["LC_ALL"] = self.locale
        env["TZ"] = self.tz
        env["PATH"] = base["PATH"] + self.path_suffix
        if self.faketime:
            env["LD_PRELOAD"] = faketime_lib
            env["FAKETIME"] = self.faketime
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        env.update(self.extra_env)
        return env


def cpu_busy_times(stat: str) -> dict[int, int]:
    """CPU number -> ticks spent not idle, from /proc/stat's text."""
    busy = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields[:8]]
            busy[int(name[3:])] = sum(ticks) - sum(ticks[3:5])  # all but idle and iowait
    return busy


def least_busy(cpus: list[int], n: int, sample: float = 0.2,
               read: Callable[[], str] = lambda: Path("/proc/stat").read_text()) -> list[int]:
    """The n CPUs of `cpus` that worked least over `sample` seconds (lowest numbers on a tie):
    two varied builds at once, each restricted to one CPU, then run on different CPUs."""
    try:
        before = cpu_busy_times(read())
        time.sleep(sample)
        after = cpu_busy_times(read())
    except (OSError, ValueError):
        return cpus[:n]
    return sorted(sorted(cpus, key=lambda c: (after.get(c, 0) - before.get(c, 0), c))[:n])


def apply_variant(spec: SandboxSpec, variant: BuildVariant) -> SandboxSpec:
    """The sandbox a stage runs in under `variant`: a function of both, and of which CPUs are
    least busy when a CPU count is varied."""
    wrapper: list[str] = []
    if variant.domainname:
        # Set inside the sandbox's own UTS namespace while still root there.
        wrapper += ["sh", "-c", 'domainname "$0" && exec "$@"', variant.domainname]
    if (variant.uid, variant.gid) != (0, 0):
        # A nested user namespace maps the sandbox's root to this uid: the stage runs
        # unprivileged, and files it writes still belong to the caller on the host.
        wrapper += ["unshare", "--user", f"--map-user={variant.uid}", f"--map-group={variant.gid}", "--"]
    if variant.uname_26 or not variant.aslr:
        wrapper += ["setarch", platform.machine(),
                    *(["--uname-2.6"] if variant.uname_26 else []),
                    *(["--addr-no-randomize"] if not variant.aslr else []), "--"]
    host_wrapper: tuple[str, ...] = ()
    if variant.cpus:
        cpus = least_busy(sorted(os.sched_getaffinity(0)), variant.cpus)
        host_wrapper = ("taskset", "--cpu-list", ",".join(map(str, cpus)))
    return replace(
        spec,
        workdir=variant.workdir,
        hostname=variant.hostname,
        umask=variant.umask,
        env=variant.environment(dict(spec.env), "/" + FAKETIME_LIB),
        wrapper=(*spec.wrapper, *wrapper),
        host_wrapper=(*spec.host_wrapper, *host_wrapper),
    )
