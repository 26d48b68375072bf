"""The source archive of a release: exactly the tree that built it, as one deterministic tar.

    recipes/…                 the recipe directory (its path inside the repository)
    layouts/, sbom/           the layout policy and the SBOM policy, when the repository has them
    PATH                      every `path:` input of every stage (kernel/, stage-tools/, …)
    mlos_repro/, pyproject.toml, requirements.lock
                              the toolkit's own code and its lock of Python dependencies
    SOURCE.json               what the archive is: the recipe directory and the toolkit version

Members are sorted, owned by 0:0, dated SOURCE_DATE_EPOCH, with modes 0644 or 0755 (and
0755 directories); tool caches are left out. So two releases of one commit give the same
bytes, and `mlos-repro rebuild` starts from nothing else.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from mlos_repro import __version__
from mlos_repro.digest import sha256_file
from mlos_repro.errors import BadInputError
from mlos_repro.fsutil import walk_tree
from mlos_repro.recipe.model import InputKind, RecipeSet

SOURCE_INFO = "SOURCE.json"
PREFIX = "mlos-source-"
SUFFIX = ".tar"
NOISE = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".git"})
TOOLKIT_FILES = ("pyproject.toml", "requirements.lock")
PACKAGE = Path(__file__).resolve().parent.parent  # mlos_repro/
MAX_MEMBERS = 100_000
MAX_BYTES = 1 << 30


def _members(recipes: RecipeSet) -> dict[str, Path]:
    """{archive name: path on disk} of every file and directory the archive holds."""
    root = recipes.root.resolve()
    tops: set[Path] = {recipes.recipes_dir.resolve()}
    for name in ("layouts", "sbom"):
        if (root / name).exists():
            tops.add(root / name)
    for stage in recipes.stages.values():
        tops.update(root / i.target for i in stage.inputs if i.kind is InputKind.PATH)
    found: dict[str, Path] = {}

    def add(path: Path, name: str) -> None:
        if name in found and found[name] != path:
            raise BadInputError(f"{path}: the source archive already holds {name} from {found[name]}",
                                "keep the recipes' repository apart from the toolkit's files")
        found[name] = path

    for top in sorted(tops):
        if not top.resolve().is_relative_to(root):
            raise BadInputError(f"{top}: outside the repository {root}; a source archive holds the "
                                "repository only")
        rel = top.relative_to(root).as_posix()
        for parent in list(Path(rel).parents)[:-1]:
            add(root / parent, parent.as_posix())
        add(top, rel)
        if top.is_dir() and not top.is_symlink():
            for sub, _ in walk_tree(top, skip=NOISE):
                add(top / sub, f"{rel}/{sub}")
    toolkit = PACKAGE.parent
    add(PACKAGE, PACKAGE.name)
    for sub, _ in walk_tree(PACKAGE, skip=NOISE):
        if not sub.endswith(".pyc"):
            add(PACKAGE / sub, f"{PACKAGE.name}/{sub}")
    for name in TOOLKIT_FILES:
        if (toolkit / name).is_file():
            add(toolkit / name, name)
    return found


def write_archive(recipes: RecipeSet, dest_dir: Path) -> tuple[Path, str]:
    """Write DEST_DIR/mlos-source-SHA256.tar; returns its path and sha256."""
    sde = recipes.builder.source_date_epoch
    members = _members(recipes)
    info = {"recipes": recipes.recipes_dir.resolve().relative_to(recipes.root.resolve()).as_posix(),
            "profile": recipes.profile, "mlos-repro": __version__}
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = dest_dir / f".source-{os.getpid()}.partial"
    try:
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, path in sorted(members.items()):
                tar.addfile(*_entry(name, path, sde))
            data = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
            ti = _info(SOURCE_INFO, sde, 0o644)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        digest = sha256_file(partial)
        final = dest_dir / f"{PREFIX}{digest}{SUFFIX}"
        partial.rename(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final, digest


def _info(name: str, sde: int, mode: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = sde, mode, 0, 0, "", ""
    return ti


def _entry(name: str, path: Path, sde: int) -> tuple[tarfile.TarInfo, io.BufferedReader | None]:
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        ti = _info(name, sde, 0o755)
        ti.type = tarfile.DIRTYPE
        return ti, None
    if stat.S_ISLNK(st.st_mode):
        ti = _info(name, sde, 0o777)
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
        return ti, None
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(f"{path}: not a regular file, directory or symlink; it cannot be in a "
                            "source archive")
    ti = _info(name, sde, 0o755 if st.st_mode & 0o111 else 0o644)
    ti.size = st.st_size
    return ti, path.open("rb")


def unpack(archive: Path, dest: Path) -> dict[str, str]:
    """Unpack a source archive into the new directory DEST, refusing anything a source archive
    never holds (absolute or '..' names, links leaving it, devices, oversized contents); returns
    its SOURCE.json."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = list(_checked(tar, archive))
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadInputError(f"{archive}: cannot unpack the source archive ({e})") from None
    try:
        info = json.loads((dest / SOURCE_INFO).read_text())
        if not isinstance(info, dict) or not isinstance(info.get("recipes"), str):
            raise ValueError("no 'recipes' directory named")
    except (OSError, ValueError) as e:
        raise BadInputError(f"{archive}: {SOURCE_INFO} is missing or malformed ({e})") from None
    recipes = (dest / info["recipes"]).resolve()
    if not recipes.is_relative_to(dest.resolve()) or not recipes.is_dir():
        raise BadInputError(f"{archive}: {SOURCE_INFO} names recipes {info['recipes']!r}, "
                            "not a directory in it")
    return info


def _checked(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise BadInputError(f"{archive}: more than {MAX_MEMBERS} members; not a source archive")
        total += member.size
        if total > MAX_BYTES:
            raise BadInputError(f"{archive}: more than {MAX_BYTES >> 20} MiB; not a source archive")
        if not (member.isfile() or member.isdir() or member.issym()):
            raise BadInputError(f"{archive}: {member.name!r} is neither a file, a directory nor a symlink")
        yield member
