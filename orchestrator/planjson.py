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
import types
import typing
from collections.abc import Callable, Iterable, Iterator
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
    by name for the canonical form); and the fields' types, unannotated."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields, types = [], {}
    for field in dataclasses.fields(cls):
        hint, exclude = hints[field.name], None
        if typing.get_origin(hint) is typing.Annotated:
            for meta in hint.__metadata__:
                if isinstance(meta, FieldInfo) and meta.exclude_if is not None:
                    exclude = meta.exclude_if
            hint = hint.__origin__
        fields.append((field.name, f'"{field.name}"{colon}', exclude))
        types[field.name] = hint
    return tuple(sorted(fields) if canonical else fields), types


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _element(hint: Any) -> Any:
    """T of ``tuple[T, ...]``, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        element = args[0]
        if typing.get_origin(element) is typing.Annotated:
            element = element.__origin__
        return element
    return None


def _classes(hint: Any) -> frozenset[type]:
    """The dataclasses a field of this type holds, when it holds nothing else
    but None (a union of dataclasses, optional or not); else empty."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = hint.__origin__
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if typing.get_origin(hint) is typing.Union:
        members = typing.get_args(hint)
    found = [m for m in members if m is not type(None)]
    if found and all(_is_dataclass_type(m) for m in found):
        return frozenset(found)
    return frozenset()


def _is_text_literal(hint: Any) -> bool:
    """``Literal["run"]``: a str the validator allowed."""
    args = typing.get_args(hint)
    return typing.get_origin(hint) is typing.Literal and all(type(a) is str for a in args)


def _nests(cls: type) -> bool:
    """Whether `cls` has a field holding a tuple of dataclasses (a plan's
    phases, a phase's batches, a batch's host plans): one worth streaming."""
    _, types = _layout(cls, canonical=False, colon="")
    for hint in types.values():
        if typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            members = typing.get_args(args[0]) or args[:1] if args else ()
            if any(_is_dataclass_type(m) for m in members):
                return True
    return False


def _encoder(writer: _Writer, cls: type) -> Encode:
    """A function writing an instance of `cls` at a depth: one expression per
    field, in order, so a host plan's hundred values cost no loop. A field
    whose type says what it holds (str, a Literal of strings, int, bool,
    float, tuple[str, ...], an optional) is written directly or through
    the helper for it, any other through `writer.text`. A str field
    holding anything else is refused (encode_basestring raises TypeError)."""
    layout, types = _layout(cls, canonical=writer.canonical, colon=writer.colon)
    names: dict[str, Any] = {
        "s": writer.string,
        "fl": writer.float,
        "commas": writer.commas,
        "seq": writer.sequence,
        "seq_shared": writer.shared_sequence,
        "seq_of": writer.sequence_of,
        "text": writer.text,
        "pads": writer.pads,
        "memo": writer.memo,
    }
    body = [
        "def encode(o, d):",
        "    p = pads[d + 1]",
        "    e = d + 1",
        "    m = memo[e]",
        "    parts = [",
    ]
    values = []
    for n, (name, key, exclude) in enumerate(layout):
        names[f"k{n}"] = key
        hint = types[name]
        classes = _classes(hint)
        element = _element(hint)
        if hint is str or _is_text_literal(hint):
            value = f"s(o.{name})"
        elif hint == str | None:
            value = f'("null" if o.{name} is None else s(o.{name}))'
        elif classes and classes <= writer.shared:  # a shared value (or None): kept text first
            value = f'("null" if (v := o.{name}) is None else (m.get(id(v)) or text(v, e)))'
        elif type(None) in typing.get_args(hint):
            value = f'("null" if o.{name} is None else text(o.{name}, e))'
        elif hint is int:
            value = f"(int.__repr__(o.{name}) if type(o.{name}) is int else text(o.{name}, e))"
        elif hint is bool:
            value = f'("true" if o.{name} else "false")'
        elif hint is float:
            value = f"fl(o.{name})"
        elif element is str:  # a str (subclass) each, or TypeError
            value = (
                f'("[]" if not o.{name} else "".join(("[", pads[e + 1], '
                f'commas[e + 1].join(map(s, o.{name})), pads[e], "]")))'
            )
        elif element is not None and _classes(element) and _classes(element) <= writer.shared:
            value = f"seq_shared(o.{name}, e)"
        elif element is not None and _is_dataclass_type(element):
            names[f"t{n}"] = element
            value = f"seq_of(o.{name}, e, t{n})"
        elif element is not None:
            value = f"seq(o.{name}, e)"
        else:
            value = f"text(o.{name}, e)"
        values.append(value)
        if exclude is None:
            body.append(f"        k{n} + {value},")
        else:  # left out when its exclude_if holds
            names[f"x{n}"] = exclude
            body += [
                "    ]",
                f"    if not x{n}(o.{name}):",
                f"        parts.append(k{n} + {value})",
            ]
            body.append("    parts += [")
    body.append("    ]")
    body.append('    if not parts:\n        return "{}"')
    body.append('    return "{" + p + ("," + p).join(parts) + pads[d] + "}"')
    if layout and not any(exclude for _, _, exclude in layout):
        # every field always there: one join of the keys (their commas and
        # indentation made per depth once) and the values
        names["keys"] = [_keys(layout, writer.pads, d) for d in range(MAX_DEPTH - 1)]
        joined = ", ".join(f"K[{n}], {value}" for n, value in enumerate(values))
        body = [
            "def encode(o, d):",
            "    e = d + 1",
            "    m = memo[e]",
            "    K = keys[d]",
            f'    return "".join(({joined}, K[{len(values)}]))',
        ]
    exec("\n".join(body), names)
    return typing.cast(Encode, names["encode"])


def _keys(layout: Layout, pads: list[str], depth: int) -> list[str]:
    """What goes before each field of an object at `depth` (the opening
    brace or a comma, the indentation, the key), and the closing brace."""
    inner = pads[depth + 1]
    found = [("," if n else "{") + inner + key for n, (_, key, _) in enumerate(layout)]
    return [*found, pads[depth] + "}"]


class _Writer:
    """One pass over a plan in one form. `shared` are the classes whose
    instances the compiler shares: their text is kept for the pass, per
    depth (indentation differs)."""

    def __init__(
        self, *, canonical: bool, shared: tuple[type, ...], indent: int | None = 2
    ) -> None:
        self.canonical = canonical
        self.shared = frozenset(shared)
        self.memo: list[dict[int, str]] = [{} for _ in range(MAX_DEPTH)]
        self.floats: dict[float, str] = {}
        self.string = encode_basestring_ascii if canonical else encode_basestring
        self.pads = _pads(None if canonical else indent)
        self.colon = ": " if self.pads[0] else ":"
        self.commas = ["," + pad for pad in self.pads]
        self.encoders: dict[type, Encode] = {}
        self.layouts: dict[type, Layout] = {}
        self.nesting: dict[type, bool] = {}

    def chunks(self, obj: Any, depth: int = 0) -> Iterator[str]:
        """The text of the dataclass `obj` in pieces: each element of its
        tuples of dataclasses one piece, or streamed the same way while above
        STREAM_DEPTH (a plan's phases, their batches, their host plans)."""
        pads = self.pads
        yield "{"
        for n, (key, value) in enumerate(self._fields(obj)):
            head = ("," if n else "") + pads[depth + 1] + key
            if not (type(value) is tuple and value and self._streams(value[0], depth + 2)):
                yield head + self.text(value, depth + 1)
                continue
            yield head + "["
            text, inner, below = self.text, pads[depth + 2], depth + 2
            streams = depth + 3 <= STREAM_DEPTH and self._streams(value[0], depth + 3)
            for m, element in enumerate(value):
                lead = "," + inner if m else inner
                if streams and self._streams(element, depth + 3):
                    yield lead
                    yield from self.chunks(element, below)
                else:
                    yield lead + text(element, below)
            yield pads[depth + 1] + "]"
        yield pads[depth] + "}"

    def _streams(self, element: Any, depth: int) -> bool:
        """Whether a tuple element at `depth` - 1 is streamed rather than written whole."""
        if depth > STREAM_DEPTH:
            return False
        cls = type(element)
        found = self.nesting.get(cls)
        if found is None:
            found = self.nesting[cls] = _is_dataclass_type(cls) and _nests(cls)
        return found

    def text(self, obj: Any, depth: int) -> str:
        kind = type(obj)
        if kind is str:
            return self.string(obj)
        encode = self.encoders.get(kind)
        if encode is not None:
            if kind not in self.shared:
                return encode(obj, depth)
            memo = self.memo[depth]
            found = memo.get(id(obj))
            if found is None:
                found = memo[id(obj)] = encode(obj, depth)
            return found
        if kind is bool:
            return "true" if obj else "false"
        if kind is int:
            return int.__repr__(obj)
        if kind is float:
            return self.float(obj)
        if obj is None:
            return "null"
        if kind is tuple or kind is list:
            if not obj:
                return "[]"
            inner = self.pads[depth + 1]
            body = ("," + inner).join([self.text(v, depth + 1) for v in obj])
            return "".join(("[", inner, body, self.pads[depth], "]"))
        if _is_dataclass_type(kind):
            self.encoders[kind] = _encoder(self, kind)
            return self.text(obj, depth)
        raise TypeError(f"a plan holds no {kind.__name__}: {obj!r}")

    def shared_sequence(self, values: tuple[Any, ...], depth: int) -> str:
        """A tuple of shared values: each one's kept text, if it has some."""
        if not values:
            return "[]"
        inner = self.pads[depth + 1]
        memo, text, below = self.memo[depth + 1], self.text, depth + 1
        body = ("," + inner).join([memo.get(id(v)) or text(v, below) for v in values])
        return "".join(("[", inner, body, self.pads[depth], "]"))

    def sequence_of(self, values: tuple[Any, ...], depth: int, cls: type) -> str:
        """A tuple of `cls` instances (as the type says): written by its encoder."""
        if not values:
            return "[]"
        encode = self.encoders.get(cls)
        if encode is None:
            encode = self.encoders[cls] = _encoder(self, cls)
        inner, text, below = self.pads[depth + 1], self.text, depth + 1
        body = ("," + inner).join(
            [encode(v, below) if type(v) is cls else text(v, below) for v in values]
        )
        return "".join(("[", inner, body, self.pads[depth], "]"))

    def sequence(self, values: tuple[Any, ...], depth: int) -> str:
        if not values:
            return "[]"
        inner = self.pads[depth + 1]
        text, below = self.text, depth + 1
        body = ("," + inner).join([text(v, below) for v in values])
        return "".join(("[", inner, body, self.pads[depth], "]"))

    def float(self, value: float) -> str:
        if type(value) is not float:  # not what the type says: written as what it is
            return self.text(value, 0)
        # json.dumps writes 1e-07 and Infinity, pydantic_core 1e-7 and Infinity
        if value == 0.0 or value != value:  # noqa: PLR0124 - -0.0 == 0.0; NaN != NaN
            return json.dumps(value) if self.canonical else pydantic_core.to_json(value).decode()
        found = self.floats.get(value)
        if found is None:
            found = json.dumps(value) if self.canonical else pydantic_core.to_json(value).decode()
            self.floats[value] = found
        return found

    def _fields(self, obj: Any) -> list[tuple[str, Any]]:
        cls = type(obj)
        layout = self.layouts.get(cls)
        if layout is None:
            if not _is_dataclass_type(cls):
                raise TypeError(f"expected a dataclass, got {cls.__name__}")
            layout = _layout(cls, canonical=self.canonical, colon=self.colon)[0]
            self.layouts[cls] = layout
        out = []
        for name, key, exclude in layout:
            value = getattr(obj, name)
            if exclude is None or not exclude(value):
                out.append((key, value))
        return out


def canonical_chunks(plan: Any, shared: tuple[type, ...]) -> Iterator[str]:
    """The canonical form of `plan` (the input of its digest), in pieces."""
    return _Writer(canonical=True, shared=shared).chunks(plan)


def shown_chunks(
    plan: Any, digest: str, shared: tuple[type, ...], indent: int | None = 2
) -> Iterator[str]:
    """The shown form of `plan`, `digest` first, in pieces."""
    writer = _Writer(canonical=False, shared=shared, indent=indent)
    pieces = writer.chunks(plan)
    next(pieces)  # "{"
    yield "{" + writer.pads[1] + '"digest"' + writer.colon + encode_basestring(digest) + ","
    yield from pieces


def gathered(chunks: Iterable[str], size: int = 1 << 20) -> Iterator[str]:
    """`chunks` joined into pieces of about `size` characters: one write (or
    hash update) per megabyte instead of one per host plan."""
    pending: list[str] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield "".join(pending)
            pending, held = [], 0
    if pending:
        yield "".join(pending)
