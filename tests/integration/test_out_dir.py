"""What a build does with its OUT and with a host that will not let it write: environment
problems are the user's to fix (exit 2, the path named, nothing half-written), and an OUT always
holds one build whole."""

from __future__ import annotations

import contextlib
import errno
import json
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlos_repro.errors import EnvironmentProblem
from mlos_repro.store import Store
from tests.conftest import MLOS, PROJECT, mlos

TWO = """
[[stage]]
name = "one"
outputs = ["one.txt"]
run = [["sh", "-c", "echo one > /out/one.txt"]]

[[stage]]
name = "two"
outputs = ["two.txt"]
run = [["sh", "-c", "echo two > /out/two.txt"]]

[[stage]]
name = "large"
outputs = ["large.bin"]
run = [["sh", "-c", "head -c 600000 /dev/zero | tr '\\\\0' x > /out/large.bin"]]
"""


@contextlib.contextmanager
def tmpfs(where: Path, *options: str) -> Iterator[Path]:
    """A small tmpfs mounted at `where` (root only): a full or read-only file system for real."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.root
def test_environment_problems_exit_2_naming_the_path(shared_store: Path, repo: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    recipes = repo(TWO)
    # An --out that is a file: named, and left alone.
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    result = mlos("build", "one", "--recipes", recipes, "--out", a_file, "--store", shared_store)
    assert result.code == 2, result.stderr
    assert f"--out {a_file} exists and is not a directory" in result.stderr
    assert "internal error" not in result.stderr and a_file.read_text() == "mine\n"
    with tmpfs(tmp_path / "ro", "ro") as ro:
        # An --out on a read-only file system: refused before anything is built.
        result = mlos("build", "one", "--recipes", recipes, "--out", ro / "out", "--store", shared_store)
        assert result.code == 2, result.stderr
        assert f"cannot write {ro}" in result.stderr and "read-only" in result.stderr
        assert "running" not in result.stderr and "bug" not in result.stderr
        # A store there: named as the store, with what to do.
        result = mlos("build", "one", "--recipes", recipes, "--out", tmp_path / "out", "--store", ro / "store")
        assert result.code == 2, result.stderr
        assert f"cannot write the store {ro / 'store'}: the file system is read-only" in result.stderr
        assert "--store or MLOS_REPRO_STORE" in result.stderr
        assert not (tmp_path / "out").exists()


def test_a_rebuild_links_what_out_holds_and_rewrites_what_changed(shared_store: Path, repo: Callable[..., Path],
                                                                    tmp_path: Path) -> None:
    """An output already in OUT with the very bytes wanted is hard-linked into the new OUT, not
    written again; one changed since, or a link planted in its place, is written from the store."""
    recipes = repo(TWO)
    out = tmp_path / "out"
    assert mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store).code == 0
    large = (out / "large/large.bin").stat().st_ino
    (out / "one/one.txt").write_text("forged\n")
    host = tmp_path / "host.txt"
    host.write_text("two\n")
    (out / "two/two.txt").unlink()
    (out / "two/two.txt").symlink_to(host)
    again = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert again.code == 0 and "3 stages (0 built, 3 cached)" in again.stderr, again.stderr
    assert (out / "large/large.bin").stat().st_ino == large  # the same file, linked
    assert (out / "one/one.txt").read_text() == "one\n"
    assert not (out / "two/two.txt").is_symlink() and (out / "two/two.txt").read_text() == "two\n"
    assert (out / "two/two.txt").stat().st_ino != host.stat().st_ino and host.read_text() == "two\n"


@pytest.mark.root
def test_a_full_disk_leaves_the_earlier_out_as_it_was(shared_store: Path, repo: Callable[..., Path],
                                                      tmp_path: Path) -> None:
    recipes = repo(TWO)
    with tmpfs(tmp_path / "small") as small:
        out = small / "out"
        first = mlos("build", "one", "--recipes", recipes, "--out", out, "--store", shared_store)
        assert first.code == 0, first.stderr
        files = listing(out)
        before = {p: (out / p).read_bytes() for p in files if (out / p).is_file()}
        result = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
        assert result.code == 2, result.stderr
        assert f"cannot write --out {out}: no space left on the device" in result.stderr
        assert "unchanged" in result.stderr and "bug" not in result.stderr
        # The earlier build, whole; no staging directory left beside it.
        assert listing(small) == ["out", *(f"out/{p}" for p in files)]
        assert {p: (out / p).read_bytes() for p in before} == before


def test_out_holds_one_build_whole(shared_store: Path, repo: Callable[..., Path], tmp_path: Path) -> None:
    recipes = repo(TWO)
    out = tmp_path / "out"
    full = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert full.code == 0, full.stderr
    assert set(json.loads((out / "manifest.json").read_text())["stages"]) == {"one", "two", "large"}
    # What an earlier --verify left: gone after a build that does not verify.
    (out / "verify.json").write_text("{}")
    (out / "reports").mkdir()
    (out / "reports" / "old.html").write_text("stale")
    again = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert again.code == 0, again.stderr
    assert not (out / "verify.json").exists() and not (out / "reports").exists()
    # Fewer stages than the build in OUT: refused, naming what would be lost, OUT untouched.
    kept = listing(out)
    fewer = mlos("build", "one", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert fewer.code == 2, fewer.stderr
    assert "stages this build does not make: large, two" in fewer.stderr and "--partial" in fewer.stderr
    assert listing(out) == kept
    # --partial keeps them: the manifest still lists every stage, their files still there.
    partial = mlos("build", "one", "--partial", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert partial.code == 0, partial.stderr
    assert set(json.loads((out / "manifest.json").read_text())["stages"]) == {"one", "two", "large"}
    assert listing(out) == kept and (out / "two" / "two.txt").read_text() == "two\n"
    # A directory holding what no build wrote is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    foreign = mlos("build", "one", "--recipes", recipes, "--out", mine, "--store", shared_store)
    assert foreign.code == 2, foreign.stderr
    assert "holds notes.txt, which no build wrote" in foreign.stderr
    assert listing(mine) == ["notes.txt"]
    # A fresh OUT of one stage only: `release --from` it refuses to release part of the graph.
    one = tmp_path / "one"
    assert mlos("build", "one", "--recipes", recipes, "--out", one, "--store", shared_store).code == 0
    refused = mlos("release", "--keys", tmp_path / "no-keys", "--out", tmp_path / "rel", "--from", one,
                   "--recipes", recipes, "--store", shared_store)
    assert refused.code == 2, refused.stderr
    assert f"{one} holds a build of one, not the whole graph" in refused.stderr
    assert "missing: large, two" in refused.stderr and "--stage" in refused.stderr
    assert not (tmp_path / "rel").exists()


@pytest.mark.root
def test_a_store_on_a_full_disk_keeps_nothing_half_written(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (512 << 10))
    with tmpfs(tmp_path / "fs") as fs:
        store = Store(fs / "store")
        with pytest.raises(OSError) as raised:
            store.put_file(big)
        assert raised.value.errno == errno.ENOSPC
        # The disk filled while writing the blob: no file named, the command names the store.
        assert EnvironmentProblem.from_os_error(raised.value) is None
        problem = EnvironmentProblem.from_os_error(raised.value, f"the store {fs / 'store'}")
        assert problem is not None
        assert problem.message == f"cannot write the store {fs / 'store'}: no space left on the device"
        assert listing(fs / "store" / "blobs") == ["sha256"] and listing(fs / "store" / "tmp") == []


def test_only_the_hosts_refusals_are_the_users_problem() -> None:
    denied = EnvironmentProblem.from_os_error(PermissionError(errno.EACCES, "Permission denied", "/srv/out"))
    assert denied is not None and denied.message == "cannot write /srv/out: permission denied"
    assert denied.exit_code == 2 and "--store and --out you can write" in (denied.hint or "")
    # Any other OSError stays what it is (a bug is reported as one).
    assert EnvironmentProblem.from_os_error(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None
    assert EnvironmentProblem.from_os_error(OSError(errno.ENOSPC, "No space left")) is None


@pytest.mark.root
def test_a_host_without_user_namespaces_is_named_exit_3(shared_store: Path, repo: Callable[..., Path],
                                                        tmp_path: Path, unique: str) -> None:
    """Run where no user namespace may be made (a user namespace whose max_user_namespaces is
    0, as a locked-down kernel or container would have it): the real bubblewrap refuses, and
    the build says so as the host's problem, before any stage is judged."""
    recipes = repo(f'[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["sh", "-c", "echo {unique} > /out/x"]]\n')
    argv = " ".join(shlex.quote(str(a)) for a in (*MLOS, "build", "--recipes", recipes, "--out", tmp_path / "out",
                                                  "--store", shared_store))
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                             f"echo 0 > /proc/sys/user/max_user_namespaces && exec {argv}"],
                            capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 3, result.stderr
    assert "bubblewrap cannot create the user namespace every stage runs in" in result.stderr
    assert "max_user_namespaces" in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "out").exists()
