"""mlos-repro rebuild RELEASE and verify --rebuild: independent rebuilders, each with its own
store and key and a differently varied environment, rebuild a release of a toy graph from its
source archive alone; verify counts distinct rebuilders per artifact and refuses every summary
that is not exactly what it claims."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.dsse import Envelope as Dsse
from securesystemslib.signer import CryptoSigner

from tests.conftest import mlos, write_repo
from tests.integration.test_release import BINDING, BUNDLE, failed, release
from tests.integration.test_sbom import STAGES

ARTIFACTS = ["apt/repo", "bundle/bundle.tar", "debs/debs", "rootfs/rootfs.tar"]
# The toy stages honour every variation but the umask (dpkg-deb and tar keep the modes the
# umask gave) and the locale (the rootfs lists files in `ls` order).
HONEST_A = "-umask,-locales"
HONEST_B = "-all,+time,+hostname,+timezone,+build_path,+fileordering"
LEAKY = "-all,+umask"


def make_keys(path: Path) -> Path:
    result = mlos("keys", "init", path)
    assert result.code == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_store: Path) -> Iterator[dict[str, Path]]:
    """A builder's release of the toy graph and three rebuilders' keys."""
    root = tmp_path_factory.mktemp("rebuild")
    recipes = write_repo(root / "repo", STAGES.replace("@VERSION@", "1.0") + BUNDLE)
    (root / "repo/layouts").mkdir()
    (root / "repo/layouts/layout.toml").write_text(BINDING)
    built = mlos("build", "--recipes", recipes, "--out", root / "out", "--store", shared_store)
    assert built.code == 0, built.stderr
    keys = {name: make_keys(root / name) for name in ("builder", "a", "b", "c")}
    rel = release((recipes, root / "out"), keys["builder"], shared_store, root / "rel")
    yield {"root": root, "recipes": recipes, "rel": rel, **keys}
    for name in keys:
        subprocess.run(["gpgconf", "--homedir", str(keys[name] / "gnupg"), "--kill", "gpg-agent"], check=False)


def own_store(shared_store: Path, dest: Path) -> Path:
    """A rebuilder's own store: the pinned inputs and environments fetched beforehand (hard
    links to the suite's), no stage entry of anyone's build."""
    dest.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(shared_store / "blobs"), str(shared_store / "envs"), str(dest)], check=True)
    return dest


def rebuild(world: dict[str, Path], who: str, vary: str, store: Path, out: Path, *extra: Any) -> Any:
    return mlos("rebuild", world["rel"], "--keys", world[who], "--out", out, "--store", store,
                "--root-key", world["builder"] / "attestation/owner.pub.json",
                "--keyring", world["builder"] / "archive-keyring.gpg", f"--vary={vary}", "--json", *extra)


@pytest.fixture(scope="module")
def rebuilds(world: dict[str, Path], shared_store: Path) -> dict[str, Path]:
    """Rebuilders a and b (honest, differently varied) and c (varies the umask the toy leaks)."""
    done = {}
    for who, vary in (("a", HONEST_A), ("b", HONEST_B), ("c", LEAKY)):
        store = own_store(shared_store, world["root"] / f"store-{who}")
        result = rebuild(world, who, vary, store, world["root"] / f"att-{who}")
        assert result.code == (1 if who == "c" else 0), result.stderr
        done[who] = world["root"] / f"att-{who}"
        assert json.loads(result.stdout)["ok"] is (who != "c")
    return done


def verify(world: dict[str, Path], dirs: list[Path], keys: list[Path], *extra: str,
           rel: Path | None = None) -> tuple[int, dict[str, Any], str]:
    argv: list[Any] = ["verify", rel or world["rel"], "--root-key", world["builder"] / "attestation/owner.pub.json",
                       "--keyring", world["builder"] / "archive-keyring.gpg", "--json"]
    for d in dirs:
        argv += ["--rebuild", d]
    for k in keys:
        argv += ["--rebuilder-key", k]
    result = mlos(*argv, *extra)
    return result.code, json.loads(result.stdout) if result.stdout else {}, result.stderr


def pub(world: dict[str, Path], who: str) -> Path:
    return world[who] / "attestation/builder.pub.json"


def statement(path: Path) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
    return decoded


def test_two_rebuilders_agree_and_k_of_n_is_counted(world: dict[str, Path], rebuilds: dict[str, Path]) -> None:
    sums = {name: digest for digest, name in
            (line.split("  ", 1) for line in (world["rel"] / "SHA256SUMS").read_text().splitlines())}
    info_sha = subprocess.run(["sha256sum", str(world["rel"] / "release.json")], capture_output=True, text=True,
                              check=True).stdout[:64]
    for who in ("a", "b"):
        att = rebuilds[who]
        summary = json.loads((att / "rebuild.json").read_text())
        assert summary["passed"] == 4 and summary["failed"] == 0
        assert summary["release"]["release.json"] == info_sha
        vsa = statement(att / "vsa/rootfs/rootfs.tar.intoto.json")
        assert vsa["predicateType"] == "https://slsa.dev/verification_summary/v1"
        assert vsa["predicate"]["verificationResult"] == "PASSED"
        assert vsa["subject"] == [{"name": "rootfs/rootfs.tar", "digest": {"sha256": sums["rootfs/rootfs.tar"]}}]
        assert {"uri": "release.json", "digest": {"sha256": info_sha}} in vsa["predicate"]["inputAttestations"]
        # A link per stage, its products the rebuilt files: the release's own digests.
        link = statement(att / f"links/debs.{json.loads(pub(world, who).read_text())['keyid'][:8]}.link")
        assert {k: v["sha256"] for k, v in link["products"].items()} == \
            {k: v for k, v in sums.items() if k.startswith("debs/")}
    # The two rebuilders varied different things.
    applied = [json.loads((rebuilds[w] / "rebuild.json").read_text())["variations"]["applied"] for w in "ab"]
    assert applied[0] != applied[1] and "umask" not in applied[0] + applied[1]

    code, report, err = verify(world, [rebuilds["a"], rebuilds["b"]], [pub(world, "a"), pub(world, "b")],
                               "--threshold", "2")
    assert code == 0, (report, err)
    (check,) = [c for c in report["checks"] if c["number"] == 14]
    assert check["status"] == "passed" and "at least 2 of 2" in check["note"]
    code, report, _ = verify(world, [rebuilds["a"], rebuilds["b"]], [pub(world, "a"), pub(world, "b")],
                             "--threshold", "3")
    assert code == 1
    for artifact in ARTIFACTS:
        assert f"{artifact}: reproduced by 2 of 3 required" in failed(report)[14]
    # Without --rebuild the check is skipped, never passed.
    code, report, _ = verify(world, [], [])
    assert code == 0 and [c["status"] for c in report["checks"] if c["number"] == 14] == ["skipped"]


def test_a_leaky_stage_is_named_by_the_rebuilder_that_caught_it(world: dict[str, Path],
                                                               rebuilds: dict[str, Path]) -> None:
    att = rebuilds["c"]
    summary = json.loads((att / "rebuild.json").read_text())
    verdicts = {a["artifact"]: a for a in summary["artifacts"]}
    assert verdicts["debs/debs"]["result"] == "FAILED"
    assert verdicts["debs/debs"]["member"] == "debs/debs → mlos-demo-a.deb → data.tar.xz → ."
    assert verdicts["apt/repo"]["result"] == "PASSED"  # a printf of fixed text leaks nothing
    assert verdicts["debs/debs"]["report"] == {"txt": "reports/debs/debs.txt", "html": "reports/debs/debs.html"}
    assert "mode: rwxr-xr-x (0755) -> rwxrwxr-x (0775)" in (att / "reports/debs/debs.txt").read_text()
    vsa = statement(att / "vsa/debs/debs.intoto.json")
    assert vsa["predicate"]["verificationResult"] == "FAILED"
    assert vsa["predicate"]["rebuild"]["variations"] == ["umask"]
    assert vsa["predicate"]["rebuild"]["report_sha256"]
    code, report, _ = verify(world, [att], [pub(world, "c")], "--threshold", "1")
    assert code == 1
    problems = failed(report)[14]
    assert "debs/debs: rebuilder" in problems and "FAILED at debs/debs → mlos-demo-a.deb" in problems
    assert "debs/debs: reproduced by 0 of 1 required" in problems
    assert "apt/repo: reproduced" not in problems


def resign(path: Path, keys: Path, edit: Any) -> None:
    data = statement(path)
    edit(data)
    envelope = Dsse(payload=json.dumps(data).encode(), payload_type="application/vnd.in-toto+json", signatures={})
    envelope.sign(CryptoSigner(load_pem_private_key((keys / "attestation/builder.key").read_bytes(), None)))
    path.write_text(json.dumps(envelope.to_dict()))


def copy(att: Path, dest: Path) -> Path:
    shutil.copytree(att, dest)
    return dest


def test_summaries_that_are_not_what_they_claim_are_refused(world: dict[str, Path], rebuilds: dict[str, Path],
                                                            shared_store: Path, tmp_path: Path) -> None:
    a, b = rebuilds["a"], rebuilds["b"]
    keys = [pub(world, "a"), pub(world, "b")]

    def problems(dirs: list[Path], listed: list[Path], rel: Path | None = None) -> str:
        code, report, err = verify(world, dirs, listed, "--threshold", "2", rel=rel)
        assert code == 1, (report, err)
        return failed(report)[14]

    # An unlisted key: b's summaries, but only a's key is trusted.
    said = problems([a, b], [pub(world, "a")])
    assert "not signed by any --rebuilder-key" in said and "reproduced by 1 of 2" in said
    # One key counted twice: a's directory given twice.
    said = problems([a, copy(a, tmp_path / "a-again")], keys)
    assert "one key counts once" in said and "reproduced by 1 of 2" in said
    # A FAILED summary relabelled PASSED, its signature kept.
    forged = copy(rebuilds["c"], tmp_path / "c-forged")
    path = forged / "vsa/debs/debs.intoto.json"
    envelope = json.loads(path.read_text())
    body = statement(path)
    body["predicate"]["verificationResult"] = "PASSED"
    envelope["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    path.write_text(json.dumps(envelope))
    said = problems([a, forged], [pub(world, "a"), pub(world, "c")])
    assert f"{path}: not signed by any --rebuilder-key" in said
    # A summary for other bytes, validly signed by a listed rebuilder.
    other = copy(b, tmp_path / "b-other")
    path = other / "vsa/rootfs/rootfs.tar.intoto.json"
    resign(path, world["b"], lambda s: s["subject"][0]["digest"].update(sha256="0" * 64))
    said = problems([a, other], keys)
    assert f"{path}: a summary of other bytes" in said and "rootfs/rootfs.tar: reproduced by 1 of 2" in said
    # A truncated summary.
    cut = copy(b, tmp_path / "b-cut")
    path = cut / "vsa/debs/debs.intoto.json"
    path.write_bytes(path.read_bytes()[:100])
    code, report, _ = verify(world, [a, cut], keys, "--threshold", "2")
    assert code == 2 and f"{path}" in failed(report)[14] and "JSON" in failed(report)[14]
    # One rebuilder's key listed twice under another key id.
    twice = tmp_path / "a-twice.pub.json"
    key = json.loads(pub(world, "a").read_text())
    twice.write_text(json.dumps({**key, "keyid": "f" * 64}))
    code, report, _ = verify(world, [a], [pub(world, "a"), twice], "--threshold", "2")
    assert code == 2 and "one rebuilder counts once" in failed(report)[14]
    # Summaries of an older release of the same build, replayed against a newer one.
    newer = release((world["recipes"], world["root"] / "out"), world["builder"], shared_store, tmp_path / "newer")
    said = problems([a, b], keys, rel=newer)
    assert "a summary of another release" in said and "reproduced by 0 of 2" in said


def test_a_release_that_does_not_verify_is_not_rebuilt(world: dict[str, Path], shared_store: Path,
                                                       tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    shutil.copytree(world["rel"], rel)
    sums = rel / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("debs/debs/mlos-demo-a.deb", "debs/debs/mlos-demo-z.deb"))
    result = mlos("rebuild", rel, "--keys", world["a"], "--out", tmp_path / "att", "--store", shared_store,
                  "--root-key", world["builder"] / "attestation/owner.pub.json",
                  "--keyring", world["builder"] / "archive-keyring.gpg")
    assert result.code == 1 and "does not verify, so it is not rebuilt" in result.stderr
    assert "SHA256SUMS" in result.stderr
    assert not (tmp_path / "att").exists() and not list(tmp_path.glob(".att*"))
    # An attestations directory is written once.
    (tmp_path / "used").mkdir()
    (tmp_path / "used/x").write_text("")
    result = rebuild(world, "a", HONEST_A, shared_store, tmp_path / "used")
    assert result.code == 2 and "written once" in result.stderr


def test_the_source_archive_is_deterministic_and_safe(world: dict[str, Path], shared_store: Path,
                                                      tmp_path: Path) -> None:
    again = release((world["recipes"], world["root"] / "out"), world["builder"], shared_store, tmp_path / "again")
    lock = json.loads((world["rel"] / "inputs.lock").read_text())
    (archive,) = (world["rel"] / "source").iterdir()
    assert lock["source"] == {"path": f"source/{archive.name}",
                              "sha256": archive.name.removeprefix("mlos-source-").removesuffix(".tar")}
    assert (again / lock["source"]["path"]).read_bytes() == archive.read_bytes()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert {"recipes/stages.toml", "recipes/builder.lock", "layouts/layout.toml", "sbom/policy.toml",
                "mlos_repro/cli.py", "pyproject.toml", "SOURCE.json"} <= set(names)
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, "", "")}

    from mlos_repro.errors import BadInputError
    from mlos_repro.recipe.source import unpack

    for name, member in (("escape", tarfile.TarInfo("../outside")), ("device", tarfile.TarInfo("dev"))):
        if name == "device":
            member.type = tarfile.CHRTYPE
        hostile = tmp_path / f"{name}.tar"
        with tarfile.open(hostile, "w") as tar:
            tar.addfile(member, io.BytesIO(b""))
        with pytest.raises(BadInputError, match=str(hostile)):
            unpack(hostile, tmp_path / f"into-{name}")
        assert not (tmp_path / "outside").exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there any more


def test_a_release_with_its_inputs_rebuilds_on_an_empty_store_offline(world: dict[str, Path], shared_store: Path,
                                                                     tmp_path: Path) -> None:
    """release --with-inputs carries every pinned input; a rebuilder with an empty store and
    every mirror unreachable assembles the environment and rebuilds every artifact from it."""
    rel = tmp_path / "rel"
    result = mlos("release", "--keys", world["builder"], "--out", rel, "--from", world["root"] / "out",
                  "--recipes", world["recipes"], "--store", shared_store, "--release-version", "1.0",
                  "--with-inputs")
    assert result.code == 0, result.stderr
    carried = sorted(p.name for p in (rel / "inputs/sha256").iterdir())
    lock = json.loads((rel / "inputs.lock").read_text())
    assert lock["inputs"]["sha256"] == carried and len(carried) > 100
    code, report, err = verify(world, [], [], rel=rel)
    assert code == 0, (report, err)
    assert f"{len(carried)} pinned inputs" in report["checks"][1]["note"]

    empty = tmp_path / "empty-store"
    mirror = f"http://127.0.0.1:{closed_port()}/debian"
    result = mlos("rebuild", rel, "--keys", world["b"], "--out", tmp_path / "att", "--store", empty,
                  "--root-key", world["builder"] / "attestation/owner.pub.json",
                  "--keyring", world["builder"] / "archive-keyring.gpg", f"--vary={HONEST_A}", "--json",
                  "--mirror", mirror)
    assert result.code == 0, result.stderr
    assert [a["result"] for a in json.loads(result.stdout)["artifacts"]] == ["PASSED"] * 4
    assert not list((empty / "stages").glob("*"))  # a varied rebuild records nothing in the cache

    # A carried input that is not the one listed, and one nobody listed: refused by name.
    bad = tmp_path / "bad"
    shutil.copytree(rel, bad, copy_function=os.link)
    victim = bad / "inputs/sha256" / carried[0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    extra = hashlib.sha256(b"extra").hexdigest()
    (bad / "inputs/sha256" / extra).write_bytes(b"extra")
    code, report, _ = verify(world, [], [], rel=bad)
    assert code == 1
    assert f"inputs/sha256/{carried[0]}: its content has sha256" in failed(report)[2]
    assert f"inputs/sha256/{extra}: not listed in inputs.lock" in failed(report)[2]


def test_verify_iso_counts_the_rebuilders_of_its_image(world: dict[str, Path], rebuilds: dict[str, Path],
                                                       tmp_path: Path) -> None:
    image = world["rel"] / "artifacts/rootfs/rootfs.tar"
    keyring = world["builder"] / "archive-keyring.gpg"

    def verify_iso(dirs: list[str], *extra: str) -> Any:
        argv: list[Any] = ["verify-iso", image, "--keyring", keyring, "--accept-older"]
        for who in dirs:
            argv += ["--rebuild", rebuilds[who], "--rebuilder-key", pub(world, who)]
        return mlos(*argv, *extra)

    ok = verify_iso(["a", "b"], "--threshold", "2")
    assert ok.code == 0, ok.stderr
    assert "reproduced by 2 of 2 rebuilders (threshold 2)" in ok.stdout
    as_json = json.loads(verify_iso(["a", "b"], "--json").stdout)
    assert as_json["reproduced"]["artifact"] == "rootfs/rootfs.tar" and as_json["reproduced"]["by"] == 2
    short = verify_iso(["a", "b"], "--threshold", "3")
    assert short.code == 1 and "rootfs/rootfs.tar: reproduced by 2 of 3 required" in short.stderr
    # The leaky rebuilder reported the rootfs as FAILED (the umask reached its modes).
    leaky = verify_iso(["a", "c"], "--threshold", "1")
    assert leaky.code == 1 and "rootfs/rootfs.tar: rebuilder" in leaky.stderr and "FAILED at" in leaky.stderr
    # Downloaded with SHA256SUMS only: nothing signed says which release it is, so nobody counts.
    alone = tmp_path / "download"
    alone.mkdir()
    for name in ("SHA256SUMS", "SHA256SUMS.gpg"):
        shutil.copy(world["rel"] / name, alone / name)
    shutil.copy(image, alone / "rootfs.tar")
    result = mlos("verify-iso", alone / "rootfs.tar", "--keyring", keyring, "--rebuild", rebuilds["a"],
                  "--rebuilder-key", pub(world, "a"))
    assert result.code == 1 and "signed release.json" in result.stderr
    # Downloaded with its folder's SHA256SUMS and the signed release.json: the ISO verifies, but
    # rebuilders are counted against the release's own SHA256SUMS, which the user is asked for.
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("SHA256SUMS", "SHA256SUMS.gpg"):
        shutil.copy(world["rel"] / "artifacts/rootfs" / name, folder / name)
    for name in ("release.json", "release.json.gpg"):
        shutil.copy(world["rel"] / name, folder / name)
    shutil.copy(image, folder / "rootfs.tar")
    assert mlos("verify-iso", folder / "rootfs.tar", "--keyring", keyring).code == 0
    result = mlos("verify-iso", folder / "rootfs.tar", "--keyring", keyring, "--rebuild", rebuilds["a"],
                  "--rebuilder-key", pub(world, "a"))
    assert result.code == 2 and "--release DIR" in result.stderr, result.stderr


class Endless(http.server.BaseHTTPRequestHandler):
    """A hostile publisher: 2 MiB of junk for every summary asked for."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{" * (2 << 20))

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: Any) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_published_rebuild_is_fetched_over_http_and_trusted_only_once_verified(
        world: dict[str, Path], rebuilds: dict[str, Path]) -> None:
    keys = [pub(world, "a"), pub(world, "b")]
    quiet = functools.partial(QuietFiles, directory=str(world["root"]))
    with serving(quiet) as base:
        code, report, err = verify(world, [], keys, "--threshold", "2", "--rebuild", f"{base}/att-a",
                                   "--rebuild", str(rebuilds["b"]))
        assert code == 0, (report, err)
        # The leaky rebuilder's published FAILED verdicts are read as such.
        code, report, _ = verify(world, [], [pub(world, "c")], "--rebuild", f"{base}/att-c")
        assert code == 1 and "debs/debs: rebuilder" in failed(report)[14]
    with serving(Endless) as base:
        code, report, _ = verify(world, [rebuilds["a"]], keys, "--rebuild", base)
        assert code == 1 and f"{base}/vsa/debs/debs.intoto.json: larger than 1024 KiB" in failed(report)[14]
    gone = f"http://127.0.0.1:{closed_port()}"
    code, report, _ = verify(world, [rebuilds["a"]], keys, "--rebuild", gone)
    assert code == 1 and f"{gone}/vsa/" in failed(report)[14] and "cannot be fetched" in failed(report)[14]


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


PICKY = """
[[stage]]
name = "picky"
outputs = ["out.txt"]
run = [["sh", "-euc", "[ \\"$(umask)\\" = 0022 ] && echo @UNIQUE@ > /out/out.txt"]]

[[stage]]
name = "after"
outputs = ["out.txt"]
run = [["sh", "-euc", "cat /in/picky/out.txt > /out/out.txt"]]
[stage.inputs]
picky = "stage:picky"

[[stage]]
name = "free"
outputs = ["out.txt"]
run = [["sh", "-euc", "echo free > /out/out.txt"]]
"""


def test_a_stage_that_fails_in_the_rebuild_fails_only_what_needs_it(world: dict[str, Path], shared_store: Path,
                                                                    tmp_path: Path, unique: str) -> None:
    recipes = write_repo(tmp_path / "repo", PICKY.replace("@UNIQUE@", unique))
    built = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store)
    assert built.code == 0, built.stderr
    rel = release((recipes, tmp_path / "out"), world["builder"], shared_store, tmp_path / "rel")
    result = mlos("rebuild", rel, "--keys", world["c"], "--out", tmp_path / "att", "--store", shared_store,
                  "--root-key", world["builder"] / "attestation/owner.pub.json",
                  "--keyring", world["builder"] / "archive-keyring.gpg", f"--vary={LEAKY}", "--json")
    assert result.code == 1, result.stderr
    verdicts = {a["artifact"]: a for a in json.loads(result.stdout)["artifacts"]}
    assert verdicts["free/out.txt"]["result"] == "PASSED"
    assert verdicts["picky/out.txt"]["result"] == "FAILED"
    assert "stage 'picky'" in verdicts["picky/out.txt"]["error"] and "exited with status 1" in \
        verdicts["picky/out.txt"]["error"]
    assert verdicts["after/out.txt"]["error"] == "stage 'after' was not built: it needs picky, which failed"
    # Signed as such: the summary of the failed stage says FAILED, the free one PASSED.
    assert statement(tmp_path / "att/vsa/picky/out.txt.intoto.json")["predicate"]["verificationResult"] == "FAILED"
    assert statement(tmp_path / "att/vsa/free/out.txt.intoto.json")["predicate"]["verificationResult"] == "PASSED"
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "att/links").iterdir()) == ["free"]


def test_a_rebuild_on_dask_finds_what_the_local_one_found(world: dict[str, Path], rebuilds: dict[str, Path],
                                                           shared_store: Path) -> None:
    """Rebuilder c again, its varied build on a LocalCluster: the same verdict per artifact as
    its local rebuild (the leak it varies is caught either way)."""
    store = own_store(shared_store, world["root"] / "store-dask")
    result = rebuild(world, "c", LEAKY, store, world["root"] / "att-dask", "--executor", "dask")
    assert result.code == 1, result.stderr
    on_dask = {a["artifact"]: a["result"] for a in json.loads(result.stdout)["artifacts"]}
    local = {a["artifact"]: a["result"]
             for a in json.loads((rebuilds["c"] / "rebuild.json").read_text())["artifacts"]}
    assert on_dask == local and "FAILED" in on_dask.values() and "PASSED" in on_dask.values(), (on_dask, local)
