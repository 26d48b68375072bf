"""The content-addressed store: refuses wrong digests, detects corruption, never exposes partials."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from mlos_repro.errors import DigestMismatchError
from mlos_repro.fsutil import MAX_TREE_DEPTH
from mlos_repro.store import OutputKind, SpecialFile, StageEntry, Store


def test_blob_round_trip_and_mismatch_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    digest = store.put_file(f)
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.blob_path(digest).read_bytes() == b"hello"
    assert not os.access(store.blob_path(digest), os.W_OK) or os.geteuid() == 0
    assert store.blob_path(digest).stat().st_mode & 0o222 == 0

    f.write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError, match="refused, not stored"):
        store.put_file(f, expected=digest.replace(digest[0], "0" if digest[0] != "0" else "1"))
    assert not store.has_blob(hashlib.sha256(b"tampered").hexdigest())
    assert list((store.root / "tmp").iterdir()) == []


def test_corrupted_blob_is_detected_and_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = store.put_bytes(b"payload")
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"payloaX")
    with pytest.raises(DigestMismatchError, match="corrupted"):
        store.verify_blob(digest, "pkg_1.0.deb")
    assert not path.exists()


def test_tree_round_trip_keeps_modes_and_symlinks(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "tool").write_text("#!/bin/sh\n")
    os.chmod(src / "sub" / "tool", 0o750)
    (src / "data").write_text("x")
    (src / "link").symlink_to("sub/tool")
    digest, kind = store.put_output(tmp_path, "src")
    assert kind == OutputKind.TREE
    dest = tmp_path / "dest"
    store.materialize(digest, kind, dest)
    assert (dest / "sub" / "tool").stat().st_mode & 0o777 == 0o750
    assert os.readlink(dest / "link") == "sub/tool"
    assert (dest / "data").read_text() == "x"
    # The digest is a function of content only.
    assert store.put_output(tmp_path, "dest")[0] == digest
    (dest / "data").write_text("y")
    assert store.put_output(tmp_path, "dest")[0] != digest


def test_symlink_output_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").symlink_to("/etc/passwd")
    with pytest.raises(SpecialFile, match="symbolic link"):
        store.put_output(tmp_path / "out", "x")


def test_stage_entry_with_missing_blob_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = store.put_bytes(b"out")
    store.put_stage(StageEntry("k" * 64, {"o": f"sha256:{digest}"}, {"o": "file"}, digest))
    assert store.get_stage("k" * 64) is not None
    os.unlink(store.blob_path(digest))
    assert store.get_stage("k" * 64) is None


def nest(top: Path, depth: int) -> None:
    """top/d/d/…/d, `depth` levels, made one descriptor at a time (no recursion, no long paths)."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)


def test_leftovers_of_dead_builds_are_swept(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    tmp = store.root / "tmp"
    dead = tmp / "stage-1-abc"
    dead.mkdir()
    (dead / "partial").write_text("half")
    nest(dead / "deep", 1100)  # deeper than Python's recursion limit
    os.chmod(dead / "deep", 0o500)
    partial_blob = tmp / "tmpabc123"  # a blob copy a killed build never finished
    partial_blob.write_bytes(b"x" * 4096)
    with store.tempdir("stage-alive") as alive, store.temp_file() as (alive_file, _):
        Store(tmp_path / "store")
        assert alive.exists() and alive_file.exists(), "a locked work dir or file was swept"
    assert not dead.exists() and not partial_blob.exists()


def test_what_a_sweep_removes_before_it_is_locked_is_made_again(tmp_path: Path) -> None:
    """A sweep may run between a work dir's creation and its lock: the creator then makes
    another, and never works in a directory that is gone."""
    store = Store(tmp_path / "store")
    real = tempfile.mkdtemp
    swept: list[str] = []

    def mkdtemp_then_sweep(*a: Any, **kw: Any) -> str:
        made: str = real(*a, **kw)
        if not swept:
            Store(tmp_path / "store")  # another process's sweep, right now
            swept.append(made)
        return made

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkdtemp", mkdtemp_then_sweep)
        with store.tempdir("stage-race") as work:
            assert swept and not Path(swept[0]).exists() and work != Path(swept[0])
            (work / "f").write_text("x")  # it is there and ours
            Store(tmp_path / "store")
            assert work.exists()


def test_a_sweep_never_fails_on_what_it_cannot_remove(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "store")
    stuck = store.root / "tmp" / "stage-1-stuck"
    stuck.mkdir()
    (stuck / "f").write_text("x")
    real = os.rmdir

    def refuse(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).endswith("stage-1-stuck"):
            raise OSError(16, "Device or resource busy", str(path))
        real(path, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "rmdir", refuse)
        Store(tmp_path / "store")  # no exception
    assert "stage-1-stuck" in caplog.text
    Store(tmp_path / "store")
    assert not stuck.exists()


def test_tree_outputs_lose_setuid_setgid_sticky_and_world_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    out = tmp_path / "out"
    (out / "t" / "pub").mkdir(parents=True)
    (out / "t" / "su").write_bytes(b"\x7fELF")
    os.chmod(out / "t" / "su", 0o4755)
    os.chmod(out / "t" / "pub", 0o1777)
    (out / "t" / "sg").write_text("x")
    os.chmod(out / "t" / "sg", 0o2666)
    digest, kind = store.put_output(out, "t")
    dest = tmp_path / "dest"
    store.materialize(digest, kind, dest)
    assert stat.S_IMODE((dest / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "pub").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sg").stat().st_mode) == 0o644


@pytest.mark.parametrize("make", ["fifo", "socket", "in-tree-fifo"])
def test_special_files_are_refused_by_name(tmp_path: Path, make: str) -> None:
    store = Store(tmp_path / "store")
    out = tmp_path / "out"
    (out / "t").mkdir(parents=True)
    if make == "fifo":
        os.mkfifo(out / "o")
        name, shown = "o", "FIFO"
    elif make == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(out / "o"))
        name, shown = "o", "socket"
    else:
        os.mkfifo(out / "t" / "pipe")
        name, shown = "t", "output .t.: pipe is a FIFO"
    with pytest.raises(SpecialFile, match=shown):
        store.put_output(out, name)
    assert not [p for p in (store.root / "tmp").iterdir()], "a refused output left a partial file"


@pytest.mark.root  # making a device node needs root, as CI runs
def test_a_device_output_is_refused_not_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    os.mknod(out / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    with pytest.raises(SpecialFile, match="output 'zero' is a character device"):
        store.put_output(out, "zero")
    assert not [p for p in (store.root / "tmp").iterdir()]


def test_an_output_through_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    (out / "etc").symlink_to("/etc")
    with pytest.raises(SpecialFile, match=r"/out/etc is a symbolic link \(to '/etc'\)"):
        store.put_output(out, "etc/passwd")
    assert not any(store.root.joinpath("blobs", "sha256").iterdir())


def test_a_tree_nested_too_deep_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    nest(tmp_path / "out" / "t", MAX_TREE_DEPTH + 5)
    with pytest.raises(SpecialFile, match=f"output 't': directories nest more than {MAX_TREE_DEPTH} deep \\(at d/d/"):
        store.put_output(tmp_path / "out", "t")


def _corrupt(store: Store, hexdigest: str, data: bytes = b"changed") -> None:
    path = store.blob_path(hexdigest)
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_a_blob_changed_after_it_was_stored_is_never_copied_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    (tmp_path / "out" / "t").mkdir(parents=True)
    (tmp_path / "out" / "t" / "f").write_text("built")
    digest, kind = store.put_output(tmp_path / "out", "t")
    f_blob = store.read_tree(digest.removeprefix("sha256:"))[0]["sha256"]
    _corrupt(store, f_blob)
    with pytest.raises(DigestMismatchError, match=f"blob sha256:{f_blob} now has sha256") as info:
        store.materialize(digest, kind, tmp_path / "dest")
    assert info.value.hint is not None and "store check --repair" in info.value.hint
    assert not (tmp_path / "dest" / "f").exists() and not store.blob_path(f_blob).exists()


def test_store_check_names_and_repairs_what_changed(tmp_path: Path) -> None:
    from mlos_repro.store_admin import check_store

    store = Store(tmp_path / "store")
    (tmp_path / "out" / "t").mkdir(parents=True)
    (tmp_path / "out" / "t" / "f").write_text("tree file")
    (tmp_path / "out" / "single").write_text("single")
    tree, _ = store.put_output(tmp_path / "out", "t")
    single, _ = store.put_output(tmp_path / "out", "single")
    log = store.put_bytes(b"log")
    store.put_stage(StageEntry("a" * 64, {"t": tree}, {"t": OutputKind.TREE}, log))
    store.put_stage(StageEntry("b" * 64, {"single": single}, {"single": OutputKind.FILE}, log))
    intact = check_store(store)
    assert intact.ok and intact.blobs == 4  # tree file, tree listing, single file, log

    f_blob = store.read_tree(tree.removeprefix("sha256:"))[0]["sha256"]
    _corrupt(store, f_blob)
    (store.root / "blobs" / "sha256" / "stray").write_text("x")
    found = check_store(store)
    assert not found.ok and not found.removed
    assert sorted(c.split(":")[0] for c in found.corrupted) == sorted([f_blob, "stray"])
    assert [e.split(":")[0] for e in found.broken_entries] == ["a" * 64]
    assert "a file of tree output 't'" in found.broken_entries[0]

    repaired = check_store(store, repair=True)
    assert set(repaired.removed) == {f"stages/{'a' * 64}.json", f"blobs/sha256/{f_blob}",
                                     "blobs/sha256/stray"}
    assert store.get_stage("a" * 64) is None and store.get_stage("b" * 64) is not None
    assert check_store(store).ok


def test_gc_removes_only_what_nothing_recent_needs(tmp_path: Path) -> None:
    from mlos_repro.store_admin import collect_garbage

    store = Store(tmp_path / "store")
    old = time.time() - 40 * 86400

    def age(path: Path) -> None:
        os.utime(path, (old, old), follow_symlinks=False)

    def entry(key: str, content: str) -> tuple[str, str]:
        (tmp_path / key / "t").mkdir(parents=True)
        (tmp_path / key / "t" / "f").write_text(content)
        tree, _ = store.put_output(tmp_path / key, "t")
        log = store.put_bytes(f"log {key}".encode())
        store.put_stage(StageEntry(key, {"t": tree}, {"t": OutputKind.TREE}, log))
        return tree.removeprefix("sha256:"), store.read_tree(tree.removeprefix("sha256:"))[0]["sha256"]

    kept_tree, kept_file = entry("a" * 64, "used last week")
    gone_tree, gone_file = entry("b" * 64, "not used since")
    pinned = store.put_bytes(b"a pinned download")
    orphan = store.put_bytes(b"nothing needs me")
    young = store.put_bytes(b"a running build just stored me")
    env_tarball = store.put_bytes(b"an environment")
    (store.root / "envs" / env_tarball).mkdir()
    for blob in store.root.joinpath("blobs", "sha256").iterdir():
        if blob.name != young:
            age(blob)
    age(store.root / "stages" / f"{'b' * 64}.json")

    dry = collect_garbage(store, keep_days=30, pinned={pinned}, dry_run=True)
    assert (dry.entries_removed, dry.blobs_removed) == (1, 4)  # b's entry; its tree, file, log; orphan
    assert (store.root / "stages" / f"{'b' * 64}.json").exists()  # (get_stage would count as a use)

    report = collect_garbage(store, keep_days=30, pinned={pinned})
    assert (report.entries_removed, report.blobs_removed) == (1, 4)
    present = {p.name for p in store.root.joinpath("blobs", "sha256").iterdir()}
    assert {kept_tree, kept_file, pinned, young, env_tarball} <= present
    assert not {gone_tree, gone_file, orphan} & present
    assert store.get_stage("b" * 64) is None
    hit = store.get_stage("a" * 64)
    assert hit is not None
    store.materialize(hit.outputs["t"], OutputKind.TREE, tmp_path / "again")
    assert (tmp_path / "again" / "f").read_text() == "used last week"


def test_store_gc_keeps_what_the_recipes_pin(tmp_path: Path) -> None:
    from tests.conftest import mlos, write_repo

    store = Store(tmp_path / "store")
    pinned = store.put_bytes(b"an upstream tarball, not downloadable any more")
    orphan = store.put_bytes(b"nothing needs me")
    recipes = write_repo(tmp_path / "repo", f"""
        [[stage]]
        name = "a"
        outputs = ["x"]
        run = [["true"]]
        profiles = ["release"]
        [stage.inputs]
        src = "url:https://example.org/src.tar.gz#sha256={pinned}"
    """)
    old = time.time() - 2 * 86400
    for blob in (pinned, orphan):
        os.utime(store.blob_path(blob), (old, old))
    result = mlos("store", "gc", "--store", store.root, "--keep-days", "1", "--recipes", recipes, "--json")
    assert result.code == 0, result.stderr
    assert store.has_blob(pinned) and not store.has_blob(orphan)
    assert '"blobs_removed":1' in result.stdout.replace(" ", "")
