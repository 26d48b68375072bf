"""Assemble a builder environment's root filesystem offline, from stored .debs only.

A local mirror with a real suite layout (dists/SUITE/Release naming Suite and Codename;
a flat repository breaks apt's priority selection) is built from the lock's stanzas and
handed to mmdebstrap through copy:// (a file:// path is not reachable from the chroot).
With SOURCE_DATE_EPOCH set the resulting tarball is bit-identical on every run; its sha256
is the environment's identity in cache keys and provenance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlos_repro import run
from mlos_repro.digest import canonical_json, sha256_bytes
from mlos_repro.env.lockfile import LockedEnvironment
from mlos_repro.errors import BadInputError, StageFailedError
from mlos_repro.recipe.model import Environment
from mlos_repro.store import Store

log = logging.getLogger(__name__)

# Bump when the assembly recipe below changes, so memoised digests are not reused.
ASSEMBLY_VERSION = 2
HOSTNAME = "mlos-build"

# mmdebstrap copies a few host files into the chroot; make them the same everywhere.
NORMALISE_HOOKS = (
    f'echo {HOSTNAME} > "$1/etc/hostname"',
    'printf "" > "$1/etc/resolv.conf"',
    'rm -f "$1/etc/apt/sources.list" "$1/etc/apt/sources.list.d/"*',
)


@dataclass(frozen=True, slots=True)
class EnvRef:
    name: str
    digest: str  # sha256 of the assembled root filesystem tarball
    root: Path  # extracted root, read-only for the sandbox


def assembly_key(env: Environment, locked: LockedEnvironment, source_date_epoch: int) -> str:
    return sha256_bytes(canonical_json({
        "assembly": ASSEMBLY_VERSION, "lock": locked.digest(), "suite": env.suite,
        "locales": sorted(env.locales), "source_date_epoch": source_date_epoch}))


def _locale_hooks(env: Environment) -> list[str]:
    """Compile each locale into its own directory (no locale-archive: one file per locale)."""
    hooks = []
    for name in sorted(env.locales):
        lang, _, charset = name.partition(".")
        hooks.append(f'chroot "$1" localedef --no-archive -c -i {lang} -f {charset} {name}')
    return hooks


def environment(env: Environment, locked: LockedEnvironment, source_date_epoch: int,
                store: Store, *, rebuild: bool = False,
                on_assemble: Callable[[], None] | None = None) -> EnvRef:
    """The assembled environment, from the store when it was assembled before (on_assemble is
    called when it must be assembled now)."""
    key = assembly_key(env, locked, source_date_epoch)
    memo = store.root / "envs" / "by-lock" / key
    with store.lock(f"env-{key}"):
        if not rebuild and (ready := assembled(env, locked, source_date_epoch, store)) is not None:
            return ready
        if on_assemble is not None:
            on_assemble()
        digest = assemble(env, locked, source_date_epoch, store)
        root = _extract(store, digest)
        store.write_atomic(memo, digest.encode() + b"\n")
        return EnvRef(env.name, digest, root)


def assembled(env: Environment, locked: LockedEnvironment, source_date_epoch: int,
              store: Store) -> EnvRef | None:
    """The environment if the store holds it assembled, else None (nothing is assembled)."""
    memo = store.root / "envs" / "by-lock" / assembly_key(env, locked, source_date_epoch)
    try:
        digest = memo.read_text().strip()
    except OSError:
        return None
    root = store.root / "envs" / digest / "root"
    return EnvRef(env.name, digest, root) if root.is_dir() else None


def assemble(env: Environment, locked: LockedEnvironment, source_date_epoch: int,
             store: Store) -> str:
    """Build the root filesystem tarball from stored .debs; returns its sha256 (a blob)."""
    with store.tempdir(f"env-{env.name}") as tmp:
        mirror = tmp / "mirror"
        local_mirror(env, locked, store, mirror)
        tarball = tmp / "root.tar"
        argv = [
            "mmdebstrap", "--quiet", "--mode=auto", f"--variant={env.variant}",
            f"--architectures={env.architecture}", "--format=tar",
            "--aptopt=Acquire::Languages \"none\"",
            *[f"--customize-hook={hook}" for hook in (*NORMALISE_HOOKS, *_locale_hooks(env))],
        ]
        if env.packages:
            argv.append(f"--include={','.join(env.packages)}")
        argv += [env.suite, str(tarball),
                 f"deb [trusted=yes] copy://{mirror} {env.suite} {' '.join(env.components)}"]
        run.run_or_raise(argv, StageFailedError, f"assembling environment {env.name!r} failed (mmdebstrap)",
                         hint="if packages are missing from the store, run: mlos-repro fetch",
                         tail=25, stdout=None,
                         env=run.host_env({"SOURCE_DATE_EPOCH": str(source_date_epoch)}))
        digest = store.adopt_file(tarball, what=f"environment {env.name}")
    log.info("environment %s assembled: sha256:%s", env.name, digest)
    return digest


def local_mirror(env: Environment, locked: LockedEnvironment, store: Store, mirror: Path) -> None:
    """A suite-layout mirror at `mirror` of the locked .debs (hard links into the store)."""
    stanzas: dict[str, list[str]] = {}
    for pkg in locked.packages:
        blob = store.verify_blob(pkg.sha256, f"{env.name}: {pkg.name}_{pkg.version}")
        dest = mirror / pkg.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(blob, dest)
        component = pkg.filename.split("/")[1] if pkg.filename.startswith("pool/") else "main"
        if component not in env.components:
            component = env.components[0]
        stanzas.setdefault(component, []).append(pkg.stanza)
    for component in env.components:
        index = mirror / "dists" / env.suite / component / f"binary-{env.architecture}" / "Packages"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text("\n".join(sorted(stanzas.get(component, []))))
    (mirror / "dists" / env.suite / "Release").write_text(
        f"Origin: mlos-repro\nLabel: mlos-repro\nSuite: {env.suite}\nCodename: {env.suite}\n"
        f"Architectures: {env.architecture}\nComponents: {' '.join(env.components)}\n")


def _extract(store: Store, digest: str) -> Path:
    final = store.root / "envs" / digest
    root = final / "root"
    if root.is_dir():
        return root
    with store.tempdir("extract") as tmp:
        (tmp / "root").mkdir()
        run.run_or_raise(["tar", "--numeric-owner", "-xpf", store.blob_path(digest), "-C", tmp / "root"],
                         BadInputError, f"extracting environment sha256:{digest} failed", stdout=None)
        final.mkdir(exist_ok=True)
        os.replace(tmp / "root", root)
    return root
