"""What a verdict may rest on: the trust anchors a user names, and the signatures checked with
them over exactly the bytes that are then parsed.

A trust anchor is the archive key (--keyring) or a sigstore trusted root with the
identity and issuer that must have signed (--trusted-root, --identity, --issuer); `verify`
also takes the layout's root key. Nothing read from a release counts before a signature made
by one of them covers it, and each file is read once, within a size limit, never through a
symlink: the bytes checked are the bytes used.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlos_repro import run
from mlos_repro.attest.release_meta import GPG_SUFFIX, METADATA_LIMIT, SIGSTORE_SUFFIX
from mlos_repro.fsutil import NotRegularFile, read_regular

SIGNATURE_LIMIT = 1 << 20


class Malformed(Exception):
    """A metadata file that cannot be read as what it must be (exit 2)."""


class Failed(Exception):
    """A check that does not hold (exit 1)."""


@dataclass(frozen=True)
class Trust:
    keyring: Path | None = None
    sigstore: tuple[Path, str, str] | None = None  # trusted root, identity, issuer

    def anchors(self) -> list[Path]:
        return [p for p in (self.keyring, self.sigstore[0] if self.sigstore else None) if p is not None]

    def describe(self) -> str:
        parts = [f"a key of {self.keyring}"] if self.keyring else []
        if self.sigstore:
            parts.append(f"{self.sigstore[1]} (sigstore, issuer {self.sigstore[2]})")
        return " and ".join(parts)


def read(path: Path, limit: int = METADATA_LIMIT) -> bytes:
    """A release file's bytes: Failed when missing, Malformed when not a regular file in bounds."""
    try:
        return read_regular(path, limit)
    except FileNotFoundError:
        raise Failed(f"{path}: missing") from None
    except NotRegularFile as e:
        raise Malformed(str(e)) from None
    except OSError as e:
        raise Failed(f"{path}: cannot be read ({e.strerror})") from None


def parse_json(data: bytes, where: Path | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise Malformed(f"{where}: not valid JSON ({str(e)[:100]})") from None


def read_json(path: Path) -> Any:
    return parse_json(read(path), path)


@contextlib.contextmanager
def keyring_file(keyring: Path) -> Iterator[Path]:
    """A binary keyring for gpgv from an armored or binary public key file."""
    data = read(keyring, SIGNATURE_LIMIT * 16)
    if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" not in data:
        yield keyring
        return
    with tempfile.TemporaryDirectory(prefix="mlos-keyring-") as tmp:
        ring = Path(tmp) / "keyring.gpg"
        run.run_or_raise(["gpg", "--batch", "--no-options", "--homedir", tmp, "--dearmor", "-o", str(ring)],
                         Malformed, f"{keyring}: not an OpenPGP public key", input=data,
                         stdout=subprocess.DEVNULL)
        yield ring


def gpgv(keyring: Path, signature: Path, data: bytes | None = None) -> bytes:
    """gpgv's verdict on `signature` over `data` (None: a clearsigned file; its text is returned)."""
    sig = read(signature, SIGNATURE_LIMIT)
    with tempfile.TemporaryDirectory(prefix="mlos-gpgv-") as tmp:
        copy = Path(tmp) / "signature"
        copy.write_bytes(sig)
        argv = ["gpgv", "--keyring", str(keyring.absolute())]
        argv += ["--output", "-", str(copy)] if data is None else [str(copy), "-"]
        result = run.run_or_raise(argv, Failed, f"{signature}: bad or unknown signature", tail=1,
                                  input=b"" if data is None else data)
    return bytes(result.stdout)


def authenticate(data: bytes, path: Path, trust: Trust, ring: Path | None) -> list[str]:
    """Raise Failed unless every anchor of `trust` signed `data` (the bytes of `path`): the
    detached OpenPGP signature PATH.gpg with `ring`, the sigstore bundle PATH.sigstore.json."""
    said = []
    if trust.keyring is not None:
        assert ring is not None
        signature = path.with_name(path.name + GPG_SUFFIX)
        if not signature.exists() and not signature.is_symlink():
            raise Failed(f"{signature}: missing: {path.name} is not signed by the archive key")
        gpgv(ring, signature, data)
        said.append(f"signed by a key of {trust.keyring}")
    if trust.sigstore is not None:
        from mlos_repro.sign import sigstore

        bundle = path.with_name(path.name + SIGSTORE_SUFFIX)
        try:
            sigstore.verify(data, read(bundle), *trust.sigstore)
        except sigstore.MalformedError as e:
            raise Malformed(f"{bundle}: {e}") from None
        except ValueError as e:
            raise Failed(f"{bundle}: {e}") from None
        said.append(f"signed by {trust.sigstore[1]} (sigstore)")
    return said


def inside(anchor: Path, release: Path) -> bool:
    return anchor.resolve().is_relative_to(release.resolve())


def anchor_warnings(trust: Trust, release: Path, root_key: Path | None = None) -> list[str]:
    """A trust anchor read from the release it is to judge proves only that the release agrees
    with itself: allowed when named, never silently."""
    return [f"{anchor} is inside the release it verifies: it proves only that the release is "
            "self-consistent; use a key you obtained separately"
            for anchor in [*trust.anchors(), *([root_key] if root_key else [])] if inside(anchor, release)]
