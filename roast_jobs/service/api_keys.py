"""API keys of the HTTP API: made, found and revoked here; only their SHA-256 is stored.

A key is ``rmp_`` and 43 URL-safe characters (32 random bytes), shown once when made.
32 random bytes cannot be guessed, so a plain SHA-256 (not a slow password hash) is
enough to store and look them up by.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.db.models import ApiKey, UserRole
from roast_jobs.domain.evaluations import NotFound

PREFIX = "rmp_"
SHOWN = 12  # characters of a key kept in clear to tell keys apart ("rmp_" + 8)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from."""

    user_id: str
    role: UserRole
    key_id: str

    @property
    def is_admin(self) -> bool:
        return self.role is UserRole.ADMIN


@dataclass(frozen=True)
class KeyInfo:
    id: str
    user_id: str
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def find_user(session: Session, user: str) -> tuple[str, UserRole]:
    """A user by id or email."""
    row = session.execute(
        text('SELECT id, role FROM "User" WHERE id = :u OR email = :u ORDER BY id = :u DESC'),
        {"u": user},
    ).first()
    if row is None:
        raise NotFound("user", [user])
    return row[0], UserRole(row[1])


def create(session: Session, user: str, name: str | None = None) -> tuple[str, KeyInfo]:
    """A new key for ``user`` (id or email): the key itself, shown only now, and its row."""
    user_id, _role = find_user(session, user)
    key = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(user_id=user_id, name=name, prefix=key[:SHOWN], key_hash=digest(key))
    session.add(row)
    session.flush()
    session.refresh(row)
    return key, _info(row)


def authenticate(session: Session, key: str) -> Caller | None:
    """The caller a key belongs to; None for an unknown or revoked key."""
    if not key.startswith(PREFIX) or len(key) > 200:
        return None
    row = session.execute(
        text(
            'SELECT k.id, u.id, u.role FROM "ApiKey" k JOIN "User" u ON u.id = k."userId" '
            'WHERE k."keyHash" = :h AND k."revokedAt" IS NULL'
        ),
        {"h": digest(key)},
    ).first()
    return None if row is None else Caller(row[1], UserRole(row[2]), row[0])


def list_keys(session: Session, user: str) -> list[KeyInfo]:
    user_id, _role = find_user(session, user)
    rows = session.query(ApiKey).filter(ApiKey.user_id == user_id).order_by(ApiKey.created_at)
    return [_info(r) for r in rows]


def revoke(session: Session, key_id_or_prefix: str) -> KeyInfo:
    """Revoke one key by its id or its shown prefix (which must name one key)."""
    rows = (
        session.query(ApiKey)
        .filter((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
        .with_for_update()
        .all()
    )
    if not rows:
        raise NotFound("api key", [key_id_or_prefix])
    if len(rows) > 1:
        raise ValueError(f"{key_id_or_prefix!r} names {len(rows)} keys: give the key's id")
    [row] = rows
    if row.revoked_at is None:
        session.execute(
            text('UPDATE "ApiKey" SET "revokedAt" = CURRENT_TIMESTAMP WHERE id = :id'),
            {"id": row.id},
        )
        session.refresh(row)
    return _info(row)


def set_role(session: Session, user: str, role: UserRole) -> str:
    user_id, _old = find_user(session, user)
    session.execute(
        text('UPDATE "User" SET role = CAST(:r AS "UserRole") WHERE id = :id'),
        {"r": role.value, "id": user_id},
    )
    return user_id


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        row.id, row.user_id, row.name, row.prefix, row.created_at, row.last_used_at,
        row.revoked_at,
    )  # fmt: skip
