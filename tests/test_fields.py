"""Durations, batch sizes and percentages, versions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from orchestrator.fields import (
    Duration,
    VersionText,
    check_version,
    parse_duration,
    parse_size,
    resolve_size,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
        ("30", 30.0),
        ("30s", 30.0),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("1.5h", 5400.0),
        (" 10 s ", 10.0),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, -0.5, float("inf"), float("nan")])
def test_negative_or_infinite_duration_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="zero or more seconds"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["-5s", "5 minutes", "5d", "", "m", True, None, [5]])
def test_malformed_duration_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_duration_field_in_a_model() -> None:
    adapter = TypeAdapter(Duration)

    assert adapter.validate_python("2m") == 120.0
    with pytest.raises(ValidationError, match="zero or more seconds"):
        adapter.validate_python(-3)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(0, 0), (3, 3), ("25%", 0.25), (" 10 % ", 0.10), ("100%", 1.0), ("12.5%", 0.125)],
)
def test_parse_size(value: Any, parsed: float) -> None:
    result = parse_size(value, "batch")

    assert result == pytest.approx(parsed)
    # a count stays an int, a percentage is a float, so each rounds its own way
    assert isinstance(result, int) == (not isinstance(value, str))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "batch must not be negative"),
        ("101%", "is over 100%"),
        ("25", "must be a count like 2 or a percentage"),
        ("-5%", "must be a count like 2 or a percentage"),
        (2.5, "must be a count like 2 or a percentage"),
        (True, "must be a count like 2 or a percentage"),
    ],
)
def test_parse_size_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(value, "batch")


@pytest.mark.parametrize(
    ("size", "total", "up", "down"),
    [
        (0.25, 8, 2, 2),  # exact
        (0.25, 10, 3, 2),  # 2.5: a batch rounds up, a limit rounds down
        (0.10, 30, 3, 3),  # 0.1 * 30 = 3.0000000000000004 must not become 4
        (0.07, 100, 7, 7),  # 0.07 * 100 = 7.000000000000001
        (0.29, 100, 29, 29),  # 0.29 * 100 = 28.999999999999996 must not become 28
        (0.01, 10, 1, 0),
        (1.0, 7, 7, 7),
    ],
)
def test_resolve_percentage_rounding(size: float, total: int, up: int, down: int) -> None:
    assert resolve_size(size, total, round_up=True) == up
    assert resolve_size(size, total, round_up=False) == down


def test_resolve_count_is_capped_by_total() -> None:
    assert resolve_size(5, 3, round_up=True) == 3
    assert resolve_size(2, 3, round_up=False) == 2
    assert resolve_size(0, 3, round_up=False) == 0


@given(pct=st.integers(min_value=1, max_value=100), total=st.integers(min_value=0, max_value=500))
def test_whole_percentages_round_exactly(pct: int, total: int) -> None:
    size = parse_size(f"{pct}%", "batch")
    exact_num = pct * total  # the exact count is exact_num / 100

    assert resolve_size(size, total, round_up=True) == -(-exact_num // 100)
    assert resolve_size(size, total, round_up=False) == exact_num // 100


@pytest.mark.parametrize("text", ["2025.2", "2026.1", "28.0.1", "1.0rc1"])
def test_check_version_accepts(text: str) -> None:
    assert str(check_version(text)) == text


def test_check_version_refuses_non_versions() -> None:
    with pytest.raises(ValueError, match="'banana' is not a version"):
        check_version("banana")


def test_versions_compare_numerically() -> None:
    assert check_version("2025.10") > check_version("2025.9")


def test_version_field_refuses_a_float() -> None:
    adapter = TypeAdapter(VersionText)

    with pytest.raises(ValidationError, match=r'quote it \("2025.1"\)'):
        # what YAML makes of an unquoted 2025.10
        adapter.validate_python(2025.10)


def test_version_field_accepts_strings_and_ints() -> None:
    adapter = TypeAdapter(VersionText)

    assert adapter.validate_python("2025.10") == "2025.10"
    assert adapter.validate_python(28) == "28"
    with pytest.raises(ValidationError, match="expected a version string"):
        adapter.validate_python(True)
    with pytest.raises(ValidationError, match="is not a version"):
        adapter.validate_python("next")
