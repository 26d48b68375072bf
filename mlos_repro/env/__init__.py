"""Builder environments: lockfile (lock.py), downloads (fetch.py), root filesystems (assemble.py)."""
