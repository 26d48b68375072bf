"""Varied rebuilds: the variations (reprotest's, each a pure function over a BuildVariant),
the second build of every stage under them, and a bit-for-bit verdict per output.

May import: executor, inspect, sbom, sandbox and everything below them; never audit,
release, attest or sign.
"""
