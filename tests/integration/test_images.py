"""MLOS Linux images: the root filesystem, initramfs, hybrid ISO and disk image, booted under
QEMU (TCG) to systemd's multi-user.target with the MLOS services reported active; a corrupted
squashfs stopped by the initramfs with a clear message; and all of it rebuilt bit for bit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, mlos
from tests.qemu import OVMF, boot, nocloud_seed, secure_boot_vars, with_boot_loader

pytestmark = [pytest.mark.root, pytest.mark.slow]

MONITOR_OK = "mlos-monitor: all MLOS services active"
BOOTED = (MONITOR_OK, "Reached target multi-user.target")


@pytest.fixture(scope="session")
def images(shared_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("qemu-system-x86_64") is None or not OVMF.exists():
        pytest.fail("the image tests need QEMU and OVMF: run scripts/install-deps")
    out = tmp_path_factory.mktemp("images-out")
    result = mlos("build", "iso", "disk", "pxe", "uki", "--recipes", PROJECT / "recipes", "--out", out,
                  "--store", shared_store)
    assert result.code == 0, result.stderr
    return out


def assert_mlos_system(text: str) -> None:
    """The serial log of a boot that reached the MLOS system proper."""
    assert re.search(r"Linux version \S+-mlos .*MLOS/1\.0", text), "no MLOS kernel banner"
    assert "Reached target multi-user.target" in text
    # mlos-monitor reads /sys/kernel/mlos/version ("not an MLOS kernel" when it cannot).
    assert re.search(r"mlos-monitor: kernel \S+-mlos, MLOS 1\.0", text)
    assert "mlos-monitor: mlos-core.service active" in text
    assert "mlos-monitor: mlos-api.service active" in text
    assert MONITOR_OK in text
    assert "Failed to start" not in text, [ln for ln in text.splitlines() if "Failed" in ln]


def test_rootfs_lists_what_dpkg_installed(images: Path, tmp_path: Path) -> None:
    rows = [line.split("\t") for line in (images / "rootfs/packages.tsv").read_text().splitlines()]
    assert rows[0] == ["package", "version", "architecture", "source", "source_version"]
    packages = {r[0]: r for r in rows[1:]}
    assert {"systemd", "systemd-sysv", "udev", "mlos-services", "mlos-toolchain"} <= set(packages)
    assert packages["mlos-services"][1:3] == ["1.0.1", "all"]
    assert [r[0] for r in rows[1:]] == sorted(packages)
    # What the squashfs holds: dpkg's own database agrees, identity is left to the first boot.
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(tmp_path / "r"), str(images / "rootfs/rootfs.squashfs"),
                    "var/lib/dpkg/status", "etc/machine-id", "var/log", "var/cache/apt",
                    "etc/apt/sources.list"], check=True, capture_output=True)
    status = (tmp_path / "r/var/lib/dpkg/status").read_text()
    installed = re.findall(r"^Package: (\S+)$", status, flags=re.M)
    assert sorted(installed) == sorted(packages)
    assert (tmp_path / "r/etc/machine-id").read_bytes() == b""
    assert not [p for p in (tmp_path / "r/var/log").rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "r/var/cache/apt").rglob("*") if p.is_file()]
    assert "copy://" not in (tmp_path / "r/etc/apt/sources.list").read_text()


def test_iso_describes_itself(images: Path) -> None:
    info = json.loads((images / "iso/mlos.json").read_text())
    kernel = json.loads((images / "kernel/kernel.json").read_text())
    assert info["kernel"]["release"] == kernel["release"]
    assert info["packages"] == len((images / "rootfs/packages.tsv").read_text().splitlines()) - 1
    listing = subprocess.run(["xorriso", "-indev", str(images / "iso/mlos.iso"), "-find", "/", "-type", "f"],
                             capture_output=True, text=True, check=True).stdout
    for path in ("/boot/vmlinuz", "/boot/initrd.img", "/live/rootfs.squashfs",
                 "/live/rootfs.squashfs.sha256", "/.disk/info", "/.disk/mlos.json", "/boot/grub/grub.cfg"):
        assert f"'{path}'" in listing, listing
    # Its EFI system partition has room for the UKI `release` signs and writes there: the kernel
    # and initramfs, and 1 MiB more.
    from mlos_repro.inspect.gpt import partitions
    from mlos_repro.sign.secureboot import ESP_TYPE

    [esp] = [p for p in partitions(images / "iso/mlos.iso")[1] if p.type_guid == ESP_TYPE]
    payload = (images / "kernel/bzImage").stat().st_size + (images / "initramfs/initrd.img").stat().st_size
    assert esp.extent[1] >= payload + 2**20 >= (images / "uki/mlos-iso.efi").stat().st_size, (esp, payload)


def sbom_packages(sbom: dict[str, Any]) -> set[tuple[str, str, str]]:
    from packageurl import PackageURL

    out = set()
    for c in sbom["components"]:
        if c["type"] == "library":
            purl = PackageURL.from_string(c["purl"])
            out.add((c["name"], c["version"], purl.qualifiers["arch"]))
    return out


def test_iso_sbom_lists_what_dpkg_reports_inside_it(images: Path, tmp_path: Path) -> None:
    # The squashfs as the ISO carries it, and dpkg-query on its own database.
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(images / "iso/mlos.iso"), "-extract",
                    "/live/rootfs.squashfs", str(tmp_path / "rootfs.squashfs")], check=True, capture_output=True)
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(tmp_path / "r"), str(tmp_path / "rootfs.squashfs"),
                    "var/lib/dpkg"], check=True, capture_output=True)
    query = subprocess.run(["dpkg-query", f"--admindir={tmp_path / 'r/var/lib/dpkg'}", "-W", "-f",
                            "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n"],
                           check=True, capture_output=True, text=True).stdout
    dpkg = {tuple(line.split("\t")[1:]) for line in query.splitlines() if line.startswith("installed\t")}
    assert len(dpkg) > 100
    sbom = json.loads((images / "iso/mlos.iso.cdx.json").read_text())
    assert sbom_packages(sbom) == dpkg
    roles = [next(p["value"] for p in c["properties"] if p["name"] == "mlos:role")
             for c in sbom["components"] if c["type"] != "library"]
    assert roles.count("kernel") == 1 and roles.count("initramfs") == 1
    unowned = roles.count("unowned")
    assert len(sbom["components"]) == len(dpkg) + 2 + unowned
    # The SBOM names the ISO's exact bytes, the kernel with its patches, and it validates.
    info = mlos("sbom", images / "iso/mlos.iso", "--json")
    assert info.code == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["valid"] and summary["components"] == len(sbom["components"])
    assert (summary["name"], summary["version"]) == ("MLOS Linux", "1.0")
    kernel = next(c for c in sbom["components"] if c["name"] == "linux")
    patches = json.loads((images / "kernel/kernel.json").read_text())["patches"]
    assert {(c["name"], c["hashes"][0]["content"]) for c in kernel["components"]} == \
        {(p["name"], p["sha256"]) for p in patches}
    # The same root filesystem, wherever it is carried, is catalogued the same.
    for other in ("rootfs/rootfs.squashfs", "disk/mlos.raw", "disk/mlos.qcow2", "pxe/pxe"):
        assert sbom_packages(json.loads((images / f"{other}.cdx.json").read_text())) == dpkg, other


def test_iso_boots_with_bios(images: Path, tmp_path: Path) -> None:
    text = boot(tmp_path, "-cdrom", images / "iso/mlos.iso", until=BOOTED)
    assert "mlos-initramfs: checking rootfs.squashfs" in text
    assert_mlos_system(text)
    # No NoCloud seed and no config drive: cloud-init's generator disabled it, and it said nothing.
    assert "Cloud-init v." not in text
    # The live system keeps nothing: its overlay's upper layer is in memory.
    assert "keeping the system's changes" not in text and "future partition" not in text


def test_iso_boots_with_uefi(images: Path, tmp_path: Path) -> None:
    text = boot(tmp_path, "-cdrom", images / "iso/mlos.iso", until=BOOTED, uefi=True)
    assert_mlos_system(text)


CLOUD_CONFIG = """#cloud-config
hostname: mlos-test-01
users:
  - name: alice
    shell: /bin/bash
    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST alice@test]
bootcmd:
  - [sh, -c, 'echo "mlos-state-test: machine-id $(cat /etc/machine-id), marker $(cat /var/lib/mlos-test/marker 2>/dev/null || echo none), state $(findmnt --bytes --noheadings --output SIZE /run/mlos/rw) bytes" > /dev/console']
runcmd:
  - [sh, -c, 'echo "mlos-cloud-init-test: host $(hostname), alice $(id -u alice), key $(cat ~alice/.ssh/authorized_keys)" > /dev/console']
  - [sh, -c, 'mkdir -p /var/lib/mlos-test && echo written-on-first-boot > /var/lib/mlos-test/marker && echo "mlos-state-test: runcmd wrote the marker" > /dev/console']
power_state:
  mode: poweroff
  condition: true
"""
STATE = re.compile(r"mlos-state-test: machine-id ([0-9a-f]{32}), marker (\S+), state (\d+) bytes")
POWERED_OFF = "reboot: Power down"


def test_raw_disk_boots_with_bios_and_cloud_init_applies_a_nocloud_seed(images: Path, tmp_path: Path) -> None:
    """Debian's cloud-init, from a NoCloud seed on a second disk, on a machine with a network
    card as every cloud's has: the host name, a user with an SSH key, and a runcmd, whose line
    shows all three; cloud-init's own last words end the boot, and no stage of it failed.

    And the disk keeps its state: on the first boot the initramfs has systemd-repart make the
    state partition; the runcmd writes a marker and cloud-init powers the machine off. The disk
    is then made 1 GiB larger and booted again with the same seed: the marker and the
    machine-id are there, cloud-init's once-per-instance work (the runcmd, the power-off) does
    not run again, and the state partition and its file system have grown into the new space."""
    disk = tmp_path / "mlos.raw"
    shutil.copyfile(images / "disk/mlos.raw", disk)
    machine = ("-drive", f"file={disk},format=raw,if=virtio",
               "-drive", f"file={nocloud_seed(tmp_path, CLOUD_CONFIG, 'mlos-test-01')},format=raw,if=virtio,readonly=on",
               "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0")
    text = boot(tmp_path, *machine, until=("mlos-cloud-init-test:", "finished at", *BOOTED, POWERED_OFF))
    assert_mlos_system(text)
    assert re.search(r"Cloud-init v\. \S+ finished at .* Datasource DataSourceNoCloud \[seed=/dev/vdb\]", text), text
    assert re.search(r"mlos-cloud-init-test: host mlos-test-01, alice 1\d\d\d, key ssh-ed25519 "
                     r"AAAAC3NzaC1lZDI1NTE5AAAAITEST alice@test", text), text
    # Nothing failed and nothing was invalid; the one warning cloud-init 22.4 gives an image
    # without an SSH server (set-passwords, about ssh_pwauth) is the only one.
    warnings = [ln for ln in text.splitlines() if "WARNING" in ln and "SSH service 'ssh' is not installed" not in ln]
    assert "failed stage" not in text and not warnings, warnings
    # systemd-repart's own words, then the initramfs's.
    assert "Formatting future partition 3." in text and "Adding new partition 3 to partition table." in text, text
    assert "mlos-initramfs: keeping the system's changes on /dev/vda4" in text, text
    [(machine_id, marker, size)] = STATE.findall(text)
    assert marker == "none" and "mlos-state-test: runcmd wrote the marker" in text, text

    subprocess.run(["qemu-img", "resize", "-f", "raw", str(disk), "+1G"], check=True, capture_output=True)
    again = boot(tmp_path, *machine, until=("mlos-state-test: machine-id", "finished at", *BOOTED))
    assert_mlos_system(again)
    assert "Growing existing partition 3." in again and "mlos-initramfs: growing the state file system" in again, again
    [(machine_id_again, marker_again, size_again)] = STATE.findall(again)
    assert (machine_id_again, marker_again) == (machine_id, "written-on-first-boot"), again
    assert "mlos-state-test: runcmd wrote the marker" not in again and "Formatting" not in again, again
    assert int(size_again) > int(size) + 900 * 2**20, (size, size_again)


def test_qcow2_disk_boots_with_uefi(images: Path, tmp_path: Path) -> None:
    disk = tmp_path / "mlos.qcow2"
    shutil.copyfile(images / "disk/mlos.qcow2", disk)
    text = boot(tmp_path, "-drive", f"file={disk},format=qcow2,if=virtio", until=BOOTED, uefi=True)
    assert_mlos_system(text)
    assert "mlos-initramfs: keeping the system's changes on /dev/vda4" in text


@pytest.fixture(scope="module")
def images_release(images: Path, shared_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A signed release of the images, with keys made by `keys init` (RELEASE/keys): the UKIs
    signed for Secure Boot with its db key."""
    root = tmp_path_factory.mktemp("images-release")
    keys = root / "keys"
    assert mlos("keys", "init", keys).code == 0
    rel = root / "release"
    # The images and what they need (the toolchain sanity stage is not among them).
    made = mlos("release", "--keys", keys, "--out", rel, "--from", images, "--recipes", PROJECT / "recipes",
                "--store", shared_store, "--stage", "iso", "--stage", "disk", "--stage", "pxe", "--stage", "uki")
    try:
        assert made.code == 0, made.stderr
        yield rel
    finally:
        subprocess.run(["gpgconf", "--homedir", str(keys / "gnupg"), "--kill", "gpg-agent"], check=False)


REFUSED = "Access Denied"  # OVMF's BdsDxe, when the image's signature is not in db


def test_secure_boot_runs_the_signed_media_and_refuses_others(images: Path, images_release: Path,
                                                             tmp_path: Path) -> None:
    """OVMF with Secure Boot enforced and only the release's db certificate enrolled: the
    release's signed disk (its qcow2) and signed ISO boot MLOS Linux (the firmware starts their
    signed UKI, systemd's stub, which starts the kernel with the initramfs and command line the
    image carries); the unsigned image and a signed one altered afterwards are refused."""
    signed = images_release / "artifacts/uki/secureboot"
    firmware = secure_boot_vars(images_release.parent / "keys/secureboot/db.cer", tmp_path / "vars.fd")
    media = (("disk", ["-drive", f"file={images_release / 'artifacts/disk/secureboot/mlos.qcow2'},format=qcow2,"
                                 "if=virtio,snapshot=on"], "part:PARTLABEL=mlos-root"),
             ("ISO", ["-cdrom", images_release / "artifacts/iso/secureboot/mlos.iso"], "live:LABEL=MLOS_1"))
    for name, drive, root in media:
        text = boot(tmp_path, *drive, until=BOOTED, secure_vars=firmware, fail_on=("Kernel panic", REFUSED))
        assert_mlos_system(text)
        # The UKI's own command line: GRUB, which adds BOOT_IMAGE=, never ran; and the kernel
        # saw Secure Boot on.
        assert f"Command line: mlos.root={root} console=tty0 console=ttyS0,115200n8\n" in text, name
        assert "EFI stub: UEFI Secure Boot is enabled." in text and "secureboot: Secure boot enabled" in text, name

    disk = tmp_path / "mlos.raw"
    altered = tmp_path / "altered.efi"
    data = bytearray((signed / "mlos-disk.efi").read_bytes())
    at = data.index(b"mlos.root=part:PARTLABEL=mlos-root")  # the signed command line
    data[at:at + 9] = b"init=/bin"
    altered.write_bytes(bytes(data))
    for name, loader in (("unsigned", images / "uki/mlos-disk.efi"), ("altered after signing", altered)):
        shutil.copyfile(images / "disk/mlos.raw", disk)
        with_boot_loader(disk, loader)
        text = boot(tmp_path, "-drive", f"file={disk},format=raw,if=virtio", until=REFUSED, secure_vars=firmware)
        # The firmware's own words, for the disk's boot loader; and nothing of ours ran.
        assert re.search(r'BdsDxe: failed to load Boot\d+ "UEFI Misc Device" from \S+: Access Denied', text), name
        assert "EFI stub" not in text and "Linux version" not in text, name


def test_a_signed_unified_kernel_image_gives_back_the_built_one(images: Path, tmp_path: Path) -> None:
    """What a release does with the UKIs (sbsign, after the build, with a db key) and what an
    auditor checks: the signature verifies against the certificate, and with it removed
    (sbattach --remove) the image is byte for byte the attested unsigned one."""
    key, cert = tmp_path / "db.key", tmp_path / "db.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=MLOS test db (not for release)", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    for name in ("mlos-disk.efi", "mlos-iso.efi"):
        built = images / "uki" / name
        signed = tmp_path / f"{name}.signed"
        subprocess.run(["sbsign", "--key", key, "--cert", cert, "--output", signed, built],
                       check=True, capture_output=True)
        checked = subprocess.run(["sbverify", "--cert", cert, signed], capture_output=True, text=True)
        assert checked.returncode == 0 and "Signature verification OK" in checked.stdout, checked
        unsigned = tmp_path / f"{name}.removed"
        shutil.copyfile(signed, unsigned)
        subprocess.run(["sbattach", "--remove", unsigned], check=True, capture_output=True)
        assert unsigned.read_bytes() == built.read_bytes()
        # The built image is not signed: sbverify says no; and pefix refuses to touch a signed one.
        assert subprocess.run(["sbverify", "--cert", cert, built], capture_output=True).returncode != 0
        refused = subprocess.run([sys.executable, PROJECT / "stage-tools/efi/pefix.py", signed],
                                 capture_output=True, text=True, env={"SOURCE_DATE_EPOCH": "1"})
        assert refused.returncode == 1 and "already signed" in refused.stderr, refused.stderr


def test_pxe_bundle_boots_over_tftp(images: Path, tmp_path: Path) -> None:
    bundle = images / "pxe/pxe"
    sums = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=bundle,
                          capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    # iPXE (QEMU's NIC boot ROM) gets boot.ipxe from QEMU's DHCP and TFTP server.
    text = boot(tmp_path, "-netdev", f"user,id=n0,tftp={bundle},bootfile=boot.ipxe",
                "-device", "virtio-net-pci,netdev=n0", "-boot", "n", until=BOOTED)
    assert "mlos-initramfs: checking rootfs.squashfs" in text
    assert_mlos_system(text)


def test_corrupted_squashfs_stops_with_a_clear_message(images: Path, tmp_path: Path) -> None:
    iso = tmp_path / "mlos.iso"
    shutil.copyfile(images / "iso/mlos.iso", iso)
    squashfs = (images / "rootfs/rootfs.squashfs").read_bytes()
    data = bytearray(iso.read_bytes())
    start = data.find(squashfs[:4096])
    assert start > 0 and data[start:start + len(squashfs)] == squashfs
    middle = start + len(squashfs) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    iso.write_bytes(data)
    text = boot(tmp_path, "-cdrom", iso, until="starting a rescue shell",
                fail_on=("Kernel panic", "Reached target"))
    assert "mlos-initramfs: ERROR: rootfs.squashfs is corrupted" in text
    assert "mlos-repro verify-iso" in text  # says what to do
    assert "switch_root" not in text and "starting /sbin/init" not in text


def test_a_state_partition_that_is_not_ext4_is_never_formatted(images: Path, tmp_path: Path) -> None:
    """A disk whose mlos-state partition holds something else (here, random bytes standing for
    another file system or someone's data): systemd-repart keeps it, as it keeps every partition
    it did not make, and the initramfs stops with a message instead of formatting it."""
    disk = tmp_path / "mlos.raw"
    shutil.copyfile(images / "disk/mlos.raw", disk)
    subprocess.run(["sfdisk", "--append", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
                   input="type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=mlos-state\n", text=True, check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    [state] = [p for p in table["partitions"] if p.get("name") == "mlos-state"]
    data = bytes(range(256)) * (2**20 // 256)
    with disk.open("r+b") as f:
        f.seek(int(state["start"]) * 512)
        f.write(data)
    text = boot(tmp_path, "-drive", f"file={disk},format=raw,if=virtio", until="starting a rescue shell",
                fail_on=("Kernel panic", "Reached target"))
    assert "mlos-initramfs: ERROR: the state partition /dev/vda4 holds no ext4 file system" in text, text
    assert "mlos.state=off" in text  # says what to do
    assert "Formatting" not in text and "starting /sbin/init" not in text, text
    with disk.open("rb") as f:
        f.seek(int(state["start"]) * 512)
        assert f.read(len(data)) == data  # untouched


KERNEL_STAND_IN = """
# The kernel stage's outputs from the project build, so this test varies the image stages only.
[[stage]]
name = "kernel"
builder = "packaging"
outputs = ["bzImage", "config", "System.map", "debs", "kernel.json"]
run = [["cp", "-r", "/in/prebuilt/.", "/out/"]]
[stage.inputs]
prebuilt = "path:prebuilt-kernel"
"""


def test_images_are_reproducible(images: Path, shared_store: Path, gnupg_key: Callable[[str], Path],
                                 tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    for name in ("builder.toml", "builder.lock", "packages.toml", "repository.toml", "upstream.toml",
                 "image.toml"):
        shutil.copy(PROJECT / "recipes" / name, repo / "recipes" / name)
    (repo / "recipes/kernel.toml").write_text(KERNEL_STAND_IN)
    for tree in ("recipes/packages", "recipes/upstream", "stage-tools", "sbom"):
        shutil.copytree(PROJECT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(images / "kernel", repo / "prebuilt-kernel")
    home = gnupg_key("MLOS test archive <archive@mlos.example>")
    # The varied build runs on a Dask LocalCluster (--executor dask): the images stages, the
    # privileged root filesystem among them, give on its workers the bytes the local build gave.
    result = mlos("build", "--verify", "iso", "disk", "pxe", "uki", "--recipes", repo / "recipes",
                  "--out", tmp_path / "out", "--store", shared_store, "--gnupghome", home, "--json",
                  "--executor", "dask")
    report = json.loads((tmp_path / "out/verify.json").read_text())
    verdicts = {(o["stage"], o["output"]): o["verdict"] for o in report["outputs"]}
    assert result.code == 0, (verdicts, result.stderr)
    assert report["reproducible"] is True
    outputs = (("rootfs", "rootfs.squashfs"), ("rootfs", "packages.tsv"), ("initramfs", "initrd.img"),
               ("iso", "mlos.iso"), ("iso", "mlos.json"), ("disk", "mlos.raw"), ("disk", "mlos.qcow2"),
               ("pxe", "pxe"), ("uki", "mlos-disk.efi"), ("uki", "mlos-iso.efi"))
    for output in outputs:
        assert verdicts[output] == "identical", verdicts
        # Each SBOM made again from the varied build's bytes, uncached: the same bytes.
        assert verdicts[(output[0], output[1] + ".cdx.json")] == "identical", verdicts
    # The control build is the project's own: the same bytes as the images the boot tests ran.
    for stage, name in (("iso", "mlos.iso"), ("disk", "mlos.qcow2")):
        assert (tmp_path / "out" / stage / name).read_bytes() == (images / stage / name).read_bytes()


def test_a_release_of_the_images_verifies(images: Path, images_release: Path) -> None:
    """The signed release of these images: every check of `verify`, the bindings on real
    images (the ISO's squashfs, kernel and initramfs, the disk's padded root partition, the
    PXE files), the UKIs signed for Secure Boot, and `verify-iso` on the ISO as a user runs it."""
    rel, keys = images_release, images_release.parent / "keys"
    checked = mlos("verify", rel, "--root-key", keys / "attestation/owner.pub.json", "--keyring",
                   keys / "archive-keyring.gpg", "--db-cert", keys / "secureboot/db.cer", "--json")
    report = json.loads(checked.stdout)
    assert checked.code == 0, report
    notes = {c["number"]: c["note"] for c in report["checks"]}
    assert notes[12] == "6 bindings hold", notes
    assert "1 repositories signed by" in notes[13], notes
    assert notes[15] == "2 EFI images signed by CN=MLOS Linux Secure Boot db key", notes
    assert notes[16] == "3 images boot uki/secureboot/mlos-disk.efi, uki/secureboot/mlos-iso.efi", notes
    assert [c["number"] for c in report["checks"] if c["status"] == "skipped"] == [11, 14]
    iso = mlos("verify-iso", rel / "artifacts/iso/mlos.iso", "--keyring", keys / "archive-keyring.gpg", "--json")
    assert iso.code == 0, iso.stderr
    info = json.loads(iso.stdout)
    sbom = json.loads((images / "iso/mlos.iso.cdx.json").read_text())
    facts = info["facts"]
    assert (facts["version"], facts["kernel"]) == ("1.0", json.loads((images / "kernel/kernel.json").read_text())["release"])
    assert facts["packages"] == sum(1 for c in sbom["components"] if c["type"] == "library")
    # The ISO for Secure Boot machines: its own line of the signed SHA256SUMS.
    signed_iso = mlos("verify-iso", rel / "artifacts/iso/secureboot/mlos.iso", "--keyring",
                      keys / "archive-keyring.gpg", "--json")
    assert signed_iso.code == 0, signed_iso.stderr
    said = json.loads(signed_iso.stdout)
    assert said["listed_as"] == "iso/secureboot/mlos.iso"
    # What it holds is the attested ISO's (its SBOM, through the signed media.json), and it says so.
    assert said["facts"] == facts, said
    assert any(n.startswith("kernel and packages are those of iso/mlos.iso") for n in said["notes"]), said
