"""Image stages: mlos-repro vs. the same scripts run bare, full small build cold and warm, and
boot times of every image to systemd's multi-user.target under QEMU (TCG), among them the
Unified Kernel Image with Secure Boot off and on (signed with a db key made for the run).

    .venv/bin/python benchmarks/images.py [--store DIR] [--skip-full-cold] [--boots N] [--quick]

"Bare" runs the stage scripts of stage-tools/image (mmdebstrap, mksquashfs, the cpio writer,
grub-mkimage, xorriso, sfdisk, qemu-img) directly on the host, as root, in a scratch
directory, with /in and /out replaced by host directories, a scratch working directory and
the stage's settings as environment variables: no sandbox, store, cache or manifests.
"mlos-repro cold" is the same five stages built through mlos-repro with a cache miss forced
on each of them (their recipes get one more environment variable), their upstream stages
cached. Needs the image environment's tools on the host (scripts/install-deps installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlos_repro.env.assemble import local_mirror
from mlos_repro.env.lockfile import locked_environment
from mlos_repro.recipe import load_recipes
from mlos_repro.sign import secureboot
from mlos_repro.store import Store, default_root
from tests.qemu import OVMF_VARS, nocloud_seed, secure_boot_vars, secure_firmware, with_boot_loader

PROJECT = Path(__file__).resolve().parent.parent
IMAGE_STAGES = ("rootfs", "initramfs", "iso", "disk", "pxe")
OVMF = "/usr/share/ovmf/OVMF.fd"
BOOTED = "Reached target multi-user.target"
HANDOFF = "mlos-initramfs: starting"  # the initramfs hands over to systemd (--quick boots this far)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def mlos(*args: str | Path) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlos_repro", *map(str, args), "--json"], cwd=PROJECT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mlos-repro {' '.join(map(str, args))} failed:\n{proc.stderr}")
    summary: dict[str, object] = json.loads(proc.stdout)
    return seconds, summary


def stage_seconds(summary: dict[str, object], names: tuple[str, ...]) -> dict[str, float]:
    stages = summary["stages"]
    assert isinstance(stages, dict)
    return {n: float(stages[n]["seconds"]) for n in names}


def forced_miss_recipes(work: Path) -> Path:
    """A copy of the repository whose image stages miss the cache (one more env variable)."""
    repo = work / "repo"
    shutil.copytree(PROJECT / "recipes", repo / "recipes")
    for tree in ("stage-tools", "kernel"):
        shutil.copytree(PROJECT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    image = repo / "recipes/image.toml"
    image.write_text(_add_env(image.read_text(), uuid.uuid4().hex))
    return repo / "recipes"


def _add_env(text: str, nonce: str) -> str:
    """Every [[stage]] of image.toml gets MLOS_BENCH = nonce in its [stage.env] table."""
    out = []
    for block in text.split("[[stage]]"):
        if "[stage.env]" in block:
            block = block.replace("[stage.env]\n", f'[stage.env]\nMLOS_BENCH = "{nonce}"\n', 1)
        elif block.strip():
            table = f'[stage.env]\nMLOS_BENCH = "{nonce}"\n\n[stage.inputs]\n'
            block = block.replace("[stage.inputs]\n", table, 1)
        out.append(block)
    return "[[stage]]".join(out)


def bare(store: Store, built: Path, work: Path) -> dict[str, float]:
    """Each image stage's script on the host, inputs as host directories."""
    recipes = load_recipes(PROJECT / "recipes")
    env_spec, locked = locked_environment(recipes.builder, "target")
    inputs = work / "in"
    local_mirror(env_spec, locked, store, inputs / "debian")
    (inputs / "mlos").mkdir()
    shutil.copytree(built / "repository/repo", inputs / "mlos/repo")
    shutil.copytree(built / "kernel", inputs / "kernel")
    tools = inputs / "tools"
    shutil.copytree(PROJECT / "stage-tools/image", tools, ignore=shutil.ignore_patterns("__pycache__"))
    for script in [*tools.glob("*.sh"), *tools.glob("*.py")]:
        script.write_text(script.read_text().replace("/in/", f"{inputs}/").replace("/out", f"{work}/out"))
    seconds: dict[str, float] = {}
    for name in IMAGE_STAGES:
        stage = recipes.stages[name]
        for d in ("out", "build"):
            shutil.rmtree(work / d, ignore_errors=True)
            (work / d).mkdir()
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(work / "build"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
               "MLOS_STAGE": name,
               "SOURCE_DATE_EPOCH": str(recipes.builder.source_date_epoch), **dict(stage.env)}
        script = tools / stage.run[0][1].rsplit("/", 1)[1]
        start = time.perf_counter()
        subprocess.run(["sh", str(script)], cwd=work / "build", env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds[name] = time.perf_counter() - start
        # What the next stages take as input.
        if name in ("rootfs", "initramfs"):
            shutil.copytree(work / "out", inputs / name)
        if name == "rootfs":
            # The chroot mounts are gone; the directory is root's and large.
            subprocess.run(["rm", "-rf", str(work / "build")], check=True)
    return seconds


def secure_boot_rows(built: Path, work: Path) -> dict[str, list[str]]:
    """The disk with mlos-disk.efi as its boot loader on the Secure Boot OVMF (q35, SMM): the
    unsigned image with no keys enrolled (Secure Boot off), and the image signed with a db key
    made here, that key enrolled (Secure Boot on). The same machine and firmware: the second
    row costs the signature checks."""
    db = secureboot.generate(work / "db", "MLOS benchmark db key (not for release)")
    signed = work / "mlos-disk.signed.efi"
    signed.write_bytes(secureboot.sign(db, built / "uki/mlos-disk.efi", "uki/mlos-disk.efi"))
    (work / "db.cer").write_bytes(db.der_bytes())
    rows: dict[str, list[str]] = {}
    for name, loader, store in (
            ("UKI on the disk, UEFI q35, Secure Boot off", built / "uki/mlos-disk.efi", OVMF_VARS),
            ("UKI signed, UEFI q35, Secure Boot on", signed,
             secure_boot_vars(work / "db.cer", work / "secure-vars.fd"))):
        disk, vars_file = work / f"uki-{len(rows)}.raw", work / f"vars-{len(rows)}.fd"
        shutil.copyfile(built / "disk/mlos.raw", disk)
        with_boot_loader(disk, loader)
        shutil.copyfile(store, vars_file)
        rows[name] = [*secure_firmware(vars_file), "-net", "none",
                      "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    return rows


CLOUD_CONFIG = """#cloud-config
hostname: mlos-bench
users:
  - name: alice
    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBENCH alice@bench]
runcmd:
  - [sh, -c, 'echo mlos-bench-runcmd > /dev/console']
"""
CLOUD_DONE = "finished at"  # cloud-init's last line: cloud-final ran (after multi-user.target)


def boot_time(args: list[str], tmp: Path, timeout: float = 600, until: str = BOOTED) -> float:
    log = tmp / f"serial-{time.monotonic_ns()}.log"
    machine = [] if "-machine" in args else ["-machine", "pc"]
    argv = ["qemu-system-x86_64", *machine, "-m", "1024", "-smp", "1", "-nographic",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{log}", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            time.sleep(0.2)
            if log.exists() and until.encode() in ANSI.sub(b"", log.read_bytes()):
                return time.perf_counter() - start
            if proc.poll() is not None:
                break
    finally:
        proc.kill()
        proc.wait()
    raise SystemExit(f"no {until!r} within {timeout} s: {' '.join(argv)}")


def quick(built: Path, work: Path, warm: float) -> None:
    kernel, initrd = built / "kernel/bzImage", work / "both.img"
    pxe = built / "pxe/pxe"
    initrd.write_bytes((pxe / "initrd.img").read_bytes() + (pxe / "rootfs.img").read_bytes())
    base = boot_time(["-net", "none", "-kernel", str(kernel), "-initrd", str(initrd),
                      "-append", "console=ttyS0 mlos.root=initrd"], work, until=HANDOFF)
    iso = boot_time(["-net", "none", "-cdrom", str(built / "iso/mlos.iso")], work, until=HANDOFF)
    print("full small build (`mlos-repro build`, every stage), --quick")
    print(f"   warm (all cached):  {warm:7.2f} s")
    print(f"boot to the initramfs' {HANDOFF!r} (not multi-user: --quick) under QEMU TCG, -smp 1, "
          "one boot each")
    print(f"   {'kernel + initrds, no firmware (baseline)':42} {base:6.1f} s")
    print(f"   {'ISO, BIOS':42} {iso:6.1f} s   ratio {iso / base:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--skip-full-cold", action="store_true",
                        help="leave out the full cold build (it rebuilds the kernel: ~7 min)")
    parser.add_argument("--boots", type=int, default=1, help="boots per image (median reported)")
    parser.add_argument("--quick", action="store_true",
                        help="the warm build and two boots (kernel + initrds, ISO with BIOS), each as far "
                             "as systemd's start only (CI)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/images.py runs mmdebstrap as root (as the rootfs stage does)")
    store_root = args.store or Path(os.environ.get("MLOS_REPRO_STORE") or default_root())
    store = Store(store_root)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        mlos("build", "--store", store_root, "--out", work / "o-warm")  # everything in the store
        warm, _ = mlos("build", "--store", store_root, "--out", work / "o-warm")
        built = work / "o-warm"
        full_cold = None
        if args.quick:
            quick(built, work, warm)
            return
        if not args.skip_full_cold:
            full_cold, _ = mlos("build", "--no-cache", "--store", store_root, "--out", work / "o-cold")
        cold_total, cold = mlos("build", *IMAGE_STAGES, "--recipes", forced_miss_recipes(work),
                                "--store", store_root, "--out", work / "o-miss")
        ours = stage_seconds(cold, IMAGE_STAGES)
        baseline = bare(store, built, work / "bare")

        iso, disk = built / "iso/mlos.iso", work / "disk.qcow2"
        shutil.copyfile(built / "disk/mlos.qcow2", disk)
        # Every boot of a disk is its first (the writes go to a snapshot QEMU drops): the
        # initramfs makes the state partition each time.
        drive = f"file={disk},format=qcow2,if=virtio,snapshot=on"
        kernel, initrd = built / "kernel/bzImage", work / "both.img"
        pxe = built / "pxe/pxe"
        initrd.write_bytes((pxe / "initrd.img").read_bytes() + (pxe / "rootfs.img").read_bytes())
        images = {
            "kernel + initrds, no firmware (baseline)":
                ["-net", "none", "-kernel", str(kernel), "-initrd", str(initrd),
                 "-append", "console=ttyS0 mlos.root=initrd"],
            "ISO, BIOS": ["-net", "none", "-cdrom", str(iso)],
            "ISO, UEFI (OVMF)": ["-net", "none", "-bios", OVMF, "-cdrom", str(iso)],
            "disk qcow2, BIOS": ["-net", "none", "-drive", drive],
            "disk qcow2, UEFI": ["-net", "none", "-bios", OVMF, "-drive", drive],
            "PXE (iPXE over TFTP)": ["-netdev", f"user,id=n0,tftp={pxe},bootfile=boot.ipxe",
                                     "-device", "virtio-net-pci,netdev=n0", "-boot", "n"],
            **secure_boot_rows(built, work),
        }
        boots = {name: statistics.median(boot_time(a, work) for _ in range(args.boots))
                 for name, a in images.items()}
        # A later boot of the disk: its state partition made by a first boot, not timed.
        kept = work / "kept.qcow2"
        shutil.copyfile(built / "disk/mlos.qcow2", kept)
        again = ["-net", "none", "-drive", f"file={kept},format=qcow2,if=virtio"]
        boot_time(again, work)
        boots["disk qcow2, BIOS, a later boot (state kept)"] = statistics.median(
            boot_time(again, work) for _ in range(args.boots))
        # The same disk given a NoCloud seed and a network card (as a cloud's machine has): to
        # multi-user.target, and to cloud-init's last line.
        seed = nocloud_seed(work, CLOUD_CONFIG, "mlos-bench")
        seeded = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0", "-drive", drive,
                  "-drive", f"file={seed},format=raw,if=virtio"]
        boots["disk qcow2, BIOS, cloud-init NoCloud seed"] = statistics.median(
            boot_time(seeded, work) for _ in range(args.boots))
        boots["  ... until cloud-init finished"] = statistics.median(
            boot_time(seeded, work, until=CLOUD_DONE) for _ in range(args.boots))

    print("image stages (small profile): mlos-repro vs. the same scripts run bare, one run")
    for name in IMAGE_STAGES:
        print(f"   {name:10} bare {baseline[name]:6.1f} s   mlos-repro {ours[name]:6.1f} s   "
              f"ratio {ours[name] / baseline[name]:5.2f}x")
    b, o = sum(baseline.values()), sum(ours.values())
    print(f"   {'all five':10} bare {b:6.1f} s   mlos-repro {o:6.1f} s   ratio {o / b:5.2f}x "
          f"(whole command: {cold_total:.1f} s)")
    print("full small build (`mlos-repro build`, every stage)")
    if full_cold is not None:
        print(f"   cold (--no-cache):  {full_cold:7.1f} s")
    print(f"   warm (all cached):  {warm:7.2f} s")
    print(f"boot to {BOOTED} under QEMU TCG, -smp 1, median of {args.boots}")
    base = boots["kernel + initrds, no firmware (baseline)"]
    for name, seconds in boots.items():
        print(f"   {name:42} {seconds:6.1f} s   ratio {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
