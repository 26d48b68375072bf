"""`mlos-repro lock` against the real Debian mirror, then an offline assembly from the lock."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from debian.deb822 import Packages

from mlos_repro.env.lockfile import read_lock
from tests.conftest import mlos

BUILDER = """
source_date_epoch = 1764547200

[environment.default]
suite = "bookworm"
architecture = "amd64"
mirror = "http://deb.debian.org/debian"
variant = "minbase"
packages = ["hostname"]

[environment.tiny]
suite = "bookworm"
architecture = "amd64"
mirror = "http://deb.debian.org/debian"
variant = "essential"
"""


def test_lock_pins_every_package_and_assembles_offline(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "builder.toml").write_text(BUILDER)
    store = tmp_path / "store"
    result = mlos("lock", "tiny", "--recipes", recipes, "--store", store)
    assert result.code == 0, result.stderr
    locked = read_lock(recipes / "builder.lock")
    assert set(locked) == {"tiny"}  # only what was asked for
    packages = {p.name: p for p in locked["tiny"].packages}
    assert {"dpkg", "base-files", "coreutils", "libc6"} <= set(packages)
    assert "apt" not in packages  # the essential variant has no apt
    for pkg in packages.values():
        stanza = Packages(pkg.stanza)
        assert stanza["Package"] == pkg.name and stanza["Version"] == pkg.version
        assert stanza["SHA256"] == pkg.sha256 and stanza["Filename"] == pkg.filename
        blob = store / "blobs" / "sha256" / pkg.sha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == pkg.sha256

    # Offline from here: the store has every .deb, so assembly needs no mirror.
    first = mlos("env", "tiny", "--recipes", recipes, "--store", store, "--json")
    assert first.code == 0, first.stderr
    root = Path(json.loads(first.stdout)["root"])
    assert (root / "usr" / "bin" / "dpkg").exists()
    assert (root / "etc" / "hostname").read_text() == "mlos-build\n"
    again = mlos("env", "tiny", "--rebuild", "--recipes", recipes, "--store", store, "--json")
    assert json.loads(again.stdout)["digest"] == json.loads(first.stdout)["digest"]


def test_lock_of_an_unknown_package_names_it(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "builder.toml").write_text(BUILDER.replace('["hostname"]', '["no-such-package-mlos"]'))
    result = mlos("lock", "default", "--recipes", recipes, "--store", tmp_path / "store")
    assert result.code == 2
    assert "default" in result.stderr and "no-such-package-mlos" in result.stderr
    assert not (recipes / "builder.lock").exists()

