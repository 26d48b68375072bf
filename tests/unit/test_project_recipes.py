"""The project's own recipes load in every profile, and their lock is current."""

from __future__ import annotations

import tomllib

import pytest

from mlos_repro.env.lockfile import locked_environment
from mlos_repro.errors import BadInputError
from mlos_repro.recipe import InputKind, load_recipes
from tests.conftest import PROJECT, mlos

# Environments locked where their archive is reachable (see recipes/builder.toml).
UNLOCKED_HERE = {"ubuntu-target", "target-release"}
IMAGE_STAGES = {"rootfs", "initramfs", "uki", "iso", "disk", "pxe"}


def test_project_recipes_load_and_lock_is_current() -> None:
    recipes = load_recipes(PROJECT / "recipes")
    assert {"toolchain", "kernel", "packages", "repository"} | IMAGE_STAGES <= set(recipes.stages)
    # mmdebstrap installs as root: the root filesystem and the OCI images' bases.
    assert {n for n, s in recipes.stages.items() if s.privileged} == {"rootfs", "oci"}
    for name in set(recipes.builder.environments) - UNLOCKED_HERE:
        env, locked = locked_environment(recipes.builder, name)  # raises when stale
        assert locked.packages and env.name == name


def test_the_ubuntu_variant_is_a_profile_of_the_same_recipes() -> None:
    debian = load_recipes(PROJECT / "recipes")
    ubuntu = load_recipes(PROJECT / "recipes", profile="ubuntu")
    assert set(ubuntu.stages) == set(debian.stages)
    env = ubuntu.builder.environments["ubuntu-target"]
    assert (env.suite, env.mirror) == ("noble", "http://archive.ubuntu.com/ubuntu")
    assert env.keyring == "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
    rootfs = ubuntu.stages["rootfs"]
    (mirror,) = [i for i in rootfs.inputs if i.name == "debian"]
    assert (mirror.kind, mirror.target) == (InputKind.ENV, "ubuntu-target")
    assert dict(rootfs.env)["MLOS_SUITE"] == "noble"
    assert dict(debian.stages["rootfs"].env)["MLOS_SUITE"] == "bookworm"
    # Everything but the root filesystem is the Debian build's, and the system extensions are
    # for any host: an Ubuntu host is not Flatcar.
    for name in set(debian.stages) - {"rootfs", "sysext"}:
        assert ubuntu.stages[name].normalized() == debian.stages[name].normalized(), name
    assert dict(ubuntu.stages["sysext"].env)["MLOS_SYSEXT_ID"] == "_any"
    assert dict(debian.stages["sysext"].env)["MLOS_SYSEXT_ID"] == "flatcar"
    if "ubuntu-target" in UNLOCKED_HERE:
        with pytest.raises(BadInputError, match="'ubuntu-target' is not locked"):
            locked_environment(ubuntu.builder, "ubuntu-target")


def test_building_the_unlocked_ubuntu_variant_says_how_to_lock_it(tmp_path: object) -> None:
    result = mlos("build", "--profile", "ubuntu", "--recipes", PROJECT / "recipes", "--out",
                  f"{tmp_path}/out", "--store", f"{tmp_path}/store")
    assert result.code == 2
    assert "environment 'ubuntu-target' is not locked" in result.stderr
    assert "mlos-repro lock ubuntu-target" in result.stderr


def test_the_release_root_filesystem_has_the_full_toolchain_environment() -> None:
    # (The release profile loads once its upstream archives are pinned; read the recipe itself.)
    image = tomllib.loads((PROJECT / "recipes/image.toml").read_text())
    (rootfs,) = [s for s in image["stage"] if s["name"] == "rootfs"]
    assert rootfs["profile"]["release"]["inputs"]["debian"] == "env:target-release"
    wanted = (PROJECT / "recipes/packages/mlos-toolchain/control.release").read_text()
    packages = load_recipes(PROJECT / "recipes").builder.environments["target-release"].packages
    for dep in wanted.split("Depends:", 1)[1].splitlines()[0].split(","):
        assert dep.strip() in packages, dep
