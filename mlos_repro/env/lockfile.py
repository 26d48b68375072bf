"""recipes/builder.lock: every package of every environment by version, filename and sha256.

The upstream index stanza of each package is kept as it was at lock time: the archive may
override fields the .deb itself carries (Priority, Section), and the local mirror that
assembly builds from must select exactly the package set the real archive selected.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlos_repro.digest import canonical_json, is_sha256, sha256_bytes
from mlos_repro.errors import BadInputError
from mlos_repro.fsutil import atomic_write
from mlos_repro.recipe.model import BuilderConfig, Environment

LOCK_FILE = "builder.lock"
LOCK_VERSION = 1


@dataclass(frozen=True, slots=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    filename: str  # pool path relative to the mirror root
    sha256: str
    size: int
    stanza: str  # the archive's Packages stanza, verbatim

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "architecture": self.architecture,
                "filename": self.filename, "sha256": self.sha256, "size": self.size,
                "stanza": self.stanza}


@dataclass(frozen=True, slots=True)
class LockedEnvironment:
    name: str
    spec: Mapping[str, Any]
    spec_sha256: str
    packages: tuple[LockedPackage, ...]

    def to_json(self) -> dict[str, Any]:
        return {"spec": dict(self.spec), "spec_sha256": self.spec_sha256,
                "packages": [p.to_json() for p in self.packages]}

    def digest(self) -> str:
        """Identity of the lock content (not of the assembled root filesystem)."""
        return sha256_bytes(canonical_json(self.to_json()))


def write_lock(path: Path, envs: Mapping[str, LockedEnvironment]) -> None:
    data = {"lock_version": LOCK_VERSION,
            "environments": {name: envs[name].to_json() for name in sorted(envs)}}
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_lock(path: Path) -> dict[str, LockedEnvironment]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInputError(f"{path}: lockfile not found", "run: mlos-repro lock") from None
    # One parse per version of the file: a build asks for it once per stage.
    return dict(_read_lock(path.absolute(), st.st_mtime_ns, st.st_size, st.st_ino))


@functools.lru_cache(maxsize=8)
def _read_lock(path: Path, mtime_ns: int, size: int, inode: int) -> dict[str, LockedEnvironment]:
    where = str(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{where}: lockfile not found", "run: mlos-repro lock") from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"{where}: not valid JSON ({e})", "run: mlos-repro lock") from None
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION:
        raise BadInputError(f"{where}: lock_version must be {LOCK_VERSION}", "run: mlos-repro lock")
    envs: dict[str, LockedEnvironment] = {}
    for name, entry in data.get("environments", {}).items():
        try:
            packages = tuple(
                LockedPackage(name=p["name"], version=p["version"], architecture=p["architecture"],
                              filename=p["filename"], sha256=p["sha256"], size=int(p["size"]),
                              stanza=p["stanza"])
                for p in entry["packages"])
            spec, spec_sha = entry["spec"], entry["spec_sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise BadInputError(f"{where}: environments.{name}: malformed entry ({e!r})",
                                "run: mlos-repro lock") from None
        for i, p in enumerate(packages):
            if not is_sha256(p.sha256):
                raise BadInputError(f"{where}: environments.{name}.packages[{i}] ({p.name}).sha256: "
                                    f"malformed digest {p.sha256!r}", "run: mlos-repro lock")
        envs[name] = LockedEnvironment(name=name, spec=spec, spec_sha256=spec_sha, packages=packages)
    return envs


def locked_environment(builder: BuilderConfig, name: str) -> tuple[Environment, LockedEnvironment]:
    """The environment `name` and its lock entry, refusing a lock that no longer fits the recipe."""
    env = builder.environments[name]
    lock_path = builder.path.with_name(LOCK_FILE)
    locked = read_lock(lock_path).get(name)
    if locked is None:
        raise BadInputError(f"{lock_path}: environment {name!r} is not locked",
                            f"run: mlos-repro lock {name} (where {env.mirror} is reachable)")
    if locked.spec_sha256 != env.spec_digest():
        raise BadInputError(
            f"{lock_path}: environment {name!r} is stale: {builder.path.name} changed since it was locked",
            "run: mlos-repro lock")
    return env, locked
