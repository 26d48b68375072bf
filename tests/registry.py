"""The OCI registry the suite's `--store oci://` tests use: Debian's docker-registry (the CNCF
distribution registry) on 127.0.0.1, its storage in a directory of its own.

scripts/run-tests starts one for the whole run and stops it at the end:

    python -m tests.registry start DIR   # prints HOST:PORT; DIR/address, DIR/pid, DIR/data
    python -m tests.registry stop DIR

and exports MLOS_REPRO_TEST_REGISTRY=DIR, which the tests' `registry` fixture uses; without it
(pytest run by hand) the fixture starts its own with `running()`. `--tls` and `--htpasswd`
serve HTTPS and ask for basic credentials, as a registry beyond loopback does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV = "MLOS_REPRO_TEST_REGISTRY"


@dataclass(frozen=True)
class Registry:
    address: str  # HOST:PORT
    data: Path  # its storage: docker/registry/v2/blobs/sha256/XX/DIGEST/data


def _config(directory: Path, port: int, tls: tuple[Path, Path] | None, htpasswd: Path | None) -> Path:
    lines = ["version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
             f"    rootdirectory: {directory / 'data'}", "  delete:", "    enabled: true", "http:",
             f"  addr: 127.0.0.1:{port}"]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: mlos-repro-tests", f"    path: {htpasswd}"]
    config = directory / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    return config


def start(directory: Path, *, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None) -> Registry:
    """A registry serving DIRECTORY/data, detached from this process (stop() ends it)."""
    if shutil.which("docker-registry") is None:
        raise SystemExit("the shared-store tests need Debian's docker-registry: run scripts/install-deps")
    directory.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _config(directory, port, tls, htpasswd)
    log = (directory / "registry.log").open("wb")
    server = subprocess.Popen(["docker-registry", "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    (directory / "pid").write_text(f"{server.pid}\n")
    scheme = "https" if tls is not None else "http"
    context = ssl.create_default_context(cafile=str(tls[0])) if tls is not None else None
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/v2/", timeout=2, context=context).close()
            break
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for credentials
                break
            raise
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop(directory)
                raise SystemExit(f"docker-registry did not start; its log: {directory / 'registry.log'}") from None
            time.sleep(0.2)
    registry = Registry(f"127.0.0.1:{port}", directory / "data")
    (directory / "address").write_text(f"{registry.address}\n")
    return registry


def stop(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        pid = int((directory / "pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def started(directory: Path) -> Registry:
    """The registry run-tests started in DIRECTORY."""
    return Registry((directory / "address").read_text().strip(), directory / "data")


@contextlib.contextmanager
def running(directory: Path, *, tls: tuple[Path, Path] | None = None,
            htpasswd: Path | None = None) -> Iterator[Registry]:
    registry = start(directory, tls=tls, htpasswd=htpasswd)
    try:
        yield registry
    finally:
        stop(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.action == "start":
        print(start(args.directory).address)
    else:
        stop(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
