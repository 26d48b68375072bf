"""Run the stage graph locally: cache lookups, sandboxed runs, outputs into the store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mlos_repro import run
from mlos_repro.digest import canonical_json, sha256_bytes
from mlos_repro.env.assemble import EnvRef, assembled, assembly_key, environment, local_mirror
from mlos_repro.env.lockfile import locked_environment
from mlos_repro.errors import (
    BadInputError,
    EnvironmentProblem,
    HostFeatureMissing,
    MlosReproError,
    StageFailedError,
)
from mlos_repro.fsutil import TreeTooDeep, atomic_write, staged_directory, walk_tree
from mlos_repro.graph import ancestors, cache_key, cache_key_parts, key_of, select
from mlos_repro.inspect import manifest
from mlos_repro.recipe.model import Input, InputKind, RecipeSet, Stage
from mlos_repro.sandbox import Sandbox, SandboxSpec, stage_environment
from mlos_repro.sandbox.disorder import shuffled
from mlos_repro.sandbox.inputs import StageInput, lay_out
from mlos_repro.sandbox.select import preflight
from mlos_repro.sandbox.variant import BuildVariant, apply_variant
from mlos_repro.sbom.facts import SBOM_SUFFIX
from mlos_repro.store import SpecialFile, StageEntry, Store, digest_of_output_set

if TYPE_CHECKING:
    from mlos_repro.oci import SharedStore  # the registry client is imported only when one is named

log = logging.getLogger(__name__)
LOG_TAIL = 25


@dataclass(frozen=True, slots=True)
class StageResult:
    name: str
    entry: StageEntry
    cached: bool
    seconds: float


@dataclass
class BuildResult:
    stages: dict[str, StageResult] = field(default_factory=dict)
    environments: dict[str, str] = field(default_factory=dict)
    profile: str = ""
    sboms: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> output -> sha256 hex

    def manifest(self) -> dict[str, Any]:
        stages: dict[str, Any] = {}
        for n, r in sorted(self.stages.items()):
            stages[n] = {"key": r.entry.key, "outputs": dict(r.entry.outputs)}
            if n in self.sboms:
                stages[n]["sboms"] = {o + SBOM_SUFFIX: "sha256:" + d
                                      for o, d in sorted(self.sboms[n].items())}
        return {"profile": self.profile, "stages": stages}


# What a source checkout holds that is not source: tool caches, never a build's input.
CHECKOUT_NOISE = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})

def plan_build(recipes_dir: Path, profile: str | None, stages: tuple[str, ...], store: Store, *,
               use_cache: bool = True) -> tuple[RecipeSet, list[StagePlan]]:
    """What `build STAGES` would do (nothing is built or assembled): `mlos-repro plan`. Here,
    not in pipelines, so that the command starts in a fraction of a second."""
    from mlos_repro.recipe import load_recipes
    from mlos_repro.sandbox.select import sandbox

    recipes = load_recipes(recipes_dir, profile)
    return recipes, Executor(recipes, store, sandbox("bwrap"), use_cache=use_cache).plan(stages)


CACHED, RUNS, BLOCKED = "cached", "runs", "blocked"


@dataclass(frozen=True, slots=True)
class StagePlan:
    """What a build would do with one stage (`mlos-repro plan`)."""

    name: str
    status: str  # CACHED, RUNS, or BLOCKED (an input it needs is missing: why says which)
    key: str | None = None  # its cache key, when its inputs are known now
    why: tuple[str, ...] = ()
    estimate: float | None = None  # how long its last build here took
    log: Path | None = None  # the log of the cached build

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.name, "status": self.status, "key": self.key, "why": list(self.why),
                "estimate_seconds": self.estimate, "log": str(self.log) if self.log else None}


@dataclass(frozen=True, slots=True)
class Event:
    """What a build is doing, for whoever shows progress.

    state: "cached", "running", "varied" (the second build of --verify), "assembling" (an
    environment: name "environment NAME"), "log" (the log of the running stage is `log`), "done".
    """

    name: str
    state: str
    seconds: float = 0.0  # done: how long it took
    estimate: float | None = None  # running, varied, assembling: how long it took last time
    log: Path | None = None


Progress = Callable[[Event], None]


def no_progress(event: Event) -> None:
    return None


class Executor:
    def __init__(self, recipes: RecipeSet, store: Store, sandbox: Sandbox, *,
                 use_cache: bool = True, progress: Progress = no_progress,
                 cached_only: bool = False, variant: BuildVariant | None = None,
                 shared: SharedStore | None = None) -> None:
        self.recipes = recipes
        self.store = store
        self.shared = shared  # an OCI registry behind the store: entries found and written there
        self.sandbox = sandbox
        # Under a variant every stage runs (no cache hit) and nothing is recorded in the cache:
        # a varied build is judged, never reused.
        self.variant = variant
        self.use_cache = use_cache and variant is None
        self.progress = progress
        self.cached_only = cached_only  # a stage not in the store is an error, not a build
        self._envs: dict[str, EnvRef] = {}
        self._mirrors: dict[str, str] = {}
        self._sboms: Any = None  # sbom.cache.Sboms, made on first use

    def env(self, name: str) -> EnvRef:
        if name not in self._envs:
            builder = self.recipes.builder
            spec, locked = locked_environment(builder, name)
            label, started = f"environment {name}", []

            def assembling() -> None:
                started.append(time.monotonic())
                self.progress(Event(label, "assembling", estimate=self.store.last_seconds(label)))

            self._envs[name] = environment(spec, locked, builder.source_date_epoch, self.store,
                                           on_assemble=assembling)
            if started:
                self._done(label, time.monotonic() - started[0])
        return self._envs[name]

    def _done(self, name: str, seconds: float) -> None:
        self.store.record_seconds(name, seconds)
        self.progress(Event(name, "done", seconds))

    def mirror(self, name: str) -> str:
        """The tree digest of environment `name`'s locked .debs as a local APT mirror (env: inputs)."""
        if name not in self._mirrors:
            spec, locked = locked_environment(self.recipes.builder, name)
            memo = "mirror " + assembly_key(spec, locked, self.recipes.builder.source_date_epoch)
            known = (self.store.recall("mirrors", memo) or b"").decode().strip()
            if known and self.store.has_tree(known):
                self._mirrors[name] = known
            else:
                with self.store.tempdir(f"mirror-{name}") as tmp:
                    local_mirror(spec, locked, self.store, tmp / "mirror")
                    self._mirrors[name] = self.store.put_tree(tmp / "mirror")
                self.store.remember("mirrors", memo, self._mirrors[name].encode())
        return self._mirrors[name]

    def plan(self, wanted: Iterable[str] = ()) -> list[StagePlan]:
        """What `build wanted` would do, without building or assembling anything: each stage
        cached or to run, and why it runs (what changed since the stage was last built here)."""
        done = BuildResult(profile=self.recipes.profile)
        plans: list[StagePlan] = []
        runs: set[str] = set()
        sde = self.recipes.builder.source_date_epoch
        for name in select(self.recipes.stages, wanted):
            stage = self.recipes.stages[name]
            estimate = self.store.last_seconds(f"running {name}")
            spec, locked = locked_environment(self.recipes.builder, stage.builder)
            env = assembled(spec, locked, sde, self.store)
            upstream = sorted(set(stage.upstream) & runs)
            if env is None or upstream:
                runs.add(name)
                plans.append(StagePlan(name, RUNS, estimate=estimate, why=(
                    f"its environment {stage.builder!r} is not assembled yet" if env is None else
                    f"it needs {', '.join(upstream)}, which run{'s' if len(upstream) == 1 else ''} first",)))
                continue
            try:
                digests = self.input_digests(stage, done)
            except BadInputError as e:
                runs.add(name)
                plans.append(StagePlan(name, BLOCKED, why=(e.diagnostics(),)))
                continue
            parts = cache_key_parts(stage, env.digest, sde, digests)
            key = key_of(parts)
            hit = self._cached(key) if self.use_cache else None
            if hit is not None:
                done.stages[name] = StageResult(name, hit, True, 0.0)
                plans.append(StagePlan(name, CACHED, key, estimate=estimate,
                                       log=self.store.log_path(hit.log)))
                continue
            runs.add(name)
            why = ("--no-cache",) if not self.use_cache else self._changed(stage, parts)
            plans.append(StagePlan(name, RUNS, key, why, estimate))
        return plans

    def _changed(self, stage: Stage, parts: dict[str, Any]) -> tuple[str, ...]:
        """Why a stage's cache key is not in the store: what differs from its last build here."""
        note = self.store.recall("keys", f"{self.recipes.root.absolute()}:{stage.name}")
        if note is None:
            return ("it was never built on this store",)
        try:
            last = json.loads(note)
        except ValueError:
            return ("its last build's record is unreadable",)
        why = []
        if last.get("toolkit") != parts["toolkit"]:
            why.append(f"mlos-repro changed ({last.get('toolkit')} -> {parts['toolkit']})")
        elif last.get("sandbox") != parts["sandbox"] or last.get("output_rules") != parts["output_rules"]:
            why.append("the sandbox contract changed (a different mlos-repro)")
        recipe, before = parts["stage"], last.get("stage") or {}
        for field_name in sorted(set(recipe) | set(before)):
            if recipe.get(field_name) != before.get(field_name):
                why.append(f"recipe key {field_name!r} changed ({stage.source})")
        if last.get("environment") != parts["environment"]:
            why.append(f"environment {stage.builder!r} changed (builder.toml or builder.lock)")
        if last.get("source_date_epoch") != parts["source_date_epoch"]:
            why.append("source_date_epoch changed (builder.toml)")
        inputs, old = parts["inputs"], last.get("inputs") or {}
        specs = {i.name: i.spec for i in stage.inputs}
        for name in sorted(set(inputs) | set(old)):
            if name not in old:
                why.append(f"input {name!r} was added ({specs.get(name, '')})")
            elif name not in inputs:
                why.append(f"input {name!r} was removed")
            elif inputs[name] != old[name]:
                why.append(f"input {name!r} changed ({specs.get(name, '')})")
        return tuple(why) or ("it was built from the same inputs before, but the store no longer holds "
                              "that build (store gc)",)

    def build(self, wanted: Iterable[str] = (),
              on_error: Callable[[str, MlosReproError], None] | None = None) -> BuildResult:
        """Build `wanted` and what they need. A failing stage raises, unless `on_error` is
        given: then it is passed there, every stage that needs it is skipped (and passed
        there too), and the others go on."""
        result = BuildResult(profile=self.recipes.profile)
        order = select(self.recipes.stages, wanted)
        self._check_privileges(order)  # first: fetching would not help a user who is not root
        self._check_pinned_inputs(order)
        failed: set[str] = set()
        for name in order:
            stage = self.recipes.stages[name]
            missing = sorted(set(stage.upstream) & failed)
            if missing and on_error is not None:
                failed.add(name)
                on_error(name, StageFailedError(f"stage {name!r} was not built: it needs "
                                                f"{', '.join(missing)}, which failed"))
                continue
            try:
                env = self.env(stage.builder)
                result.environments[env.name] = f"sha256:{env.digest}"
                result.stages[name] = self._build_stage(stage, env, result)
                result.sboms[name] = self.sboms(name, result, result.stages[name].entry)
            except HostFeatureMissing:
                raise  # the host's to fix, not a verdict on the stage
            except MlosReproError as e:
                if on_error is None:
                    raise
                result.stages.pop(name, None)
                failed.add(name)
                on_error(name, e)
        return result

    def sboms(self, name: str, done: BuildResult, entry: StageEntry,
              use_cache: bool = True) -> dict[str, str]:
        """The SBOM of each output of stage `name` (entry: its outputs, from this build or a
        varied one); kernel metadata comes from the stage and its upstream in `done`."""
        if self._sboms is None:
            from mlos_repro.sbom.cache import Sboms  # cyclonedx is slow to import: only to make SBOMs
            from mlos_repro.sbom.policy import load_policy

            self._sboms = Sboms(self.store, load_policy(self.recipes.root),
                                self.recipes.builder.source_date_epoch)
        upstream = [done.stages[n].entry for n in ancestors(self.recipes.stages, name)
                    if n in done.stages]
        kernels = self._sboms.kernel_metadata([*upstream, entry])
        stage = self.recipes.stages[name]
        made: dict[str, str] = self._sboms.for_stage(name, stage.source, entry, kernels, use_cache=use_cache)
        return made

    def _check_pinned_inputs(self, order: Iterable[str]) -> None:
        """Every url:/deb: input of the build is in the store, before anything is built."""
        missing = []
        for name in order:
            for inp in self.recipes.stages[name].inputs:
                where = f"stage {name!r}: input {inp.name!r} ({inp.spec})"
                if inp.sha256 is not None and not self.store.has_blob(inp.sha256):
                    missing.append(where)
                elif inp.kind is InputKind.ENV:
                    _, locked = locked_environment(self.recipes.builder, inp.target)
                    absent = [p for p in locked.packages if not self.store.has_blob(p.sha256)]
                    if absent:
                        missing.append(f"{where}: {len(absent)} .debs, e.g. "
                                       f"{absent[0].name}_{absent[0].version}")
        if missing:
            raise BadInputError("pinned inputs are not in the store:\n  " + "\n  ".join(missing),
                                "run: mlos-repro fetch" + (
                                    f" --profile {self.recipes.profile}"
                                    if self.recipes.profile != self.recipes.builder.profiles[0] else ""))

    def _check_privileges(self, order: Iterable[str]) -> None:
        privileged = [name for name in order if self.recipes.stages[name].privileged]
        if privileged and os.geteuid() != 0:
            first = self.recipes.stages[privileged[0]]
            raise BadInputError(
                f"stage(s) {', '.join(privileged)} ({first.source}) are privileged: they make files "
                "owned by several users and need the host's root (without network, inputs read-only)",
                "run mlos-repro as root, or build only stages that do not depend on them "
                "(docs/recipes.md, 'Privileged stages')")

    # -- one stage --------------------------------------------------------------

    def input_digests(self, stage: Stage, done: BuildResult) -> dict[str, str]:
        digests: dict[str, str] = {}
        for inp in stage.inputs:
            if inp.kind is InputKind.STAGE:
                digests[inp.name] = "sha256:" + digest_of_output_set(
                    inp.selected(done.stages[inp.target].entry.outputs))
            elif inp.kind is InputKind.PATH:
                path = self.recipes.root / inp.target
                self._check_links(stage, inp, path)
                if path.is_dir():
                    digests[inp.name] = "tree:" + self.store.put_tree(path, normalise_modes=True,
                                                                          skip=CHECKOUT_NOISE, memo=True)
                else:
                    digests[inp.name] = "sha256:" + self.store.put_file(path)
            elif inp.kind is InputKind.ENV:
                digests[inp.name] = "tree:" + self.mirror(inp.target)
            else:
                assert inp.sha256 is not None
                if not self.store.has_blob(inp.sha256):
                    raise BadInputError(
                        f"stage {stage.name!r}: input {inp.name!r} ({inp.spec}) is not in the store",
                        "run: mlos-repro fetch")
                digests[inp.name] = "sha256:" + inp.sha256
        return digests

    def _check_links(self, stage: Stage, inp: Input, path: Path) -> None:
        """A path: input, and every symlink inside it, stays inside the repository: a link
        out of it would carry a host file into the build."""
        root = self.recipes.root.resolve()
        where = f"stage {stage.name!r} ({stage.source}): input {inp.name!r} ({inp.spec})"
        hint = ("copy what the stage needs into the repository; a path: input never leads "
                "out of it")
        real = path.resolve()
        if not real.is_relative_to(root):
            raise BadInputError(f"{where}: {path} leads outside the repository, to {real}", hint)
        if not real.is_dir():
            return
        try:
            entries = list(walk_tree(real, skip=CHECKOUT_NOISE))
        except TreeTooDeep as e:
            raise BadInputError(f"{where}: {e}", hint) from None
        for rel, st in entries:
            if stat.S_ISLNK(st.st_mode):
                link = real / rel
                target = os.readlink(link)
                lands = Path(os.path.normpath(link.parent / target))
                if not lands.is_relative_to(root):
                    raise BadInputError(f"{where}: the symlink {link} leads outside the "
                                        f"repository, to {target}", hint)

    def stage_key(self, stage: Stage, env: EnvRef, done: BuildResult) -> tuple[str, dict[str, str]]:
        """The stage's cache key and input digests, its upstream stages being in `done`."""
        digests = self.input_digests(stage, done)
        parts = cache_key_parts(stage, env.digest, self.recipes.builder.source_date_epoch, digests)
        if self.variant is None:
            # For `plan`: what changed since this stage of these recipes was built here.
            self.store.remember("keys", f"{self.recipes.root.absolute()}:{stage.name}", canonical_json(parts))
        return key_of(parts), digests

    def looked_up(self, stage: Stage, env: EnvRef,
                  done: BuildResult) -> tuple[str, dict[str, str], StageEntry | None]:
        """The stage's cache key, its input digests, and the store's entry for it (announced as
        cached) or None when it must run; with cached_only, a stage not in the store is an error."""
        key, digests = self.stage_key(stage, env, done)
        if self.use_cache and (hit := self._cached(key)) is not None:
            self.progress(Event(stage.name, "cached"))
            return key, digests, hit
        if self.cached_only:
            raise self.not_built(stage)
        return key, digests, None

    def _build_stage(self, stage: Stage, env: EnvRef, done: BuildResult) -> StageResult:
        start = time.monotonic()
        key, digests, hit = self.looked_up(stage, env, done)
        if hit is not None:
            return StageResult(stage.name, hit, True, 0.0)
        state = "running" if self.variant is None else "varied"
        entry, ran = self.execute(stage, env, key, digests, done, on_start=lambda: self.progress(
            Event(stage.name, state, estimate=self.store.last_seconds(f"{state} {stage.name}"))))
        if not ran:  # another build sharing the store finished it while we waited
            self.progress(Event(stage.name, "cached"))
            return StageResult(stage.name, entry, True, 0.0)
        seconds = time.monotonic() - start
        self.store.record_seconds(f"{state} {stage.name}", seconds)
        self.progress(Event(stage.name, "done", seconds))
        return StageResult(stage.name, entry, False, seconds)

    def not_built(self, stage: Stage) -> BadInputError:
        return BadInputError(f"stage {stage.name!r} ({stage.source}) is not built: the store has no "
                             "entry for its inputs", "run: mlos-repro build (same recipes and profile) first")

    def execute(self, stage: Stage, env: EnvRef, key: str, digests: dict[str, str], done: BuildResult,
                on_start: Callable[[], None] = lambda: None) -> tuple[StageEntry, bool]:
        """Run one stage whose cache key is `key`, under the store's lock for that key, and
        record it (unless varied); whether it ran, or another build sharing the store had
        finished it meanwhile. The one path for a stage, here and on a Dask worker."""
        with self.store.lock(f"stage-{key}"):
            if self.use_cache and (hit := self._cached(key)) is not None:
                return hit, False
            on_start()
            entry = self._run_stage(stage, env, key, digests, done, self.variant)
            if self.variant is None:
                self.store.put_stage(entry)
                if self.shared is not None:
                    self.shared.publish(entry)  # signed by our key, when one is given
        return entry, True

    def _cached(self, key: str) -> StageEntry | None:
        hit = self.store.get_stage(key)
        if hit is None and self.shared is not None:
            hit = self.shared.lookup(key)  # trusted, agreed, its blobs pulled and re-hashed
        if hit is not None and hit.readers != manifest.readers_digest():
            # Member manifests made by other readers would not compare with today's.
            hit = replace(hit, members={})
        return hit

    def _stage_inputs(self, stage: Stage, digests: dict[str, str], done: BuildResult,
                      work: Path) -> dict[str, Path]:
        inputs = []
        for inp in stage.inputs:
            if inp.kind is InputKind.STAGE:
                upstream = done.stages[inp.target].entry
                if self.shared is not None:
                    self.shared.ensure(upstream)  # built on another machine: its blobs pulled
                outputs = {o: (d, upstream.kinds[o]) for o, d in inp.selected(upstream.outputs).items()}
                inputs.append(StageInput(inp.name, digests[inp.name], outputs, is_stage=True))
            else:
                inputs.append(StageInput(inp.name, digests[inp.name]))
        return lay_out(self.store, inputs, work, self.recipes.builder.source_date_epoch)

    def rebuild_varied(self, control: BuildResult, variant: BuildVariant,
                       on_error: Callable[[str, MlosReproError], None], *,
                       only: Iterable[str] | None = None, why: str = "") -> dict[str, StageEntry]:
        """Run every stage of `control` (or `only` those) again under `variant`, from the control
        build's inputs (`why` labels the progress, e.g. one variation alone).

        Each stage gets the first build's upstream outputs, so a difference is attributed to
        the stage that produced it rather than cascading. Nothing is recorded in the cache.
        A stage that fails under the variant is passed to on_error and the rest go on.
        """
        varied: dict[str, StageEntry] = {}
        for name in control.stages if only is None else only:
            stage, env, key, digests, label = self.varied_stage(name, control, why)
            start = time.monotonic()
            try:
                varied[name] = self._run_stage(stage, env, key, digests, control, variant)
            except HostFeatureMissing:
                raise  # the host's to fix, not a verdict on the stage
            except MlosReproError as e:
                on_error(name, e)
                continue
            seconds = time.monotonic() - start
            self.store.record_seconds(f"varied {name}", seconds)
            self.progress(Event(label, "done", seconds))
        return varied

    def varied_stage(self, name: str, control: BuildResult,
                     why: str) -> tuple[Stage, EnvRef, str, dict[str, str], str]:
        """A stage of a varied rebuild, announced: its environment, cache key and input digests
        (from the control build's outputs), and its progress label."""
        stage = self.recipes.stages[name]
        env = self.env(stage.builder)
        digests = self.input_digests(stage, control)
        key = cache_key(stage, env.digest, self.recipes.builder.source_date_epoch, digests)
        label = f"{name} ({why})" if why else name
        self.progress(Event(label, "varied", estimate=self.store.last_seconds(f"varied {name}")))
        return stage, env, key, digests, label

    def _run_stage(self, stage: Stage, env: EnvRef, key: str, digests: dict[str, str],
                   done: BuildResult, variant: BuildVariant | None = None) -> StageEntry:
        preflight(self.sandbox.name)
        sde = self.recipes.builder.source_date_epoch
        with self.store.tempdir(f"stage-{stage.name}") as work, contextlib.ExitStack() as mounts:
            out, build = work / "out", work / "build"
            out.mkdir()
            build.mkdir()
            inputs = self._stage_inputs(stage, digests, done, work)
            spec = SandboxSpec(root=env.root, env_digest=env.digest,
                               env_tarball=self.store.blob_path(env.digest), inputs=inputs,
                               out=out, build=build, env=stage_environment(stage.name, sde, stage.env),
                               privileged=stage.privileged)
            if variant is not None:
                if stage.privileged:
                    # It must stay the host's root, and it runs a whole system's maintainer
                    # scripts, which need the real kernel's personality (under --uname-2.6
                    # dpkg cannot run them). Every other variation still applies.
                    variant = replace(variant, uid=0, gid=0, uname_26=False)
                if variant.fileordering:
                    spec = replace(spec, inputs=mounts.enter_context(shuffled(inputs, work / "disorder")))
                spec = apply_variant(spec, variant)
                # The whole of /build stays writable; the working directory is made below it.
                (build / PurePosixPath(spec.workdir).relative_to("/build")).mkdir(parents=True, exist_ok=True)
            self.sandbox.prepare(spec)
            log_file = work / "stage.log"
            with log_file.open("wb") as logf:
                self.progress(Event(stage.name, "log", log=log_file))
                for command in stage.run:
                    logf.write(f"+ {shlex.join(command)}\n".encode())
                    logf.flush()
                    argv = self.sandbox.argv(spec, command)
                    status = run.run(argv, env=self.sandbox.launch_env(), stdout=logf, stderr=logf,
                                     umask=spec.umask, check=False).returncode
                    if status != 0:
                        logf.close()
                        raise self._failure(stage, log_file,
                                            f"command {shlex.join(command)} exited with status {status}")
            missing = [o for o in stage.outputs if not (out / o).exists() and not (out / o).is_symlink()]
            if missing:
                raise self._failure(stage, log_file,
                                    f"declared output(s) not produced: {', '.join(missing)}")
            outputs: dict[str, str] = {}
            kinds: dict[str, str] = {}
            members: dict[str, str] = {}
            for o in stage.outputs:
                try:
                    outputs[o], kinds[o] = self.store.put_output(out, o)
                except SpecialFile as e:
                    raise self._failure(stage, log_file, e.message) from None
                # The layered listing, so a later comparison reads manifests, not images.
                listing = manifest.build(out / o, outputs[o].removeprefix("sha256:"), work / "members" / o,
                                         manifest.Listings(self.store.get_listing, self.store.put_listing))
                members[o] = self.store.put_bytes(canonical_json(listing))
            log_digest = self.store.put_file(log_file)
        return StageEntry(key=key, outputs=outputs, kinds=kinds, log=log_digest, members=members,
                          readers=manifest.readers_digest())

    def _failure(self, stage: Stage, log_file: Path, what: str) -> StageFailedError:
        log_digest = self.store.put_file(log_file)
        lines = log_file.read_bytes().decode(errors="replace").splitlines()[-LOG_TAIL:]
        tail = "\n".join(f"  | {line}" for line in lines)
        return StageFailedError(
            f"stage {stage.name!r} ({stage.source}) failed: {what}\n"
            f"last {len(lines)} log lines:\n{tail}\nfull log: {self.store.log_path(log_digest)}",
            "fix the stage's run commands or its inputs, then build again")


# What a build writes in OUT besides its stage directories; and the staging names of fsutil.
OUT_FILES = frozenset({"manifest.json", "verify.json", "reports"})
_STAGING_NAME = re.compile(r"\..+\.(?:partial|old)-[0-9]+")


@dataclass(frozen=True, slots=True)
class Carried:
    """What an earlier build in OUT leaves for `build --partial` to keep: its other stages."""

    stages: Mapping[str, Any] = field(default_factory=dict)  # name -> its manifest entry
    signatures: Mapping[str, str] = field(default_factory=dict)


def check_out_dir(out_dir: Path, stages: Iterable[str], profile: str, *, partial: bool) -> Carried:
    """Before a build: may OUT be replaced by a build of `stages`? An OUT holds one build whole:
    a build of fewer stages than the earlier build in OUT replaces it only with --partial, which
    keeps the other stages. Refuses a file, an unwritable parent and a directory holding
    anything no build wrote."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise BadInputError(f"--out {out_dir} exists and is not a directory",
                            "name a new directory, or the OUT of an earlier build")
    parent = out_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (out_dir.exists() and not os.access(out_dir, os.W_OK)):
        raise BadInputError(f"cannot write {out_dir if out_dir.exists() else parent}: permission denied "
                            "or a read-only file system", "name an --out you can write")
    if not out_dir.exists():
        return Carried()
    entries = sorted(p.name for p in out_dir.iterdir())
    earlier: dict[str, Any] = {}
    if "manifest.json" in entries:
        try:
            earlier = json.loads((out_dir / "manifest.json").read_bytes())
            if not isinstance(earlier, dict) or not isinstance(earlier.get("stages"), dict):
                raise ValueError("it has no table of stages")
        except ValueError as e:
            raise BadInputError(f"{out_dir / 'manifest.json'} is not the manifest of a build ({e})",
                                "name a new or empty --out, or remove that directory") from None
    foreign = [n for n in entries if n not in OUT_FILES and n not in earlier.get("stages", {})
               and not _STAGING_NAME.fullmatch(n)]
    if foreign:
        raise BadInputError(f"--out {out_dir} holds {', '.join(foreign[:5])}"
                            + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                            + ", which no build wrote: a build replaces its OUT as a whole",
                            "name a new or empty --out")
    others = sorted(set(earlier.get("stages", {})) - set(stages))
    if not others:
        return Carried()
    if not partial:
        raise BadInputError(f"--out {out_dir} holds an earlier build with stages this build does not "
                            f"make: {', '.join(others)}",
                            "build every stage into it, build into another --out, or pass --partial to "
                            "keep those stages from the earlier build")
    if earlier.get("profile") != profile:
        raise BadInputError(f"--out {out_dir} holds a build of profile {earlier.get('profile')!r}, not "
                            f"{profile!r}: --partial keeps stages of one profile only",
                            "build into another --out")
    signatures = earlier.get("signatures", {})
    return Carried({n: earlier["stages"][n] for n in others},
                   {p: d for p, d in (signatures.items() if isinstance(signatures, dict) else ())
                    if p.partition("/")[0] in others})


def write_out(store: Store, result: BuildResult, out_dir: Path,
              extras: Mapping[str, bytes] | None = None, carried: Carried | None = None) -> Path:
    """Write OUT whole: every built stage under OUT/<stage>/, the stages `carried` from the
    earlier build there (--partial), and OUT/manifest.json. The new OUT is made beside the old one
    and swapped in at the end: a failure (a full disk) leaves the old OUT as it was, and nothing
    stale (an earlier verify.json, reports/, other stages) survives.

    extras are files made outside the sandbox (signatures), by path under OUT/<stage>/.
    """
    try:
        return _write_out(store, result, out_dir, extras or {}, carried or Carried())
    except OSError as e:
        problem = EnvironmentProblem.from_os_error(e, f"--out {out_dir}")
        if problem is None:
            raise
        raise EnvironmentProblem(problem.message + " (what was there before is unchanged)",
                                 problem.hint) from None


def _write_out(store: Store, result: BuildResult, out_dir: Path, extras: Mapping[str, bytes],
               carried: Carried) -> Path:
    # What OUT held before: an output whose bytes are already there is linked, not written again.
    earlier = out_dir if out_dir.is_dir() else None
    with staged_directory(out_dir, replace=True) as staging:
        for name, res in sorted(result.stages.items()):
            files = [(o, digest, res.entry.kinds[o]) for o, digest in res.entry.outputs.items()]
            files += [(o + SBOM_SUFFIX, sbom, "file") for o, sbom in result.sboms.get(name, {}).items()]
            for path, digest, kind in files:
                store.materialize(digest, kind, staging / name / path,
                                  earlier / name / path if earlier is not None else None)
            for path, data in sorted(extras.items()):
                if path.partition("/")[0] == name:
                    (staging / path).parent.mkdir(parents=True, exist_ok=True)
                    (staging / path).write_bytes(data)
            (staging / name).mkdir(exist_ok=True)
        for name in sorted(carried.stages):
            shutil.copytree(out_dir / name, staging / name, symlinks=True, copy_function=_link_or_copy)
        manifest_data = result.manifest()
        manifest_data["stages"] = dict(sorted({**manifest_data["stages"], **carried.stages}.items()))
        signatures = {**carried.signatures,
                      **{path: "sha256:" + sha256_bytes(data) for path, data in extras.items()}}
        if signatures:
            manifest_data["signatures"] = dict(sorted(signatures.items()))
        atomic_write(staging / "manifest.json", canonical_json(manifest_data) + b"\n")
    return out_dir / "manifest.json"


def _link_or_copy(source: str, dest: str) -> None:
    """A kept file of an earlier build: a hard link (OUT's old copy goes away), else a copy."""
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, dest, follow_symlinks=False)

