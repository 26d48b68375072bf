"""Repackage pinned upstream release archives as .debs, binaries under FHS paths.

Runs inside the sandbox with Debian's python3 and python3-debian only, as a stage command:

    python3 /in/tools/repack.py --sources /in/sources --out /out/debs NAME=url:URL#sha256=HEX...

For each NAME: the archive is the stage input /in/NAME (a tar, optionally gzip/bzip2/xz
compressed) and must have the pinned sha256; the package source /in/sources/NAME is laid out
as for debbuild.py, plus `install`: lines "PATTERN DEST" mapping archive members (glob,
relative to the archive root) to installed paths (DEST ending in / is a directory). Only
regular files are taken; a member with an absolute path or "..", or a pattern that matches
nothing, fails. /usr/share/doc/NAME/upstream.json records the URL and sha256.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import posixpath
import shutil
import sys
import tarfile
from pathlib import Path

import debbuild  # beside this script: Python puts its folder first on sys.path


class RepackError(Exception):
    pass


def parse_spec(arg: str) -> tuple[str, str, str]:
    """NAME=url:URL#sha256=HEX -> (name, url, sha256)."""
    name, sep, spec = arg.partition("=")
    url, sep2, digest = spec.removeprefix("url:").partition("#sha256=")
    if not sep or not spec.startswith("url:") or not sep2 or len(digest) != 64:
        raise RepackError(f"{arg!r}: expected NAME=url:URL#sha256=HEX (the stage input's spec)")
    return name, url, digest


def read_install(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise RepackError(f"{path}: missing; it maps archive members to installed paths")
    rules = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1].startswith("/") or ".." in parts[1].split("/"):
            raise RepackError(f"{path}:{number}: expected 'PATTERN DEST' with DEST relative, e.g. "
                              "'*/bin/tool usr/bin/'")
        rules.append((parts[0], parts[1]))
    return rules


def unpack(archive: Path, rules: list[tuple[str, str]], root: Path) -> None:
    """Copy the archive members that the rules name into root."""
    used = {pattern: 0 for pattern, _ in rules}
    try:
        with tarfile.open(archive) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                name = posixpath.normpath(member.name)
                if name.startswith("/") or name == ".." or name.startswith("../"):
                    raise RepackError(f"{archive}: member {member.name!r} leaves the archive; refused")
                if not member.isfile():
                    continue
                for pattern, dest in rules:
                    if not fnmatch.fnmatchcase(name, pattern):
                        continue
                    used[pattern] += 1
                    target = root / (dest + posixpath.basename(name) if dest.endswith("/") else dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    target.chmod(0o755 if member.mode & 0o111 else 0o644)
    except tarfile.TarError as e:
        raise RepackError(f"{archive}: not a readable tar archive ({e})") from None
    unused = [p for p, n in used.items() if n == 0]
    if unused:
        raise RepackError(f"{archive}: no member matches {', '.join(unused)} "
                          "(see the package's install file)")


def repack(name: str, url: str, digest: str, sources: Path, inputs: Path, out: Path, work: Path,
           profile: str) -> Path:
    archive = inputs / name
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    if actual != digest:
        raise RepackError(f"{archive}: sha256 is {actual}, but the recipe pins {digest}; refused")
    source = sources / name
    staged = work / "sources" / name
    if staged.exists():
        shutil.rmtree(staged)
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns("install"))
    rules = read_install(source / "install")
    unpack(archive, rules, staged / "files")
    doc = staged / "files/usr/share/doc" / name
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "upstream.json").write_text(json.dumps(
        {"archive": posixpath.basename(url), "sha256": digest, "url": url}, indent=2, sort_keys=True) + "\n")
    return debbuild.build(staged, out, profile, work / "debbuild")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True, help="directory of package sources")
    parser.add_argument("--inputs", type=Path, default=Path("/in"), help="where the archives are")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", default=os.environ.get("MLOS_PROFILE", "small"))
    parser.add_argument("specs", nargs="+", help="NAME=url:URL#sha256=HEX")
    args = parser.parse_args(argv)
    try:
        for arg in args.specs:
            name, url, digest = parse_spec(arg)
            deb = repack(name, url, digest, args.sources, args.inputs, args.out, Path.cwd() / "repack",
                         args.profile)
            print(f"built {deb.name} from {url}")
    except (RepackError, debbuild.PackageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
