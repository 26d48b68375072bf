"""One exception base for everything a user can be told; only cli.py turns it into an exit."""

from __future__ import annotations

import errno
import os
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    VERIFICATION_FAILED = 1
    BAD_INPUT = 2
    MISSING_TOOL = 3
    STAGE_FAILED = 4
    SIGNING = 5
    INTERNAL = 70


class MlosReproError(Exception):
    """An error with an exit code and a hint saying what to do about it."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"

    def __reduce__(self) -> tuple[object, ...]:
        # Raised on a Dask worker, re-raised by the client: every subclass, whatever its
        # constructor's arguments, travels as its class, message and attributes.
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[MlosReproError], args: tuple[object, ...], state: dict[str, object]) -> MlosReproError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class BadInputError(MlosReproError):
    exit_code = ExitCode.BAD_INPUT


# What the host refuses and only the user can change: a path not writable, a full disk.
ENVIRONMENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
}


class EnvironmentProblem(BadInputError):
    """The host will not let us do it (permissions, a read-only or full file system): the
    user's to fix, named with the path and what to do."""

    @classmethod
    def from_os_error(cls, e: OSError, what: str | None = None) -> EnvironmentProblem | None:
        """The user's view of an OSError this host caused (`what`: the path as the user named
        it, default the file the error names), or None for any other OSError."""
        reason = ENVIRONMENT_ERRNOS.get(e.errno or 0)
        if reason is None or (e.filename is None and what is None):
            return None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = ("free space on that file system (`mlos-repro store gc` reclaims old builds), or use "
                    "a --store/--out on one with more room; nothing partial was kept")
        else:
            hint = ("use a --store and --out you can write (or MLOS_REPRO_STORE), or run as a user "
                    "who may write there")
        return cls(f"cannot write {what or os.fsdecode(e.filename)}: {reason}", hint)


class RecipeError(BadInputError):
    """Every problem found while loading recipes, each naming file and key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"{len(problems)} recipe {noun}:\n{lines}",
            "fix the recipe keys named above (docs/recipes.md describes every key)",
        )


class MissingToolError(MlosReproError):
    exit_code = ExitCode.MISSING_TOOL

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(
            f"required tool {tool!r} was not found",
            f"install it with: apt-get install {package}",
        )
        self.tool = tool
        self.package = package


class HostFeatureMissing(MlosReproError):
    """The host lacks a kernel feature the sandbox needs (user namespaces): the user's to fix."""

    exit_code = ExitCode.MISSING_TOOL


class DigestMismatchError(MlosReproError):
    """A pinned digest does not match the bytes: the expected 'no'."""

    exit_code = ExitCode.VERIFICATION_FAILED


class VerificationFailed(MlosReproError):
    """What was checked does not hold (a release that does not verify, before a rebuild)."""

    exit_code = ExitCode.VERIFICATION_FAILED


class StageFailedError(MlosReproError):
    exit_code = ExitCode.STAGE_FAILED


class SigningError(MlosReproError):
    exit_code = ExitCode.SIGNING
