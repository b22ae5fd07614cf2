"""The status document kept encoded, brought up to date piece by piece.

A GET during a 2,000-host upgrade must not rebuild and re-encode every host
row (a megabyte and a half of JSON, tens of milliseconds of the event loop
the engines run on) for an event that changed one. `LiveStatus` keeps each
host row of the document as JSON bytes. The view tells it, in O(1) per
event, which (phase, host) an event changed (`UpgradeView.listener`); a
read re-encodes those rows, their batches and the small top of the
document, and joins the bytes.

What it returns is byte for byte `json.dumps(doc, separators=(",", ":"))`
of `status_document(...)` with the API's `stalled` field added
(tests/test_livestatus.py checks that after every event of random runs).
One bytes object is kept per (journal seq, stall, health round, history):
every reader of the same state is handed the same object.

Only events reach it: a host view the engine makes by reading it (a batch
about to start) counts from that host's next event on, as it would for a
daemon that read the journal afresh.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import model
from orchestrator.actions.health import HealthProgress
from orchestrator.engine import status
from orchestrator.engine.eta import BatchClock, History
from orchestrator.engine.view import UpgradeView

_ENCODER = json.JSONEncoder(separators=(",", ":"))
Health = Mapping[tuple[str, str], HealthProgress]
_NO_CLOCK = BatchClock(waiting=False, latest=None)  # until the batch is first read


def encode(value: Any) -> bytes:
    """JSON as the API answers it: compact and ASCII, as `json.dumps` gives it."""
    return _ENCODER.encode(value).encode()


# what `around` encodes in the place of the value it leaves out
_HOLE = "\x00hole\x00"
_HOLE_TEXT = b'"\\u0000hole\\u0000"'


def around(obj: Mapping[str, Any], key: str) -> tuple[bytes, bytes]:
    """`obj` as JSON in two halves, around where the value of `key` goes.

    One encode of the whole object with a marker for the value, split at the
    marker (a read encoded three objects of some twenty fields, one call per
    field); should one of the other values hold the marker itself, field by
    field as before."""
    if key not in obj:
        raise KeyError(key)
    text = encode({**obj, key: _HOLE})
    if text.count(_HOLE_TEXT) == 1:
        head, _, tail = text.partition(_HOLE_TEXT)
        return head, tail
    return _around_by_field(obj, key)


def _around_by_field(obj: Mapping[str, Any], key: str) -> tuple[bytes, bytes]:
    before: list[bytes] = []
    after: list[bytes] = []
    side = before
    for name, value in obj.items():
        if name == key:
            side = after
            continue
        side.append(encode(name) + b":" + encode(value))
    head = b"{" + b"".join(pair + b"," for pair in before) + encode(key) + b":"
    return head, b"".join(b"," + pair for pair in after) + b"}"


@dataclass(slots=True, eq=False)
class _Batch:
    """One batch of the document: its host rows encoded, and what the
    document's counts and estimate need of them."""

    phase: model.Phase
    plan: model.Batch
    rows: list[bytes]
    states: list[str]  # each row's host state
    done: list[int]  # each row's steps done
    counts: dict[str, int]
    steps_done: int = 0
    clock: BatchClock = _NO_CLOCK
    encoded: bytes = b""
    stale: bool = True


class LiveStatus:
    """The status document of one upgrade over its (live) view; `clock`
    gives the time the estimate counts from."""

    def __init__(
        self,
        upgrade_id: str,
        plan: model.Plan,
        digest: str,
        view: UpgradeView,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upgrade_id = upgrade_id
        self.plan = plan
        self.digest = digest
        self.view = view
        self.builds = 0  # documents encoded: a cached read adds none
        self.rows_encoded = 0  # host rows encoded: one per row an event touched
        self._clock = clock
        self._names = status.step_names(plan)
        self._host_phases = status.host_phases(plan)
        self._phase_index = {phase.name: i for i, phase in enumerate(plan.phases)}
        self._batches: list[list[_Batch]] = []
        # (phase, host) -> where its rows are (one, unless a plan lists a host twice)
        self._where: dict[tuple[str, str], list[tuple[_Batch, int]]] = {}
        self._steps_total = 0
        for phase in plan.phases:
            batches = []
            for batch in phase.batches:
                n = len(batch.hosts)
                part = _Batch(phase, batch, [b""] * n, ["pending"] * n, [0] * n, {})
                for k, hp in enumerate(batch.hosts):
                    self._where.setdefault((phase.name, hp.host), []).append((part, k))
                    self._steps_total += len(hp.steps)
                batches.append(part)
            self._batches.append(batches)
        self._phase_parts = [(b"", b"")] * len(plan.phases)
        self._stale_phases = set(range(len(plan.phases)))
        self._dirty: set[tuple[str, str]] = set(self._where)  # at first: every row
        self._phase_events: set[str] = set()
        self._health: dict[tuple[str, str], HealthProgress] = {}
        self._current: dict[str, str] = {}
        self._through: dict[str, bool] = {}
        self._key: tuple[Any, ...] | None = None
        self._encoded = b""
        view.listener = self._touched

    def _touched(self, phase: str, host: str | None) -> None:
        if host is None:
            self._phase_events.add(phase)
        else:
            self._dirty.add((phase, host))

    def document(
        self,
        *,
        stalled: str | None = None,
        health: Health | None = None,
        changes: int = 0,
        past: History | None = None,
    ) -> bytes:
        """The document as JSON. `stalled`: why the journal cannot write;
        `health`: the engine's live health checks, `changes` counting their
        rounds; `past`: the playbook's history, for the estimate."""
        key = (self.view.last_seq, stalled, changes, past)
        if self._key is not None and self._key == key:
            return self._encoded
        checking = health or {}
        self._refresh(checking)
        self._encoded = self._encode(stalled, past)
        self._key = key
        self.builds += 1
        return self._encoded

    def _refresh(self, health: Health) -> None:
        """Re-encode the rows events changed, then their batches and phases."""
        for name in self._phase_events:
            # `tolerated` follows the phase's state: only failed hosts show it
            i = self._phase_index.get(name)
            if i is None:
                continue
            self._stale_phases.add(i)
            for part in self._batches[i]:
                for k, state in enumerate(part.states):
                    if state == "failed":
                        self._dirty.add((name, part.plan.hosts[k].host))
        self._phase_events.clear()
        for key, progress in health.items():
            if self._health.get(key) is not progress:
                self._dirty.add(key)
        self._dirty.update(self._health.keys() - health.keys())
        self._health = dict(health)
        hosts = set()
        for key in self._dirty:
            self._row(key, health.get(key))
            hosts.add(key[1])
        self._dirty.clear()
        for host in hosts & self._host_phases.keys():
            self._current[host], self._through[host] = status.standing(
                self.view, host, self._host_phases[host]
            )
        for i, batches in enumerate(self._batches):
            for part in batches:
                if part.stale:
                    self._batch(part)
                    self._stale_phases.add(i)
        for i in self._stale_phases:
            phase = self.plan.phases[i]
            hosts_finished = sum(status.finished(part.counts) for part in self._batches[i])
            pv = self.view.phases.get(phase.name)
            self._phase_parts[i] = around(
                status.phase_part(phase, pv, hosts_finished, []), "batches"
            )
        self._stale_phases.clear()

    def _row(self, key: tuple[str, str], health: HealthProgress | None) -> None:
        phase, host = key
        pv = self.view.phases.get(phase)
        hv = pv.hosts.get(host) if pv else None
        live = status.is_live(pv)
        for part, k in self._where.get(key, ()):  # none: a host the plan does not have
            row = status.host_row(part.plan.hosts[k], hv, live, health)
            part.rows[k] = encode(row)
            self.rows_encoded += 1
            part.states[k] = row["state"]
            part.done[k] = status.steps_done(row)
            part.stale = True

    def _batch(self, part: _Batch) -> None:
        part.counts = dict(Counter(part.states))
        part.steps_done = sum(part.done)
        part.clock = BatchClock.of(part.plan, self.view.phases.get(part.phase.name))
        head, tail = around(status.batch_part(part.plan, [], part.counts), "hosts")
        pieces = [head + b"["]
        for k, row in enumerate(part.rows):
            if k:
                pieces.append(b",")
            pieces.append(row)
        pieces.append(b"]" + tail)
        part.encoded = b"".join(pieces)  # one copy of the batch's rows, not three
        part.stale = False

    def _encode(self, stalled: str | None, past: History | None) -> bytes:
        plan, view = self.plan, self.view
        hosts_by_state: Counter[str] = Counter()
        done = 0
        for batches in self._batches:
            for part in batches:
                hosts_by_state.update(part.counts)
                done += part.steps_done
        doc = status.document_part(
            self.upgrade_id,
            plan,
            view,
            self.digest,
            progress=status.progress_part(plan, view, self._steps_total, done, hosts_by_state),
            eta_s=status.eta(plan, view, past, self._clock(), self._batch_clock),
            hosts=status.hosts_part(self._current, self._through),
            failure=status.first_failure(plan, view, self._names),
            phases=[],
        )
        doc["stalled"] = stalled  # not journaled: the journal is what fails
        head, tail = around(doc, "phases")
        parts = [head, b"["]
        for i, batches in enumerate(self._batches):
            phase_head, phase_tail = self._phase_parts[i]
            parts.append(b"," + phase_head + b"[" if i else phase_head + b"[")
            for j, part in enumerate(batches):
                if j:
                    parts.append(b",")
                parts.append(part.encoded)
            parts.append(b"]" + phase_tail)
        parts.append(b"]" + tail)
        return b"".join(parts)

    def _batch_clock(self, phase: int, batch: int) -> BatchClock:
        return self._batches[phase][batch].clock
