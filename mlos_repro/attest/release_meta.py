"""The signed metadata of a release directory, written by `release` and read by `verify` and
`verify-iso` with one meaning:

    SHA256SUMS        every file under artifacts/ ("SHA256  NAME", strict: see parse_sums)
    artifacts/STAGE/SHA256SUMS (+ .gpg)
                      the same lines for STAGE's files, named from that directory, so that plain
                      `sha256sum -c --ignore-missing SHA256SUMS` works beside a file downloaded
                      from it (stage_sums); metadata, listed in release.json's files
    release.json      what the release is, signed by the archive key (release.json.gpg) and,
                      when released with --sigstore, keylessly (release.json.sigstore.json):
                      name, version, build date, when it was released and when it expires,
                      the archive key, each stage's outputs, the files signed after the build,
                      and `files`: the sha256 of every other file of the release outside
                      artifacts/ (SHA256SUMS and its signatures, the layout, links, statements,
                      SBOMs, inputs.lock). So nothing in a release is unsigned: an artifact
                      through SHA256SUMS, everything else through release.json.

Not in `files` (they cannot sign themselves or are checked on their own): release.json and
its signatures, sigstore bundles (each verified against the trusted root the user gives) and
the trusted root a keyless release carries.

A symlink inside a tree output is a file whose content is its target (as in-toto links and
SHA256SUMS record it); anything else that is not a regular file or a directory has no
place in a release.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlos_repro.digest import is_sha256, sha256_bytes, sha256_file
from mlos_repro.fsutil import file_kind

RELEASE_INFO = "release.json"
SUMS = "SHA256SUMS"
GPG_SUFFIX = ".gpg"
SIGSTORE_SUFFIX = ".sigstore.json"
TRUSTED_ROOT = "trusted_root.json"
ARTIFACTS = "artifacts"
INPUTS = "inputs/sha256"  # release --with-inputs: every pinned input, named by its sha256
METADATA_LIMIT = 64 << 20  # no metadata file of a release comes near this
FORMAT = 3  # release.json's format: 2 adds files, released, expires and its signatures; 3 the
#            per-directory SHA256SUMS

_NAME_CHARS = re.compile(r"^[^\x00-\x1f\x7f\\]+$")
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")
_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class MetaError(ValueError):
    """Release metadata that is not what it must be; `malformed` when it cannot be read as such."""

    def __init__(self, message: str, *, malformed: bool = True) -> None:
        super().__init__(message)
        self.malformed = malformed


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_name(name: str) -> str | None:
    """Why `name` cannot be a relative path in a release, or None when it can."""
    if not name or not _NAME_CHARS.fullmatch(name):
        return "empty, or holds a control character or backslash"
    if name != name.strip():
        return "begins or ends with whitespace"
    if name.startswith("/"):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' component"
    return None


def sums_text(sums: dict[str, str]) -> bytes:
    for name in sums:
        why = safe_name(name)
        if why is not None:
            raise MetaError(f"artifacts/{name!r}: cannot be listed in {SUMS}: {why}")
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()


def parse_sums(data: bytes, where: str) -> dict[str, str]:
    """{name: sha256} from SHA256SUMS bytes, refusing what sha256sum -c would read otherwise:
    a name listed twice, absolute or '..' paths, control characters, odd whitespace."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise MetaError(f"{where}: not UTF-8 text") from None
    if text and not text.endswith("\n"):
        raise MetaError(f"{where}: the last line has no newline (truncated?)")
    sums: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n")[:-1], 1):
        m = _SUM_LINE.fullmatch(line)
        if not m:
            raise MetaError(f"{where}:{number}: expected 'SHA256  NAME' (sha256sum format), "
                            f"got {line[:60]!r}")
        digest, name = m.groups()
        why = safe_name(name)
        if why is not None:
            raise MetaError(f"{where}:{number}: the name {name[:60]!r} is {why}")
        if name in sums:
            raise MetaError(f"{where}:{number}: {name} is listed twice (first on line {first_line[name]})")
        sums[name], first_line[name] = digest, number
    return sums


def stage_sums(sums: dict[str, str]) -> dict[str, bytes]:
    """Each artifacts/STAGE/SHA256SUMS: the lines of SHA256SUMS for STAGE's files, named from
    STAGE/ (written by `release`, required byte for byte by `verify`)."""
    grouped: dict[str, dict[str, str]] = {}
    for name, digest in sums.items():
        stage, _, rest = name.partition("/")
        grouped.setdefault(stage, {})[rest] = digest
    return {stage: sums_text(files) for stage, files in sorted(grouped.items())}


def is_stage_sums(rel: str) -> bool:
    """Whether `rel` (relative to the release) is an artifacts/STAGE/SHA256SUMS or its signature."""
    parts = rel.split("/")
    return len(parts) == 3 and parts[0] == ARTIFACTS and parts[2] in (SUMS, SUMS + GPG_SUFFIX)


def entry_digest(path: Path) -> str:
    """A file's sha256, or a symlink's: the sha256 of its target text (never followed)."""
    if path.is_symlink():
        return sha256_bytes(os.readlink(path).encode())
    return sha256_file(path, follow=False)


@dataclass
class Walk:
    """Every entry of a release: regular files and symlinks by relative path, and what has no
    place in one (FIFOs, devices, sockets, symlinks outside artifacts/, oversized metadata)."""

    artifacts: list[str]
    metadata: list[str]
    refused: list[str]
    inputs: list[str] = field(default_factory=list)  # sha256 of each file under inputs/sha256/


def walk(root: Path) -> Walk:
    found = Walk([], [], [])
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(top) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            in_artifacts = rel.startswith(ARTIFACTS + "/")
            if stat.S_ISDIR(mode):
                continue
            if stat.S_ISLNK(mode) and name in dirs:
                dirs.remove(name)  # os.walk does not descend into it; it is judged here
            if rel.startswith("inputs/"):
                # Named by their sha256 (checked by verify), as large as a kernel's source.
                digest = rel.removeprefix(INPUTS + "/")
                if stat.S_ISREG(mode) and is_sha256(digest):
                    found.inputs.append(digest)
                else:
                    found.refused.append(f"{rel}: not a regular file {INPUTS}/SHA256")
            elif stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and in_artifacts):
                if in_artifacts and not (stat.S_ISREG(mode) and is_stage_sums(rel)):
                    found.artifacts.append(rel.removeprefix(ARTIFACTS + "/"))
                elif path.lstat().st_size > METADATA_LIMIT:
                    found.refused.append(f"{rel}: larger than {METADATA_LIMIT >> 20} MiB")
                else:
                    found.metadata.append(rel)
            else:
                found.refused.append(f"{rel}: a {file_kind(mode)}, which has no place in a release")
    found.artifacts.sort()
    found.metadata.sort()
    found.inputs.sort()
    return found


def signed_elsewhere(rel: str) -> bool:
    """Metadata not listed in release.json's files: release.json itself, its signatures, the
    sigstore bundles and the trusted root of a keyless release."""
    return rel in (RELEASE_INFO, RELEASE_INFO + GPG_SUFFIX, TRUSTED_ROOT) or rel.endswith(SIGSTORE_SUFFIX)


def inventory(root: Path, names: list[str]) -> dict[str, str]:
    return {rel: sha256_file(root / rel, follow=False) for rel in names if not signed_elsewhere(rel)}


@dataclass(frozen=True)
class ReleaseInfo:
    """release.json, its fields checked for type: a wrong type is a malformed file."""

    raw: dict[str, Any]
    name: str
    version: str
    profile: str
    build_date: str
    released: str
    expires: str
    release_key: str
    stages: dict[str, dict[str, str]]  # stage -> output -> "sha256:…"
    signed_after_build: tuple[str, ...]
    files: dict[str, str]

    @staticmethod
    def parse(data: bytes, where: str) -> ReleaseInfo:
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise MetaError(f"{where}: not valid JSON ({str(e)[:80]})") from None
        if not isinstance(raw, dict):
            raise MetaError(f"{where}: not a JSON object")
        if raw.get("format") != FORMAT:
            raise MetaError(f"{where}: format {raw.get('format')!r}, expected {FORMAT} (made by another "
                            "version of mlos-repro: release it again, or verify it with that version)")

        def text(key: str, pattern: re.Pattern[str] | None = None) -> str:
            value = raw.get(key)
            if not isinstance(value, str) or not value or (
                    pattern is not None and not pattern.fullmatch(value)):
                raise MetaError(f"{where}: {key}: expected " + ("a UTC time YYYY-MM-DDTHH:MM:SSZ" if pattern
                                                                 else "a non-empty string")
                                + f", got {str(value)[:60]!r}")
            return value

        stages: dict[str, dict[str, str]] = {}
        given = raw.get("stages")
        if not isinstance(given, dict):
            raise MetaError(f"{where}: stages: expected an object")
        for stage, body in given.items():
            outputs = body.get("outputs") if isinstance(body, dict) else None
            if not isinstance(outputs, dict) or not all(
                    isinstance(v, str) and v.startswith("sha256:") and is_sha256(v[7:])
                    for v in outputs.values()):
                raise MetaError(f"{where}: stages.{stage}.outputs: expected {{OUTPUT: 'sha256:…'}}")
            stages[stage] = dict(outputs)
        after = raw.get("signed_after_build")
        if not isinstance(after, list) or not all(isinstance(a, str) and safe_name(a) is None for a in after):
            raise MetaError(f"{where}: signed_after_build: expected a list of artifact paths")
        files = raw.get("files")
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and safe_name(k) is None and isinstance(v, str) and is_sha256(v)
                for k, v in files.items()):
            raise MetaError(f"{where}: files: expected {{PATH: SHA256}} of the release's metadata files")
        key = text("release_key")
        if not re.fullmatch(r"[0-9A-F]{40}", key):
            raise MetaError(f"{where}: release_key: expected an OpenPGP fingerprint (40 hex digits)")
        return ReleaseInfo(raw, text("name"), text("version"), text("profile"), text("build_date", _UTC),
                           text("released", _UTC), text("expires", _UTC), key, stages, tuple(after), files)

    @property
    def expired(self) -> bool:
        return self.expires < utc_now()
