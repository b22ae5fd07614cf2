"""A real small filesystem for a test: a tmpfs mounted on a private directory
(root, as CI is). Not a test module."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def tmpfs(tmp_path: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with `options` ("size=2m", "ro,size=1m") under `tmp_path`;
    unmounted when the generator ends. Without root it skips, or fails under CI."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("mounting a tmpfs needs root, as CI is", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while out.write(b"\0" * 4096):
            pass
    return filler
