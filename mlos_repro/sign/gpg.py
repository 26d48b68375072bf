"""OpenPGP signing with GnuPG: a named key in a GnuPG home, or the development key.

The development key is made on first use in the user's data directory and says so in its
user id; it lets `make build` yield a signed, installable repository, never a release.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import subprocess
from pathlib import Path

from mlos_repro import run
from mlos_repro.errors import SigningError

log = logging.getLogger(__name__)

DEV_UID = "MLOS Linux development archive key (not for release) <dev-archive@mlos.invalid>"


# A Unix socket path holds at most 107 bytes; gpg-agent's lives in the GnuPG home when the
# system has no /run/user/UID.
MAX_SOCKET_PATH = 107


def check_agent_socket(home: Path) -> None:
    """Refuse a GnuPG home whose agent socket path is too long (gpg only says "No agent")."""
    result = run.run(["gpgconf", "--homedir", home, "--list-dirs", "agent-socket"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    socket = result.stdout.decode().strip()
    if result.returncode == 0 and len(socket.encode()) > MAX_SOCKET_PATH:
        raise SigningError(f"GnuPG home {home} is too deep: its agent socket {socket} is longer than "
                           f"{MAX_SOCKET_PATH} bytes, so gpg-agent cannot start",
                           "use a GnuPG home with a shorter path, or a system with /run/user/UID")


# GnuPG homes where no agent ran before our first gpg call: the agent gpg starts there is ours,
# stopped when the command ends (a user's own agent is left alone).
_checked_homes: set[Path] = set()
_our_agents: set[Path] = set()


def _claim_agent(home: Path) -> None:
    """Before the first gpg call in `home`: note whether the agent it will use is ours to stop."""
    if home in _checked_homes:
        return
    _checked_homes.add(home)
    # (gpg-connect-agent exits 0 either way; only a running agent answers with its pid.)
    answer = run.run(["gpg-connect-agent", "--homedir", home, "--no-autostart", "GETINFO pid", "/bye"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
                     env=run.host_env({"GNUPGHOME": str(home)})).stdout
    running = answer.startswith(b"D ")
    if not running:
        if not _our_agents:
            atexit.register(stop_agents)
        _our_agents.add(home)


def stop_agents() -> None:
    """Stop every gpg-agent our gpg calls started (at exit; callable earlier)."""
    for home in sorted(_our_agents):
        if home.is_dir():
            run.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, check=False, env=run.host_env({"GNUPGHOME": str(home)}))
    _our_agents.clear()
    _checked_homes.clear()


def data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "mlos-repro"


class GpgSigner:
    """Signs with one secret key of a GnuPG home; `key` may be any gpg key specifier."""

    def __init__(self, home: Path, key: str | None = None, *, development: bool = False) -> None:
        self.home = home.absolute()
        self.development = development
        if not self.home.is_dir():
            raise SigningError(f"GnuPG home {self.home} does not exist",
                               "name the directory holding the archive key (--gnupghome), or create "
                               "keys with: mlos-repro keys init DIR")
        check_agent_socket(self.home)
        self.fingerprint, self.uid = self._resolve(key)

    def _gpg(self, *args: str, stdin: bytes | None = None, what: str) -> bytes:
        _claim_agent(self.home)
        argv = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", *args]
        result = run.run_or_raise(argv, SigningError, f"gpg could not {what} (GnuPG home {self.home})",
                                  hint="check that the key is present, not expired, and has no passphrase "
                                       "the agent cannot supply in batch mode",
                                  input=stdin, env=run.host_env({"GNUPGHOME": str(self.home)}))
        return result.stdout

    def _resolve(self, key: str | None) -> tuple[str, str]:
        wanted = key or "(any)"
        try:
            listing = self._gpg("--with-colons", "--list-secret-keys", *([key] if key else []),
                                what="list secret keys").decode()
        except SigningError:
            if key is None:
                raise  # gpg cannot list this home at all: say why, not "no key"
            listing = ""  # the named key is not there: said below
        usable: list[tuple[str, str]] = []
        current: list[str] | None = None
        for line in listing.splitlines():
            fields = line.split(":")
            if fields[0] == "sec":
                # validity (field 2) r = revoked, e = expired; capabilities (field 12) upper case
                # are those of the whole key
                ok = fields[1] not in ("r", "e", "d") and "S" in fields[11]
                current = [] if ok else None
            elif fields[0] == "fpr" and current is not None and not current:
                current.append(fields[9])
            elif fields[0] == "uid" and current is not None and len(current) == 1:
                current.append(fields[9])
                usable.append((current[0], current[1]))
                current = None
        if not usable:
            raise SigningError(f"no usable secret signing key {wanted} in GnuPG home {self.home}",
                               "create one (mlos-repro keys init DIR) or name another key with "
                               "--archive-key")
        if len(usable) > 1 and key is None:
            raise SigningError(f"GnuPG home {self.home} holds {len(usable)} secret signing keys: "
                               + ", ".join(f for f, _ in usable), "name one with --archive-key")
        return usable[0]

    def clearsign(self, data: bytes) -> bytes:
        """InRelease: the data with an inline signature."""
        return self._gpg("--local-user", self.fingerprint + "!", "--digest-algo", "SHA512",
                         "--clearsign", stdin=data, what="clearsign")

    def detach(self, data: bytes) -> bytes:
        """Release.gpg: an armored detached signature."""
        return self._gpg("--local-user", self.fingerprint + "!", "--digest-algo", "SHA512",
                         "--armor", "--detach-sign", stdin=data, what="sign")

    def export_armored(self) -> bytes:
        """The public key, ASCII-armored: what users import to check a release."""
        return self._gpg("--armor", "--export", self.fingerprint, what="export the public key")

    def export(self) -> bytes:
        """The public key as a binary keyring, for apt's signed-by."""
        return self._gpg("--export", self.fingerprint, what="export the public key")


def generate_key(home: Path, uid: str) -> None:
    """A passphrase-less ed25519 signing key in home (created 0700 if needed)."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    check_agent_socket(home)
    _claim_agent(home.absolute())
    argv = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode",
            "loopback", "--passphrase", "", "--quick-generate-key", uid, "ed25519", "sign", "never"]
    run.run_or_raise(argv, SigningError, f"gpg could not create a key in {home}",
                     env=run.host_env({"GNUPGHOME": str(home)}))


def development_signer() -> GpgSigner:
    """The development archive key, made on first use under the user's data directory."""
    home = data_home() / "dev-gnupg"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / ".dev-gnupg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return GpgSigner(home, development=True)
        except SigningError:
            if home.exists() and any(home.glob("private-keys-v1.d/*")):
                raise
        log.warning("creating the development archive key in %s (not for release)", home)
        generate_key(home, DEV_UID)
        return GpgSigner(home, development=True)
