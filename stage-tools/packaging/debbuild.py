"""Build a binary .deb from a package source directory, bit for bit reproducibly.

Runs inside the sandbox with Debian's python3 and python3-debian only (no other mlos_repro
module), as a stage command:

    python3 /in/tools/debbuild.py [--profile NAME] SOURCE_DIR OUT_DIR

A package source directory (recipes/packages/NAME/) holds:

    control              the binary package's control fields (deb822); required
    control.PROFILE      fields that replace those of `control` in that profile
    copyright, changelog installed as /usr/share/doc/NAME/copyright and changelog.gz
    files/               the installed tree; everything under files/etc/ is a conffile;
                         manual pages (usr/share/man/*/*.N) are compressed
    preinst postinst prerm postrm    maintainer scripts

Reproducible: every mtime is SOURCE_DATE_EPOCH, owners are root, modes are 0755 for
directories and executables and 0644 otherwise, the changelog is gzip -9n, and dpkg-deb
writes sorted members with SOURCE_DATE_EPOCH timestamps.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from debian.deb822 import Deb822

REQUIRED = ("Package", "Version", "Architecture", "Maintainer", "Description")
# The order dpkg-gencontrol writes binary control fields in.
FIELD_ORDER = ("Package", "Source", "Version", "Architecture", "Maintainer", "Installed-Size",
               "Pre-Depends", "Depends", "Recommends", "Suggests", "Breaks", "Conflicts",
               "Replaces", "Provides", "Section", "Priority", "Multi-Arch", "Homepage",
               "Description")
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
KNOWN = {"control", "copyright", "changelog", "files", *SCRIPTS}


class PackageError(Exception):
    """A problem with the package source; the message names the file."""


def read_control(source: Path, profile: str) -> Deb822:
    path = source / "control"
    if not path.is_file():
        raise PackageError(f"{path}: missing; a package needs its control fields")
    fields = _parse(path)
    override = source / f"control.{profile}"
    if override.is_file():
        for key, value in _parse(override).items():
            fields[key] = value
    missing = [f for f in REQUIRED if not fields.get(f, "").strip()]
    if missing:
        raise PackageError(f"{path}: missing field(s) {', '.join(missing)}")
    if fields["Package"] != source.name:
        raise PackageError(f"{path}: Package is {fields['Package']!r} but the directory is "
                           f"{source.name!r}; name the directory after the package")
    return fields


def _parse(path: Path) -> Deb822:
    paragraphs = list(Deb822.iter_paragraphs(path.read_text(encoding="utf-8")))
    if len(paragraphs) != 1:
        raise PackageError(f"{path}: expected one paragraph of control fields, found {len(paragraphs)}")
    return paragraphs[0]


def gzip_n(data: bytes) -> bytes:
    """gzip -9n: no file name, no timestamp."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def stage_tree(source: Path, root: Path, name: str) -> None:
    """Copy files/ and the docs into root, with normalised modes."""
    if (source / "files").is_dir():
        shutil.copytree(source / "files", root, symlinks=True, dirs_exist_ok=True)
    doc = root / "usr/share/doc" / name
    if not (source / "copyright").is_file():
        raise PackageError(f"{source / 'copyright'}: missing; Debian policy requires a copyright file")
    doc.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "copyright", doc / "copyright")
    if (source / "changelog").is_file():
        (doc / "changelog.gz").write_bytes(gzip_n((source / "changelog").read_bytes()))
    # Manual pages are installed compressed (Debian policy 12.1), as dh_compress does.
    for page in sorted((root / "usr/share/man").rglob("*.[1-9]")):
        if page.is_file() and not page.is_symlink():
            page.with_name(page.name + ".gz").write_bytes(gzip_n(page.read_bytes()))
            page.unlink()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        in_etc = path.relative_to(root).parts[:1] == ("etc",)
        executable = path.is_dir() or (path.stat().st_mode & 0o111 and not in_etc)
        os.chmod(path, 0o755 if executable else 0o644)


def installed_size(root: Path) -> int:
    """In KiB, as dpkg-gencontrol counts: each file rounded up, 1 for each directory or link."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += (path.stat().st_size + 1023) // 1024
        else:
            total += 1
    return total


def write_metadata(source: Path, root: Path, fields: Deb822) -> None:
    meta = root / "DEBIAN"
    meta.mkdir()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.relative_to(root).parts[0] != "DEBIAN")
    fields["Installed-Size"] = str(installed_size(root) - 1)  # not DEBIAN/ itself
    ordered = Deb822()
    for key in FIELD_ORDER:
        if key in fields:
            ordered[key] = fields[key]
    for key in fields:
        if key not in ordered:
            ordered[key] = fields[key]
    (meta / "control").write_text(ordered.dump(), encoding="utf-8")
    (meta / "md5sums").write_text("".join(
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n" for p in files))
    conffiles = [p for p in files if p.relative_to(root).parts[0] == "etc"]
    if conffiles:
        (meta / "conffiles").write_text("".join(f"/{p.relative_to(root).as_posix()}\n" for p in conffiles))
    for script in SCRIPTS:
        if (source / script).is_file():
            shutil.copyfile(source / script, meta / script)
    for path in [meta, *meta.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() or path.name in SCRIPTS else 0o644)


def build(source: Path, out: Path, profile: str, work: Path) -> Path:
    unknown = sorted(p.name for p in source.iterdir()
                     if p.name not in KNOWN and not p.name.startswith("control."))
    if unknown:
        raise PackageError(f"{source}: unknown entries {', '.join(unknown)} (expected "
                           f"{', '.join(sorted(KNOWN))} or control.PROFILE)")
    fields = read_control(source, profile)
    root = work / fields["Package"]
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    stage_tree(source, root, fields["Package"])
    write_metadata(source, root, fields)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    version = fields["Version"].split(":", 1)[-1]
    deb = out / f"{fields['Package']}_{version}_{fields['Architecture']}.deb"
    out.mkdir(parents=True, exist_ok=True)
    # One compressor thread: threaded xz output depends on the number of threads.
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z9", "--threads-max=1", "--build",
                    str(root), str(deb)], check=True, stdout=subprocess.DEVNULL)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("MLOS_PROFILE", "small"))
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch directory [default: ./debbuild, in the stage's working directory]")
    parser.add_argument("--each", action="store_true",
                        help="the sources are directories of package source directories")
    parser.add_argument("sources", type=Path, nargs="+", help="package source directories")
    parser.add_argument("out", type=Path, help="where the .debs are written")
    args = parser.parse_args(argv)
    sources = args.sources
    if args.each:
        sources = [d for parent in args.sources for d in sorted(parent.iterdir()) if d.is_dir()]
    work = args.work or Path.cwd() / "debbuild"
    try:
        for source in sources:
            deb = build(source, args.out, args.profile, work)
            print(f"built {deb.name}")
    except PackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
