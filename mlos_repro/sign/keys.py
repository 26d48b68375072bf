"""`mlos-repro keys init DIR`: the keys of a new MLOS deployment, in a directory of its own.

    DIR/gnupg/                    GnuPG home with the archive key (ed25519, signs APT
                                  repositories and SHA256SUMS): build --gnupghome DIR/gnupg
    DIR/archive-keyring.gpg       its public key, for apt's signed-by
    DIR/attestation/NAME.key      ed25519 private keys (PKCS#8 PEM) for in-toto: `builder`
    DIR/attestation/NAME.pub.json signs stage attestations, `owner` signs the layout; the
                                  public halves as securesystemslib key dicts with keyid
    DIR/secureboot/db.key, db.crt, db.cer
                                  the Secure Boot db key (RSA 2048) and its self-signed
                                  certificate, PEM and DER: `release` signs the EFI images
                                  with it (sign/secureboot.py), firmware enrols db.cer
    DIR/keys.json                 what is where, with fingerprints and key ids

Private keys are never written inside a source checkout (a directory with .git above it)
and never overwrite existing keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from mlos_repro.errors import BadInputError
from mlos_repro.sign import secureboot
from mlos_repro.sign.gpg import GpgSigner, generate_key

ATTESTATION_KEYS = ("builder", "owner")
DEFAULT_UID = "MLOS Linux archive key <archive@mlos.example>"


def _checkout_above(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def init_keys(directory: Path, uid: str = DEFAULT_UID) -> dict[str, Any]:
    directory = directory.absolute()
    checkout = _checkout_above(directory)
    if checkout is not None:
        raise BadInputError(f"{directory} is inside the source checkout {checkout}; private keys "
                            "must never be committed", "choose a directory outside any repository, "
                            "e.g. ~/.config/mlos-repro/keys")
    if directory.exists() and any(directory.iterdir()):
        raise BadInputError(f"{directory} is not empty; keys init never overwrites keys",
                            "name a new or empty directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    generate_key(directory / "gnupg", uid)
    archive = GpgSigner(directory / "gnupg")
    (directory / "archive-keyring.gpg").write_bytes(archive.export())
    summary: dict[str, Any] = {
        "archive": {"gnupghome": "gnupg", "fingerprint": archive.fingerprint, "uid": archive.uid,
                    "keyring": "archive-keyring.gpg"},
        "attestation": {},
    }
    (directory / "attestation").mkdir(mode=0o700)
    for name in ATTESTATION_KEYS:
        signer = CryptoSigner.generate_ed25519()
        private = directory / "attestation" / f"{name}.key"
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
        public = {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
        (directory / "attestation" / f"{name}.pub.json").write_text(
            json.dumps(public, indent=2, sort_keys=True) + "\n")
        summary["attestation"][name] = {"keyid": signer.public_key.keyid,
                                        "private": f"attestation/{name}.key",
                                        "public": f"attestation/{name}.pub.json"}
    db = secureboot.generate(directory / secureboot.DIRECTORY, secureboot.DEFAULT_NAME)
    facts = db.facts()
    summary["secureboot"] = {"subject": facts["subject"], "certificate_sha256": facts["certificate_sha256"],
                             "private": f"{secureboot.DIRECTORY}/{secureboot.KEY}",
                             "certificate": f"{secureboot.DIRECTORY}/{secureboot.CERT}",
                             "certificate_der": f"{secureboot.DIRECTORY}/{secureboot.DER}"}
    (directory / "keys.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
