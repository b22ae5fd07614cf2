"""Fixtures shared by the whole suite. Keep this small: per-topic fixtures
live in their own plugin modules (``tests/conftest_ssh.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_ssh"]

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_INVENTORY = "inventory.example.yaml"


@pytest.fixture
def repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository root, made the working directory for the test.

    Relative paths such as ``inventory.example.yaml`` then resolve as they do
    for an operator in a checkout, and appear the same in printed output.
    """
    monkeypatch.chdir(REPO_ROOT)
    return REPO_ROOT
