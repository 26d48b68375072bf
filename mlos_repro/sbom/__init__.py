"""Software bills of materials: an output's contents catalogued from its bytes (`catalogue`),
the CycloneDX 1.6 document (`document`), its validation (`validate`), the project's policy
(`policy`, from the repository's sbom/ directory), one cached SBOM per stage output
(`cache`), and the summary and comparison of SBOMs (`summary`).

May import: inspect, store and everything below them; never the executor or anything that
signs, builds or audits.
"""
