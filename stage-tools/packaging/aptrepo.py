"""Build an unsigned APT repository from .debs, deterministically.

Runs inside the sandbox with Debian's python3 and python3-debian only, as a stage command:

    python3 /in/tools/aptrepo.py --out /out/repo DEB_OR_DIR...

Settings come from the stage's environment (recipes/repository.toml): MLOS_APT_SUITE,
MLOS_APT_CODENAME, MLOS_APT_ORIGIN, MLOS_APT_LABEL, MLOS_APT_DESCRIPTION, MLOS_APT_COMPONENT
(main) and MLOS_APT_ARCHITECTURES (amd64). Writes pool/COMPONENT/P/PACKAGE/*.deb and
dists/SUITE/{Release, COMPONENT/binary-ARCH/{Packages,Packages.gz,Packages.xz,Release}}:
stanzas sorted, Date from SOURCE_DATE_EPOCH, compressed indices without timestamps or
names. Signing (InRelease, Release.gpg) happens outside the sandbox, on this output.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import lzma
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from debbuild import gzip_n  # beside this script: Python puts its folder first on sys.path
from debian.deb822 import Deb822, Packages, Release
from debian.debfile import DebFile

# The order dpkg-scanpackages writes fields in.
STANZA_ORDER = ("Package", "Source", "Version", "Installed-Size", "Maintainer", "Architecture",
                "Pre-Depends", "Depends", "Recommends", "Suggests", "Conflicts", "Breaks",
                "Replaces", "Provides", "Section", "Priority", "Multi-Arch", "Homepage",
                "Description", "Filename", "Size", "MD5sum", "SHA256")


class RepositoryError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    suite: str
    codename: str
    origin: str
    label: str
    description: str
    component: str
    architectures: tuple[str, ...]
    date: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        missing = [k for k in ("MLOS_APT_SUITE", "MLOS_APT_CODENAME", "MLOS_APT_ORIGIN", "MLOS_APT_LABEL")
                   if not env.get(k)]
        if missing:
            raise RepositoryError(f"the stage's env must set {', '.join(missing)} (recipes/repository.toml)")
        epoch = int(env.get("SOURCE_DATE_EPOCH", "0"))
        return cls(suite=env["MLOS_APT_SUITE"], codename=env["MLOS_APT_CODENAME"],
                   origin=env["MLOS_APT_ORIGIN"], label=env["MLOS_APT_LABEL"],
                   description=env.get("MLOS_APT_DESCRIPTION", env["MLOS_APT_LABEL"]),
                   component=env.get("MLOS_APT_COMPONENT", "main"),
                   architectures=tuple(env.get("MLOS_APT_ARCHITECTURES", "amd64").split()),
                   date=email.utils.formatdate(epoch, usegmt=True).replace("GMT", "UTC"))


def collect(paths: list[Path]) -> list[Path]:
    debs: list[Path] = []
    for path in paths:
        if path.is_dir():
            debs += sorted(path.rglob("*.deb"))
        elif path.suffix == ".deb":
            debs.append(path)
        else:
            raise RepositoryError(f"{path}: not a .deb or a directory of .debs")
    if not debs:
        raise RepositoryError(f"no .deb found in {', '.join(map(str, paths))}")
    return debs


def read_control(deb: Path) -> Deb822:
    try:
        return DebFile(str(deb)).debcontrol()
    except Exception as e:  # python-debian raises several kinds for a broken archive
        raise RepositoryError(f"{deb}: not a readable .deb ({e})") from None


def stanza(control: Deb822, data: bytes, pool_path: str) -> Packages:
    fields = dict(control)
    fields.update({"Filename": pool_path, "Size": str(len(data)),
                   "MD5sum": hashlib.md5(data).hexdigest(), "SHA256": hashlib.sha256(data).hexdigest()})
    out = Packages()
    for key in [*STANZA_ORDER, *sorted(set(fields) - set(STANZA_ORDER))]:
        if key in fields:
            out[key] = fields[key]
    return out


def pool_path(component: str, control: Deb822, filename: str) -> str:
    source = control.get("Source", control["Package"]).split()[0]
    prefix = source[:4] if source.startswith("lib") else source[0]
    return f"pool/{component}/{prefix}/{source}/{filename}"


def build(debs: list[Path], out: Path, settings: Settings) -> None:
    if out.exists():
        raise RepositoryError(f"{out} exists; the repository is written to a fresh directory")
    stanzas: dict[tuple[str, str, str], Packages] = {}
    for deb in debs:
        control = read_control(deb)
        arch = control["Architecture"]
        if arch != "all" and arch not in settings.architectures:
            raise RepositoryError(f"{deb}: architecture {arch} is not one of "
                                  f"{' '.join(settings.architectures)}")
        path = pool_path(settings.component, control, deb.name)
        key = (control["Package"], control["Version"], arch)
        if key in stanzas:
            raise RepositoryError(f"{deb}: {key[0]} {key[1]} ({arch}) is given twice")
        stanzas[key] = stanza(control, deb.read_bytes(), path)
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, out / path)
    dist = out / "dists" / settings.suite
    indices: list[Path] = []
    for arch in settings.architectures:
        binary = dist / settings.component / f"binary-{arch}"
        binary.mkdir(parents=True)
        text = "\n".join(s.dump() for k, s in sorted(stanzas.items()) if k[2] in (arch, "all")).encode()
        (binary / "Packages").write_bytes(text)
        (binary / "Packages.gz").write_bytes(gzip_n(text))
        (binary / "Packages.xz").write_bytes(lzma.compress(text, format=lzma.FORMAT_XZ,
                                                           check=lzma.CHECK_CRC64, preset=6))
        release = Release()
        for k, v in (("Archive", settings.suite), ("Origin", settings.origin), ("Label", settings.label),
                     ("Component", settings.component), ("Architecture", arch)):
            release[k] = v
        (binary / "Release").write_text(release.dump())
        indices += [binary / n for n in ("Packages", "Packages.gz", "Packages.xz", "Release")]
    release = Release()
    for k, v in (("Origin", settings.origin), ("Label", settings.label), ("Suite", settings.suite),
                 ("Codename", settings.codename), ("Date", settings.date),
                 ("Architectures", " ".join(settings.architectures)), ("Components", settings.component),
                 ("Description", settings.description)):
        release[k] = v
    checksums = [{"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": str(p.stat().st_size),
                  "name": p.relative_to(dist).as_posix()} for p in indices]
    release["SHA256"] = checksums  # type: ignore[assignment]  # python-debian takes the list
    (dist / "Release").write_text(release.dump())
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    for entry in [out, *out.rglob("*")]:  # whatever the umask and the clock
        os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
        os.utime(entry, (epoch, epoch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("debs", type=Path, nargs="+", help=".deb files or directories holding them")
    args = parser.parse_args(argv)
    try:
        build(collect(args.debs), args.out, Settings.from_env(dict(os.environ)))
    except RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"repository written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
