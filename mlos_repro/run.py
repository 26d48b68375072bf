"""The one subprocess wrapper: argv lists, an environment built from nothing, every command logged."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
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
    "gpg-connect-agent": "gpgconf",
    "sbsign": "sbsigntool",
    "sbverify": "sbsigntool",
    "sbattach": "sbsigntool",
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


class StreamFailed(ValueError):
    """A tool whose output was being read exited with an error: what it read was not what it
    expected (a truncated or corrupt image). Carries the tail of its stderr."""


DRAIN_LIMIT = 1 << 20  # what is read past the reader's end to tell "done" from "stopped early"


@contextlib.contextmanager
def stream(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None
           ) -> Iterator[IO[bytes]]:
    """Run argv and read its stdout as a stream.

    When the reader has read (nearly) everything, the tool's exit status is checked: a
    failure raises StreamFailed with the last lines of its stderr, so a truncated stream is
    never taken for a short one. A reader that stops early ends the tool."""
    args = [os.fspath(a) for a in argv]
    require(args[0])
    log.info("+ %s", shlex.join(args))
    with tempfile.TemporaryFile(prefix="mlos-stderr-") as errors:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else host_env())
        assert proc.stdout is not None
        finished = False
        try:
            yield proc.stdout
            finished = True
        except Exception as e:
            # The reader choked: if the tool failed on its own, that is the cause worth naming.
            proc.stdout.close()
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code > 0 and not isinstance(e, MissingToolError):
                raise StreamFailed(_failure(_tool(args), code, errors)) from e
            raise
        finally:
            at_end, drained = False, 0
            while finished and drained <= DRAIN_LIMIT:  # e.g. a tar's end-of-archive padding
                chunk = proc.stdout.read(1 << 16)
                if not chunk:
                    at_end = True
                    break
                drained += len(chunk)
            proc.stdout.close()
            if not at_end:
                proc.kill()
            code = proc.wait()
        if at_end and code != 0:
            raise StreamFailed(_failure(_tool(args), code, errors))


def _tool(args: list[str]) -> str:
    """The tool's name, past a `prlimit ... --` wrapper."""
    return args[args.index("--") + 1] if args[0] == "prlimit" and "--" in args else args[0]


def _failure(tool: str, code: int, errors: IO[bytes]) -> str:
    errors.seek(0)
    tail = errors.read()[-2000:].decode(errors="replace").strip().splitlines()[-3:]
    return f"{tool} exit {code}" + (": " + " / ".join(tail) if tail else "")


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
