"""The ed25519 keys of a `keys init` directory, as securesystemslib signers and public key dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from mlos_repro.errors import SigningError


def load_signer(directory: Path, name: str) -> CryptoSigner:
    """DIR/attestation/NAME.key of a `keys init` directory: builder (stage attestations, a
    rebuilder's summaries, shared stage entries) or owner (the layout)."""
    path = directory / "attestation" / f"{name}.key"
    try:
        return CryptoSigner(load_pem_private_key(path.read_bytes(), None))
    except FileNotFoundError:
        raise SigningError(f"{path}: missing; the {name} key signs "
                           + ("stage attestations" if name == "builder" else "the layout"),
                           "create a key directory with: mlos-repro keys init DIR") from None
    except (ValueError, TypeError) as e:
        raise SigningError(f"{path}: not an unencrypted PKCS#8 PEM private key ({e})") from None


def public(signer: CryptoSigner) -> dict[str, Any]:
    return {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
