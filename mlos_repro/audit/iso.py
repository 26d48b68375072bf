"""`mlos-repro verify-iso FILE.iso`: one verdict for someone who downloaded an ISO.

Finds SHA256SUMS and its signature next to the ISO or above it (a release's artifacts/ tree),
or in --release DIR; checks its signature with the trust anchor the user gives (the release
OpenPGP key, or a sigstore identity); hashes the ISO once, at sha256sum's speed; and requires
its digest to be listed for this very file name.

What the ISO is (name, version, build date, kernel, package count) is said only when signed:
release.json must carry the archive key's signature and name this SHA256SUMS, and the SBOM
must be the one release.json lists. Otherwise the facts are left out and a note says why.
A release older than the newest one verified before on this machine (recorded per release
key and name under $XDG_STATE_HOME/mlos-repro/) or than --min-version is refused: an honest
old release presented as current is a rollback.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.attest import release_meta
from mlos_repro.attest.release_meta import MetaError, ReleaseInfo
from mlos_repro.audit.rebuilders import Rebuilders, agreement
from mlos_repro.audit.release import dsse_payload
from mlos_repro.audit.trust import Failed, Malformed, Trust, authenticate, keyring_file, parse_json, read
from mlos_repro.digest import sha256_bytes, sha256_file
from mlos_repro.errors import BadInputError
from mlos_repro.fsutil import NotRegularFile, atomic_write, open_regular
from mlos_repro.sbom.facts import SBOM_SUFFIX, described, kernel_and_packages
from mlos_repro.sign import secureboot
from mlos_repro.store import artifact_files

SEARCH_UP = 3
SUMS_LIMIT = 16 << 20


@dataclass
class IsoVerdict:
    iso: Path
    sha256: str
    release: Path
    listed_as: str
    signed_by: list[str]
    facts: dict[str, Any] = field(default_factory=dict)  # signed facts only
    notes: list[str] = field(default_factory=list)
    reproduced: dict[str, Any] | None = None  # with --rebuild: how many rebuilders agree


def find_release(iso: Path) -> Path:
    """The nearest folder with a SHA256SUMS (whatever it is, it is judged when read), preferring
    one with release.json: a release's own, over the copy in the ISO's stage directory."""
    found = [parent for parent in list(iso.absolute().parents)[:SEARCH_UP + 1]
             if os.path.lexists(parent / release_meta.SUMS)]
    if found:
        return next((p for p in found if os.path.lexists(p / release_meta.RELEASE_INFO)), found[0])
    raise BadInputError(f"{iso}: no SHA256SUMS next to it or in the {SEARCH_UP} folders above",
                        "download SHA256SUMS and SHA256SUMS.gpg with the ISO, or give --release DIR")


def verify_iso(iso: Path, trust: Trust, release: Path | None = None, *, min_version: str | None = None,
               state: Path | None = None, accept_older: bool = False,
               rebuilders: Rebuilders | None = None) -> IsoVerdict:
    try:
        os.close(_open_iso(iso))
    except FileNotFoundError:
        raise BadInputError(f"{iso}: no such file") from None
    root = release or find_release(iso)
    with keyring_file(trust.keyring) if trust.keyring else contextlib.nullcontext() as ring:
        sums_path = root / release_meta.SUMS
        data = read(sums_path, SUMS_LIMIT)
        said = authenticate(data, sums_path, trust, ring)
        try:
            sums = release_meta.parse_sums(data, str(sums_path))
        except MetaError as e:
            raise Malformed(str(e)) from None
        digest = sha256_file(iso)
        notes: list[str] = []
        info, info_digest, prefix = _release_info(root, data, trust, ring, notes)
        sums = {prefix + name: value for name, value in sums.items()}  # named as the release's SHA256SUMS
        listed = _listed(iso, root, sums, digest, prefix)
        verdict = IsoVerdict(iso, digest, root, listed, said, notes=notes)
    if rebuilders is not None:
        if prefix:
            raise BadInputError(f"--rebuild: {root / release_meta.SUMS} lists one directory of the release; "
                                "rebuilders are counted against the release's own SHA256SUMS",
                                "give --release DIR (the release directory)")
        verdict.reproduced = _reproduced(root, data, sums, listed, info, info_digest, rebuilders)
    if info is not None:
        verdict.facts.update(name=info.name, version=info.version, profile=info.profile,
                             build_date=info.build_date, released=info.released, expires=info.expires)
        own_sums = sums if not prefix else None  # a signed medium is looked up in the release's own
        verdict.facts.update(_sbom_facts(root, listed, digest, info, verdict.notes, own_sums))
    _freshness(info, min_version, state or state_file(), accept_older, verdict.notes)
    return verdict


def _open_iso(iso: Path) -> int:
    try:
        return open_regular(iso, follow=True)
    except NotRegularFile as e:
        raise BadInputError(str(e), "name the downloaded ISO file") from None


def _listed(iso: Path, root: Path, sums: dict[str, str], digest: str, prefix: str) -> str:
    """The ISO's name in SHA256SUMS: as the release lays it out, or by its file name alone."""
    candidates = []
    base = root if prefix else root / release_meta.ARTIFACTS  # a stage directory's copy, or the release's
    if iso.absolute().is_relative_to(base.absolute()):
        candidates.append(prefix + iso.absolute().relative_to(base.absolute()).as_posix())
    candidates += sorted(n for n in sums if Path(n).name == iso.name and n not in candidates)
    if not candidates:
        raise Failed(f"{iso.name}: not listed in {root / release_meta.SUMS}: this SHA256SUMS is for another "
                     "release")
    listed = next((n for n in candidates if sums.get(n) == digest), None)
    if listed is None:
        shown = ", ".join(f"{n} = {sums[n][:16]}…" for n in candidates if n in sums)
        raise Failed(f"{iso}: sha256 {digest} is not what the signed SHA256SUMS lists ({shown}): "
                     "the ISO is damaged, tampered with, or from another release")
    return listed


def _release_info(root: Path, sums: bytes, trust: Trust, ring: Path | None,
                  notes: list[str]) -> tuple[ReleaseInfo | None, str, str]:
    """release.json when it is there and signed, the sha256 of exactly the bytes whose
    signature was checked, and where the SHA256SUMS beside it sits in that release: "" for
    the release's own, "STAGE/" for the copy in artifacts/STAGE/ (its names start there)."""
    path = root / release_meta.RELEASE_INFO
    if not path.exists() and not path.is_symlink():
        notes.append(f"version, build date, kernel and packages not shown: no {path.name} beside SHA256SUMS")
        return None, "", ""
    data = read(path)
    signatures = [path.with_name(path.name + suffix)
                  for suffix in (release_meta.GPG_SUFFIX, release_meta.SIGSTORE_SUFFIX)]
    if not any(s.exists() for s in signatures):
        notes.append(f"version, build date, kernel and packages not shown: {path} is not signed")
        return None, "", ""
    authenticate(data, path, trust, ring)
    try:
        info = ReleaseInfo.parse(data, str(path))
    except MetaError as e:
        raise Malformed(str(e)) from None
    digest = sha256_bytes(sums)
    prefix = "" if info.files.get(release_meta.SUMS) == digest else next(
        (name.split("/")[1] + "/" for name, value in sorted(info.files.items())
         if release_meta.is_stage_sums(name) and name.endswith("/" + release_meta.SUMS) and value == digest),
        None)
    if prefix is None:
        raise Failed(f"{path}: signed for another SHA256SUMS than {root / release_meta.SUMS}: the two files "
                     "come from different releases")
    if info.expired:
        raise Failed(f"{path}: {info.name} {info.version} expired on {info.expires}: its owner no longer "
                     "vouches for it")
    return info, sha256_bytes(data), prefix


def _reproduced(root: Path, sums_bytes: bytes, sums: dict[str, str], listed: str, info: ReleaseInfo | None,
                info_digest: str, rebuilders: Rebuilders) -> dict[str, Any]:
    """k of n for the artifact holding the ISO: Failed, naming what fell short, unless at least
    the threshold of listed rebuilders reproduced exactly these bytes of exactly this release."""
    if info is None:
        raise Failed(f"--rebuild: rebuilders are counted only for a signed release.json beside "
                     f"{root / release_meta.SUMS}, which is missing or unsigned")
    after = frozenset(info.signed_after_build)
    artifacts = {f"{s}/{o}": artifact_files(sums, f"{s}/{o}", after) for s, outputs in info.stages.items()
                 for o in outputs}
    mine = next((a for a in artifacts if listed == a or listed.startswith(a + "/")), None)
    if mine is None:
        raise Failed(f"{listed}: no stage output of the release holds it; no rebuilder can vouch for it")
    found = agreement(rebuilders, info_digest, sha256_bytes(sums_bytes), sums, artifacts, dsse_payload)
    problems = found.refused + [f for f in found.failed if f.startswith(mine + ":")] + \
        found.short_of([mine], rebuilders.threshold)
    if problems:
        raise (Malformed if found.malformed else Failed)("; ".join(problems))
    return {"artifact": mine, "by": len(found.passed[mine]), "listed": len(found.keys),
            "threshold": rebuilders.threshold, "keys": sorted(found.passed[mine])}


def _sbom_facts(root: Path, listed: str, digest: str, info: ReleaseInfo, notes: list[str],
                sums: dict[str, str] | None) -> dict[str, Any]:
    name = f"sbom/{listed}{SBOM_SUFFIX}"
    path = root / name
    if not path.exists() and not path.is_symlink():
        attested = _signed_medium_of(root, listed, info, sums, notes) if sums is not None else None
        if attested is None or sums is None:
            notes.append(f"kernel and packages not shown: no SBOM at {path}")
            return {}
        # The ISO for Secure Boot machines has no SBOM of its own: what it holds is the attested
        # ISO's, whose digest the signed SHA256SUMS gives.
        listed, digest = attested, sums[attested]
        name = f"sbom/{listed}{SBOM_SUFFIX}"
        path = root / name
        if not path.exists() and not path.is_symlink():
            notes.append(f"kernel and packages not shown: no SBOM at {path}")
            return {}
    data = read(path)
    if info.files.get(name) != sha256_bytes(data):
        raise Failed(f"{path}: not the SBOM the signed release.json lists (sha256 {sha256_bytes(data)})")
    sbom = parse_json(data, path)
    if described(sbom) != digest:
        raise Failed(f"{path}: describes sha256 {described(sbom)}, not this ISO ({digest})")
    kernel, packages = kernel_and_packages(sbom)
    return {"kernel": kernel, "packages": packages}


def _signed_medium_of(root: Path, listed: str, info: ReleaseInfo, sums: dict[str, str],
                      notes: list[str]) -> str | None:
    """For STAGE/secureboot/IMAGE, a copy `release` made of the attested STAGE/IMAGE with a signed
    boot loader: STAGE/IMAGE, when the signed SHA256SUMS lists STAGE/secureboot/media.json with
    these bytes, that file names IMAGE, and release.json says both were made after the build."""
    parts = listed.split("/")
    if len(parts) != 3 or parts[1] != secureboot.DIRECTORY:
        return None
    stage, _, image = parts
    media_name = f"{stage}/{secureboot.DIRECTORY}/{secureboot.MEDIA}"
    attested = f"{stage}/{image}"
    after = set(info.signed_after_build)
    if listed not in after or media_name not in after or attested not in sums:
        return None
    path = root / release_meta.ARTIFACTS / media_name
    if not path.exists() and not path.is_symlink():
        notes.append(f"kernel and packages not shown: {listed} is a signed copy of {attested}, and saying so "
                     f"needs {path} (download it with the ISO)")
        return None
    data = read(path)
    if sums.get(media_name) != sha256_bytes(data):
        raise Failed(f"{path}: not the {secureboot.MEDIA} the signed SHA256SUMS lists "
                     f"(sha256 {sha256_bytes(data)})")
    images = secureboot.media_images(parse_json(data, path))
    if images is None:
        raise Failed(f"{path}: expected {secureboot.MEDIA_SHAPE}")
    facts = images.get(image)
    if facts is None:
        raise Failed(f"{path}: does not describe {image}, which SHA256SUMS lists as {listed}")
    notes.append(f"kernel and packages are those of {attested}: this image is that one with "
                 f"{facts.get('efi')} as its boot loader ({media_name}); `mlos-repro verify` of the release "
                 "checks that nothing else differs")
    return attested


# -- freshness ----------------------------------------------------------------------------

def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(base) / "mlos-repro" / "newest-releases.json"


def _older(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether release a = (version, released) is older than b: Debian version order, then time."""
    from debian.debian_support import version_compare

    try:
        order = version_compare(a[0], b[0])
    except ValueError:  # not a Debian version: compare as text
        order = (a[0] > b[0]) - (a[0] < b[0])
    return order < 0 or (order == 0 and a[1] < b[1])


def _freshness(info: ReleaseInfo | None, min_version: str | None, state: Path, accept_older: bool,
               notes: list[str]) -> None:
    if info is None:
        if min_version is not None:
            raise Failed(f"--min-version {min_version}: the version is not signed (no signed release.json "
                         "beside SHA256SUMS), so it cannot be checked")
        return
    if min_version is not None and _older((info.version, "~"), (min_version, "")):
        raise Failed(f"{info.name} {info.version} is older than --min-version {min_version}")
    key = f"{info.release_key}/{info.name}"
    try:
        seen = json.loads(state.read_text())
        if not isinstance(seen, dict):
            seen = {}
    except FileNotFoundError:
        seen = {}
    except (OSError, ValueError) as e:
        notes.append(f"{state}: unreadable ({e}); no record of newer releases was consulted")
        seen = {}
    newest = seen.get(key)
    mine = (info.version, info.released)
    theirs = (newest.get("version"), newest.get("released")) if isinstance(newest, dict) else (None, None)
    if isinstance(theirs[0], str) and isinstance(theirs[1], str) and _older(mine, (theirs[0], theirs[1])):
        if not accept_older:
            raise Failed(f"{info.name} {info.version} (released {info.released}) is older than "
                         f"{theirs[0]} (released {theirs[1]}), verified before on this machine "
                         f"({state}): a rollback. Pass --accept-older if you mean to use an older release")
        notes.append(f"older than {theirs[0]} (released {theirs[1]}), accepted with --accept-older")
        return
    seen[key] = {"version": info.version, "released": info.released}
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(state, json.dumps(seen, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        notes.append(f"{state}: cannot record this release as the newest seen ({e.strerror})")
