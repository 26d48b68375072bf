"""Sign every APT repository a build produced: any tree output holding dists/SUITE/Release.

The unsigned Release stays as the stage built it (reproducible by anyone); InRelease and
Release.gpg are written next to it in the output directory, and the exported public key
(for apt's signed-by) and a signing.json next to the stage's outputs.

A release's repository expires with the release: its InRelease is the attested Release with
one `Valid-Until:` field added (after `Date:`), so apt refuses it once the owner no longer
vouches for it. A stage output cannot carry that date (its bytes would depend on when it was
signed), so it lives only in the signed InRelease, and no Release.gpg is written: a detached
signature over the Release without Valid-Until would let a stale mirror serve it for ever.
"""

from __future__ import annotations

import datetime
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


def valid_until_field(when: datetime.datetime) -> bytes:
    return when.astimezone(datetime.UTC).strftime("Valid-Until: %a, %d %b %Y %H:%M:%S UTC\n").encode()


def with_valid_until(release: bytes, when: datetime.datetime) -> bytes:
    """The Release text with a Valid-Until field after Date (else before the first checksum list)."""
    lines = release.splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith(b"Date:")),
              next((i for i, line in enumerate(lines) if line.rstrip().endswith(b":")), len(lines)))
    return b"".join([*lines[:at], valid_until_field(when), *lines[at:]])


def sign_repositories(store: Store, result: BuildResult, signer: Callable[[], GpgSigner],
                      valid_until: datetime.datetime | None = None) -> dict[str, bytes]:
    """The signature files to add under OUT/, by path; {} when the build has no repository.
    With `valid_until` (a release), InRelease only, carrying that expiry."""
    found = release_files(store, result)
    if not found:
        return {}
    gpg = signer()
    extras: dict[str, bytes] = {}
    for stage, path, blob in found:
        data = store.blob_path(blob).read_bytes()
        base = path.rsplit("/", 1)[0]
        if valid_until is None:
            extras[f"{base}/InRelease"] = gpg.clearsign(data)
            extras[f"{base}/Release.gpg"] = gpg.detach(data)
        else:
            extras[f"{base}/InRelease"] = gpg.clearsign(with_valid_until(data, valid_until))
        extras[f"{stage}/{KEYRING}"] = gpg.export()
        extras[f"{stage}/signing.json"] = json.dumps({
            "fingerprint": gpg.fingerprint, "uid": gpg.uid, "development_key": gpg.development,
            "keyring": KEYRING}, indent=2, sort_keys=True).encode() + b"\n"
    return extras
