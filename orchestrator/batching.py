"""Cut a phase's hosts into batches. Pure, and small enough to property-test.

Rules (docs/batching.md explains them for operators):

* A batch size is a count, a percentage of the phase's hosts, or a ramp list
  whose i-th entry sizes the i-th batch (the last entry repeats). Percentages
  round **up**, so a batch is never empty.
* `max_unavailable` is a count or a percentage of *all* hosts holding a role
  in the inventory. Percentages round **down**, so the limit is never
  exceeded; a limit that rounds to 0 forbids progress and is an input error.
  A batch never holds more hosts of a role than that role's limit: bigger
  sizes are capped, and the plan says so.
* With `zones: separate` (the default) a batch never mixes zones: zones are
  upgraded one after another, in the order they first appear, and a batch
  that would cross into the next zone stops at the boundary. The ramp index
  runs across zones, so the canary batch happens once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.fields import resolve_size


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    zone: str | None
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cut:
    zone: str | None
    hosts: tuple[str, ...]
    wanted: int


def cut_batches(
    members: Sequence[Member],
    sizes: Sequence[int | float],
    limits: Mapping[str, int],
    *,
    separate_zones: bool,
) -> list[Cut]:
    """Batches in order. `sizes` are parsed sizes (int count, float fraction);
    `limits` maps a role to the most hosts of it one batch may hold."""
    if not members:
        return []
    if not sizes:
        raise ValueError("at least one batch size is needed")
    total = len(members)
    groups: dict[str | None, list[Member]] = {}
    for m in members:
        groups.setdefault(m.zone if separate_zones else None, []).append(m)
    out: list[Cut] = []
    for queue in groups.values():
        pos = 0
        while pos < len(queue):
            size = sizes[min(len(out), len(sizes) - 1)]
            wanted = max(1, resolve_size(size, total, round_up=True))
            taken: list[Member] = []
            counts: dict[str, int] = {}
            end = min(len(queue), pos + wanted)
            if not limits:  # nothing to count: the batch is the next `wanted` hosts
                taken, pos = queue[pos:end], end
            while pos < end:
                host = queue[pos]
                if taken and any(
                    counts.get(r, 0) + 1 > limits[r] for r in host.roles if r in limits
                ):
                    break
                for r in host.roles:
                    counts[r] = counts.get(r, 0) + 1
                taken.append(host)
                pos += 1
            out.append(
                Cut(zone=_only_zone(taken), hosts=tuple(m.name for m in taken), wanted=wanted)
            )
    return out


def _only_zone(members: Sequence[Member]) -> str | None:
    zones = {m.zone for m in members}
    return zones.pop() if len(zones) == 1 else None
