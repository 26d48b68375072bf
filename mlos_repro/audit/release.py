"""`mlos-repro verify RELEASE`: every step of a release's supply chain, checked offline.

Numbered checks, each with its own error naming the file, step or artifact at fault:

  1 layout signature      root.layout is signed by the root (owner) key given
  2 layout expiry         the layout has not expired
  3 links                 each step's links are present, signed by its functionaries, threshold met
  4 artifact rules        each step's materials and products obey the layout's rules
  5 SHA256SUMS signature  SHA256SUMS.gpg (and the clearsigned .asc) by a key of --keyring
  6 SHA256SUMS = files    every file under artifacts/ is listed with its digest, and nothing else
  7 provenance            per output a statement signed by a functionary of its step, whose
                          subjects are the step's products, as SHA256SUMS lists them
  8 SBOMs                 per output a valid SBOM naming the output's digest, and its signed
                          statement, bound to the same subjects
  9 sigstore              SHA256SUMS and each provenance statement signed keylessly by the
                          identity given, against the trusted root given (offline)
 10 bindings              layout/bindings.json, signed by the root key: each image carries the
                          other steps' products it names, unchanged (e.g. the ISO's squashfs is
                          the rootfs step's product)

A malformed metadata file fails its check as such; `malformed` is then set (exit 2, not 1).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from in_toto import exceptions, verifylib
from in_toto.models.metadata import Envelope
from securesystemslib.dsse import Envelope as DsseEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key, SSlibKey

from mlos_repro import run
from mlos_repro.attest import intoto
from mlos_repro.digest import sha256_file
from mlos_repro.inspect.detect import reader_for
from mlos_repro.sbom import validate
from mlos_repro.sbom.cache import SBOM_SUFFIX

SUMS_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


class Malformed(Exception):
    """A metadata file that cannot be read as what it must be."""


class Failed(Exception):
    pass


@dataclass
class Check:
    number: int
    name: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    note: str = ""
    malformed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "check": self.name, "ok": self.ok, "problems": self.problems,
                "note": self.note or None, "malformed": self.malformed}


@dataclass
class Outcome:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def malformed(self) -> bool:
        return any(c.malformed for c in self.checks)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Failed(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Malformed(f"{path}: not valid JSON ({e})") from None


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
    verifiers: list[Key] = [SSlibKey.from_dict(k, {f: v for f, v in key.items() if f != "keyid"})
                            for k, key in keys.items()]
    try:
        envelope.verify(verifiers, 1)
    except (VerificationError, ValueError):
        raise Failed(f"{path}: not signed by a trusted key (key ids "
                     f"{', '.join(sorted(keys)) or 'none'})") from None
    try:
        statement = json.loads(envelope.payload)
    except ValueError as e:
        raise Malformed(f"{path}: the signed payload is not JSON ({e})") from None
    if envelope.payload_type != payload_type or not isinstance(statement, dict):
        raise Malformed(f"{path}: the payload is not {payload_type}")
    return statement


class ReleaseVerifier:
    def __init__(self, release: Path, root_key: Path, keyring: Path | None,
                 sigstore: tuple[Path, str, str | None] | None = None) -> None:
        self.release = release
        self.root_key = root_key
        self.keyring = keyring
        self.sigstore = sigstore
        self.layout: Any = None
        self.links: dict[str, Any] = {}
        self.sums: dict[str, str] = {}

    def run(self) -> Outcome:
        checks = [
            self._check(1, "layout signature", self.layout_signature),
            self._check(2, "layout expiry", self.layout_expiry),
            self._check(3, "links: present, signed by functionaries, threshold", self.link_thresholds),
            self._check(4, "artifact rules", self.artifact_rules),
            self._check(5, "SHA256SUMS signature", self.sums_signature),
            self._check(6, "SHA256SUMS = artifacts", self.sums_files),
            self._check(7, "provenance", self.provenance),
            self._check(8, "SBOMs", self.sboms),
            self._check(9, "sigstore bundles", self.sigstore_bundles),
            self._check(10, "bindings: images carry their upstream products", self.bindings),
        ]
        return Outcome(checks)

    def _check(self, number: int, name: str, body: Callable[[Check], None]) -> Check:
        c = Check(number, name)
        try:
            body(c)
        except Malformed as e:
            c.problems.append(str(e))
            c.malformed = True
        except (Failed, exceptions.SignatureVerificationError, exceptions.LayoutExpiredError,
                exceptions.RuleVerificationError, exceptions.ThresholdVerificationError,
                exceptions.LinkNotFoundError) as e:
            c.problems.append(str(e))
        except _Skip as e:
            c.note = str(e)
        c.ok = not c.problems
        return c

    def _need(self, what: Any, check: str) -> Any:
        if what is None:
            raise Failed(f"not checked: {check} failed")
        return what

    # -- in-toto ----------------------------------------------------------------------

    def layout_signature(self, c: Check) -> None:
        key = read_json(self.root_key)
        if not isinstance(key, dict) or "keyid" not in key:
            raise Malformed(f"{self.root_key}: not a public key dict with keyid (layout/keys/owner.pub.json)")
        path = self.release / "layout/root.layout"
        if not path.exists():
            raise Failed(f"{path}: missing")
        try:
            metadata = Envelope.load(str(path))
            layout = metadata.get_payload()
        except Exception as e:
            raise Malformed(f"{path}: not a DSSE-signed in-toto layout ({e})") from None
        try:
            verifylib.verify_metadata_signatures(metadata, {key["keyid"]: key})
        except exceptions.SignatureVerificationError as e:
            raise Failed(f"{path}: not signed by the root key {key['keyid'][:16]}…: {e}") from None
        self.layout = layout
        c.note = f"{len(layout.steps)} steps, signed by {key['keyid'][:16]}…"

    def layout_expiry(self, c: Check) -> None:
        layout = self._need(self.layout, "layout signature")
        verifylib.verify_layout_expiration(layout)
        c.note = f"expires {layout.expires}"

    def link_thresholds(self, c: Check) -> None:
        layout = self._need(self.layout, "layout signature")
        links_dir = self.release / "attestations/links"
        for path in sorted(links_dir.glob("*.link")):
            read_json(path)  # a broken one is named here, not as "cannot be read" below
        try:
            steps = verifylib.load_links_for_layout(layout, str(links_dir))
        except exceptions.LinkNotFoundError:
            raise
        except Exception as e:
            raise Malformed(f"{links_dir}: a link cannot be read ({e})") from None
        for step in layout.steps:
            if not steps.get(step.name):
                raise Failed(f"step {step.name!r}: no link in {links_dir} ({step.name}.KEYID.link)")
        signed = verifylib.verify_link_signature_thresholds(layout, steps)
        chain = verifylib.verify_sublayouts(layout, signed, str(links_dir), 10)  # envelopes -> links
        verifylib.verify_threshold_constraints(layout, chain)
        self.links = chain
        thresholds = ", ".join(sorted({str(s.threshold) for s in layout.steps}))
        c.note = f"{len(chain)} steps, each with {thresholds} signed link(s)"

    def artifact_rules(self, c: Check) -> None:
        layout = self._need(self.layout, "layout signature")
        if not self.links:
            raise Failed("not checked: the links failed")
        verifylib.verify_all_item_rules(layout.steps, verifylib.reduce_chain_links(self.links))
        c.note = "every MATCH, ALLOW, CREATE and DISALLOW rule holds"

    # -- signatures and sums ------------------------------------------------------------

    def sums_signature(self, c: Check) -> None:
        sums, detached, clear = (self.release / n for n in ("SHA256SUMS", "SHA256SUMS.gpg", "SHA256SUMS.asc"))
        if self.keyring is None:
            raise _Skip("not checked: no --keyring given (the release OpenPGP public key you trust)")
        for p in (sums, detached):
            if not p.exists():
                raise Failed(f"{p}: missing")
        with keyring_file(self.keyring) as ring:
            gpgv(ring, detached, sums)
            if clear.exists():
                text = gpgv(ring, clear)
                if text.replace(b"\r\n", b"\n") != sums.read_bytes():
                    raise Failed(f"{clear}: signed text differs from {sums}")
        c.note = f"signed by a key of {self.keyring}"

    def sums_files(self, c: Check) -> None:
        self.sums = parse_sums(self.release / "SHA256SUMS")
        artifacts = self.release / "artifacts"
        present = {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()}
        for name in sorted(set(self.sums) - present):
            c.problems.append(f"artifacts/{name}: listed in SHA256SUMS but missing")
        for name in sorted(present - set(self.sums)):
            c.problems.append(f"artifacts/{name}: not listed in SHA256SUMS")
        for name in sorted(set(self.sums) & present):
            actual = sha256_file(artifacts / name)
            if actual != self.sums[name]:
                c.problems.append(f"artifacts/{name}: sha256 {actual}, SHA256SUMS says {self.sums[name]}")
        c.note = f"{len(self.sums)} files"

    # -- statements -------------------------------------------------------------------

    def _statements(self, kind: str) -> Iterator[tuple[str, str, dict[str, Any], Path]]:
        """(stage, output, subjects, statement path) per output of every step's products."""
        layout = self._need(self.layout, "layout signature")
        if not self.links:
            raise Failed("not checked: the links failed")
        reduced = verifylib.reduce_chain_links(self.links)
        for step in layout.steps:
            products = reduced[step.name].products
            outputs = sorted({name.split("/", 2)[1] for name in products})
            for output in outputs:
                subjects = {n: d for n, d in products.items() if n.split("/", 2)[1] == output}
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
            named = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        except (KeyError, TypeError) as e:
            raise Malformed(f"{where}: subject list malformed ({e})") from None
        wanted = {n: d["sha256"] for n, d in subjects.items()}
        if named != wanted:
            wrong = sorted(set(named.items()) ^ set(wanted.items()))
            raise Failed(f"{where}: subjects differ from the step's products: {wrong[:3]}")
        for name, digest in named.items():
            if self.sums.get(name) != digest:
                raise Failed(f"{where}: subject {name} sha256 {digest}, "
                             f"SHA256SUMS says {self.sums.get(name)}")

    def provenance(self, c: Check) -> None:
        if not self.sums:
            self.sums = parse_sums(self.release / "SHA256SUMS")
        covered: set[str] = set()
        for stage, _, subjects, path in self._statements("provenance"):
            try:
                statement = dsse_payload(path, self._keys_of(stage))
                self._subjects(path, statement, subjects, intoto.SLSA_PROVENANCE)
                covered.update(subjects)
            except Failed as e:
                c.problems.append(str(e))
        info = read_json(self.release / "release.json")
        after = set(info.get("signed_after_build", [])) if isinstance(info, dict) else set()
        for name in sorted(set(self.sums) - covered - after):
            c.problems.append(f"artifacts/{name}: in SHA256SUMS but no provenance names it")
        c.note = f"{len(covered)} files attested"

    def sboms(self, c: Check) -> None:
        if not self.sums:
            self.sums = parse_sums(self.release / "SHA256SUMS")
        info = read_json(self.release / "release.json")
        count = 0
        for stage, output, subjects, path in self._statements("sbom"):
            sbom_path = self.release / "sbom" / stage / f"{output}{SBOM_SUFFIX}"
            try:
                sbom = read_json(sbom_path)
                problems = validate.problems(json.dumps(sbom))
                if problems:
                    raise Failed(f"{sbom_path}: invalid: " + "; ".join(problems[:3]))
                digest = str(info.get("stages", {}).get(stage, {}).get("outputs", {}).get(output) or ""
                             ).removeprefix("sha256:")
                described = validate.described(sbom)
                if not digest or described != digest:
                    raise Failed(f"{sbom_path}: describes sha256 {described}, "
                                 f"but {stage}/{output} is {digest}")
                statement = dsse_payload(path, self._keys_of(stage))
                self._subjects(path, statement, subjects, intoto.CYCLONEDX)
                if statement.get("predicate") != sbom:
                    raise Failed(f"{path}: the signed SBOM differs from {sbom_path}")
                count += 1
            except Failed as e:
                c.problems.append(str(e))
        c.note = f"{count} SBOMs"


    def bindings(self, c: Check) -> None:
        key = read_json(self.root_key)
        path = self.release / "layout/bindings.json"
        trusted = {str(key.get("keyid")): key} if isinstance(key, dict) else {}
        statement = _dsse(path, trusted, intoto.BINDINGS_TYPE)
        if not isinstance(statement.get("bindings"), list):
            raise Malformed(f"{path}: no bindings list")
        expires = str(statement.get("expires", ""))
        if expires and expires < datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"):
            raise Failed(f"{path}: expired on {expires}")
        if not self.sums:
            self.sums = parse_sums(self.release / "SHA256SUMS")
        with tempfile.TemporaryDirectory(prefix="mlos-bind-") as tmp:
            for b in statement["bindings"]:
                try:
                    self._binding(b, Path(tmp))
                except Failed as e:
                    c.problems.append(str(e))
        c.note = f"{len(statement['bindings'])} bindings hold"

    def _binding(self, b: dict[str, Any], work: Path) -> None:
        artifact, member, product = b.get("artifact"), b.get("member") or "", b.get("product")
        where = f"{artifact}{' → ' + member if member else ''}"
        if not isinstance(artifact, str) or not isinstance(product, str) or product not in self.sums:
            raise Failed(f"binding {where} = {product}: the product is not in SHA256SUMS")
        source = self.release / "artifacts" / artifact
        if not source.is_file():
            raise Failed(f"binding {where} = {product}: artifacts/{artifact} is missing")
        found = source
        if member:
            reader = reader_for(source)
            extracted = reader.extract(source, {member}, work) if reader is not None else {}
            if member not in extracted:
                raise Failed(f"binding {where} = {product}: artifacts/{artifact} has no member {member}")
            found = extracted[member]
        digest, rest_zero = _digest_prefix(found, self.sums_size(product) if b.get("padded") else None)
        if digest != self.sums[product] or not rest_zero:
            raise Failed(f"binding {where}: sha256 {digest}"
                         + ("" if rest_zero else " (and the padding after it is not zeros)")
                         + f", but {product} is {self.sums[product]}")

    def sums_size(self, product: str) -> int:
        return (self.release / "artifacts" / product).stat().st_size

    def sigstore_bundles(self, c: Check) -> None:
        from mlos_repro.sign import sigstore

        bundles = sorted(self.release.rglob("*" + sigstore.BUNDLE_SUFFIX))
        if self.sigstore is None:
            raise _Skip(f"not checked: give --trusted-root and --identity ({len(bundles)} bundles present)"
                        if bundles else "not checked: no sigstore bundles (released without --sigstore)")
        sums_bundle = self.release / f"SHA256SUMS{sigstore.BUNDLE_SUFFIX}"
        if not sums_bundle.exists():
            raise Failed(f"{sums_bundle}: missing: SHA256SUMS was not signed keylessly")
        for bundle in bundles:
            signed = bundle.with_name(bundle.name.removesuffix(sigstore.BUNDLE_SUFFIX))
            try:
                data = signed.read_bytes()
                sigstore.verify(data, bundle, *self.sigstore)
            except FileNotFoundError:
                c.problems.append(f"{bundle}: signs {signed.name}, which is missing")
            except sigstore.MalformedError as e:
                c.problems.append(str(e))
                c.malformed = True
            except ValueError as e:
                c.problems.append(str(e))
        identity = self.sigstore[1]
        c.note = f"{len(bundles)} bundles signed by {identity}"


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


class _Skip(Exception):
    pass


def parse_sums(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise Failed(f"{path}: missing") from None
    except UnicodeDecodeError:
        raise Malformed(f"{path}: not text") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = SUMS_LINE.match(line)
        if not m:
            raise Malformed(f"{path}:{number}: expected 'SHA256  NAME' (sha256sum format), got {line[:60]!r}")
        sums[m.group(2)] = m.group(1)
    return sums


@contextlib.contextmanager
def keyring_file(keyring: Path) -> Iterator[Path]:
    """A binary keyring for gpgv from an armored or binary public key file."""
    data = keyring.read_bytes()
    if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" not in data:
        yield keyring
        return
    with tempfile.TemporaryDirectory(prefix="mlos-keyring-") as tmp:
        ring = Path(tmp) / "keyring.gpg"
        run.run(["gpg", "--batch", "--no-options", "--homedir", tmp, "--dearmor", "-o", str(ring)],
                input=data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield ring


def gpgv(keyring: Path, signature: Path, data: Path | None = None) -> bytes:
    """gpgv's verdict; returns the signed text of a clearsigned file."""
    argv = ["gpgv", "--keyring", str(keyring.absolute())]
    if data is None:
        argv += ["--output", "-", str(signature)]
    else:
        argv += [str(signature), str(data)]
    result = run.run_or_raise(argv, Failed, f"{signature}: bad or unknown signature", tail=1)
    return bytes(result.stdout)
