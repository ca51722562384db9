"""Dashboard sessions: a login with an API token becomes an HttpOnly session cookie.

The cookie holds 256 random bits; the table holds their SHA-256, the token the login
used (so revoking the token ends its sessions) and the session's CSRF token, which
every form that changes something must send back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import Token, WebSession

COOKIE = "agft_session"
LIFETIME = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the token behind the request, its role, and how it came."""

    token_id: str
    role: str
    name: str
    via: str  # "bearer" or "session"
    csrf_token: str | None = None  # sessions only

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def start_session(factory: sessionmaker[Session], token_id: str) -> tuple[str, str]:
    """A new session for a verified API token: (cookie secret, CSRF token)."""
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    with factory.begin() as db:
        db.add(
            WebSession(
                id=_hash(secret),
                token_id=token_id,
                csrf_token=csrf,
                created_at=now,
                expires_at=now + LIFETIME,
            )
        )
    return secret, csrf


def session_principal(factory: sessionmaker[Session], secret: str | None) -> Principal | None:
    """The principal of a live session cookie; None if unknown, expired or revoked."""
    if not secret or len(secret) > 128:
        return None
    now = datetime.now(UTC)
    with factory() as db:
        row = db.execute(
            select(WebSession, Token)
            .join(Token, Token.id == WebSession.token_id)
            .where(WebSession.id == _hash(secret))
        ).first()
    if row is None:
        return None
    session, token = row
    expires = session.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive UTC
        expires = expires.replace(tzinfo=UTC)
    if expires <= now or token.revoked_at is not None or token.role is None:
        return None
    return Principal(token.id, token.role, token.name, "session", session.csrf_token)


def end_session(factory: sessionmaker[Session], secret: str | None) -> None:
    if secret:
        with factory.begin() as db:
            db.execute(delete(WebSession).where(WebSession.id == _hash(secret)))


def csrf_ok(principal: Principal, presented: str | None) -> bool:
    if principal.via != "session":
        return True  # a bearer token is not sent by browsers on their own
    return bool(presented and principal.csrf_token) and hmac.compare_digest(
        presented or "", principal.csrf_token or ""
    )
