"""Where the local daemon listens and keeps its token: the contract between
`orchestrator serve` (which writes these files) and the CLI (which reads
them when neither --server/--token nor the environment say otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:8750"
TOKEN_FILE = "token"
ADDRESS_FILE = "daemon.json"  # {"url": ..., "pid": ...}, written once the daemon listens


def default_state_dir() -> Path:
    """$ORCHESTRATOR_STATE_DIR, else $XDG_STATE_HOME/orchestrator (~/.local/state)."""
    explicit = os.environ.get("ORCHESTRATOR_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "orchestrator"
