"""Writing files whole or not at all; running a tool and naming its failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlos_repro import run
from mlos_repro.errors import BadInputError, SigningError
from mlos_repro.fsutil import atomic_write


def test_atomic_write_replaces_a_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["manifest.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "verify.json"
    link.symlink_to(outside)
    atomic_write(link, b"{}")
    assert outside.read_bytes() == b"keep me"
    assert not link.is_symlink() and link.read_bytes() == b"{}"


def test_atomic_write_failing_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "lock"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(target, 12)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["lock"]


def test_atomic_write_into_a_missing_folder_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "file", "x")


def test_run_or_raise_names_what_failed_with_the_exit_status_and_stderr_tail() -> None:
    argv = ["sh", "-c", "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3"]
    with pytest.raises(BadInputError) as caught:
        run.run_or_raise(argv, BadInputError, "resolving failed", hint="check the mirror", tail=2)
    assert caught.value.message == "resolving failed (exit 3)\nline6\nline7"
    assert caught.value.hint == "check the mirror"


def test_run_or_raise_puts_a_single_line_on_the_same_line_and_returns_stdout() -> None:
    with pytest.raises(SigningError, match=r"^gpg could not sign \(exit 1\): no key$"):
        run.run_or_raise(["sh", "-c", "echo no key >&2; exit 1"], SigningError, "gpg could not sign", tail=1)
    ok = run.run_or_raise(["sh", "-c", "echo hello"], SigningError, "never")
    assert ok.stdout == b"hello\n"
