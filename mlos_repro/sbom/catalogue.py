"""Catalogue an artifact by what it contains, not by the recipe that made it.

The walk follows the artifact's member manifest (verify.manifest: every container we can read,
recursively, with each member's sha256) and reads only the bytes it needs:

- a `.deb` (an ar archive with debian-binary): its control data, copyright file and, for a
  repackaged upstream archive, `usr/share/doc/NAME/upstream.json`;
- a root filesystem (any container holding `var/lib/dpkg/status`): the installed packages,
  their copyright files, the distribution from os-release, and every file that no package's
  `.list` names (flagged as unowned; dpkg's own database is not counted);
- a Linux kernel (a bzImage: `HdrS` at 0x202): its release, from the header;
- an initramfs (a cpio archive with `/init`);
- `.disk/mlos.json`: the product name and version an MLOS image describes itself with;
- a tree made from packages without dpkg (a systemd system extension, an OCI image layer):
  the packages its record names (`usr/share/mlos-repro/packages/NAME/`: the control data,
  the sha256 of the .deb and the paths that came from it, as the `sysext` and `oci` stages
  write them) and every file, each attributed to its package or to the stage that made it.
  A system extension (`usr/lib/extension-release.d/extension-release.NAME`) without its
  record is refused.

A root filesystem found twice (the same squashfs in an ISO and a PXE bundle) is read once:
parts are cached by the container's digest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import posixpath
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from debian.deb822 import Deb822
from debian.debfile import DebFile

from mlos_repro.digest import sha256_bytes
from mlos_repro.errors import StageFailedError
from mlos_repro.inspect.detect import reader_for
from mlos_repro.inspect.layers import ARROW
from mlos_repro.inspect.members import CONTENT_ERRORS, not_this_format

DPKG_STATUS = "var/lib/dpkg/status"
DPKG_DB = "var/lib/dpkg/"
KERNEL_NAMES = ("vmlinuz*", "bzImage*", "vmlinux*")
PRODUCT_FILE = ".disk/mlos.json"
EXTENSION_RELEASE = "usr/lib/extension-release.d/extension-release."
RECORD = "usr/share/mlos-repro/packages/"
LINK_DEPTH = 16



@dataclass
class Package:
    name: str
    version: str
    arch: str
    where: str  # the container it was found in, as a path through the artifact ("" = itself)
    installed: bool  # from a dpkg database; otherwise a .deb file
    source: str = ""
    source_version: str = ""
    maintainer: str = ""
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    distro: str = ""  # os-release ID-VERSION_ID of the root filesystem it is installed in
    distro_id: str = ""
    path: str = ""  # of the .deb, inside `where`
    sha256: str = ""  # of the .deb
    copyright: str | None = None
    upstream: dict[str, Any] | None = None


@dataclass
class File:
    path: str  # inside `where`
    role: str  # kernel, initramfs, unowned
    where: str
    sha256: str = ""
    type: str = "file"
    target: str = ""  # of a symlink
    release: str = ""  # of a kernel
    package: str = ""  # of a system extension's file: the package it came from


@dataclass
class Catalogue:
    packages: list[Package] = field(default_factory=list)
    files: list[File] = field(default_factory=list)
    product: dict[str, Any] = field(default_factory=dict)

    def extend(self, other: Catalogue, prefix: str) -> None:
        for p in other.packages:
            self.packages.append(Package(**{**asdict(p), "where": join(prefix, p.where)}))
        for f in other.files:
            self.files.append(File(**{**asdict(f), "where": join(prefix, f.where)}))

    def to_json(self) -> dict[str, Any]:
        return {"packages": [asdict(p) for p in self.packages], "files": [asdict(f) for f in self.files],
                "product": self.product}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalogue:
        return cls([Package(**p) for p in data["packages"]], [File(**f) for f in data["files"]],
                   data.get("product", {}))


# Parts of a catalogue by container digest (get, put); default: remember nothing.
Memo = tuple[Callable[[str], dict[str, Any] | None], Callable[[str, dict[str, Any]], None]]


def catalogue(path: Path, name: str, listing: dict[str, Any], work: Path,
              memo: Memo | None = None) -> Catalogue:
    """The catalogue of the artifact at path (a file or directory) named `name`, whose member
    manifest is `listing`."""
    work.mkdir(parents=True, exist_ok=True)
    walker = _Walker(_Extractor(path, work), memo or (lambda k: None, lambda k, v: None))
    cat = Catalogue()
    walker.node(listing["root"], (), name, listing["sha256"], cat)
    return cat


def join(*parts: str) -> str:
    return ARROW.join(p for p in parts if p)


def _norm(name: str) -> str:
    return name.removeprefix("./").lstrip("/").rstrip("/")


def kernel_release(head: bytes) -> str:
    """The release of an x86 bzImage from its setup header ("" if it is not one)."""
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return ""
    offset = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
    text = head[offset:offset + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split()[0] if text.strip() else ""


class _Extractor:
    """Files inside the artifact by their chain of member names, extracted once, on demand."""

    def __init__(self, root: Path, work: Path) -> None:
        self.work = work
        self._files: dict[tuple[str, ...], Path | None] = {(): root}

    def _scratch(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="cat-", dir=self.work))

    def file(self, chain: tuple[str, ...]) -> Path | None:
        if chain not in self._files:
            parent = self.file(chain[:-1])
            found: Path | None = None
            if parent is not None and parent.is_dir():
                candidate = parent / chain[-1]
                found = candidate if candidate.is_file() else None
            elif parent is not None:
                try:
                    reader = reader_for(parent)
                    if reader is not None:
                        found = reader.extract(parent, {chain[-1]}, self._scratch()).get(chain[-1])
                except CONTENT_ERRORS as e:
                    if not not_this_format(e):
                        raise
            self._files[chain] = found
        return self._files[chain]

    def read(self, chain: tuple[str, ...], names: Iterable[str]) -> dict[str, bytes]:
        """Members `names` (as listed) of the container at chain, in one pass."""
        wanted = set(names)
        container = self.file(chain)
        if container is None or not wanted:
            return {}
        if container.is_dir():
            return {n: (container / n).read_bytes() for n in wanted if (container / n).is_file()}
        reader = reader_for(container)
        if reader is None:
            return {}
        scratch = self._scratch()
        try:
            found = reader.extract(container, wanted, scratch)
            return {n: p.read_bytes() for n, p in found.items() if p.is_file()}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class _Walker:
    def __init__(self, extractor: _Extractor, memo: Memo) -> None:
        self.ex = extractor
        self.get, self.put = memo

    def node(self, node: dict[str, Any], chain: tuple[str, ...], name: str, digest: str,
             cat: Catalogue) -> None:
        """Catalogue the member at chain (named `name`, manifest node `node`) into cat."""
        members = node.get("members", [])
        names = {_norm(m["name"]): m for m in members}
        where = join(*chain[:-1])
        if node.get("kind") == "ar" and "debian-binary" in names:
            part = self._cached(digest, lambda: self._deb(chain, digest))
            for p in part.packages:
                p.path = name
            cat.extend(part, where)
            return
        if DPKG_STATUS in names:
            cat.extend(self._cached(digest, lambda: self._rootfs(members, chain)), join(*chain))
            return
        if any(n.startswith((EXTENSION_RELEASE, RECORD)) for n in names):
            cat.extend(self._cached(digest, lambda: self._recorded(members, chain)), join(*chain))
            return
        base = posixpath.basename(name)
        if node.get("kind") is None and any(fnmatch.fnmatch(base, p) for p in KERNEL_NAMES):
            self._kernel(chain, name, digest, where, cat)
        if node.get("kind") == "cpio" and "init" in names:
            cat.files.append(File(name, "initramfs", where, digest))
        if PRODUCT_FILE in names and not cat.product:
            raw = self.ex.read(chain, [names[PRODUCT_FILE]["name"]]).get(names[PRODUCT_FILE]["name"], b"")
            with contextlib.suppress(ValueError):
                product = json.loads(raw)
                if isinstance(product, dict):
                    cat.product = {k: product[k] for k in ("name", "version")
                                   if isinstance(product.get(k), str)}
        for m in members:
            if m["type"] != "file":
                continue
            self.node(m.get("inner") or {"kind": None}, (*chain, m["name"]), m["name"],
                      m.get("sha256", ""), cat)

    def _cached(self, digest: str, make: Callable[[], Catalogue]) -> Catalogue:
        if digest and (hit := self.get(digest)) is not None:
            return Catalogue.from_json(hit)
        part = make()
        if digest:
            self.put(digest, part.to_json())
        return part

    def _kernel(self, chain: tuple[str, ...], name: str, digest: str, where: str, cat: Catalogue) -> None:
        path = self.ex.file(chain)
        if path is None:
            return
        with path.open("rb") as f:
            release = kernel_release(f.read(0x10000))  # the version string is within 64 KiB
        if release:
            cat.files.append(File(name, "kernel", where, digest, release=release))

    def _deb(self, chain: tuple[str, ...], digest: str) -> Catalogue:
        path = self.ex.file(chain)
        part = Catalogue()
        if path is None:
            return part
        deb = DebFile(str(path))
        control = deb.debcontrol()
        package = _package(control, "", installed=False)
        doc = f"usr/share/doc/{package.name}"
        copyright_, upstream = (deb.data.get_content(f"{doc}/{n}") if deb.data.has_file(f"{doc}/{n}")
                                else None for n in ("copyright", "upstream.json"))
        package.sha256 = digest
        package.copyright = _text(copyright_)
        package.upstream = _json(upstream)
        part.packages.append(package)
        return part

    def _rootfs(self, members: list[dict[str, Any]], chain: tuple[str, ...]) -> Catalogue:
        tree = _Tree(members)
        wanted = {DPKG_STATUS, "etc/os-release", "usr/lib/os-release"}
        for path in tree.names:
            if (path.startswith("var/lib/dpkg/info/") and path.endswith(".list")) or \
                    (path.startswith("usr/share/doc/") and path.count("/") == 4
                     and path.endswith(("/copyright", "/upstream.json"))):
                wanted.add(path)
        read = self.ex.read(chain, [tree.original[p] for p in wanted if p in tree.original])
        content = {_norm(k): v for k, v in read.items()}
        os_release = _os_release(content.get(tree.resolve("etc/os-release"), b"")
                                 or content.get("usr/lib/os-release", b""))
        distro_id = os_release.get("ID", "")
        distro = "-".join(x for x in (distro_id, os_release.get("VERSION_ID", "")) if x)
        part = Catalogue()
        owned: set[str] = set()
        for para in Deb822.iter_paragraphs(content.get(DPKG_STATUS, b"").decode("utf-8", "replace")):
            if para.get("Status", "").split()[-1:] != ["installed"]:
                continue
            package = _package(para, "", installed=True)
            package.distro, package.distro_id = distro, distro_id
            doc = f"usr/share/doc/{package.name}"
            package.copyright = _text(content.get(tree.resolve(f"{doc}/copyright")))
            package.upstream = _json(content.get(tree.resolve(f"{doc}/upstream.json")))
            for list_name in (f"{package.name}:{package.arch}.list", f"{package.name}.list"):
                listed = content.get(f"var/lib/dpkg/info/{list_name}")
                if listed is not None:
                    for line in listed.decode("utf-8", "replace").splitlines():
                        if _norm(line):
                            owned.add(tree.resolve(_norm(line), final=False))
                    break
            part.packages.append(package)
        if not part.packages:
            # A root filesystem whose packages cannot be read: an SBOM listing none would pass
            # every check and say nothing true.
            raise StageFailedError(f"{join(*chain) or 'the output'}: {DPKG_STATUS} lists no installed "
                                   "package (empty, unreadable or truncated)",
                                   "a root filesystem's package database must survive into the image")
        for m in members:
            path = _norm(m["name"])
            if m["type"] in ("file", "symlink", "hardlink") and path not in owned \
                    and not path.startswith(DPKG_DB):
                # A symlink is identified by its target (the sha256 of the target's name), a
                # hard link by the file it links to.
                digest = m.get("sha256") or (sha256_bytes(m.get("target", "").encode())
                                             if m["type"] == "symlink" else
                                             tree.sha256.get(_norm(m.get("target", "")), ""))
                part.files.append(File(path, "unowned", "", digest, m["type"], m.get("target", "")))
        return part


    def _recorded(self, members: list[dict[str, Any]], chain: tuple[str, ...]) -> Catalogue:
        """A tree whose record names the packages it holds files of (a system extension is
        named after its package and must have the record), its files attributed to them or
        to the stage."""
        tree = _Tree(members)
        extensions = {n.removeprefix(EXTENSION_RELEASE) for n in tree.names
                      if n.startswith(EXTENSION_RELEASE)}
        recorded = {n.removeprefix(RECORD).split("/", 1)[0] for n in tree.names
                    if n.startswith(RECORD) and n.count("/") == RECORD.count("/") + 1}
        names = sorted(extensions | recorded)
        wanted = {n: {"control": f"{RECORD}{n}/control", "deb": f"{RECORD}{n}/deb.sha256",
                      "list": f"{RECORD}{n}/list",
                      "copyright": tree.resolve(f"usr/share/doc/{n}/copyright")} for n in names}
        paths = {p for w in wanted.values() for p in w.values() if p in tree.original}
        content = {_norm(k): v for k, v in self.ex.read(chain, [tree.original[p] for p in paths]).items()}
        part = Catalogue()
        came_from: dict[str, str] = {}
        for name, w in wanted.items():
            if w["control"] not in content or w["list"] not in content:
                raise StageFailedError(f"{join(*chain) or 'the output'}: {name} has no record "
                                       f"{RECORD}{name}/control and list",
                                       "make system extensions and image layers with the stage tools that "
                                       "record the package each file came from (stage-tools/flatcar)")
            package = _package(Deb822(content[w["control"]].decode("utf-8", "replace")), "", installed=True)
            sha256, _, deb = content.get(w["deb"], b"").decode("utf-8", "replace").strip().partition("  ")
            package.sha256, package.path = sha256, deb
            package.copyright = _text(content.get(w["copyright"]))
            part.packages.append(package)
            for line in content[w["list"]].decode("utf-8", "replace").splitlines():
                if _norm(line):
                    came_from[_norm(line)] = package.name
        for m in members:
            path = _norm(m["name"])
            if m["type"] in ("file", "symlink", "hardlink"):
                digest = m.get("sha256") or (sha256_bytes(m.get("target", "").encode())
                                             if m["type"] == "symlink" else
                                             tree.sha256.get(_norm(m.get("target", "")), ""))
                part.files.append(File(path, "payload" if path in came_from else "generated", "", digest,
                                       m["type"], m.get("target", ""), package=came_from.get(path, "")))
        return part


def _package(control: Any, where: str, *, installed: bool) -> Package:
    source, _, rest = control.get("Source", "").partition(" ")
    version = control.get("Version", "")
    return Package(
        name=control.get("Package", ""), version=version, arch=control.get("Architecture", ""),
        where=where, installed=installed, source=source or control.get("Package", ""),
        source_version=rest.strip("() ") or version, maintainer=control.get("Maintainer", ""),
        depends=control.get("Depends", ""), pre_depends=control.get("Pre-Depends", ""),
        provides=control.get("Provides", ""))


def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", "replace") if data is not None else None


def _json(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _os_release(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip('"')
    return out


class _Tree:
    """A file system's listing: names as listed, and paths resolved through its symlinks."""

    def __init__(self, members: list[dict[str, Any]]) -> None:
        self.original = {_norm(m["name"]): m["name"] for m in members}
        self.names = set(self.original)
        self.links = {_norm(m["name"]): m.get("target", "") for m in members if m["type"] == "symlink"}
        self.sha256 = {_norm(m["name"]): m.get("sha256", "") for m in members if m["type"] == "file"}
        self._dirs: dict[str, str] = {}

    def resolve(self, path: str, final: bool = True) -> str:
        """path with every symlink on the way resolved (the last one too, if final)."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        current = ""
        for i, part in enumerate(parts):
            candidate = posixpath.join(current, part) if current else part
            last = i == len(parts) - 1
            if not last or final:
                candidate = self._follow(candidate)
            current = candidate
        return current

    def _follow(self, path: str) -> str:
        seen = 0
        while path in self.links and seen < LINK_DEPTH:
            target = self.links[path]
            base = "" if target.startswith("/") else posixpath.dirname(path)
            path = posixpath.normpath(posixpath.join(base, target.lstrip("/"))).lstrip("/")
            if path.startswith(".."):
                return path
            # A link to a path that itself passes through links.
            head, _, tail = path.rpartition("/")
            if head and head in self._dirs:
                path = f"{self._dirs[head]}/{tail}"
            elif head:
                resolved = self.resolve(head)
                self._dirs[head] = resolved
                path = f"{resolved}/{tail}"
            seen += 1
        return path
