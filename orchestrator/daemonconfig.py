"""The daemon's own configuration (`orchestrator serve --config FILE`): who
may call it, where secrets may come from, and its server limits. It is the
operator's file on the daemon's machine, never part of a submitted upgrade.

```yaml
tokens:                      # name -> role and the SHA-256 of the token
  alice:  {role: approver, sha256: 9f86d081884c7d659a2feaa0c55ad015...}
  ci-bot: {role: operator, sha256: ...}
  grafana: {role: viewer, sha256: ...}
secrets:                     # default: none; a submit naming others is 422
  env: [NOVA_DB_PASSWORD]
  dirs: [/etc/orchestrator/secrets]
limits:
  max_connections: 1024
  header_timeout: 10s        # a request's headers must arrive within this
  body_timeout: 60s          # and its body within this
  streams_per_token: 16      # open event streams per token
ssh:
  max_connections: 256       # SSH connections open at once, every upgrade together
```

`orchestrator token new NAME --role ROLE` prints a fresh token and its line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, StrictInt, field_validator

from orchestrator.access import DEFAULT_NAME, Role, Token, Tokens
from orchestrator.errors import InputError, Problem
from orchestrator.fields import STRICT, Duration
from orchestrator.source import Document, load_file, validate
from orchestrator.transport.slots import DEFAULT_MAX_CONNECTIONS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TokenEntry(BaseModel):
    model_config = STRICT
    role: Literal["viewer", "operator", "approver"]
    sha256: str = Field(description="hex SHA-256 of the token (`orchestrator token new`)")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX64.match(value):
            raise ValueError("sha256 must be 64 lower-case hex digits: the token's SHA-256")
        return value


class SecretSources(BaseModel):
    model_config = STRICT
    env: list[str] = []
    dirs: list[str] = []

    @field_validator("dirs")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/"):
                raise ValueError(f"{item!r}: secret directories must be absolute paths")
        return value


class Limits(BaseModel):
    model_config = STRICT
    max_connections: int = Field(1024, ge=1)
    header_timeout: Duration = 10.0
    body_timeout: Duration = 60.0
    streams_per_token: int = Field(16, ge=1)


class SSHLimits(BaseModel):
    model_config = STRICT
    # each is a file descriptor: beyond it, idle connections (least recently
    # used first) are closed, or a host waits for one to close
    max_connections: StrictInt = Field(DEFAULT_MAX_CONNECTIONS, ge=1)


class DaemonConfig(BaseModel):
    model_config = STRICT
    tokens: dict[str, TokenEntry] = {}
    secrets: SecretSources = SecretSources()
    limits: Limits = Limits()
    ssh: SSHLimits = SSHLimits()

    @field_validator("tokens")
    @classmethod
    def _names(cls, value: dict[str, TokenEntry]) -> dict[str, TokenEntry]:
        for name in value:
            if not NAME.match(name):
                raise ValueError(f"{name!r} is not a valid token name")
            if name == DEFAULT_NAME:
                raise ValueError("'default' is the state directory's token; name this one else")
        return value

    def tokens_with(self, default_token: str) -> Tokens:
        """The configured tokens plus the state directory's default approver."""
        named = [
            Token(name, Role[entry.role.upper()], bytes.fromhex(entry.sha256))
            for name, entry in self.tokens.items()
        ]
        if not named:
            return Tokens.single(default_token)
        return Tokens(named).with_default(default_token)


def load_config(path: Path | None) -> DaemonConfig:
    if path is None:
        return DaemonConfig()
    doc: Document = load_file(path)
    if doc.data is None:
        raise InputError(Problem(file=str(path), message="the configuration is empty"))
    config: DaemonConfig = validate(DaemonConfig, doc)
    return config
