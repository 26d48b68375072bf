"""Member manifests reuse the listing of a nested container they have seen before, by digest."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

from mlos_repro.inspect import manifest
from mlos_repro.store import Store


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_nested_container_is_listed_once_and_reused(tmp_path: Path) -> None:
    inner = _tar({"etc/os-release": b"NAME=MLOS\n", "usr/bin/tool": b"\x7fELF"})
    inner_digest = hashlib.sha256(inner).hexdigest()
    outer_a = tmp_path / "a.tar"
    outer_a.write_bytes(_tar({"rootfs.tar": inner, "README": b"a"}))
    outer_b = tmp_path / "b.tar"
    outer_b.write_bytes(_tar({"live/rootfs.tar": inner, "README": b"b"}))
    store = Store(tmp_path / "store")
    listings = manifest.Listings(store.get_listing, store.put_listing)

    def build(path: Path, cache: manifest.Listings | None) -> dict[str, Any]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return manifest.build(path, digest, tmp_path / "work" / path.name, cache)

    first = build(outer_a, listings)
    recorded = listings.get(inner_digest)
    assert recorded is not None and recorded["kind"] == "tar"
    assert {m["name"] for m in recorded["members"]} == {"etc/os-release", "usr/bin/tool"}
    # The same bytes elsewhere are not read again: what the store holds is what is used.
    listings.put(inner_digest, {**recorded, "members": recorded["members"][:1]})
    second = build(outer_b, listings)
    (nested,) = [m for m in second["root"]["members"] if m["name"] == "live/rootfs.tar"]
    assert [m["name"] for m in nested["inner"]["members"]] == ["etc/os-release"]
    # An honest cache gives the listing that reading everything gives.
    fresh = Store(tmp_path / "fresh")
    honest = manifest.Listings(fresh.get_listing, fresh.put_listing)
    assert build(outer_a, honest) == first == build(outer_a, None)
    assert build(outer_b, honest) == build(outer_b, None)
    # Keys name the readers' code as well as the bytes: other readers see nothing recorded.
    assert f"{manifest.readers_digest()}-{inner_digest}.json" in {
        p.name for p in (tmp_path / "store/listings").iterdir()}
    other_readers = manifest.Listings(store.get_listing, store.put_listing)
    other_readers._prefix = "0" * 16
    assert other_readers.get(inner_digest) is None
