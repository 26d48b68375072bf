"""`mlos-repro lock`: resolve an environment's package set against its mirror.

mmdebstrap does the resolving, exactly as it will when assembling; we keep every .deb it
downloaded (into the store, so a later fetch has nothing to do) and the archive's index
stanza of each.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from debian.deb822 import Packages

from mlos_repro import run
from mlos_repro.digest import sha256_file
from mlos_repro.env.lockfile import LOCK_FILE, LockedEnvironment, LockedPackage, read_lock, write_lock
from mlos_repro.errors import BadInputError
from mlos_repro.recipe.model import BuilderConfig, Environment
from mlos_repro.store import Store

log = logging.getLogger(__name__)


def lock_environment(env: Environment, source_date_epoch: int, store: Store,
                     mirror: str | None = None) -> LockedEnvironment:
    mirror = mirror or env.mirror
    with store.tempdir("lock") as tmp:
        debs, lists = tmp / "debs", tmp / "lists"
        debs.mkdir()
        lists.mkdir()
        argv = [
            "mmdebstrap", "--quiet", "--mode=auto", "--format=null",
            f"--variant={env.variant}", f"--architectures={env.architecture}",
            f"--components={','.join(env.components)}",
            "--skip=download/empty,essential/unlink",
            f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
            f"--customize-hook=sync-out /var/lib/apt/lists {lists}",
        ]
        if env.packages:
            argv.append(f"--include={','.join(env.packages)}")
        if env.keyring:
            if not Path(env.keyring).is_file():
                raise BadInputError(f"environment {env.name!r}: keyring {env.keyring} does not exist",
                                    "install the archive's keyring package (e.g. ubuntu-keyring) or fix "
                                    "the keyring key in recipes/builder.toml")
            argv.append(f"--keyring={env.keyring}")
        argv += [env.suite, "/dev/null", mirror]
        run.run_or_raise(argv, BadInputError,
                         f"environment {env.name!r}: resolving against {mirror} failed (mmdebstrap)",
                         hint="check the suite, package names and mirror in recipes/builder.toml",
                         tail=15, stdout=None,
                         env=run.host_env({"SOURCE_DATE_EPOCH": str(source_date_epoch)}))
        stanzas = _index_stanzas(lists)
        packages = []
        for deb in sorted(debs.glob("*.deb")):
            key = _key_from_filename(deb.name)
            stanza = stanzas.get(key)
            if stanza is None:
                raise BadInputError(f"environment {env.name!r}: {deb.name} is not in the mirror's index")
            digest = sha256_file(deb)
            if stanza.get("SHA256") != digest:
                raise BadInputError(f"{deb.name}: downloaded sha256 {digest} differs from the index's "
                                    f"{stanza.get('SHA256')}", "the mirror is inconsistent; retry")
            store.put_file(deb, digest)
            packages.append(LockedPackage(
                name=key[0], version=key[1], architecture=key[2], filename=stanza["Filename"],
                sha256=digest, size=deb.stat().st_size, stanza=str(stanza).strip() + "\n"))
    if not packages:
        raise BadInputError(f"environment {env.name!r}: mmdebstrap kept no packages")
    log.info("locked %s: %d packages", env.name, len(packages))
    return LockedEnvironment(name=env.name, spec=env.spec(), spec_sha256=env.spec_digest(),
                             packages=tuple(packages))


def _key_from_filename(name: str) -> tuple[str, str, str]:
    """apt's archive names: NAME_VERSION_ARCH.deb with the epoch's ':' as %3a."""
    stem = name.removesuffix(".deb")
    pkg, version, arch = stem.split("_")
    return pkg, urllib.parse.unquote(version), arch


def _index_stanzas(lists: Path) -> dict[tuple[str, str, str], Packages]:
    stanzas: dict[tuple[str, str, str], Packages] = {}
    for index in sorted(lists.glob("*_Packages")):
        with index.open("rb") as f:
            for para in Packages.iter_paragraphs(f, use_apt_pkg=False):
                stanzas.setdefault((para["Package"], para["Version"], para["Architecture"]), para)
    if not stanzas:
        raise BadInputError(f"no Packages index found after resolving ({os.fspath(lists)})")
    return stanzas


def lock_environments(builder: BuilderConfig, names: Sequence[str], store: Store, mirror: str | None,
                      on_locked: Callable[[str, int], None] = lambda name, n: None) -> None:
    """Resolve environments `names` (all if empty) of builder.toml into builder.lock beside it;
    the lock is written after each, so a later environment whose mirror is out of reach loses
    nothing. Locks of environments builder.toml no longer names are dropped."""
    names = names or sorted(builder.environments)
    for name in names:
        if name not in builder.environments:
            raise BadInputError(f"{builder.path}: no environment {name!r}",
                                f"defined: {', '.join(sorted(builder.environments))}")
    lock_path = builder.path.with_name(LOCK_FILE)
    locked = read_lock(lock_path) if lock_path.exists() else {}
    locked = {n: e for n, e in locked.items() if n in builder.environments}
    for name in names:
        locked[name] = lock_environment(builder.environments[name], builder.source_date_epoch, store, mirror)
        on_locked(name, len(locked[name].packages))
        write_lock(lock_path, locked)
