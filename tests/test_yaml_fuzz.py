"""A 60-second fuzz of the YAML loader (issue 11): inputs mutated from the
corpus and from hostile shapes (alias chains, deep nesting, long scalars,
odd bytes) must end in a document or an InputError, never another
exception, and no accepted document may hold more values than the loader's
MAX_NODES (the bound that keeps an alias bomb from taking the daemon's
memory and time). Each input's CPU time is printed, not asserted: a bound in
seconds failed on a busy machine for an input well within MAX_NODES.

Seeded and mutational: every run explores new inputs (the seed is printed
on failure), and FUZZ_SECONDS sets the budget (default 60)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.source import MAX_NODES, load_text

pytestmark = pytest.mark.slow
CORPUS = Path(__file__).resolve().parent / "corpus"
SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))
TOKENS = [
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "- ",
    ": ",
    "? ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "!!python/object ",
    "!!binary ",
    "!tag ",
    "'",
    '"',
    "\\",
    "#",
    "|",
    ">",
    "\n",
    "\n  ",
    "\t",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "\x00",
    "\ufeff",
    "\ud800",
    "é",
    "1e999",
    "0x1F",
    "~",
    "null",
    "yes",
    "2025.10",
    "@@secret:x@@",
    "{{ host.name }}",
    "%",
    "`",
]


def _seeds() -> list[str]:
    texts = [p.read_text() for p in sorted(CORPUS.rglob("*.yaml"))]
    chain = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    chain += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
    texts += [
        "\n".join(chain),
        "[" * 5000 + "]" * 5000,
        "a: " + "{b: " * 200 + "1" + "}" * 200,
        "a: &a [*a]",
        "k: " + "x" * 200_000,
        "- " * 3000 + "x",
    ]
    return texts


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 8)):
        at = rng.randint(0, len(text))
        choice = rng.random()
        if choice < 0.5:
            text = text[:at] + rng.choice(TOKENS) + text[at:]
        elif choice < 0.7 and text:
            end = min(len(text), at + rng.randint(1, 40))
            text = text[:at] + text[end:]
        elif choice < 0.9 and text:  # repeat a slice: nesting and alias fan-out grow
            end = min(len(text), at + rng.randint(1, 200))
            text = text[:at] + text[at:end] * rng.randint(2, 20) + text[end:]
        else:
            text = text[:at] + chr(rng.randint(0, 0x10FFFF)) + text[at:]
    return text


def _values(data: object) -> int:
    """How many values a loaded document holds, aliases expanded."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _load(text: str, seed: int) -> tuple[float, bool, int]:
    """CPU seconds the loader took, whether it accepted the text, and how
    many values the document it built holds (0 when refused)."""
    started = time.process_time()
    try:
        doc = load_text(text, "fuzz.yaml")
        ok = True
    except InputError:
        ok, doc = False, None
    except Exception as exc:
        raise AssertionError(f"seed {seed}: {type(exc).__name__} for {text[:300]!r}") from exc
    took = time.process_time() - started
    return took, ok, _values(doc.data) if doc is not None else 0


@pytest.mark.timeout(SECONDS + 60)
def test_the_yaml_loader_survives_a_minute_of_fuzzing() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    seeds = _seeds()
    slowest, runs, refused = 0.0, 0, 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        text = _mutate(rng, rng.choice(seeds))
        took, ok, values = _load(text, seed)
        assert values <= MAX_NODES, f"seed {seed}: {values:,} values for {text[:300]!r}"
        slowest = max(slowest, took)
        refused += not ok
        runs += 1
    print(f"\nyaml fuzz: {runs} inputs, {refused} refused, slowest {slowest * 1000:.0f} ms")
    assert runs > 100
