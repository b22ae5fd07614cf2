"""Golden tests: the printed plan of every shipped playbook against the example
inventory, compared with ``tests/golden/NAME.txt``.

After a deliberate change, regenerate with ``UPDATE_GOLDEN=1 pytest
tests/test_golden.py`` and read the diff before committing it: a golden file
is a review of what an operator will see, not a snapshot to refresh blindly.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from orchestrator.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"

VERSIONS = {
    "nova": ["--to", "2026.1"],
    "ironic": ["--to", "2026.1"],
    "neutron": ["--to", "2026.1"],
    "hotfix": ["--from", "2025.2", "--to", "2025.2.1"],
}


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_printed_plan_matches_golden(name: str, repo_root: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["plan", "-i", "inventory.example.yaml", "-p", name, *VERSIONS[name]]

    code = main(argv, out, err)

    assert (code, err.getvalue()) == (0, "")
    # the tree is golden; its last line, the estimate, depends on this
    # machine's journal (tests/test_eta.py covers it)
    actual, estimate = out.getvalue().rsplit("estimate: ", 1)
    assert estimate.endswith("\n") and "\n" not in estimate[:-1]
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(encoding="utf-8"), (
        f"the printed plan differs from {path}; if the change is intended, "
        "rerun with UPDATE_GOLDEN=1 and review the diff"
    )
