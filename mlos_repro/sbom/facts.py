"""What an SBOM says, read without the CycloneDX library: the file suffix, the digest of the
artifact it describes, and its kernel and package count. Light on purpose: `verify-iso`
imports only this."""

from __future__ import annotations

from typing import Any

SBOM_SUFFIX = ".cdx.json"


def described(data: Any) -> str | None:
    """The sha256 of the artifact an SBOM describes (its metadata component's hash)."""
    try:
        hashes = data["metadata"]["component"].get("hashes") or []
    except (KeyError, TypeError, AttributeError):
        return None
    if not isinstance(hashes, list):
        return None
    return next((str(h.get("content")) for h in hashes if isinstance(h, dict) and h.get("alg") == "SHA-256"),
                None)


def kernel_and_packages(data: Any) -> tuple[str | None, int]:
    """(the version of the `linux` operating-system component, the number of library components)."""
    components = data.get("components") if isinstance(data, dict) else None
    if not isinstance(components, list):
        return None, 0
    components = [c for c in components if isinstance(c, dict)]
    kernel = next((str(c.get("version")) for c in components
                   if c.get("name") == "linux" and c.get("type") == "operating-system"), None)
    return kernel, sum(1 for c in components if c.get("type") == "library")
