"""`mlos-repro fetch`: every locked .deb and every pinned url:/deb: input into the store."""

from __future__ import annotations

import functools
import lzma
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from debian.deb822 import Packages

from mlos_repro.env.download import download
from mlos_repro.env.lockfile import LOCK_FILE, locked_environment, read_lock
from mlos_repro.errors import BadInputError
from mlos_repro.recipe.model import Environment, Input, InputKind, RecipeSet
from mlos_repro.store import Store


@dataclass
class FetchReport:
    present: int = 0  # pinned files that were in the store already
    downloaded: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0


# (files done, files to download, bytes done, bytes to download; 0 when sizes are unknown)
FetchProgress = Callable[[int, int, int, int], None]


@dataclass(frozen=True, slots=True)
class _Pin:
    sha256: str
    what: str
    size: int  # 0: unknown until downloaded
    url: Callable[[], str]


def _join(mirror: str, path: str) -> str:
    return mirror.rstrip("/") + "/" + urllib.parse.quote(path)


def environments_to_fetch(recipes: RecipeSet, *, all_locked: bool = True) -> list[str]:
    """The environments whose .debs a build needs: those the stages use (as builders or env:
    inputs; `target` is what the images install), and with all_locked every locked one."""
    used = {s.builder for s in recipes.stages.values()} | {
        i.target for s in recipes.stages.values() for i in s.inputs if i.kind is InputKind.ENV}
    lock_path = recipes.builder.path.with_name(LOCK_FILE)
    locked_names = set(read_lock(lock_path)) if lock_path.exists() and all_locked else set()
    return sorted((locked_names & set(recipes.builder.environments)) | used)


def pinned_inputs(recipes: RecipeSet) -> dict[str, str]:
    """{sha256: what} of every pinned input this profile's build needs: the locked .debs of the
    environments it uses and its url:/deb: inputs (`release --with-inputs` carries them)."""
    pins: dict[str, str] = {}
    for name in environments_to_fetch(recipes, all_locked=False):
        _, locked = locked_environment(recipes.builder, name)
        pins.update((p.sha256, f"environment {name!r}: {p.filename}") for p in locked.packages)
    for stage in sorted(recipes.stages.values(), key=lambda s: s.name):
        for inp in stage.inputs:
            if inp.kind in (InputKind.URL, InputKind.DEB) and inp.sha256 is not None:
                pins[inp.sha256] = f"stage {stage.name!r}: {inp.spec}"
    return dict(sorted(pins.items()))


def fetch_all(recipes: RecipeSet, store: Store, mirror: str | None = None, *,
              all_locked: bool = True, progress: FetchProgress | None = None) -> FetchReport:
    """Download every pinned file the store lacks, each once (an environment's .debs are shared
    with others), checking each against its sha256."""
    pins: dict[str, _Pin] = {}
    for name in environments_to_fetch(recipes, all_locked=all_locked):
        env, locked = locked_environment(recipes.builder, name)
        for pkg in locked.packages:
            pins.setdefault(pkg.sha256, _Pin(pkg.sha256, f"environment {name!r}: {pkg.filename}", pkg.size,
                                             functools.partial(_join, mirror or env.mirror, pkg.filename)))
    indexes: dict[str, dict[tuple[str, str], str]] = {}
    for stage in sorted(recipes.stages.values(), key=lambda s: s.name):
        env = recipes.builder.environments[stage.builder]
        for inp in stage.inputs:
            if inp.kind not in (InputKind.URL, InputKind.DEB):
                continue
            assert inp.sha256 is not None
            url = functools.partial(lambda i: i.target, inp) if inp.kind is InputKind.URL else \
                functools.partial(_deb_url, env, inp, indexes, mirror or env.mirror, store)
            pins.setdefault(inp.sha256, _Pin(inp.sha256, f"stage {stage.name!r}: input {inp.name!r}", 0, url))
    missing = [p for p in pins.values() if not store.has_blob(p.sha256)]
    report = FetchReport(present=len(pins) - len(missing))
    total = sum(p.size for p in missing)
    for pin in missing:
        def chunk(n: int) -> None:
            report.downloaded_bytes += n
            if progress is not None:
                progress(len(report.downloaded), len(missing), report.downloaded_bytes, total)

        address = pin.url()
        download(store, address, pin.sha256, what=pin.what, on_chunk=chunk)
        report.downloaded.append(address)
        if progress is not None:
            progress(len(report.downloaded), len(missing), report.downloaded_bytes, total)
    return report


def _deb_url(env: Environment, inp: Input, indexes: dict[str, dict[tuple[str, str], str]],
             mirror: str, store: Store) -> str:
    """Find a pinned package's pool path in the mirror's index for the environment's suite."""
    index_url = _join(mirror, f"dists/{env.suite}/main/binary-{env.architecture}/Packages.xz")
    if index_url not in indexes:
        digest = download(store, index_url, None)
        table: dict[tuple[str, str], str] = {}
        with lzma.open(store.blob_path(digest)) as f:
            for para in Packages.iter_paragraphs(f, use_apt_pkg=False):
                table[(para["Package"], para["Version"])] = para["Filename"]
        indexes[index_url] = table
    filename = indexes[index_url].get((inp.target, inp.version or ""))
    if filename is None:
        raise BadInputError(
            f"{inp.spec}: {inp.target} {inp.version} is not in {index_url}",
            "the version may have left the archive; set the mirror to a snapshot "
            "(e.g. --mirror https://snapshot.debian.org/archive/debian/DATE/)")
    return _join(mirror, filename)
