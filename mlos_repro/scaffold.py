"""`mlos-repro init DIR`: a minimal repository of recipes that builds as it is.

    DIR/recipes/builder.toml   the environments (copied from a recipe directory that has them
    DIR/recipes/builder.lock   locked: by default the toolkit's own), unchanged, so the lock fits
    DIR/recipes/hello.toml     one example stage: compile src/hello.c with the default environment
    DIR/src/hello.c            its source (a path: input; paths resolve against DIR)
    DIR/sbom/policy.toml       the SBOM policy to fill in (the built-in default, with comments)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mlos_repro.env.lockfile import LOCK_FILE
from mlos_repro.errors import BadInputError
from mlos_repro.recipe.loader import BUILDER_FILE
from mlos_repro.sbom.policy import DEFAULT_POLICY, POLICY_FILE

# The toolkit's own recipes, when it runs from a checkout (an editable install, `make`).
OWN_RECIPES = Path(__file__).resolve().parent.parent / "recipes"

HELLO_TOML = """\
# A stage: what it needs (inputs), what it runs (in a sandbox without network, as root of a
# user namespace) and what it makes (outputs, under /out). docs/recipes.md describes every key.
[[stage]]
name = "hello"
description = "Compile and run a C program with the pinned default environment"
builder = "default"            # an environment of builder.toml (its .debs pinned in builder.lock)
outputs = ["hello", "hello.txt"]
run = [
  ["sh", "-c", "gcc -O2 -o /out/hello /in/src/hello.c && /out/hello > /out/hello.txt"],
]

[stage.inputs]
# path: inputs resolve against the directory that holds recipes/ (here: src/ beside it).
src = "path:src"
# Other kinds: stage:NAME (another stage's outputs), url:URL#sha256=HEX and
# deb:PACKAGE=VERSION#sha256=HEX (pinned downloads: `mlos-repro pin URL` fills in the digest),
# env:ENVIRONMENT (an environment's .debs as a local APT mirror).
"""

HELLO_C = """\
#include <stdio.h>

int main(void) {
    puts("hello from a reproducible build");
    return 0;
}
"""


def init_repository(directory: Path, source: Path | None = None) -> list[Path]:
    """Write a new repository of recipes at `directory` (new or empty); the files written."""
    source = source or OWN_RECIPES
    if not (source / BUILDER_FILE).is_file() or not (source / LOCK_FILE).is_file():
        raise BadInputError(f"{source} holds no {BUILDER_FILE} and {LOCK_FILE} to start from",
                            "name a recipe directory with locked environments: "
                            "mlos-repro init DIR --from RECIPES")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BadInputError(f"{directory} exists and is not an empty directory; init never overwrites files",
                            "name a new or empty directory")
    recipes = directory / "recipes"
    recipes.mkdir(parents=True)
    written = []
    for name in (BUILDER_FILE, LOCK_FILE):
        shutil.copyfile(source / name, recipes / name)
        written.append(recipes / name)
    files = {recipes / "hello.toml": HELLO_TOML, directory / "src" / "hello.c": HELLO_C,
             directory / POLICY_FILE: DEFAULT_POLICY.read_text()}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
