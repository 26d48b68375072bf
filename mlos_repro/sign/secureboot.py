"""Secure Boot: the db key that signs MLOS Linux's EFI binaries, signing them and checking them.

    DIR/secureboot/db.key   RSA 2048 private key (PKCS#8 PEM, 0600): sbsign's --key
    DIR/secureboot/db.crt   its self-signed X.509 certificate (PEM): sbsign's and sbverify's --cert
    DIR/secureboot/db.cer   the same certificate in DER, as firmware enrols it in its db
                            (virt-fw-vars --add-db, KeyTool, the firmware's own menu)

`keys init` makes them; without them, `release` signs with the development db key, made on first
use under the user's data directory and named "not for release" in its certificate.

Signing happens outside the sandbox, after the build, like the APT repository's signatures:
sbsign adds an Authenticode signature to the attested unsigned image. Removing it again
(sbattach --remove) gives back the attested bytes exactly, because the uki stage pads its
images as sbsign would (stage-tools/efi/pefix.py): that is what `verify` checks, with the
signature itself checked by sbverify against the release's certificate.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mlos_repro import run
from mlos_repro.errors import BadInputError, SigningError
from mlos_repro.executor import BuildResult
from mlos_repro.inspect import detect, gpt, qcow2
from mlos_repro.inspect.fat import FatReader
from mlos_repro.inspect.members import CHUNK, copy_range
from mlos_repro.recipe.model import Stage
from mlos_repro.sign.gpg import data_home
from mlos_repro.store import OutputKind, Store

log = logging.getLogger(__name__)

DIRECTORY = "secureboot"
KEY, CERT, DER = "db.key", "db.crt", "db.cer"
FACTS = "signing.json"
DEV_NAME = "MLOS Linux development Secure Boot db key (not for release)"
DEFAULT_NAME = "MLOS Linux Secure Boot db key"
# Firmware does not check validity; tools that do should not refuse a deployment's key early.
VALID_DAYS = 3650


@dataclass(frozen=True)
class DbKey:
    """A Secure Boot db key: the private key and its certificate, PEM files."""

    key: Path
    cert: Path
    development: bool = False

    def der_bytes(self) -> bytes:
        """The certificate in DER, as firmware enrols it."""
        return der(certificate(self.cert.read_bytes(), str(self.cert)))

    def facts(self) -> dict[str, Any]:
        """What a release records of it (ARTIFACTS/STAGE/secureboot/signing.json)."""
        cert = certificate(self.cert.read_bytes(), str(self.cert))
        return {"subject": cert.subject.rfc4514_string(), "development_key": self.development,
                "certificate_sha256": hashlib.sha256(der(cert)).hexdigest(),
                "certificate": CERT, "certificate_der": DER}


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def certificate(data: bytes, where: str) -> x509.Certificate:
    """An X.509 certificate from PEM or DER bytes; ValueError naming `where` otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ValueError(f"{where}: not an X.509 certificate (PEM or DER): {e}") from None


def generate(directory: Path, common_name: str) -> DbKey:
    """A new db key and self-signed certificate in directory/ (made 0700; the key 0600, never
    overwritten)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    code_signing = x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.3")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(code_signing, critical=False)
            .sign(private, hashes.SHA256()))
    fd = os.open(directory / KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    (directory / CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / DER).write_bytes(der(cert))
    return DbKey(directory / KEY, directory / CERT)


def load(directory: Path) -> DbKey | None:
    """The db key of a `keys init` directory; None when it has none (made before Secure Boot)."""
    where = directory / DIRECTORY
    if not where.exists():
        return None
    for name in (KEY, CERT):
        if not (where / name).is_file():
            raise SigningError(f"{where / name}: missing; the Secure Boot db key needs {KEY} and {CERT}",
                               f"restore it, or move {where} away to sign with the development key")
    return DbKey(where / KEY, where / CERT)


def development_key() -> DbKey:
    """The development db key, made on first use under the user's data directory."""
    where = data_home() / "dev-secureboot"
    where.parent.mkdir(parents=True, exist_ok=True)
    with open(where.parent / ".dev-secureboot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / KEY).is_file():
            shutil.rmtree(where, ignore_errors=True)
            generate(where, DEV_NAME)
    return DbKey(where / KEY, where / CERT, development=True)


def sign(key: DbKey, image: Path, what: str) -> bytes:
    """The image with sbsign's Authenticode signature (the bytes differ on every run: it signs
    a time)."""
    with tempfile.TemporaryDirectory(prefix="mlos-sbsign-") as tmp:
        out = Path(tmp) / "signed.efi"
        run.run_or_raise(["sbsign", "--key", key.key, "--cert", key.cert, "--output", out, image],
                         SigningError, f"sbsign could not sign {what}",
                         hint=f"is it a PE/EFI image, and are {key.key} and {key.cert} a pair?")
        return out.read_bytes()


def signature_problem(cert: Path, signed: Path) -> str | None:
    """None when sbverify finds a signature on `signed` that `cert` verifies; else what it said."""
    result = run.run(["sbverify", "--cert", cert, signed], check=False, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    if result.returncode == 0:
        return None
    said = (result.stderr + result.stdout).decode(errors="replace").strip().splitlines()
    return said[-1] if said else f"sbverify exited {result.returncode}"


def without_signature(signed: Path) -> bytes | None:
    """The image with its signatures removed (sbattach --remove, on a copy); None when sbattach
    refuses it (no signature, or not a PE image)."""
    with tempfile.TemporaryDirectory(prefix="mlos-sbattach-") as tmp:
        copy = Path(tmp) / "image.efi"
        shutil.copyfile(signed, copy)
        result = run.run(["sbattach", "--remove", copy], check=False, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        return copy.read_bytes() if result.returncode == 0 else None


def efi_outputs(result: BuildResult) -> list[tuple[str, str, str]]:
    """(stage, output, blob sha256) of every file output named *.efi: what Secure Boot signs."""
    found = []
    for name, res in sorted(result.stages.items()):
        for output, digest in sorted(res.entry.outputs.items()):
            if output.endswith(".efi") and res.entry.kinds[output] != OutputKind.TREE:
                found.append((name, output, digest.removeprefix("sha256:")))
    return found


def sign_images(store: Store, result: BuildResult, db: DbKey) -> dict[str, bytes]:
    """The signed images and what checks them, to add under OUT/ by path; {} when the build has
    no EFI image. Per stage: STAGE/secureboot/OUTPUT (signed), db.crt, db.cer, signing.json."""
    found = efi_outputs(result)
    taken = sorted({s for s, _, _ in found if DIRECTORY in result.stages[s].entry.outputs})
    if taken:
        raise BadInputError(f"stage {taken[0]!r} has an output named {DIRECTORY!r}: the release writes "
                            "the signed EFI images there", "rename that output in the stage's recipe")
    if found and db.development:
        log.warning("signing the EFI images with the development Secure Boot db key %s (not for release)",
                    db.cert)
    beside = {CERT: db.cert.read_bytes(), DER: db.der_bytes(),
              FACTS: json.dumps(db.facts(), indent=2, sort_keys=True).encode() + b"\n"}
    extras: dict[str, bytes] = {}
    for stage, output, blob in found:
        extras[f"{stage}/{DIRECTORY}/{output}"] = sign(db, store.blob_path(blob), f"{stage}/{output}")
        extras |= {f"{stage}/{DIRECTORY}/{name}": data for name, data in beside.items()}
    return extras


# -- Signed media: disk and ISO images that boot a signed EFI image -----------------------------
#
# A stage's `secureboot` table (recipes/image.toml) names, for an image output, the EFI image
# it boots. `release` copies the attested image, with the signed EFI image as its EFI system
# partition's removable-media boot loader, into STAGE/secureboot/OUTPUT, and records what it
# did in STAGE/secureboot/media.json. Nothing else changes: `verify` checks the copy against
# the attested image byte for byte outside that partition and file for file inside it.

LOADER = "EFI/BOOT/BOOTX64.EFI"
MEDIA = "media.json"
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
MEDIA_SHAPE = '{"media": {IMAGE: {"loader": …, "efi": …}}}'


def media_images(media: Any) -> dict[str, dict[str, Any]] | None:
    """What a parsed media.json says of each image, by output name; None unless it has
    MEDIA_SHAPE."""
    images = media.get("media") if isinstance(media, dict) else None
    if not isinstance(images, dict) or not all(isinstance(v, dict) for v in images.values()):
        return None
    return images


def is_qcow2(image: Path) -> bool:
    return isinstance(detect.image_reader_for(image), qcow2.QcowReader)


def raw_image(image: Path, work: Path) -> Path:
    """The raw disk an image is: itself, or for a qcow2 image the disk it holds (under work/).
    ValueError when a qcow2 image is refused (inspect/qcow2.py)."""
    if not is_qcow2(image):
        return image
    work.mkdir(parents=True, exist_ok=True)
    return qcow2.raw_disk(image, work / f"{image.name}.raw")


def esp_extent(raw: Path) -> tuple[int, int]:
    """(offset, length) in bytes of the one EFI system partition in a raw disk or hybrid ISO
    image's GPT; ValueError when there is not exactly one."""
    _, parts = gpt.partitions(raw)
    esps = [p for p in parts if p.type_guid == ESP_TYPE]
    if len(esps) != 1:
        raise ValueError(f"its GPT has {len(esps)} EFI system partitions, not one")
    return esps[0].extent


def esp_files(raw: Path, work: Path) -> dict[str, tuple[str, int, str]]:
    """What the image's EFI system partition holds: upper-cased path -> (kind, size, sha256),
    with the volume serial and label as meta members. ValueError when it is not a FAT file system."""
    offset, length = esp_extent(raw)
    work.mkdir(parents=True, exist_ok=True)
    esp = work / f"{raw.name}.esp"
    copy_range(raw, esp, offset, length)
    try:
        return {m.name.upper(): (m.type, m.size, m.sha256) for m in FatReader().members(esp)}
    finally:
        esp.unlink()


def media(stages: Mapping[str, Stage], result: BuildResult) -> list[tuple[str, str, str]]:
    """(stage, image output, "STAGE/NAME.efi") of every image the release makes a signed copy of."""
    return [(name, output, efi) for name in sorted(result.stages)
            for output, efi in stages[name].secureboot]


def sign_media(stages: Mapping[str, Stage], result: BuildResult, artifacts: Path, sde: int) -> list[str]:
    """Each image a stage's `secureboot` table names, copied with its signed EFI image (already
    under artifacts/, from sign_images) as the boot loader: the new files' paths under artifacts/."""
    made: dict[str, dict[str, Any]] = {}
    for stage, output, efi in media(stages, result):
        if DIRECTORY in result.stages[stage].entry.outputs:
            raise BadInputError(f"stage {stage!r} has an output named {DIRECTORY!r}: the release writes "
                                "the Secure Boot images there", "rename that output in the stage's recipe")
        efi_stage, _, efi_name = efi.partition("/")
        signed = f"{efi_stage}/{DIRECTORY}/{efi_name}"
        if not (artifacts / signed).is_file():
            log.warning("%s/%s gets no Secure Boot copy: this release does not hold %s (release stage %r "
                        "too)", stage, output, efi, efi_stage)
            continue
        _sign_medium(artifacts / stage / output, artifacts / signed, artifacts / stage / DIRECTORY / output,
                     sde, f"{stage}/{output}")
        made.setdefault(stage, {})[output] = {"loader": LOADER, "efi": signed}
    names = []
    for stage, images in made.items():
        (artifacts / stage / DIRECTORY / MEDIA).write_text(json.dumps({"media": images}, indent=2,
                                                                      sort_keys=True) + "\n")
        names += [f"{stage}/{DIRECTORY}/{n}" for n in (*images, MEDIA)]
    return sorted(names)


def _sign_medium(image: Path, efi: Path, dest: Path, sde: int, what: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlos-medium-", dir=dest.parent) as tmp:
        work = Path(tmp)
        try:
            raw = raw_image(image, work)
            offset, _ = esp_extent(raw)
            if LOADER not in esp_files(raw, work):
                raise ValueError(f"its EFI system partition has no {LOADER}")
        except ValueError as e:
            raise BadInputError(f"{what}: cannot take a Secure Boot boot loader: {e}",
                                f"drop {what.partition('/')[2]!r} from the stage's secureboot table, or give "
                                f"the image an EFI system partition with {LOADER}") from None
        copy = work / "signed.raw"
        shutil.copyfile(raw, copy)
        # mtools dates what it writes from SOURCE_DATE_EPOCH, in UTC (FAT stores local time).
        done = run.run(["mcopy", "-o", "-i", f"{copy}@@{offset}", efi, f"::/{LOADER}"], check=False,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env={**os.environ, "TZ": "UTC", "SOURCE_DATE_EPOCH": str(sde)})
        if done.returncode != 0:
            said = done.stdout.decode(errors="replace").strip()
            raise BadInputError(f"{what}: mcopy could not write the signed {efi.name} ({efi.stat().st_size} "
                                f"bytes) as its {LOADER}: {said}",
                                "if the EFI system partition is full, make it larger in the stage's script")
        if raw is not image:  # a qcow2 image: the signed copy in the same format
            run.run_or_raise(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", copy,
                              work / "signed.qcow2"], SigningError, f"qemu-img could not convert {what}'s "
                             "signed copy to qcow2")
            copy = work / "signed.qcow2"
        copy.chmod(0o644)
        copy.rename(dest)


def medium_problem(attested: Path, signed: Path, loader_sha256: str, work: Path) -> str | None:
    """None when `signed` is the attested image with nothing changed but its EFI system
    partition's boot loader, which is the file whose sha256 is loader_sha256; else what differs."""
    if is_qcow2(attested) != is_qcow2(signed):
        return "not in the attested image's format"
    try:
        a, s = raw_image(attested, work / "attested"), raw_image(signed, work / "signed")
    except ValueError as e:
        return f"not a readable qcow2 image ({e})"
    if a.stat().st_size != s.stat().st_size:
        return f"{s.stat().st_size} bytes, the attested image {a.stat().st_size}"
    offset, length = esp_extent(a)
    at = _first_difference(a, s, [(0, offset), (offset + length, a.stat().st_size)])
    if at is not None:
        return f"differs from the attested image at byte {at}, outside its EFI system partition"
    before = esp_files(a, work)
    try:
        after = esp_files(s, work)
    except ValueError as e:
        return f"its EFI system partition is not a FAT file system any more ({e})"
    loader = after.get(LOADER)
    if loader is None or loader[2] != loader_sha256:
        return f"its {LOADER} is not the signed EFI image media.json names"
    changed = sorted(n for n in set(before) | set(after) if n != LOADER and before.get(n) != after.get(n))
    if changed:
        return f"its EFI system partition's {changed[0]} is not the attested image's"
    return None


def _first_difference(a: Path, b: Path, ranges: list[tuple[int, int]]) -> int | None:
    """The first offset in [start, end) ranges where files a and b differ."""
    with a.open("rb") as fa, b.open("rb") as fb:
        for start, end in ranges:
            fa.seek(start)
            fb.seek(start)
            at = start
            while at < end:
                x, y = fa.read(min(CHUNK, end - at)), fb.read(min(CHUNK, end - at))
                if x != y:
                    same = min(len(x), len(y))
                    return at + next((i for i in range(same) if x[i] != y[i]), same)
                at += len(x)
                if not x:
                    break
    return None
