"""The archive signer picks exactly one usable key, or says which it could not use."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlos_repro.errors import SigningError
from mlos_repro.sign.gpg import GpgSigner
from tests.conftest import gpg


def test_a_home_with_two_keys_needs_one_named(gnupg_key: Callable[[str], Path], tmp_path: Path) -> None:
    home = gnupg_key("First archive <first@mlos.example>")
    gpg(home, "--quick-gen-key", "Second archive <second@mlos.example>", "ed25519", "sign", "1d")
    with pytest.raises(SigningError) as info:
        GpgSigner(home)
    assert "holds 2 secret signing keys" in str(info.value) and "--archive-key" in str(info.value.hint)
    signer = GpgSigner(home, "second@mlos.example")
    assert signer.uid == "Second archive <second@mlos.example>"
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(signer.export())
    signed = tmp_path / "InRelease"
    signed.write_bytes(signer.clearsign(b"Suite: mlos\n"))
    status = subprocess.run(["gpgv", "--keyring", str(keyring), str(signed)], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    signed.write_bytes(signed.read_bytes().replace(b"Suite: mlos", b"Suite: evil"))
    assert subprocess.run(["gpgv", "--keyring", str(keyring), str(signed)], capture_output=True).returncode != 0


def test_an_expired_key_is_not_usable(gnupg_key: Callable[[str], Path]) -> None:
    home = gnupg_key("Old archive <old@mlos.example>")
    fpr = next(line.split(":")[9] for line in gpg(home, "--with-colons", "--list-secret-keys").decode().splitlines()
               if line.startswith("fpr:"))
    gpg(home, "--quick-set-expire", fpr, "seconds=1")
    time.sleep(2)
    with pytest.raises(SigningError, match=r"no usable secret signing key \(any\)"):
        GpgSigner(home)


def test_a_missing_home_is_named(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match=f"GnuPG home {tmp_path / 'nope'} does not exist"):
        GpgSigner(tmp_path / "nope")
