"""An OCI image from directory trees, without a container engine, the same bytes every time:

    python3 ocilayout.py --layout OUT_DIR --archive OUT.tar --name NAME --version V
        [--layer DIR[:root]]... [--entrypoint ARG]... [--cmd ARG]... [--env K=V]...
        [--label K=V]... [--workdir DIR] [--work SCRATCH]

Each --layer is a directory written as one gzip-compressed tar layer (through SCRATCH, a
directory for the uncompressed tar, not in memory): entries sorted by name,
every mtime SOURCE_DATE_EPOCH, no owner names, no extended attributes, gzip without a file
name or time. `DIR:root` makes every entry root-owned (files an image adds); without it the
numeric owners dpkg gave are kept (a Debian root filesystem's fixed base-passwd ids). /dev,
/proc, /sys and /run are kept as empty directories: a container runtime mounts its own. A
socket or a FIFO is refused.

Writes the OCI image layout (oci-layout, index.json, blobs/sha256/) to OUT_DIR and the same
files as an `oci-archive` tar to OUT.tar. index.json lists the image's manifest with its
platform (linux/amd64) and its version as `org.opencontainers.image.ref.name`, so an image of
another architecture joins the same index beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archive import Refused, epoch, file_digest, write_tar, write_tar_gz

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Blobs:
    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True)

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.dir / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def put_file(self, path: Path, media_type: str) -> dict[str, Any]:
        digest = file_digest(path)
        size = path.stat().st_size
        shutil.move(path, self.dir / digest)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}


def pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise Refused(f"{what} {value!r} is not KEY=VALUE")
        out[key] = text
    return out


def build(args: argparse.Namespace) -> None:
    when = epoch()
    created = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    layout = Path(args.layout)
    layout.mkdir()
    blobs = Blobs(layout)
    work = Path(args.work)
    layers, diff_ids, history = [], [], []
    for spec in args.layer:
        directory, _, how = spec.partition(":")
        if how not in ("", "root"):
            raise Refused(f"--layer {spec!r}: write DIR or DIR:root")
        compressed = work / "layer.tar.gz"
        diff_ids.append("sha256:" + write_tar_gz(Path(directory), compressed, work, when,
                                                 all_root=how == "root", runtime_mounts=True))
        layers.append(blobs.put_file(compressed, LAYER))
        history.append({"created": created, "created_by": f"mlos-repro: {Path(directory).name}"})
    labels = {"org.opencontainers.image.title": args.name, "org.opencontainers.image.version": args.version,
              "org.opencontainers.image.created": created, **pairs(args.label, "--label")}
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **pairs(args.env, "--env")}
    image_config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in env.items()], "Labels": labels,
                                    "WorkingDir": args.workdir}
    if args.entrypoint:
        image_config["Entrypoint"] = args.entrypoint
    if args.cmd:
        image_config["Cmd"] = args.cmd
    config = blobs.put(canonical({
        "created": created, "architecture": "amd64", "os": "linux", "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}), CONFIG)
    manifest = blobs.put(canonical({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers,
        "annotations": {"org.opencontainers.image.created": created,
                        "org.opencontainers.image.title": args.name,
                        "org.opencontainers.image.version": args.version}}), MANIFEST)
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(canonical({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [{**manifest, "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": args.version}}]}))
    write_tar(layout, Path(args.archive), when, all_root=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ocilayout.py", description=__doc__.splitlines()[0])
    parser.add_argument("--layout", required=True)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--layer", action="append", default=[], required=True)
    parser.add_argument("--entrypoint", action="append", default=[])
    parser.add_argument("--cmd", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--work", default=".", help="where layers are written before they are blobs")
    args = parser.parse_args(argv)
    os.umask(0o022)  # the modes of what it writes do not depend on the caller's umask
    try:
        build(args)
    except Refused as err:
        print(f"ocilayout.py: {args.name}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
