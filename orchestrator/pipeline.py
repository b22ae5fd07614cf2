"""The one way input becomes a plan: (inventory source, playbook source,
options) -> the plan and the two documents it came from.

The CLI (`plan`, `submit`), the HTTP API, the tests and the benches all go
through `build`, so a limit or a check added to one path holds on every
path. Both documents are read and checked before giving up, so one answer
lists every problem in both.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator import model
from orchestrator.errors import InputError, Problem
from orchestrator.inventory import Inventory, parse_inventory
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import Playbook, parse_playbook, resolve_playbook, shipped_playbooks
from orchestrator.source import Document, load_file, load_text, suggest


@dataclass(frozen=True, slots=True)
class Source:
    """Where one document comes from, and the name its errors carry."""

    name: str
    text: str | None = None
    path: Path | None = None
    # a source that cannot be read, reported with the other document's problems
    problem: Problem | None = None

    @classmethod
    def of_text(cls, text: str, name: str) -> Source:
        return cls(name=name, text=text)

    @classmethod
    def of_file(cls, path: str | Path, name: str | None = None) -> Source:
        return cls(name=name or str(path), path=Path(path))

    @classmethod
    def of_playbook_ref(cls, ref: str) -> Source:
        """A playbook path, or the name of a shipped playbook ("nova")."""
        path = resolve_playbook(ref)
        return cls.of_file(path, ref if Path(ref).is_file() else f"playbooks/{path.name}")

    @classmethod
    def shipped(cls, name: str, *, field: str | None = None, where: str | None = None) -> Source:
        """A shipped playbook by name; an unknown one is a problem of `where`'s
        `field`, reported when it is loaded, with the inventory's."""
        found = shipped_playbooks()
        path = found.get(name)
        if path is None:
            return cls(
                name=name,
                problem=Problem(
                    file=where,
                    field=field,
                    message=f"no shipped playbook '{name}'{suggest(name, found)}; shipped: "
                    f"{', '.join(found)}",
                ),
            )
        return cls.of_file(path, f"playbooks/{path.name}")

    def load(self) -> Document:
        if self.problem is not None:
            raise InputError(self.problem)
        if self.text is not None:
            return load_text(self.text, self.name)
        assert self.path is not None
        return load_file(self.path, self.name)


@dataclass(frozen=True, slots=True)
class Built:
    plan: model.Plan
    inventory: Document
    playbook: Document


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: loading and compiling a 10,000-host
    plan makes a million objects and no garbage cycles, and the collector
    walking them again and again took a third of the time. Collection resumes
    (if it was on) when the block ends."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def build(inventory: Source, playbook: Source, options: Options) -> Built:
    """Load, validate and compile; the problems of both documents together."""
    with paused_gc():
        return _build(inventory, playbook, options)


def _build(inventory: Source, playbook: Source, options: Options) -> Built:
    problems: list[Problem] = []
    inv: tuple[Inventory, Document] | None = None
    pb: tuple[Playbook, Document] | None = None
    try:
        inv = parse_inventory(inventory.load())
    except InputError as exc:
        problems.extend(exc.problems)
    try:
        pb = parse_playbook(playbook.load())
    except InputError as exc:
        problems.extend(exc.problems)
    if problems or inv is None or pb is None:
        raise InputError(problems)
    plan = compile_plan(inv[0], inv[1], pb[0], pb[1], options)
    return Built(plan, inv[1], pb[1])


def build_text(inventory: str, playbook: str, options: Options) -> model.Plan:
    """The plan of two YAML texts (tests and benches)."""
    sources = Source.of_text(inventory, "inventory.yaml"), Source.of_text(playbook, "playbook.yaml")
    return build(*sources, options).plan


def check_secret_sources(built: Built, env: Iterable[str], dirs: Iterable[str]) -> None:
    """A daemon reads secrets only from the environment variables and the
    directories its own configuration names: an inventory naming any other
    source (the daemon's token file, its environment) is refused, located."""
    allowed_env = set(env)
    roots = [os.path.realpath(d) for d in dirs]
    problems = []
    for name, kind, source in built.plan.secrets:
        if kind == "env" and source not in allowed_env:
            why = (
                f"environment variable {source!r} is not one the daemon lets secrets come "
                f"from (its --config secrets.env: {', '.join(sorted(allowed_env)) or 'none'})"
            )
        elif kind == "file" and not any(_inside(source, root) for root in roots):
            why = (
                f"file {source!r} is not under a directory the daemon lets secrets come from "
                f"(its --config secrets.dirs: {', '.join(roots) or 'none'})"
            )
        else:
            continue
        problems.append(built.inventory.problem(("secrets", name, kind), why))
    if problems:
        raise InputError(problems)


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)  # a symlink or '..' cannot lead out
    return os.path.commonpath([real, root]) == root
