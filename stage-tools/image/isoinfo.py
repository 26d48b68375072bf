"""Print the ISO's release metadata (/.disk/mlos.json) as canonical JSON.

    python3 isoinfo.py TREE

Reads the kernel stage's kernel.json, the root filesystem's packages.tsv and the ISO tree;
MLOS_VERSION, MLOS_PROFILE, MLOS_ISO_LABEL and SOURCE_DATE_EPOCH come from the environment.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(tree: Path) -> int:
    kernel = json.loads(Path("/in/kernel/kernel.json").read_text())
    lines = Path("/in/rootfs/packages.tsv").read_text().splitlines()[1:]
    built = datetime.datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), datetime.UTC)
    info = {
        "name": "MLOS Linux",
        "version": os.environ["MLOS_VERSION"],
        "profile": os.environ["MLOS_PROFILE"],
        "architecture": "amd64",
        "label": os.environ["MLOS_ISO_LABEL"],
        "build_date": built.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kernel": {"release": kernel["release"], "source_version": kernel["source"]["version"]},
        "packages": len(lines),
        "files": {rel: "sha256:" + sha256(tree / rel)
                  for rel in ("boot/vmlinuz", "boot/initrd.img", "live/rootfs.squashfs")},
    }
    json.dump(info, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
