"""Checking what was published: `verify` (a release's whole supply chain, in numbered checks)
and `verify-iso` (one verdict for a downloaded ISO). Offline; trust material is local files.

May import: attest, sign, sbom, inspect and everything below them; never the executor,
rebuild or release (an auditor does not build).
"""
