"""Bearer tokens: one format for node agents and (later) REST API clients.

A token reads `agft_<kind>_<id>_<secret>`. The id is public (it names the token in
lists, logs and revocations); the secret is 256 random bits, shown once at creation
and stored only as its SHA-256. A slow password hash would add nothing here: the
secret is random, not chosen by a person, so it cannot be guessed from its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "agft"
KINDS = ("node", "api")
ID_HEX = 12


class TokenFormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class NewToken:
    token_id: str
    plaintext: str  # shown to the admin once, never stored
    secret_sha256: str


@dataclass(frozen=True, slots=True)
class PresentedToken:
    kind: str
    token_id: str
    secret: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(kind: str) -> NewToken:
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    token_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    return NewToken(token_id, f"{PREFIX}_{kind}_{token_id}_{secret}", secret_hash(secret))


def parse(plaintext: str) -> PresentedToken:
    """Split a presented token; TokenFormatError says what is wrong without echoing it."""
    parts = plaintext.strip().split("_", 3)
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TokenFormatError("not an AGFT token (expected agft_<kind>_<id>_<secret>)")
    _, kind, token_id, secret = parts
    if kind not in KINDS:
        raise TokenFormatError(f"unknown token kind {kind!r}")
    if len(token_id) != ID_HEX or not all(c in "0123456789abcdef" for c in token_id):
        raise TokenFormatError("malformed token id")
    if not 20 <= len(secret) <= 128:
        raise TokenFormatError("malformed token secret")
    return PresentedToken(kind, token_id, secret)


def matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_sha256)


def bearer(metadata: object) -> str | None:
    """The token of an `authorization: Bearer ...` entry in gRPC metadata, if any."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
