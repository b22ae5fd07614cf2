"""YAML documents that remember where every value came from.

PyYAML forgets line numbers once it builds Python objects and silently keeps
the last of two duplicate keys. We compose the node tree ourselves, build
plain Python values from it, and keep a map from each value's path to its
line and column, so a validation error found later anywhere can name the
exact spot in the operator's file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import FieldProblem, InputError, Problem

PathKey = tuple[str | int, ...]

try:  # libyaml makes composing a 10,000-host inventory several times faster
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader


@dataclass(slots=True)
class Document:
    """Parsed YAML plus the position of every mapping key and value."""

    name: str
    data: Any
    positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    # problems found while loading that do not stop validation (duplicate keys)
    problems: list[Problem] = field(default_factory=list)
    # the text as written of scalars YAML did not read as strings: 2025.10
    # becomes the float 2025.1, and a message must quote what the operator wrote
    texts: dict[PathKey, str] = field(default_factory=dict)

    def locate(self, path: Sequence[str | int]) -> tuple[int | None, int | None]:
        """Position of `path`, or of its nearest ancestor that exists."""
        key = tuple(path)
        while key:
            pos = self.positions.get(key)
            if pos is not None:
                return pos
            key = key[:-1]
        pos = self.positions.get(())
        return pos if pos is not None else (None, None)

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        line, column = self.locate(path)
        return Problem(
            message=message,
            file=self.name,
            line=line,
            column=column,
            field=dotted(path) or None,
        )


def dotted(path: Iterable[str | int]) -> str:
    """``('hosts', 'cmp-1', 'roles', 0)`` -> ``hosts.cmp-1.roles[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_file(path: str | Path, display_name: str | None = None) -> Document:
    name = display_name or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(Problem(file=name, message="file not found")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(Problem(file=name, message=f"cannot read: {exc}")) from None
    return load_text(text, name)


# Limits on every YAML document (docs/formats.md, "Limits"). Aliases are
# allowed, since operators share role definitions with &anchors, but a
# document may not expand through them to more than MAX_NODES values: the
# composed graph is measured without expanding it, so an alias bomb is
# refused in milliseconds instead of filling memory.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_NODES = 1_000_000
MAX_DEPTH = 64


def load_text(text: str, name: str) -> Document:
    if len(text) > MAX_DOCUMENT_BYTES:
        raise InputError(
            Problem(
                file=name,
                message=f"the document is {len(text):,} characters; at most "
                f"{MAX_DOCUMENT_BYTES:,} are read",
            )
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON body's "\ud800" arrives as a lone surrogate
        line = text.count("\n", 0, exc.start) + 1
        raise InputError(
            Problem(file=name, line=line, message="not valid Unicode: a lone surrogate character")
        ) from None
    # without an anchor or alias nothing can expand, and libyaml refuses to
    # compose past its own nesting limit: compose first, and let _build count
    # and bound what it walks anyway (the parser's events took 0.1 s of a
    # 10,000-host inventory); the checks before composing run only to say
    # why a document is refused, so it is refused as before
    fast = "&" not in text and "*" not in text and _nesting_bounded()
    simple = fast or _bound_depth(text, name)
    try:
        node = yaml.compose(text, Loader=_Loader)  # not deeper than MAX_DEPTH, or fast
    except yaml.MarkedYAMLError as exc:
        if fast:
            _bound_depth(text, name)
        mark = exc.problem_mark or exc.context_mark
        context = exc.context or ""
        if (
            context
            and exc.context_mark is not None
            and mark is not None
            and exc.context_mark.line != mark.line
        ):
            context += f" (started on line {exc.context_mark.line + 1})"
        reason = ": ".join(x for x in (context, exc.problem) if x) or "invalid YAML"
        reason += _syntax_hint(text, exc)
        raise InputError(
            Problem(
                file=name,
                line=mark.line + 1 if mark else None,
                column=mark.column + 1 if mark else None,
                message=f"YAML syntax error: {reason}",
            )
        ) from None
    except yaml.YAMLError as exc:
        if fast:
            _bound_depth(text, name)
        raise InputError(Problem(file=name, message=f"YAML error: {exc}")) from None
    doc = Document(name=name, data=None)
    if node is None:
        raise InputError(Problem(file=name, line=1, message="the document is empty"))
    if not fast:
        if not simple:
            _measure(node, name)
        doc.data = _build(node, (), doc, doc.problems)
        return doc
    try:
        doc.data = _build(node, (), doc, doc.problems, tally=_Tally())
    except _OverLimit:
        _bound_depth(text, name)  # a collection too deep: refused where it opens
        _measure(node, name)  # too many values, or a scalar too deep
        raise  # pragma: no cover - one of the two refuses what _build passed
    return doc


@cache
def _nesting_bounded() -> bool:
    """Whether composing refuses to nest past libyaml's own limit (1000
    levels, libyaml 0.2.5 and later) instead of recursing as deep as the
    text goes: then a document may be composed before its depth is known."""
    if _Loader is yaml.SafeLoader:  # pragma: no cover - libyaml missing
        return False
    try:
        yaml.compose("[" * 1001 + "]" * 1001, Loader=_Loader)
    except yaml.YAMLError:
        return True
    return False  # pragma: no cover - an old libyaml


class _Tally:
    """The values built so far, when no alias can make one count twice."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values = 0

    def count(self, depth: int) -> None:
        self.values += 1
        if depth > MAX_DEPTH or self.values > MAX_NODES:
            raise _OverLimit

    def skip(self, node: yaml.Node, depth: int) -> None:
        """Count a part of the document that is not built (a duplicate key's value)."""
        stack = [(node, depth)]
        while stack:
            part, at = stack.pop()
            self.count(at)
            stack.extend((child, at + 1) for child in _children(part))


class _OverLimit(Exception):
    """A document passes MAX_DEPTH or MAX_NODES: load_text says which, as before."""


_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _bound_depth(text: str, name: str) -> bool:
    """Refuse nesting deeper than MAX_DEPTH from the parser's events, before
    composing: composing thousands of levels takes seconds (the resolver's
    path stack), the events a millisecond. Syntax errors are left to compose,
    which explains them better.

    True when the events show `_measure` cannot refuse the document: no
    aliases (so no node is shared and none refers to itself), at most
    MAX_NODES nodes, none deeper than MAX_DEPTH. Measuring is then left out:
    for a 10,000-host inventory it took as long as composing."""
    depth = 0
    nodes = 0
    deepest = 0
    aliases = False
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, _OPEN):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    raise InputError(
                        Problem(
                            file=name,
                            line=None if mark is None else mark.line + 1,
                            column=None if mark is None else mark.column + 1,
                            message=f"the document nests deeper than {MAX_DEPTH} levels",
                        )
                    )
                nodes += 1
                deepest = max(deepest, depth)
            elif isinstance(event, _CLOSE):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                deepest = max(deepest, depth + 1)  # a scalar is a level below its collection
            elif isinstance(event, yaml.AliasEvent):
                aliases = True
    except yaml.YAMLError:
        return False
    return not aliases and nodes <= MAX_NODES and deepest <= MAX_DEPTH


def _measure(root: yaml.Node, name: str) -> None:
    """Refuse a graph that expands past MAX_NODES values, nests deeper than
    MAX_DEPTH or refers to itself, counting each distinct node once."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # iterative post-order walk: (node, depth, children done?)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in children)
            sizes[key] = size
            if size > MAX_NODES:
                raise InputError(
                    _problem_at(
                        name,
                        node,
                        f"this value expands through YAML aliases to more than {MAX_NODES:,} "
                        "values; the document is refused",
                    )
                )
            continue
        if key in sizes:
            continue  # an alias of a node already measured
        if key in on_path:
            raise InputError(_problem_at(name, node, "a YAML alias refers to itself"))
        if depth > MAX_DEPTH:
            raise InputError(
                _problem_at(name, node, f"the document nests deeper than {MAX_DEPTH} levels")
            )
        on_path.add(key)
        stack.append((node, depth, True))
        for child in children:
            if id(child) in on_path:
                raise InputError(_problem_at(name, child, "a YAML alias refers to itself"))
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _problem_at(name: str, node: yaml.Node, message: str) -> Problem:
    mark = node.start_mark
    return Problem(file=name, line=mark.line + 1, column=mark.column + 1, message=message)


_constructor = yaml.SafeLoader("")


def _build(
    node: yaml.Node,
    path: PathKey,
    doc: Document,
    problems: list[Problem],
    *,
    tally: _Tally | None = None,
    depth: int = 1,
) -> Any:
    """The value of `node`; with a `tally`, every node of the document is
    counted on the way, built or not (a skipped key's value too)."""
    if tally is not None:
        tally.count(depth)
    positions = doc.positions
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_seen: dict[Any, int] = {}
        below = depth + 1
        for key_node, value_node in node.value:
            # a plain string key and a plain string value (most of an
            # inventory) are read here, as _build_scalar_key and _build would
            plain_key = type(key_node) is yaml.ScalarNode and key_node.tag == _STR_TAG
            if tally is not None:
                if plain_key:
                    tally.count(below)
                else:
                    tally.skip(key_node, below)
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(
                    _at(doc, key_node, path, "YAML merge keys ('<<') are not supported")
                )
                if tally is not None:
                    tally.skip(value_node, below)
                continue
            key = key_node.value if plain_key else _build_scalar_key(key_node, path, doc, problems)
            if key is None:
                if tally is not None:
                    tally.skip(value_node, depth + 1)
                continue
            child = (*path, key)
            if key in first_seen:
                problems.append(
                    _at(
                        doc,
                        key_node,
                        child,
                        f"duplicate key '{key}' (first defined on line {first_seen[key]})",
                    )
                )
                if tally is not None:
                    tally.skip(value_node, depth + 1)
                continue
            mark = key_node.start_mark
            first_seen[key] = mark.line + 1
            positions[child] = (mark.line + 1, mark.column + 1)
            if type(value_node) is yaml.ScalarNode and value_node.tag == _STR_TAG:
                if tally is not None:
                    tally.count(below)
                out[key] = value_node.value  # its position is its key's
            else:
                out[key] = _build(value_node, child, doc, problems, tally=tally, depth=below)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), doc, problems, tally=tally, depth=depth + 1)
            for i, item in enumerate(node.value)
        ]
    value = _construct(node, path, doc, problems)
    if value is not None and not isinstance(value, str):
        doc.texts[path] = str(node.value)
    return value


_STR_TAG = "tag:yaml.org,2002:str"


def _construct(node: yaml.Node, path: PathKey, doc: Document, problems: list[Problem]) -> Any:
    """A scalar's value; a tag it cannot be read as (``!!binary`` that is not
    base64, ``!!timestamp`` that is no date) is a located problem, not a crash."""
    if node.tag == _STR_TAG and isinstance(node, yaml.ScalarNode):
        return node.value  # what SafeConstructor.construct_yaml_str returns
    try:
        return _constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        reason = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
    except (LookupError, AttributeError):  # PyYAML's constructors on an empty `!!int`
        reason = f"not a valid {str(node.tag).replace('tag:yaml.org,2002:', '!!')}"
    problems.append(_at(doc, node, path, f"cannot read this value: {reason}"))
    return None


def _syntax_hint(text: str, exc: yaml.MarkedYAMLError) -> str:
    """A likely cause of the YAML errors operators make most, which the
    parser's own words do not name."""
    mark = exc.problem_mark
    if mark is None:
        return ""
    if text[mark.index : mark.index + 1] == "\t":
        return " (a tab: YAML indents with spaces only)"
    if "mapping values are not allowed" in (exc.problem or ""):
        return " (is this line indented too deep, or does an unquoted value contain ': '?)"
    if "quoted scalar" in (exc.context or ""):
        return ""  # the parser already says which quote is open
    lines = text.splitlines()
    first = exc.context_mark.line if exc.context_mark is not None else mark.line - 1
    for n in range(min(mark.line, len(lines)) - 1, max(first, 0) - 1, -1):
        if lines[n].replace('\\"', "").count('"') % 2:
            return f" (is the quote opened on line {n + 1} closed?)"
    return ""


def _build_scalar_key(
    node: yaml.Node, path: PathKey, doc: Document, problems: list[Problem]
) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        problems.append(_at(doc, node, path, "mapping keys must be plain strings"))
        return None
    value = _construct(node, path, doc, problems)
    if isinstance(value, bool | int | float) or value is None:
        # `yes:` or `1:` as a key is almost always a mistake; keep the text.
        return str(node.value)
    return str(value)


def _at(doc: Document, node: yaml.Node, path: PathKey, message: str) -> Problem:
    return Problem(
        message=message,
        file=doc.name,
        line=node.start_mark.line + 1,
        column=node.start_mark.column + 1,
        field=dotted(path) or None,
    )


def suggest(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'roles'?)`` or empty when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list",
}


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _shown(value: Any, path: PathKey, doc: Document) -> str:
    """`_describe`, plus what was written when YAML read it as something else."""
    written = doc.texts.get(path)
    if isinstance(value, bool) and written is not None and written.lower() not in ("true", "false"):
        return f"{written} (YAML reads it as {str(value).lower()})"
    return _describe(value)


def validate(model: type[BaseModel], doc: Document, context: dict[str, Any] | None = None) -> Any:
    """Validate `doc` against `model`; every pydantic error becomes a located Problem."""
    try:
        result = model.model_validate(doc.data, context=context)
    except ValidationError as exc:
        raise InputError(doc.problems + problems_from(exc, doc, model)) from None
    if doc.problems:
        raise InputError(doc.problems)
    return result


def problems_from(exc: ValidationError, doc: Document, model: type[BaseModel]) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[PathKey, str]] = set()
    errors = [(_path(err, doc.data), err) for err in exc.errors(include_url=False)]
    # A value that fits no member of a union gets one error per member: say
    # "expected an integer, a string or a list" once. When one member got
    # further (a mapping with a misspelt key), its errors are the useful ones.
    deeper = {path[:n] for path, _ in errors for n in range(len(path))}
    expected: dict[PathKey, list[str]] = {}
    for path, err in errors:
        if err["type"] in _TYPE_NAMES and _TYPE_NAMES[err["type"]] not in expected.get(path, []):
            expected.setdefault(path, []).append(_TYPE_NAMES[err["type"]])
    for path, err in errors:
        kind, ctx = err["type"], err.get("ctx", {})
        if kind in _TYPE_NAMES and path in deeper:
            continue
        if kind == "extra_forbidden":
            name = str(path[-1])
            allowed = _allowed_fields(model, path[:-1], doc)
            message = f"unknown field '{name}'{suggest(name, allowed)}"
        elif kind == "missing":
            message = f"missing required field '{path[-1]}'"
            # point at the mapping that lacks it, not at the absent key
        elif kind in _TYPE_NAMES:
            *others, last = expected[path]
            wanted = f"{', '.join(others)} or {last}" if others else last
            message = f"expected {wanted}, got {_shown(err.get('input'), path, doc)}"
        elif kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
            message = "must not be empty"
        elif kind == "greater_than_equal":
            message = f"must be at least {ctx.get('ge')}, got {err.get('input')!r}"
        elif kind == "less_than_equal":
            message = f"must be at most {ctx.get('le')}, got {err.get('input')!r}"
        elif kind in ("value_error", "assertion_error"):
            message = (
                str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            )
        elif kind == "literal_error":
            choices = ctx.get("expected", "")
            message = f"must be one of {choices}, got {_shown(err.get('input'), path, doc)}"
        else:
            message = str(err["msg"])
        if (path, message) in seen:
            continue
        seen.add((path, message))
        problems.append(doc.problem(path, message))
    return problems


def _path(err: Any, data: Any) -> PathKey:
    """The error's location in the document, without the names pydantic puts
    into `loc` for union members ("int", "UndoStep", "function-after[...]").

    A name is kept when the input at that point is a mapping holding it, or
    when it is the required field an error says is missing. A FieldProblem
    adds the field of the validated model it is about.
    """
    loc = err["loc"]
    path: list[str | int] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path.append(part)
            data = data[part] if isinstance(data, list) and 0 <= part < len(data) else data
        elif isinstance(data, dict) and part in data and not _is_union_tag(part):
            path.append(part)
            data = data[part]
        elif i == len(loc) - 1 and err["type"] == "missing":
            path.append(part)
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, FieldProblem):
        path.extend(cause.at)
    return tuple(path)


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member name ("function-after[...]", "int") into loc
    return isinstance(part, str) and (("[" in part and "]" in part) or part in ("int", "str"))


def _allowed_fields(model: type[BaseModel], path: PathKey, doc: Document) -> list[str]:
    """Field names valid at `path`, for 'did you mean' suggestions."""
    current: Any = model
    for part in path:
        if isinstance(part, int) or current is None:
            continue
        field_info = getattr(current, "model_fields", {}).get(part)
        if field_info is None:
            # a key of a dict[str, Model] mapping: stay on the value model
            continue
        current = _model_in(field_info.annotation)
    return list(getattr(current, "model_fields", {}).keys()) if current else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
