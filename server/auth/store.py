"""Tokens in the database: create (shown once), verify, revoke, list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from server.auth import tokens
from server.store.models import Token


class AuthError(Exception):
    """A presented token is not accepted; the message is safe to show the caller."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    kind: str
    node_id: str | None
    role: str | None
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def _info(row: Token) -> TokenInfo:
    return TokenInfo(
        row.id,
        row.kind,
        row.node_id,
        row.role,
        row.name,
        row.created_at,
        row.revoked_at,
        row.last_used_at,
    )


def create_node_token(factory: sessionmaker[Session], node_id: str) -> tuple[TokenInfo, str]:
    """A new token for one node; returns its info and the plaintext (shown once)."""
    node_id = node_id.strip()
    if not node_id or len(node_id) > 255 or not node_id.isprintable():
        raise ValueError("a node id is 1-255 printable characters")
    new = tokens.new_token("node")
    row = Token(
        id=new.token_id,
        kind="node",
        node_id=node_id,
        name=f"node {node_id}",
        secret_sha256=new.secret_sha256,
        created_at=datetime.now(UTC),
    )
    with factory.begin() as db:
        db.add(row)
    return _info(row), new.plaintext


ROLES = ("viewer", "admin")


def create_api_token(
    factory: sessionmaker[Session], role: str, name: str = ""
) -> tuple[TokenInfo, str]:
    """A new REST API token (viewer reads, admin also changes); plaintext shown once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    name = name.strip() or f"{role} token"
    if len(name) > 255 or not name.isprintable():
        raise ValueError("a token name is at most 255 printable characters")
    new = tokens.new_token("api")
    row = Token(
        id=new.token_id,
        kind="api",
        role=role,
        name=name,
        secret_sha256=new.secret_sha256,
        created_at=datetime.now(UTC),
    )
    with factory.begin() as db:
        db.add(row)
    return _info(row), new.plaintext


WORDS = {"node": "node", "api": "API"}


WORDS = {"node": "node", "api": "API"}


LAST_USED_RESOLUTION = timedelta(seconds=60)


def verify(factory: sessionmaker[Session], plaintext: str | None, kind: str) -> TokenInfo:
    """The token's record if it is known, of this kind, and not revoked; else AuthError."""
    word = WORDS[kind]
    if not plaintext:
        raise AuthError(f"no {word} token presented (authorization: Bearer agft_{kind}_...)")
    try:
        presented = tokens.parse(plaintext)
    except tokens.TokenFormatError as err:
        raise AuthError(str(err)) from None
    if presented.kind != kind:
        raise AuthError(
            f"a {WORDS[presented.kind]} token cannot be used here; a {word} token is needed"
        )
    with factory.begin() as db:
        row = db.get(Token, presented.token_id)
        # One answer for unknown and wrong secret: nothing to probe ids with.
        if row is None or not tokens.matches(presented.secret, row.secret_sha256):
            raise AuthError(f"unknown {word} token")
        if row.revoked_at is not None:
            raise AuthError(f"{word} token {row.id} was revoked")
        now = datetime.now(UTC)
        last = row.last_used_at
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        # A write per request would turn every API call and dashboard poll into a
        # database write; "last used" to the minute is what an admin needs.
        if last is None or now - last >= LAST_USED_RESOLUTION:
            row.last_used_at = now
        return _info(row)


def revoke(factory: sessionmaker[Session], what: str, kind: str = "node") -> list[TokenInfo]:
    """Revoke a token by id, or (node tokens) every live token of a node id."""
    now = datetime.now(UTC)
    match = or_(Token.id == what, Token.node_id == what) if kind == "node" else Token.id == what
    with factory.begin() as db:
        rows = db.scalars(
            select(Token).where(Token.revoked_at.is_(None), Token.kind == kind, match)
        ).all()
        for row in rows:
            row.revoked_at = now
        return [_info(r) for r in rows]


def list_tokens(factory: sessionmaker[Session], kind: str | None = None) -> list[TokenInfo]:
    with factory() as db:
        query = select(Token).order_by(Token.created_at)
        if kind is not None:
            query = query.where(Token.kind == kind)
        return [_info(r) for r in db.scalars(query)]


def revoked_among(factory: sessionmaker[Session], token_ids: list[str]) -> set[str]:
    """Which of these tokens are revoked now (connected sessions are re-checked with it)."""
    if not token_ids:
        return set()
    with factory() as db:
        return set(
            db.scalars(
                select(Token.id).where(Token.id.in_(token_ids), Token.revoked_at.is_not(None))
            )
        )
