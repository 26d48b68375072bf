"""Sign every APT repository a build produced: any tree output holding dists/SUITE/Release.

The unsigned Release stays as the stage built it (reproducible by anyone); InRelease and
Release.gpg are written next to it in the output directory, and the exported public key
(for apt's signed-by) and a signing.json next to the stage's outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from mlos_repro.executor import BuildResult
from mlos_repro.sign.gpg import GpgSigner
from mlos_repro.store import OutputKind, Store

KEYRING = "mlos-archive-keyring.gpg"


def release_files(store: Store, result: BuildResult) -> list[tuple[str, str, str]]:
    """(stage, path under OUT/, blob sha256) of each repository's dists/SUITE/Release."""
    found = []
    for name, res in sorted(result.stages.items()):
        for output, digest in sorted(res.entry.outputs.items()):
            if res.entry.kinds[output] != OutputKind.TREE:
                continue
            for entry in store.read_tree(digest.removeprefix("sha256:")):
                parts = entry["path"].split("/")
                if entry["type"] == "file" and len(parts) == 3 and parts[::2] == ["dists", "Release"]:
                    found.append((name, f"{name}/{output}/{entry['path']}", entry["sha256"]))
    return found


def sign_repositories(store: Store, result: BuildResult,
                      signer: Callable[[], GpgSigner]) -> dict[str, bytes]:
    """The signature files to add under OUT/, by path; {} when the build has no repository."""
    found = release_files(store, result)
    if not found:
        return {}
    gpg = signer()
    extras: dict[str, bytes] = {}
    for stage, path, blob in found:
        data = store.blob_path(blob).read_bytes()
        base = path.rsplit("/", 1)[0]
        extras[f"{base}/InRelease"] = gpg.clearsign(data)
        extras[f"{base}/Release.gpg"] = gpg.detach(data)
        extras[f"{stage}/{KEYRING}"] = gpg.export()
        extras[f"{stage}/signing.json"] = json.dumps({
            "fingerprint": gpg.fingerprint, "uid": gpg.uid, "development_key": gpg.development,
            "keyring": KEYRING}, indent=2, sort_keys=True).encode() + b"\n"
    return extras
