"""in-toto links, the layout made from the recipes, and in-toto Statements (SLSA provenance v1,
CycloneDX SBOMs), all in DSSE envelopes signed with securesystemslib keys.

Artifact names are shared by links, layout rules, statements and SHA256SUMS:

    STAGE/OUTPUT[/PATH]     a stage's product (a file output, or each file of a tree output)
    src/PATH                a path: input (a file of the repository)
    pinned/NAME             a url: or deb: input, by its input name
    env/NAME                an env: input (the environment's .debs as a mirror; its tree digest)
    builder/NAME            the builder environment the stage ran in (its root filesystem's digest)

A symlink in a tree output counts as a file whose content is its target. Payloads depend
only on the build (timestamps are SOURCE_DATE_EPOCH), so two honest builders sign the same
bytes; only the signatures differ.
"""

from __future__ import annotations

import datetime
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from in_toto.models.layout import Layout, Step
from in_toto.models.link import Link
from in_toto.models.metadata import Envelope, Metablock
from securesystemslib.dsse import Envelope as DsseEnvelope
from securesystemslib.signer import Signer

from mlos_repro import __version__
from mlos_repro.digest import canonical_json, sha256_bytes
from mlos_repro.recipe.model import InputKind, RecipeSet, Stage
from mlos_repro.store import StageEntry, Store, output_files

STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
CYCLONEDX = "https://cyclonedx.org/bom"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BINDINGS_TYPE = "application/vnd.mlos-repro.bindings+json"  # layout/bindings.json
BUILD_TYPE = "https://mlos.example/mlos-repro/stage/v1"
BUILDER_ID = "https://mlos.example/mlos-repro"

Artifacts = dict[str, dict[str, str]]  # name -> {"sha256": HEX}


def utc(sde: int) -> str:
    return datetime.datetime.fromtimestamp(sde, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def products(store: Store, stage: str, entry: StageEntry) -> Artifacts:
    return {name: {"sha256": digest} for name, digest in output_files(store, stage, entry).items()}


def materials(store: Store, stage: Stage, inputs: Mapping[str, str], entries: Mapping[str, StageEntry],
              builder: tuple[str, str]) -> Artifacts:
    """inputs: the stage's input digests as the cache key has them ("sha256:…" or "tree:…")."""
    out: Artifacts = {f"builder/{builder[0]}": {"sha256": builder[1]}}
    for inp in stage.inputs:
        digest = inputs[inp.name]
        if inp.kind is InputKind.STAGE:
            taken = products(store, inp.target, entries[inp.target])
            if inp.output is not None:  # stage:NAME/OUTPUT: that output's files only
                prefix = f"{inp.target}/{inp.output}"
                taken = {a: d for a, d in taken.items() if a == prefix or a.startswith(prefix + "/")}
            out.update(taken)
        elif inp.kind is InputKind.PATH:
            if digest.startswith("tree:"):
                for e in store.read_tree(digest.removeprefix("tree:")):
                    if e["type"] == "file":
                        out[f"src/{inp.target}/{e['path']}"] = {"sha256": e["sha256"]}
                    elif e["type"] == "symlink":
                        out[f"src/{inp.target}/{e['path']}"] = {"sha256": sha256_bytes(e["target"].encode())}
            else:
                out[f"src/{inp.target}"] = {"sha256": digest.removeprefix("sha256:")}
        elif inp.kind is InputKind.ENV:
            out[f"env/{inp.target}"] = {"sha256": digest.removeprefix("tree:")}
        else:
            out[f"pinned/{inp.name}"] = {"sha256": digest.removeprefix("sha256:")}
    return out


def command(stage: Stage) -> list[str]:
    """A stage's run commands, one shell-quoted command line each."""
    return [shlex.join(c) for c in stage.run]


def link(stage: Stage, entry: StageEntry, mats: Artifacts, prods: Artifacts, *, profile: str,
         sde: int) -> Link:
    return Link(
        name=stage.name, materials=mats, products=prods,
        command=command(stage),
        byproducts={"return-value": 0, "log-sha256": entry.log, "cache-key": entry.key},
        environment={"SOURCE_DATE_EPOCH": str(sde), "profile": profile, "mlos-repro": __version__})


def layout(recipes: RecipeSet, stages: Iterable[str], functionaries: list[dict[str, Any]], *,
           threshold: int, expires: str, statement_keys: list[dict[str, Any]] | None = None) -> Layout:
    """One step per stage: its materials MATCH the upstream steps' products and nothing else
    gets in (each MATCH is followed by a DISALLOW of its pattern), its products are new files
    under its own name. statement_keys: keys that sign statements but no link (listed in
    the layout's keys, in no step)."""
    keyids = [k["keyid"] for k in functionaries]
    steps = []
    for name in stages:
        stage = recipes.stages[name]
        rules: list[list[str]] = [["ALLOW", f"builder/{stage.builder}"]]
        for inp in stage.inputs:
            if inp.kind is InputKind.STAGE:
                # stage:NAME/OUTPUT takes that output (a file, or a tree's files) of NAME only.
                taken = [f"{inp.target}/*"] if inp.output is None else \
                    [f"{inp.target}/{inp.output}", f"{inp.target}/{inp.output}/*"]
                rules += [["MATCH", pattern, "WITH", "PRODUCTS", "FROM", inp.target] for pattern in taken]
                rules.append(["DISALLOW", f"{inp.target}/*"])
            elif inp.kind is InputKind.PATH:
                rules += [["ALLOW", f"src/{inp.target}"], ["ALLOW", f"src/{inp.target}/*"]]
            elif inp.kind is InputKind.ENV:
                rules.append(["ALLOW", f"env/{inp.target}"])
            else:
                rules.append(["ALLOW", f"pinned/{inp.name}"])
        rules.append(["DISALLOW", "*"])
        steps.append(Step(name=name, pubkeys=keyids, threshold=threshold, expected_materials=rules,
                          expected_products=[["CREATE", f"{name}/*"], ["DISALLOW", "*"]],
                          expected_command=command(stage)))
    keys = {k["keyid"]: k for k in [*functionaries, *(statement_keys or [])]}
    return Layout(steps=steps, inspect=[], keys=keys, expires=expires,
                  readme="MLOS Linux supply chain, generated by mlos-repro from the recipes")


def statement(subjects: Artifacts, predicate_type: str, predicate: dict[str, Any]) -> dict[str, Any]:
    return {"_type": STATEMENT,
            "subject": [{"name": n, "digest": dict(d)} for n, d in sorted(subjects.items())],
            "predicateType": predicate_type, "predicate": predicate}


def provenance(stage: Stage, entry: StageEntry, mats: Artifacts, *, profile: str, sde: int,
               builder: tuple[str, str]) -> dict[str, Any]:
    """The SLSA v1 provenance predicate of a stage's outputs."""
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"stage": stage.name, "recipe": stage.source, "profile": profile,
                                   "run": [list(c) for c in stage.run], "env": dict(stage.env),
                                   "privileged": stage.privileged},
            "internalParameters": {"SOURCE_DATE_EPOCH": sde, "cacheKey": entry.key},
            "resolvedDependencies": [{"name": n, "digest": dict(d)} for n, d in sorted(mats.items())],
        },
        "runDetails": {
            "builder": {"id": f"{BUILDER_ID}@{__version__}",
                        "version": {"mlos-repro": __version__},
                        "builderDependencies": [{"name": f"builder/{builder[0]}",
                                                 "digest": {"sha256": builder[1]}}]},
            "metadata": {"invocationId": entry.key, "startedOn": utc(sde), "finishedOn": utc(sde)},
            "byproducts": [{"name": "log", "digest": {"sha256": entry.log}}],
        },
    }


def sign_link_openpgp(item: Link, fingerprint: str, gnupghome: str) -> bytes:
    """A classic in-toto link (Metablock) signed by an OpenPGP key: DSSE cannot carry those."""
    block = Metablock(signed=item)
    block.sign_gpg(gpg_keyid=fingerprint.lower(), gpg_home=gnupghome)
    return canonical_json(block.to_dict()) + b"\n"


def openpgp_key(fingerprint: str, gnupghome: str) -> dict[str, Any]:
    """The public key dict in-toto layouts use for an OpenPGP functionary."""
    import securesystemslib._gpg.functions as gpg

    key: dict[str, Any] = gpg.export_pubkey(fingerprint.lower(), homedir=gnupghome)  # type: ignore[no-untyped-call]
    return key


def sign_link(item: Link | Layout, signer: Signer) -> bytes:
    envelope = Envelope.from_signable(item)
    envelope.create_signature(signer)
    return canonical_json(envelope.to_dict()) + b"\n"


def sign_statement(value: dict[str, Any], signer: Signer) -> bytes:
    envelope = DsseEnvelope(payload=canonical_json(value), payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return canonical_json(envelope.to_dict()) + b"\n"
