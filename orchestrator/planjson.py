"""A plan's two JSON forms, written straight from its dataclasses.

* The canonical form, whose sha256 is the plan's digest: what
  ``json.dumps(data, sort_keys=True, separators=(",", ":"))`` gives for the
  plan's JSON data (ASCII only, keys sorted).
* The shown form (`orchestrator plan --json`, the journal): what
  ``pydantic_core.to_json({"digest": ..., **data}, indent=2)`` gives, the
  fields in their declared order, UTF-8.

Here "data" is what pydantic's ``dump_python(mode="json")`` makes of the plan
(tuples become lists, a field whose ``Field(exclude_if=...)`` holds is left
out). Journals keep plans and their digests forever, so both forms must stay
byte for byte what those calls give; tests/test_planjson.py holds them to
it. Building that data for a 10,000-host plan took longer than compiling
the plan, and the plan was converted twice. Here each form is written in
one pass, in chunks (one per host plan at most), and a value the compiler
shares between hosts (an action, a drain, a probe: the same object) is
encoded once per pass.

Only what a plan holds is supported: dataclasses, tuples, str, int, float,
bool and None. Anything else is a TypeError, never a guess.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

import pydantic_core
from pydantic.fields import FieldInfo

# host plans sit at depth 6 of the shown form: plan, phases, phase, batches,
# batch, hosts; above it a chunk per element, below it one string per element
STREAM_DEPTH = 6
MAX_DEPTH = 64  # a plan nests 9 deep


def _pads(indent: int | None) -> list[str]:
    """Per depth, what goes before an element: a newline and its indent."""
    if not indent:
        return [""] * MAX_DEPTH
    return ["\n" + " " * (indent * n) for n in range(MAX_DEPTH)]


Layout = tuple[tuple[str, str, Callable[[Any], bool] | None], ...]
Encode = Callable[[Any, int], str]


def _layout(cls: type, *, canonical: bool, colon: str) -> tuple[Layout, dict[str, Any]]:
    """How instances of the dataclass `cls` are written: per field, its name,
    its key text, and the `exclude_if` of its pydantic Field, if any (sorted
    by name for the canonical form); and the fields' types."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        exclude = None
        for meta in getattr(hints[field.name], "__metadata__", ()):
            if isinstance(meta, FieldInfo) and meta.exclude_if is not None:
                exclude = meta.exclude_if
        fields.append((field.name, f'"{field.name}"{colon}', exclude))
    return tuple(sorted(fields) if canonical else fields), hints


def _encoder(writer: _Writer, cls: type) -> Encode:
    """A function writing an instance of `cls` at a depth: one expression per
    field, in order, so a host plan's hundred values cost no loop. A `str`
    (or `str | None`, `bool`) field is written directly, any other through
    `writer.text`."""
    layout, hints = _layout(cls, canonical=writer.canonical, colon=writer.colon)
    names = {"s": writer.string, "text": writer.text, "pads": writer.pads}
    body = ["def encode(o, d):", "    p = pads[d + 1]", "    e = d + 1", "    parts = []"]
    for n, (name, key, exclude) in enumerate(layout):
        names[f"k{n}"] = key
        hint = hints[name]
        if hint is str:
            value = f"s(o.{name})"
        elif hint == str | None:
            value = f'("null" if o.{name} is None else s(o.{name}))'
        elif hint is bool:
            value = f'("true" if o.{name} else "false")'
        else:
            value = f"text(o.{name}, e)"
        if exclude is None:
            body.append(f"    parts.append(k{n} + {value})")
        else:
            names[f"x{n}"] = exclude
            body.append(f"    if not x{n}(o.{name}):")
            body.append(f"        parts.append(k{n} + {value})")
    body.append('    if not parts:\n        return "{}"')
    body.append('    return "{" + p + ("," + p).join(parts) + pads[d] + "}"')
    exec("\n".join(body), names)
    return typing.cast(Encode, names["encode"])


class _Writer:
    """One pass over a plan in one form. `shared` are the classes whose
    instances the compiler shares: their text is kept for the pass."""

    def __init__(
        self, *, canonical: bool, shared: tuple[type, ...], indent: int | None = 2
    ) -> None:
        self.canonical = canonical
        self.shared = frozenset(shared)
        self.memo: dict[tuple[int, int], str] = {}
        self.floats: dict[float, str] = {}
        self.string = encode_basestring_ascii if canonical else encode_basestring
        self.pads = _pads(None if canonical else indent)
        self.colon = ": " if self.pads[0] else ":"
        self.encoders: dict[type, Encode] = {}
        self.layouts: dict[type, Layout] = {}

    def chunks(self, obj: Any, depth: int = 0) -> Iterator[str]:
        """The text of `obj` in pieces: a piece per element down to STREAM_DEPTH."""
        if isinstance(obj, tuple | list):
            items: list[tuple[str, Any]] = [("", v) for v in obj]
            opening, closing = "[", "]"
        else:
            items = self._fields(obj)
            opening, closing = "{", "}"
        if not items:
            yield opening + closing
            return
        yield opening
        inner = self.pads[depth + 1]
        for n, (key, value) in enumerate(items):
            head = ("," if n else "") + inner + key
            if depth + 1 < STREAM_DEPTH and _is_container(value):
                yield head
                yield from self.chunks(value, depth + 1)
            else:
                yield head + self.text(value, depth + 1)
        yield self.pads[depth] + closing

    def text(self, obj: Any, depth: int) -> str:
        kind = type(obj)
        if kind is str:
            return self.string(obj)
        encode = self.encoders.get(kind)
        if encode is not None:
            if kind not in self.shared:
                return encode(obj, depth)
            key = (id(obj), depth)
            found = self.memo.get(key)
            if found is None:
                found = self.memo[key] = encode(obj, depth)
            return found
        if kind is bool:
            return "true" if obj else "false"
        if kind is int:
            return int.__repr__(obj)
        if kind is float:
            return self._float(obj)
        if obj is None:
            return "null"
        if kind is tuple or kind is list:
            if not obj:
                return "[]"
            inner = self.pads[depth + 1]
            body = ("," + inner).join([self.text(v, depth + 1) for v in obj])
            return "[" + inner + body + self.pads[depth] + "]"
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self.encoders[kind] = _encoder(self, kind)
            return self.text(obj, depth)
        raise TypeError(f"a plan holds no {kind.__name__}: {obj!r}")

    def _fields(self, obj: Any) -> list[tuple[str, Any]]:
        cls = type(obj)
        layout = self.layouts.get(cls)
        if layout is None:
            if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
                raise TypeError(f"expected a dataclass, got {cls.__name__}")
            layout = _layout(cls, canonical=self.canonical, colon=self.colon)[0]
            self.layouts[cls] = layout
        out = []
        for name, key, exclude in layout:
            value = getattr(obj, name)
            if exclude is None or not exclude(value):
                out.append((key, value))
        return out

    def _float(self, value: float) -> str:
        # json.dumps writes 1e-07 and Infinity, pydantic_core 1e-7 and Infinity
        if value == 0.0 or value != value:  # noqa: PLR0124 - -0.0 == 0.0; NaN != NaN
            return json.dumps(value) if self.canonical else pydantic_core.to_json(value).decode()
        found = self.floats.get(value)
        if found is None:
            found = json.dumps(value) if self.canonical else pydantic_core.to_json(value).decode()
            self.floats[value] = found
        return found


def _is_container(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return bool(value)
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def canonical_chunks(plan: Any, shared: tuple[type, ...]) -> Iterator[str]:
    """The canonical form of `plan` (the input of its digest), in pieces."""
    return _Writer(canonical=True, shared=shared).chunks(plan)


def shown_chunks(
    plan: Any, digest: str, shared: tuple[type, ...], indent: int | None = 2
) -> Iterator[str]:
    """The shown form of `plan`, `digest` first, in pieces."""
    writer = _Writer(canonical=False, shared=shared, indent=indent)
    pieces = writer.chunks(plan)
    if next(pieces) != "{":  # a plan always has fields
        raise TypeError("a plan is written as a JSON object")
    yield "{" + writer.pads[1] + '"digest"' + writer.colon + encode_basestring(digest) + ","
    yield from pieces
