"""`mlos-repro verify-iso FILE.iso`: one verdict for someone who downloaded an ISO.

Finds SHA256SUMS and its signature next to the ISO or above it (a release's artifacts/ tree),
or in --release DIR; checks the signature with the release public key the user trusts; hashes
the ISO once, at sha256sum's speed; and requires its digest to be listed for this very file
name. It then says what the ISO is: version and build date (release.json), the kernel and
the number of packages (its SBOM, which must name the same digest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.audit.release import Failed, Malformed, gpgv, keyring_file, parse_sums
from mlos_repro.digest import sha256_file
from mlos_repro.errors import BadInputError
from mlos_repro.sbom import validate
from mlos_repro.sbom.cache import SBOM_SUFFIX

SEARCH_UP = 3


@dataclass
class IsoVerdict:
    iso: Path
    sha256: str
    release: Path
    listed_as: str
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_release(iso: Path) -> Path:
    for parent in list(iso.absolute().parents)[:SEARCH_UP + 1]:
        if (parent / "SHA256SUMS").is_file():
            return parent
    raise BadInputError(f"{iso}: no SHA256SUMS next to it or in the {SEARCH_UP} folders above",
                        "download SHA256SUMS and SHA256SUMS.gpg with the ISO, or give --release DIR")


SigstoreTrust = tuple[Path, str, str | None]  # trusted root, identity, issuer


def verify_iso(iso: Path, keyring: Path | None, release: Path | None = None,
               sigstore: SigstoreTrust | None = None) -> IsoVerdict:
    if not iso.is_file():
        raise BadInputError(f"{iso}: no such file")
    root = release or find_release(iso)
    sums_path, signature = root / "SHA256SUMS", root / "SHA256SUMS.gpg"
    if keyring is not None:
        if not signature.exists():
            raise Failed(f"{signature}: missing: SHA256SUMS is not signed, so it proves nothing")
        with keyring_file(keyring) as ring:
            gpgv(ring, signature, sums_path)
    if sigstore is not None:
        from mlos_repro.sign import sigstore as keyless

        try:
            keyless.verify(sums_path.read_bytes(), root / f"SHA256SUMS{keyless.BUNDLE_SUFFIX}", *sigstore)
        except keyless.MalformedError as e:
            raise Malformed(str(e)) from None
        except ValueError as e:
            raise Failed(str(e)) from None
    sums = parse_sums(sums_path)
    digest = sha256_file(iso)
    # The ISO as the release lays it out, or by its file name when it was downloaded alone.
    candidates = []
    artifacts = root / "artifacts"
    if iso.absolute().is_relative_to(artifacts.absolute()):
        candidates.append(iso.absolute().relative_to(artifacts.absolute()).as_posix())
    candidates += sorted(n for n in sums if Path(n).name == iso.name and n not in candidates)
    if not candidates:
        raise Failed(f"{iso.name}: not listed in {sums_path}: this SHA256SUMS is for another release")
    listed = next((n for n in candidates if sums.get(n) == digest), None)
    if listed is None:
        shown = ", ".join(f"{n} = {sums[n][:16]}…" for n in candidates if n in sums)
        raise Failed(f"{iso}: sha256 {digest} is not what the signed SHA256SUMS lists ({shown}): "
                     "the ISO is damaged, tampered with, or from another release")
    verdict = IsoVerdict(iso, digest, root, listed)
    verdict.facts.update(_facts(root, listed, digest, verdict.notes))
    return verdict


def _facts(root: Path, listed: str, digest: str, notes: list[str]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    try:
        info = json.loads((root / "release.json").read_text())
        facts.update({k: info.get(k) for k in ("name", "version", "profile", "build_date")})
    except FileNotFoundError:
        notes.append("no release.json beside SHA256SUMS")
    except ValueError as e:
        raise Malformed(f"{root / 'release.json'}: not valid JSON ({e})") from None
    sbom_path = root / "sbom" / f"{listed}{SBOM_SUFFIX}"
    try:
        sbom = json.loads(sbom_path.read_text())
    except FileNotFoundError:
        notes.append(f"no SBOM at {sbom_path}")
        return facts
    except ValueError as e:
        raise Malformed(f"{sbom_path}: not valid JSON ({e})") from None
    described = validate.described(sbom)
    if described != digest:
        raise Failed(f"{sbom_path}: describes sha256 {described}, not this ISO ({digest})")
    components = sbom.get("components") or []
    facts["kernel"] = next((c.get("version") for c in components if c.get("name") == "linux"
                            and c.get("type") == "operating-system"), None)
    facts["packages"] = sum(1 for c in components if c.get("type") == "library")
    provenance = root / "attestations/provenance" / f"{listed}.intoto.json"
    facts["provenance"] = provenance.exists()
    if not provenance.exists():
        notes.append(f"no provenance at {provenance}")
    return facts
