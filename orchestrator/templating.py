"""Sandboxed Jinja2 with strict undefined variables.

Two flavours: `text` for URLs, file names and config values, and `shell` for
commands, where every ``{{ expression }}`` is shell-quoted because inventory
values are data, not code (``| raw`` opts out, for a fragment that is meant to
be shell syntax). Secrets render as markers (``@@secret:NAME@@``) that only
the executor replaces, so a plan never holds a secret.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.errors import TemplateError
from orchestrator.source import suggest

SECRET_MARKER = re.compile(r"@@secret:([A-Za-z0-9_.-]+)@@")
Flavour = Literal["text", "shell"]


class Namespace(dict[str, Any]):
    """A mapping in the template context that names itself in error messages."""

    __slots__ = ("label",)

    def __init__(self, label: str, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self.label = label


class _StrictUndefined(jinja2.StrictUndefined):
    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if isinstance(obj, Namespace) and isinstance(name, str):
            return f"'{obj.label}' has no field '{name}'{suggest(name, obj)}"
        if isinstance(obj, Secrets) and isinstance(name, str):
            return f"no secret '{name}' in the inventory's secrets{suggest(name, obj)}"
        return str(super()._undefined_message)


class Raw(str):
    """A value that `shell` templates insert without quoting."""

    __slots__ = ()


class Secrets(Mapping[str, str]):
    """The `secrets` template variable: names resolve to markers, never values."""

    def __init__(self, names: list[str]) -> None:
        self._names = names

    def __getitem__(self, name: str) -> str:
        if name not in self._names:
            raise KeyError(name)
        return Raw(f"@@secret:{name}@@")

    def __iter__(self) -> Any:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _shell_finalize(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, jinja2.Undefined):  # pragma: no cover - StrictUndefined raises first
        return str(value)
    text = str(value)
    return shlex.quote(text) if text else "''"


def _environment(flavour: Flavour) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=_StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        finalize=_shell_finalize if flavour == "shell" else None,
    )
    env.filters["raw"] = lambda v: Raw(str(v))
    env.filters["quote"] = lambda v: Raw(shlex.quote(str(v)))
    return env


_ENVS: dict[Flavour, ImmutableSandboxedEnvironment] = {
    "text": _environment("text"),
    "shell": _environment("shell"),
}


def is_template(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def render(source: str, context: Mapping[str, Any], flavour: Flavour = "text") -> str:
    """Render `source`; raise TemplateError naming the undefined variable or syntax fault.

    Sources without Jinja syntax are returned as they are. Each template is
    compiled once per process; `Templates` also reuses results.
    """
    if not is_template(source):
        return source
    return _render(_compile(flavour, source), context)


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a cache key part
class _Compiled:
    template: jinja2.Template
    # the top-level names the template reads
    names: tuple[str, ...]
    # per name read only as ``name.FIELD`` / ``name['FIELD']``, those fields
    fields: Mapping[str, tuple[str, ...]]
    # text and {{ expressions }} only, no statements, no final newline: it
    # renders the same joined to others (`Templates.render_all`)
    joinable: bool


@lru_cache(maxsize=4096)  # a daemon compiles the plans it is sent: bounded
def _compile(flavour: Flavour, source: str) -> _Compiled:
    env = _ENVS[flavour]
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None
    names = meta.find_undeclared_variables(ast)
    template = env.from_string(ast)
    # Jinja chains the template's globals to the environment's, for globals
    # added later; ours never change, and every render copies them: a plain
    # dict copies three times faster
    template.globals = dict(template.globals)
    joinable = all(isinstance(n, nodes.Output) for n in ast.body) and not source.endswith(
        ("\n", "\r")  # Jinja drops a template's final newline, not one inside
    )
    return _Compiled(template, tuple(sorted(names)), _fields_read(ast, names), joinable)


# between templates rendered together, and after each host's: text no
# template holds (refused otherwise); a rendered value holding one is
# noticed (too many parts)
_SEPARATOR = "\x00\x1f\x1e\x00"
_ROW = "\x00\x1d\x1c\x00"
_HOSTS = "__orchestrator_hosts__"
# names a loop body sees other than a template alone does
_LOOP_NAMES = {"loop", _HOSTS}


@lru_cache(maxsize=1024)
def _joined(flavour: Flavour, sources: tuple[str, ...]) -> _Compiled | None:
    """The templates `sources` as one, or None when they do not render the
    same that way (fewer than two, a statement, a final newline, the
    separator in one)."""
    if len(sources) < 2:
        return None
    try:
        each = [_compile(flavour, source) for source in sources]
    except TemplateError:
        return None
    if not all(c.joinable for c in each) or any(_SEPARATOR in source for source in sources):
        return None
    return _compile(flavour, _SEPARATOR.join(sources))


@lru_cache(maxsize=1024)
def _looped(flavour: Flavour, sources: tuple[str, ...]) -> _Compiled | None:
    """`sources` joined as in `_joined`, in a loop binding ``host`` to each
    of a list of hosts; None when that would not render them the same."""
    if not sources:
        return None
    try:
        each = [_compile(flavour, source) for source in sources]
    except TemplateError:
        return None
    if not all(c.joinable for c in each) or any(_LOOP_NAMES.intersection(c.names) for c in each):
        return None
    if any(_SEPARATOR in source or _ROW in source for source in sources):
        return None
    body = _SEPARATOR.join(sources)
    return _compile(flavour, f"{{% for host in {_HOSTS} %}}{body}{_ROW}{{% endfor %}}")


def _fields_read(ast: nodes.Template, names: set[str]) -> dict[str, tuple[str, ...]]:
    """For each name whose every use is ``name.FIELD`` or ``name['FIELD']`` with
    a constant FIELD that is not an attribute of Namespace (``host.items`` is
    the dict method), the fields read. Any other use (``host | tojson``,
    ``host[var]``, a loop variable of the same name) leaves the name out: its
    results are then keyed by the whole value."""
    uses: dict[str, int] = {}
    for name_node in ast.find_all(nodes.Name):
        if name_node.ctx == "load" and name_node.name in names:
            uses[name_node.name] = uses.get(name_node.name, 0) + 1
    covered: dict[str, int] = {}
    fields: dict[str, set[str]] = {}
    lookups: list[tuple[nodes.Expr, object]] = [
        (n.node, n.attr) for n in ast.find_all(nodes.Getattr)
    ]
    lookups += [
        (n.node, n.arg.value) for n in ast.find_all(nodes.Getitem) if isinstance(n.arg, nodes.Const)
    ]
    for inner, field in lookups:
        if not (isinstance(inner, nodes.Name) and inner.ctx == "load" and inner.name in names):
            continue
        if not isinstance(field, str) or hasattr(Namespace, field):
            continue
        covered[inner.name] = covered.get(inner.name, 0) + 1
        fields.setdefault(inner.name, set()).add(field)
    return {
        name: tuple(sorted(read))
        for name, read in fields.items()
        if covered[name] == uses.get(name, 0)
    }


def _render(compiled: _Compiled, context: Mapping[str, Any]) -> str:
    # only the names it reads: Jinja copies the mapping it is given
    names = {n: context[n] for n in compiled.names if n in context}
    try:
        return compiled.template.render(names)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined template variable: {_undefined(exc, context)}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template not allowed by the sandbox: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template error: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateError(f"template error: {exc}") from None


_MISSING = object()
_ATOMS = (str, int, float, bool, type(None))
_SMALL = 16


class Templates:
    """Renders templates for one plan: each compiled once, rendered once per
    distinct context it reads.

    A template's result depends only on the values of the names it reads
    (`jinja2.meta.find_undeclared_variables`), and for a Namespace read only
    through constant fields (``host.name``), on those fields. The cache key
    holds those values: strings, numbers, booleans and None by type and
    value, so ``1``, ``1.0`` and ``True`` never share a result; a Namespace's
    small lists and mappings by value too (``host.roles``); any other object
    (a playbook's mapping, a Namespace read as a whole, Secrets) by identity,
    held by the key so the identity stays its own. The sandbox keeps every
    value immutable to templates, so a value cannot change under its key.
    Failures are not cached: their messages suggest names from the whole
    context. `renders` counts the templates rendered (three rendered in one
    Jinja render count three).
    """

    __slots__ = ("_results", "renders")

    def __init__(self) -> None:
        self._results: dict[tuple[Any, ...], str] = {}
        self.renders = 0

    def render(self, source: str, context: Mapping[str, Any], flavour: Flavour = "text") -> str:
        if not is_template(source):
            return source
        return self._result(_compile(flavour, source), context, 1)

    def render_all(
        self, sources: tuple[str, ...], context: Mapping[str, Any], flavour: Flavour = "text"
    ) -> list[str] | None:
        """Each of `sources` rendered, in one Jinja render when they allow it
        (text and expressions only: ``{{ }}`` has no side effects, so each
        part renders as it would alone); None when they do not, or one
        fails: render them one by one then, to learn which and why."""
        spots = [n for n, source in enumerate(sources) if is_template(source)]
        joined = _joined(flavour, tuple(sources[n] for n in spots))
        if joined is None:
            return None
        try:
            parts = self._result(joined, context, len(spots)).split(_SEPARATOR)
        except TemplateError:
            return None
        if len(parts) != len(spots):
            return None
        out = list(sources)  # text without Jinja syntax is returned as it is
        for n, part in zip(spots, parts, strict=True):
            out[n] = part
        return out

    def render_for_hosts(
        self,
        sources: tuple[str, ...],
        context: Mapping[str, Any],
        hosts: Sequence[Namespace],
        flavour: Flavour = "text",
    ) -> list[list[str]] | None:
        """Each of `sources` rendered for each of `hosts` as ``host`` (every
        other name from `context`, the same for all), in one Jinja render: a
        loop over the hosts around the joined templates (`render_all`'s
        rules, and none may read ``loop``, which the loop defines). None
        when they may not, or anything fails: render host by host then."""
        spots = [n for n, source in enumerate(sources) if is_template(source)]
        looped = _looped(flavour, tuple(sources[n] for n in spots))
        if looped is None:
            return None
        try:
            text = _render(looped, {**context, _HOSTS: hosts})
        except TemplateError:
            return None
        rows = text.split(_ROW)
        if len(rows) != len(hosts) + 1 or rows[-1]:
            return None
        out = []
        for row in rows[:-1]:
            parts = row.split(_SEPARATOR)
            if len(parts) != len(spots):
                return None
            values = list(sources)  # text without Jinja syntax is returned as it is
            for n, part in zip(spots, parts, strict=True):
                values[n] = part
            out.append(values)
        self.renders += len(spots) * len(hosts)
        return out

    def _result(self, compiled: _Compiled, context: Mapping[str, Any], count: int) -> str:
        key = (compiled, *_key(compiled.names, compiled.fields, context))
        result = self._results.get(key)
        if result is None:
            self.renders += count
            result = _render(compiled, context)
            self._results[key] = result
        return result


def _key(
    names: tuple[str, ...], fields: Mapping[str, tuple[str, ...]], context: Mapping[str, Any]
) -> tuple[Any, ...]:
    key: list[Any] = []
    for name in names:
        value = context.get(name, _MISSING)
        read = fields.get(name)
        if read is not None and isinstance(value, Namespace):
            key.append((Namespace, *(frozen(value.get(f, _MISSING)) for f in read)))
        else:
            key.append(frozen(value, by_value=False))
    return tuple(key)


@lru_cache(maxsize=4096)
def reads(sources: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The names the templates `sources` read, and the fields of the names
    every one of them reads only through constant fields (see `Templates`);
    TemplateError when one does not compile."""
    compiled = [_compile("text", s) for s in sources if is_template(s)]
    names = sorted({n for c in compiled for n in c.names})
    fields: dict[str, tuple[str, ...]] = {}
    for name in names:
        readers = [c for c in compiled if name in c.names]
        if all(name in c.fields for c in readers):
            fields[name] = tuple(sorted({f for c in readers for f in c.fields[name]}))
    return tuple(names), fields


class _Same:
    """A key part equal only to a part holding the same object; holding it
    keeps the object alive, so its identity is never another object's."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.value is self.value


def frozen(value: Any, *, by_value: bool = True) -> Any:
    """A hashable key part that equals another only for the same data of the
    same types; containers by value when `by_value` and small, else by
    identity (the part holds the object)."""
    kind = type(value)
    if kind is float:
        return (kind, repr(value))  # -0.0 == 0.0, but they render differently
    if kind in _ATOMS:
        return (kind, value)
    if by_value and kind in (list, tuple) and len(value) <= _SMALL:
        return (kind, tuple(frozen(v) for v in value))
    if by_value and kind is dict and len(value) <= _SMALL:
        return (kind, tuple((frozen(k), frozen(v)) for k, v in value.items()))
    return _Same(value)


_TOP_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")


def _undefined(exc: jinja2.UndefinedError, context: Mapping[str, Any]) -> str:
    message = str(exc.message or exc)
    if m := _TOP_UNDEFINED.match(message):
        return f"'{m.group(1)}'{suggest(m.group(1), context)}"
    return message
