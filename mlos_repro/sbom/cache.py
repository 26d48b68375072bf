"""An SBOM for every stage output, made from the stored bytes and kept in the store.

Generic: any stage's outputs get one, without code for that stage. The catalogue reads the
output's member manifest (recorded when the stage ran) and only the bytes it needs. An SBOM
is a function of the output's bytes, the policy, SOURCE_DATE_EPOCH, the kernel metadata of
the stage's upstream (kernel.json outputs) and this code, so it is cached under a digest of
all of them; `build --verify` makes each one again from the varied build's bytes, uncached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlos_repro.digest import canonical_json, sha256_bytes
from mlos_repro.errors import StageFailedError
from mlos_repro.inspect import manifest
from mlos_repro.sbom import catalogue, document, validate
from mlos_repro.sbom.policy import Policy
from mlos_repro.store import OutputKind, StageEntry, Store

KERNEL_METADATA = "kernel.json"
FORMAT = 1
# The libraries whose versions can change an SBOM's bytes: the document's model and its
# serialiser, licence expressions, package URLs, and the copyright parser.
SBOM_LIBRARIES = ("cyclonedx-python-lib", "py-serializable", "sortedcontainers", "license-expression",
                  "packageurl-python", "python-debian")


def _code_digest() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256(f"{FORMAT}:{manifest.readers_digest()}".encode())
    for name in ("cache.py", "catalogue.py", "document.py", "facts.py", "validate.py"):
        digest.update((here / name).read_bytes())
    for library in SBOM_LIBRARIES:
        digest.update(f"{library}=={version(library)}\n".encode())
    return digest.hexdigest()[:16]


class Sboms:
    def __init__(self, store: Store, policy: Policy, sde: int) -> None:
        self.store = store
        self.policy = policy
        self.sde = sde
        self.code = _code_digest()

    def kernel_metadata(self, entries: Iterable[StageEntry]) -> list[dict[str, Any]]:
        docs = []
        for entry in entries:
            digest = entry.outputs.get(KERNEL_METADATA)
            if digest is not None and entry.kinds.get(KERNEL_METADATA) != OutputKind.TREE:
                try:
                    doc = json.loads(self.store.blob_path(digest.removeprefix("sha256:")).read_bytes())
                except (ValueError, RecursionError) as e:
                    raise StageFailedError(f"{KERNEL_METADATA} ({digest}) of the stage with cache key "
                                           f"{entry.key[:16]}… is not JSON ({str(e)[:80]}): the SBOMs "
                                           "downstream cannot name the kernel's patches",
                                           "fix the kernel stage's recipe and build again") from None
                if not isinstance(doc, dict):
                    raise StageFailedError(f"{KERNEL_METADATA} ({digest}) of the stage with cache key "
                                           f"{entry.key[:16]}… is not a JSON object")
                docs.append(doc)
        return docs

    def for_stage(self, stage: str, source: str, entry: StageEntry, kernels: list[dict[str, Any]],
                  use_cache: bool = True) -> dict[str, str]:
        """{output: sha256 of its SBOM}; a gap in an SBOM fails the stage, naming the component."""
        return {o: self._one(stage, source, entry, o, kernels, use_cache) for o in sorted(entry.outputs)}

    def _one(self, stage: str, source: str, entry: StageEntry, output: str,
             kernels: list[dict[str, Any]], use_cache: bool) -> str:
        digest = entry.outputs[output].removeprefix("sha256:")
        key = "sbom-" + sha256_bytes(canonical_json({
            "v": FORMAT, "code": self.code, "policy": self.policy.digest, "sde": self.sde,
            "output": output, "digest": digest, "kernels": kernels}))
        if use_cache and (hit := self.store.get_listing(key)) is not None \
                and self.store.has_blob(hit.get("sha256", "")):
            return str(hit["sha256"])
        tree = entry.kinds[output] == OutputKind.TREE
        memo: catalogue.Memo = (
            (lambda k: self.store.get_listing(f"cat-{self.code}-{k}"),
             lambda k, v: self.store.put_listing(f"cat-{self.code}-{k}", v))
            if use_cache else (lambda k: None, lambda k, v: None))
        with self.store.tempdir(f"sbom-{stage}") as work:
            listing = self._listing(entry, output, work, use_cache)
            path = work / "tree" / output
            if tree:
                self.store.materialize(entry.outputs[output], OutputKind.TREE, path)
            else:
                path = self.store.blob_path(digest)
            found = catalogue.catalogue(path, output, listing, work / "catalogue", memo)
        data = document.make(found, name=output, sha256=digest, tree=tree, policy=self.policy, sde=self.sde,
                         kernels=kernels)
        problems = validate.problems(data, self.policy.required)
        if problems:
            shown = "\n".join(f"  {p}" for p in problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise StageFailedError(
                f"stage {stage!r} ({source}): the SBOM of {output} is incomplete or invalid:\n{shown}{more}",
                "add the missing supplier/licence data to sbom/policy.toml (or fix what the stage "
                "writes), then build again")
        blob = self.store.put_bytes(data)
        self.store.put_listing(key, {"sha256": blob})
        return blob

    def _listing(self, entry: StageEntry, output: str, work: Path, use_cache: bool) -> dict[str, Any]:
        recorded = entry.members.get(output)
        if recorded and entry.readers == manifest.readers_digest() and self.store.has_blob(recorded):
            listing: dict[str, Any] = json.loads(self.store.blob_path(recorded).read_bytes())
            return listing
        digest = entry.outputs[output].removeprefix("sha256:")
        path = work / "listing" / output
        if entry.kinds[output] == OutputKind.TREE:
            self.store.materialize(entry.outputs[output], OutputKind.TREE, path)
        else:
            path = self.store.blob_path(digest)
        listings = manifest.Listings(self.store.get_listing, self.store.put_listing) if use_cache else None
        return manifest.build(path, digest, work / "members", listings)
