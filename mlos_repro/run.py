"""The one subprocess wrapper: argv lists, an environment built from nothing, every command logged."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from mlos_repro.errors import MissingToolError

log = logging.getLogger(__name__)

# Every external tool with the Debian package that provides it, so a missing
# tool is reported as "install X" instead of a traceback.
TOOLS: dict[str, str] = {
    "bwrap": "bubblewrap",
    "mmdebstrap": "mmdebstrap",
    "tar": "tar",
    "podman": "podman",
    "runc": "runc",
    "dpkg-deb": "dpkg",
    "diffoscope": "diffoscope-minimal",
    "disorderfs": "disorderfs",
    "fusermount3": "fuse3",
    "zstd": "zstd",
    "taskset": "util-linux",
    "gpg": "gnupg",
    "gpgconf": "gpgconf",
}

# Host variables passed to tools that run outside the sandbox (mmdebstrap, tar).
HOST_ENV_ALLOWLIST = ("PATH", "HOME", "TMPDIR", "http_proxy", "https_proxy", "no_proxy")


def require(tool: str) -> str:
    """The absolute path of `tool`, or MissingToolError naming its package."""
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(tool, TOOLS.get(tool, tool))
    return path


def host_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in HOST_ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def stream(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None
           ) -> Iterator[IO[bytes]]:
    """Run argv and read its stdout as a stream; the process is ended when the reader is done."""
    args = [os.fspath(a) for a in argv]
    require(args[0])
    log.info("+ %s", shlex.join(args))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=dict(env) if env is not None else host_env())
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    umask: int = 0o022,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    check: bool = True,
    timeout: float | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv with exactly `env` (default: a small host allowlist). Never a shell.

    stdin is empty unless `input` is given."""
    args = [os.fspath(a) for a in argv]
    require(args[0])
    log.info("+ %s", shlex.join(args))
    return subprocess.run(
        args,
        env=dict(env) if env is not None else host_env(),
        cwd=cwd,
        umask=umask,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL if input is None else None,
        input=input,
        check=check,
        timeout=timeout,
    )


def run_or_raise(
    argv: Sequence[str | os.PathLike[str]],
    error: Callable[..., Exception],
    what: str,
    *,
    hint: str | None = None,
    tail: int = 5,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    stdout: IO[bytes] | int | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv; if it fails, raise error(message[, hint]) naming `what` and the exit status,
    with the last `tail` lines the tool wrote to stderr (one line: on the same line)."""
    result = run(argv, env=env, input=input, stdout=stdout, stderr=subprocess.PIPE, check=False)
    if result.returncode == 0:
        return result
    lines = result.stderr.decode(errors="replace").strip().splitlines()[-tail:]
    said = (": " + lines[0]) if len(lines) == 1 else "".join("\n" + line for line in lines)
    message = f"{what} (exit {result.returncode}){said}"
    raise error(message) if hint is None else error(message, hint)
