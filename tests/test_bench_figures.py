"""The figure lines benches print, and the table `make bench` makes of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.all import Bench, Outcome, table
from bench.figures import Figure, figure, parse


def test_a_printed_figure_parses_back(capsys: pytest.CaptureFixture[str]) -> None:
    printed = figure("plan_json_wall", 1.23456, "s", "<2")
    out = capsys.readouterr().out
    assert out == "figure plan_json_wall 1.235 s <2\n"
    assert parse(f"hosts: 10000\n{out}other text\n") == [Figure("plan_json_wall", 1.235, "s", "<2")]
    assert printed.value == 1.23456


def test_lines_that_are_not_figures_are_ignored() -> None:
    assert parse("figure\nfigure x notanumber s\nfigures a 1 s\n  figure b 2 ms\n") == [
        Figure("b", 2.0, "ms")
    ]


@pytest.mark.parametrize(
    ("target", "value", "meets"),
    [
        ("<2", 1.9, True),
        ("<2", 2.0, False),
        ("<=1.05", 1.05, True),
        ("target<=1.05", 1.06, False),
        (">1000", 1500.0, True),
        (">=3", 2.0, False),
        ("", 1.0, None),
        ("about 3", 1.0, None),
    ],
)
def test_a_figure_knows_whether_it_meets_its_target(
    target: str, value: float, meets: bool | None
) -> None:
    assert Figure("x", value, "s", target).meets() is meets


def test_the_table_marks_misses_and_failed_benches(tmp_path: Path) -> None:
    log = tmp_path / "log"
    good = Outcome(
        Bench("plan_scale"),
        1.0,
        0,
        [Figure("plan_json_wall", 1.5, "s", "<2"), Figure("plan_tree_wall", 1.7, "s", "<1.5")],
        log,
    )
    broken = Outcome(Bench("status_latency"), 1.0, 3, [], log)
    silent = Outcome(Bench("journal"), 1.0, 0, [], log)
    lines = table([good, broken, silent]).splitlines()
    assert lines[0].split() == ["bench", "figure", "value", "unit", "target", "meets"]
    assert lines[2].split() == ["plan_scale", "plan_json_wall", "1.5", "s", "<2", "yes"]
    assert lines[3].split() == ["plan_scale", "plan_tree_wall", "1.7", "s", "<1.5", "NO"]
    assert lines[4].split() == ["status_latency", "FAILED", "(exit", "3)"]
    assert lines[5].split() == ["journal", "no", "figures", "printed"]
