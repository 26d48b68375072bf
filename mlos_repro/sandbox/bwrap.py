"""bubblewrap: the default sandbox. The policy is the argv built here, nothing else.

The sandbox root is a fresh tmpfs; the environment's top-level directories are bound into
it read-only, so /in, /out and /build can be created without touching the environment,
and the root is remounted read-only last.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mlos_repro.sandbox import LAUNCH_ENV, SandboxSpec

# Capabilities over the host that a privileged stage's user namespace could not use anyway
# (the kernel checks them against the host's namespace), dropped so that they are not even held.
HOST_CAPS = ("CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_MKNOD",
             "CAP_SYSLOG", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_BPF", "CAP_PERFMON")

# Provided fresh by bwrap, never taken from the environment.
SKIP_TOP = frozenset({"dev", "proc", "sys", "tmp", "run", "in", "out", "build"})


class Bwrap:
    name = "bwrap"

    def prepare(self, spec: SandboxSpec) -> None:
        return None

    def launch_env(self) -> dict[str, str]:
        return dict(LAUNCH_ENV)

    def argv(self, spec: SandboxSpec, command: Sequence[str]) -> list[str]:
        return bwrap_argv(spec, command)


def root_binds(root: Path) -> list[str]:
    """Bind every top-level entry of the environment root read-only; keep symlinks (usrmerge)."""
    args: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in SKIP_TOP:
            continue
        if entry.is_symlink():
            args += ["--symlink", os.readlink(entry.path), f"/{entry.name}"]
        elif entry.is_dir():
            args += ["--ro-bind", entry.path, f"/{entry.name}"]
    return args


def bwrap_argv(spec: SandboxSpec, command: Sequence[str]) -> list[str]:
    launcher: list[str] = []
    if spec.privileged:
        # Root of a user namespace that maps host IDs 0-65535 onto themselves (idmap.py): real
        # ownership and mounts inside, every capability over the sandbox's own namespaces,
        # none over the host's (no device nodes, no devtmpfs, no modules, clock or raw I/O).
        # Without network and in its own mount, pid, ipc, uts and cgroup namespaces.
        launcher = [sys.executable, "-m", "mlos_repro.sandbox.idmap"]
        identity = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                    "--unshare-cgroup-try", "--cap-add", "ALL",
                    *(arg for cap in HOST_CAPS for arg in ("--cap-drop", cap))]
    else:
        # Root inside a user namespace: capabilities over the sandbox's own namespaces only,
        # never over the host's devices or files (bwrap run as root would otherwise keep them).
        identity = ["--unshare-all",  # no network, own pid/ipc/uts/cgroup namespaces
                    "--unshare-user", "--uid", str(spec.uid), "--gid", str(spec.gid)]
    args = [
        *spec.host_wrapper,
        *launcher,
        "bwrap",
        *identity,
        "--die-with-parent",
        "--new-session",
        "--hostname", spec.hostname,
        "--clearenv",
        *root_binds(spec.root),
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--tmpfs", "/run",
        "--dir", "/sys",  # present but empty: the host's devices are none of a stage's business
        "--dir", "/in",
    ]
    for name in sorted(spec.inputs):
        args += ["--ro-bind", str(spec.inputs[name]), f"/in/{name}"]
    for target in sorted(spec.extra_ro):
        args += ["--ro-bind", str(spec.extra_ro[target]), target]
    # /build is writable whatever the working directory below it (a varied build's differs).
    args += ["--bind", str(spec.out), "/out", "--bind", str(spec.build), "/build",
             "--chdir", spec.workdir]
    for key in sorted(spec.env):
        args += ["--setenv", key, spec.env[key]]
    args += ["--remount-ro", "/", "--", *spec.wrapper, *command]
    return args
