"""The daemon's state directory: its journal, its token file, its lock.

Everything in it is the daemon user's alone: the directory is created or
tightened to 0700, files are created 0600 (the daemon runs with umask 077),
and a token file that someone else owns, that others can read, or that is a
symbolic link is refused the way ssh refuses such a private key. Every
problem is one line naming the path and the fix, exit 2 (or 3 for a full
disk), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import structlog

from orchestrator.errors import ConflictError, StateDirError, UsageError

log = structlog.get_logger("orchestrator.daemon")

LOCK_FILE = "daemon.lock"
PRIVATE = 0o077  # the daemon's umask: what it creates, only its user reads


def _refuse(path: Path, exc: OSError, doing: str) -> StateDirError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    why = exc.strerror or str(exc)
    hint = "free some space" if full else "check its owner and mode, or choose another --state-dir"
    return StateDirError(f"{path}: cannot {doing}: {why}; {hint}", full=full)


def prepare(state_dir: Path) -> None:
    """Create the directory 0700, or tighten an existing one; prove it writable."""
    os.umask(PRIVATE)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = state_dir.lstat()
    except OSError as exc:
        raise _refuse(state_dir, exc, "create the state directory") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{state_dir}: the state directory is not a directory (a symlink?)")
    if info.st_uid != os.getuid():
        raise UsageError(
            f"{state_dir}: the state directory belongs to uid {info.st_uid}, not to this "
            f"user (uid {os.getuid()})"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        try:
            state_dir.chmod(0o700)
        except OSError as exc:
            raise _refuse(state_dir, exc, "tighten the state directory to 0700") from None
        log.warning(
            "state directory tightened to 0700",
            state_dir=str(state_dir),
            was=stat.filemode(info.st_mode),
        )
    probe = state_dir / ".write-test"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise _refuse(state_dir, exc, "write in the state directory") from None


def tighten(path: Path) -> None:
    """An existing file of ours (a journal from an older release): 0600."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(path.stat().st_mode) & PRIVATE:
            path.chmod(0o600)


def load_or_create_token(path: Path) -> str:
    """Read the token, or write a new random one to a 0600 file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileNotFoundError:
        raise UsageError(f"{path}: the token file's directory does not exist") from None
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise _refuse(path, exc, "create the token file") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    log.info("generated a new API token", token_file=str(path))
    return token


def _read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(
                f"{path}: the token file is a symbolic link; use the file itself"
            ) from None
        raise _refuse(path, exc, "read the token file") from None
    with os.fdopen(fd, "r", encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid():
            raise UsageError(
                f"{path}: the token file belongs to uid {info.st_uid}, not to this user "
                f"(uid {os.getuid()}); chown it or let the daemon write a new one"
            )
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"{path}: token file is accessible by others (mode "
                f"{stat.filemode(info.st_mode)}); chmod 600 {path}"
            )
        token = handle.read().strip()
    if len(token) < 16:
        raise UsageError(f"{path}: token is empty or shorter than 16 characters")
    return token


@contextlib.contextmanager
def lock(state_dir: Path) -> Iterator[None]:
    """One daemon per state directory: two would run the same upgrades twice."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _refuse(path, exc, "open the lock file") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConflictError(
                f"another daemon (pid {holder}) is using the state directory {state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; a killed daemon releases it too
