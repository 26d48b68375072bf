"""Keyless signing with sigstore-python, and offline verification of its bundles.

Signing needs an OIDC identity token (given, or ambient CI credentials) and a sigstore
instance: the public one, or a private one described by a client trust config
(`--trust-config`: trusted root + signing config, sigstore's own JSON format). A bundle goes
next to what it signs (`FILE.sigstore.json`) and the trusted root used goes into the release,
so verification needs no network: only that trusted root and the identity one expects.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Mapping
from pathlib import Path

from mlos_repro.errors import BadInputError, SigningError

BUNDLE_SUFFIX = ".sigstore.json"


class MalformedError(ValueError):
    """A trusted root or bundle that cannot be read as one."""


def trust_config(path: Path | None) -> object:
    from sigstore.models import ClientTrustConfig

    if path is None:
        try:
            return ClientTrustConfig.production()
        except Exception as e:
            raise SigningError(f"the public sigstore instance's trust configuration cannot be fetched ({e})",
                               "give --trust-config FILE for a private instance, or sign where "
                               "tuf-repo-cdn.sigstore.dev is reachable") from None
    try:
        return ClientTrustConfig.from_json(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except Exception as e:
        raise BadInputError(f"{path}: not a sigstore client trust config ({e})") from None


def identity_token(given: str | None) -> object:
    from sigstore.oidc import IdentityError, IdentityToken, detect_credential

    raw = given
    if raw is None:
        try:
            raw = detect_credential()
        except Exception as e:
            raise SigningError(f"ambient OIDC credentials could not be read ({e})") from None
    if raw is None:
        raise SigningError("--sigstore needs an OIDC identity token and none was found",
                           "give --identity-token TOKEN, or run where CI provides ambient credentials")
    try:
        return IdentityToken(raw)
    except IdentityError as e:
        raise SigningError(f"the identity token is not usable: {e}") from None


def sign(files: Mapping[str, bytes], token: str | None,
         config_path: Path | None) -> tuple[dict[str, bytes], bytes]:
    """({name: bundle JSON}, the trusted root JSON used) for each of `files`."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.sign import SigningContext

    config = trust_config(config_path)
    identity = identity_token(token)
    try:
        context = SigningContext.from_trust_config(config)  # type: ignore[arg-type]
        bundles = {}
        with context.signer(identity) as signer:  # type: ignore[arg-type]
            for name, data in sorted(files.items()):
                bundles[name] = signer.sign_artifact(data).to_json().encode() + b"\n"
        root = config.trusted_root  # type: ignore[attr-defined]
    except SigstoreError as e:
        raise SigningError(f"sigstore signing failed: {e}") from None
    except OSError as e:
        raise SigningError(f"sigstore signing failed: a sigstore service is out of reach ({e})") from None
    return bundles, root._inner.to_json().encode() + b"\n"


def verify(data: bytes, bundle: bytes, trusted_root: Path, identity: str, issuer: str) -> None:
    """Raise ValueError saying what is wrong unless `bundle` signs `data` as `identity` of `issuer`
    (MalformedError when the trusted root or the bundle cannot be read as one)."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    try:
        root = TrustedRoot.from_file(str(trusted_root))
    except Exception as e:
        raise MalformedError(f"{trusted_root}: not a sigstore trusted root ({e})") from None
    try:
        parsed = Bundle.from_json(bundle)
    except Exception as e:
        raise MalformedError(f"not a sigstore bundle ({e})") from None
    try:
        Verifier(trusted_root=root).verify_artifact(data, parsed, Identity(identity=identity, issuer=issuer))
    except SigstoreError as e:
        raise ValueError(str(e)) from None
    _within_validity(bundle, trusted_root)


def _within_validity(bundle: bytes, trusted_root: Path) -> None:
    """The log and the certificate authority that vouched were valid, per the trusted root, when
    the entry was logged. (sigstore-python lets expired windows verify; a stale or rotated
    trusted root must not vouch for what its keys signed after their time.)"""
    from cryptography import x509

    try:
        doc, root = json.loads(bundle), json.loads(trusted_root.read_bytes())
        entries = doc["verificationMaterial"]["tlogEntries"]
        when = min(int(e["integratedTime"]) for e in entries)
        log_ids = {e["logId"]["keyId"] for e in entries}
        material = doc["verificationMaterial"]
        raw = (material.get("certificate") or material["x509CertificateChain"]["certificates"][0])["rawBytes"]
        issuer = x509.load_der_x509_certificate(base64.b64decode(raw)).issuer
        logs = [t.get("publicKey", {}).get("validFor") for t in root.get("tlogs", [])
                if t.get("logId", {}).get("keyId") in log_ids]
        cas = [c.get("validFor") for c in root.get("certificateAuthorities", [])
               if any(x509.load_der_x509_certificate(base64.b64decode(cert["rawBytes"])).subject == issuer
                      for cert in c.get("certChain", {}).get("certificates", [])[:1])]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MalformedError(f"the bundle or {trusted_root} cannot be read for validity windows "
                             f"({e})") from None
    at = datetime.datetime.fromtimestamp(when, datetime.UTC)
    for what, windows in (("transparency log key", logs), ("certificate authority", cas)):
        if not any(_covers(w, at) for w in windows):
            raise ValueError(f"the {what} that vouched was not valid at {at:%Y-%m-%dT%H:%M:%SZ} according to "
                             f"{trusted_root}: a stale or rotated trusted root")


def _covers(window: object, at: datetime.datetime) -> bool:
    if not isinstance(window, dict) or not isinstance(window.get("start"), str):
        return False
    try:
        start = datetime.datetime.fromisoformat(window["start"])
        end = datetime.datetime.fromisoformat(window["end"]) if isinstance(window.get("end"), str) else None
        return start <= at and (end is None or at <= end)
    except (ValueError, TypeError):
        return False
