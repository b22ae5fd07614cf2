"""Small value types shared by the input models: durations, sizes, versions."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from packaging.version import InvalidVersion, Version
from pydantic import BeforeValidator, ConfigDict

STRICT = ConfigDict(extra="forbid", frozen=True)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``30``, ``2.5``, ``"30s"``, ``"5m"``, ``"250ms"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30 or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 30, '30s', '5m' or '1h', got {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be zero or more seconds, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _version_text(value: Any) -> str:
    if isinstance(value, float):
        raise ValueError(
            f'version {value!r} was read as a number; quote it ("{value}") '
            "or 2025.10 would silently become 2025.1"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a version string, got {value!r}")
    check_version(value)
    return value


def check_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(
            f"'{text}' is not a version (expected something like 2025.2 or 28.0.1)"
        ) from None


VersionText = Annotated[str, BeforeValidator(_version_text)]


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_size(value: Any, what: str) -> int | float:
    """A host count (int >= 0) or a percentage as a float fraction in (0, 1].

    Returns an int for a count and a float for a percentage so callers can
    round each the documented way.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a count like 2 or a percentage like '25%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return value
    if isinstance(value, str) and (m := _PERCENT.match(value)):
        pct = float(m.group(1))
        if pct > 100:
            raise ValueError(f"{what} {value!r} is over 100%")
        return pct / 100.0
    raise ValueError(f"{what} must be a count like 2 or a percentage like '25%', got {value!r}")


def resolve_size(size: int | float, total: int, *, round_up: bool) -> int:
    """Turn a parsed size into a host count out of `total`.

    Percentages of batches round up (a batch is never empty); percentages of
    `max_unavailable` round down (a limit is never exceeded).
    """
    if isinstance(size, int):
        return min(size, total)
    exact = size * total
    # 1e-9 absorbs float noise such as 0.1 * 30 = 3.0000000000000004
    count = math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)
    return min(count, total)
