"""The MLOS Portage overlay, run as the `overlay` stage:

    python3 /in/tools/overlay.py OVERLAY_SOURCE OUT_DIR NAME=SOURCE_DIR...
        [--merge TREE]... [--archive FILE=PATH]...

OVERLAY_SOURCE is the overlay as people edit it (recipes/flatcar/overlay/: metadata/,
profiles/, licenses/, CATEGORY/PN/ with ebuilds and metadata.xml). Each NAME=SOURCE_DIR is
a package source directory (recipes/packages/NAME/, the same one the .deb is built from)
packed as the distfile NAME-VERSION.tar.gz (VERSION from its control file), everything under
NAME-VERSION/. Each --merge TREE adds packages to the overlay: its CATEGORY/PN/ directories
(none of which the overlay may have already) and the categories its profiles/categories
lists. Each --archive FILE=PATH is a distfile as it is, published as FILE: a pinned upstream
archive (a stage input), the same bytes a package of it repackages.

Writes to OUT_DIR:
- distfiles/: those archives (gzip without name or time, tar entries sorted, root-owned, at
  SOURCE_DATE_EPOCH) and the --archive files, to publish where the ebuilds' SRC_URI points;
- mlos-overlay/: the overlay with a Manifest per package that fetches anything: a DIST line
  per distfile its ebuilds name in SRC_URI, with the size, BLAKE2B and SHA512 (the hashes
  metadata/layout.conf requires);
- mlos-overlay.tar.gz: the same tree, as a reproducible tarball.

Refused (exit 1, naming the ebuild or tree): an SRC_URI file no NAME=SOURCE_DIR or --archive
makes, a distfile no ebuild uses, an ebuild whose name is not PN-VERSION.ebuild in its
CATEGORY/PN directory, a merged package the overlay has already, a merged tree holding more
than packages and profiles/categories.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from archive import Refused, epoch, file_digest, write_tar_gz

HASHES = (("BLAKE2B", "blake2b"), ("SHA512", "sha512"))
SRC_URI = re.compile(r'^SRC_URI="([^"]*)"', re.MULTILINE)
VARIABLE = re.compile(r"\$\{(P|PN|PV)\}")


def control_version(source: Path) -> str:
    for line in (source / "control").read_text(encoding="utf-8").splitlines():
        if line.startswith("Version:"):
            return line.partition(":")[2].strip()
    raise Refused(f"{source}/control: no Version field")


def distfile(name: str, source: Path, dest_dir: Path, scratch: Path, when: int) -> Path:
    version = control_version(source)
    top = scratch / name / f"{name}-{version}"
    shutil.copytree(source, top, symlinks=True)
    dest = dest_dir / f"{name}-{version}.tar.gz"
    write_tar_gz(top.parent, dest, scratch, when, all_root=True)
    return dest


def fetched(ebuild: Path) -> list[str]:
    """The file names an ebuild's SRC_URI downloads (its ${P}, ${PN}, ${PV} filled in)."""
    package = ebuild.parent.name
    stem = ebuild.name.removesuffix(".ebuild")
    if not stem.startswith(package + "-") or not ebuild.name.endswith(".ebuild"):
        raise Refused(f"{ebuild}: an ebuild is named {package}-VERSION.ebuild")
    values = {"PN": package, "PV": stem[len(package) + 1:], "P": stem}
    names = []
    for value in SRC_URI.findall(ebuild.read_text(encoding="utf-8")):
        words = VARIABLE.sub(lambda m: values[m.group(1)], value).split()
        for i, word in enumerate(words):
            if "://" not in word:
                continue
            renamed = i + 2 < len(words) and words[i + 1] == "->"
            names.append(words[i + 2] if renamed else word.rsplit("/", 1)[1])
    return names


def manifests(overlay: Path, distfiles: dict[str, Path]) -> None:
    used = set()
    for ebuilds in sorted({e.parent for e in overlay.glob("*/*/*.ebuild")}):
        lines = set()
        for ebuild in sorted(ebuilds.glob("*.ebuild")):
            for name in fetched(ebuild):
                if name not in distfiles:
                    raise Refused(f"{ebuild.relative_to(overlay)}: SRC_URI fetches {name}, which is not "
                                  f"made here (made: {', '.join(sorted(distfiles)) or 'nothing'})")
                used.add(name)
                path = distfiles[name]
                sums = " ".join(f"{label} {file_digest(path, algorithm)}" for label, algorithm in HASHES)
                lines.add(f"DIST {name} {path.stat().st_size} {sums}\n")
        if lines:
            (ebuilds / "Manifest").write_text("".join(sorted(lines)), encoding="utf-8")
    if unused := sorted(set(distfiles) - used):
        raise Refused(f"no ebuild fetches {', '.join(unused)}")


def merge(tree: Path, extra: Path) -> None:
    """Add the packages of `extra` (CATEGORY/PN/ and profiles/categories) to the overlay `tree`."""
    for entry in sorted(e for e in extra.rglob("*") if not e.is_dir()):
        parts = entry.relative_to(extra).parts
        in_package = parts[0] != "profiles" and len(parts) >= 3
        if not in_package and parts != ("profiles", "categories"):
            raise Refused(f"{extra}: {'/'.join(parts)} is neither in a CATEGORY/PN directory nor "
                          "profiles/categories; a merged tree adds packages only")
    categories = tree / "profiles" / "categories"
    listed = set(categories.read_text(encoding="utf-8").split()) if categories.is_file() else set()
    if (extra / "profiles" / "categories").is_file():
        listed |= set((extra / "profiles" / "categories").read_text(encoding="utf-8").split())
        categories.write_text("".join(f"{c}\n" for c in sorted(listed)), encoding="utf-8")
    for package in sorted(p for p in extra.glob("*/*") if p.is_dir() and p.parent.name != "profiles"):
        name = "/".join(package.relative_to(extra).parts)
        if (tree / name).exists():
            raise Refused(f"{extra}: {name} is in the overlay already")
        if package.parent.name not in listed:
            raise Refused(f"{extra}: {name}: category {package.parent.name} is in no profiles/categories")
        shutil.copytree(package, tree / name, symlinks=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="overlay.py")
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("packages", nargs="*", metavar="NAME=SOURCE_DIR")
    parser.add_argument("--merge", action="append", default=[], metavar="TREE")
    parser.add_argument("--archive", action="append", default=[], metavar="FILE=PATH")
    args = parser.parse_intermixed_args(argv)
    os.umask(0o022)  # the modes of what it writes do not depend on the caller's umask
    out_dir = Path(args.out)
    scratch = Path("overlay-work")
    try:
        when = epoch()
        scratch.mkdir()
        (out_dir / "distfiles").mkdir(parents=True)
        made = {}
        for spec in args.packages:
            name, sep, directory = spec.partition("=")
            if not sep:
                raise Refused(f"{spec!r} is not NAME=SOURCE_DIR")
            path = distfile(name, Path(directory), out_dir / "distfiles", scratch, when)
            made[path.name] = path
        for spec in args.archive:
            name, sep, file = spec.partition("=")
            if not sep or "/" in name or not Path(file).is_file():
                raise Refused(f"--archive {spec!r}: expected FILE=PATH, PATH an archive (a stage input)")
            shutil.copyfile(file, out_dir / "distfiles" / name)
            made[name] = out_dir / "distfiles" / name
        tree = scratch / "tree" / "mlos-overlay"
        shutil.copytree(args.source, tree, symlinks=True)
        for extra in args.merge:
            merge(tree, Path(extra))
        manifests(tree, made)
        write_tar_gz(tree.parent, out_dir / "mlos-overlay.tar.gz", scratch, when, all_root=True)
        shutil.copytree(tree, out_dir / "mlos-overlay", symlinks=True)
    except Refused as err:
        print(f"overlay.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
