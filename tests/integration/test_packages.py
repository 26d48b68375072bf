"""The MLOS packages and the signed APT repository, judged by the real apt, dpkg and lintian."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlos_repro.env.assemble import local_mirror
from mlos_repro.env.lockfile import locked_environment
from mlos_repro.recipe import load_recipes
from mlos_repro.store import Store
from tests.conftest import PROJECT, gpg, mlos, write_repo

SUITE = "mlos"
UNITS = ("mlos-core.service", "mlos-api.service", "mlos-monitor.service")
# lintian tags accepted on the MLOS packages, with the reason (errors are never accepted).
ACCEPTED_LINTIAN = {
    # MLOS Linux boots systemd only; the services have no SysV init scripts.
    "package-supports-alternative-init-but-no-init.d-script",
    # linux-image: bindeb-pkg writes its own changelog, which closes no Debian bugs ...
    "initial-upload-closes-no-bugs",
    # ... and the small kernel has no modules, so its lib/ stays empty.
    "package-contains-empty-directory",
}


@pytest.fixture(scope="module")
def archive_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("archive-gnupg")
    os.chmod(home, 0o700)
    gpg(home, "--quick-gen-key", "MLOS test archive <archive@mlos.example>", "ed25519", "sign", "1d")
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


@pytest.fixture(scope="module")
def built(shared_store: Path, archive_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of the project's repository stage (and what it needs), signed with a test key."""
    out = tmp_path_factory.mktemp("repo-out")
    result = mlos("build", "repository", "--recipes", PROJECT / "recipes", "--out", out,
                  "--store", shared_store, "--gnupghome", archive_home)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def debian_mirror(shared_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The locked `target` package set as a local Debian mirror (what the MLOS packages need)."""
    recipes = load_recipes(PROJECT / "recipes")
    env, locked = locked_environment(recipes.builder, "target")
    mirror = tmp_path_factory.mktemp("debian-mirror")
    local_mirror(env, locked, Store(shared_store), mirror)
    return mirror


@pytest.fixture(scope="module")
def minbase_root(shared_store: Path) -> Path:
    """The assembled `packaging` environment: a minbase Debian with apt and gpgv."""
    env = mlos("env", "packaging", "--recipes", PROJECT / "recipes", "--store", shared_store, "--json")
    assert env.code == 0, env.stderr
    digest: str = json.loads(env.stdout)["digest"]
    return shared_store / "envs" / digest.removeprefix("sha256:") / "root"


class Chroot:
    """A writable copy of the minbase root with both repositories as apt sources, run in bwrap
    as root without network."""

    def __init__(self, base: Path, where: Path, repo: Path, keyring: Path, mirror: Path) -> None:
        if os.geteuid() != 0:
            pytest.fail("the apt tests install packages that chown files to system users: run as root")
        self.root = where / "root"
        subprocess.run(["cp", "-a", f"{base}/.", str(self.root)], check=True)
        self.repo, self.mirror = repo, mirror
        (self.root / "etc/apt/keyrings").mkdir(parents=True, exist_ok=True)
        shutil.copy(keyring, self.root / "etc/apt/keyrings/mlos.gpg")
        (self.root / "etc/apt/sources.list.d/mlos.list").write_text(
            "deb [trusted=yes] file:/srv/debian bookworm main\n"
            f"deb [signed-by=/etc/apt/keyrings/mlos.gpg] file:/srv/mlos {SUITE} main\n")
        for d in ("srv/debian", "srv/mlos"):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bwrap", "--bind", str(self.root), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--tmpfs", "/run", "--ro-bind", str(self.mirror), "/srv/debian", "--ro-bind", str(self.repo),
             "/srv/mlos", "--unshare-net", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--die-with-parent",
             "--clearenv", "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin", "--setenv", "LC_ALL", "C.UTF-8",
             "--setenv", "DEBIAN_FRONTEND", "noninteractive", *argv],
            capture_output=True, text=True)

    def apt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("apt-get", "-o", "Acquire::Languages=none", "-o", "APT::Sandbox::User=root", *args)


@pytest.fixture
def chroot(built: Path, debian_mirror: Path, minbase_root: Path, tmp_path: Path) -> Callable[[Path], Chroot]:
    def make(repo: Path | None = None) -> Chroot:
        return Chroot(minbase_root, tmp_path, repo or built / "repository/repo",
                      built / "repository/mlos-archive-keyring.gpg", debian_mirror)
    return make


@pytest.mark.root
def test_apt_installs_the_mlos_packages_from_the_signed_repository(chroot: Callable[..., Chroot]) -> None:
    c = chroot()
    update = c.apt("update")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "file:/srv/mlos mlos InRelease" in update.stdout
    install = c.apt("install", "-y", "--no-install-recommends", "mlos-services", "mlos-toolchain")
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr
    for unit in UNITS:  # enabled the Debian way by the postinst
        link = c.root / "etc/systemd/system/multi-user.target.wants" / unit
        assert os.readlink(link) == f"/lib/systemd/system/{unit}"
    doc = c.root / "usr/share/doc/mlos-services"
    assert (doc / "copyright").is_file() and (doc / "changelog.gz").is_file()
    assert (c.root / "usr/share/man/man1/mlos-monitor.1.gz").is_file()
    conffiles = c.run("dpkg-query", "-W", "-f=${Conffiles}", "mlos-services").stdout
    assert "/etc/mlos/mlos.conf" in conffiles
    numpy = c.run("dpkg-query", "-W", "-f=${Status}", "python3-numpy").stdout
    assert numpy == "install ok installed"  # mlos-toolchain's dependencies came from Debian
    verify = c.run("systemd-analyze", "verify", "--man=no", *(f"/lib/systemd/system/{u}" for u in UNITS))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "mlos" not in verify.stderr, verify.stderr
    monitor = c.run("sh", "-n", "/usr/bin/mlos-monitor")
    assert monitor.returncode == 0, monitor.stderr


def _tampered_copy(built: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "tampered"
    shutil.copytree(built / "repository/repo", repo)
    return repo


@pytest.mark.root
def test_apt_refuses_a_tampered_packages_index(built: Path, chroot: Callable[..., Chroot],
                                                tmp_path: Path) -> None:
    repo = _tampered_copy(built, tmp_path)
    for name in ("Packages", "Packages.gz", "Packages.xz"):
        index = repo / f"dists/{SUITE}/main/binary-amd64/{name}"
        if name == "Packages":
            index.write_text(index.read_text().replace("Priority: optional", "Priority: required", 1))
        else:
            index.unlink()  # leave apt only the tampered one
    update = chroot(repo).apt("update")
    assert update.returncode != 0
    assert "Hash Sum mismatch" in update.stderr or "unexpected size" in update.stderr, update.stderr


@pytest.mark.root
def test_apt_refuses_an_inrelease_signed_by_another_key(built: Path, chroot: Callable[..., Chroot],
                                                        gnupg_key: Callable[[str], Path], tmp_path: Path) -> None:
    repo = _tampered_copy(built, tmp_path)
    other = gnupg_key("Someone else <other@example.org>")
    dist = repo / f"dists/{SUITE}"
    release = (dist / "Release").read_bytes()
    (dist / "InRelease").write_bytes(gpg(other, "--clearsign", stdin=release))
    (dist / "Release.gpg").write_bytes(gpg(other, "--armor", "--detach-sign", stdin=release))
    update = chroot(repo).apt("update")
    assert update.returncode != 0
    assert "NO_PUBKEY" in update.stderr or "is not signed" in update.stderr, update.stderr


@pytest.mark.root
def test_apt_refuses_a_swapped_deb(built: Path, chroot: Callable[..., Chroot], tmp_path: Path) -> None:
    repo = _tampered_copy(built, tmp_path)
    pool = repo / "pool/main/m"
    shutil.copy(pool / "mlos-toolchain/mlos-toolchain_1.0.0_all.deb",
                pool / "mlos-services/mlos-services_1.0.1_all.deb")
    c = chroot(repo)
    assert c.apt("update").returncode == 0  # the indices are intact
    install = c.apt("install", "-y", "--no-install-recommends", "mlos-services")
    assert install.returncode != 0
    assert "Hash Sum mismatch" in install.stderr or "unexpected size" in install.stderr, install.stderr
    assert not (c.root / "usr/bin/mlos-monitor").exists()


def test_the_signatures_verify_and_the_release_stays_reproducible(built: Path, archive_home: Path) -> None:
    dist = built / f"repository/repo/dists/{SUITE}"
    keyring = built / "repository/mlos-archive-keyring.gpg"
    for argv in (["gpgv", "--keyring", str(keyring), str(dist / "InRelease")],
                 ["gpgv", "--keyring", str(keyring), str(dist / "Release.gpg"), str(dist / "Release")]):
        subprocess.run(argv, check=True, capture_output=True)
    signed = gpg(archive_home, "--decrypt", str(dist / "InRelease"))
    assert signed == (dist / "Release").read_bytes()
    release = (dist / "Release").read_text()
    assert "Date: Mon, 01 Dec 2025 00:00:00 UTC" in release and "Suite: mlos\n" in release
    manifest = json.loads((built / "manifest.json").read_text())
    assert f"repository/repo/dists/{SUITE}/InRelease" in manifest["signatures"]
    signing = json.loads((built / "repository/signing.json").read_text())
    assert signing["development_key"] is False and signing["uid"].startswith("MLOS test archive")


def test_lintian_reports_no_errors(built: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: run scripts/install-deps")
    debs = sorted([*(built / "packages/debs").glob("*.deb"), *(built / "kernel/debs").glob("*.deb")])
    assert {d.name.split("_")[0] for d in debs} == {"mlos-services", "mlos-toolchain", "linux-image-6.1.176-mlos"}
    result = subprocess.run(["lintian", "--display-info", "--pedantic", "--no-tag-display-limit",
                             *map(str, debs)], capture_output=True, text=True)
    # "E: package: tag [context]" for errors, warnings, info and pedantic tags
    tags = {line.split(": ")[2].split()[0] for line in result.stdout.splitlines()
            if line[:3] in ("E: ", "W: ", "I: ", "P: ")}
    assert result.returncode == 0, result.stdout + result.stderr  # lintian fails on errors
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")], result.stdout
    assert tags <= ACCEPTED_LINTIAN, result.stdout


PACKAGING = """
[[stage]]
name = "packages"
builder = "packaging"
outputs = ["debs"]
run = [["python3", "/in/tools/debbuild.py", "--each", "/in/sources", "/out/debs"]]
[stage.inputs]
tools = "path:tools"
sources = "path:packages"

[[stage]]
name = "repository"
builder = "packaging"
outputs = ["repo"]
run = [["python3", "/in/tools/aptrepo.py", "--out", "/out/repo", "/in/packages/debs"]]
env = { MLOS_APT_SUITE = "mlos", MLOS_APT_CODENAME = "mlos-1", MLOS_APT_ORIGIN = "MLOS Linux", MLOS_APT_LABEL = "MLOS Linux" }
[stage.inputs]
tools = "path:tools"
packages = "stage:packages"
"""


def _packaging_repo(root: Path) -> Path:
    recipes = write_repo(root, PACKAGING)
    shutil.copytree(PROJECT / "stage-tools/packaging", root / "tools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "recipes/packages", root / "packages")
    return recipes


def test_packages_and_indices_are_reproducible(shared_store: Path, gnupg_key: Callable[[str], Path],
                                               tmp_path: Path) -> None:
    recipes = _packaging_repo(tmp_path / "repo")
    home = gnupg_key("MLOS test archive <archive@mlos.example>")
    result = mlos("build", "--verify", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store,
                  "--gnupghome", home, "--no-cache", "--json")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "out/verify.json").read_text())
    assert report["reproducible"] is True
    verdicts = {(o["stage"], o["output"]): o["verdict"] for o in report["outputs"]}
    assert verdicts == {("packages", "debs"): "identical", ("repository", "repo"): "identical",
                        ("packages", "debs.cdx.json"): "identical", ("repository", "repo.cdx.json"): "identical"}


def test_a_package_without_copyright_fails_naming_the_file(shared_store: Path, tmp_path: Path) -> None:
    recipes = _packaging_repo(tmp_path / "repo")
    (tmp_path / "repo/packages/mlos-toolchain/copyright").unlink()
    result = mlos("build", "packages", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4
    assert "mlos-toolchain/copyright: missing; Debian policy requires a copyright file" in result.stderr
    assert not (tmp_path / "out/packages").exists()


def test_a_missing_archive_key_is_a_signing_error(shared_store: Path, gnupg_key: Callable[[str], Path],
                                                  tmp_path: Path) -> None:
    recipes = _packaging_repo(tmp_path / "repo")
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    common = ("--recipes", recipes, "--store", shared_store)
    result = mlos("build", *common, "--out", tmp_path / "out1", "--gnupghome", empty)
    assert result.code == 5
    assert f"no usable secret signing key (any) in GnuPG home {empty}" in result.stderr
    home = gnupg_key("MLOS test archive <archive@mlos.example>")
    result = mlos("build", *common, "--out", tmp_path / "out2", "--gnupghome", home,
                  "--archive-key", "nobody@example.org")
    assert result.code == 5
    assert "no usable secret signing key nobody@example.org" in result.stderr
    assert not (tmp_path / "out1").exists() or not any((tmp_path / "out1").iterdir())
    assert not (tmp_path / "out2/repository").exists()


def test_without_a_key_the_development_key_signs(shared_store: Path, tmp_path: Path) -> None:
    recipes = _packaging_repo(tmp_path / "repo")
    data = Path(tempfile.mkdtemp(prefix="mlos-data-"))  # short: gpg-agent's socket lives in the home
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store,
                  env={"XDG_DATA_HOME": str(data)})
    try:
        assert result.code == 0, result.stderr
        assert "development archive key" in result.stderr and "not for release" in result.stderr
        signing = json.loads((tmp_path / "out/repository/signing.json").read_text())
        assert signing["development_key"] is True and "not for release" in signing["uid"]
        subprocess.run(["gpgv", "--keyring", str(tmp_path / "out/repository/mlos-archive-keyring.gpg"),
                        str(tmp_path / "out/repository/repo/dists/mlos/InRelease")], check=True, capture_output=True)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(data / "mlos-repro/dev-gnupg"), "--kill", "gpg-agent"],
                       check=False)
        shutil.rmtree(data)


def test_a_gnupg_home_too_deep_for_the_agent_is_named(shared_store: Path, tmp_path: Path) -> None:
    recipes = _packaging_repo(tmp_path / "repo")
    deep = tmp_path / ("d" * 60) / "gnupg"
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store,
                  env={"XDG_DATA_HOME": str(deep)})
    assert result.code == 5
    assert "too deep" in result.stderr and "longer than 107 bytes" in result.stderr
    assert not (tmp_path / "out/repository").exists()


def test_keys_init_creates_keys_outside_the_checkout(tmp_path: Path) -> None:
    result = mlos("keys", "init", tmp_path / "keys", "--json")
    try:
        assert result.code == 0, result.stderr
        summary = json.loads(result.stdout)
        listing = gpg(tmp_path / "keys/gnupg", "--with-colons", "--list-secret-keys").decode()
        assert f"fpr:::::::::{summary['archive']['fingerprint']}:" in listing
        for name in ("builder", "owner"):
            pub = json.loads((tmp_path / f"keys/attestation/{name}.pub.json").read_text())
            assert pub["keyid"] == summary["attestation"][name]["keyid"] and pub["keytype"] == "ed25519"
            assert (tmp_path / f"keys/attestation/{name}.key").stat().st_mode & 0o077 == 0
        again = mlos("keys", "init", tmp_path / "keys")
        assert again.code == 2 and "not empty" in again.stderr
        inside = mlos("keys", "init", PROJECT / "keys-here")
        assert inside.code == 2 and "inside the source checkout" in inside.stderr
        assert not (PROJECT / "keys-here").exists()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(tmp_path / "keys/gnupg"), "--kill", "gpg-agent"],
                       check=False)
