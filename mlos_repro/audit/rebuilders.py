"""k of n: how many independent rebuilders reproduced each artifact of a release.

A rebuilder's directory (`mlos-repro rebuild`) holds one signed verification summary per
artifact (attest/vsa.py). A summary counts for an artifact only when it is signed by one of
the rebuilder keys the user lists, names exactly this release (its release.json and
SHA256SUMS by sha256), says PASSED, and its subjects are exactly the artifact's files with
the digests SHA256SUMS lists. Each key counts once per artifact. Anything else found in the
directories is refused, each with its own message: a summary that is not what it claims
must never pass unnoticed.
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.attest import vsa
from mlos_repro.audit.trust import Failed, Malformed, read, read_json

SUMMARIES = "vsa"
SUFFIX = ".intoto.json"
MAX_SUMMARIES = 10_000
SUMMARY_LIMIT = 1 << 20  # a summary fetched over HTTP
HTTP_TIMEOUT = 30


@dataclass(frozen=True)
class Rebuilders:
    """What `verify --rebuild` is given: the directories, the trusted keys, the threshold."""

    directories: tuple[Path | str, ...]  # a directory, or the http(s) URL where one is published
    keys: tuple[Path, ...]
    threshold: int


@dataclass
class Agreement:
    """Per artifact, the keys that reproduced it; the refusals and the FAILED verdicts met."""

    passed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    failed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    malformed: bool = False  # a summary that cannot be read as one (exit 2, as other metadata)

    def short_of(self, artifacts: list[str], threshold: int) -> list[str]:
        n = len(self.keys)
        return [f"{a}: reproduced by {len(self.passed.get(a, ()))} of {threshold} required rebuilders "
                f"({n} listed)" for a in artifacts if len(self.passed.get(a, ())) < threshold]


def load_keys(paths: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    keys: dict[str, dict[str, Any]] = {}
    for path in paths:
        key = read_json(path)
        if not isinstance(key, dict) or not isinstance(key.get("keyid"), str) or "keyval" not in key:
            raise Malformed(f"{path}: not a public key dict with keyid (a rebuilder's "
                            "attestation/builder.pub.json)")
        if key["keyid"] in keys:
            raise Malformed(f"{path}: the rebuilder key {key['keyid'][:16]}… is listed twice")
        if any(k["keyval"] == key["keyval"] for k in keys.values()):
            raise Malformed(f"{path}: the same public key as another --rebuilder-key under another key id; "
                            "one rebuilder counts once")
        keys[key["keyid"]] = key
    return keys


def agreement(rebuilders: Rebuilders, release_info: str, sums_digest: str, sums: dict[str, str],
              artifacts: dict[str, dict[str, str]], dsse_payload: Any) -> Agreement:
    """Read every summary under the rebuild directories. `artifacts`: {STAGE/OUTPUT: {file:
    sha256}} as SHA256SUMS lists them (without the files signed after the build);
    dsse_payload(path, keys) returns the statement if one of `keys` signed it."""
    found = Agreement(keys=load_keys(rebuilders.keys))
    seen: dict[tuple[str, str], Path] = {}
    with tempfile.TemporaryDirectory(prefix="mlos-rebuilds-") as tmp:
        for n, given in enumerate(rebuilders.directories):
            directory = given if isinstance(given, Path) else \
                _download(given, sorted(artifacts), Path(tmp) / str(n), found.refused)
            if directory is None:
                continue
            before = len(found.refused)
            _read_directory(found, seen, directory, release_info, sums_digest, artifacts, dsse_payload)
            if isinstance(given, str):  # name what was fetched by its address
                found.refused[before:] = [r.replace(str(directory), given.rstrip("/"))
                                          for r in found.refused[before:]]
    return found


def _download(url: str, artifacts: list[str], dest: Path, refused: list[str]) -> Path | None:
    """A published rebuild directory: the summary of each artifact of this release, fetched
    within SUMMARY_LIMIT bytes each; one that is not there is simply not counted. Nothing
    fetched is trusted before its signature is checked."""
    base = url.rstrip("/")
    for artifact in artifacts:
        target = dest / SUMMARIES / f"{artifact}{SUFFIX}"
        address = f"{base}/{SUMMARIES}/{urllib.parse.quote(artifact)}{SUFFIX}"
        try:
            with urllib.request.urlopen(address, timeout=HTTP_TIMEOUT) as response:
                data = response.read(SUMMARY_LIMIT + 1)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                continue
            refused.append(f"{address}: HTTP {e.code} {e.reason}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as e:
            refused.append(f"{address}: cannot be fetched ({getattr(e, 'reason', e)})")
            return None
        if len(data) > SUMMARY_LIMIT:
            refused.append(f"{address}: larger than {SUMMARY_LIMIT >> 10} KiB; not a summary")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (dest / SUMMARIES).mkdir(parents=True, exist_ok=True)
    return dest


def _read_directory(found: Agreement, seen: dict[tuple[str, str], Path], directory: Path, release_info: str,
                    sums_digest: str, artifacts: dict[str, dict[str, str]], dsse_payload: Any) -> None:
    base = directory / SUMMARIES
    if not base.is_dir():
        found.refused.append(f"{directory}: no {SUMMARIES}/ directory: not a rebuild "
                             "(mlos-repro rebuild)")
        return
    paths = sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink())
    if len(paths) > MAX_SUMMARIES:
        found.refused.append(f"{base}: more than {MAX_SUMMARIES} files")
        return
    for path in paths:
        try:
            _one(found, seen, path, base, release_info, sums_digest, artifacts, dsse_payload)
        except Failed as e:
            found.refused.append(str(e))
        except Malformed as e:
            found.refused.append(str(e))
            found.malformed = True


def _one(found: Agreement, seen: dict[tuple[str, str], Path], path: Path, base: Path, release_info: str,
         sums_digest: str, artifacts: dict[str, dict[str, str]], dsse_payload: Any) -> None:
    rel = path.relative_to(base).as_posix()
    if not rel.endswith(SUFFIX) or rel.count("/") != 1:
        raise Failed(f"{path}: not a summary (vsa/STAGE/OUTPUT{SUFFIX})")
    artifact = rel.removesuffix(SUFFIX)
    signer, statement = None, None
    for keyid, key in found.keys.items():
        try:
            statement = dsse_payload(path, {keyid: key})
        except Failed:
            continue
        signer = keyid
        break
    if signer is None or statement is None:
        raise Failed(f"{path}: not signed by any --rebuilder-key (signed by {_signed_by(path)})")
    if statement.get("predicateType") != vsa.VSA:
        raise Failed(f"{path}: predicateType {statement.get('predicateType')!r}, expected {vsa.VSA}")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise Malformed(f"{path}: no predicate")
    inputs = predicate.get("inputAttestations")
    said = {}
    if isinstance(inputs, list):
        said = {i.get("uri"): (i.get("digest") or {}).get("sha256") for i in inputs if isinstance(i, dict)}
    if said.get(vsa.RELEASE_INFO_URI) != release_info or said.get(vsa.SUMS_URI) != sums_digest:
        raise Failed(f"{path}: a summary of another release (release.json sha256 "
                     f"{str(said.get(vsa.RELEASE_INFO_URI))[:16]}…, this release's {release_info[:16]}…)")
    if artifact not in artifacts:
        raise Failed(f"{path}: {artifact} is no artifact of this release")
    try:
        named = {str(s["name"]): str(s["digest"]["sha256"]) for s in statement["subject"]}
    except (KeyError, TypeError) as e:
        raise Malformed(f"{path}: subject list malformed ({e})") from None
    if named != artifacts[artifact]:
        wrong = sorted(set(named.items()) ^ set(artifacts[artifact].items()))
        raise Failed(f"{path}: a summary of other bytes than SHA256SUMS lists for {artifact}: {wrong[:2]}")
    if (signer, artifact) in seen:
        raise Failed(f"{path}: a second summary of {artifact} by key {signer[:16]}… (the first: "
                     f"{seen[(signer, artifact)]}); one key counts once")
    seen[(signer, artifact)] = path
    result = predicate.get("verificationResult")
    if result == vsa.PASSED:
        found.passed[artifact].add(signer)
    elif result == vsa.FAILED:
        extra = predicate.get("rebuild")
        member = extra.get("member") if isinstance(extra, dict) else None
        found.failed.append(f"{artifact}: rebuilder {signer[:16]}… FAILED"
                            + (f" at {member}" if member else ""))
    else:
        raise Malformed(f"{path}: verificationResult {result!r}, expected PASSED or FAILED")


def _signed_by(path: Path) -> str:
    try:
        data = json.loads(read(path))
        ids = [str(s.get("keyid", "?"))[:16] + "…" for s in data.get("signatures", [])]
    except (Failed, Malformed, ValueError, AttributeError):
        return "nothing readable"
    return ", ".join(ids) or "no key"
