"""Where the local daemon listens and keeps its token: the contract between
`orchestrator serve` (which writes these files) and the CLI (which reads
them when neither --server/--token nor the environment say otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:8750"
TOKEN_FILE = "token"
JOURNAL_FILE = "journal.sqlite3"  # the SQLite journal (without --store)
ADDRESS_FILE = "daemon.json"  # {"url": ..., "pid": ...}, written once the daemon listens

# the control actions, here (not in openapi.py) so the CLI can name them
# without loading the API: POST /v1/upgrades/{id}/<action>
ACTIONS = ("pause", "resume", "abort", "approve", "rollback")
# on a paused upgrade, for a host that failed in it
HOST_ACTIONS = {
    "retry": "run a failed host's phase procedure again when the upgrade resumes",
    "skip": "leave a failed host behind, out of service, so the gates may pass",
}
# a file name as the daemon repeats it in its messages
FILE_NAME_PATTERN = r"^[A-Za-z0-9_.+/-]{1,255}$"


def default_state_dir() -> Path:
    """$ORCHESTRATOR_STATE_DIR, else $XDG_STATE_HOME/orchestrator (~/.local/state)."""
    explicit = os.environ.get("ORCHESTRATOR_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "orchestrator"
