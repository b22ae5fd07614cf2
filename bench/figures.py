"""One line per figure, so `make bench` can gather every bench's into one table.

A bench prints its own readable text and, for each figure it stands for, a
line ``figure NAME VALUE UNIT [TARGET]``: ``figure plan_json_wall 1.234 s <2``.
`parse` reads those lines back out of a bench's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^figure (?P<name>\S+) (?P<value>\S+) (?P<unit>\S+)(?: (?P<target>.+))?$")


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""

    def line(self) -> str:
        target = f" {self.target}" if self.target else ""
        return f"figure {self.name} {self.value:.4g} {self.unit}{target}"

    def meets(self) -> bool | None:
        """Whether the value meets its target (``<2``, ``<=1.05``, ``>1000``); None without one."""
        match = re.fullmatch(r"(?:target)?\s*(<=|>=|<|>)\s*([0-9.]+)", self.target.strip())
        if match is None:
            return None
        op, bound = match.group(1), float(match.group(2))
        return {
            "<": self.value < bound,
            "<=": self.value <= bound,
            ">": self.value > bound,
            ">=": self.value >= bound,
        }[op]


def figure(name: str, value: float, unit: str, target: str = "") -> Figure:
    """Print one figure line (and return it)."""
    found = Figure(name, value, unit, target)
    print(found.line(), flush=True)
    return found


def parse(output: str) -> list[Figure]:
    """Every figure line in a bench's output, in order; other lines are ignored."""
    found = []
    for raw in output.splitlines():
        match = _LINE.match(raw.strip())
        if match is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        found.append(
            Figure(match.group("name"), value, match.group("unit"), match.group("target") or "")
        )
    return found
