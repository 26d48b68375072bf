"""A local Fulcio + Rekor for tests, on 127.0.0.1, with real cryptography.

What sigstore-python's signing client needs and its offline verifier checks:

- OIDC: a JWT with aud "sigstore" (unsigned claims are all the client reads);
- Fulcio `POST /api/v2/signingCert`: a leaf for the CSR's key, with the token's subject as
  an email SAN and its issuer in the Fulcio issuer extensions, code-signing EKU, and an
  embedded SCT signed by a CT log key that the trusted root lists;
- Rekor `POST /api/v1/log/entries` (hashedrekord): the entry with an RFC 6962 inclusion proof,
  a checkpoint signed as a note by the log key, and a signed entry timestamp.

`trusted_root()` and `trust_config()` describe this instance in sigstore's own formats.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
UTC = datetime.UTC


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(spki(key)).digest()


def der_octets(data: bytes) -> bytes:
    n = len(data)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return b"\x04" + length + data


def der_utf8(text: str) -> bytes:
    data = text.encode()
    return b"\x0c" + bytes([len(data)]) + data


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return _leaf(leaves[0])
    k = _split(len(leaves))
    return _node(root(leaves[:k]), root(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*path(m, leaves[:k]), root(leaves[k:])]
    return [*path(m - k, leaves[k:]), root(leaves[:k])]


class Standin:
    def __init__(self) -> None:
        now = datetime.datetime.now(UTC)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mlos-repro tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "local fulcio")])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key())
        self.ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .add_extension(ski, critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                                  critical=False)
                   .sign(self.ca_key, hashes.SHA256()))
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.log_key = ec.generate_private_key(ec.SECP256R1())
        self.leaves: list[bytes] = []
        self.lock = threading.Lock()
        self.origin = "mlos-repro tests - local rekor"
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/api/v2/signingCert":
                    token = self.headers["Authorization"].removeprefix("Bearer ")
                    answer = standin.signing_cert(body, token)
                elif self.path == "/api/v1/log/entries":
                    answer = standin.log_entry(body)
                else:
                    self.send_error(404)
                    return
                data = json.dumps(answer).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- OIDC ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"{self.url}/oidc"

    def token(self, subject: str, issuer: str | None = None, lifetime: int = 600) -> str:
        def b64(data: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
        now = int(time.time())
        claims = {"iss": issuer or self.issuer, "sub": subject, "aud": "sigstore", "iat": now, "nbf": now,
                  "exp": now + lifetime, "email": subject}
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.c2ln"

    # -- Fulcio -------------------------------------------------------------------------

    def signing_cert(self, body: dict[str, Any], token: str) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(base64.b64decode(body["certificateSigningRequest"]))
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        now = datetime.datetime.now(UTC)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.ca.subject)
                   .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(minutes=10))
                   .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                                  critical=False)
                   .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(claims["sub"])]), critical=True)
                   .add_extension(x509.UnrecognizedExtension(ISSUER_V1, claims["iss"].encode()), critical=False)
                   .add_extension(x509.UnrecognizedExtension(ISSUER_V2, der_utf8(claims["iss"])), critical=False))
        precert = builder.sign(self.ca_key, hashes.SHA256())
        stamp = int(time.time() * 1000)
        tbs = precert.tbs_certificate_bytes
        signed_entry = key_id(self.ca_key.public_key()) + len(tbs).to_bytes(3, "big") + tbs
        data = struct.pack(f"!BBQH{len(signed_entry)}sH", 0, 0, stamp, 1, signed_entry, 0)
        signature = self.ct_key.sign(data, ec.ECDSA(hashes.SHA256()))
        sct = (b"\x00" + key_id(self.ct_key.public_key()) + struct.pack("!QH", stamp, 0)
               + struct.pack("!BBH", 4, 3, len(signature)) + signature)
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        leaf = builder.add_extension(x509.UnrecognizedExtension(SCT_LIST, der_octets(sct_list)),
                                     critical=False).sign(self.ca_key, hashes.SHA256())
        pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf, self.ca)]
        return {"signedCertificateEmbeddedSct": {"chain": {"certificates": pems}}}

    # -- Rekor --------------------------------------------------------------------------

    def log_entry(self, proposed: dict[str, Any]) -> dict[str, Any]:
        body = rfc8785.dumps(proposed)
        log_id = key_id(self.log_key.public_key())
        with self.lock:
            self.leaves.append(body)
            index, leaves = len(self.leaves) - 1, list(self.leaves)
        integrated = int(time.time())
        tree_root = root(leaves)
        note = f"{self.origin}\n{len(leaves)}\n{base64.b64encode(tree_root).decode()}\n"
        note_sig = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = note + f"\n\u2014 local-rekor {base64.b64encode(log_id[:4] + note_sig).decode()}\n"
        encoded = base64.b64encode(body).decode()
        set_data = rfc8785.dumps({"body": encoded, "integratedTime": integrated, "logID": log_id.hex(),
                                  "logIndex": index})
        return {uuid.uuid4().hex: {
            "body": encoded, "integratedTime": integrated, "logID": log_id.hex(), "logIndex": index,
            "verification": {
                "inclusionProof": {"checkpoint": checkpoint, "hashes": [h.hex() for h in path(index, leaves)],
                                   "logIndex": index, "rootHash": tree_root.hex(), "treeSize": len(leaves)},
                "signedEntryTimestamp": base64.b64encode(
                    self.log_key.sign(set_data, ec.ECDSA(hashes.SHA256()))).decode(),
            }}}

    # -- trust material -----------------------------------------------------------------

    def trusted_root(self) -> dict[str, Any]:
        start = (datetime.datetime.now(UTC) - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def key(k: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": base64.b64encode(spki(k.public_key())).decode(),
                                  "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": {"start": start}},
                    "logId": {"keyId": base64.b64encode(key_id(k.public_key())).decode()}}

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [key(self.log_key, self.url)],
            "certificateAuthorities": [{
                "subject": {"organization": "mlos-repro tests", "commonName": "local fulcio"},
                "uri": self.url,
                "certChain": {"certificates": [{"rawBytes": base64.b64encode(
                    self.ca.public_bytes(serialization.Encoding.DER)).decode()}]},
                "validFor": {"start": start}}],
            "ctlogs": [key(self.ct_key, f"{self.url}/ct")],
            "timestampAuthorities": [],
        }

    def trust_config(self) -> dict[str, Any]:
        start = (datetime.datetime.now(UTC) - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def service(url: str) -> dict[str, Any]:
            return {"url": url, "majorApiVersion": 1, "validFor": {"start": start}, "operator": "mlos-repro tests"}

        return {
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [service(self.url)], "oidcUrls": [service(self.issuer)],
                "rekorTlogUrls": [service(self.url)], "tsaUrls": [],
                "rekorTlogConfig": {"selector": "ANY"}, "tsaConfig": {"selector": "ANY"},
            },
        }
