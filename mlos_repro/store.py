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
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mlos_repro.digest import canonical_json, sha256_bytes, sha256_file
from mlos_repro.errors import (
    BadInputError,
    DigestMismatchError,
    EnvironmentProblem,
    MlosReproError,
    StageFailedError,
)
from mlos_repro.fsutil import (
    NotRegularFile,
    TreeTooDeep,
    atomic_write,
    claim,
    file_kind,
    open_regular,
    remove_tree,
    walk_tree,
)

log = logging.getLogger(__name__)

# The rules by which a stage's outputs are stored (what is refused, which mode bits are kept).
# Part of every cache key: an entry stored under older rules is never a hit.
OUTPUT_RULES = 2
COPY_CHUNK = 1 << 20
STORE_REPAIR_HINT = ("run `mlos-repro store check --repair` to find and remove every changed blob, "
                     "then build again (the store makes what it lacks)")
# Mode bits a stored tree keeps: rwx for the owner, r-x for the rest; no setuid/setgid/sticky.
SAFE_MODE_BITS = 0o755


class SpecialFile(StageFailedError):
    """A stage output that is not a regular file, directory or symlink inside a directory, or
    that is reached through a symlink, or nests too deep: refused by name (exit 4)."""


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

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> StageEntry:
        return StageEntry(key=data["key"], outputs=data["outputs"], kinds=data["kinds"], log=data["log"],
                          members=data.get("members", {}), readers=data.get("readers", ""))


STORE_HINT = "name a store you can write with --store or MLOS_REPRO_STORE, or run as its owner"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        try:
            for sub in ("blobs/sha256", "stages", "envs/by-lock", "tmp", "locks", "notes"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            writable = os.access(self.root / "tmp", os.W_OK)
        except (NotADirectoryError, FileExistsError):
            raise BadInputError(f"the store {self.root} is not a directory (or holds a file where a "
                                "directory belongs)", "name a store directory with --store or "
                                "MLOS_REPRO_STORE") from None
        except OSError as e:
            problem = EnvironmentProblem.from_os_error(e, f"the store {self.root}")
            if problem is None:
                raise
            raise EnvironmentProblem(problem.message, STORE_HINT) from None
        if not writable:
            raise EnvironmentProblem(f"cannot write the store {self.root}: permission denied", STORE_HINT)
        self._sweep_tmp()

    # -- notes for the next run: how long things took, what a stage was last built from ----

    def _note(self, kind: str, name: str) -> Path:
        return self.root / "notes" / kind / hashlib.sha256(name.encode()).hexdigest()[:32]

    def recall(self, kind: str, name: str) -> bytes | None:
        try:
            return self._note(kind, name).read_bytes()
        except OSError:
            return None

    def remember(self, kind: str, name: str, data: bytes) -> None:
        """Keep a note for the next run (an estimate, an explanation); never fails a build."""
        try:
            note = self._note(kind, name)
            note.parent.mkdir(parents=True, exist_ok=True)
            self.write_atomic(note, data)
        except OSError as e:
            log.debug("cannot keep the note %s/%s: %s", kind, name, e)

    def last_seconds(self, name: str) -> float | None:
        """How long `name` (a stage's build, an environment's assembly) took the last time."""
        try:
            return float(self.recall("timings", name) or b"")
        except ValueError:
            return None

    def record_seconds(self, name: str, seconds: float) -> None:
        self.remember("timings", name, f"{seconds:.3f}\n".encode())

    # -- temporary space ------------------------------------------------------

    def _sweep_tmp(self) -> None:
        """Remove what builds that died left in tmp/: every entry no live process holds locked.

        A work directory or temporary file is flocked for as long as it is in use (tempdir,
        temp_file, fsutil.atomic_write), so liveness holds across containers and hosts that
        share the store, where a PID means nothing. A creator locks what it made and then checks
        that it is still there (claim), so a sweep between the two only makes it create anew.
        The sweep never fails on what it sweeps; what it cannot remove is named in a warning
        and tried again next time."""
        for entry in (self.root / "tmp").iterdir():
            try:
                with _unlocked(entry) as dead:
                    if dead:
                        _unmount_below(entry)
                        remove_tree(entry)
            except OSError as e:
                log.warning("cannot remove %s, left by a build that stopped: %s", entry, e)

    @contextlib.contextmanager
    def tempdir(self, purpose: str) -> Iterator[Path]:
        """A fresh work directory under tmp/, locked while in use and removed afterwards."""
        while True:
            path = Path(tempfile.mkdtemp(prefix=f"{purpose}-{os.getpid()}-", dir=self.root / "tmp"))
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # swept before it was locked: make another
            if claim(fd, path):
                break
            os.close(fd)
        try:
            yield path
        finally:
            try:
                _unmount_below(path)
                remove_tree(path)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def temp_file(self, purpose: str = "tmp") -> Iterator[tuple[Path, BinaryIO]]:
        """A new file under tmp/, locked while open; it is removed unless adopted (renamed into
        blobs/) before the block ends."""
        while True:
            fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix=f"{purpose}-{os.getpid()}-")
            if claim(fd, Path(name)):
                break
            os.close(fd)
        path = Path(name)
        try:
            with os.fdopen(fd, "w+b") as f:
                yield path, f
        finally:
            path.unlink(missing_ok=True)

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

    def put_file(self, path: Path, expected: str | None = None, *, follow: bool = True) -> str:
        """Copy the regular file `path` into the store; refuse it if `expected` is given and
        differs. Unless `follow`, a symlink at `path` is refused rather than read through."""
        try:
            src = os.fdopen(open_regular(path, follow=follow), "rb")
        except NotRegularFile as e:
            raise BadInputError(str(e), "only regular files can be stored") from None
        with src, self.temp_file() as (tmp, f):
            shutil.copyfileobj(src, f, 1 << 20)
            f.flush()
            return self._adopt(tmp, expected, what=str(path))

    def put_bytes(self, data: bytes) -> str:
        with self.temp_file() as (tmp, f):
            f.write(data)
            f.flush()
            return self._adopt(tmp, None, what="data")

    def adopt_file(self, tmp: Path, expected: str | None = None, what: str = "") -> str:
        """Move a file already inside tmp/ into the store (no copy)."""
        return self._adopt(tmp, expected, what or str(tmp))

    def _adopt(self, tmp: Path, expected: str | None, what: str) -> str:
        digest = sha256_file(tmp)
        if expected is not None and digest != expected:
            tmp.unlink(missing_ok=True)
            raise DigestMismatchError(
                f"{what}: sha256 is {digest}, but {expected} was pinned; refused, not stored",
                "the download is corrupt or the pin is wrong; check the source and re-pin",
            )
        dest = self.blob_path(digest)
        if dest.exists():
            tmp.unlink(missing_ok=True)
            _touch(dest)  # stored again: recent, for `store gc`
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
                 skip: frozenset[str] = frozenset(), what: str = "", memo: bool = False) -> str:
        """Store a directory: every file as a blob plus a canonical listing. Returns its digest.

        Nothing below `directory` is followed: a symlink is stored as its target's text. Modes
        keep no setuid, setgid or sticky bit and no write bit for group or others (a loose file
        in out/ or a release must not hand out privileges); normalise_modes keeps only the
        executable bit (0755/0644), for checkouts whose modes depend on the user's umask.
        Entries named in skip (and what is below them) are left out. A FIFO, device or socket
        is refused by name (SpecialFile), and so is a tree nested deeper than MAX_TREE_DEPTH.

        With memo (a source checkout hashed on every build), a tree whose every entry has the
        same inode, size, mtime and ctime as the last time is not read again (as git's index
        does: ctime changes with any write and cannot be set back).
        """
        entries: list[dict[str, Any]] = []
        try:
            listing = sorted(walk_tree(directory, skip=skip))
        except TreeTooDeep as e:
            raise SpecialFile(f"{what or directory}: {e}") from None
        if memo:
            seen = canonical_json([str(directory.absolute()), normalise_modes, sorted(skip)]
                                  + [[rel, st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                      st.st_ctime_ns] for rel, st in listing])
            known = (self.recall("trees", sha256_bytes(seen)) or b"").decode().strip()
            if known and self.has_tree(known):
                return known
            digest = self.put_tree(directory, normalise_modes=normalise_modes, skip=skip, what=what)
            self.remember("trees", sha256_bytes(seen), digest.encode())
            return digest
        for rel, st in listing:
            path = directory / rel
            mode = stat.S_IMODE(st.st_mode) & SAFE_MODE_BITS
            if normalise_modes:
                mode = 0o755 if mode & 0o111 or stat.S_ISDIR(st.st_mode) else 0o644
            if stat.S_ISLNK(st.st_mode):
                entries.append({"path": rel, "type": "symlink", "target": os.readlink(path)})
            elif stat.S_ISDIR(st.st_mode):
                entries.append({"path": rel, "type": "dir", "mode": mode})
            elif stat.S_ISREG(st.st_mode):
                entries.append({"path": rel, "type": "file", "mode": mode,
                                "sha256": self.put_file(path, follow=False)})
            else:
                raise SpecialFile(f"{what or directory}: {rel} is a {file_kind(st.st_mode)}: only "
                                  "regular files, directories and symlinks can be stored")
        return self.put_bytes(canonical_json({"tree": entries}))

    def has_tree(self, hexdigest: str) -> bool:
        """The store holds the tree: its listing and every file's blob."""
        try:
            return self.has_blob(hexdigest) and all(
                self.has_blob(e["sha256"]) for e in self.read_tree(hexdigest) if e["type"] == "file")
        except (ValueError, KeyError, TypeError, MlosReproError):
            return False

    def read_tree(self, hexdigest: str) -> list[dict[str, Any]]:
        data = json.loads(self.read_blob(hexdigest, "a tree listing"))
        entries: list[dict[str, Any]] = data["tree"]
        return entries

    def read_blob(self, hexdigest: str, what: str) -> bytes:
        """A small blob's bytes, re-hashed (a mismatch is refused and the blob removed)."""
        data = self.blob_path(hexdigest).read_bytes()
        if (actual := sha256_bytes(data)) != hexdigest:
            self._corrupted(hexdigest, actual, what)
        return data

    def copy_blob(self, hexdigest: str, dest: Path, what: str = "") -> None:
        """Copy a blob to `dest`, re-hashing it on the way: a store is a user-writable
        directory, and a blob changed after it was stored must never be built on, written
        out or signed. A mismatch removes `dest` and the blob, and is refused by name."""
        h = hashlib.sha256()
        try:
            with os.fdopen(open_regular(self.blob_path(hexdigest)), "rb") as src, dest.open("wb") as out:
                while chunk := src.read(COPY_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except NotRegularFile as e:
            dest.unlink(missing_ok=True)
            raise DigestMismatchError(f"{what or 'blob'} sha256:{hexdigest}: {e}",
                                      STORE_REPAIR_HINT) from None
        if h.hexdigest() != hexdigest:
            dest.unlink(missing_ok=True)
            self._corrupted(hexdigest, h.hexdigest(), what or str(dest))

    def _corrupted(self, hexdigest: str, actual: str, what: str) -> None:
        self.blob_path(hexdigest).unlink(missing_ok=True)
        raise DigestMismatchError(
            f"{what}: the store's blob sha256:{hexdigest} now has sha256 {actual}: it was "
            "changed after it was stored; it was removed from the store and nothing was written "
            "from it", STORE_REPAIR_HINT)

    def materialize(self, digest: str, kind: str, dest: Path, earlier: Path | None = None) -> None:
        """Recreate an output (a file, or a directory from its tree listing) at dest; every
        blob is re-hashed as it is copied (copy_blob). `earlier`: where an earlier copy of the
        same output may be (OUT before this build): a file there with exactly the bytes wanted
        is hard-linked instead of written again."""
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
                    self._place(e["sha256"], target, f"{dest.name}/{e['path']}",
                                earlier / e["path"] if earlier is not None else None)
                    os.chmod(target, e["mode"])
            for d, mode in reversed(dirs):
                os.chmod(d, mode)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._place(hexdigest, dest, dest.name, earlier)
            os.chmod(dest, 0o755 if kind == OutputKind.EXECUTABLE else 0o644)

    def _place(self, hexdigest: str, dest: Path, what: str, earlier: Path | None) -> None:
        """copy_blob, or a hard link to `earlier` when it is a regular file (never through a
        symlink) whose bytes hash to `hexdigest` now: reading what is there costs less than
        writing it again, and what is linked was checked as a copy would be."""
        if earlier is not None:
            try:
                if sha256_file(earlier, follow=False) == hexdigest:
                    os.link(earlier, dest, follow_symlinks=False)
                    return
            except (OSError, NotRegularFile):
                pass  # not there, not a file, or not linkable: copied from the store
        self.copy_blob(hexdigest, dest, what)

    def put_output(self, out: Path, name: str) -> tuple[str, str]:
        """Store the output `name` of a stage whose /out is `out`; returns ("sha256:HEX", kind).

        `name` is resolved inside `out` one component at a time, never through a symlink: a
        stage that links /out/etc to /etc must not get the host's /etc/shadow stored. (Nothing
        runs in the sandbox any more when this is called, so what lstat sees stays true.)
        SpecialFile names what is refused."""
        path = out
        parts = name.split("/")
        for i, part in enumerate(parts):
            path = path / part
            shown = "/".join(parts[:i + 1])
            try:
                st = path.lstat()
            except FileNotFoundError:
                raise SpecialFile(f"output {name!r}: /out/{shown} does not exist") from None
            if stat.S_ISLNK(st.st_mode):
                raise SpecialFile(
                    f"output {name!r}: /out/{shown} is a symbolic link (to {os.readlink(path)!r}); "
                    "outputs are read inside /out and never through a link: declare the file "
                    "or directory itself")
            last = i == len(parts) - 1
            if not last and not stat.S_ISDIR(st.st_mode):
                raise SpecialFile(f"output {name!r}: /out/{shown} is a {file_kind(st.st_mode)}, "
                                  "not a directory")
        if stat.S_ISDIR(st.st_mode):
            return "sha256:" + self.put_tree(path, what=f"output {name!r}"), OutputKind.TREE
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFile(f"output {name!r} is a {file_kind(st.st_mode)}: outputs are regular "
                              "files, directories and symlinks inside a directory")
        kind = OutputKind.EXECUTABLE if st.st_mode & 0o111 else OutputKind.FILE
        return "sha256:" + self.put_file(path, follow=False), kind

    # -- stage cache ------------------------------------------------------------

    def get_stage(self, key: str) -> StageEntry | None:
        path = self.root / "stages" / f"{key}.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        entry = StageEntry.from_json(data)
        # A cache entry is only as good as its blobs: a missing blob means a miss.
        for digest in entry.outputs.values():
            if not self.has_blob(digest.removeprefix("sha256:")):
                return None
        _touch(path)  # used: recent, for `store gc`
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
        _touch(path)
        return node

    def put_listing(self, key: str, node: dict[str, Any]) -> None:
        path = self._listing_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write_atomic(path, canonical_json(node))

    def write_atomic(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, tmp_dir=self.root / "tmp")

    def log_path(self, entry_log: str) -> Path:
        return self.blob_path(entry_log)


def output_files(store: Store, stage: str, entry: StageEntry) -> dict[str, str]:
    """{STAGE/OUTPUT[/path]: sha256} of every file a stage made, as SHA256SUMS and in-toto
    products name them; a symlink inside a tree counts as a file holding its target text."""
    files: dict[str, str] = {}
    for output, digest in sorted(entry.outputs.items()):
        hexdigest = digest.removeprefix("sha256:")
        if entry.kinds[output] != OutputKind.TREE:
            files[f"{stage}/{output}"] = hexdigest
            continue
        for e in store.read_tree(hexdigest):
            if e["type"] == "file":
                files[f"{stage}/{output}/{e['path']}"] = e["sha256"]
            elif e["type"] == "symlink":
                files[f"{stage}/{output}/{e['path']}"] = sha256_bytes(e["target"].encode())
    return files


def artifact_files(sums: Mapping[str, str], artifact: str,
                   leave_out: frozenset[str] = frozenset()) -> dict[str, str]:
    """The files of artifact STAGE/OUTPUT (a file, or a tree's files) from a {name: sha256}
    listing named as SHA256SUMS names them, without the names in `leave_out`."""
    return {k: v for k, v in sums.items()
            if (k == artifact or k.startswith(artifact + "/")) and k not in leave_out}


def digest_of_output_set(outputs: Mapping[str, str]) -> str:
    """The identity of a stage's outputs, used by dependants' cache keys."""
    return sha256_bytes(canonical_json(dict(outputs)))


@contextlib.contextmanager
def _unlocked(entry: Path) -> Iterator[bool]:
    """Whether no process holds `entry` (a work directory or temporary file) locked; while the
    block runs this process holds the lock, so two sweeps never remove the same entry."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTCONN, errno.EACCES):
            yield True  # a symlink, socket or dead mount: nothing can hold it
            return
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _unmount_below(path: Path) -> None:
    """Lazily unmount whatever a killed build left mounted below `path` (a disorderfs view or a
    fuse2fs image), deepest first, so the directory can be removed."""
    prefix = str(path.absolute()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = []
    for line in lines:
        fields = line.split(" ")
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point.startswith(prefix):
            points.append((point, fields[fields.index("-") + 1]))
    for point, fstype in sorted(points, reverse=True):
        tools = [["fusermount3", "-u", "-z", point]] if fstype.startswith("fuse") else []
        for argv in [*tools, ["umount", "-l", point]]:
            if shutil.which(argv[0]) and subprocess.run(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    check=False).returncode == 0:
                break


def _touch(path: Path) -> None:
    """Mark a blob or entry as used now; `store gc` keeps what was used recently."""
    with contextlib.suppress(OSError):
        os.utime(path)
