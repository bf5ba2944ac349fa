"""DKIM signing (RFC 6376): rsa-sha256, relaxed/relaxed.

dkimpy parses, selects and canonicalises the header fields and hashes them. Two steps are done
here instead, for speed (delivery signs every message; profiled with py-spy):
- the RSA signature goes through `cryptography` (OpenSSL, which also lets other threads run):
  dkimpy's pure-Python RSA takes about 6 ms per 2048-bit signature against 0.2 ms;
- the relaxed body canonicalisation is two regular expressions over the whole body, where
  dkimpy runs two per line (a fifth of all delivery time at 10 KB). Tests check that both give
  the same bytes, and every signature is verified with dkimpy in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from functools import lru_cache

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

_POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_WSP_RUN = re.compile(rb"[ \t]+")
_SPACE_AT_EOL = re.compile(rb" \r\n")
_BODY_START = re.compile(rb"\r?\n\r?\n")
# RFC 8058: the one-click header must be signed too (Gmail and Yahoo check it)
_SIGNED = frozenset(dkim.DKIM.SHOULD) | {b"list-unsubscribe-post"}
# signed once more than they occur, so that none can be added after signing
_OVERSIGNED = frozenset((b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                         b"list-unsubscribe", b"list-unsubscribe-post"))


class SigningError(Exception):
    pass


@lru_cache(maxsize=256)
def load_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"DKIM key cannot be read: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError("DKIM key is not an RSA key")
    return key


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: runs of spaces and tabs become one space, spaces at line ends go, empty
    lines at the end go, and a non-empty body ends in CRLF. `body` has CRLF line ends; a last
    line without one is read as the line it becomes on the wire (SMTP ends DATA with CRLF)."""
    if b"\t" in body or b"  " in body or b" \r\n" in body or body.endswith(b" "):
        body = _SPACE_AT_EOL.sub(b"\r\n", _WSP_RUN.sub(b" ", body))
        if body.endswith(b" "):
            body = body[:-1]
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def signature_header(message: bytes, domain: str, selector: str, private_key_pem: str) -> bytes:
    """The DKIM-Signature header line (ending in CRLF) to put in front of `message`."""
    split = _BODY_START.search(message)
    head, body = (message[: split.start()], message[split.end():]) if split else (message, b"")
    try:
        headers, _ = dkim.rfc822_parse(head + b"\r\n\r\n")
    except dkim.MessageFormatError as exc:
        raise SigningError(str(exc)) from None
    present = [name.lower() for name, _ in headers if name.lower() in _SIGNED]
    if b"from" not in present:
        raise SigningError("the message has no From header")
    include = present + [name for name in dict.fromkeys(present) if name in _OVERSIGNED]
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    d = domain.encode()
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", d),
        (b"i", b"@" + d),
        (b"q", b"dns/txt"),
        (b"s", selector.encode()),
        (b"t", str(int(time.time())).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
    ]
    name = b"DKIM-Signature"
    # b= goes on a line of its own, so that adding the signature changes no other folding
    unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name)) + b";\r\n b="
    digest = hashlib.sha256()
    dkim.hash_headers(
        digest,
        _POLICY,
        _POLICY.canonicalize_headers(headers),
        include,
        (name, b" " + unsigned),
        dict(fields) | {b"b": b""},
    )
    key = load_key(private_key_pem)
    signature = key.sign(
        digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
    )
    return name + b": " + unsigned + base64.b64encode(signature) + b"\r\n"
