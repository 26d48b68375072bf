"""The content-addressed store: blobs, directory trees, stage cache entries, logs.

Layout under the store root:

    blobs/sha256/HEX        immutable file contents (read-only)
    stages/KEY.json         a finished stage: output name -> digest, log digest
    envs/ENVDIGEST/root     assembled builder environments (see env/assemble.py)
    envs/by-lock/HEX        lock digest -> environment digest memo
    tmp/                    work directories; a crashed build's leftovers are swept
    locks/                  flock files so several builds share one store

Nothing becomes visible under blobs/, stages/ or envs/ until it is complete:
every write goes to tmp/ first and is renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.digest import canonical_json, sha256_bytes, sha256_file
from mlos_repro.errors import BadInputError, DigestMismatchError
from mlos_repro.fsutil import atomic_write

log = logging.getLogger(__name__)


class OutputKind:
    FILE = "file"
    EXECUTABLE = "executable"  # a file with an executable bit
    TREE = "tree"


def default_root() -> Path:
    if root := os.environ.get("MLOS_REPRO_STORE"):
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mlos-repro"


@dataclass(frozen=True, slots=True)
class StageEntry:
    key: str
    outputs: Mapping[str, str]  # output name -> "sha256:HEX" (of the file, or of a tree listing)
    kinds: Mapping[str, str]  # output name -> OutputKind
    log: str  # sha256 hex of the stage log
    members: Mapping[str, str] = field(default_factory=dict)  # output -> member manifest blob
    readers: str = ""  # digest of the readers' code that made the member manifests

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "outputs": dict(self.outputs), "kinds": dict(self.kinds),
                "log": self.log, "members": dict(self.members), "readers": self.readers}


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        for sub in ("blobs/sha256", "stages", "envs/by-lock", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._sweep_tmp()

    # -- temporary space ------------------------------------------------------

    def _sweep_tmp(self) -> None:
        """Remove work directories of builds that died (their owner pid is gone)."""
        for entry in (self.root / "tmp").iterdir():
            # Names are PURPOSE-PID-RANDOM (see tempdir); PURPOSE may itself contain '-'.
            parts = entry.name.rsplit("-", 2)
            pid = parts[1] if len(parts) == 3 else ""
            if pid.isdigit() and not _pid_alive(int(pid)):
                try:
                    _force_rmtree(entry)
                except OSError as e:  # e.g. a FUSE mount a killed verify left behind
                    log.warning("cannot remove %s from a dead build: %s", entry, e)

    @contextlib.contextmanager
    def tempdir(self, purpose: str) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=f"{purpose}-{os.getpid()}-", dir=self.root / "tmp"))
        try:
            yield path
        finally:
            _force_rmtree(path)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock shared by every process using this store."""
        with (self.root / "locks" / f"{name}.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- blobs ----------------------------------------------------------------

    def blob_path(self, hexdigest: str) -> Path:
        return self.root / "blobs" / "sha256" / hexdigest

    def has_blob(self, hexdigest: str) -> bool:
        return self.blob_path(hexdigest).is_file()

    def put_file(self, path: Path, expected: str | None = None) -> str:
        """Copy `path` into the store; refuse it if `expected` is given and differs."""
        with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as tmp, \
                path.open("rb") as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        return self._adopt(Path(tmp.name), expected, what=str(path))

    def put_bytes(self, data: bytes) -> str:
        with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as tmp:
            tmp.write(data)
        return self._adopt(Path(tmp.name), None, what="data")

    def adopt_file(self, tmp: Path, expected: str | None = None, what: str = "") -> str:
        """Move a file already inside tmp/ into the store (no copy)."""
        return self._adopt(tmp, expected, what or str(tmp))

    def _adopt(self, tmp: Path, expected: str | None, what: str) -> str:
        digest = sha256_file(tmp)
        if expected is not None and digest != expected:
            tmp.unlink()
            raise DigestMismatchError(
                f"{what}: sha256 is {digest}, but {expected} was pinned; refused, not stored",
                "the download is corrupt or the pin is wrong; check the source and re-pin",
            )
        dest = self.blob_path(digest)
        if dest.exists():
            tmp.unlink()
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        return digest

    def verify_blob(self, hexdigest: str, what: str) -> Path:
        """The blob's path after re-hashing it; a corrupted blob is removed and refused."""
        path = self.blob_path(hexdigest)
        if not path.is_file():
            raise BadInputError(f"{what} (sha256 {hexdigest}) is not in the store {self.root}",
                                "run: mlos-repro fetch")
        actual = sha256_file(path)
        if actual != hexdigest:
            path.unlink()
            raise DigestMismatchError(
                f"{what}: the stored copy is corrupted (sha256 {actual}, expected {hexdigest});"
                " it was removed from the store",
                "run: mlos-repro fetch",
            )
        return path

    # -- trees: a directory as a blob listing its entries ---------------------------

    def put_tree(self, directory: Path, *, normalise_modes: bool = False,
                 skip: frozenset[str] = frozenset()) -> str:
        """Store a directory: every file as a blob plus a canonical listing. Returns its digest.

        normalise_modes keeps only the executable bit (0755/0644), for checkouts whose modes
        depend on the user's umask; entries named in skip (and what is below them) are left out.
        """
        entries: list[dict[str, Any]] = []
        for path in sorted(_walk(directory, skip), key=lambda p: p.relative_to(directory).as_posix()):
            rel = path.relative_to(directory).as_posix()
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if normalise_modes:
                mode = 0o755 if mode & 0o111 or stat.S_ISDIR(st.st_mode) else 0o644
            if stat.S_ISLNK(st.st_mode):
                entries.append({"path": rel, "type": "symlink", "target": os.readlink(path)})
            elif stat.S_ISDIR(st.st_mode):
                entries.append({"path": rel, "type": "dir", "mode": mode})
            elif stat.S_ISREG(st.st_mode):
                entries.append({"path": rel, "type": "file", "mode": mode,
                                "sha256": self.put_file(path)})
            else:
                raise BadInputError(f"{path}: only files, directories and symlinks can be stored")
        return self.put_bytes(canonical_json({"tree": entries}))

    def read_tree(self, hexdigest: str) -> list[dict[str, Any]]:
        data = json.loads(self.blob_path(hexdigest).read_bytes())
        entries: list[dict[str, Any]] = data["tree"]
        return entries

    def materialize(self, digest: str, kind: str, dest: Path) -> None:
        """Recreate an output (a file, or a directory from its tree listing) at dest."""
        hexdigest = digest.removeprefix("sha256:")
        if kind == OutputKind.TREE:
            dest.mkdir(parents=True, exist_ok=True)
            dirs: list[tuple[Path, int]] = []
            for e in self.read_tree(hexdigest):
                target = dest / e["path"]
                if e["type"] == "dir":
                    target.mkdir(exist_ok=True)
                    dirs.append((target, e["mode"]))
                elif e["type"] == "symlink":
                    target.symlink_to(e["target"])
                else:
                    shutil.copyfile(self.blob_path(e["sha256"]), target)
                    os.chmod(target, e["mode"])
            for d, mode in reversed(dirs):
                os.chmod(d, mode)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blob_path(hexdigest), dest)
            os.chmod(dest, 0o755 if kind == OutputKind.EXECUTABLE else 0o644)

    def put_output(self, path: Path) -> tuple[str, str]:
        """Store a stage output, file or directory; returns ("sha256:HEX", kind)."""
        if path.is_symlink():
            # Following it would read whatever host file it names.
            raise BadInputError(f"output {path.name!r} is a symlink; declare a file or directory")
        if path.is_dir():
            return "sha256:" + self.put_tree(path), OutputKind.TREE
        kind = OutputKind.EXECUTABLE if path.stat().st_mode & 0o111 else OutputKind.FILE
        return "sha256:" + self.put_file(path), kind

    # -- stage cache ------------------------------------------------------------

    def get_stage(self, key: str) -> StageEntry | None:
        path = self.root / "stages" / f"{key}.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        entry = StageEntry(key=data["key"], outputs=data["outputs"], kinds=data["kinds"],
                           log=data["log"], members=data.get("members", {}),
                           readers=data.get("readers", ""))
        # A cache entry is only as good as its blobs: a missing blob means a miss.
        for digest in entry.outputs.values():
            if not self.has_blob(digest.removeprefix("sha256:")):
                return None
        return entry

    def put_stage(self, entry: StageEntry) -> None:
        self.write_atomic(self.root / "stages" / f"{entry.key}.json", canonical_json(entry.to_json()))

    def _listing_path(self, key: str) -> Path:
        if not key.replace("-", "").isalnum():
            raise ValueError(f"listing key {key!r}")
        return self.root / "listings" / f"{key}.json"

    def get_listing(self, key: str) -> dict[str, Any] | None:
        """A member listing (manifest node) recorded under `key` (see verify.manifest.Listings)."""
        path = self._listing_path(key)
        try:
            node: dict[str, Any] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return node

    def put_listing(self, key: str, node: dict[str, Any]) -> None:
        path = self._listing_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write_atomic(path, canonical_json(node))

    def write_atomic(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, tmp_dir=self.root / "tmp")

    def log_path(self, entry_log: str) -> Path:
        return self.blob_path(entry_log)


def digest_of_output_set(outputs: Mapping[str, str]) -> str:
    """The identity of a stage's outputs, used by dependants' cache keys."""
    return sha256_bytes(canonical_json(dict(outputs)))


def _walk(directory: Path, skip: frozenset[str] = frozenset()) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in dirs + [f for f in files if f not in skip]:
            yield Path(root) / name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _force_rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() or path.is_symlink():
        path.unlink()
        return

    def onerror(func: Any, p: str, exc: Any) -> None:
        # Read-only directories (e.g. materialised inputs) need write access to empty them.
        parent = os.path.dirname(p)
        os.chmod(parent, 0o755)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o755)
        func(p)

    shutil.rmtree(path, onerror=onerror)
