"""The recipe model: frozen, validated values. Nothing here reads files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from mlos_repro.digest import canonical_json, sha256_bytes

# `small` fits a 2-core CI budget; `release` is the distribution build: the same recipes, other
# inputs (a stage's [stage.profile.NAME] table overrides its env, inputs, outputs and run).
DEFAULT_PROFILES = ("small", "release")
T = TypeVar("T")


class InputKind(StrEnum):
    PATH = "path"
    STAGE = "stage"
    URL = "url"
    DEB = "deb"
    ENV = "env"  # env:NAME, the locked .debs of an environment as a local APT mirror


@dataclass(frozen=True, slots=True)
class Input:
    """One declared input; mounted read-only at /in/NAME."""

    name: str
    kind: InputKind
    spec: str  # as written in the recipe
    target: str  # repository path, stage name, URL, Debian package name, or environment name
    version: str | None = None  # deb: only
    sha256: str | None = None  # url: and deb:
    output: str | None = None  # stage:NAME/OUTPUT: only that output of the stage

    def selected(self, outputs: Mapping[str, T]) -> dict[str, T]:
        """Of a stage input's upstream outputs, those it takes: one with /OUTPUT, else all."""
        if self.output is None:
            return dict(outputs)
        return {self.output: outputs[self.output]}

    @property
    def basename(self) -> str:
        """File name a pinned download is known by."""
        if self.kind is InputKind.DEB:
            return f"{self.target}_{self.version}.deb"
        return self.target.rstrip("/").rsplit("/", 1)[-1] or self.name


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    builder: str
    outputs: tuple[str, ...]
    run: tuple[tuple[str, ...], ...]
    inputs: tuple[Input, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    description: str = ""
    source: str = ""  # the recipe file, for messages
    profiles: tuple[str, ...] = ()  # the profiles this stage belongs to; () = every profile
    # Runs as the host's root without a user namespace (real file ownership, mknod, mounts),
    # still without network and with only its inputs visible: a root filesystem needs it.
    privileged: bool = False
    # Release-time only, so not cache key material: (output, "STAGE/OUTPUT.efi") pairs, each an
    # image whose EFI system partition `release` copies with that signed EFI image as its boot
    # loader (sign/secureboot.py).
    secureboot: tuple[tuple[str, str], ...] = ()

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(i.target for i in self.inputs if i.kind is InputKind.STAGE)

    def normalized(self) -> dict[str, Any]:
        """What of the recipe can change the stage's outputs (cache key material)."""
        normalized: dict[str, Any] = {
            "name": self.name,
            "builder": self.builder,
            "outputs": list(self.outputs),
            "run": [list(argv) for argv in self.run],
            "inputs": {i.name: i.spec for i in self.inputs},
            "env": dict(self.env),
        }
        if self.privileged:
            normalized["privileged"] = True
        return normalized


@dataclass(frozen=True, slots=True)
class Environment:
    """A named build environment: a Debian suite plus a package set (recipes/builder.toml)."""

    name: str
    suite: str
    architecture: str
    mirror: str
    components: tuple[str, ...] = ("main",)
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    locales: tuple[str, ...] = ()  # generated at assembly, e.g. "et_EE.UTF-8" (needs `locales`)
    # The archive keyring `lock` checks the mirror's Release against (a path on the host);
    # "" uses the host's default keyrings (Debian's). Like the mirror, not part of the spec:
    # the lock pins every .deb by sha256 either way.
    keyring: str = ""

    def spec(self) -> dict[str, Any]:
        """What the lock depends on; the mirror is only where to fetch from, so it is excluded."""
        return {
            "suite": self.suite,
            "architecture": self.architecture,
            "components": list(self.components),
            "variant": self.variant,
            "packages": sorted(self.packages),
        }

    def spec_digest(self) -> str:
        return sha256_bytes(canonical_json(self.spec()))


@dataclass(frozen=True, slots=True)
class BuilderConfig:
    source_date_epoch: int
    environments: Mapping[str, Environment]
    path: Path
    profiles: tuple[str, ...] = DEFAULT_PROFILES  # the first is the default


@dataclass(frozen=True, slots=True)
class RecipeSet:
    root: Path  # the repository root: path: inputs are relative to it
    recipes_dir: Path
    builder: BuilderConfig
    stages: Mapping[str, Stage] = field(default_factory=dict)
    profile: str = DEFAULT_PROFILES[0]  # the profile the stages were resolved for
