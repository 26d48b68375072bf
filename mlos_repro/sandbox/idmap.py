"""Run a command as root of a new user namespace that maps host IDs 0-65535 onto themselves.

This is how a privileged stage runs (bwrap is started through it). Inside, files get real
owners (dpkg's chown of a system user's files works, and the host sees the same numbers), and
root has every capability over the sandbox's own namespaces; but the kernel checks capabilities
over the host (making device nodes, mounting devtmpfs or a disk, loading modules, setting the
clock, raw I/O, rebooting) against the host's user namespace, where it has none. A maintainer
script that runs `mknod /dev/sda b 8 0` gets EPERM.

Usage: python -m mlos_repro.sandbox.idmap COMMAND [ARG...]  (as the host's root)

The process execs COMMAND itself, so it stays the caller's direct child (bwrap's
--die-with-parent keeps its meaning). A helper forked before the unshare, still in the host's
namespace, writes the maps: a process cannot write its own.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
RANGE = 65536  # IDs 0..65535: every user and group a Debian system allocates (nobody is 65534)


def _unshare_user() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m mlos_repro.sandbox.idmap COMMAND [ARG...]", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("mlos_repro.sandbox.idmap: needs the host's root to map IDs 0-65535", file=sys.stderr)
        return 1
    target = os.getpid()
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(ready_w)
        code = 1
        try:
            if os.read(ready_r, 1) == b"u":
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{target}/{name}", "w") as f:
                        f.write(f"0 0 {RANGE}\n")
                code = 0
        except OSError as e:
            print(f"mlos_repro.sandbox.idmap: cannot map IDs: {e}", file=sys.stderr)
        os._exit(code)
    os.close(ready_r)
    try:
        _unshare_user()
    except OSError as e:
        os.close(ready_w)
        os.waitpid(helper, 0)
        print(f"mlos_repro.sandbox.idmap: {e}", file=sys.stderr)
        return 1
    os.write(ready_w, b"u")
    os.close(ready_w)
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return 1
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
