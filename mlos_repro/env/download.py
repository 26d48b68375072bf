"""Downloads into the store, checked against a pinned sha256 before anything is kept."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Callable

from mlos_repro.errors import BadInputError, DigestMismatchError
from mlos_repro.store import Store

log = logging.getLogger(__name__)
TIMEOUT = 120


def download(store: Store, url: str, expected: str | None, what: str = "",
             on_chunk: Callable[[int], None] | None = None) -> str:
    """Fetch url into the store; a digest mismatch is refused and nothing is stored.

    `what` names the thing for messages (e.g. the locked package), the URL is added to it.
    """
    label = f"{what} ({url})" if what else url
    log.info("GET %s", url)
    h = hashlib.sha256()
    with store.temp_file("dl") as (tmp, out):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk))
            out.flush()
        except (urllib.error.URLError, OSError) as e:
            raise BadInputError(f"{label}: download failed ({e})",
                                "check the network or the mirror setting; fetch again later") from None
        if expected is not None and h.hexdigest() != expected:
            raise DigestMismatchError(
                f"{label}: sha256 is {h.hexdigest()}, but {expected} was pinned; refused, not stored",
                "the download is corrupt or the pin is wrong; check the source and re-pin")
        return store.adopt_file(tmp, expected, what=label)
