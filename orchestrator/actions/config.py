"""The `config` action: set or remove one INI key over SFTP.

The previous value (or its absence) is read first and returned so the engine
journals it *before* writing; undo writes exactly that back.
"""

from __future__ import annotations

from orchestrator.actions.inifile import get_value, set_value
from orchestrator.actions.remote import Remote
from orchestrator.model import ConfigAction


async def read_previous(remote: Remote, host: str, action: ConfigAction) -> str | None:
    text = await remote.read_file(host, action.file)
    return None if text is None else get_value(text, action.section, action.key)


async def apply_config(remote: Remote, host: str, action: ConfigAction, value: str | None) -> bool:
    """Write `value` (None removes the key). Returns False when nothing changed."""
    text = await remote.read_file(host, action.file)
    current = text or ""
    updated = set_value(current, action.section, action.key, value)
    if text is not None and updated == text:
        return False
    if text is None and value is None:
        return False
    await remote.write_file(host, action.file, updated)
    return True
