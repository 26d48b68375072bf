"""SBOM documents from catalogues: valid, deterministic, and rejected precisely when broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlos_repro.sbom import document, summary, validate
from mlos_repro.sbom.catalogue import Catalogue, File, Package
from mlos_repro.sbom.policy import load_policy
from tests.conftest import PROJECT, mlos

SDE = 1764547200
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: lib/*
Copyright: 2020 Someone
License: BSD-3-clause or Expat
"""


def catalogue(libc_version: str = "2.36-9") -> Catalogue:
    common: dict[str, Any] = {"where": "live/rootfs.squashfs", "installed": True, "distro": "debian-12",
                              "distro_id": "debian"}
    return Catalogue(
        packages=[
            Package("bash", "5.2.15-2+b13", "amd64", depends="libc6 (>= 2.36), base-files",
                    copyright=DEP5, maintainer="Debian <bash@debian.org>", **common),
            Package("libc6", libc_version, "amd64", copyright="free-form text, not DEP-5", **common),
            Package("mlos-services", "1.0.0", "all", depends="bash | dash", **common),
        ],
        files=[File("boot/vmlinuz", "kernel", "", "ab" * 32, release="6.1.176-mlos"),
               File("etc/dropped", "unowned", "live/rootfs.squashfs", "cd" * 32)],
        product={"name": "MLOS Linux", "version": "1.0"})


def make(cat: Catalogue) -> bytes:
    return document.make(cat, name="mlos.iso", sha256="ef" * 32, tree=False, policy=load_policy(PROJECT), sde=SDE,
                     kernels=[{"release": "6.1.176-mlos",
                               "source": {"source": "linux", "version": "6.1.176-1", "sha256": "01" * 32},
                               "patches": [{"name": "0001-x.patch", "sha256": "02" * 32}]}])


def test_a_catalogue_becomes_a_valid_deterministic_sbom() -> None:
    data = make(catalogue())
    assert validate.problems(data) == []
    assert make(catalogue()) == data
    doc = json.loads(data)
    assert doc["specVersion"] == "1.6"
    assert doc["metadata"]["timestamp"] == "2025-12-01T00:00:00+00:00"
    root = doc["metadata"]["component"]
    assert (root["name"], root["version"], root["hashes"][0]["content"]) == ("MLOS Linux", "1.0", "ef" * 32)
    by_name = {c["name"]: c for c in doc["components"]}
    bash = by_name["bash"]
    assert bash["purl"] == "pkg:deb/debian/bash@5.2.15-2%2Bb13?arch=amd64&distro=debian-12"
    assert [x["license"]["id"] for x in bash["licenses"]] == ["BSD-3-Clause", "GPL-2.0-or-later", "MIT"]
    assert "licenses" not in by_name["libc6"]  # free-form copyright: no guess
    assert by_name["mlos-services"]["licenses"][0]["license"]["id"] == "Apache-2.0"  # from sbom/policy.toml
    assert by_name["mlos-services"]["purl"] == "pkg:deb/mlos/mlos-services@1.0.0?arch=all"
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert deps[bash["bom-ref"]] == [by_name["libc6"]["bom-ref"]]  # base-files is not in this catalogue
    assert deps[by_name["mlos-services"]["bom-ref"]] == [bash["bom-ref"]]
    linux = by_name["linux"]
    assert linux["pedigree"]["ancestors"][0]["purl"] == "pkg:deb/debian/linux@6.1.176-1?arch=source"
    assert linux["components"][0]["hashes"][0]["content"] == "02" * 32


def test_the_serial_number_follows_the_content() -> None:
    first, second = json.loads(make(catalogue())), json.loads(make(catalogue("2.36-9+deb12u1")))
    assert first["serialNumber"] != second["serialNumber"]
    assert first["serialNumber"].startswith("urn:uuid:")


def broken(edit: object) -> list[str]:
    doc = json.loads(make(catalogue()))
    bash = next(c for c in doc["components"] if c["name"] == "bash")
    edit(doc, bash)  # type: ignore[operator]
    return validate.problems(json.dumps(doc))


@pytest.mark.parametrize("edit, expected", [
    (lambda d, c: c.pop("version"), "(pkg:deb/bash@5.2.15-2+b13?arch=amd64): missing version"),
    (lambda d, c: c.update(purl="deb:bash"), "purl 'deb:bash' is not a package URL"),
    (lambda d, c: c.update(purl="pkg:deb/debian/bash@9.9?arch=amd64"), "has version '9.9', the component '5.2.15-2+b13'"),
    (lambda d, c: c.pop("supplier"), "missing supplier (NTIA: supplier name)"),
    (lambda d, c: c.update(type="nonsense"), ".type: 'nonsense' is not one of"),
    (lambda d, c: d["metadata"].pop("timestamp"), "metadata: no timestamp"),
    (lambda d, c: d["metadata"].pop("authors"), "metadata: no author"),
    (lambda d, c: d.__setitem__("dependencies", [x for x in d["dependencies"] if x["ref"] != c["bom-ref"]]
                                 and [x for x in d["dependencies"] if c["bom-ref"] not in [x["ref"], *x.get("dependsOn", [])]]),
     "not in the dependency graph"),
])
def test_a_broken_sbom_is_rejected_precisely(edit: object, expected: str) -> None:
    problems = broken(edit)
    assert any(expected in p for p in problems), problems


def test_sbom_command_rejects_broken_and_malformed_files(tmp_path: Path) -> None:
    doc = json.loads(make(catalogue()))
    doc["components"][0].pop("version")
    bad = tmp_path / "bad.cdx.json"
    bad.write_text(json.dumps(doc))
    result = mlos("sbom", bad)
    assert result.code == 1 and "missing version" in result.stderr
    truncated = tmp_path / "cut.cdx.json"
    truncated.write_bytes(make(catalogue())[:500])
    result = mlos("sbom", truncated)
    assert result.code == 2 and "cut.cdx.json: not JSON" in result.stderr
    result = mlos("sbom", tmp_path / "absent.iso")
    assert result.code == 2 and "no SBOM next to it" in result.stderr


def test_diff_names_added_removed_and_changed_components() -> None:
    a = json.loads(make(catalogue()))
    cat = catalogue("2.36-9+deb12u1")
    cat.packages.pop(0)
    cat.packages.append(Package("dash", "0.5.12-2", "amd64", "live/rootfs.squashfs", True,
                                distro="debian-12", distro_id="debian"))
    b = json.loads(make(cat))
    changes = summary.diff(a, b)
    assert [(c.name, c.second) for c in changes["added"]] == [("dash", "0.5.12-2")]
    assert [(c.name, c.first) for c in changes["removed"]] == [("bash", "5.2.15-2+b13")]
    assert [(c.name, c.first, c.second) for c in changes["changed"]] == [("libc6", "2.36-9", "2.36-9+deb12u1")]
    assert summary.diff(a, a) == {"added": [], "removed": [], "changed": []}
