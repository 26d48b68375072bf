"""--store oci://: a real OCI registry (Debian's docker-registry) on 127.0.0.1 as the store several
machines share; stage entries used only when signed by trusted keys, K of them agreeing."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import registry as oci_registry
from tests.conftest import mlos
from tests.integration.test_cluster import hidden_graph


@pytest.fixture(scope="session")
def registry() -> Iterator[tuple[str, Path]]:
    """The registry scripts/run-tests started ($MLOS_REPRO_TEST_REGISTRY), or one of this session's."""
    given = os.environ.get(oci_registry.ENV)
    if given:
        server = oci_registry.started(Path(given))
        yield server.address, server.data
        return
    with tempfile.TemporaryDirectory(prefix="mlos-registry-") as tmp, oci_registry.running(Path(tmp)) as server:
        yield server.address, server.data


@pytest.fixture
def machine(shared_store: Path, tmp_path: Path) -> Callable[[str], Path]:
    """A fresh local store, as on another machine: only the assembled builder environments are
    there (hard links from the suite's store), no blob or stage entry of any build."""
    def make(name: str) -> Path:
        store = tmp_path / f"machine-{name}"
        store.mkdir()
        subprocess.run(["cp", "-al", str(shared_store / "envs"), str(store / "envs")], check=True)
        return store
    return make


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three builders' `keys init` directories: a and b are trusted, stranger is not."""
    made = {}
    for name in ("a", "b", "stranger"):
        directory = tmp_path_factory.mktemp(f"keys-{name}")
        result = mlos("keys", "init", directory / "k")
        assert result.code == 0, result.stderr
        made[name] = directory / "k"
    return made


def pub(keys: dict[str, Path], name: str) -> Path:
    return keys[name] / "attestation/builder.pub.json"


def build(store: Path, recipes: Path, out: Path, url: str, *extra: str | Path) -> tuple[int, str]:
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", url, *extra,
                  env={"MLOS_REPRO_STORE": str(store)})
    return result.code, result.stderr


def test_a_stage_built_on_one_machine_is_used_on_another(registry: tuple[str, Path], machine: Callable[[str], Path],
                                                         keys: dict[str, Path], repo: Callable[..., Path],
                                                         unique: str, tmp_path: Path) -> None:
    address, _ = registry
    url = f"oci://{address}/mlos/share-{unique[:8]}"
    recipes = repo(hidden_graph(unique, 8, seed=int(unique[:6], 16)))
    code, err = build(machine("a"), recipes, tmp_path / "a", url, "--sign-cache", keys["a"])
    assert code == 0 and "8 stages (8 built, 0 cached)" in err, err
    # Another machine trusting a: every entry taken from the registry, blobs pulled and re-hashed.
    b = machine("b")
    code, err = build(b, recipes, tmp_path / "b", url, "--cache-key", pub(keys, "a"))
    assert code == 0 and "8 stages (0 built, 8 cached)" in err, err
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    assert (tmp_path / "a/s3/o.txt").read_bytes() == (tmp_path / "b/s3/o.txt").read_bytes()
    assert any((b / "stages").iterdir())  # recorded on b too
    # A machine trusting only a stranger's key builds everything itself.
    code, err = build(machine("c"), recipes, tmp_path / "c", url, "--cache-key", pub(keys, "stranger"))
    assert code == 0 and "8 stages (8 built, 0 cached)" in err, err
    # Two keys required: a alone is not enough; once b has built and signed too, it is.
    two = ("--cache-key", pub(keys, "a"), "--cache-key", pub(keys, "b"), "--cache-threshold", "2")
    code, err = build(machine("d"), recipes, tmp_path / "d", url, *two)
    assert code == 0 and "8 stages (8 built, 0 cached)" in err, err
    code, err = build(machine("e"), recipes, tmp_path / "e", url, "--sign-cache", keys["b"], "--no-cache")
    assert code == 0, err
    code, err = build(machine("f"), recipes, tmp_path / "f", url, *two)
    assert code == 0 and "8 stages (0 built, 8 cached)" in err, err
    assert (tmp_path / "f/manifest.json").read_bytes() == (tmp_path / "a/manifest.json").read_bytes()


def test_a_blob_changed_in_the_registry_is_refused(registry: tuple[str, Path], machine: Callable[[str], Path],
                                                   keys: dict[str, Path], repo: Callable[..., Path], unique: str,
                                                   tmp_path: Path) -> None:
    address, data = registry
    url = f"oci://{address}/mlos/tamper-{unique[:8]}"
    recipes = repo(hidden_graph(unique, 3, seed=2))
    code, err = build(machine("a"), recipes, tmp_path / "a", url, "--sign-cache", keys["a"])
    assert code == 0, err
    output = (tmp_path / "a/s1/o.txt").read_bytes()
    import hashlib

    digest = hashlib.sha256(output).hexdigest()
    stored = data / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    assert stored.read_bytes() == output
    stored.write_bytes(output.replace(output[:4], b"0000"))
    b = machine("b")
    code, err = build(b, recipes, tmp_path / "b", url, "--cache-key", pub(keys, "a"))
    assert code == 1, err
    assert f"blob sha256:{digest}" in err and "refused" in err
    assert not (b / "blobs/sha256" / digest).exists() and not (tmp_path / "b").exists()


def test_a_graph_on_dask_with_the_shared_store(registry: tuple[str, Path], machine: Callable[[str], Path],
                                               keys: dict[str, Path], repo: Callable[..., Path], unique: str,
                                               tmp_path: Path, shared_store: Path) -> None:
    """LocalCluster workers read and write the OCI store: the same manifest as the local
    executor, and the entries they signed serve another machine."""
    address, _ = registry
    url = f"oci://{address}/mlos/dask-{unique[:8]}"
    recipes = repo(hidden_graph(unique, 9, seed=int(unique[6:12], 16)))
    code, err = build(machine("a"), recipes, tmp_path / "dask", url, "--sign-cache", keys["a"], "--executor", "dask")
    assert code == 0 and "9 stages (9 built, 0 cached)" in err, err
    local = mlos("build", "--recipes", recipes, "--out", tmp_path / "local", "--no-cache", "--store", shared_store)
    assert local.code == 0, local.stderr
    assert (tmp_path / "dask/manifest.json").read_bytes() == (tmp_path / "local/manifest.json").read_bytes()
    code, err = build(machine("b"), recipes, tmp_path / "b", url, "--cache-key", pub(keys, "a"))
    assert code == 0 and "9 stages (0 built, 9 cached)" in err, err


def test_a_shared_store_is_named_when_wrong(registry: tuple[str, Path], machine: Callable[[str], Path],
                                            keys: dict[str, Path], repo: Callable[..., Path], unique: str,
                                            tmp_path: Path) -> None:
    recipes = repo(hidden_graph(unique, 1, seed=1))
    store = machine("a")
    code, err = build(store, recipes, tmp_path / "a", "oci://127.0.0.1:9/mlos/x", "--sign-cache", keys["a"])
    assert code == 2 and "cannot reach the registry oci://127.0.0.1:9/mlos/x" in err, err
    code, err = build(store, recipes, tmp_path / "a", "oci://127.0.0.1:9/Bad Name")
    assert code == 2 and "expected oci://HOST[:PORT]/REPOSITORY" in err, err
    code, err = build(store, recipes, tmp_path / "b", f"oci://{registry[0]}/mlos/x", "--cache-threshold", "2",
                      "--cache-key", pub(keys, "a"))
    assert code == 2 and "--cache-threshold 2: only 1 trusted keys" in err, err
    wrong = mlos("build", "--recipes", recipes, "--out", tmp_path / "c", "--cache-key", pub(keys, "a"))
    assert wrong.code == 2 and "apply to --store oci:// only" in wrong.stderr
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))



def _tls_registry_files(directory: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), and an htpasswd file with one bcrypt user."""
    cert, key, htpasswd = directory / "cert.pem", directory / "key.pem", directory / "htpasswd"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        htpasswd.write_text(f"builder:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    return cert, key, htpasswd


def _docker_config(directory: Path, host: str, password: str) -> Path:
    directory.mkdir()
    auth = base64.b64encode(f"builder:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory


def test_a_registry_beyond_loopback_terms_tls_and_credentials(machine: Callable[[str], Path], keys: dict[str, Path],
                                                              repo: Callable[..., Path], unique: str,
                                                              tmp_path: Path) -> None:
    """A registry speaking only TLS and asking for basic credentials (htpasswd), as one on the
    network does: its certificate must be trusted, the docker configuration's credentials given."""
    cert, key, htpasswd = _tls_registry_files(tmp_path)
    recipes = repo(hidden_graph(unique, 3, seed=5))
    with oci_registry.running(tmp_path / "tls-registry", tls=(cert, key), htpasswd=htpasswd) as server:
        url = f"oci://{server.address}/mlos/tls-{unique[:8]}"
        good = _docker_config(tmp_path / "good", server.address, "s3cret")
        bad = _docker_config(tmp_path / "bad", server.address, "guessed")
        none = tmp_path / "none"
        none.mkdir()

        def run(name: str, env: dict[str, str], *extra: str | Path) -> tuple[int, str]:
            result = mlos("build", "--recipes", recipes, "--out", tmp_path / name, "--store", url, *extra,
                          env={"MLOS_REPRO_STORE": str(machine(name)), **env})
            return result.code, result.stderr

        # Its certificate is not trusted: refused, and the way to trust it said.
        code, err = run("untrusted", {"DOCKER_CONFIG": str(good)}, "--sign-cache", keys["a"])
        assert code == 2 and "TLS certificate is not trusted" in err and "REQUESTS_CA_BUNDLE" in err, err
        ca = {"REQUESTS_CA_BUNDLE": str(cert)}
        # No credentials, then wrong ones: refused by name, with where they are looked for.
        code, err = run("anonymous", {**ca, "DOCKER_CONFIG": str(none)}, "--sign-cache", keys["a"])
        assert code == 2 and f"asks for credentials and none are in {none / 'config.json'}" in err, err
        code, err = run("wrong", {**ca, "DOCKER_CONFIG": str(bad)}, "--sign-cache", keys["a"])
        assert code == 2 and f"those in {bad / 'config.json'} were not accepted" in err, err
        assert not any((tmp_path / n).exists() for n in ("untrusted", "anonymous", "wrong"))
        # Trusted and logged in: published over TLS, and taken from there by another machine.
        code, err = run("a", {**ca, "DOCKER_CONFIG": str(good)}, "--sign-cache", keys["a"])
        assert code == 0 and "3 stages (3 built, 0 cached)" in err, err
        code, err = run("b", {**ca, "DOCKER_CONFIG": str(good)}, "--cache-key", pub(keys, "a"))
        assert code == 0 and "3 stages (0 built, 3 cached)" in err, err
        assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()


class _Endless(http.server.BaseHTTPRequestHandler):
    """A registry that lists a stage entry for KEY and, asked for its signed config, sends bytes without end."""

    key = ""

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._json({})
        elif "/tags/list" in self.path:
            self._json({"name": "mlos/hostile", "tags": [f"{self.key}-{'0' * 16}"]})
        elif "/manifests/" in self.path:
            self._json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/json", "digest": f"sha256:{'1' * 64}", "size": 512},
                        "layers": []})
        elif "/blobs/" in self.path:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the client hung up
                pass
        else:
            self.send_error(404)

    def _json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_registry_sending_without_end_is_cut_off(machine: Callable[[str], Path], keys: dict[str, Path],
                                                   repo: Callable[..., Path], unique: str, tmp_path: Path) -> None:
    recipes = repo(hidden_graph(unique, 1, seed=7))
    first = mlos("build", "--recipes", recipes, "--out", tmp_path / "local", env={"MLOS_REPRO_STORE": str(machine("l"))})
    assert first.code == 0, first.stderr
    ((_, stage),) = json.loads((tmp_path / "local/manifest.json").read_text())["stages"].items()
    handler = type("Handler", (_Endless,), {"key": stage["key"]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = machine("h")
        result = mlos("build", "--recipes", recipes, "--out", tmp_path / "h", "--store",
                      f"oci://127.0.0.1:{server.server_address[1]}/mlos/hostile", "--cache-key", pub(keys, "a"),
                      env={"MLOS_REPRO_STORE": str(store)})
    finally:
        server.shutdown()
        server.server_close()
    assert result.code == 1, result.stderr
    assert f"blob sha256:{'1' * 64} (the signed entry {stage['key']}-" in result.stderr
    assert "sends more than the 1048576 bytes allowed: refused" in result.stderr, result.stderr
    assert not (tmp_path / "h").exists() and not any((store / "tmp").iterdir())
    assert not (store / "blobs/sha256" / ("1" * 64)).exists()
