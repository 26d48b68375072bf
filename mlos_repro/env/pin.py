"""`mlos-repro pin URL`: download an archive where the network allows and write its sha256
into every recipe input that names the URL (`url:URL#sha256=unpinned` or an older pin)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mlos_repro.env.download import download
from mlos_repro.errors import BadInputError
from mlos_repro.fsutil import atomic_write
from mlos_repro.recipe.loader import UNPINNED
from mlos_repro.store import Store


@dataclass
class PinResult:
    sha256: str
    files: list[Path] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)  # the pins replaced ("unpinned" or a digest)


def pin(recipes_dir: Path, url: str, store: Store) -> PinResult:
    pattern = re.compile(re.escape(f"url:{url}#sha256=") + rf"({UNPINNED}|[0-9a-f]{{64}})(?=[\"'])")
    texts = {p: p.read_text() for p in sorted(recipes_dir.glob("*.toml"))}
    found = {p: t for p, t in texts.items() if pattern.search(t)}
    if not found:
        raise BadInputError(f"no recipe in {recipes_dir} has an input url:{url}#sha256=…",
                            f'add NAME = "url:{url}#sha256={UNPINNED}" to the stage\'s inputs, then pin')
    digest = download(store, url, None, what="pin")
    result = PinResult(sha256=digest)
    for path, text in found.items():
        result.previous += [m.group(1) for m in pattern.finditer(text)]
        new = pattern.sub(f"url:{url}#sha256={digest}", text)
        atomic_write(path, new)
        result.files.append(path)
    return result
