"""Reading what artifacts are made of: container readers, member manifests, layered comparison.

Streaming readers per format, recognised by magic bytes (`detect.reader_for`); member
manifests (the layered listing recorded for every stage output at build time); the layered
comparison of two files, directories or manifests; and diff reports (our summary plus
diffoscope on the differing members). Used at build time by the executor and the SBOM
catalogue, and afterwards by `build --verify`, `diff` and the auditors.

May import: mlos_repro.run, digest, errors. Nothing that builds, signs or audits.
"""
