"""Attestations: in-toto links per stage, the layout made from the recipes, and the SLSA
provenance and SBOM statements, as DSSE envelopes (in-toto, securesystemslib).

May import: recipe, store and everything below them.
"""
