"""The kernel stage: MLOS patches on Debian's 6.1 source, checked configuration, a
reproducible bzImage and .deb, booted under QEMU; and its precise failures."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PROJECT, Started, gpg, mlos, write_repo

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="session")
def kernel_out(shared_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kernel-out")
    result = mlos("build", "kernel", "--recipes", PROJECT / "recipes", "--out", out,
                  "--store", shared_store)
    assert result.code == 0, result.stderr
    return out / "kernel"


def test_kernel_outputs_describe_the_build(kernel_out: Path) -> None:
    desc = json.loads((kernel_out / "kernel.json").read_text())
    assert desc["release"].endswith("-mlos") and desc["profile"] == "small"
    assert desc["source"]["package"] == "linux-source-6.1" and desc["source"]["source"] == "linux"
    series = [line for line in (PROJECT / "kernel/patches/series").read_text().splitlines()
              if line and not line.startswith("#")]
    assert [p["name"] for p in desc["patches"]] == series
    for p in desc["patches"]:
        data = (PROJECT / "kernel/patches" / p["name"]).read_bytes()
        assert p["sha256"] == hashlib.sha256(data).hexdigest()
    config = (kernel_out / "config").read_text()
    assert "CONFIG_MLOS=y" in config and "CONFIG_MLOS_SCHED_HINT=y" in config
    assert hashlib.sha256(config.encode()).hexdigest() == desc["config_sha256"]
    (deb,) = (kernel_out / "debs").iterdir()
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True,
                            text=True, check=True).stdout
    assert f"Package: linux-image-{desc['release']}" in fields
    assert "mlos_sched_hint" not in (kernel_out / "System.map").read_text()  # a field, not a symbol
    assert "mlos_sysfs_init" in (kernel_out / "System.map").read_text()


def _newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A reproducible newc archive: (name, mode, data, (rdev major, minor)), mtime 0, root."""
    out = bytearray()
    for ino, (name, mode, data, (major, minor)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))]):
        nb = name.encode() + b"\0"
        fields = [ino + 1, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nb), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def test_the_kernel_boots_and_shows_mlos(kernel_out: Path, shared_store: Path, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("the boot test needs QEMU: run scripts/install-deps")
    recipes = write_repo(tmp_path / "repo", """
        [[stage]]
        name = "test-init"
        builder = "kernel"
        outputs = ["init"]
        run = [["sh", "-c", "gcc -static -O2 -o /out/init /in/src/mlos-test-init.c && strip /out/init"]]
        [stage.inputs]
        src = "path:data"
    """)
    shutil.copytree(PROJECT / "tests/data/kernel", tmp_path / "repo/data")
    built = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert built.code == 0, built.stderr
    init = (tmp_path / "out/test-init/init").read_bytes()
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(_newc([("dev", 0o40755, b"", (0, 0)), ("dev/console", 0o20600, b"", (5, 1)),
                              ("proc", 0o40755, b"", (0, 0)), ("sys", 0o40755, b"", (0, 0)),
                              ("init", 0o100755, init, (0, 0))]))
    proc = subprocess.run(
        ["qemu-system-x86_64", "-m", "256", "-display", "none", "-monitor", "none", "-serial", "stdio",
         "-no-reboot", "-kernel", str(kernel_out / "bzImage"), "-initrd", str(initrd),
         "-append", "console=ttyS0 panic=-1"],
        capture_output=True, text=True, timeout=300)
    log = proc.stdout
    assert "MLOS-TEST done" in log, log[-3000:]
    banner = next(line for line in log.splitlines() if "Linux version" in line)
    assert "-mlos" in banner and "MLOS/1.0" in banner
    assert "MLOS-TEST version=1.0" in log
    assert "MLOS-TEST parent set=0 get=2" in log
    assert "MLOS-TEST parent status: MlosSchedHint:\ttraining-throughput" in log
    assert "MLOS-TEST child get=2" in log  # inherited across fork
    assert "MLOS-TEST child status: MlosSchedHint:\ttraining-throughput" in log
    assert "MLOS-TEST invalid=-1" in log


def _kernel_repo(root: Path, stages: str) -> Path:
    recipes = write_repo(root, stages)
    shutil.copytree(PROJECT / "kernel", root / "kernel")
    return recipes


CHECK = """
[[stage]]
name = "kernel-check"
builder = "kernel"
outputs = ["patched-files.txt"]
run = [["sh", "/in/kernel/scripts/build.sh"]]
env = {{ MLOS_KERNEL_STOP_AFTER = "patches" }}
[stage.inputs]
source = "deb:linux-source-6.1=6.1.176-1#sha256=9305d1a151b8e83dcb88aa11361e7b9513f0c252bdf7f5647e4542762d99c094"
kernel = "path:kernel"
{extra}
"""


def test_a_patch_that_does_not_apply_names_patch_and_hunk(shared_store: Path, tmp_path: Path) -> None:
    recipes = _kernel_repo(tmp_path / "repo", CHECK.format(extra=""))
    patches = tmp_path / "repo/kernel/patches"
    (patches / "0099-stale.patch").write_text(
        "Subject: [PATCH] a stale patch\n---\n--- a/Makefile\n+++ b/Makefile\n"
        "@@ -1,3 +1,3 @@\n # SPDX-License-Identifier: GPL-2.0\n VERSION = 6\n-PATCHLEVEL = 2\n+PATCHLEVEL = 3\n")
    with (patches / "series").open("a") as f:
        f.write("0099-stale.patch\n")
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4
    assert "patch 0099-stale.patch does not apply cleanly" in result.stderr
    assert "-PATCHLEVEL = 2" in result.stderr  # the rejected hunk itself
    assert "Hunk #1 FAILED" in result.stderr


def test_a_dropped_option_is_named(shared_store: Path, tmp_path: Path) -> None:
    recipes = _kernel_repo(tmp_path / "repo", CHECK.format(extra="").replace(
        'env = { MLOS_KERNEL_STOP_AFTER = "patches" }', 'env = { MLOS_KERNEL_STOP_AFTER = "config" }'))
    with (tmp_path / "repo/kernel/config/small.config").open("a") as f:
        f.write("CONFIG_KVM=y\n")  # needs CONFIG_VIRTUALIZATION, which the fragment does not set
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4
    assert "small.config asks for CONFIG_KVM=y but the resolved configuration has: absent" in result.stderr


def test_the_release_profile_is_debian_config_plus_the_mlos_fragment(shared_store: Path,
                                                                    tmp_path: Path) -> None:
    """The project's own kernel recipe in the release profile, stopped after the checked
    configuration (the full distribution build takes hours on two cores)."""
    text = (PROJECT / "recipes/kernel.toml").read_text()
    stopped = text.replace('outputs = ["bzImage", "config", "System.map", "debs", "kernel.json"]',
                           'outputs = ["config"]').replace(
        'env = { MLOS_PROFILE = "small" }', 'env = { MLOS_PROFILE = "small", MLOS_KERNEL_STOP_AFTER = "config" }')
    assert stopped.count("MLOS_KERNEL_STOP_AFTER") == 1 and 'outputs = ["config"]' in stopped
    recipes = _kernel_repo(tmp_path / "repo", stopped)
    common = ("--recipes", recipes, "--profile", "release", "--store", shared_store)
    fetched = mlos("fetch", *common)
    assert fetched.code == 0, fetched.stderr
    result = mlos("build", *common, "--out", tmp_path / "out", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["profile"] == "release"
    config = (tmp_path / "out/kernel/config").read_text().splitlines()
    for fragment in ("release.config", "boot-critical.config"):
        for line in (PROJECT / "kernel/config" / fragment).read_text().splitlines():
            if line.startswith("CONFIG_"):
                assert line in config, (fragment, line)
    assert 'CONFIG_MODULE_SIG_KEY=""' in config  # no signing key generated at build time
    assert "CONFIG_BTRFS_FS=m" in config and "CONFIG_MLX5_CORE=m" in config  # Debian's, not tinyconfig's
    # Debian builds these as modules; the initramfs has none, so the fragment builds them in.
    assert "CONFIG_SQUASHFS=y" in config and "CONFIG_VIRTIO_BLK=y" in config


@pytest.fixture
def signed_patchset(tmp_path: Path, gnupg_key: Callable[[str], Path]) -> tuple[Path, Path, Path]:
    """(archive, detached armored signature, public key) made with a throwaway key."""
    home = gnupg_key("MLOS test patches <patches@mlos.example>")
    src = tmp_path / "patchset"
    src.mkdir()
    (src / "series").write_text("0001-docs.patch\n")
    (src / "0001-docs.patch").write_text(
        "Subject: [PATCH] docs: MLOS note\n---\n--- /dev/null\n+++ b/Documentation/mlos-note.txt\n"
        "@@ -0,0 +1 @@\n+MLOS Linux kernels carry the MLOS patch set.\n")
    archive = tmp_path / "patchset.tar"
    subprocess.run(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-cf", str(archive),
                    "-C", str(src), "series", "0001-docs.patch"], check=True)
    sig = tmp_path / "patchset.tar.asc"
    gpg(home, "--armor", "--detach-sign", "--output", str(sig), str(archive))
    key = tmp_path / "patches.asc"
    key.write_bytes(gpg(home, "--armor", "--export"))
    return archive, sig, key


def _with_patchset(tmp_path: Path, archive: Path, sig: Path | None, key: Path,
                   store: Path) -> Path:
    inputs = f'patchset = "url:http://127.0.0.1:1/patchset.tar#sha256={hashlib.sha256(archive.read_bytes()).hexdigest()}"'
    if sig is not None:
        inputs += f'\n"patchset.asc" = "url:http://127.0.0.1:1/patchset.tar.asc#sha256={hashlib.sha256(sig.read_bytes()).hexdigest()}"'
    recipes = _kernel_repo(tmp_path / "repo", CHECK.format(extra=inputs))
    shutil.copy(key, tmp_path / "repo/kernel/keys/test-patches.asc")
    # Pinned downloads normally come through `mlos-repro fetch`; here they are put in the
    # store directly, as fetch would after checking their digests.
    from mlos_repro.store import Store
    s = Store(store)
    s.put_file(archive)
    if sig is not None:
        s.put_file(sig)
    return recipes


def test_a_signed_patch_archive_is_verified_and_applied(shared_store: Path, tmp_path: Path,
                                                       signed_patchset: tuple[Path, Path, Path]) -> None:
    archive, sig, key = signed_patchset
    recipes = _with_patchset(tmp_path, archive, sig, key, shared_store)
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 0, result.stderr
    assert "Documentation/mlos-note.txt" in (tmp_path / "out/kernel-check/patched-files.txt").read_text()


def test_a_tampered_patch_archive_is_refused(shared_store: Path, tmp_path: Path,
                                            signed_patchset: tuple[Path, Path, Path]) -> None:
    archive, sig, key = signed_patchset
    data = archive.read_bytes().replace(b"carry the MLOS", b"carry an EVIL")
    archive.write_bytes(data)
    recipes = _with_patchset(tmp_path, archive, sig, key, shared_store)
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4
    assert "BAD signature on the patch archive" in result.stderr
    assert "applied 0001-docs.patch" not in result.stderr


def test_a_patch_archive_without_signature_is_refused(shared_store: Path, tmp_path: Path,
                                                     signed_patchset: tuple[Path, Path, Path]) -> None:
    archive, _, key = signed_patchset
    recipes = _with_patchset(tmp_path, archive, None, key, shared_store)
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert result.code == 4
    assert "the patch archive has no signature" in result.stderr


@pytest.mark.background
def test_the_kernel_build_is_reproducible(kernel_verify: Started | None) -> None:
    """Every variation of build --verify, on the real kernel build (the slowest test: its
    command started with the session, see the kernel_verify fixture)."""
    assert kernel_verify is not None
    result = kernel_verify.wait()
    report_file = kernel_verify.work / "out/verify.json"
    assert report_file.is_file(), result.stderr
    report = json.loads(report_file.read_text())
    verdicts = {o["output"]: o["verdict"] for o in report["outputs"]}
    outputs = ("bzImage", "config", "System.map", "debs", "kernel.json")
    # Each output and its SBOM, made again from the varied build's bytes.
    assert verdicts == {o: "identical" for o in outputs} | {f"{o}.cdx.json": "identical" for o in outputs}, \
        report["outputs"]
    assert result.code == 0, result.stderr
