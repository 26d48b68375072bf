"""The Flatcar variant's artifacts, proven by what consumes them: the sysext images as
systemd-dissect reads them and systemd-sysext merges them (onto a root of its own, in a
mount namespace of its own: the host's /usr is never touched, and at boot, in QEMU, on an
MLOS host built without the MLOS packages); the Ignition config as the
Ignition 3.4 schema reads it; the OCI images as skopeo and umoci read them and podman runs
them (with a storage of its own: the host's images are never touched); the Portage overlay
as pkgcheck scans it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import PROJECT, mlos
from tests.qemu import boot

pytestmark = [pytest.mark.root]

SYSEXTS = ("mlos-services", "mlos-toolchain")


@pytest.fixture(scope="module")
def flatcar(shared_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of a build of the Flatcar variant's stages."""
    if shutil.which("systemd-dissect") is None:
        pytest.fail("the sysext tests need systemd-dissect (systemd-container): run scripts/install-deps")
    out = tmp_path_factory.mktemp("flatcar-out")
    result = mlos("build", "sysext", "ignition", "oci", "overlay", "--recipes", PROJECT / "recipes", "--out", out,
                  "--store", shared_store)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def sysext(flatcar: Path) -> Path:
    return flatcar / "sysext"


def project_copy(tmp_path: Path) -> Path:
    """The project's recipes and what they read, in a project of its own: what it builds the
    same is taken from the store."""
    repo = tmp_path / "repo"
    for tree in ("recipes", "stage-tools", "kernel", "sbom", "layouts"):
        shutil.copytree(PROJECT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def merge(root: Path, os_release: str, *images: Path) -> subprocess.CompletedProcess[str]:
    """systemd-sysext merge of `images` onto `root` (its os-release as given), in a private
    mount namespace; what the merged /usr holds is listed before the namespace goes."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(os_release)
    (root / "var/lib/extensions").mkdir(parents=True)
    for image in images:
        shutil.copy(image, root / "var/lib/extensions" / image.name)
    script = ("mount -t tmpfs tmpfs /run && mount --make-rshared / && systemd-sysext --root=\"$1\" merge && "
              "cd \"$1\" && find usr -path usr/lib/os-release -prune -o -print | LC_ALL=C sort")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(root)],
                          capture_output=True, text=True)


def test_systemd_dissect_reads_each_image_as_a_system_extension(sysext: Path) -> None:
    for name in SYSEXTS:
        image = sysext / f"{name}.raw"
        shown = subprocess.run(["systemd-dissect", image], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert "✓ extension for system" in shown.stdout, shown.stdout
        assert "ID=flatcar" in shown.stdout and "SYSEXT_LEVEL=1.0" in shown.stdout, shown.stdout
        assert "ARCHITECTURE=x86-64" in shown.stdout
        listing = subprocess.run(["unsquashfs", "-ll", "-d", "", image], capture_output=True, text=True,
                                 check=True).stdout
        entries = [line.split() for line in listing.splitlines() if line[:1] in ("d", "-", "l")]
        tops = {e[5].split("/")[1] for e in entries if len(e) > 5}
        assert tops == {"usr"}, tops  # only what systemd-sysext merges (these packages have no /opt)
        assert {e[1] for e in entries} == {"root/root"}


def test_systemd_sysext_merges_the_services_onto_a_flatcar_root(sysext: Path, tmp_path: Path) -> None:
    merged = merge(tmp_path / "flatcar", "ID=flatcar\nVERSION_ID=4081.2.0\nSYSEXT_LEVEL=1.0\n",
                   sysext / "mlos-services.raw", sysext / "mlos-toolchain.raw")
    assert merged.returncode == 0, merged.stderr
    assert "Using extensions 'mlos-services', 'mlos-toolchain'." in merged.stderr, merged.stderr
    files = set(merged.stdout.split())
    for path in ("usr/bin/mlos-monitor", "usr/libexec/mlos/mlos-core", "usr/lib/systemd/system/mlos-core.service",
                 "usr/lib/systemd/system/multi-user.target.d/10-mlos-services.conf",
                 "usr/share/mlos-services/etc/mlos/mlos.conf", "usr/lib/tmpfiles.d/mlos-services-etc.conf"):
        assert path in files, (path, sorted(files))
    assert not (tmp_path / "flatcar/usr/bin").exists()  # merged only inside the namespace


def test_systemd_refuses_an_extension_made_for_another_host(sysext: Path, tmp_path: Path) -> None:
    for name, os_release in (("debian", "ID=debian\nVERSION_ID=12\n"),
                             ("level", "ID=flatcar\nVERSION_ID=9999.0.0\nSYSEXT_LEVEL=2.0\n")):
        refused = merge(tmp_path / name, os_release, sysext / "mlos-services.raw")
        # systemd's own words: the image is ignored, nothing is merged.
        assert "No suitable extensions found (1 ignored due to incompatible version)." in refused.stderr, \
            refused.stderr
        assert "usr/bin/mlos-monitor" not in refused.stdout


def test_an_extension_for_any_host_merges_onto_debian(shared_store: Path, tmp_path: Path) -> None:
    """The ubuntu profile's extensions are for any host (ID=_any): the same packages."""
    result = mlos("build", "sysext", "--profile", "ubuntu", "--recipes", PROJECT / "recipes", "--out",
                  tmp_path / "out", "--store", shared_store, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["stages"]["packages"]["cached"]
    image = tmp_path / "out/sysext/mlos-services.raw"
    shown = subprocess.run(["systemd-dissect", image], capture_output=True, text=True, check=True).stdout
    assert "ID=_any" in shown and "SYSEXT_LEVEL" not in shown
    merged = merge(tmp_path / "debian", "ID=debian\nVERSION_ID=12\n", image)
    assert merged.returncode == 0 and "usr/bin/mlos-monitor" in merged.stdout, merged.stderr


@pytest.mark.slow
def test_an_mlos_host_merges_the_extensions_of_a_disk_at_boot(flatcar: Path, shared_store: Path,
                                                              tmp_path: Path) -> None:
    """Our disk image, built without the MLOS packages (with what mlos-services depends on), as
    the host; a second disk labelled MLOS-EXT holds the ID=_any mlos-services.raw and the
    Flatcar-only mlos-toolchain.raw. At boot systemd-sysext merges the first and refuses the
    second, and mlos-monitor, which only the extension brings, finds every MLOS service active."""
    repo = project_copy(tmp_path)
    image_toml = repo / "recipes/image.toml"
    text = image_toml.read_text()
    include = 'MLOS_INCLUDE = "systemd,systemd-sysv,udev,cloud-init,mlos-services,mlos-toolchain"'
    assert include in text
    image_toml.write_text(text.replace(include, 'MLOS_INCLUDE = "systemd,systemd-sysv,udev,cloud-init,python3"'))
    host = mlos("build", "disk", "--recipes", repo / "recipes", "--out", tmp_path / "host", "--store", shared_store)
    assert host.code == 0, host.stderr
    packages = {row.split("\t")[0] for row in (tmp_path / "host/rootfs/packages.tsv").read_text().splitlines()}
    assert "python3" in packages and not {"mlos-services", "mlos-toolchain"} & packages
    anyhost = mlos("build", "sysext", "--profile", "ubuntu", "--recipes", PROJECT / "recipes", "--out",
                   tmp_path / "any", "--store", shared_store)
    assert anyhost.code == 0, anyhost.stderr

    extensions = tmp_path / "extensions.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "MLOS-EXT", extensions, "16384"], check=True, capture_output=True)
    for image in (tmp_path / "any/sysext/mlos-services.raw", flatcar / "sysext/mlos-toolchain.raw"):
        subprocess.run(["mcopy", "-i", extensions, image, f"::/{image.name}"], check=True, capture_output=True)
    disk = tmp_path / "mlos.raw"
    shutil.copyfile(tmp_path / "host/disk/mlos.raw", disk)
    text = boot(tmp_path, "-drive", f"file={disk},format=raw,if=virtio",
                "-drive", f"file={extensions},format=raw,if=virtio,readonly=on",
                until=("Merged extensions into '/usr'.", "mlos-monitor: all MLOS services active"),
                fail_on=("Kernel panic", "mlos-monitor: some MLOS services are not active"))
    assert "mlos-extensions: merging mlos-services.raw mlos-toolchain.raw" in text
    # systemd's own words: of the two images, only the one for any host is merged.
    assert "Using extensions 'mlos-services'." in text, text
    assert "mlos-extensions: merged; units loaded" in text
    for line in ("mlos-monitor: mlos-core.service active", "mlos-monitor: mlos-api.service active"):
        assert line in text
    assert "Failed to start" not in text, [ln for ln in text.splitlines() if "Failed" in ln]


def components(sbom: Path) -> dict[str, dict[str, Any]]:
    """An SBOM's components by name, each with its properties as a dict."""
    found = {}
    for c in json.loads(sbom.read_text())["components"]:
        found[c["name"]] = {**c, "props": {p["name"]: p["value"] for p in c.get("properties", [])}}
    return found


def test_a_sysext_sbom_names_its_package_and_where_each_file_came_from(flatcar: Path, tmp_path: Path) -> None:
    [deb] = (flatcar / "packages/debs").glob("mlos-services_*.deb")
    subprocess.run(["dpkg-deb", "--extract", deb, tmp_path / "deb"], check=True)
    found = components(flatcar / "sysext/mlos-services.raw.cdx.json")
    package = found["mlos-services"]
    assert package["version"] == "1.0.1" and package["type"] == "library"
    assert package["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(deb.read_bytes()).hexdigest()}]
    assert package["purl"].startswith("pkg:deb/") and "Apache-2.0" in json.dumps(package["licenses"])
    # Every file the package put there, by its bytes in the .deb (moved under usr/ where it must).
    for image_path, deb_path in (("usr/bin/mlos-monitor", "usr/bin/mlos-monitor"),
                                 ("usr/lib/systemd/system/mlos-core.service", "lib/systemd/system/mlos-core.service"),
                                 ("usr/share/mlos-services/etc/mlos/mlos.conf", "etc/mlos/mlos.conf")):
        file = found[image_path]
        assert file["props"]["mlos:role"] == "payload" and file["props"]["mlos:package"] == "mlos-services", file
        assert file["version"] == "sha256:" + hashlib.sha256((tmp_path / "deb" / deb_path).read_bytes()).hexdigest()
    # What the stage made is told apart from what the package holds.
    for made in ("usr/lib/extension-release.d/extension-release.mlos-services",
                 "usr/lib/systemd/system/multi-user.target.d/10-mlos-services.conf",
                 "usr/lib/tmpfiles.d/mlos-services-etc.conf"):
        assert found[made]["props"]["mlos:role"] == "generated" and "mlos:package" not in found[made]["props"]
    payload = {n for n, c in found.items() if c["props"].get("mlos:role") == "payload"}
    in_deb = {str(p.relative_to(tmp_path / "deb")) for p in (tmp_path / "deb").rglob("*") if not p.is_dir()}
    assert len(payload) == len(in_deb), (sorted(payload), sorted(in_deb))


def release_and_verify(out: Path, recipes: Path, keys: Path, store: Path, rel: Path) -> dict[str, Any]:
    made = mlos("release", "--keys", keys, "--out", rel, "--from", out, "--recipes", recipes, "--store", store,
                "--stage", "sysext", "--release-version", "1.0")
    assert made.code == 0, made.stderr
    checked = mlos("verify", rel, "--root-key", keys / "attestation/owner.pub.json", "--keyring",
                   keys / "archive-keyring.gpg", "--json")
    report: dict[str, Any] = json.loads(checked.stdout)
    report["exit"] = checked.code
    return report


@pytest.mark.parametrize(("edit", "refused"), [
    # One file of the package changed on its way into the image.
    ('echo "# changed" >>"$root/usr/bin/mlos-monitor"',
     "usr/bin/mlos-monitor differs from usr/bin/mlos-monitor of the .deb"),
    # A file the package does not have, claimed as the package's.
    ('echo planted >"$root/usr/bin/mlos-planted"',
     "the image says usr/bin/mlos-planted came from mlos-services, which has no such file"),
])
def test_verify_binds_each_extension_to_its_deb(flatcar: Path, shared_store: Path, tmp_path: Path, edit: str,
                                                refused: str) -> None:
    keys = tmp_path / "keys"
    assert mlos("keys", "init", keys).code == 0
    try:
        honest = release_and_verify(flatcar, PROJECT / "recipes", keys, shared_store, tmp_path / "honest")
        notes = {c["number"]: c["note"] for c in honest["checks"]}
        assert honest["exit"] == 0 and notes[12] == "2 bindings hold", honest
        # A build whose sysext tools alter the payload: its release is signed as well as any.
        repo = project_copy(tmp_path)
        script = repo / "stage-tools/flatcar/sysext.sh"
        anchor = "\t# What the image holds of which package, for its SBOM"
        assert anchor in script.read_text()
        script.write_text(script.read_text().replace(anchor, f'\t[ "$name" != mlos-services ] || {edit}\n{anchor}'))
        built = mlos("build", "sysext", "--recipes", repo / "recipes", "--out", tmp_path / "out", "--store",
                     shared_store)
        assert built.code == 0, built.stderr
        report = release_and_verify(tmp_path / "out", repo / "recipes", keys, shared_store, tmp_path / "hostile")
        [check] = [c for c in report["checks"] if c["number"] == 12]
        assert report["exit"] == 1 and check["status"] == "failed", report
        assert any(refused in p for p in check["problems"]), check
        assert [c["number"] for c in report["checks"] if c["status"] == "failed"] == [12], report
    finally:
        subprocess.run(["gpgconf", "--homedir", str(keys / "gnupg"), "--kill", "gpg-agent"], check=False)


def test_an_oci_image_sbom_lists_the_packages_of_its_layers(flatcar: Path) -> None:
    toolchain = components(flatcar / "oci/mlos-toolchain.oci.tar.cdx.json")
    for name in ("mlos-toolchain", "python3-numpy", "python3", "base-files", "dpkg"):
        assert toolchain[name]["props"]["mlos:origin"] == "installed", toolchain.get(name)
    core = components(flatcar / "oci/mlos-core.oci.tar.cdx.json")
    assert {"base-files", "dash", "coreutils"} <= set(core) and "python3" not in core
    # The agent's layer is no dpkg root: its record names the package its files came from.
    [deb] = (flatcar / "packages/debs").glob("mlos-services_*.deb")
    assert core["mlos-services"]["hashes"][0]["content"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    agent = core["usr/libexec/mlos/mlos-core"]["props"]
    assert (agent["mlos:role"], agent["mlos:package"]) == ("payload", "mlos-services"), agent


def test_the_ignition_config_meets_the_schema_and_carries_the_built_images_hashes(flatcar: Path,
                                                                                 tmp_path: Path) -> None:
    config = json.loads((flatcar / "ignition/mlos.ign").read_text())
    schema = json.loads((PROJECT / "stage-tools/flatcar/schemas/ignition-v3.4.schema.json").read_text())
    jsonschema.Draft4Validator(schema).validate(config)
    assert config["ignition"]["version"] == "3.4.0"
    downloads = {f["path"]: f["contents"] for f in config["storage"]["files"] if "verification" in f["contents"]}
    for name in SYSEXTS:
        # Each extension is named by the version of the package it holds.
        [deb] = (flatcar / "packages/debs").glob(f"{name}_*.deb")
        version = subprocess.run(["dpkg-deb", "--field", deb, "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        path = f"/opt/extensions/mlos/{name}-{version}-x86-64.raw"
        built = hashlib.sha256((flatcar / "sysext" / f"{name}.raw").read_bytes()).hexdigest()
        assert downloads[path]["verification"] == {"hash": f"sha256-{built}"}, downloads
        assert {"path": f"/etc/extensions/{name}.raw", "target": path, "hard": False} in config["storage"]["links"]
    archive = hashlib.sha256((flatcar / "oci/mlos-core.oci.tar").read_bytes()).hexdigest()
    assert downloads["/opt/mlos/images/mlos-core.oci.tar"]["verification"] == {"hash": f"sha256-{archive}"}
    [core] = [u for u in config["systemd"]["units"] if u["name"] == "mlos-core.service"]
    assert "oci-archive:/opt/mlos/images/mlos-core.oci.tar" in core["contents"]
    unit = tmp_path / "mlos-core.service"
    unit.write_text(core["contents"])
    checked = subprocess.run(["systemd-analyze", "verify", "--man=no", unit], capture_output=True, text=True)
    assert checked.returncode == 0 and "mlos-core.service" not in checked.stderr, checked.stderr
    assert config["passwd"]["users"][0]["sshAuthorizedKeys"][0].startswith("ssh-ed25519 ")
    assert {u["name"] for u in config["systemd"]["units"]} >= {"mlos-api.service", "mlos-monitor.service"}


@pytest.mark.parametrize(("edit", "named"), [
    # A shape the schema refuses: the mode as text.
    (("mode: 0644\n      overwrite: true", "mode: rw-r--r--\n      overwrite: true"),
     "$.storage.files[0].mode: 'rw-r--r--' is not of type 'integer', 'null'"),
    # A misspelt key Ignition would ignore without a word.
    (("  units:", "  unitz:"), "$.systemd.unitz: Ignition 3.4.0 has no such key"),
    # A hash typed by hand next to the artifact it would contradict.
    (("        artifact: sysext/mlos-services.raw", "        artifact: sysext/mlos-services.raw\n"
      "        verification: {hash: sha256-0000000000000000000000000000000000000000000000000000000000000000}"),
     "$.storage.files[1].contents.verification: an artifact's hash is computed from the artifact"),
    # An artifact of a stage that is not an input.
    (("artifact: sysext/mlos-toolchain.raw", "artifact: kernel/debs"),
     "$.storage.files[2].contents.artifact: kernel/debs is not an output of an input stage"),
    (("  - name: mlos-monitor.service", "  - name: mlos-api.service"),
     "$.systemd.units[2].name: mlos-api.service is already given at $.systemd.units[1].name"),
    (("variant: flatcar\nversion: 1.1.0\n", "variant: flatcar\nversion: 1.1.0\nvariant: fcos\n"),
     "line 7: key 'variant' is given twice"),
])
def test_a_wrong_ignition_source_fails_the_stage_naming_where(shared_store: Path, tmp_path: Path,
                                                             edit: tuple[str, str], named: str) -> None:
    repo = project_copy(tmp_path)
    source = repo / "recipes/flatcar/mlos.yaml"
    text = source.read_text()
    assert edit[0] in text
    source.write_text(text.replace(edit[0], edit[1], 1))
    result = mlos("build", "ignition", "--recipes", repo / "recipes", "--out", tmp_path / "out",
                  "--store", shared_store)
    assert result.code == 4, result.stderr
    assert named in result.stderr, result.stderr
    assert "the Ignition 3.4.0 config is not written" in result.stderr
    assert not (tmp_path / "out").exists()


def podman(storage: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """podman with a storage of its own (`storage`: a short path, podman refuses a run
    directory of more than 50 characters) and runc."""
    return subprocess.run(["podman", "--root", storage / "root", "--runroot", storage / "run",
                           "--storage-driver", "vfs", "--runtime", "runc", *args],
                          capture_output=True, text=True, timeout=600)


def load_and_run(storage: Path, oci: Path, name: str, *command: str) -> str:
    """podman load of oci/NAME.oci.tar, then podman run of it with `command`: its output. The
    image podman stores must be ours, byte for byte (its manifest digest is oci/NAME's)."""
    loaded = podman(storage, "load", "--input", oci / f"{name}.oci.tar")
    assert loaded.returncode == 0, loaded.stderr
    digest = json.loads((oci / name / "index.json").read_text())["manifests"][0]["digest"]
    listed = podman(storage, "images", "--format", "{{.Digest}} {{.ID}}").stdout
    images = dict(line.split() for line in listed.splitlines())
    assert digest in images, (digest, listed)
    run = podman(storage, "run", "--rm", "--network", "none", "--ulimit", "nofile=4096:4096",
                 "--ulimit", "nproc=4096:4096", images[digest], *command)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_the_oci_images_are_read_by_skopeo_and_umoci(flatcar: Path, tmp_path: Path) -> None:
    oci = flatcar / "oci"
    for name, layers in (("mlos-core", 2), ("mlos-toolchain", 1)):
        index = json.loads((oci / name / "index.json").read_text())
        [entry] = index["manifests"]
        assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
        version = entry["annotations"]["org.opencontainers.image.ref.name"]
        for reference in (f"oci-archive:{oci / name}.oci.tar", f"oci:{oci / name}:{version}"):
            shown = subprocess.run(["skopeo", "inspect", reference], capture_output=True, text=True)
            assert shown.returncode == 0, shown.stderr
            image = json.loads(shown.stdout)
            assert image["Digest"] == entry["digest"], (reference, image)
            assert image["Created"] == "2025-12-01T00:00:00Z"  # SOURCE_DATE_EPOCH of builder.toml
            assert image["Architecture"] == "amd64" and len(image["Layers"]) == layers
            assert image["Labels"]["org.opencontainers.image.version"] == version
        layout = tmp_path / name
        shutil.copytree(oci / name, layout)
        unpacked = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{version}", tmp_path / f"{name}-bundle"],
                                  capture_output=True, text=True)
        assert unpacked.returncode == 0, unpacked.stderr
        rootfs = tmp_path / f"{name}-bundle/rootfs"
        assert (rootfs / "usr/bin/dpkg").is_file() and not any((rootfs / "dev").iterdir())
        assert not (rootfs / "usr/share/man").exists() or not any((rootfs / "usr/share/man").rglob("*.gz"))
        config = json.loads((tmp_path / f"{name}-bundle/config.json").read_text())
        assert config["ociVersion"], config
    assert (tmp_path / "mlos-core-bundle/rootfs/usr/libexec/mlos/mlos-core").stat().st_mode & 0o111
    assert (tmp_path / "mlos-toolchain-bundle/rootfs/usr/share/doc/mlos-toolchain/copyright").is_file()


def test_podman_runs_the_agent_and_the_toolchain(flatcar: Path, request: pytest.FixtureRequest) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("the OCI tests need podman and runc: run scripts/install-deps")
    storage = Path(tempfile.mkdtemp(prefix="mlos-podman-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(storage, ignore_errors=True))
    ran = {name: load_and_run(storage, flatcar / "oci", name, *command) for name, command in (
        ("mlos-core", ["--version"]),
        ("mlos-toolchain", ["python3", "-c", "import numpy; print('numpy', numpy.__version__)"]))}
    version = json.loads((flatcar / "oci/mlos-core/index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"]
    assert ran["mlos-core"] == f"mlos-core {version}"
    assert ran["mlos-toolchain"].startswith("numpy 1."), ran


# What pkgcheck reports on the overlay without a Gentoo repository beside it, and why.
WITHOUT_GENTOO = {
    "NonexistentDeps": "the dependencies (dev-lang/python, sys-apps/systemd, ...) are Gentoo's packages",
    "MissingPythonEclass": "python-single-r1 is a Gentoo eclass",
    "DeprecatedInsinto": "systemd_dounit is from Gentoo's systemd eclass",
    "ArchesWithoutProfiles": "the profiles are Gentoo's",
}


def pkgcheck(overlay: Path, home: Path) -> tuple[int, list[tuple[str, str, str]]]:
    """pkgcheck scan of `overlay`: its exit status (1 on an error-level result) and each
    result as (package, level, keyword)."""
    scan = subprocess.run([Path(sys.executable).parent / "pkgcheck", "scan", "--exit", "error", "-R", "JsonReporter",
                           overlay], capture_output=True, text=True, cwd=home,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")})
    assert scan.returncode in (0, 1), scan.stderr
    results: list[tuple[str, str, str]] = []
    for line in scan.stdout.splitlines():
        def walk(node: dict[str, object], at: list[str]) -> None:
            for key, value in node.items():
                if key.startswith("_"):
                    assert isinstance(value, dict)
                    results.extend(("/".join(at), key[1:], keyword) for keyword in value)
                elif isinstance(value, dict):
                    walk(value, [*at, key])
        walk(json.loads(line), [])
    return scan.returncode, results


def scan_clean(built: Path, tmp_path: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """pkgcheck scan of a copy of the built overlay `built`, which must find no error and warn
    only of what a Gentoo repository beside it would settle: (the copy, the results)."""
    overlay = tmp_path / "mlos-overlay"
    shutil.copytree(built, overlay)
    status, results = pkgcheck(overlay, tmp_path)
    assert status == 0, results
    assert {level for _, level, _ in results} <= {"warning"}, results
    assert {keyword for _, _, keyword in results} <= set(WITHOUT_GENTOO), results
    return overlay, results


def test_pkgcheck_finds_no_errors_in_the_overlay(flatcar: Path, tmp_path: Path) -> None:
    overlay, results = scan_clean(flatcar / "overlay/mlos-overlay", tmp_path)
    assert {package for package, _, _ in results} >= {"sys-apps/mlos-services/1.0.1"}
    # The same scan says no when a Manifest is missing or broken.
    (overlay / "sys-apps/mlos-core/Manifest").unlink()
    (overlay / "sys-apps/mlos-services/Manifest").write_text("DIST mlos-services-1.0.1.tar.gz 1 BLAKE2B zz\n")
    status, results = pkgcheck(overlay, tmp_path)
    assert status == 1
    assert ("sys-apps/mlos-core/1.0.1", "error", "MissingManifest") in results, results
    assert ("sys-apps/mlos-services", "error", "InvalidManifest") in results, results


def test_the_overlay_manifests_hold_the_digests_of_the_package_sources(flatcar: Path, tmp_path: Path) -> None:
    out = flatcar / "overlay"
    entries: dict[str, tuple[str, ...]] = {}
    for manifest in sorted((out / "mlos-overlay").glob("*/*/Manifest")):
        for line in manifest.read_text().splitlines():
            kind, name, *fields = line.split()
            assert kind == "DIST" and fields[1::2] == ["BLAKE2B", "SHA512"], line
            entries[name] = tuple(fields)
    assert set(entries) == {"mlos-services-1.0.1.tar.gz"}
    for name, recorded in entries.items():
        data = (out / "distfiles" / name).read_bytes()
        computed = (str(len(data)), "BLAKE2B", hashlib.blake2b(data).hexdigest(),
                    "SHA512", hashlib.sha512(data).hexdigest())
        assert recorded == computed, (name, recorded, computed)
    # The distfile is the package source the .deb is built from, file for file.
    with tarfile.open(out / "distfiles/mlos-services-1.0.1.tar.gz") as tar:
        tar.extractall(tmp_path / "dist", filter="data")
    source = PROJECT / "recipes/packages/mlos-services"
    packed = tmp_path / "dist/mlos-services-1.0.1"
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(packed) for p in packed.rglob("*") if p.is_file())
    assert all((source / f).read_bytes() == (packed / f).read_bytes() for f in files)
    # The tarball is the overlay directory.
    with tarfile.open(out / "mlos-overlay.tar.gz") as tar:
        tar.extractall(tmp_path / "overlay", filter="data")
    unpacked = tmp_path / "overlay/mlos-overlay"
    tree = sorted(p.relative_to(out / "mlos-overlay") for p in (out / "mlos-overlay").rglob("*"))
    assert tree == sorted(p.relative_to(unpacked) for p in unpacked.rglob("*"))


def test_an_ebuild_fetching_what_is_not_made_fails_the_overlay_stage(shared_store: Path, tmp_path: Path) -> None:
    repo = project_copy(tmp_path)
    ebuild = repo / "recipes/flatcar/overlay/app-misc/mlos-toolchain/mlos-toolchain-1.0.0.ebuild"
    ebuild.write_text(ebuild.read_text().replace('HOMEPAGE="https://mlos.example/"\n',
                                                 'HOMEPAGE="https://mlos.example/"\n'
                                                 'SRC_URI="https://downloads.mlos.example/sources/${P}.tar.gz"\n'))
    result = mlos("build", "overlay", "--recipes", repo / "recipes", "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4, result.stderr
    assert ("app-misc/mlos-toolchain/mlos-toolchain-1.0.0.ebuild: SRC_URI fetches mlos-toolchain-1.0.0.tar.gz, "
            "which is not made here (made: mlos-services-1.0.1.tar.gz)") in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_the_flatcar_stages_are_reproducible(shared_store: Path, flatcar: Path, tmp_path: Path) -> None:
    result = mlos("build", "--verify", "sysext", "ignition", "oci", "overlay", "--recipes", PROJECT / "recipes", "--out", tmp_path / "v",
                  "--store", shared_store)
    report = json.loads((tmp_path / "v/verify.json").read_text())
    verdicts = {(o["stage"], o["output"]): o["verdict"] for o in report["outputs"]}
    assert result.code == 0, (verdicts, result.stderr)
    for name in SYSEXTS:
        assert verdicts[("sysext", f"{name}.raw")] == "identical", verdicts
    assert verdicts[("ignition", "mlos.ign")] == "identical", verdicts
    for name in ("mlos-core", "mlos-toolchain"):  # the same image digests: the same bytes throughout
        assert verdicts[("oci", f"{name}.oci.tar")] == verdicts[("oci", name)] == "identical", verdicts
    for output in ("mlos-overlay", "mlos-overlay.tar.gz", "distfiles"):
        assert verdicts[("overlay", output)] == "identical", verdicts
    for output in ("sysext/mlos-services.raw", "ignition/mlos.ign", "oci/mlos-core.oci.tar",
                   "oci/mlos-core/index.json", "overlay/mlos-overlay.tar.gz"):
        assert (tmp_path / "v" / output).read_bytes() == (flatcar / output).read_bytes()
