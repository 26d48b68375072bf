"""`--store oci://HOST[:PORT]/REPO`: an OCI registry as the shared store, with a signed action cache.

The local store stays the working copy (the sandbox reads and writes files); the registry is
what several machines share:

    blobs           every blob as an OCI blob: its digest is its sha256 already. A blob read
                    from the registry is re-hashed before it is stored; a mismatch is refused
                    with the digest named and nothing of it is kept.
    stage entries   cache key -> outputs, as an OCI artifact manifest tagged KEY-SIGNER (the
                    first 16 hex digits of the signing key's id): its config is a DSSE envelope
                    of the entry signed by the builder key of whoever ran the stage, its layers
                    every blob the entry needs (outputs, tree members, member manifests, log).

A shared entry is used only when it is signed by keys the user trusts (--cache-key), and with
--cache-threshold K only when K distinct trusted keys signed entries with the same outputs for
that key; otherwise the stage is built. An entry is written only when a signing key is given.

A registry is spoken to over TLS; plain HTTP only to one on a loopback address that does not
speak TLS. Credentials, when it asks, are those of the usual docker configuration (Registry).
Downloads are bounded (Registry.pull_blob).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import re
import shutil
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from mlos_repro.digest import canonical_json, is_sha256
from mlos_repro.errors import BadInputError, DigestMismatchError, EnvironmentProblem
from mlos_repro.keyfile import load_signer
from mlos_repro.store import COPY_CHUNK, OutputKind, StageEntry, Store

log = logging.getLogger(__name__)

SCHEME = "oci://"
ENTRY_TYPE = "application/vnd.mlos-repro.stage-entry+json"  # the DSSE payload
CONFIG_TYPE = "application/vnd.mlos-repro.stage-entry.dsse+json"
ARTIFACT_TYPE = "application/vnd.mlos-repro.stage.v1"
BLOB_TYPE = "application/octet-stream"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ENVELOPE_LIMIT = 1 << 20
DISK_RESERVE = 256 << 20  # bytes a download leaves free on the store's disk
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


@dataclass(frozen=True)
class Location:
    host: str  # HOST[:PORT]
    repository: str
    insecure: bool  # plain HTTP: loopback only

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.host}/{self.repository}"


def is_oci(value: str | Path | None) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def parse_location(url: str) -> Location:
    """oci://HOST[:PORT]/REPO, plain HTTP for a loopback HOST only."""
    rest = url.removeprefix(SCHEME)
    host, _, repository = rest.partition("/")
    if not url.startswith(SCHEME) or not _HOST.fullmatch(host) or not _REPO.fullmatch(repository):
        raise BadInputError(f"--store {url}: expected oci://HOST[:PORT]/REPOSITORY (a lowercase OCI "
                            "repository name, e.g. oci://registry.example:5000/mlos/store)")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    return Location(host, repository, insecure=loopback)


@dataclass
class CacheTrust:
    """Whose shared stage entries count, how many must agree, and who signs the ones we write."""

    keys: dict[str, Key] = field(default_factory=dict)  # keyid -> public key
    threshold: int = 1
    signer: CryptoSigner | None = None

    @staticmethod
    def load(key_files: Iterable[Path], threshold: int, signer: CryptoSigner | None) -> CacheTrust:
        keys: dict[str, Key] = {}
        for path in key_files:
            try:
                data = json.loads(path.read_bytes())
                keyid = data.pop("keyid")
                keys[keyid] = SSlibKey.from_dict(keyid, data)
            except FileNotFoundError:
                raise BadInputError(f"--cache-key {path}: no such file") from None
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise BadInputError(f"--cache-key {path}: not a public key file as `keys init` writes "
                                    f"(attestation/builder.pub.json): {e}") from None
        if signer is not None:  # what we wrote ourselves we trust
            keys.setdefault(signer.public_key.keyid, signer.public_key)
        if threshold < 1:
            raise BadInputError(f"--cache-threshold {threshold}: must be at least 1")
        if threshold > len(keys):
            raise BadInputError(f"--cache-threshold {threshold}: only {len(keys)} trusted keys "
                                "(--cache-key) could ever agree", "trust more keys or lower the threshold")
        return CacheTrust(keys, threshold, signer)


@dataclass(frozen=True)
class SharedConfig:
    """--store oci://HOST/REPO: whose entries are trusted, how many must agree, who signs ours
    (plain values: a Dask worker gets them and opens its own SharedStore)."""

    url: str
    trusted: tuple[Path, ...] = ()
    threshold: int = 1
    sign_with: Path | None = None  # a `keys init` directory: its builder key

    def open(self, store: Store) -> SharedStore:
        parse_location(self.url)  # a wrong URL is named first
        signer = load_signer(self.sign_with, "builder") if self.sign_with is not None else None
        shared = SharedStore(self.url, store, CacheTrust.load(self.trusted, self.threshold, signer))
        shared.config = self
        return shared


class Registry:
    """One repository of an OCI registry, through the oras SDK.

    It is reached over HTTPS (a private CA: REQUESTS_CA_BUNDLE=FILE); a loopback registry that
    does not speak TLS, over plain HTTP. When it asks for credentials, those of the usual
    docker configuration are given ($DOCKER_CONFIG/config.json, else ~/.docker/config.json,
    as `docker login` or `oras login` writes them): as a bearer token got from its token
    service, or as basic credentials, as the registry's challenge asks.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        scheme, challenge = self._probe()
        self.secure = scheme == "https"
        self.backend = "basic" if challenge.lower().startswith("basic") else "token"
        self.config = docker_config()
        if self.backend == "basic" and not self._credentials():
            # Asked for basic credentials with none to give: said now, not by the SDK failing later.
            raise self._refused("login", "it asks for basic credentials")

    @functools.cached_property
    def client(self) -> Any:
        """The SDK's client, made when the registry is first used (importing it takes a second:
        a build whose every stage is in the local store never needs it)."""
        import oras.provider

        client = oras.provider.Registry(self.location.host, insecure=not self.secure,
                                        auth_backend=self.backend)
        configs = [str(self.config)] if self.config.exists() else []
        client.auth.load_configs(client.get_container(self.container_name), configs=configs)
        return client

    @property
    def container_name(self) -> str:
        return f"{self.location.host}/{self.location.repository}"

    @functools.cached_property
    def container(self) -> Any:
        return self.client.get_container(self.container_name)

    def _credentials(self) -> bool:
        """Whether the docker configuration holds credentials for this registry's host."""
        try:
            auths = json.loads(self.config.read_text()).get("auths", {})
        except (OSError, ValueError, AttributeError):
            return False
        hosts = {re.sub(r"^https?://|/.*$", "", name) for name in auths if isinstance(name, str)}
        host = self.location.host
        return host in hosts or host.replace("127.0.0.1", "localhost") in hosts

    def _probe(self) -> tuple[str, str]:
        """Reach /v2/ once, without the SDK's retries (a registry that is not there is named
        now): the scheme it speaks and the authentication it asks for ("" when none)."""
        schemes = ("https", "http") if self.location.insecure else ("https",)
        why = ""
        for scheme in schemes:
            url = f"{scheme}://{self.location.host}/v2/"
            try:
                response = requests.get(url, timeout=10)
            except requests.exceptions.SSLError as e:
                if _untrusted_certificate(e):
                    raise EnvironmentProblem(
                        f"{self.location.url}: the registry's TLS certificate is not trusted: {str(e)[:200]}",
                        "give the CA that signed it with REQUESTS_CA_BUNDLE=FILE (PEM), or add it to the "
                        "system's trusted certificates") from None
                why = "it does not speak TLS"
                continue
            except requests.RequestException as e:
                why = ("no connection (refused, or no route to it)" if isinstance(e, requests.ConnectionError)
                       else str(e)[:160])
                continue
            if response.status_code not in (200, 401):  # 401: it asks for credentials
                raise EnvironmentProblem(f"{url}: HTTP {response.status_code}: not an OCI registry")
            return scheme, response.headers.get("WWW-Authenticate", "") if response.status_code == 401 else ""
        raise EnvironmentProblem(f"cannot reach the registry {self.location.url}: {why}",
                                 "start it, or name another with --store oci://HOST/REPO")

    def _request(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            response = call(*args, **kwargs)
        except requests.exceptions.ConnectionError as e:
            raise EnvironmentProblem(f"cannot reach the registry {self.location.url} ({what}): "
                                     f"{str(e)[:160]}",
                                     "start it, or name another with --store oci://HOST/REPO") from None
        except ValueError as e:  # the SDK: "Cannot respond to request for authentication."
            raise self._refused(what, str(e)) from None
        if isinstance(response, requests.Response) and response.status_code in (401, 403):
            raise self._refused(what, f"HTTP {response.status_code}")
        return response

    def _refused(self, what: str, why: str) -> EnvironmentProblem:
        mine = (f"those in {self.config} were not accepted" if self._credentials()
                else f"none are in {self.config}")
        return EnvironmentProblem(
            f"{self.location.url} ({what}): the registry asks for credentials and {mine} ({why})",
            f"log in to {self.location.host} (docker login / oras login write {self.config}), or set "
            "DOCKER_CONFIG to the directory of a config.json that holds them")

    def has_blob(self, hexdigest: str) -> bool:
        response = self._request("HEAD blob", self.client.get_blob, self.container, f"sha256:{hexdigest}",
                                 head=True)
        return bool(response.status_code == 200)

    def push_blob(self, path: Path, hexdigest: str) -> None:
        layer = {"mediaType": BLOB_TYPE, "digest": f"sha256:{hexdigest}", "size": path.stat().st_size}
        response = self._request("upload", self.client.upload_blob, str(path), self.container, layer)
        if response.status_code not in (200, 201, 202):
            raise EnvironmentProblem(f"{self.location.url}: uploading blob sha256:{hexdigest} was refused "
                                     f"(HTTP {response.status_code})", "check the registry's permissions")

    def pull_blob(self, hexdigest: str, dest: Path, what: str, most: int | None = None) -> None:
        """The blob's bytes into `dest`, no more than the registry said it would send (its
        Content-Length; without one, what leaves a reserve free on dest's disk), nor than `most`."""
        response = self._request("download", self.client.get_blob, self.container, f"sha256:{hexdigest}",
                                 stream=True)
        blob = f"{self.location.url}: blob sha256:{hexdigest} ({what})"
        with response:
            if response.status_code != 200:
                raise EnvironmentProblem(f"{blob} cannot be read (HTTP {response.status_code})",
                                         "the registry lost it: remove the stage entries that need it there, "
                                         "or build without --store oci://")
            free = shutil.disk_usage(dest.parent).free - DISK_RESERVE
            declared = response.headers.get("Content-Length", "")
            limit = int(declared) if declared.isdigit() else free
            if most is not None and limit > most:
                limit, declared = most, ""
            if limit > free:
                raise EnvironmentProblem(f"{blob} is {limit} bytes; "
                                         f"{dest.parent} has room for {max(free, 0)} (a reserve of "
                                         f"{DISK_RESERVE >> 20} MiB kept)", "free space on the store's disk")
            written = 0
            with dest.open("wb") as out:
                for chunk in response.iter_content(COPY_CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise DigestMismatchError(
                            f"{blob} sends more than the {limit} "
                            "bytes " + ("it declared" if declared.isdigit() else "allowed")
                            + ": refused, nothing of it was stored",
                            "the registry's copy is damaged or was changed; remove it there")
                    out.write(chunk)

    def tags(self) -> list[str]:
        """Every tag of the repository (none when nothing was pushed to it yet), page by page."""
        base = f"{self.client.prefix}://{self.location.host}"
        url: str | None = f"{base}/v2/{self.location.repository}/tags/list?n=1000"
        tags: list[str] = []
        while url is not None:
            response = self._request("tags", self.client.do_request, url, "GET",
                                     headers=dict(self.client.headers))
            if response.status_code == 404:
                return tags
            if response.status_code != 200:
                raise EnvironmentProblem(f"{self.location.url}: listing tags was refused "
                                         f"(HTTP {response.status_code})", "check the registry's permissions")
            tags += response.json().get("tags") or []
            following = response.links.get("next", {}).get("url")
            url = None if not following else following if following.startswith("http") else base + following
        return tags

    def manifest(self, tag: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("manifest", self.client.get_manifest,
                                             f"{self.container.registry}/{self.location.repository}:{tag}")
        return data

    def put_manifest(self, manifest: dict[str, Any], tag: str) -> None:
        target = self.client.get_container(f"{self.location.host}/{self.location.repository}:{tag}")
        response = self._request("manifest upload", self.client.upload_manifest, manifest, target)
        if response.status_code not in (200, 201):
            raise EnvironmentProblem(f"{self.location.url}: the manifest {tag} was refused "
                                     f"(HTTP {response.status_code}: {response.text[:200]})")


class SharedStore:
    """The registry behind a local store: entries found there, blobs pulled and re-hashed."""

    def __init__(self, url: str, store: Store, trust: CacheTrust) -> None:
        self.location = parse_location(url)
        self.store = store
        self.trust = trust
        self.registry = Registry(self.location)
        self.config: SharedConfig | None = None  # what opened it, for Dask workers to open theirs

    # -- blobs ----------------------------------------------------------------------

    def pull(self, hexdigest: str, what: str, most: int | None = None) -> None:
        """The blob into the local store, re-hashed; refused by digest if the bytes differ (or
        if there are more than `most`)."""
        if self.store.has_blob(hexdigest):
            return
        with self.store.temp_file("pull") as (tmp, _):
            self.registry.pull_blob(hexdigest, tmp, what, most)
            try:
                self.store.adopt_file(tmp, hexdigest, what)
            except DigestMismatchError:
                raise DigestMismatchError(
                    f"{self.location.url}: blob sha256:{hexdigest} ({what}) has other bytes: refused, "
                    "nothing of it was stored",
                    "the registry's copy is damaged or was changed; remove it there") from None

    def ensure(self, entry: StageEntry) -> None:
        """Every blob of `entry` in the local store (pulled where missing)."""
        for hexdigest, what in self._blobs(entry, pull=True):
            self.pull(hexdigest, what)

    def _blobs(self, entry: StageEntry, *, pull: bool = False) -> list[tuple[str, str]]:
        blobs: list[tuple[str, str]] = [(entry.log, "the stage log")]
        blobs += [(d.removeprefix("sha256:"), f"member manifest of {o}")
                  for o, d in sorted(entry.members.items())]
        for output, digest in sorted(entry.outputs.items()):
            hexdigest = digest.removeprefix("sha256:")
            blobs.append((hexdigest, f"output {output}"))
            if entry.kinds[output] == OutputKind.TREE:
                if pull:
                    self.pull(hexdigest, f"output {output}")
                blobs += [(e["sha256"], f"{output}/{e['path']}") for e in self.store.read_tree(hexdigest)
                          if e["type"] == "file"]
        return list(dict.fromkeys(blobs))

    # -- stage entries --------------------------------------------------------------

    def publish(self, entry: StageEntry) -> bool:
        """Push the entry's blobs and the entry signed by our key; False without a key."""
        signer = self.trust.signer
        if signer is None:
            return False
        layers = []
        for hexdigest, _ in self._blobs(entry):
            path = self.store.blob_path(hexdigest)
            if not self.registry.has_blob(hexdigest):
                self.registry.push_blob(path, hexdigest)
            layers.append({"mediaType": BLOB_TYPE, "digest": f"sha256:{hexdigest}",
                           "size": path.stat().st_size})
        envelope = Envelope(payload=canonical_json(entry.to_json()), payload_type=ENTRY_TYPE, signatures={})
        envelope.sign(signer)
        config = canonical_json(envelope.to_dict())
        config_digest = self.store.put_bytes(config)
        self.registry.push_blob(self.store.blob_path(config_digest), config_digest)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
                    "config": {"mediaType": CONFIG_TYPE, "digest": f"sha256:{config_digest}",
                               "size": len(config)},
                    "layers": layers,
                    "annotations": {"org.opencontainers.image.title": f"stage entry {entry.key}"}}
        self.registry.put_manifest(manifest, _tag(entry.key, signer.public_key.keyid))
        return True

    def lookup(self, key: str) -> StageEntry | None:
        """A stage entry for `key` that enough trusted keys signed alike, with its blobs now in
        the local store (and the entry recorded there); None when there is none."""
        prefix = f"{key}-"
        agreeing: dict[bytes, tuple[StageEntry, set[str]]] = {}
        for tag in sorted(t for t in self.registry.tags() if t.startswith(prefix)):
            signed = self._verified(tag, key)
            if signed is None:
                continue
            entry, keyid = signed
            same = canonical_json({"outputs": dict(entry.outputs), "kinds": dict(entry.kinds)})
            agreeing.setdefault(same, (entry, set()))[1].add(keyid)
        for entry, keyids in agreeing.values():
            if len(keyids) >= self.trust.threshold:
                self.ensure(entry)
                self.store.put_stage(entry)
                return entry
        if agreeing:
            log.info("stage %s: shared entries by %s trusted keys, %d needed: built here", key,
                     max(len(k) for _, k in agreeing.values()), self.trust.threshold)
        return None

    def _verified(self, tag: str, key: str) -> tuple[StageEntry, str] | None:
        """The entry of `tag` if a trusted key signed it and it is for `key`; None otherwise
        (an untrusted or broken entry is ignored, and said at -v)."""
        try:
            manifest = self.registry.manifest(tag)
            config = manifest["config"]["digest"].removeprefix("sha256:")
            if not is_sha256(config) or int(manifest["config"]["size"]) > ENVELOPE_LIMIT:
                raise ValueError("config is no small sha256 blob")
            self.pull(config, f"the signed entry {tag}", ENVELOPE_LIMIT)
            envelope = Envelope.from_dict(json.loads(self.store.read_blob(config, f"the signed entry {tag}")))
            signers = envelope.verify(list(self.trust.keys.values()), 1)
            if envelope.payload_type != ENTRY_TYPE:
                raise ValueError(f"payload type {envelope.payload_type}")
            entry = StageEntry.from_json(json.loads(envelope.payload))
        except (ValueError, KeyError, TypeError, AttributeError, VerificationError,
                requests.RequestException) as e:  # an entry we cannot read or trust is not used
            log.info("%s:%s ignored: %s", self.location.url, tag, str(e)[:200])
            return None
        keyid = next((k for k in signers if tag == _tag(key, k)), None)
        if entry.key != key or keyid is None:
            log.info("%s:%s ignored: signed for another key, or by another signer than its tag says",
                     self.location.url, tag)
            return None
        return entry, keyid


def docker_config() -> Path:
    """Where `docker login` keeps credentials: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker/config.json"


def _untrusted_certificate(error: BaseException) -> bool:
    """Whether a TLS failure is a certificate not verified (rather than no TLS spoken at all)."""
    seen: set[int] = set()
    queue: list[BaseException] = [error]
    while queue:
        e = queue.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            return True
        queue += [c for c in (e.__cause__, e.__context__, *getattr(e, "args", ()),
                              getattr(e, "reason", None)) if isinstance(c, BaseException)]
    return False


def _tag(key: str, keyid: str) -> str:
    return f"{key}-{keyid[:16]}"
