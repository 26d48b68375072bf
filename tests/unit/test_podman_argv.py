"""The podman policy mirrors the bwrap one: check it as data."""

from __future__ import annotations

from pathlib import Path

from mlos_repro.sandbox import SandboxSpec, stage_environment
from mlos_repro.sandbox.podman import podman_argv


def test_podman_policy(tmp_path: Path) -> None:
    spec = SandboxSpec(root=tmp_path / "root", env_digest="ab" * 32, env_tarball=tmp_path / "env.tar",
                       inputs={"src": tmp_path / "src"}, out=tmp_path / "out", build=tmp_path / "build",
                       env=stage_environment("s", 5))
    argv = podman_argv(spec, ["make", "A=1"])
    assert argv[:3] == ["podman", "--runtime", "runc"]
    assert "--network=none" in argv and "--read-only" in argv and "--unsetenv-all" in argv
    assert argv[argv.index("--hostname") + 1] == "mlos-build"
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert f"{tmp_path / 'src'}:/in/src:ro" in volumes
    assert f"{tmp_path / 'out'}:/out" in volumes and f"{tmp_path / 'build'}:/build" in volumes
    image = f"localhost/mlos-repro-env:{'ab' * 32}"
    tail = argv[argv.index(image) + 1:]
    # Exactly the contract's environment, then the command untouched.
    assert tail[:3] == ["/usr/bin/env", "-i", "--"]
    assert tail[-2:] == ["make", "A=1"]
    assert dict(a.split("=", 1) for a in tail[3:-2]) == spec.env
