"""What the commands do, as library functions: build, verify a build, release.

Each pipeline takes plain values and callbacks for progress and warnings, and returns a
result; the command line (cli.py) only parses options, calls one of these, renders the
result and maps errors to exit codes. Tests and benchmarks call them directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlos_repro.env.lockfile import LOCK_FILE, locked_environment, read_lock
from mlos_repro.errors import BadInputError
from mlos_repro.executor import BuildResult, Executor, Progress, no_progress, write_out
from mlos_repro.inspect.report import DiffoscopeSettings
from mlos_repro.rebuild.variations import Host, Plan, plan
from mlos_repro.rebuild.varied import VerifyResult, varied_rebuild
from mlos_repro.recipe import RecipeSet, load_recipes
from mlos_repro.recipe.model import InputKind
from mlos_repro.release import Keys, Sigstore, make_release
from mlos_repro.sandbox.select import sandbox
from mlos_repro.sbom.facts import SBOM_SUFFIX
from mlos_repro.sign.gpg import GpgSigner, development_signer
from mlos_repro.sign.repository import sign_repositories
from mlos_repro.store import Store

Warn = Callable[[str], None]


def _silent(message: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What `mlos-repro build` is asked for (its defaults are the command's)."""

    recipes_dir: Path = Path("recipes")
    stages: tuple[str, ...] = ()
    profile: str | None = None
    out_dir: Path = Path("out")
    sandbox: str = "bwrap"
    use_cache: bool = True
    gnupghome: Path | None = None  # None: the development archive key
    archive_key: str | None = None


@dataclass
class Built:
    """A finished build written to OUT: what ran, and where its manifest is."""

    options: BuildOptions
    recipes: RecipeSet
    executor: Executor
    result: BuildResult
    manifest: Path
    verified: VerifyResult | None = field(default=None)

    def summary(self) -> dict[str, Any]:
        """`build --json`: the manifest's facts plus timings, cache hits and SBOM paths."""
        out_dir = self.options.out_dir
        summary: dict[str, Any] = {
            "manifest": str(self.manifest),
            "profile": self.recipes.profile,
            "environments": self.result.environments,
            "stages": {n: {"key": r.entry.key, "outputs": dict(r.entry.outputs), "cached": r.cached,
                           "seconds": round(r.seconds, 3),
                           "sboms": {o: str(out_dir / n / (o + SBOM_SUFFIX))
                                     for o in self.result.sboms.get(n, {})}}
                       for n, r in self.result.stages.items()},
        }
        if self.verified is not None:
            summary["verify"] = str(out_dir / "verify.json")
            summary["reproducible"] = self.verified.reproducible
        return summary


def build(options: BuildOptions, store: Store, *, progress: Progress = no_progress,
          warn: Warn = _silent) -> Built:
    """Build the selected stages (cached ones from the store), sign the APT repositories
    among them outside the sandbox, and write OUT/<stage>/ and OUT/manifest.json."""
    recipes = load_recipes(options.recipes_dir, options.profile)
    executor = Executor(recipes, store, sandbox(options.sandbox), use_cache=options.use_cache,
                        progress=progress)
    result = executor.build(options.stages)

    def signer() -> GpgSigner:
        if options.gnupghome is not None:
            return GpgSigner(options.gnupghome, options.archive_key)
        gpg = development_signer()
        warn(f"signing with the development archive key {gpg.fingerprint} (not for release; "
             "name the archive key with --gnupghome)")
        return gpg

    signatures = sign_repositories(store, result, signer)
    manifest = write_out(store, result, options.out_dir, signatures)
    return Built(options, recipes, executor, result, manifest)


def verify_build(built: Built, enabled: frozenset[str], settings: DiffoscopeSettings, *,
                 on_plan: Callable[[Plan], None] = lambda p: None) -> VerifyResult:
    """Rebuild every stage of `built` in an environment varied by the `enabled` variations
    this host can apply, judge each output bit for bit, and write OUT/verify.json and
    OUT/reports/."""
    builders = [built.recipes.stages[n].builder for n in built.result.stages] or ["default"]
    host = Host.probe(built.executor.env(builders[0]).root, built.options.sandbox)
    the_plan = plan(enabled, host)
    on_plan(the_plan)
    built.verified = varied_rebuild(built.executor, built.executor.store, built.result, the_plan,
                                    built.options.out_dir, settings)
    return built.verified


@dataclass(frozen=True, slots=True)
class ReleaseOptions:
    """What `mlos-repro release` is asked for."""

    keys_dir: Path
    out_dir: Path
    from_dir: Path | None = None  # a build's OUT: release exactly that build
    recipes_dir: Path = Path("recipes")
    profile: str | None = None
    archive_key: str | None = None
    expires_days: int | None = None
    version: str | None = None  # default: the build's mlos.json
    openpgp_links: bool = False
    sigstore: Sigstore | None = None


@dataclass(frozen=True, slots=True)
class Released:
    path: Path
    stages: tuple[str, ...]


def release(options: ReleaseOptions, store: Store) -> Released:
    """Assemble and sign the release directory of a build whose every stage is in the store."""
    recipes = load_recipes(options.recipes_dir, options.profile)
    keys = Keys.load(options.keys_dir, options.archive_key)
    if options.openpgp_links:
        keys = replace(keys, openpgp_links=True)
    executor = Executor(recipes, store, sandbox("bwrap"), cached_only=True)
    built_stages = _built_stages(options.from_dir) if options.from_dir is not None else {}
    result = executor.build(tuple(built_stages))
    differing = [n for n, s in built_stages.items()
                 if n not in result.stages or result.stages[n].entry.key != s.get("key")]
    if differing:
        raise BadInputError(f"{options.from_dir} was built from other inputs than these recipes give for: "
                            + ", ".join(differing), "build again, or release from the matching recipes")
    path = make_release(executor, result, keys, options.out_dir, options.expires_days, options.sigstore,
                        options.version)
    return Released(path, tuple(sorted(result.stages)))


def _built_stages(from_dir: Path) -> dict[str, dict[str, Any]]:
    """The stages (with their cache keys) of the build whose OUT is from_dir."""
    path = from_dir / "manifest.json"
    try:
        stages = json.loads(path.read_text()).get("stages", {})
        if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
            raise ValueError("'stages' is not a table of stages")
    except (OSError, ValueError, AttributeError) as e:
        raise BadInputError(f"{path}: cannot read the build's manifest ({e})",
                            "name the OUT directory of a finished `mlos-repro build`") from None
    return stages


def pinned_digests(recipes_dir: Path) -> set[str]:
    """Every sha256 the recipes pin, in every profile: the locked .debs of every environment
    and every url:/deb: input. `store gc` keeps them: they may not be downloadable again."""
    first = load_recipes(recipes_dir)
    pins: set[str] = set()
    lock_path = first.builder.path.with_name(LOCK_FILE)
    if lock_path.exists():
        for name in sorted(set(read_lock(lock_path)) & set(first.builder.environments)):
            _, locked = locked_environment(first.builder, name)
            pins.update(p.sha256 for p in locked.packages)
    for profile in first.builder.profiles:
        for stage in load_recipes(recipes_dir, profile).stages.values():
            pins.update(i.sha256 for i in stage.inputs
                        if i.kind in (InputKind.URL, InputKind.DEB) and i.sha256 is not None)
    return pins
