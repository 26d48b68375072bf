"""podman: an optional sandbox running the same environment imported as an image.

It must give the same outputs as bubblewrap, so it reproduces the bwrap policy: read-only
root, inputs read-only at /in/NAME, writable /out and /build, no network, the fixed hostname
and exactly the contract's environment (podman adds HOSTNAME even with --unsetenv-all, so
the command is started through `env -i`). What still differs, and no stage should depend
on: the entries of /dev (podman adds mqueue and core), the cgroup mounts under /sys/fs
and the mode and link count of / itself.

Hosts without CAP_SYS_RESOURCE (ours) cannot raise rlimits: runc refuses podman's default
nproc/nofile limits, so both are set explicitly, and crun fails there, so runc is used.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from mlos_repro import run
from mlos_repro.errors import StageFailedError
from mlos_repro.sandbox import LAUNCH_ENV, SandboxSpec
from mlos_repro.sandbox.bwrap import HOST_CAPS

IMAGE = "localhost/mlos-repro-env"
RUNTIME_OPTS = ("--runtime", "runc")
# A privileged stage, as under bwrap (bwrap.py, idmap.py): root of a user namespace mapping IDs
# 0-65535 onto themselves, every capability over its own namespaces and none over the host's,
# podman's own minimal /dev (not --privileged, which would show every host device).
PRIVILEGED = ("--uidmap", "0:0:65536", "--gidmap", "0:0:65536", "--cap-add", "ALL",
              "--cap-drop", ",".join(HOST_CAPS), "--security-opt", "seccomp=unconfined",
              "--security-opt", "apparmor=unconfined", "--security-opt", "label=disable")
PODMAN_HOST_VARS = ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "CONTAINERS_CONF",
                    "CONTAINERS_STORAGE_CONF")
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


class Podman:
    name = "podman"

    def prepare(self, spec: SandboxSpec) -> None:
        """Import the environment tarball once; the tag is the environment's digest."""
        image = image_name(spec)
        exists = run.run(["podman", *RUNTIME_OPTS, "image", "exists", image], check=False,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if exists.returncode == 0:
            return
        run.run_or_raise(["podman", *RUNTIME_OPTS, "import", "--quiet", str(spec.env_tarball), image],
                         StageFailedError, f"podman could not import environment sha256:{spec.env_digest}",
                         hint="check `podman info`; on this host podman needs runc (apt-get install runc)",
                         stdout=subprocess.DEVNULL)

    def argv(self, spec: SandboxSpec, command: Sequence[str]) -> list[str]:
        return podman_argv(spec, command)

    def launch_env(self) -> dict[str, str]:
        """podman needs to find its own configuration and runtime directory; nothing else of
        the caller's (no proxies: the container has no network anyway)."""
        return {**LAUNCH_ENV, **{k: os.environ[k] for k in PODMAN_HOST_VARS if k in os.environ}}


def image_name(spec: SandboxSpec) -> str:
    return f"{IMAGE}:{spec.env_digest}"


def podman_argv(spec: SandboxSpec, command: Sequence[str]) -> list[str]:
    args = [
        *spec.host_wrapper,
        "podman", *RUNTIME_OPTS, "run", "--rm", "--quiet", "--pull=never",
        "--network=none", "--no-hosts", "--http-proxy=false",
        "--hostname", spec.hostname,
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--tmpfs", "/run",
        # As under bwrap: an empty read-only /in, no host /sys, the environment's own
        # /etc/hostname and resolv.conf instead of the ones podman would generate.
        "--tmpfs", "/in:ro,mode=0755", "--tmpfs", "/sys:ro",
        "--volume", f"{spec.root}/etc/hostname:/etc/hostname:ro",
        "--volume", f"{spec.root}/etc/resolv.conf:/etc/resolv.conf:ro",
        *LIMITS,
        *(PRIVILEGED if spec.privileged else ()),
        "--user", f"{spec.uid}:{spec.gid}", "--umask", f"{spec.umask:04o}",
        "--unsetenv-all",
    ]
    for name in sorted(spec.inputs):
        args += ["--volume", f"{spec.inputs[name]}:/in/{name}:ro"]
    for target in sorted(spec.extra_ro):
        args += ["--volume", f"{spec.extra_ro[target]}:{target}:ro"]
    args += ["--volume", f"{spec.out}:/out", "--volume", f"{spec.build}:/build",
             "--workdir", spec.workdir, image_name(spec),
             "/usr/bin/env", "-i", "--", *[f"{k}={spec.env[k]}" for k in sorted(spec.env)],
             *spec.wrapper, *command]
    return args
