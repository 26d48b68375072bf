"""The sandbox policy is data: check it without running anything."""

from __future__ import annotations

from pathlib import Path

from mlos_repro.sandbox import SandboxSpec, stage_environment
from mlos_repro.sandbox.bwrap import bwrap_argv


def _spec(tmp_path: Path) -> SandboxSpec:
    root = tmp_path / "root"
    for d in ("usr", "etc", "var", "proc", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    return SandboxSpec(root=root, env_digest="0" * 64, env_tarball=tmp_path / "env.tar", inputs={"src": tmp_path / "src", "deb": tmp_path / "x.deb"},
                       out=tmp_path / "out", build=tmp_path / "build",
                       env=stage_environment("hello", 1700000000, (("EXTRA", "1"),)))


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_isolation_flags(tmp_path: Path) -> None:
    argv = bwrap_argv(_spec(tmp_path), ["make"])
    assert argv[0] == "bwrap"
    assert "--unshare-all" in argv  # includes the network namespace: no network
    assert "--share-net" not in argv
    assert argv[argv.index("--unshare-user") + 1:argv.index("--unshare-user") + 5] == \
        ["--uid", "0", "--gid", "0"]
    assert "--clearenv" in argv
    assert argv[argv.index("--hostname") + 1] == "mlos-build"
    assert argv[-2:] == ["--", "make"]
    # The root is made read-only after every mount is in place.
    assert argv.index("--remount-ro") > max(i for i, a in enumerate(argv) if a in ("--bind", "--ro-bind"))


def test_only_declared_paths_are_mounted(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    argv = bwrap_argv(spec, ["true"])
    ro = _pairs(argv, "--ro-bind")
    rw = _pairs(argv, "--bind")
    assert rw == [(str(spec.out), "/out"), (str(spec.build), "/build")]
    assert (str(tmp_path / "src"), "/in/src") in ro and (str(tmp_path / "x.deb"), "/in/deb") in ro
    for source, _ in ro:
        assert source.startswith(str(tmp_path))  # nothing from the host outside the spec
    targets = {t for _, t in ro}
    assert {"/usr", "/etc", "/var"} <= targets
    assert not {"/proc", "/dev", "/tmp"} & targets  # fresh ones, not the environment's
    assert ("usr/bin", "/bin") in _pairs(argv, "--symlink")
    assert argv[argv.index("--chdir") + 1] == "/build"


def test_environment_is_exactly_the_contract(tmp_path: Path) -> None:
    argv = bwrap_argv(_spec(tmp_path), ["true"])
    env = dict(_pairs(argv, "--setenv"))
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/build", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
        "SOURCE_DATE_EPOCH": "1700000000", "MLOS_STAGE": "hello", "EXTRA": "1",
    }


def test_a_privileged_stage_is_root_of_an_identity_mapped_namespace_and_offline(tmp_path: Path) -> None:
    from dataclasses import replace
    spec = _spec(tmp_path)
    argv = bwrap_argv(replace(spec, privileged=True), ["mmdebstrap"])
    # bwrap is started as root of a user namespace mapping IDs 0-65535 onto themselves.
    assert argv[1:4] == ["-m", "mlos_repro.sandbox.idmap", "bwrap"]
    assert "--unshare-user" not in argv and "--unshare-all" not in argv
    dropped = {argv[i + 1] for i, a in enumerate(argv) if a == "--cap-drop"}
    assert {"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_MKNOD"} <= dropped
    assert "--unshare-net" in argv and "--share-net" not in argv
    assert {"--unshare-pid", "--unshare-ipc", "--unshare-uts"} <= set(argv)
    assert argv[argv.index("--cap-add") + 1] == "ALL"
    # The same file system policy as any other stage.
    plain = bwrap_argv(spec, ["mmdebstrap"])
    assert argv[argv.index("--die-with-parent"):] == plain[plain.index("--die-with-parent"):]
