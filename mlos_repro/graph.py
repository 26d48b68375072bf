"""The stage DAG: selection, order, and cache keys."""

from __future__ import annotations

import functools
import graphlib
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlos_repro import __version__
from mlos_repro.digest import canonical_json, sha256_bytes
from mlos_repro.errors import BadInputError
from mlos_repro.recipe.model import Stage
from mlos_repro.store import OUTPUT_RULES

# The code that decides what a stage sees: its environment and argv (the sandboxes) and how
# its inputs are laid out. Their bytes are part of every cache key, so a change to them can
# never hit an entry made under the old contract. (Read as files: the sandbox package is not
# graph's to import.)
CONTRACT_MODULES = ("sandbox/__init__.py", "sandbox/bwrap.py", "sandbox/podman.py", "sandbox/inputs.py",
                    "sandbox/idmap.py")


PACKAGE = Path(__file__).parent


@functools.cache
def contract_digest(package: Path = PACKAGE) -> str:
    """sha256 of the sandbox contract's code (CONTRACT_MODULES, by name and content)."""
    digest = hashlib.sha256()
    for name in CONTRACT_MODULES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()


def select(stages: Mapping[str, Stage], wanted: Iterable[str]) -> list[str]:
    """`wanted` and everything they depend on, in dependency order (all stages if empty)."""
    wanted = list(wanted)
    unknown = [w for w in wanted if w not in stages]
    if unknown:
        raise BadInputError(f"unknown stage(s): {', '.join(unknown)}",
                            f"known stages: {', '.join(sorted(stages))}")
    chosen = _closure(stages, wanted or list(stages))
    sorter = graphlib.TopologicalSorter({n: stages[n].upstream for n in sorted(chosen)})
    return list(sorter.static_order())


def ancestors(stages: Mapping[str, Stage], name: str) -> list[str]:
    """Every stage `name` depends on, directly or through others, sorted by name."""
    return sorted(_closure(stages, list(stages[name].upstream)))


def _closure(stages: Mapping[str, Stage], start: list[str]) -> set[str]:
    chosen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo.extend(stages[name].upstream)
    return chosen


def cache_key_parts(stage: Stage, env_digest: str, source_date_epoch: int,
                    input_digests: Mapping[str, str]) -> dict[str, Any]:
    """Everything that can change the stage's outputs (`plan` says which part changed)."""
    return {
        "toolkit": __version__,
        "sandbox": contract_digest(),
        "output_rules": OUTPUT_RULES,
        "stage": stage.normalized(),
        "environment": env_digest,
        "source_date_epoch": source_date_epoch,
        "inputs": dict(input_digests),
    }


def cache_key(stage: Stage, env_digest: str, source_date_epoch: int,
              input_digests: Mapping[str, str]) -> str:
    """sha256 of everything that can change the stage's outputs, as canonical JSON."""
    return key_of(cache_key_parts(stage, env_digest, source_date_epoch, input_digests))


def key_of(parts: Mapping[str, Any]) -> str:
    return sha256_bytes(canonical_json(dict(parts)))
