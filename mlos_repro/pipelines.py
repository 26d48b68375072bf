"""What the commands do, as library functions: build, verify a build, release, rebuild a release.

Each pipeline takes plain values and callbacks for progress and warnings, and returns a
result; the command line (cli.py) only parses options, calls one of these, renders the
result and maps errors to exit codes. Tests and benchmarks call them directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlos_repro import __version__
from mlos_repro.attest import intoto, release_meta, vsa
from mlos_repro.attest.release_meta import ReleaseInfo
from mlos_repro.audit.release import ReleaseVerifier
from mlos_repro.audit.trust import Trust
from mlos_repro.cluster import executor_for
from mlos_repro.digest import sha256_file
from mlos_repro.env.fetch import fetch_all
from mlos_repro.env.lockfile import LOCK_FILE, locked_environment, read_lock
from mlos_repro.errors import BadInputError, VerificationFailed
from mlos_repro.executor import (
    BuildResult,
    Executor,
    Progress,
    check_out_dir,
    no_progress,
    write_out,
)
from mlos_repro.fsutil import staged_directory
from mlos_repro.graph import select
from mlos_repro.inspect.report import DiffoscopeSettings
from mlos_repro.keyfile import load_signer, public
from mlos_repro.oci import SharedConfig
from mlos_repro.rebuild import variations
from mlos_repro.rebuild.against import PASSED, ArtifactVerdict, rebuild_against
from mlos_repro.rebuild.variations import Host, Plan
from mlos_repro.rebuild.varied import VerifyResult, varied_rebuild
from mlos_repro.recipe import RecipeSet, load_recipes, source
from mlos_repro.recipe.model import InputKind
from mlos_repro.release import Keys, Sigstore, make_release
from mlos_repro.sandbox.select import sandbox
from mlos_repro.sbom.facts import SBOM_SUFFIX
from mlos_repro.sbom.policy import POLICY_FILE, load_policy
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
    partial: bool = False  # keep the earlier build's other stages in OUT
    executor: str = "local"  # or "dask" (cluster.py)
    scheduler: str | None = None  # with dask: tcp://HOST:PORT; None: MLOS_REPRO_SCHEDULER or a LocalCluster
    shared: SharedConfig | None = None  # an OCI registry shared with other machines (oci.py)


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
    carried = check_out_dir(options.out_dir, select(recipes.stages, options.stages), recipes.profile,
                            partial=options.partial)
    shared = options.shared.open(store) if options.shared is not None else None
    executor = executor_for(options.executor, options.scheduler, recipes, store, sandbox(options.sandbox),
                            use_cache=options.use_cache, progress=progress, shared=shared)
    result = executor.build(options.stages)

    def signer() -> GpgSigner:
        if options.gnupghome is not None:
            return GpgSigner(options.gnupghome, options.archive_key)
        gpg = development_signer()
        warn(f"signing with the development archive key {gpg.fingerprint} (not for release; "
             "name the archive key with --gnupghome)")
        return gpg

    signatures = sign_repositories(store, result, signer)
    if result.sboms and load_policy(recipes.root).built_in:
        warn(f"the SBOMs use mlos-repro's built-in default policy: there is no {POLICY_FILE} in "
             f"{recipes.root} (it names the supplier and the SBOMs' author; `mlos-repro init` writes one)")
    manifest = write_out(store, result, options.out_dir, signatures, carried)
    return Built(options, recipes, executor, result, manifest)


def verify_build(built: Built, enabled: frozenset[str], settings: DiffoscopeSettings, *,
                 on_plan: Callable[[Plan], None] = lambda p: None, bisect: bool = False) -> VerifyResult:
    """Rebuild every stage of `built` in an environment varied by the `enabled` variations
    this host can apply, judge each output bit for bit, and write OUT/verify.json and
    OUT/reports/."""
    the_plan = _plan(built.executor, built.result.stages, built.options.sandbox, enabled)
    on_plan(the_plan)
    built.verified = varied_rebuild(built.executor, built.executor.store, built.result, the_plan,
                                    built.options.out_dir, settings, bisect=bisect)
    return built.verified


def _plan(executor: Executor, stages: Iterable[str], backend: str, enabled: frozenset[str]) -> Plan:
    """The `enabled` variations this host can apply, judged on the first stage's builder environment."""
    builders = [executor.recipes.stages[n].builder for n in stages] or ["default"]
    return variations.plan(enabled, Host.probe(executor.env(builders[0]).root, backend))


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
    with_inputs: bool = False  # carry every pinned input in RELEASE/inputs/
    stages: tuple[str, ...] = ()  # release only these (and what they need) of from_dir's build


@dataclass(frozen=True, slots=True)
class Released:
    path: Path
    stages: tuple[str, ...]


def release(options: ReleaseOptions, store: Store) -> Released:
    """Assemble and sign the release directory of a build whose every stage is in the store."""
    recipes = load_recipes(options.recipes_dir, options.profile)
    executor = Executor(recipes, store, sandbox("bwrap"), cached_only=True)
    wanted = select(recipes.stages, options.stages)
    built_stages: dict[str, dict[str, Any]] = {}
    if options.from_dir is not None:
        built_stages = _built_stages(options.from_dir)
        absent = [n for n in wanted if n not in built_stages]
        if absent and options.stages:
            raise BadInputError(f"{options.from_dir} holds no build of {', '.join(absent)}",
                                "build those stages into it (build --partial), or name stages it holds")
        if not options.stages and (absent or set(built_stages) - set(recipes.stages)):
            raise BadInputError(
                f"{options.from_dir} holds a build of {', '.join(sorted(built_stages)) or 'no stage'}, not "
                f"the whole graph of profile {recipes.profile!r} (missing: {', '.join(absent) or 'none'})",
                "build every stage into it, or name the stages to release with --stage")
        built_stages = {n: built_stages[n] for n in wanted}
    keys = Keys.load(options.keys_dir, options.archive_key)
    if options.openpgp_links:
        keys = replace(keys, openpgp_links=True)
    result = executor.build(wanted)
    differing = [n for n, s in built_stages.items()
                 if n not in result.stages or result.stages[n].entry.key != s.get("key")]
    if differing:
        raise BadInputError(f"{options.from_dir} was built from other inputs than these recipes give for: "
                            + ", ".join(differing), "build again, or release from the matching recipes")
    path = make_release(executor, result, keys, options.out_dir, options.expires_days, options.sigstore,
                        options.version, options.with_inputs)
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


@dataclass(frozen=True, slots=True)
class RebuildOptions:
    """What `mlos-repro rebuild RELEASE` is asked for."""

    release_dir: Path
    keys_dir: Path  # the rebuilder's own `keys init` directory: its builder key signs
    out_dir: Path  # the attestations directory to write (new or empty)
    root_key: Path
    trust: Trust
    enabled: frozenset[str]  # variations (rebuild/variations.py)
    settings: DiffoscopeSettings = field(default_factory=DiffoscopeSettings)
    sandbox: str = "bwrap"
    identity: str | None = None  # default: the rebuilder key's id
    mirror: str | None = None
    executor: str = "local"  # as BuildOptions
    scheduler: str | None = None


@dataclass(frozen=True, slots=True)
class Rebuilt:
    path: Path
    verdicts: list[ArtifactVerdict]
    plan: Plan | None

    @property
    def ok(self) -> bool:
        return bool(self.verdicts) and all(v.result == PASSED for v in self.verdicts)


def rebuild(options: RebuildOptions, store: Store, *, progress: Progress = no_progress,
            warn: Warn = _silent) -> Rebuilt:
    """Check a release's signatures, rebuild it from its source archive, uncached and varied, in
    `store`, judge every artifact against its SHA256SUMS and write signed summaries (attest/vsa.py),
    an in-toto link per rebuilt stage and rebuild.json to options.out_dir."""
    release_dir, out = options.release_dir, options.out_dir
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: exists and is not an empty directory; a rebuild's attestations are "
                            "written once", "name a new directory")
    signer = load_signer(options.keys_dir, "builder")
    verifier = ReleaseVerifier(release_dir, options.root_key, options.trust)
    outcome = verifier.run()
    if not outcome.ok:
        failed = [f"check {c.number} ({c.name}): {p}" for c in outcome.checks for p in c.problems]
        raise VerificationFailed(f"{release_dir}: the release does not verify, so it is not rebuilt:\n  "
                                 + "\n  ".join(failed[:20]), "mlos-repro verify shows every check")
    info: ReleaseInfo = verifier.info  # type: ignore[assignment]
    if info.raw.get("mlos-repro") != __version__:
        warn(f"the release was made by mlos-repro {info.raw.get('mlos-repro')}, this is {__version__}: its "
             "source archive holds that toolkit (mlos_repro/, pyproject.toml, requirements.lock) if the "
             "rebuild differs")
    sums = verifier.sums
    lock = json.loads((release_dir / "inputs.lock").read_bytes())  # signed: check 2 compared its digest
    archive = lock.get("source") if isinstance(lock, dict) else None
    if not isinstance(archive, dict):
        archive = {}
    named = archive.get("path")
    if not isinstance(named, str) or not named.startswith("source/") or release_meta.safe_name(named):
        raise BadInputError(f"{release_dir / 'inputs.lock'}: names no source archive under source/; this "
                            "release cannot be rebuilt by a stranger",
                            "release it again with this mlos-repro")
    source_path = release_dir / named
    if sha256_file(source_path, follow=False) != archive.get("sha256"):
        raise VerificationFailed(f"{source_path}: not the source archive inputs.lock names")
    with staged_directory(out) as staging, store.tempdir("rebuild-source") as work:
        tree = work / "tree"
        described_source = source.unpack(source_path, tree)
        recipes = load_recipes(tree / described_source["recipes"], info.profile)
        carried = release_dir / release_meta.INPUTS
        for path in sorted(carried.iterdir()) if carried.is_dir() else []:
            if not store.has_blob(path.name):
                store.put_file(path, path.name, follow=False)  # checked against its name
        fetch_all(recipes, store, options.mirror, all_locked=False)
        the_plan = _plan(Executor(recipes, store, sandbox(options.sandbox)), recipes.stages, options.sandbox,
                         options.enabled)
        executor = executor_for(options.executor, options.scheduler, recipes, store, sandbox(options.sandbox),
                                variant=the_plan.variant, progress=progress)
        result, verdicts = rebuild_against(executor, release_dir, sums, info.stages,
                                           frozenset(info.signed_after_build), staging, options.settings)
        _write_rebuild(executor, result, verdicts, the_plan, info, verifier, signer, staging,
                       options.identity)
    for v in verdicts:  # the reports, where they are now
        if v.report_txt is not None and v.report_html is not None:
            v.report_txt = out / v.report_txt.relative_to(staging)
            v.report_html = out / v.report_html.relative_to(staging)
    return Rebuilt(out, verdicts, the_plan)


def _write_rebuild(executor: Executor, result: BuildResult, verdicts: list[ArtifactVerdict],
                   the_plan: Plan, info: ReleaseInfo, verifier: ReleaseVerifier, signer: Any, root: Path,
                   identity: str | None) -> None:
    recipes, store = executor.recipes, executor.store
    sde = recipes.builder.source_date_epoch
    keyid = signer.public_key.keyid
    who = identity or f"mlos-repro-rebuilder:{keyid}"
    when = release_meta.utc_now()
    sums_digest = hashlib.sha256(verifier.sums_bytes()).hexdigest()
    entries = {n: r.entry for n, r in result.stages.items()}
    for name, res in result.stages.items():
        stage = recipes.stages[name]
        env = executor.env(stage.builder)
        mats = intoto.materials(store, stage, executor.input_digests(stage, result), entries,
                                (env.name, env.digest))
        prods = intoto.products(store, name, res.entry)
        dest = root / "links" / f"{name}.{keyid[:8]}.link"
        dest.parent.mkdir(parents=True, exist_ok=True)
        the_link = intoto.link(stage, res.entry, mats, prods, profile=recipes.profile, sde=sde)
        dest.write_bytes(intoto.sign_link(the_link, signer))
    for v in verdicts:
        report_digest = sha256_file(v.report_txt) if v.report_txt is not None else None
        predicate = vsa.predicate(verifier=who, time=when,
                                  uri=vsa.resource_uri(info.name, info.version, v.name),
                                  release_info=verifier.info_digest, sums=sums_digest, result=v.result,
                                  variations=list(the_plan.applied), rebuilt=v.rebuilt, released=v.released,
                                  member=v.member, report=report_digest)
        subjects = {k: {"sha256": d} for k, d in sorted(v.released.items())}
        dest = root / "vsa" / v.stage / f"{v.output}.intoto.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(intoto.sign_statement(intoto.statement(subjects, vsa.VSA, predicate), signer))
    (root / "rebuilder.pub.json").write_text(json.dumps(public(signer), indent=2, sort_keys=True) + "\n")
    summary = {
        "rebuilder": {"id": who, "keyid": keyid}, "rebuilt": when,
        "release": {"name": info.name, "version": info.version, "profile": info.profile,
                    "release.json": verifier.info_digest, "SHA256SUMS": sums_digest},
        "variations": {"applied": list(the_plan.applied), "skipped": [list(s) for s in the_plan.skipped]},
        "passed": sum(1 for v in verdicts if v.result == PASSED),
        "failed": sum(1 for v in verdicts if v.result != PASSED),
        "artifacts": [v.to_json(root) for v in verdicts],
    }
    (root / "rebuild.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
