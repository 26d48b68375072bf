"""The stage tools that make .debs and APT indices, run directly with the host's dpkg-deb."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import aptrepo
import debbuild
import pytest

from tests.conftest import PROJECT

SOURCES = PROJECT / "recipes/packages"
EPOCH = "1764547200"


@pytest.fixture(autouse=True)
def _epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def test_a_deb_is_the_same_whatever_the_checkout_modes_and_times(tmp_path: Path) -> None:
    a = tmp_path / "a/mlos-services"
    b = tmp_path / "b/mlos-services"
    shutil.copytree(SOURCES / "mlos-services", a)
    shutil.copytree(SOURCES / "mlos-services", b)
    for path in b.rglob("*"):  # a checkout made with umask 077, at another time
        path.chmod(0o700 if path.is_dir() or os.access(path, os.X_OK) else 0o600)
        os.utime(path, (1, 1), follow_symlinks=False)
    deb_a = debbuild.build(a, tmp_path / "out-a", "small", tmp_path / "work-a")
    deb_b = debbuild.build(b, tmp_path / "out-b", "small", tmp_path / "work-b")
    assert deb_a.name == "mlos-services_1.0.1_all.deb"
    assert deb_a.read_bytes() == deb_b.read_bytes()
    listing = subprocess.run(["dpkg-deb", "-c", str(deb_a)], capture_output=True, text=True, check=True).stdout
    assert "-rwxr-xr-x root/root" in listing and "2025-12-01 00:00 ./usr/bin/mlos-monitor" in listing
    assert "./etc/mlos/mlos.conf" in listing and "usr/share/man/man1/mlos-monitor.1.gz" in listing
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb_a), "conffiles"], capture_output=True, text=True,
                               check=True).stdout
    assert conffiles == "/etc/mlos/mlos.conf\n"


def test_a_profile_replaces_control_fields(tmp_path: Path) -> None:
    small = debbuild.read_control(SOURCES / "mlos-toolchain", "small")
    release = debbuild.read_control(SOURCES / "mlos-toolchain", "release")
    assert "python3-torch" not in small["Depends"] and "python3-torch" in release["Depends"]
    assert small["Description"] == release["Description"]


@pytest.mark.parametrize(("control", "message"), [
    ("Package: thing\nVersion: 1\n", "missing field(s) Architecture, Maintainer, Description"),
    ("Package: other\nVersion: 1\nArchitecture: all\nMaintainer: m <m@x>\nDescription: d\n",
     "Package is 'other' but the directory is 'thing'"),
    ("Package: thing\n\nPackage: thing2\n", "expected one paragraph of control fields, found 2"),
])
def test_bad_control_data_names_the_file(tmp_path: Path, control: str, message: str) -> None:
    source = tmp_path / "thing"
    source.mkdir()
    (source / "control").write_text(control)
    with pytest.raises(debbuild.PackageError) as info:
        debbuild.read_control(source, "small")
    assert str(info.value).startswith(f"{source / 'control'}:") and message in str(info.value)


def test_repository_indices_are_deterministic_and_checked(tmp_path: Path) -> None:
    debs = [debbuild.build(SOURCES / n, tmp_path / "debs", "small", tmp_path / "work")
            for n in ("mlos-toolchain", "mlos-services")]
    settings = aptrepo.Settings.from_env({"MLOS_APT_SUITE": "mlos", "MLOS_APT_CODENAME": "mlos-1",
                                          "MLOS_APT_ORIGIN": "MLOS Linux", "MLOS_APT_LABEL": "MLOS Linux",
                                          "SOURCE_DATE_EPOCH": EPOCH})
    aptrepo.build(debs, tmp_path / "r1", settings)
    aptrepo.build(list(reversed(debs)), tmp_path / "r2", settings)
    files = sorted(p.relative_to(tmp_path / "r1") for p in (tmp_path / "r1").rglob("*") if p.is_file())
    assert [(tmp_path / "r1" / f).read_bytes() for f in files] == [(tmp_path / "r2" / f).read_bytes() for f in files]
    packages = (tmp_path / "r1/dists/mlos/main/binary-amd64/Packages").read_text()
    assert packages.index("Package: mlos-services") < packages.index("Package: mlos-toolchain")
    assert "Filename: pool/main/m/mlos-services/mlos-services_1.0.1_all.deb" in packages
    assert subprocess.run(["gzip", "-t", str(tmp_path / "r1/dists/mlos/main/binary-amd64/Packages.gz")]).returncode == 0

    with pytest.raises(aptrepo.RepositoryError, match="MLOS_APT_CODENAME, MLOS_APT_ORIGIN"):
        aptrepo.Settings.from_env({"MLOS_APT_SUITE": "mlos", "MLOS_APT_LABEL": "x"})
    broken = tmp_path / "broken.deb"
    broken.write_bytes(b"not an archive")
    with pytest.raises(aptrepo.RepositoryError, match=r"broken\.deb: not a readable \.deb"):
        aptrepo.build([broken], tmp_path / "r3", settings)
    with pytest.raises(aptrepo.RepositoryError, match="is given twice"):
        aptrepo.build([debs[0], debs[0]], tmp_path / "r4", settings)
