"""`mlos-repro store check` and `store gc`: a store's integrity and its size.

`check` re-hashes every blob of a store and checks every stage entry.

A store is an ordinary user-writable directory: a blob changed on disk after it was stored
(by a faulty disk, a tool run by hand, a hostile user) must never be built on or signed.
Builds and releases re-hash what they read (Store.materialize, Store.verify_blob); this checks
everything at once, and with repair=True removes what does not match, so that the next build
makes it again.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.digest import is_sha256, sha256_file
from mlos_repro.fsutil import NotRegularFile
from mlos_repro.store import OutputKind, Store


@dataclass
class CheckReport:
    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    corrupted: list[str] = field(default_factory=list)  # "HEX: what is wrong"
    broken_entries: list[str] = field(default_factory=list)  # "KEY: what is missing"
    removed: list[str] = field(default_factory=list)  # store paths removed by repair

    @property
    def ok(self) -> bool:
        return not self.corrupted and not self.broken_entries

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "blobs": self.blobs, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "corrupted": self.corrupted,
                "broken_entries": self.broken_entries, "removed": self.removed}


def check_store(store: Store, *, repair: bool = False, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Re-hash every blob (in parallel: hashlib releases the GIL) and check that every stage
    entry's outputs, trees and log are present and intact. With repair, remove corrupted
    blobs and the entries that need them."""
    start = time.monotonic()
    report = CheckReport()
    blob_dir = store.root / "blobs" / "sha256"
    names = sorted(e.name for e in os.scandir(blob_dir))
    bad: set[str] = set()

    def one(name: str) -> tuple[str, int, str | None]:
        path = blob_dir / name
        try:
            size = path.lstat().st_size
            if not is_sha256(name):
                return name, size, "not named by a sha256"
            actual = sha256_file(path, follow=False)
        except (OSError, NotRegularFile) as e:
            return name, 0, f"unreadable: {e}"
        return name, size, None if actual == name else f"content has sha256 {actual}"

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for done, (name, size, problem) in enumerate(pool.map(one, names), 1):
            report.blobs += 1
            report.bytes += size
            if problem is not None:
                report.corrupted.append(f"{name}: {problem}")
                bad.add(name)
            if progress is not None:
                progress(done, len(names))

    for key, missing in _entries_needing(store, bad):
        report.broken_entries.append(f"{key}: {missing}")
        if repair:
            (store.root / "stages" / f"{key}.json").unlink(missing_ok=True)
            report.removed.append(f"stages/{key}.json")
    if repair:
        for name in sorted(bad):
            (blob_dir / name).unlink(missing_ok=True)
            report.removed.append(f"blobs/sha256/{name}")
    report.seconds = time.monotonic() - start
    return report


def _entries_needing(store: Store, bad: set[str]) -> Iterator[tuple[str, str]]:
    """(entry key, what it lacks) for every stage entry that needs a missing or bad blob."""
    blob_dir = store.root / "blobs" / "sha256"

    def lacks(hexdigest: str) -> bool:
        return hexdigest in bad or not (blob_dir / hexdigest).is_file()

    for path in sorted((store.root / "stages").glob("*.json")):
        key = path.stem
        try:
            data = json.loads(path.read_bytes())
            outputs: dict[str, str] = data["outputs"]
            kinds: dict[str, str] = data["kinds"]
            needed = [(f"output {o!r}", d.removeprefix("sha256:")) for o, d in outputs.items()]
            needed.append(("its log", data["log"]))
            needed += [(f"member manifest of {o!r}", d) for o, d in data.get("members", {}).items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            yield key, f"unreadable entry ({e})"
            continue
        problem = next((f"{what} (blob {h})" for what, h in needed if lacks(h)), None)
        if problem is None:
            for o, d in outputs.items():
                if kinds.get(o) != OutputKind.TREE:
                    continue
                try:
                    files = [e["sha256"] for e in store.read_tree(d.removeprefix("sha256:"))
                             if e["type"] == "file"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    problem = f"tree of output {o!r} unreadable ({e})"
                    break
                missing = next((h for h in files if lacks(h)), None)
                if missing is not None:
                    problem = f"a file of tree output {o!r} (blob {missing})"
                    break
        if problem is not None:
            yield key, f"needs {problem}, missing or corrupted"


# A blob stored less than this long ago is never collected, whatever --keep-days says: it may
# belong to a build still running, whose stage entry is not written yet.
MIN_AGE = 3600.0
HEX = re.compile(rb"[0-9a-f]{64}")
JSON_LIMIT = 64 << 20  # larger blobs are not JSON the store wrote, and are not scanned


@dataclass
class GcReport:
    entries_removed: int = 0
    listings_removed: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    blobs_kept: int = 0
    bytes_kept: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"entries_removed": self.entries_removed, "listings_removed": self.listings_removed,
                "blobs_removed": self.blobs_removed, "bytes_freed": self.bytes_freed,
                "blobs_kept": self.blobs_kept, "bytes_kept": self.bytes_kept,
                "seconds": round(self.seconds, 3)}


def collect_garbage(store: Store, *, keep_days: float, pinned: Iterable[str] = (),
                    dry_run: bool = False) -> GcReport:
    """Remove stage entries and memos (listings/) not used for `keep_days`, then every blob
    not needed by what is kept, not in `pinned` (the locked .debs and pinned inputs of the
    recipes, which may not be downloadable again), not an assembled environment's tarball and
    not stored or used within `keep_days` (and never one younger than MIN_AGE).

    What is needed is found by following every sha256 named in a kept entry or memo, and in the
    JSON blobs those name (tree listings, member manifests), transitively: over-keeping is safe,
    a dangling reference would only make a cache miss."""
    start = time.monotonic()
    report = GcReport()
    now = time.time()
    cutoff = min(now - keep_days * 86400, now - MIN_AGE)
    blob_dir = store.root / "blobs" / "sha256"
    with store.lock("gc"):
        roots: set[str] = set(pinned)
        for sub, counter in (("stages", "entries_removed"), ("listings", "listings_removed")):
            for path in sorted((store.root / sub).glob("*.json")) if (store.root / sub).is_dir() else []:
                if path.stat().st_mtime < cutoff:
                    if not dry_run:
                        path.unlink(missing_ok=True)
                    setattr(report, counter, getattr(report, counter) + 1)
                else:
                    roots.update(h.decode() for h in HEX.findall(path.read_bytes()))
        envs = store.root / "envs"
        if envs.is_dir():
            roots.update(e.name for e in envs.iterdir() if is_sha256(e.name))
        keep = _reachable(blob_dir, roots)
        for entry in os.scandir(blob_dir):
            st = entry.stat(follow_symlinks=False)
            if entry.name in keep or st.st_mtime >= cutoff:
                report.blobs_kept += 1
                report.bytes_kept += st.st_size
                continue
            if not dry_run:
                os.unlink(entry.path)
            report.blobs_removed += 1
            report.bytes_freed += st.st_size
    report.seconds = time.monotonic() - start
    return report


def _reachable(blob_dir: Path, roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [h for h in roots if (blob_dir / h).is_file()]
    while todo:
        h = todo.pop()
        if h in seen:
            continue
        seen.add(h)
        path = blob_dir / h
        try:
            if path.stat().st_size > JSON_LIMIT:
                continue
            with path.open("rb") as f:
                if f.read(1) != b"{":
                    continue
                data = b"{" + f.read()
        except OSError:
            continue
        todo.extend(n for n in (m.decode() for m in HEX.findall(data))
                    if n not in seen and (blob_dir / n).is_file())
    return seen


def blob_paths(store: Store) -> list[Path]:
    """Every blob file, for comparisons with other tools (benchmarks/store.py)."""
    blob_dir = store.root / "blobs" / "sha256"
    return [blob_dir / e.name for e in sorted(os.scandir(blob_dir), key=lambda e: e.name)]
