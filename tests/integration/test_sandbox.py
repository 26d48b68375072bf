"""Hermeticity, with the real bubblewrap: only what is declared is visible."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import mlos

PROBE = r"""
[[stage]]
name = "probe"
outputs = ["env.txt", "hostname.txt", "net.txt", "files.txt", "writes.txt", "uname.txt"]
run = [
  ["sh", "-c", "env > /out/env.txt; cat /proc/sys/kernel/hostname > /out/hostname.txt"],
  ["bash", "-c", '''
    for target in 127.0.0.1/{port} 151.101.2.132/80 1.1.1.1/53; do
      if (exec 3<>/dev/tcp/${{target%/*}}/${{target#*/}}) 2>/dev/null; then echo "$target open"; else echo "$target closed"; fi
    done > /out/net.txt
    getent hosts deb.debian.org >> /out/net.txt || echo "dns failed" >> /out/net.txt
    for f in {secret} {repo} /in/src/msg; do test -e "$f" && echo "visible $f" || echo "absent $f"; done > /out/files.txt
    for f in /usr/mlos-x /etc/mlos-x /in/src/mlos-x /out/ok /build/ok /tmp/ok; do
      (echo x > "$f") 2>/dev/null && echo "writable $f" || echo "readonly $f"
    done > /out/writes.txt
    rm -f /out/ok
    pwd > /out/uname.txt
    mknod /tmp/disk b 8 0 2>/dev/null && echo "mknod allowed" >> /out/writes.txt || true
  ''']]

[stage.inputs]
src = "path:data"
"""


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("backend", ["bwrap", "podman"])
def test_a_stage_sees_only_what_is_declared(backend: str, shared_store: Path, repo: Callable[..., Path],
                                            tmp_path: Path, http_port: int) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("do not leak")
    recipes = repo(PROBE.format(port=http_port, secret=secret, repo=tmp_path / "repo"))
    (recipes.parent / "data").mkdir()
    (recipes.parent / "data" / "msg").write_text("hi")
    out = tmp_path / "out"
    result = mlos("build", "--no-cache", "--sandbox", backend, "--recipes", recipes, "--out", out,
                  "--store", shared_store,
                  env={"MLOS_LEAK_CHECK": "leaked", "TZ": "Pacific/Kiritimati"})
    assert result.code == 0, result.stderr
    probe = out / "probe"

    env = dict(line.split("=", 1) for line in (probe / "env.txt").read_text().splitlines())
    shell_own = {"PWD", "OLDPWD", "SHLVL", "_"}
    assert set(env) - shell_own == {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "SOURCE_DATE_EPOCH",
                                    "MLOS_STAGE"}
    assert env["TZ"] == "UTC" and env["MLOS_STAGE"] == "probe" and env["HOME"] == "/build"
    assert (probe / "hostname.txt").read_text().strip() == "mlos-build"

    net = (probe / "net.txt").read_text()
    assert f"127.0.0.1/{http_port} closed" in net  # the host's loopback is another namespace
    assert "151.101.2.132/80 closed" in net and "1.1.1.1/53 closed" in net
    assert "dns failed" in net

    files = (probe / "files.txt").read_text().splitlines()
    assert files == [f"absent {secret}", f"absent {tmp_path / 'repo'}", "visible /in/src/msg"]
    writes = (probe / "writes.txt").read_text().splitlines()
    assert writes == ["readonly /usr/mlos-x", "readonly /etc/mlos-x", "readonly /in/src/mlos-x",
                      "writable /out/ok", "writable /build/ok", "writable /tmp/ok"]
    assert (probe / "uname.txt").read_text().strip() == "/build"
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]["probe"]["outputs"]) == {
        "env.txt", "hostname.txt", "net.txt", "files.txt", "writes.txt", "uname.txt"}
