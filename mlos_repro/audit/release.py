"""`mlos-repro verify RELEASE`: every step of a release's supply chain, checked offline.

Trust anchors: the layout's root key (--root-key) and the archive key (--keyring) or a
sigstore identity (--trusted-root, --identity, --issuer); at least one of the latter two,
since they are what sign the files outside the in-toto graph. Numbered checks, each with its
own error naming the file, step or artifact at fault:

  1 release.json         signed by the archive key (and/or keylessly), not expired: what the
                         release is, and the sha256 of every file outside artifacts/
  2 release contents     every file outside artifacts/ is one release.json lists, with its
                         digest; nothing else; no FIFO, device or stray symlink anywhere
  3 layout signature     root.layout is signed by the root (owner) key given
  4 layout expiry        the layout has not expired
  5 links                each step's links are present, signed by its functionaries, the
                         threshold met by distinct keys
  6 artifact rules       each step's materials and products obey the layout's rules
  7 SHA256SUMS signature SHA256SUMS.gpg (and the clearsigned .asc) by a key of --keyring
  8 SHA256SUMS = files   every file under artifacts/ is listed with its digest, and nothing else
  9 provenance           per output a statement signed by a functionary of its step, whose
                         subjects are the step's products, as SHA256SUMS lists them; files
                         outside every step are only the repository signatures and signed EFI
                         images release.json names
 10 SBOMs                per output a valid SBOM naming the output's digest, and its signed
                         statement, bound to the same subjects
 11 sigstore             SHA256SUMS, release.json and each provenance statement signed keylessly
                         by the identity given, against the trusted root given (offline)
 12 bindings             layout/bindings.json, signed by the root key: each image carries the
                         other steps' products it names, unchanged; only images whose digest
                         check 8 confirmed are opened
 13 repository signatures  each APT repository's InRelease signs its attested Release (plus
                         Valid-Until = the release's expiry) with the archive key, and its
                         keyring is that key
 14 rebuilders           with --rebuild: each artifact reproduced by at least K distinct listed
                         rebuilder keys, by summaries of exactly this release and these digests
                         (audit/rebuilders.py); every summary that is not so is named
 15 Secure Boot          each attested EFI image (STAGE/OUTPUT.efi) is in STAGE/secureboot/ signed:
                         sbverify accepts its signature with the release's db certificate, the
                         certificate is the one the owner signed in bindings.json (and --db-cert),
                         and with the signature removed (sbattach --remove) it is exactly the
                         attested image
 16 Secure Boot media    each signed disk or ISO image (STAGE/secureboot/IMAGE, as media.json
                         names it) is its attested STAGE/IMAGE byte for byte outside the EFI
                         system partition and file for file inside it, but for EFI/BOOT/BOOTX64.EFI,
                         which is a signed EFI image check 15 accepted

A check whose trust anchor was not given is `skipped`, never `ok`. A malformed metadata file
fails its check as such; `malformed` is then set (exit 2, not 1).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from in_toto import exceptions, verifylib
from in_toto.models.metadata import Envelope
from securesystemslib.dsse import Envelope as DsseEnvelope
from securesystemslib.exceptions import FormatError, VerificationError
from securesystemslib.signer import Key, SSlibKey

from mlos_repro import run
from mlos_repro.attest import intoto, release_meta
from mlos_repro.attest.release_meta import MetaError, ReleaseInfo
from mlos_repro.audit.rebuilders import Rebuilders, agreement
from mlos_repro.audit.trust import (
    Failed,
    Malformed,
    Trust,
    authenticate,
    gpgv,
    keyring_file,
    parse_json,
    read,
    read_json,
)
from mlos_repro.digest import sha256_file
from mlos_repro.inspect import manifest
from mlos_repro.inspect.detect import reader_for
from mlos_repro.sbom.catalogue import RECORD
from mlos_repro.sbom.facts import SBOM_SUFFIX, described
from mlos_repro.sign import secureboot
from mlos_repro.sign.repository import KEYRING, with_valid_until
from mlos_repro.store import artifact_files

__all__ = ["Failed", "Malformed", "Outcome", "ReleaseVerifier"]



@dataclass
class Check:
    number: int
    name: str
    problems: list[str] = field(default_factory=list)
    note: str = ""
    malformed: bool = False
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        return "failed" if self.problems else "skipped" if self.skipped else "passed"

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "check": self.name, "status": self.status, "problems": self.problems,
                "note": self.note or None, "malformed": self.malformed}


@dataclass
class Outcome:
    checks: list[Check]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def malformed(self) -> bool:
        return any(c.malformed for c in self.checks)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    @property
    def verdict(self) -> str:
        if not self.ok:
            return f"release NOT verified: {self.count('failed')} checks failed"
        skipped = self.count("skipped")
        return "release verified" + (f", {skipped} checks skipped" if skipped else "")


def dsse_payload(path: Path, keys: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The in-toto statement in the DSSE envelope at path, if one of `keys` signed it."""
    statement = _dsse(path, keys, intoto.PAYLOAD_TYPE)
    if statement.get("_type") != intoto.STATEMENT:
        raise Malformed(f"{path}: the payload is not an in-toto Statement v1")
    return statement


def _dsse(path: Path, keys: dict[str, dict[str, Any]], payload_type: str) -> dict[str, Any]:
    data = read_json(path)
    try:
        envelope = DsseEnvelope.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Malformed(f"{path}: not a DSSE envelope ({e})") from None
    try:
        verifiers: list[Key] = [SSlibKey.from_dict(k, {f: v for f, v in key.items() if f != "keyid"})
                                for k, key in keys.items()]
    except (KeyError, TypeError, ValueError) as e:
        raise Malformed(f"a key of the layout cannot be read ({e})") from None
    try:
        envelope.verify(verifiers, 1)
    except (VerificationError, ValueError, TypeError):
        raise Failed(f"{path}: not signed by a trusted key (key ids "
                     f"{', '.join(sorted(keys)) or 'none'})") from None
    statement = parse_json(envelope.payload, f"{path}: the signed payload")
    if envelope.payload_type != payload_type or not isinstance(statement, dict):
        raise Malformed(f"{path}: the payload is not {payload_type}")
    return statement


class _Skip(Exception):
    pass


# What in-toto and securesystemslib raise on signed metadata of the wrong shape.
UNTRUSTED_SHAPE = (FormatError, KeyError, TypeError, ValueError, AttributeError)


class ReleaseVerifier:
    def __init__(self, release: Path, root_key: Path, trust: Trust,
                 rebuilders: Rebuilders | None = None, db_cert: Path | None = None) -> None:
        if trust.keyring is None and trust.sigstore is None:
            raise ValueError("a release is verified against the archive key or a sigstore identity")
        self.release = release
        self.root_key = root_key
        self.trust = trust
        self.ring: Path | None = None
        self.info: ReleaseInfo | None = None
        self.contents_ok = False
        self.layout: Any = None
        self.links: dict[str, Any] = {}
        self._sums_bytes: bytes | None = None
        self._walk: release_meta.Walk | None = None
        self.sums: dict[str, str] = {}
        self.verified: set[str] = set()  # artifacts whose bytes match SHA256SUMS
        self.rebuilders = rebuilders
        self.info_digest = ""  # sha256 of the release.json whose signature check 1 verified
        self.bound: dict[str, Any] | None = None  # layout/bindings.json's owner-signed statement
        self.db_cert = db_cert
        self.signed_efi: set[str] = set()  # STAGE/secureboot/NAME.efi that check 15 accepted

    def run(self) -> Outcome:
        with _ring(self.trust) as ring:
            self.ring = ring
            checks = [
                self._check(1, "release.json: signed, current", self.release_info),
                self._check(2, "release contents: every file signed, nothing else", self.contents),
                self._check(3, "layout signature", self.layout_signature),
                self._check(4, "layout expiry", self.layout_expiry),
                self._check(5, "links: present, signed by functionaries, threshold", self.link_thresholds),
                self._check(6, "artifact rules", self.artifact_rules),
                self._check(7, "SHA256SUMS signature", self.sums_signature),
                self._check(8, "SHA256SUMS = artifacts", self.sums_files),
                self._check(9, "provenance", self.provenance),
                self._check(10, "SBOMs", self.sboms),
                self._check(11, "sigstore bundles", self.sigstore_bundles),
                self._check(12, "bindings: images carry their upstream products", self.bindings),
                self._check(13, "repository signatures", self.repository_signatures),
                self._check(14, "rebuilders: k of n reproduced each artifact", self.rebuilt),
                self._check(15, "Secure Boot: signed images are the attested ones", self.secure_boot),
                self._check(16, "Secure Boot media: boot the signed images, nothing else changed",
                            self.secure_boot_media),
            ]
        return Outcome(checks)

    def rebuilt(self, c: Check) -> None:
        if self.rebuilders is None:
            raise _Skip("no --rebuild given: nobody but the builder vouches for these bytes")
        info: ReleaseInfo = self._need(self.info, "release.json")
        self._need(self.contents_ok, "release contents")
        sums = self._sums()
        after = frozenset(info.signed_after_build)
        artifacts = {f"{stage}/{output}": artifact_files(sums, f"{stage}/{output}", after)
                     for stage, outputs in info.stages.items() for output in outputs}
        found = agreement(self.rebuilders, self.info_digest, hashlib.sha256(self.sums_bytes()).hexdigest(),
                          sums, artifacts, dsse_payload)
        c.problems.extend(found.refused)
        c.malformed = found.malformed
        c.problems.extend(found.failed)
        c.problems.extend(found.short_of(sorted(artifacts), self.rebuilders.threshold))
        counts = [len(found.passed.get(a, ())) for a in artifacts] or [0]
        c.note = (f"each of {len(artifacts)} artifacts reproduced by at least {min(counts)} of "
                  f"{len(found.keys)} rebuilders (threshold {self.rebuilders.threshold})")

    def _check(self, number: int, name: str, body: Callable[[Check], None]) -> Check:
        c = Check(number, name)
        try:
            body(c)
        except (Malformed, MetaError) as e:
            c.problems.append(str(e))
            c.malformed = getattr(e, "malformed", True)
        except (Failed, exceptions.SignatureVerificationError, exceptions.LayoutExpiredError,
                exceptions.RuleVerificationError, exceptions.ThresholdVerificationError,
                exceptions.LinkNotFoundError) as e:
            c.problems.append(str(e))
        except _Skip as e:
            c.note, c.skipped = str(e), True
        return c

    def _need(self, what: Any, check: str) -> Any:
        if what is None or what is False:
            raise Failed(f"not checked: {check} failed")
        return what

    def walk(self) -> release_meta.Walk:
        """The release's entries, walked once per verification."""
        if self._walk is None:
            self._walk = release_meta.walk(self.release)
        return self._walk

    def sums_bytes(self) -> bytes:
        """SHA256SUMS, read once: the bytes whose signature is checked are the bytes parsed."""
        if self._sums_bytes is None:
            self._sums_bytes = read(self.release / release_meta.SUMS)
        return self._sums_bytes

    def _sums(self) -> dict[str, str]:
        if not self.sums:
            try:
                self.sums = release_meta.parse_sums(self.sums_bytes(), str(self.release / release_meta.SUMS))
            except MetaError as e:
                raise Malformed(str(e)) from None
        return self.sums

    # -- what the archive key signed --------------------------------------------------

    def release_info(self, c: Check) -> None:
        path = self.release / release_meta.RELEASE_INFO
        data = read(path)
        said = authenticate(data, path, self.trust, self.ring)
        info = ReleaseInfo.parse(data, str(path))
        self.info_digest = hashlib.sha256(data).hexdigest()
        if info.expired:
            raise Failed(f"{path}: the release expired on {info.expires}: its owner no longer vouches for it")
        self.info = info
        c.note = f"{info.name} {info.version}, released {info.released}, expires {info.expires}; " + \
            ", ".join(said)

    def contents(self, c: Check) -> None:
        walk = self.walk()
        c.problems.extend(walk.refused)
        self.contents_ok = not walk.refused  # what the other checks may open
        info = self._need(self.info, "release.json")
        listed = info.files
        present = {m for m in walk.metadata if not release_meta.signed_elsewhere(m)}
        for name in sorted(set(listed) - present):
            c.problems.append(f"{name}: listed in release.json but missing")
        for name in sorted(present - set(listed)):
            c.problems.append(f"{name}: not signed: release.json does not list it")
        for name in sorted(present & set(listed)):
            data = self.sums_bytes() if name == release_meta.SUMS else read(self.release / name)
            actual = hashlib.sha256(data).hexdigest()
            if actual != listed[name]:
                c.problems.append(f"{name}: sha256 {actual}, release.json says {listed[name]} "
                                  "(changed after signing, or from another release)")
        carried = self._carried_inputs(walk.inputs, c) if walk.inputs or "inputs.lock" in present else 0
        c.note = f"{len(listed)} metadata files, {len(walk.artifacts)} artifacts" + \
            (f", {carried} pinned inputs" if carried else "")

    def _carried_inputs(self, found: list[str], c: Check) -> int:
        """release --with-inputs: inputs/sha256/HEX hold exactly the digests inputs.lock lists
        (signed through release.json), each hashing to its name."""
        lock = read_json(self.release / "inputs.lock")
        listed = lock.get("inputs", {}).get("sha256", []) if isinstance(lock, dict) and \
            isinstance(lock.get("inputs"), dict) else []
        if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
            raise Malformed(f"{self.release / 'inputs.lock'}: inputs.sha256: expected a list of sha256")
        for digest in sorted(set(found) - set(listed)):
            c.problems.append(f"{release_meta.INPUTS}/{digest}: not listed in inputs.lock")
        for digest in sorted(set(listed) - set(found)):
            c.problems.append(f"{release_meta.INPUTS}/{digest}: listed in inputs.lock but missing")
        for digest in sorted(set(found) & set(listed)):
            actual = sha256_file(self.release / release_meta.INPUTS / digest, follow=False)
            if actual != digest:
                c.problems.append(f"{release_meta.INPUTS}/{digest}: its content has sha256 {actual}")
        return len(found)

    # -- in-toto ----------------------------------------------------------------------

    def layout_signature(self, c: Check) -> None:
        key = read_json(self.root_key)
        if not isinstance(key, dict) or not isinstance(key.get("keyid"), str):
            raise Malformed(f"{self.root_key}: not a public key dict with keyid (layout/keys/owner.pub.json)")
        path = self.release / "layout/root.layout"
        data = read_json(path)
        try:
            metadata = Envelope.from_dict(data)
            layout = metadata.get_payload()
        except Exception as e:
            raise Malformed(f"{path}: not a DSSE-signed in-toto layout ({str(e)[:120]})") from None
        try:
            verifylib.verify_metadata_signatures(metadata, {key["keyid"]: key})
        except exceptions.SignatureVerificationError as e:
            raise Failed(f"{path}: not signed by the root key {key['keyid'][:16]}…: {e}") from None
        except Exception as e:
            raise Malformed(f"{self.root_key}: not a usable public key ({str(e)[:120]})") from None
        self.layout = layout
        c.note = f"{len(layout.steps)} steps, signed by {key['keyid'][:16]}…"

    def layout_expiry(self, c: Check) -> None:
        layout = self._need(self.layout, "layout signature")
        verifylib.verify_layout_expiration(layout)
        c.note = f"expires {layout.expires}"

    def link_thresholds(self, c: Check) -> None:
        layout = self._need(self.layout, "layout signature")
        self._need(self.contents_ok, "release contents")
        _distinct_keys(layout)
        links_dir = self.release / "attestations/links"
        for path in sorted(links_dir.glob("*.link")):
            read_json(path)  # a broken one is named here, not as "cannot be read" below
        try:
            steps = verifylib.load_links_for_layout(layout, str(links_dir))
        except exceptions.LinkNotFoundError:
            raise
        except Exception as e:
            raise Malformed(f"{links_dir}: a link cannot be read ({str(e)[:120]})") from None
        for step in layout.steps:
            if not steps.get(step.name):
                raise Failed(f"step {step.name!r}: no link in {links_dir} ({step.name}.KEYID.link)")
        try:
            signed = verifylib.verify_link_signature_thresholds(layout, steps)
            chain = verifylib.verify_sublayouts(layout, signed, str(links_dir), 10)  # envelopes -> links
        except UNTRUSTED_SHAPE as e:  # a signed link whose fields are not a link's
            raise Malformed(f"{links_dir}: a link cannot be read ({type(e).__name__}: "
                            f"{str(e)[:160]})") from None
        verifylib.verify_threshold_constraints(layout, chain)
        self.links = chain
        thresholds = ", ".join(sorted({str(s.threshold) for s in layout.steps}))
        c.note = f"{len(chain)} steps, each with {thresholds} signed link(s) by distinct keys"

    def artifact_rules(self, c: Check) -> None:
        layout = self._need(self.layout, "layout signature")
        if not self.links:
            raise Failed("not checked: the links failed")
        try:
            verifylib.verify_all_item_rules(layout.steps, verifylib.reduce_chain_links(self.links))
        except UNTRUSTED_SHAPE as e:
            raise Malformed(f"the links' artifacts cannot be matched ({type(e).__name__}: "
                            f"{str(e)[:160]})") from None
        c.note = "every MATCH, ALLOW, CREATE and DISALLOW rule holds"

    # -- signatures and sums ------------------------------------------------------------

    def sums_signature(self, c: Check) -> None:
        if self.trust.keyring is None:
            raise _Skip("skipped: no --keyring given (SHA256SUMS is checked by its sigstore bundle, "
                        "check 11)")
        assert self.ring is not None
        sums, detached, clear = (self.release / n for n in ("SHA256SUMS", "SHA256SUMS.gpg", "SHA256SUMS.asc"))
        data = self.sums_bytes()
        gpgv(self.ring, detached, data)
        if clear.exists() or clear.is_symlink():
            text = gpgv(self.ring, clear)
            if text.replace(b"\r\n", b"\n") != data:
                raise Failed(f"{clear}: signed text differs from {sums}")
        # Each stage directory's SHA256SUMS, as plain gpgv checks it beside a download.
        stages = [self.release / m.removesuffix("/" + release_meta.SUMS)
                  for m in self.walk().metadata
                  if release_meta.is_stage_sums(m) and m.endswith("/" + release_meta.SUMS)]
        for stage in stages:
            try:
                gpgv(self.ring, stage / (release_meta.SUMS + release_meta.GPG_SUFFIX),
                     read(stage / release_meta.SUMS))
            except Failed as e:
                c.problems.append(str(e))
        c.note = f"signed by a key of {self.trust.keyring} (and {len(stages)} per-directory copies)"

    def sums_files(self, c: Check) -> None:
        sums = self._sums()
        walk = self.walk()
        present = set(walk.artifacts)
        for name in sorted(set(sums) - present):
            c.problems.append(f"artifacts/{name}: listed in SHA256SUMS but missing")
        for name in sorted(present - set(sums)):
            c.problems.append(f"artifacts/{name}: not listed in SHA256SUMS")
        for name in sorted(set(sums) & present):
            actual = release_meta.entry_digest(self.release / release_meta.ARTIFACTS / name)
            if actual != sums[name]:
                c.problems.append(f"artifacts/{name}: sha256 {actual}, SHA256SUMS says {sums[name]}")
            else:
                self.verified.add(name)
        # Each artifacts/STAGE/SHA256SUMS holds exactly SHA256SUMS' lines for STAGE, and no
        # other directory has one.
        expected = release_meta.stage_sums(sums)
        found = {m.split("/")[1] for m in walk.metadata if release_meta.is_stage_sums(m)}
        for stage in sorted(found - set(expected)):
            c.problems.append(f"artifacts/{stage}/{release_meta.SUMS}: SHA256SUMS lists no artifact "
                              f"in {stage}/")
        for stage, text in expected.items():
            path = self.release / release_meta.ARTIFACTS / stage / release_meta.SUMS
            if not path.exists() and not path.is_symlink():
                c.problems.append(f"artifacts/{stage}/{release_meta.SUMS}: missing (a download from "
                                  f"{stage}/ is checked with it)")
            elif read(path) != text:
                c.problems.append(f"artifacts/{stage}/{release_meta.SUMS}: differs from the lines SHA256SUMS "
                                  f"lists for {stage}/")
        c.note = f"{len(sums)} files"

    # -- statements -------------------------------------------------------------------

    def _statements(self, kind: str) -> Iterator[tuple[str, str, dict[str, Any], Path]]:
        """(stage, output, subjects, statement path) per output of every step's products."""
        layout = self._need(self.layout, "layout signature")
        if not self.links:
            raise Failed("not checked: the links failed")
        reduced = verifylib.reduce_chain_links(self.links)
        for step in layout.steps:
            products = reduced[step.name].products
            outputs = sorted({name.split("/", 2)[1] for name in products if name.count("/") >= 1})
            for output in outputs:
                subjects = {n: d for n, d in products.items() if n.split("/", 2)[1:2] == [output]}
                yield step.name, output, subjects, self.release / "attestations" / kind / step.name / \
                    f"{output}.intoto.json"

    def _keys_of(self, stage: str) -> dict[str, dict[str, Any]]:
        """Who may sign a step's statements: its functionaries, or, where those are OpenPGP
        keys (which cannot sign DSSE), the layout's keys that sign no link."""
        step = next(s for s in self.layout.steps if s.name == stage)
        mine = {k: self.layout.keys[k] for k in step.pubkeys
                if k in self.layout.keys and "method" not in self.layout.keys[k]}
        if mine:
            return mine
        in_steps = {k for s in self.layout.steps for k in s.pubkeys}
        return {k: v for k, v in self.layout.keys.items() if k not in in_steps and "method" not in v}

    def _subjects(self, where: Path, statement: dict[str, Any], subjects: dict[str, Any],
                  predicate_type: str) -> None:
        if statement.get("predicateType") != predicate_type:
            raise Failed(f"{where}: predicateType {statement.get('predicateType')!r}, "
                         f"expected {predicate_type}")
        try:
            named = {str(s["name"]): str(s["digest"]["sha256"]) for s in statement["subject"]}
        except (KeyError, TypeError) as e:
            raise Malformed(f"{where}: subject list malformed ({e})") from None
        wanted = {n: d["sha256"] for n, d in subjects.items()}
        if named != wanted:
            wrong = sorted(set(named.items()) ^ set(wanted.items()))
            raise Failed(f"{where}: subjects differ from the step's products: {wrong[:3]}")
        sums = self._sums()
        for name, digest in named.items():
            if sums.get(name) != digest:
                raise Failed(f"{where}: subject {name} sha256 {digest}, "
                             f"SHA256SUMS says {sums.get(name)}")

    def provenance(self, c: Check) -> None:
        info: ReleaseInfo = self._need(self.info, "release.json")
        sums = self._sums()
        covered: set[str] = set()
        for stage, _, subjects, path in self._statements("provenance"):
            try:
                statement = dsse_payload(path, self._keys_of(stage))
                self._subjects(path, statement, subjects, intoto.SLSA_PROVENANCE)
                covered.update(subjects)
            except Failed as e:
                c.problems.append(str(e))
        after = set(info.signed_after_build)
        for name in sorted(set(sums) - covered - after):
            c.problems.append(f"artifacts/{name}: in SHA256SUMS but no provenance names it")
        c.note = f"{len(covered)} files attested, {len(after & set(sums))} signed after the build"

    def sboms(self, c: Check) -> None:
        from mlos_repro.sbom import validate

        info: ReleaseInfo = self._need(self.info, "release.json")
        self._sums()
        count = 0
        for stage, output, subjects, path in self._statements("sbom"):
            sbom_path = self.release / "sbom" / stage / f"{output}{SBOM_SUFFIX}"
            try:
                text = read(sbom_path)
                sbom = parse_json(text, sbom_path)
                problems = validate.problems(text)
                if problems:
                    raise Failed(f"{sbom_path}: invalid: " + "; ".join(problems[:3]))
                digest = info.stages.get(stage, {}).get(output, "").removeprefix("sha256:")
                if not digest or described(sbom) != digest:
                    raise Failed(f"{sbom_path}: describes sha256 {described(sbom)}, "
                                 f"but {stage}/{output} is {digest or 'not in release.json'}")
                statement = dsse_payload(path, self._keys_of(stage))
                self._subjects(path, statement, subjects, intoto.CYCLONEDX)
                if statement.get("predicate") != sbom:
                    raise Failed(f"{path}: the signed SBOM differs from {sbom_path}")
                count += 1
            except Failed as e:
                c.problems.append(str(e))
        c.note = f"{count} SBOMs"

    def sigstore_bundles(self, c: Check) -> None:
        from mlos_repro.sign import sigstore

        artifacts = self.release / release_meta.ARTIFACTS
        bundles = sorted(p for p in self.release.rglob("*" + sigstore.BUNDLE_SUFFIX)
                         if not p.is_relative_to(artifacts))
        if self.trust.sigstore is None:
            raise _Skip(f"skipped: no --trusted-root, --identity, --issuer given ({len(bundles)} bundles)"
                        if bundles else "skipped: no sigstore bundles (released without --sigstore)")
        for required in (release_meta.SUMS, release_meta.RELEASE_INFO):
            if not (self.release / (required + sigstore.BUNDLE_SUFFIX)).exists():
                c.problems.append(f"{self.release / (required + sigstore.BUNDLE_SUFFIX)}: missing: "
                                  f"{required} was not signed keylessly")
        for bundle in bundles:
            signed = bundle.with_name(bundle.name.removesuffix(sigstore.BUNDLE_SUFFIX))
            try:
                data = self.sums_bytes() if signed == self.release / release_meta.SUMS else read(signed)
                sigstore.verify(data, read(bundle), *self.trust.sigstore)
            except Failed:
                c.problems.append(f"{bundle}: signs {signed.name}, which is missing")
            except (sigstore.MalformedError, Malformed) as e:
                c.problems.append(f"{bundle}: {e}")
                c.malformed = True
            except ValueError as e:
                c.problems.append(f"{bundle}: {e}")
        c.note = f"{len(bundles)} bundles signed by {self.trust.sigstore[1]}"

    # -- what images carry --------------------------------------------------------------

    def bindings(self, c: Check) -> None:
        key = read_json(self.root_key)
        path = self.release / "layout/bindings.json"
        trusted = {str(key.get("keyid")): key} if isinstance(key, dict) else {}
        statement = _dsse(path, trusted, intoto.BINDINGS_TYPE)
        self.bound = statement
        bindings = statement.get("bindings")
        if not isinstance(bindings, list) or not all(isinstance(b, dict) for b in bindings):
            raise Malformed(f"{path}: no bindings list")
        expires = str(statement.get("expires", ""))
        if expires and expires < release_meta.utc_now():
            raise Failed(f"{path}: expired on {expires}")
        self._sums()
        if not bindings:
            raise _Skip("skipped: the layout binds no image to another step's products")
        with tempfile.TemporaryDirectory(prefix="mlos-bind-") as tmp:
            for b in bindings:
                try:
                    self._binding(b, Path(tmp))
                except Failed as e:
                    c.problems.append(str(e))
        c.note = f"{len(bindings)} bindings hold"

    def _binding(self, b: dict[str, Any], work: Path) -> None:
        artifact, member, product = b.get("artifact"), b.get("member") or "", b.get("product")
        where = f"{artifact}{' → ' + member if member else ''}"
        if not isinstance(artifact, str) or not isinstance(product, str) or not isinstance(member, str) \
                or product not in self.sums:
            raise Failed(f"binding {where} = {product}: the product is not in SHA256SUMS")
        # Only bytes SHA256SUMS vouches for are opened: a hostile image is never parsed.
        for name in (artifact, product):
            if name not in self.verified:
                raise Failed(f"binding {where} = {product}: not checked: artifacts/{name} does not match "
                             "SHA256SUMS (check 8)")
        source = self.release / "artifacts" / artifact
        if b.get("payload"):
            self._payload(artifact, product, work)
            return
        found = source
        if member:
            reader = reader_for(source)
            extracted = reader.extract(source, {member}, work) if reader is not None else {}
            if member not in extracted:
                raise Failed(f"binding {where} = {product}: artifacts/{artifact} has no member {member}")
            found = extracted[member]
        size = (self.release / "artifacts" / product).stat().st_size if b.get("padded") else None
        digest, rest_zero = _digest_prefix(found, size)
        if digest != self.sums[product] or not rest_zero:
            raise Failed(f"binding {where}: sha256 {digest}"
                         + ("" if rest_zero else " (and the padding after it is not zeros)")
                         + f", but {product} is {self.sums[product]}")

    def _payload(self, artifact: str, product: str, work: Path) -> None:
        """A system extension carries its .deb's files unchanged: each file of the package's
        data at the path the `sysext` stage puts it (/lib, /bin, /sbin under usr/; /etc under
        usr/share/NAME/etc/), with the same bytes (a symlink: the same target); nothing more
        is the package's; and its record names this very .deb."""
        where = f"binding {artifact} carries {product}"
        work = Path(tempfile.mkdtemp(prefix="payload-", dir=work))
        source, deb = self.release / "artifacts" / artifact, self.release / "artifacts" / product
        image = _files(manifest.build(source, self.sums[artifact], work / "image")["root"])
        deb_root = manifest.build(deb, self.sums[product], work / "deb")["root"]
        data = next((m.get("inner") for m in deb_root.get("members", [])
                     if m["name"].startswith("data.tar") and m.get("inner")), None)
        while data is not None and data.get("kind") == "compressed" and data.get("members"):
            data = data["members"][0].get("inner")
        if data is None:
            raise Failed(f"{where}: {product} is no .deb with a data archive")
        records = sorted(n for n in image if n.startswith(RECORD) and n.endswith("/deb.sha256"))
        reader = reader_for(source)
        if reader is None or not records:
            raise Failed(f"{where}: {artifact} has no record of its package ({RECORD}NAME/)")
        wanted = {r for n in records for r in (n, n.removesuffix("deb.sha256") + "list")}
        (work / "records").mkdir()
        read = reader.extract(source, {image[n][2] for n in wanted if n in image}, work / "records")
        text = {_norm_member(k): v.read_text(encoding="utf-8", errors="replace") for k, v in read.items()}
        record = next((n for n in records if text.get(n, "").split()[:1] == [self.sums[product]]), None)
        if record is None:
            raise Failed(f"{where}: {artifact}'s record names another .deb ({', '.join(records)})")
        name = record.removeprefix(RECORD).split("/", 1)[0]
        listed = set(text.get(record.removesuffix("deb.sha256") + "list", "").split())
        expected: set[str] = set()
        for path, (kind, value, _) in sorted(_files(data).items()):
            top, _, rest = path.partition("/")
            moved = f"usr/{path}" if top in ("lib", "bin", "sbin") else \
                f"usr/share/{name}/etc/{rest}" if top == "etc" else path
            expected.add(moved)
            if moved not in image:
                raise Failed(f"{where}: {path} of the .deb is not in the image at {moved}")
            if image[moved][:2] != (kind, value):
                raise Failed(f"{where}: {moved} differs from {path} of the .deb")
        if extra := sorted(listed - expected):
            raise Failed(f"{where}: the image says {extra[0]} came from {name}, which has no such file")

    # -- the repositories signed after the build -----------------------------------------------

    def repository_signatures(self, c: Check) -> None:
        info: ReleaseInfo = self._need(self.info, "release.json")
        sums = self._sums()
        releases = sorted(n for n in sums if n.endswith("/Release") and n.rsplit("/", 3)[-3:-2] == ["dists"])
        expected: set[str] = set()
        for name in releases:
            stage = name.split("/", 1)[0]
            expected |= {name.rsplit("/", 1)[0] + "/InRelease", f"{stage}/{KEYRING}", f"{stage}/signing.json"}
        for extra in sorted(set(info.signed_after_build) - expected - self._secureboot_files(info)):
            c.problems.append(f"release.json: signed_after_build names {extra}, which is no repository "
                              "signature or signed EFI image of this release")
        if not releases:
            if not c.problems:
                raise _Skip("skipped: the release holds no APT repository")
            return
        artifacts = self.release / release_meta.ARTIFACTS
        expires = datetime.datetime.strptime(info.expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        with contextlib.ExitStack() as stack:
            ring = self.ring
            if ring is None:
                # Keyless trust: the release's own keyring, which SHA256SUMS (signed) vouches for.
                ring = stack.enter_context(keyring_file(artifacts / releases[0].split("/", 1)[0] / KEYRING))
                c.note = "with the keyring SHA256SUMS lists; "
            for name in releases:
                base, stage = name.rsplit("/", 1)[0], name.split("/", 1)[0]
                if not {name, f"{base}/InRelease"} <= self.verified:
                    c.problems.append(f"artifacts/{base}: not checked: its files do not match SHA256SUMS")
                    continue
                try:
                    # What apt reads: the attested Release, plus the release's expiry as Valid-Until.
                    wanted = with_valid_until(read(artifacts / name), expires)
                    if gpgv(ring, artifacts / base / "InRelease").replace(b"\r\n", b"\n") != wanted:
                        raise Failed(f"artifacts/{base}/InRelease: its signed text is not the attested "
                                     f"Release with Valid-Until {info.expires}")
                    self._keyring_holds(artifacts / stage, info.release_key)
                except (Failed, Malformed) as e:
                    c.problems.append(str(e))
        c.note += f"{len(releases)} repositories signed by {info.release_key}, valid until {info.expires}"

    def _keyring_holds(self, stage_dir: Path, fingerprint: str) -> None:
        keyring = stage_dir / KEYRING
        with tempfile.TemporaryDirectory(prefix="mlos-showkeys-") as home:
            listing = run.run_or_raise(["gpg", "--batch", "--no-options", "--homedir", home, "--with-colons",
                                        "--show-keys"], Malformed, f"{keyring}: not an OpenPGP keyring",
                                       input=read(keyring), tail=1)
        lines = listing.stdout.decode().splitlines()
        primaries = [line.split(":")[9] for prev, line in zip(["", *lines], lines, strict=False)
                     if line.startswith("fpr:") and prev.startswith("pub:")]
        if primaries != [fingerprint]:
            raise Failed(f"{keyring}: holds {', '.join(primaries) or 'no key'}, but the archive key is "
                         f"{fingerprint}: apt would trust another key")
        signing = parse_json(read(stage_dir / "signing.json"), stage_dir / "signing.json")
        named = signing.get("fingerprint") if isinstance(signing, dict) else None
        if named != fingerprint:
            raise Failed(f"{stage_dir / 'signing.json'}: names {named}, but the archive key is {fingerprint}")

    # -- Secure Boot ------------------------------------------------------------------------

    def _efi_images(self, info: ReleaseInfo) -> dict[str, list[str]]:
        """stage -> its attested EFI image outputs (files named *.efi), which the release carries
        signed in STAGE/secureboot/."""
        sums = self._sums()
        found = {stage: sorted(o for o in outputs if o.endswith(".efi") and f"{stage}/{o}" in sums)
                 for stage, outputs in info.stages.items()}
        return {stage: outputs for stage, outputs in found.items() if outputs}

    def _secureboot_files(self, info: ReleaseInfo) -> set[str]:
        images = self._efi_images(info)
        signed = {f"{stage}/{secureboot.DIRECTORY}/{name}" for stage, outputs in images.items()
                  for name in (*outputs, secureboot.CERT, secureboot.DER, secureboot.FACTS)}
        return signed | self._media_files(info)

    def _media_files(self, info: ReleaseInfo) -> set[str]:
        """What may be a signed medium: STAGE/secureboot/OUTPUT of an attested output that is no
        EFI image, and STAGE/secureboot/media.json."""
        sums = self._sums()
        return {f"{stage}/{secureboot.DIRECTORY}/{name}" for stage, outputs in info.stages.items()
                for name in (*[o for o in outputs if not o.endswith(".efi") and f"{stage}/{o}" in sums],
                             secureboot.MEDIA)}

    def secure_boot(self, c: Check) -> None:
        info: ReleaseInfo = self._need(self.info, "release.json")
        images = self._efi_images(info)
        if not images:
            raise _Skip("skipped: the release holds no EFI image")
        bound = self._need(self.bound, "bindings (the owner-signed layout/bindings.json)")
        owner_says = bound.get("secureboot_db_sha256")
        if not isinstance(owner_says, str):
            raise Failed("layout/bindings.json: names no Secure Boot db certificate (secureboot_db_sha256), "
                         "but the release carries EFI images: the owner vouches for no key that signed them")
        after = set(info.signed_after_build)
        subjects, development, signed = set(), False, 0
        for stage, outputs in images.items():
            where = f"{stage}/{secureboot.DIRECTORY}"
            try:
                subject, dev = self._db_certificate(where, owner_says, after)
            except Failed as e:
                c.problems.append(str(e))
                continue
            subjects.add(subject)
            development |= dev
            for output in outputs:
                try:
                    self._signed_image(stage, output, after)
                    signed += 1
                    self.signed_efi.add(f"{stage}/{secureboot.DIRECTORY}/{output}")
                except Failed as e:
                    c.problems.append(str(e))
        c.note = (f"{signed} EFI images signed by {', '.join(sorted(subjects)) or 'no key'}"
                  + (" (a development key, not for release)" if development else ""))

    def secure_boot_media(self, c: Check) -> None:
        info: ReleaseInfo = self._need(self.info, "release.json")
        after = set(info.signed_after_build)
        described = sorted(n for n in after & self._media_files(info) if n.endswith("/" + secureboot.MEDIA))
        if not described:
            raise _Skip("skipped: the release holds no signed disk or ISO image")
        artifacts = self.release / release_meta.ARTIFACTS
        claimed = set(described)
        booted = []
        for name in described:
            self._signed_after(name, after)
            stage = name.split("/", 1)[0]
            images = secureboot.media_images(parse_json(read(artifacts / name), artifacts / name))
            if images is None:
                raise Malformed(f"artifacts/{name}: expected {secureboot.MEDIA_SHAPE}")
            for output, facts in sorted(images.items()):
                claimed.add(f"{stage}/{secureboot.DIRECTORY}/{output}")
                try:
                    booted.append(self._medium(stage, str(output), facts, after))
                except Failed as e:
                    c.problems.append(str(e))
        for unclaimed in sorted(after & self._media_files(info) - claimed):
            c.problems.append(f"artifacts/{unclaimed}: no media.json describes it")
        c.note = f"{len(booted)} images boot " + ", ".join(sorted(set(booted)))

    def _medium(self, stage: str, output: str, facts: dict[str, Any], after: set[str]) -> str:
        """The signed EFI image STAGE/secureboot/OUTPUT boots, once it is shown to be the
        attested STAGE/OUTPUT with nothing changed but its boot loader, that image."""
        name = f"{stage}/{secureboot.DIRECTORY}/{output}"
        self._signed_after(name, after)
        if f"{stage}/{output}" not in self.verified:
            raise Failed(f"artifacts/{name}: not checked: artifacts/{stage}/{output} does not match "
                         "SHA256SUMS (check 8)")
        efi, loader = facts.get("efi"), facts.get("loader")
        if loader != secureboot.LOADER:
            raise Failed(f"artifacts/{stage}/{secureboot.DIRECTORY}/{secureboot.MEDIA}: {output}'s boot "
                         f"loader is {loader!r}; only {secureboot.LOADER} is checked")
        if efi not in self.signed_efi:
            raise Failed(f"artifacts/{name}: boots {efi!r}, which is no signed EFI image check 15 accepted")
        artifacts = self.release / release_meta.ARTIFACTS
        with tempfile.TemporaryDirectory(prefix="mlos-verify-medium-") as tmp:
            try:
                problem = secureboot.medium_problem(artifacts / stage / output, artifacts / name,
                                                    self._sums()[efi], Path(tmp))
            except ValueError as e:
                raise Failed(f"artifacts/{stage}/{output}: no EFI system partition to compare ({e})") \
                    from None
        if problem is not None:
            raise Failed(f"artifacts/{name}: {problem}")
        return str(efi)

    def _db_certificate(self, where: str, owner_says: str, after: set[str]) -> tuple[str, bool]:
        """(subject, development key?) of STAGE/secureboot's certificate, once it is shown to be
        the one the owner signed (and the one --db-cert names)."""
        for name in (secureboot.CERT, secureboot.DER, secureboot.FACTS):
            self._signed_after(f"{where}/{name}", after)
        artifacts = self.release / release_meta.ARTIFACTS
        try:
            pem = secureboot.certificate(read(artifacts / where / secureboot.CERT),
                                         f"artifacts/{where}/{secureboot.CERT}")
        except ValueError as e:
            raise Malformed(str(e)) from None
        der = secureboot.der(pem)
        if read(artifacts / where / secureboot.DER) != der:
            raise Failed(f"artifacts/{where}/{secureboot.DER}: not the certificate of {secureboot.CERT}")
        digest = hashlib.sha256(der).hexdigest()
        if digest != owner_says:
            raise Failed(f"artifacts/{where}/{secureboot.CERT}: certificate sha256 {digest}, but the owner "
                         f"signed {owner_says} in layout/bindings.json")
        if self.db_cert is not None:
            try:
                pinned = secureboot.certificate(read(self.db_cert), str(self.db_cert))
            except ValueError as e:
                raise Malformed(str(e)) from None
            if secureboot.der(pinned) != der:
                raise Failed(f"artifacts/{where}/{secureboot.CERT}: {pem.subject.rfc4514_string()} "
                             f"(sha256 {digest}) is not the certificate --db-cert gives ({self.db_cert})")
        facts = parse_json(read(artifacts / where / secureboot.FACTS), artifacts / where / secureboot.FACTS)
        if not isinstance(facts, dict) or facts.get("certificate_sha256") != digest:
            raise Failed(f"artifacts/{where}/{secureboot.FACTS}: names another certificate than "
                         f"{secureboot.CERT} (sha256 {digest})")
        return pem.subject.rfc4514_string(), facts.get("development_key") is True

    def _signed_after(self, name: str, after: set[str]) -> None:
        if name not in after:
            raise Failed(f"artifacts/{name}: missing (release.json's signed_after_build does not name it)")
        if name not in self.verified:
            raise Failed(f"artifacts/{name}: not checked: missing, or not as SHA256SUMS lists it (check 8)")

    def _signed_image(self, stage: str, output: str, after: set[str]) -> None:
        """STAGE/secureboot/OUTPUT: a signature the certificate verifies, and without it, exactly
        the attested STAGE/OUTPUT."""
        name = f"{stage}/{secureboot.DIRECTORY}/{output}"
        self._signed_after(name, after)
        if f"{stage}/{output}" not in self.verified:
            raise Failed(f"artifacts/{name}: not checked: artifacts/{stage}/{output} does not match "
                         "SHA256SUMS (check 8)")
        artifacts = self.release / release_meta.ARTIFACTS
        cert = artifacts / stage / secureboot.DIRECTORY / secureboot.CERT
        said = secureboot.signature_problem(cert, artifacts / name)
        if said is not None:
            raise Failed(f"artifacts/{name}: no Secure Boot signature that {secureboot.CERT} verifies "
                         f"(sbverify: {said})")
        unsigned = secureboot.without_signature(artifacts / name)
        if unsigned != read(artifacts / stage / output):
            raise Failed(f"artifacts/{name}: with its signature removed, it is not the attested "
                         f"{stage}/{output}: the firmware would run bytes nobody built")


def _distinct_keys(layout: Any) -> None:
    """A threshold counts keys, not key ids: one key listed under two ids would count twice."""
    seen: dict[str, str] = {}
    for keyid, key in layout.keys.items():
        value = json.dumps(key.get("keyval", key) if isinstance(key, dict) else key, sort_keys=True)
        if value in seen:
            raise Failed(f"the layout lists one key under two key ids ({seen[value][:16]}…, {keyid[:16]}…): "
                         "a threshold must count distinct keys")
        seen[value] = keyid


@contextlib.contextmanager
def _ring(trust: Trust) -> Iterator[Path | None]:
    if trust.keyring is None:
        yield None
        return
    with keyring_file(trust.keyring) as ring:
        yield ring


def _digest_prefix(path: Path, size: int | None) -> tuple[str, bool]:
    """(sha256 of the first `size` bytes, or of all if None; whether the rest is zeros)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = -1 if size is None else size
        while remaining != 0 and (chunk := f.read(1 << 20 if remaining < 0 else min(1 << 20, remaining))):
            digest.update(chunk)
            remaining -= len(chunk) if remaining > 0 else 0
        while chunk := f.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return digest.hexdigest(), False
    return digest.hexdigest(), True


def _norm_member(name: str) -> str:
    return name.removeprefix("./").lstrip("/")


def _files(node: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """A container's files and symlinks: path -> (type, sha256 or target, name as listed)."""
    out = {}
    for m in node.get("members", []):
        if m["type"] == "file":
            out[_norm_member(m["name"])] = ("file", m.get("sha256", ""), m["name"])
        elif m["type"] == "symlink":
            out[_norm_member(m["name"])] = ("symlink", m.get("target", ""), m["name"])
    return out
