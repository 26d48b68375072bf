"""QEMU (TCG) boots of MLOS Linux images for the tests: the serial console read until the
lines a test waits for appear."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

OVMF = Path("/usr/share/ovmf/OVMF.fd")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOOT_TIMEOUT = 600  # seconds; a boot under TCG takes one to two minutes


def boot(tmp: Path, *args: str | Path, until: str | tuple[str, ...],
         fail_on: tuple[str, ...] = ("Kernel panic",), uefi: bool = False) -> str:
    """Boot QEMU (TCG, serial console to a file) until every `until` line is in the log; the log."""
    wanted = (until,) if isinstance(until, str) else until
    log = tmp / f"serial-{time.monotonic_ns()}.log"
    argv = ["qemu-system-x86_64", "-machine", "pc", "-m", "1024", "-smp", "1", "-nographic",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{log}",
            *(["-net", "none"] if "-netdev" not in args else []),
            *(["-bios", str(OVMF)] if uefi else []), *map(str, args)]
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
