"""ext4 images, read through fuse2fs (no root needed, no copy)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from mlos_repro import run
from mlos_repro.errors import MissingToolError
from mlos_repro.inspect.members import Member, meta_member, safe_name, walk_members

MOUNT_PREFIX = "mlos-ext4-"


def sweep_mounts() -> None:
    """Unmount and remove the mount points of readers that died (kill -9) before cleaning up:
    their names carry the reader's pid."""
    for mnt in Path(tempfile.gettempdir()).glob(f"{MOUNT_PREFIX}*-*"):
        pid = mnt.name.removeprefix(MOUNT_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        run.run(["fusermount3", "-u", "-z", str(mnt)], check=False, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        with contextlib.suppress(OSError):
            mnt.rmdir()


class Ext4Reader:
    """ext4 through fuse2fs, read-only, no root needed; UUID and hash seed are meta members."""

    kind = "ext4"

    @contextlib.contextmanager
    def _mounted(self, path: Path) -> Iterator[Path]:
        run.require("fuse2fs")
        sweep_mounts()
        mnt = Path(tempfile.mkdtemp(prefix=f"{MOUNT_PREFIX}{os.getpid()}-"))
        proc = run.run(["fuse2fs", str(path), str(mnt), "-o", "ro,fakeroot"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            mnt.rmdir()
            raise MissingToolError("fuse2fs", "fuse2fs") if shutil.which("fuse2fs") is None else \
                OSError(f"fuse2fs could not mount {path}: {proc.stderr.decode(errors='replace')}")
        try:
            yield mnt
        finally:
            run.run(["fusermount3", "-u", str(mnt)], check=False, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def members(self, path: Path) -> Iterator[Member]:
        with path.open("rb") as f:
            f.seek(1024)
            sb = f.read(1024)
        yield meta_member("(filesystem uuid)", str(uuid.UUID(bytes=sb[104:120])))
        yield meta_member("(volume label)", sb[120:136].rstrip(b"\0").decode(errors="replace"))
        yield meta_member("(htree hash seed)", str(uuid.UUID(bytes=sb[236:252])))
        with self._mounted(path) as root:
            for member in walk_members(root, exact=True):
                if member.name.split("/", 1)[0] != "lost+found":
                    yield member

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found = {}
        with self._mounted(path) as root:
            for index, name in enumerate(sorted(names)):
                if (root / name).is_file():
                    target = dest / safe_name(index, name)
                    shutil.copyfile(root / name, target)
                    found[name] = target
        return found
