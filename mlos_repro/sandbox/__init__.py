"""Sandboxes: where a stage's commands run. A backend turns a SandboxSpec into argv (data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

HOSTNAME = "mlos-build"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything a sandbox may see. Anything not named here is invisible."""

    root: Path  # the builder environment's root filesystem (read-only)
    env_digest: str  # sha256 of the environment tarball: its identity
    env_tarball: Path  # the tarball itself, for backends that import images
    inputs: Mapping[str, Path]  # NAME -> host path, read-only at /in/NAME
    out: Path  # host dir, writable at /out
    build: Path  # host dir, writable at /build (the working directory)
    env: Mapping[str, str]
    hostname: str = HOSTNAME
    workdir: str = "/build"  # /build or a directory below it, made by the caller in `build`
    uid: int = 0  # inside the sandbox's user namespace
    gid: int = 0
    umask: int = 0o022
    wrapper: tuple[str, ...] = ()  # run inside the sandbox in front of every command
    host_wrapper: tuple[str, ...] = ()  # run on the host in front of the sandbox itself
    extra_ro: Mapping[str, Path] = field(default_factory=dict)
    privileged: bool = False  # the host's root, no user namespace (see Stage.privileged)


def stage_environment(stage: str, source_date_epoch: int,
                      recipe_env: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The exact environment of the recipe contract."""
    env = {
        "PATH": PATH,
        "HOME": "/build",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "MLOS_STAGE": stage,
    }
    env.update(recipe_env)
    return env


# What bwrap itself runs with. A stage can read its pid 1's /proc/PID/environ, and under bwrap
# that is bwrap: nothing of the caller's environment (proxies with passwords, tokens, HOME) may
# be in it. (A podman container's pid 1 is `env -i`, which replaces its environment.)
LAUNCH_ENV = {"PATH": PATH}


class Sandbox(Protocol):
    name: str

    def launch_env(self) -> dict[str, str]:
        """The environment the sandbox tool itself is started with on the host."""
        ...

    def argv(self, spec: SandboxSpec, command: Sequence[str]) -> list[str]:
        """The host command line that runs `command` inside the sandbox."""
        ...

    def prepare(self, spec: SandboxSpec) -> None:
        """Anything needed once per environment before argv() is run (e.g. an image import)."""
        ...
