"""oci://HOST/REPO: plain HTTP for loopback registries only; malformed locations named."""

from __future__ import annotations

import pytest

from mlos_repro.errors import BadInputError
from mlos_repro.oci import parse_location


@pytest.mark.parametrize(("url", "insecure"), [
    ("oci://127.0.0.1:5000/mlos/store", True),
    ("oci://127.8.9.10/mlos", True),
    ("oci://localhost:5000/mlos", True),
    ("oci://[::1]:5000/mlos", True),
    ("oci://registry.example:5000/mlos/store", False),
    ("oci://10.0.0.5:5000/mlos", False),
    ("oci://[2001:db8::1]/mlos", False),
    ("oci://localhost.evil.example/mlos", False),
])
def test_plain_http_only_on_loopback(url: str, insecure: bool) -> None:
    location = parse_location(url)
    assert location.insecure is insecure
    assert location.url == url


@pytest.mark.parametrize("url", ["oci://registry.example", "oci://registry.example/", "oci:///mlos",
                                 "oci://registry.example/Mlos", "oci://registry.example/mlos store",
                                 "oci://reg istry/mlos", "https://registry.example/mlos",
                                 "oci://registry.example/mlos//store", "oci://registry.example:99999999/mlos"])
def test_a_malformed_location_is_named(url: str) -> None:
    with pytest.raises(BadInputError, match="expected oci://HOST"):
        parse_location(url)
