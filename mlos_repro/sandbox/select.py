"""Choose a sandbox backend by name."""

from __future__ import annotations

import functools
import subprocess

from mlos_repro import run
from mlos_repro.errors import BadInputError, HostFeatureMissing
from mlos_repro.sandbox import Sandbox
from mlos_repro.sandbox.bwrap import Bwrap
from mlos_repro.sandbox.podman import Podman

BACKENDS = ("bwrap", "podman")


def sandbox(name: str) -> Sandbox:
    if name == "bwrap":
        run.require("bwrap")
        return Bwrap()
    if name == "podman":
        run.require("podman")
        run.require("runc")
        return Podman()
    raise BadInputError(f"unknown sandbox {name!r}", f"choose one of: {', '.join(BACKENDS)}")


@functools.cache
def preflight(name: str) -> None:
    """Before the first stage runs: can this host give the sandbox what it needs? bubblewrap
    needs a user namespace; a kernel or container that refuses one is named, not reported as a
    failing stage."""
    if name != "bwrap":
        return
    probe = run.run([run.require("bwrap"), "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace").strip()
        raise HostFeatureMissing(
            f"bubblewrap cannot create the user namespace every stage runs in: {said}",
            "allow user namespaces (sysctl -w user.max_user_namespaces=15000; for users other than "
            "root also kernel.unprivileged_userns_clone=1), or in a container run it privileged or "
            "with a seccomp profile that allows unshare; --sandbox podman is the other backend")
