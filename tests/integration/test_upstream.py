"""mlos-core and axon: pinned upstream archives (made here, served on 127.0.0.1), `pin`,
`fetch` and the repackaging stage, the refusal of a wrong pin, and what the release profile's
Flatcar stages make of them (system extensions, OCI images, ebuilds), proven by their consumers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT, mlos, write_repo
from tests.integration.test_flatcar import load_and_run, merge, project_copy, scan_clean

UPSTREAM_HOST = "https://downloads.mlos.example"


@contextlib.contextmanager
def _serve(root: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over the directory `root`: (base URL, directory)."""
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with _serve(tmp_path / "www") as served:
        yield served


def _archive(dest: Path, top: str, tool: str, program: Path = Path("/usr/bin/true")) -> None:
    """An upstream-style release archive: TOP/bin/TOOL (`program`) and TOP/LICENSE."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(program, f"{top}/bin/{tool}")
        license_file = dest.parent / "LICENSE"
        license_file.write_text("Apache License 2.0\n")
        tar.add(license_file, f"{top}/LICENSE")


def _repo(tmp_path: Path, base: str) -> Path:
    text = (PROJECT / "recipes/upstream.toml").read_text().replace(UPSTREAM_HOST, base)
    recipes = write_repo(tmp_path / "repo", text)
    shutil.copytree(PROJECT / "recipes/upstream", recipes / "upstream")
    shutil.copytree(PROJECT / "stage-tools/packaging", tmp_path / "repo/stage-tools/packaging",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return recipes


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _upstream(server: tuple[str, Path], tmp_path: Path, tag: str = "") -> tuple[str, Path, Path, Path]:
    """(base URL, mlos-core archive, axon archive, recipes) with the archives served; `tag`
    changes the archives' contents (a fresh download for a store that holds the others)."""
    base, www = server
    core = www / "mlos-core/1.0.0/mlos-core-1.0.0-linux-amd64.tar.gz"
    axon = www / "axon/0.9.0/axon-0.9.0-linux-amd64.tar.gz"
    _archive(core, "mlos-core-1.0.0", "mlos-core" + tag)
    _archive(axon, "axon-0.9.0", "axon" + tag)
    return base, core, axon, _repo(tmp_path, base)


def test_pin_fetch_and_repackage(shared_store: Path, server: tuple[str, Path], tmp_path: Path) -> None:
    base, core, axon, recipes = _upstream(server, tmp_path)
    common = ("--recipes", recipes, "--store", shared_store)

    unpinned = mlos("build", "--profile", "release", *common, "--out", tmp_path / "out")
    assert unpinned.code == 2
    assert f"is not pinned yet (profile 'release' builds this stage); run: mlos-repro pin {base}/" in unpinned.stderr
    small = mlos("build", *common, "--out", tmp_path / "small")  # small does not build them
    assert small.code == 0, small.stderr

    core_url = f"{base}/mlos-core/1.0.0/{core.name}"
    for url, archive in ((core_url, core), (f"{base}/axon/0.9.0/{axon.name}", axon)):
        pinned = mlos("pin", url, *common)
        assert pinned.code == 0, pinned.stderr
        assert f"url:{url}#sha256={_sha256(archive)}" in (recipes / "stages.toml").read_text()
    assert "#sha256=unpinned" not in (recipes / "stages.toml").read_text()  # inputs and run line alike

    built = mlos("build", "--profile", "release", *common, "--out", tmp_path / "out")
    assert built.code == 0, built.stderr
    deb = tmp_path / "out/upstream-packages/debs/mlos-core_1.0.0-1_amd64.deb"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "-rwxr-xr-x root/root" in listing and "./usr/bin/mlos-core" in listing
    assert "./usr/share/doc/mlos-core/LICENSE" in listing
    record = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/share/doc/mlos-core/upstream.json",
                            shell=True, capture_output=True, text=True, check=True).stdout
    assert json.loads(record) == {"archive": core.name, "sha256": _sha256(core), "url": core_url}
    assert (tmp_path / "out/upstream-packages/debs/axon_0.9.0-1_amd64.deb").is_file()
    # The SBOM of the .debs records where each came from: the archive's URL and sha256.
    sbom = json.loads((tmp_path / "out/upstream-packages/debs.cdx.json").read_text())
    component = next(c for c in sbom["components"] if c["name"] == "mlos-core")
    origin = component["pedigree"]["ancestors"][0]
    assert origin["name"] == core.name and origin["hashes"][0]["content"] == _sha256(core)
    assert origin["externalReferences"] == [{"type": "distribution", "url": core_url}]
    assert component["hashes"][0]["content"] == _sha256(deb)

    missing = mlos("pin", f"{base}/other.tar.gz", *common)
    assert missing.code == 2 and "no recipe in" in missing.stderr


def test_a_wrong_pin_is_refused_before_anything_is_built(shared_store: Path, server: tuple[str, Path],
                                                        tmp_path: Path) -> None:
    _, core, axon, recipes = _upstream(server, tmp_path, "-wrong-pin")
    # What the recipe claims: the digest of some other archive than the one served.
    wrong = hashlib.sha256(core.read_bytes() + b"tampered").hexdigest()
    stages = recipes / "stages.toml"
    text = stages.read_text().replace(f"{axon.name}#sha256=unpinned", f"{axon.name}#sha256={_sha256(axon)}")
    stages.write_text(text.replace(f"{core.name}#sha256=unpinned", f"{core.name}#sha256={wrong}"))
    common = ("--recipes", recipes, "--store", shared_store, "--profile", "release")

    fetched = mlos("fetch", *common)
    assert fetched.code == 1
    assert "input 'mlos-core'" in fetched.stderr
    assert f"sha256 is {_sha256(core)}, but {wrong} was pinned; refused, not stored" in fetched.stderr
    built = mlos("build", *common, "--out", tmp_path / "out")
    assert built.code == 2
    assert "pinned inputs are not in the store" in built.stderr
    assert "run: mlos-repro fetch --profile release" in built.stderr
    assert "running" not in built.stderr and not (tmp_path / "out").exists()


# The release profile's Flatcar stages, with stand-in upstream archives served here: each
# binary a script that prints its name and version, as the real ones do with --version.
RELEASE_STAGES = ("sysext", "oci-upstream", "overlay", "ignition")
UPSTREAM = {"mlos-core": "1.0.0", "axon": "0.9.0"}


@pytest.fixture(scope="module")
def release_flatcar(shared_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """{"out": OUT of a release build of the Flatcar stages, "recipes": its recipes,
    NAME: the upstream archive of NAME}."""
    work = tmp_path_factory.mktemp("release-flatcar")
    repo = project_copy(work)
    with _serve(work / "www") as (base, www):
        archives = {}
        for name, version in UPSTREAM.items():
            program = work / name
            program.write_text(f'#!/bin/sh\necho "{name} {version}"\n')
            program.chmod(0o755)
            archives[name] = www / f"{name}/{version}/{name}-{version}-linux-amd64.tar.gz"
            _archive(archives[name], f"{name}-{version}", name, program)
        for recipe in ("upstream.toml", "flatcar.toml"):
            path = repo / "recipes" / recipe
            path.write_text(path.read_text().replace(UPSTREAM_HOST, base))
        for archive in archives.values():
            url = f"{base}/{archive.relative_to(www)}"
            pinned = mlos("pin", url, "--recipes", repo / "recipes", "--store", shared_store)
            assert pinned.code == 0, pinned.stderr
            # One pin for the .debs' stage and the overlay's: the same archive for both.
            for recipe in ("upstream.toml", "flatcar.toml"):
                assert f"url:{url}#sha256={_sha256(archive)}" in (repo / "recipes" / recipe).read_text()
    out = work / "out"
    built = mlos("build", "--profile", "release", *RELEASE_STAGES, "--recipes", repo / "recipes", "--out", out,
                 "--store", shared_store)
    assert built.code == 0, built.stderr
    yield {"out": out, "recipes": repo / "recipes", **archives}


@pytest.mark.root
def test_the_release_extensions_hold_the_upstream_binaries(release_flatcar: dict[str, Path], tmp_path: Path) -> None:
    sysext = release_flatcar["out"] / "sysext"
    assert sorted(p.name for p in sysext.glob("*.raw")) == [
        "axon.raw", "mlos-core.raw", "mlos-services.raw", "mlos-toolchain.raw"]
    for name, version in UPSTREAM.items():
        shown = subprocess.run(["systemd-dissect", sysext / f"{name}.raw"], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert "✓ extension for system" in shown.stdout and "ID=flatcar" in shown.stdout, shown.stdout
        merged = merge(tmp_path / name, "ID=flatcar\nVERSION_ID=4081.2.0\nSYSEXT_LEVEL=1.0\n",
                       sysext / f"{name}.raw", sysext / "mlos-services.raw")
        assert merged.returncode == 0, merged.stderr
        assert f"usr/bin/{name}" in merged.stdout.split() and "usr/bin/mlos-monitor" in merged.stdout.split()
        # The binary in the image is the archive's, byte for byte.
        listing = subprocess.run(["unsquashfs", "-cat", sysext / f"{name}.raw", f"usr/bin/{name}"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(release_flatcar[name]) as tar:
            member = tar.extractfile(f"{name}-{version}/bin/{name}")
            assert member is not None and listing == member.read()


@pytest.mark.root
def test_podman_runs_the_upstream_mlos_core_and_axon_images(release_flatcar: dict[str, Path],
                                                            request: pytest.FixtureRequest) -> None:
    oci = release_flatcar["out"] / "oci-upstream"
    storage = Path(tempfile.mkdtemp(prefix="mlos-podman-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(storage, ignore_errors=True))
    for name, version in UPSTREAM.items():
        [entry] = json.loads((oci / name / "index.json").read_text())["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == f"{version}-1"  # the .deb's
        shown = subprocess.run(["skopeo", "inspect", f"oci-archive:{oci / name}.oci.tar"], capture_output=True,
                               text=True)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["Digest"] == entry["digest"]
        assert load_and_run(storage, oci, name, "--version") == f"{name} {version}"
    # The image's SBOM names the package the binary came from.
    sbom = json.loads((oci / "mlos-core.cdx.json").read_text())
    assert any(c["name"] == "mlos-core" and c.get("version") == "1.0.0-1" for c in sbom["components"]), sbom
    # The release's Ignition config provisions that image: its hash is the one built here.
    config = json.loads((release_flatcar["out"] / "ignition/mlos.ign").read_text())
    [core] = [f for f in config["storage"]["files"] if f["path"] == "/opt/mlos/images/mlos-core.oci.tar"]
    built = hashlib.sha256((oci / "mlos-core.oci.tar").read_bytes()).hexdigest()
    assert core["contents"]["verification"] == {"hash": f"sha256-{built}"}


@pytest.mark.root
def test_the_release_overlay_fetches_the_pinned_upstream_archives(release_flatcar: dict[str, Path],
                                                                  shared_store: Path, tmp_path: Path) -> None:
    out = release_flatcar["out"] / "overlay"
    for name, ebuild in (("mlos-core", "sys-apps/mlos-core-bin"), ("axon", "sys-cluster/axon-bin")):
        archive = release_flatcar[name]
        data = archive.read_bytes()
        assert (out / "distfiles" / archive.name).read_bytes() == data  # published as pinned
        manifest = (out / "mlos-overlay" / ebuild / "Manifest").read_text()
        assert manifest == (f"DIST {archive.name} {len(data)} BLAKE2B {hashlib.blake2b(data).hexdigest()} "
                            f"SHA512 {hashlib.sha512(data).hexdigest()}\n")
    assert "sys-cluster" in (out / "mlos-overlay/profiles/categories").read_text().split()
    _, results = scan_clean(out / "mlos-overlay", tmp_path)
    assert {package for package, _, _ in results} >= {"sys-apps/mlos-services/1.0.1"}  # scanned with the rest
    # An ebuild the stage cannot back with a pinned archive fails it, naming the ebuild.
    repo = tmp_path / "repo"
    shutil.copytree(release_flatcar["recipes"].parent, repo)
    ebuilds = repo / "recipes/flatcar/overlay-upstream/sys-cluster/axon-bin"
    (ebuilds / "axon-bin-0.9.0.ebuild").rename(ebuilds / "axon-bin-0.9.1.ebuild")
    failed = mlos("build", "--profile", "release", "overlay", "--recipes", repo / "recipes", "--out", tmp_path / "out",
                  "--store", shared_store)
    assert failed.code == 4, failed.stderr
    assert ("sys-cluster/axon-bin/axon-bin-0.9.1.ebuild: SRC_URI fetches axon-0.9.1-linux-amd64.tar.gz, which is "
            "not made here") in failed.stderr, failed.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.root
def test_the_release_flatcar_stages_are_reproducible(release_flatcar: dict[str, Path], shared_store: Path,
                                                     tmp_path: Path) -> None:
    result = mlos("build", "--verify", "--profile", "release", "sysext", "oci-upstream", "overlay",
                  "--recipes", release_flatcar["recipes"], "--out", tmp_path / "v", "--store", shared_store)
    report = json.loads((tmp_path / "v/verify.json").read_text())
    verdicts = {(o["stage"], o["output"]): o["verdict"] for o in report["outputs"]}
    assert result.code == 0, (verdicts, result.stderr)
    expected = {("sysext", "mlos-core.raw"), ("sysext", "axon.raw"), ("overlay", "distfiles"),
                ("overlay", "mlos-overlay.tar.gz")}
    expected |= {("oci-upstream", name) for name in ("mlos-core", "mlos-core.oci.tar", "axon", "axon.oci.tar")}
    assert {verdicts[key] for key in expected} == {"identical"}, verdicts
