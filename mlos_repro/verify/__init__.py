"""Verification: varied rebuilds (variations.py, rebuild.py) and layered diffs (layers.py, report.py)."""
