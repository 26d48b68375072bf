"""`mlos-repro release`: the release directory of a finished build, signed.

    RELEASE/artifacts/STAGE/OUTPUT[/…]   every stage output (plus the repository signatures)
    RELEASE/SHA256SUMS                   every file under artifacts/, sha256sum format
    RELEASE/SHA256SUMS.gpg               detached OpenPGP signature (the archive key)
    RELEASE/SHA256SUMS.asc               the same, clearsigned
    RELEASE/artifacts/STAGE/SHA256SUMS(.gpg)  STAGE's lines of SHA256SUMS named from there, signed
    RELEASE/artifacts/STAGE/secureboot/OUTPUT.efi  each EFI image output, signed for Secure Boot (sbsign),
                                         with db.crt, db.cer and signing.json (sign/secureboot.py)
    RELEASE/artifacts/STAGE/secureboot/IMAGE  each image a stage's `secureboot` table names, its EFI
                                         system partition booting the signed EFI image, with media.json
    RELEASE/sbom/STAGE/OUTPUT.cdx.json   the CycloneDX SBOM of each output
    RELEASE/attestations/links/STAGE.KEYID8.link           in-toto link per stage (DSSE)
    RELEASE/attestations/provenance/STAGE/OUTPUT.intoto.json  SLSA v1 provenance (DSSE)
    RELEASE/attestations/sbom/STAGE/OUTPUT.intoto.json     the SBOM as a signed statement
    RELEASE/layout/root.layout           the in-toto layout, from the recipes, owner-signed
    RELEASE/layout/keys/NAME.pub.json    the owner's and functionaries' public keys
    RELEASE/source/mlos-source-SHA256.tar  the tree that built it (recipe/source.py)
    RELEASE/inputs/sha256/SHA256         with --with-inputs: every pinned input (.debs, url:/deb: archives)
    RELEASE/inputs.lock                  what a rebuilder starts from; names the source archive (and the
                                         inputs carried)
    RELEASE/release.json                 what this release is, and the sha256 of every file
                                         above but the artifacts (attest/release_meta.py)
    RELEASE/release.json.gpg             its detached signature by the archive key

Nothing is built here: every stage must already be in the store (`mlos-repro build`). The
directory appears complete or not at all.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.dsse import Envelope as DsseEnvelope
from securesystemslib.signer import CryptoSigner

from mlos_repro import __version__
from mlos_repro.attest import intoto, release_meta
from mlos_repro.digest import canonical_json, sha256_file
from mlos_repro.env.fetch import pinned_inputs
from mlos_repro.errors import BadInputError, SigningError
from mlos_repro.executor import BuildResult, Executor, write_out
from mlos_repro.fsutil import staged_directory
from mlos_repro.keyfile import load_signer, public
from mlos_repro.recipe import source
from mlos_repro.sbom.facts import SBOM_SUFFIX
from mlos_repro.sign import secureboot
from mlos_repro.sign.gpg import GpgSigner
from mlos_repro.sign.repository import sign_repositories

LAYOUT_POLICY = Path("layouts/layout.toml")


@dataclass(frozen=True)
class Sigstore:
    """Keyless signing of SHA256SUMS and the provenance: a token (or ambient) and an instance."""

    identity_token: str | None = None
    trust_config: Path | None = None


@dataclass(frozen=True)
class Keys:
    builder: CryptoSigner
    owner: CryptoSigner
    gpg: GpgSigner
    openpgp_links: bool = False  # links as classic Metablocks signed by the OpenPGP key
    secureboot: secureboot.DbKey | None = None  # None: the development db key (not for release)

    @staticmethod
    def load(directory: Path, archive_key: str | None = None) -> Keys:
        if not (directory / "gnupg").is_dir():
            raise SigningError(f"{directory / 'gnupg'}: missing; it holds the release (archive) OpenPGP key",
                               "create a key directory with: mlos-repro keys init DIR")
        return Keys(load_signer(directory, "builder"), load_signer(directory, "owner"),
                    GpgSigner(directory / "gnupg", archive_key), secureboot=secureboot.load(directory))


def layout_policy(root: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """(threshold, days until the layout expires, bindings) from layouts/layout.toml."""
    path = root / LAYOUT_POLICY
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return 1, 365, []
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"{LAYOUT_POLICY}: not valid TOML: {e}") from None
    threshold, days = data.get("threshold", 1), data.get("expires_days", 365)
    if not isinstance(threshold, int) or threshold < 1:
        raise BadInputError(f"{LAYOUT_POLICY}: threshold: expected a whole number >= 1")
    if not isinstance(days, int) or days < 1:
        raise BadInputError(f"{LAYOUT_POLICY}: expires_days: expected a whole number >= 1")
    bindings = []
    for i, b in enumerate(data.get("binding", [])):
        if not isinstance(b.get("artifact"), str) or not isinstance(b.get("product"), str) or \
                not isinstance(b.get("member", ""), str) or not isinstance(b.get("padded", False), bool) or \
                not isinstance(b.get("payload", False), bool) or (b.get("payload") and b.get("member")):
            raise BadInputError(f"{LAYOUT_POLICY}: binding[{i}]: expected artifact and product (STAGE/OUTPUT "
                                "paths), optional member and padded, or payload (without member)")
        bindings.append({"artifact": b["artifact"], "member": b.get("member", ""), "product": b["product"],
                         "padded": b.get("padded", False), "payload": b.get("payload", False)})
    return threshold, days, bindings


def make_release(executor: Executor, result: BuildResult, keys: Keys, out: Path,
                 expires_days: int | None = None, sigstore: Sigstore | None = None,
                 version: str | None = None, with_inputs: bool = False) -> Path:
    recipes = executor.recipes
    sde = recipes.builder.source_date_epoch
    if out.exists() and any(out.iterdir()):
        raise BadInputError(f"{out}: exists and is not empty; a release is written once",
                            "name a new directory")
    threshold, days, bindings = layout_policy(recipes.root)
    days = expires_days or days
    with staged_directory(out) as staging:
        _write(executor, result, keys, staging, sde, threshold, days, bindings, version, with_inputs)
        if sigstore is not None:
            _sigstore(staging, sigstore)
    return out


def _write(executor: Executor, result: BuildResult, keys: Keys, root: Path, sde: int, threshold: int,
           days: int, bindings: list[dict[str, Any]], version: str | None, with_inputs: bool) -> None:
    recipes, store = executor.recipes, executor.store
    # The artifacts as `build` writes them, with the repository signatures made by the release
    # key; the repositories expire with the release.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expiry = now + datetime.timedelta(days=days)
    signatures = sign_repositories(store, result, lambda: keys.gpg, valid_until=expiry)
    # The EFI images signed for Secure Boot, beside the attested unsigned ones.
    db = (keys.secureboot or secureboot.development_key()) if secureboot.efi_outputs(result) else None
    if db is not None:
        signatures |= secureboot.sign_images(store, result, db)
    write_out(store, result, root / "artifacts", signatures)
    # The disk and ISO images with those signed images as their boot loaders.
    signed_media = secureboot.sign_media(recipes.stages, result, root / "artifacts", sde) if db else []
    (root / "artifacts/manifest.json").unlink()
    for sbom in sorted((root / "artifacts").rglob("*" + SBOM_SUFFIX)):
        dest = root / "sbom" / sbom.relative_to(root / "artifacts")
        dest.parent.mkdir(parents=True, exist_ok=True)
        sbom.rename(dest)
    listed = release_meta.walk(root)
    if listed.refused:
        raise BadInputError(f"{root}: " + "; ".join(listed.refused))
    taken = [n for n in listed.artifacts + listed.metadata if release_meta.is_stage_sums(f"artifacts/{n}")
             or release_meta.is_stage_sums(n)]
    if taken:
        raise BadInputError(f"{taken[0]}: a stage output may not be named {release_meta.SUMS} at the top of "
                            "its stage's directory: the release writes its own there",
                            "rename that output in the stage's recipe")
    sums = {name: release_meta.entry_digest(root / "artifacts" / name) for name in listed.artifacts}
    data = release_meta.sums_text(sums)
    (root / "SHA256SUMS").write_bytes(data)
    (root / "SHA256SUMS.gpg").write_bytes(keys.gpg.detach(data))
    (root / "SHA256SUMS.asc").write_bytes(keys.gpg.clearsign(data))
    # The same lines in each stage's directory, named from there: `sha256sum -c` beside a
    # downloaded ISO finds its line.
    for directory, text in release_meta.stage_sums(sums).items():
        (root / "artifacts" / directory / release_meta.SUMS).write_bytes(text)
        (root / "artifacts" / directory / (release_meta.SUMS + release_meta.GPG_SUFFIX)).write_bytes(
            keys.gpg.detach(text))

    links = root / "attestations/links"
    links.mkdir(parents=True)
    entries = {n: r.entry for n, r in result.stages.items()}
    for name, res in result.stages.items():
        stage = recipes.stages[name]
        env = executor.env(stage.builder)
        builder = (env.name, env.digest)
        mats = intoto.materials(store, stage, executor.input_digests(stage, result), entries, builder)
        prods = intoto.products(store, name, res.entry)
        the_link = intoto.link(stage, res.entry, mats, prods, profile=recipes.profile, sde=sde)
        if keys.openpgp_links:
            (links / f"{name}.{keys.gpg.fingerprint.lower()[:8]}.link").write_bytes(
                intoto.sign_link_openpgp(the_link, keys.gpg.fingerprint, str(keys.gpg.home)))
        else:
            (links / f"{name}.{keys.builder.public_key.keyid[:8]}.link").write_bytes(
                intoto.sign_link(the_link, keys.builder))
        predicate = intoto.provenance(stage, res.entry, mats, profile=recipes.profile, sde=sde,
                                      builder=builder)
        for output in sorted(res.entry.outputs):
            subjects = {k: v for k, v in prods.items()
                        if k == f"{name}/{output}" or k.startswith(f"{name}/{output}/")}
            dest = root / "attestations/provenance" / name / f"{output}.intoto.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(intoto.sign_statement(
                intoto.statement(subjects, intoto.SLSA_PROVENANCE, predicate), keys.builder))
            sbom = json.loads((root / "sbom" / name / f"{output}{SBOM_SUFFIX}").read_text())
            dest = root / "attestations/sbom" / name / f"{output}.intoto.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(intoto.sign_statement(intoto.statement(subjects, intoto.CYCLONEDX, sbom),
                                                   keys.builder))

    released = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    expires = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    if keys.openpgp_links:
        # The OpenPGP key signs the links; the builder key still signs the statements (DSSE).
        the_layout = intoto.layout(recipes, list(result.stages),
                                   [intoto.openpgp_key(keys.gpg.fingerprint, str(keys.gpg.home))],
                                   threshold=threshold, expires=expires,
                                   statement_keys=[public(keys.builder)])
    else:
        the_layout = intoto.layout(recipes, list(result.stages), [public(keys.builder)], threshold=threshold,
                                   expires=expires)
    (root / "layout/keys").mkdir(parents=True)
    (root / "layout/root.layout").write_bytes(intoto.sign_link(the_layout, keys.owner))
    # Only the bindings whose artifact and product this release has (SHA256SUMS' names).
    present = set(listed.artifacts)
    mine = [b for b in bindings if b["artifact"] in present and b["product"] in present]
    # The owner vouches for the Secure Boot db certificate too: the archive key alone cannot swap it.
    bound: dict[str, Any] = {"bindings": mine, "expires": expires}
    if db is not None:
        bound["secureboot_db_sha256"] = db.facts()["certificate_sha256"]
    envelope = DsseEnvelope(payload=canonical_json(bound),
                            payload_type=intoto.BINDINGS_TYPE, signatures={})
    envelope.sign(keys.owner)
    (root / "layout/bindings.json").write_bytes(canonical_json(envelope.to_dict()) + b"\n")
    for name, signer in (("owner", keys.owner), ("builder", keys.builder)):
        (root / "layout/keys" / f"{name}.pub.json").write_text(json.dumps(public(signer), indent=2,
                                                                          sort_keys=True) + "\n")
    (root / "layout/keys/release.asc").write_bytes(keys.gpg.export_armored())

    archive, digest = source.write_archive(recipes, root / "source")
    lock = _inputs_lock(executor, result)
    lock["source"] = {"path": archive.relative_to(root).as_posix(), "sha256": digest}
    if with_inputs:
        lock["inputs"] = {"path": release_meta.INPUTS, "sha256": _carry_inputs(executor, root)}
    (root / "inputs.lock").write_bytes(canonical_json(lock) + b"\n")
    info = _release_info(root, result, sde, keys, version)
    # Files made after the build by the archive key (APT repository signatures): in
    # SHA256SUMS, but no stage's products.
    info["signed_after_build"] = sorted([*signatures, *signed_media])
    info.update(released=released, expires=expires, format=release_meta.FORMAT,
                files=release_meta.inventory(root, release_meta.walk(root).metadata))
    text = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    (root / release_meta.RELEASE_INFO).write_bytes(text)
    (root / (release_meta.RELEASE_INFO + release_meta.GPG_SUFFIX)).write_bytes(keys.gpg.detach(text))


def _carry_inputs(executor: Executor, root: Path) -> list[str]:
    """Every pinned input of this profile's build into RELEASE/inputs/sha256/, re-hashed as it
    is copied; a rebuild then needs nothing else."""
    dest = root / release_meta.INPUTS
    dest.mkdir(parents=True)
    pins = pinned_inputs(executor.recipes)
    for digest, what in pins.items():
        if not executor.store.has_blob(digest):
            raise BadInputError(f"--with-inputs: {what} (sha256 {digest}) is not in the store",
                                "run: mlos-repro fetch (same recipes and profile)")
        executor.store.copy_blob(digest, dest / digest, what)
        os.chmod(dest / digest, 0o644)
    return list(pins)


def _sigstore(root: Path, options: Sigstore) -> None:
    """SHA256SUMS, release.json and every provenance statement, signed keylessly; bundles beside them, and
    the trusted root they verify against."""
    from mlos_repro.sign import sigstore

    targets = [root / "SHA256SUMS", root / release_meta.RELEASE_INFO,
               *sorted((root / "attestations/provenance").rglob("*.intoto.json"))]
    bundles, trusted_root = sigstore.sign({p.relative_to(root).as_posix(): p.read_bytes() for p in targets},
                                          options.identity_token, options.trust_config)
    for name, bundle in bundles.items():
        (root / (name + sigstore.BUNDLE_SUFFIX)).write_bytes(bundle)
    (root / "trusted_root.json").write_bytes(trusted_root)


def _inputs_lock(executor: Executor, result: BuildResult) -> dict[str, Any]:
    recipes = executor.recipes
    lock = recipes.builder.path.with_name("builder.lock")
    pinned = []
    for name in sorted(result.stages):
        for inp in recipes.stages[name].inputs:
            if inp.sha256 is not None:
                pinned.append({"stage": name, "input": inp.name, "spec": inp.spec, "sha256": inp.sha256})
    return {
        "mlos-repro": __version__,
        "profile": recipes.profile,
        "source_date_epoch": recipes.builder.source_date_epoch,
        "recipes": {"tree": executor.store.put_tree(recipes.recipes_dir, normalise_modes=True),
                    **_git(recipes.root)},
        "builder_lock": {"path": "recipes/builder.lock",
                         "sha256": sha256_file(lock) if lock.exists() else None},
        "environments": dict(sorted(result.environments.items())),
        "pinned": pinned,
        "stages": {n: r.entry.key for n, r in sorted(result.stages.items())},
    }


def _git(root: Path) -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                               text=True, check=True).stdout.strip() != ""
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": dirty}


def _release_info(root: Path, result: BuildResult, sde: int, keys: Keys,
                  version: str | None) -> dict[str, Any]:
    product: dict[str, Any] = {}
    for candidate in sorted((root / "artifacts").glob("*/mlos.json")):
        product = json.loads(candidate.read_text())
    version = version or product.get("version")
    if not isinstance(version, str) or not version:
        raise BadInputError("the release has no version: the build has no mlos.json naming one",
                            "give --release-version VERSION")
    return {
        "name": product.get("name", "MLOS Linux"), "version": version,
        "profile": result.profile, "build_date": intoto.utc(sde), "mlos-repro": __version__,
        "release_key": keys.gpg.fingerprint,
        "stages": {n: {"key": r.entry.key, "outputs": dict(r.entry.outputs)}
                   for n, r in sorted(result.stages.items())},
    }
