"""Who may do what: named bearer tokens with roles.

* `viewer`: every GET (status, plans, event streams, metrics).
* `operator`: also submit, pause, resume, abort, retry and skip.
* `approver`: also approve (the point of no return) and rollback.

Tokens come from the daemon's configuration (`orchestrator serve --config`),
each stored as the SHA-256 of the token, never the token itself; the token
file the daemon writes in its state directory is the `default` token, an
approver, for the local CLI. A presented token is hashed and compared with
every known hash in constant time, whatever its bytes. The token's name is
what the journal records as `by` for every control action.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum

DEFAULT_NAME = "default"


class Role(IntEnum):
    """Ordered: each role may do what the ones below it may."""

    VIEWER = 1
    OPERATOR = 2
    APPROVER = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# control actions that need more than an operator
APPROVER_ACTIONS = frozenset({"approve", "rollback"})


def required_role(method: str, path: str) -> Role:
    """The least role a request needs."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return Role.VIEWER
    action = path.rstrip("/").rsplit("/", 1)[-1]
    if path.startswith("/v1/upgrades/") and action in APPROVER_ACTIONS:
        return Role.APPROVER
    return Role.OPERATOR


def digest(token: str | bytes) -> bytes:
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    role: Role
    sha256: bytes  # of the token's bytes


class Tokens:
    """Every token the daemon accepts."""

    def __init__(self, tokens: list[Token]) -> None:
        if not tokens:
            raise ValueError("no token at all would let nobody in")
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        self._tokens = tuple(tokens)

    @classmethod
    def single(cls, token: str, name: str = DEFAULT_NAME, role: Role = Role.APPROVER) -> Tokens:
        if not token:
            raise ValueError("an empty token would let anyone in")
        return cls([Token(name, role, digest(token))])

    def with_default(self, token: str) -> Tokens:
        """These tokens plus the state directory's `default` approver token."""
        others = [t for t in self._tokens if t.name != DEFAULT_NAME]
        return Tokens([Token(DEFAULT_NAME, Role.APPROVER, digest(token)), *others])

    def identify(self, presented: bytes) -> Token | None:
        """The token these bytes are, compared with every hash in constant time."""
        seen = digest(presented)
        found = None
        for token in self._tokens:  # no early exit: the time does not tell which matched
            if hmac.compare_digest(seen, token.sha256):
                found = token
        return found

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._tokens)
