"""The content-addressed store: refuses wrong digests, detects corruption, never exposes partials."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlos_repro.errors import DigestMismatchError
from mlos_repro.store import OutputKind, StageEntry, Store


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
    digest, kind = store.put_output(src)
    assert kind == OutputKind.TREE
    dest = tmp_path / "dest"
    store.materialize(digest, kind, dest)
    assert (dest / "sub" / "tool").stat().st_mode & 0o777 == 0o750
    assert os.readlink(dest / "link") == "sub/tool"
    assert (dest / "data").read_text() == "x"
    # The digest is a function of content only.
    assert store.put_output(dest)[0] == digest
    (dest / "data").write_text("y")
    assert store.put_output(dest)[0] != digest


def test_symlink_output_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").symlink_to("/etc/passwd")
    with pytest.raises(Exception, match="symlink"):
        store.put_output(tmp_path / "out" / "x")


def test_stage_entry_with_missing_blob_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = store.put_bytes(b"out")
    store.put_stage(StageEntry("k" * 64, {"o": f"sha256:{digest}"}, {"o": "file"}, digest))
    assert store.get_stage("k" * 64) is not None
    os.unlink(store.blob_path(digest))
    assert store.get_stage("k" * 64) is None


def test_leftovers_of_dead_builds_are_swept(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    dead = store.root / "tmp" / "stage-999999999-abc"
    dead.mkdir()
    (dead / "partial").write_text("half")
    alive = store.root / "tmp" / f"stage-{os.getpid()}-abc"
    alive.mkdir()
    Store(tmp_path / "store")
    assert not dead.exists() and alive.exists()
