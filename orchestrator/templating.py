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
from collections.abc import Mapping
from typing import Any, Literal

import jinja2
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
_CACHE: dict[tuple[Flavour, str], jinja2.Template] = {}


def is_template(source: str) -> bool:
    return "{{" in source or "{%" in source or "{#" in source


def render(source: str, context: Mapping[str, Any], flavour: Flavour = "text") -> str:
    """Render `source`; raise TemplateError naming the undefined variable or syntax fault.

    Sources without Jinja syntax are returned as they are, which keeps plan
    compilation for 10,000 hosts fast.
    """
    if not is_template(source):
        return source
    key = (flavour, source)
    template = _CACHE.get(key)
    if template is None:
        try:
            template = _ENVS[flavour].from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template syntax error: {exc.message}") from None
        _CACHE[key] = template
    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined template variable: {_undefined(exc, context)}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template not allowed by the sandbox: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template error: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateError(f"template error: {exc}") from None


_TOP_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")


def _undefined(exc: jinja2.UndefinedError, context: Mapping[str, Any]) -> str:
    message = str(exc.message or exc)
    if m := _TOP_UNDEFINED.match(message):
        return f"'{m.group(1)}'{suggest(m.group(1), context)}"
    return message
