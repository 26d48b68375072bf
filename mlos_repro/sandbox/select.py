"""Choose a sandbox backend by name."""

from __future__ import annotations

from mlos_repro import run
from mlos_repro.errors import BadInputError
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
