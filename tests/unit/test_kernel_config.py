"""kernel/scripts/check-config.sh against the boot-critical fragment, on resolved
configurations written here (the real Kconfig runs in test_kernel)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import PROJECT

CHECK = PROJECT / "kernel/scripts/check-config.sh"
BOOT_CRITICAL = PROJECT / "kernel/config/boot-critical.config"


def _options() -> list[str]:
    return [line for line in BOOT_CRITICAL.read_text().splitlines() if line.startswith("CONFIG_")]


def _check(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / ".config"
    config.write_text("\n".join(lines) + "\n")
    return subprocess.run(["sh", str(CHECK), str(config), str(BOOT_CRITICAL)], capture_output=True, text=True)


def test_every_boot_critical_option_is_built_in() -> None:
    options = _options()
    assert all(line.endswith("=y") for line in options)
    names = {line.split("=")[0] for line in options}
    for needed in ("CONFIG_SQUASHFS", "CONFIG_OVERLAY_FS", "CONFIG_ISO9660_FS", "CONFIG_VIRTIO_BLK",
                   "CONFIG_VIRTIO_NET", "CONFIG_SCSI_VIRTIO", "CONFIG_SATA_AHCI", "CONFIG_BLK_DEV_SR",
                   "CONFIG_BLK_DEV_NVME", "CONFIG_EXT4_FS", "CONFIG_VFAT_FS", "CONFIG_EFIVAR_FS"):
        assert needed in names


def test_a_configuration_with_all_of_them_built_in_passes(tmp_path: Path) -> None:
    result = _check(tmp_path, ["CONFIG_64BIT=y", *_options(), "CONFIG_BTRFS_FS=m"])
    assert result.returncode == 0, result.stderr
    assert "every fragment option is set" in result.stdout


def test_a_boot_critical_module_is_named(tmp_path: Path) -> None:
    """Debian's configuration builds squashfs as a module: an initramfs without modules could
    not mount the root."""
    lines = [line if line != "CONFIG_SQUASHFS=y" else "CONFIG_SQUASHFS=m" for line in _options()]
    result = _check(tmp_path, lines)
    assert result.returncode == 1
    assert ("boot-critical.config asks for CONFIG_SQUASHFS=y but the resolved configuration has: "
            "CONFIG_SQUASHFS=m") in result.stderr
    assert result.stderr.count("asks for") == 1


def test_a_dropped_or_disabled_boot_critical_option_is_named(tmp_path: Path) -> None:
    lines = [line for line in _options() if line != "CONFIG_BLK_DEV_NVME=y"]
    lines = [line if line != "CONFIG_EFIVAR_FS=y" else "# CONFIG_EFIVAR_FS is not set" for line in lines]
    result = _check(tmp_path, lines)
    assert result.returncode == 1
    assert "asks for CONFIG_BLK_DEV_NVME=y but the resolved configuration has: absent" in result.stderr
    assert ("asks for CONFIG_EFIVAR_FS=y but the resolved configuration has: "
            "# CONFIG_EFIVAR_FS is not set") in result.stderr
