"""One exception base for everything a user can be told; only cli.py turns it into an exit."""

from __future__ import annotations

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


class BadInputError(MlosReproError):
    exit_code = ExitCode.BAD_INPUT


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
