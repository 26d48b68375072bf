"""mlos-repro release: the signed release directory of a build, checked with the real gpgv,
sha256sum and in-toto's verifier; tampered links and material rules are refused by in-toto."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from in_toto.models.metadata import Envelope
from in_toto.verifylib import in_toto_verify
from securesystemslib.signer import CryptoSigner

from tests.conftest import mlos, write_repo
from tests.integration.test_sbom import STAGES

STAGE_NAMES = ["debs", "rootfs"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys") / "k"
    result = mlos("keys", "init", directory)
    assert result.code == 0, result.stderr
    yield directory
    subprocess.run(["gpgconf", "--homedir", str(directory / "gnupg"), "--kill", "gpg-agent"], check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_store: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("release-repo")
    recipes = write_repo(root / "repo", STAGES.replace("@VERSION@", "1.0"))
    out = root / "out"
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert result.code == 0, result.stderr
    return recipes, out


def release(built: tuple[Path, Path], keys: Path, store: Path, dest: Path) -> Path:
    recipes, out = built
    result = mlos("release", "--keys", keys, "--out", dest, "--from", out, "--recipes", recipes, "--store", store)
    assert result.code == 0, result.stderr
    return dest


def owner_key(rel: Path) -> dict:
    key = json.loads((rel / "layout/keys/owner.pub.json").read_text())
    return {key["keyid"]: key}


def payload(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))


def test_an_honest_release_verifies(built: tuple[Path, Path], keys: Path, shared_store: Path,
                                    tmp_path: Path) -> None:
    rel = release(built, keys, shared_store, tmp_path / "rel")
    # Every artifact listed and checked by sha256sum itself.
    check = subprocess.run(["sha256sum", "--strict", "-c", "../SHA256SUMS"], cwd=rel / "artifacts",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = sorted(line.split("  ", 1)[1] for line in (rel / "SHA256SUMS").read_text().splitlines())
    on_disk = sorted(p.relative_to(rel / "artifacts").as_posix() for p in (rel / "artifacts").rglob("*") if p.is_file())
    assert listed == on_disk and "debs/debs/mlos-demo-b.deb" in listed
    # The release key's signatures, checked by gpgv against the exported public key.
    keyring = tmp_path / "release.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(keyring), str(rel / "layout/keys/release.asc")],
                   check=True)
    for argv in (["gpgv", "--keyring", str(keyring), str(rel / "SHA256SUMS.gpg"), str(rel / "SHA256SUMS")],
                 ["gpgv", "--keyring", str(keyring), str(rel / "SHA256SUMS.asc")]):
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
    other = write_repo(tmp_path / "other", STAGES.replace("@VERSION@", unique[:8]))
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
