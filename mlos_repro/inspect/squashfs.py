"""squashfs images, streamed as tar by sqfs2tar (squashfs-tools-ng)."""

from __future__ import annotations

from mlos_repro.inspect.tar import PipedTar


class SquashfsReader(PipedTar):
    kind = "squashfs"
    argv = ("sqfs2tar", "--no-skip", "{}")
