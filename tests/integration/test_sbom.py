"""SBOMs of real builds: .debs made by dpkg-deb and a root filesystem cut from the builder
environment's own dpkg database, catalogued from their bytes; a dropped file is flagged as
owned by no package; two builds differing by one package version differ by exactly that."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import mlos, write_repo

# Two .debs (b depends on a; b's version comes from the recipe) and a root filesystem: the
# builder environment's dpkg database and base-files' files, plus one file no package owns.
STAGES = """
[[stage]]
name = "debs"
outputs = ["debs"]
env = { B_VERSION = "@VERSION@" }
run = [["sh", "-euc", '''
for p in a b; do
  v=1.0; deps=""
  if [ $p = b ]; then v=$B_VERSION; deps="Depends: mlos-demo-a (>= 1.0)"; fi
  mkdir -p pkg-$p/DEBIAN pkg-$p/usr/share/doc/mlos-demo-$p
  printf 'Package: mlos-demo-%s\\nVersion: %s\\nArchitecture: all\\nMaintainer: MLOS <packages@mlos.example>\\nDescription: demo\\n%s\\n' $p $v "$deps" | sed '/^$/d' > pkg-$p/DEBIAN/control
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\\n\\nFiles: *\\nCopyright: 2025 MLOS\\nLicense: Expat or GPL-2+\\n' > pkg-$p/usr/share/doc/mlos-demo-$p/copyright
  mkdir -p /out/debs
  dpkg-deb --root-owner-group --build pkg-$p /out/debs/mlos-demo-$p.deb >/dev/null
done
''']]

[[stage]]
name = "rootfs"
outputs = ["rootfs.tar"]
run = [["sh", "-euc", '''
{ echo var/lib/dpkg/status; ls /var/lib/dpkg/info/*.list | sed 's|^/||'
  find /usr/share/doc -maxdepth 2 -name copyright -type f | sed 's|^/||'
  sed 's|^/||' /var/lib/dpkg/info/base-files.list; } > files
mkdir -p opt/dropped && echo 'echo hello' > opt/dropped/tool.sh
tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner --no-recursion \\
  -cf /out/rootfs.tar -C / -T files -C $PWD opt opt/dropped opt/dropped/tool.sh
''']]
"""


def build(tmp_path: Path, store: Path, name: str, version: str) -> Path:
    recipes = write_repo(tmp_path / name, STAGES.replace("@VERSION@", version))
    out = tmp_path / f"out-{name}"
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", store)
    assert result.code == 0, result.stderr
    return out


def components(sbom: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(sbom.read_text())["components"]
    return found


def test_sboms_of_debs_and_a_root_filesystem(tmp_path: Path, shared_store: Path, unique: str) -> None:
    out = build(tmp_path, shared_store, "one", "1.0")
    manifest = json.loads((out / "manifest.json").read_text())
    sbom_path = out / "debs/debs.cdx.json"
    # Listed in the manifest under the digest of the bytes written.
    import hashlib
    assert manifest["stages"]["debs"]["sboms"]["debs.cdx.json"] == \
        "sha256:" + hashlib.sha256(sbom_path.read_bytes()).hexdigest()
    debs = {c["name"]: c for c in components(sbom_path)}
    assert set(debs) == {"mlos-demo-a", "mlos-demo-b"}
    b = debs["mlos-demo-b"]
    assert b["purl"] == "pkg:deb/mlos/mlos-demo-b@1.0?arch=all"
    assert b["supplier"]["name"] == "MLOS Linux project"
    assert {lic["license"]["id"] for lic in b["licenses"]} == {"MIT", "GPL-2.0-or-later"}
    assert b["hashes"][0]["content"] == hashlib.sha256((out / "debs/debs/mlos-demo-b.deb").read_bytes()).hexdigest()
    deps = {d["ref"]: d.get("dependsOn", []) for d in json.loads(sbom_path.read_text())["dependencies"]}
    assert deps[b["bom-ref"]] == [debs["mlos-demo-a"]["bom-ref"]]

    rootfs = components(out / "rootfs/rootfs.tar.cdx.json")
    installed = [c for c in rootfs if c["type"] == "library"]
    unowned = [c["name"] for c in rootfs if {"name": "mlos:unowned", "value": "true"} in c.get("properties", [])]
    assert unowned == ["opt/dropped/tool.sh"]
    names = {c["name"] for c in installed}
    assert {"base-files", "dpkg", "libc6"} <= names
    base = next(c for c in installed if c["name"] == "base-files")
    assert base["purl"].startswith("pkg:deb/debian/base-files@") and "distro=debian-12" in base["purl"]
    assert base["supplier"]["name"] == "Debian"

    summary = mlos("sbom", out / "rootfs/rootfs.tar", "--json")
    assert summary.code == 0, summary.stderr
    info = json.loads(summary.stdout)
    assert info["valid"] and info["unowned_files"] == ["opt/dropped/tool.sh"]
    assert info["components"] == len(installed) + 1

    # The SBOM names the exact bytes: a changed artifact no longer matches it.
    tampered = tmp_path / "rootfs.tar"
    tampered.write_bytes((out / "rootfs/rootfs.tar").read_bytes() + b"\0")
    (tmp_path / "rootfs.tar.cdx.json").write_bytes((out / "rootfs/rootfs.tar.cdx.json").read_bytes())
    result = mlos("sbom", tampered)
    assert result.code == 1 and "but the SBOM describes" in result.stderr


def test_sbom_diff_names_exactly_the_changed_package(tmp_path: Path, shared_store: Path) -> None:
    first = build(tmp_path, shared_store, "first", "1.0")
    second = build(tmp_path, shared_store, "second", "1.1")
    a, b = first / "debs/debs.cdx.json", second / "debs/debs.cdx.json"
    assert a.read_bytes() != b.read_bytes()
    result = mlos("sbom", "diff", a, b, "--json")
    assert result.code == 1, result.stderr
    changes = json.loads(result.stdout)
    assert changes["added"] == [] and changes["removed"] == []
    assert [(c["component"], c["first"], c["second"]) for c in changes["changed"]] == \
        [("mlos-demo-b", "1.0", "1.1")]
    text = mlos("sbom", "diff", a, b)
    assert text.stdout.strip() == "~ mlos-demo-b 1.0 -> 1.1"
    # The same build twice: identical SBOMs, and nothing to report.
    again = build(tmp_path, shared_store, "again", "1.0")
    assert (again / "debs/debs.cdx.json").read_bytes() == a.read_bytes()
    assert mlos("sbom", "diff", a, again / "debs/debs.cdx.json").code == 0


def test_a_gap_in_the_sbom_fails_the_stage(tmp_path: Path, shared_store: Path, unique: str) -> None:
    recipes = write_repo(tmp_path / "repo", STAGES.replace("@VERSION@", "1.0").replace("mlos-demo-", f"demo-{unique[:6]}-"))
    # No supplier for Debian-namespace packages: the .debs' components have none.
    policy = tmp_path / "repo/sbom/policy.toml"
    policy.write_text(policy.read_text().split("[distro.debian]")[0])
    result = mlos("build", "debs", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4, result.stderr
    assert "the SBOM of debs is incomplete" in result.stderr
    assert f"demo-{unique[:6]}-a" in result.stderr and "missing supplier" in result.stderr
    assert "sbom/policy.toml" in result.stderr
    assert not (tmp_path / "out/debs").exists()


BROKEN = """
[[stage]]
name = "rootfs"
outputs = ["rootfs.tar"]
run = [["sh", "-euc", '''
mkdir -p r/var/lib/dpkg r/usr/bin && : > r/var/lib/dpkg/status && echo '@UNIQUE@' > r/usr/bin/tool
tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner -C r -cf /out/rootfs.tar .
''']]

[[stage]]
name = "kernel"
outputs = ["kernel.json"]
run = [["sh", "-euc", "echo '{\\"release\\": @UNIQUE@' > /out/kernel.json"]]

[[stage]]
name = "image"
outputs = ["image.tar"]
run = [["sh", "-euc", "tar --mtime=@$SOURCE_DATE_EPOCH -C /in/kernel -cf /out/image.tar kernel.json"]]
[stage.inputs]
kernel = "stage:kernel"
"""


def test_what_an_sbom_cannot_say_fails_by_name(tmp_path: Path, shared_store: Path, unique: str) -> None:
    """A root filesystem whose package database lists nothing, and a kernel.json that is no
    JSON upstream of an image: each fails its stage by name (exit 4), never an empty SBOM."""
    recipes = write_repo(tmp_path / "repo", BROKEN.replace("@UNIQUE@", unique[:8]))
    empty = mlos("build", "rootfs", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert empty.code == 4, empty.stderr
    assert "var/lib/dpkg/status lists no installed package" in empty.stderr
    assert not (tmp_path / "out/rootfs").exists()
    corrupt = mlos("build", "image", "--recipes", recipes, "--out", tmp_path / "out2", "--store", shared_store)
    assert corrupt.code == 4, corrupt.stderr
    assert "kernel.json" in corrupt.stderr and "is not JSON" in corrupt.stderr
