"""QEMU (TCG) boots of MLOS Linux images for the tests: the serial console read until the
lines a test waits for appear."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

OVMF = Path("/usr/share/ovmf/OVMF.fd")
# The Secure Boot build of OVMF (SMM, q35) and its empty variable store.
OVMF_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Who owns the keys enrolled (any GUID will do for the firmware).
OWNER_GUID = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOOT_TIMEOUT = 600  # seconds; a boot under TCG takes one to two minutes


def secure_firmware(vars_file: Path) -> list[str]:
    """QEMU's arguments for the Secure Boot OVMF with the variable store `vars_file` (which the
    firmware writes to): q35 with SMM, the store's keys enforced when it holds them."""
    return ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_SECBOOT},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}"]


def esp_offset(disk: Path) -> int:
    """Where the EFI system partition (mlos-esp) of a disk image starts, in bytes."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    (esp,) = [p for p in table["partitions"] if p.get("name") == "mlos-esp"]
    return int(esp["start"]) * int(table.get("sectorsize", 512))


def with_boot_loader(disk: Path, loader: Path) -> None:
    """`loader` as a raw disk image's removable-media boot loader (the ESP's EFI/BOOT/BOOTX64.EFI)."""
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{esp_offset(disk)}", str(loader), "::/EFI/BOOT/BOOTX64.EFI"],
                   check=True, capture_output=True)


def secure_boot_vars(cert: Path, dest: Path) -> Path:
    """An OVMF variable store with Secure Boot on and `cert` as its only key (PK, KEK and db,
    no Microsoft keys), made by virt-fw-vars (virt-firmware)."""
    tool = Path(sys.executable).parent / "virt-fw-vars"
    subprocess.run([str(tool), "--input", str(OVMF_VARS), "--output", str(dest), "--set-pk", OWNER_GUID, str(cert),
                    "--add-kek", OWNER_GUID, str(cert), "--add-db", OWNER_GUID, str(cert), "--no-microsoft", "--sb"],
                   check=True, capture_output=True)
    return dest


def boot(tmp: Path, *args: str | Path, until: str | tuple[str, ...],
         fail_on: tuple[str, ...] = ("Kernel panic",), uefi: bool = False,
         secure_vars: Path | None = None) -> str:
    """Boot QEMU (TCG, serial console to a file) until every `until` line is in the log; the log.
    With `secure_vars` (secure_boot_vars), the Secure Boot firmware on q35 with SMM enforces
    the keys that store holds."""
    wanted = (until,) if isinstance(until, str) else until
    log = tmp / f"serial-{time.monotonic_ns()}.log"
    if secure_vars is not None:
        vars_copy = tmp / f"vars-{time.monotonic_ns()}.fd"  # the firmware writes to its store
        vars_copy.write_bytes(secure_vars.read_bytes())
        firmware = secure_firmware(vars_copy)
    else:
        firmware = ["-machine", "pc", *(["-bios", str(OVMF)] if uefi else [])]
    # Two vCPUs: TCG runs each on its own host thread, and a boot takes half the time of one's.
    argv = ["qemu-system-x86_64", *firmware, "-m", "1024", "-smp", "2", "-nographic",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{log}",
            *(["-net", "none"] if "-netdev" not in args else []), *map(str, args)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + BOOT_TIMEOUT
    text = ""
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            text = ANSI.sub("", log.read_text(errors="replace")) if log.exists() else ""
            if all(w in text for w in wanted) or any(f in text for f in fail_on):
                break
            if proc.poll() is not None:
                break
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    missing = [w for w in wanted if w not in text]
    assert not missing, (f"{missing} not on the serial console of {' '.join(argv)}\n"
                           f"qemu: {stderr.decode(errors='replace')}\nlast lines:\n"
                           + "\n".join(text.splitlines()[-40:]))
    for failure in fail_on:
        assert failure not in text, text
    return text


def nocloud_seed(directory: Path, user_data: str, instance_id: str) -> Path:
    """A NoCloud seed (a `cidata` ISO 9660 volume, made by cloud-localds) in `directory`, with
    this cloud-config and instance id."""
    (directory / "user-data").write_text(user_data)
    (directory / "meta-data").write_text(f"instance-id: {instance_id}\n")
    seed = directory / "seed.iso"
    subprocess.run(["cloud-localds", str(seed), str(directory / "user-data"), str(directory / "meta-data")],
                   check=True, capture_output=True)
    return seed
