"""Hostile stages and inputs, in the real sandbox: a build stores only what the stage made inside
its /out, with safe modes, and never a host file, a host secret or a special file."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from mlos_repro.recipe import load_recipes
from mlos_repro.store import Store
from tests.conftest import mlos


def build(recipes: Path, store: Path, env: dict[str, str] | None = None,
          sandbox: str = "bwrap") -> tuple[int, str, Path]:
    out = recipes.parent / "out"
    result = mlos("build", "--sandbox", sandbox, "--recipes", recipes, "--out", out, "--store", store,
                  env=env)
    return result.code, result.stderr, out


def host_blobs(store: Path, *paths: str) -> list[str]:
    """The host files among `paths` whose bytes are in the store."""
    found = []
    for p in paths:
        digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        if Store(store).has_blob(digest):
            found.append(p)
    return found


@pytest.mark.parametrize("case", ["link-dir-then-file", "link-as-tree"])
def test_an_output_is_never_read_through_a_symlink_to_the_host(
        case: str, shared_store: Path, repo: Callable[..., Path], unique: str) -> None:
    if case == "link-dir-then-file":
        run, output, shown = "ln -s /etc /out/etc", "etc/passwd", "/out/etc is a symbolic link (to '/etc')"
    else:
        run, output, shown = "ln -s /etc/apt /out/o", "o", "/out/o is a symbolic link (to '/etc/apt')"
    recipes = repo(f"""
        [[stage]]
        name = "smuggler"
        outputs = ["{output}"]
        run = [["sh", "-c", "{run} # {unique}"]]
    """)
    code, err, out = build(recipes, shared_store)
    assert code == 4, err
    assert "stage 'smuggler'" in err and shown in err
    assert not out.exists()
    assert host_blobs(shared_store, "/etc/passwd", "/etc/apt/sources.list.d/debian.sources"
                      if Path("/etc/apt/sources.list.d/debian.sources").exists() else "/etc/passwd") == []


def test_tree_outputs_lose_setuid_and_world_writable_modes(shared_store: Path, repo: Callable[..., Path],
                                                           unique: str) -> None:
    recipes = repo(f"""
        [[stage]]
        name = "privs"
        outputs = ["t"]
        run = [["sh", "-c", "mkdir -p /out/t/pub && cp /bin/true /out/t/su && chmod 4755 /out/t/su && chmod 1777 /out/t/pub && echo {unique} > /out/t/w && chmod 0666 /out/t/w"]]
    """)
    code, err, out = build(recipes, shared_store)
    assert code == 0, err
    modes = {n: stat.S_IMODE((out / "privs" / "t" / n).stat().st_mode) for n in ("su", "pub", "w")}
    assert modes == {"su": 0o755, "pub": 0o755, "w": 0o644}


def test_a_fifo_output_is_refused_not_waited_on(shared_store: Path, repo: Callable[..., Path],
                                                unique: str) -> None:
    recipes = repo(f"""
        [[stage]]
        name = "pipe"
        outputs = ["p", "t"]
        run = [["sh", "-c", "mkfifo /out/p && mkdir /out/t && mkfifo /out/t/q # {unique}"]]
    """)
    code, err, out = build(recipes, shared_store)
    assert code == 4, err
    assert "output 'p' is a FIFO" in err
    assert not out.exists()


@pytest.mark.root
def test_a_device_node_output_cannot_even_be_made(shared_store: Path, repo: Callable[..., Path],
                                                  unique: str) -> None:
    """A privileged stage cannot make a device node (its root is not the host's); an output that
    is one is refused by the store anyway (tests/unit/test_store.py)."""
    recipes = repo(f"""
        [[stage]]
        name = "dev"
        privileged = true
        outputs = ["zero"]
        run = [["sh", "-c", "mknod /out/zero c 1 5 # {unique}"]]
    """)
    code, err, out = build(recipes, shared_store)
    assert code == 4, err
    assert "mknod /out/zero c 1 5" in err and "Operation not permitted" in err
    assert not out.exists()


def test_a_tree_too_deep_is_refused_and_the_store_stays_usable(
        shared_store: Path, repo: Callable[..., Path], unique: str) -> None:
    recipes = repo(f"""
        [[stage]]
        name = "deep"
        outputs = ["t"]
        run = [["sh", "-c", "mkdir /out/t && cd /out/t && for i in $(seq 1100); do mkdir d && cd d; done # {unique}"]]
    """)
    code, err, _ = build(recipes, shared_store)
    assert code == 4, err
    assert "output 't': directories nest more than 256 deep (at d/d/" in err and "stage 'deep'" in err
    assert not [p for p in (shared_store / "tmp").iterdir() if p.name.startswith("stage-deep-")]
    fine = repo(f"""
        [[stage]]
        name = "after"
        outputs = ["x"]
        run = [["sh", "-c", "echo {unique} > /out/x"]]
    """)
    code, err, _ = build(fine, shared_store)
    assert code == 0, err


@pytest.mark.parametrize("sandbox", ["bwrap", "podman"])
def test_the_sandbox_shows_no_host_environment(sandbox: str, shared_store: Path, repo: Callable[..., Path],
                                               unique: str) -> None:
    secret = f"s3cret{unique}"
    recipes = repo("""
        [[stage]]
        name = "snoop"
        outputs = ["found"]
        run = [["sh", "-c", "grep -rlsaF --devices=skip --exclude=mem --exclude=pagemap -f /in/pattern /proc > /out/found; test -s /in/pattern"]]
        [stage.inputs]
        pattern = "path:pattern"
    """)
    (recipes.parent / "pattern").write_text(secret + "\n")
    code, err, out = build(recipes, shared_store, env={
        "http_proxy": f"http://user:{secret}@proxy.invalid:3128", "MLOS_TEST_TOKEN": secret}, sandbox=sandbox)
    assert code == 0, err
    assert (out / "snoop" / "found").read_text() == ""


@pytest.mark.parametrize("case", ["input-is-link", "link-inside"])
def test_a_path_input_never_follows_a_link_out_of_the_repository(
        case: str, shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "reader"
        outputs = ["x"]
        run = [["sh", "-c", "cat /in/data/* > /out/x"]]
        [stage.inputs]
        data = "path:data"
    """)
    data = recipes.parent / "data"
    if case == "input-is-link":
        data.symlink_to("/etc/apt")
        shown = f"{data} leads outside the repository, to /etc/apt"
    else:
        data.mkdir()
        (data / "passwd").symlink_to("/etc/passwd")
        shown = f"the symlink {data / 'passwd'} leads outside the repository, to /etc/passwd"
    code, err, out = build(recipes, shared_store)
    assert code == 2, err
    assert "input 'data' (path:data)" in err and shown in err
    assert not out.exists()


def test_every_input_is_seen_with_source_date_epoch_mtimes(shared_store: Path, repo: Callable[..., Path],
                                                           unique: str) -> None:
    blob = Store(shared_store).put_bytes(f"downloaded {unique}\n".encode())
    recipes = repo(f"""
        [[stage]]
        name = "times"
        outputs = ["mtimes"]
        run = [["sh", "-c", "stat -L -c '%n %Y' /in/dl /in/file /in/tree /in/tree/f > /out/mtimes"]]
        [stage.inputs]
        dl = "url:https://example.org/{unique}.bin#sha256={blob}"
        file = "path:file"
        tree = "path:tree"
    """)
    (recipes.parent / "file").write_text(unique)
    (recipes.parent / "tree").mkdir()
    (recipes.parent / "tree" / "f").write_text(unique)
    os.utime(Store(shared_store).blob_path(blob), (1_000_000_000, 1_000_000_000))
    code, err, out = build(recipes, shared_store)
    assert code == 0, err
    sde = load_recipes(recipes).builder.source_date_epoch
    lines = (out / "times" / "mtimes").read_text().splitlines()
    assert lines == [f"/in/{n} {sde}" for n in ("dl", "file", "tree", "tree/f")]


@pytest.mark.root
@pytest.mark.parametrize("sandbox", ["bwrap", "podman"])
def test_a_privileged_stage_cannot_reach_a_host_device(sandbox: str, shared_store: Path,
                                                       repo: Callable[..., Path], unique: str) -> None:
    """What a maintainer script run by mmdebstrap could try: make the host disk's device node,
    mount devtmpfs (every host device) — while real ownership and mounts still work."""
    disk = os.stat("/").st_dev
    major, minor = os.major(disk), os.minor(disk)
    script = (
        f"exec > /out/report 2>&1; : {unique}; "
        f"mknod /tmp/disk b {major} {minor} && echo disk-node-made || echo disk-node-refused; "
        "mknod /tmp/mem c 1 1 && echo mem-node-made || echo mem-node-refused; "
        "mkdir /tmp/d; mount -t devtmpfs none /tmp/d && echo devtmpfs-mounted || echo devtmpfs-refused; "
        "mount -t tmpfs none /tmp/d && echo tmpfs-mounted; "
        "touch /tmp/d/f && chown 1234:5678 /tmp/d/f && stat -c owner-%u:%g /tmp/d/f; "
        "mkfifo /tmp/d/p && echo fifo-made")
    recipes = repo(f"""
        [[stage]]
        name = "maintainer-script"
        privileged = true
        outputs = ["report"]
        run = [["sh", "-c", "{script}"]]
    """)
    code, err, out = build(recipes, shared_store, sandbox=sandbox)
    assert code == 0, err
    report = (out / "maintainer-script" / "report").read_text().split()
    assert {"disk-node-refused", "mem-node-refused", "devtmpfs-refused"} <= set(report), report
    assert {"tmpfs-mounted", "owner-1234:5678", "fifo-made"} <= set(report), report
