"""Secret values, resolved at the last moment and kept out of everything else.

A plan holds only references (``(name, "env"|"file", source)``) and its
commands hold markers (``@@secret:NAME@@``). The executor asks this store to
substitute the markers just before a command leaves for a host, and passes
every output and error message through `redact` before it is logged, stored
or shown.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.errors import InputError, Problem
from orchestrator.templating import SECRET_MARKER

REDACTED = "***"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where one secret comes from: an environment variable or a file."""

    name: str
    kind: Literal["env", "file"]
    source: str

    def describe(self) -> str:
        if self.kind == "env":
            return f"environment variable {self.source!r}"
        return f"file {self.source!r}"


class SecretStore:
    """Resolves secret references lazily and caches the values.

    A value is read the first time a command needs it, so a plan whose
    secrets are only needed late does not fail early for an unrelated one;
    `require_all` is there for a preflight that wants to fail early.
    """

    __slots__ = ("_environ", "_redaction", "_refs", "_unavailable", "_values")

    def __init__(self, refs: Iterable[SecretRef], environ: Mapping[str, str]) -> None:
        self._refs = {ref.name: ref for ref in refs}
        self._environ = environ
        self._values: dict[str, str] = {}
        self._unavailable: set[str] = set()  # for redaction only; `value` tries again
        self._redaction: tuple[int, re.Pattern[str] | None] | None = None

    @classmethod
    def from_plan(
        cls,
        plan_secrets: Iterable[tuple[str, str, str]],
        environ: Mapping[str, str] = os.environ,
    ) -> SecretStore:
        refs: list[SecretRef] = []
        for name, kind, source in plan_secrets:
            if kind == "env":
                refs.append(SecretRef(name, "env", source))
            elif kind == "file":
                refs.append(SecretRef(name, "file", source))
            else:
                raise InputError(
                    Problem(f"unknown secret source kind {kind!r}", field=f"secrets.{name}")
                )
        return cls(refs, environ)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._refs)

    def value(self, name: str) -> str:
        """The secret's value; an `InputError` naming the secret and source if missing."""
        if name in self._values:
            return self._values[name]
        ref = self._refs.get(name)
        if ref is None:
            raise InputError(
                Problem(f"secret {name!r} is used but not declared", field=f"secrets.{name}")
            )
        value = self._read(ref)
        self._values[name] = value
        return value

    def require_all(self) -> None:
        """Resolve every secret now; reports every missing one at once."""
        problems: list[Problem] = []
        for name in self._refs:
            try:
                self.value(name)
            except InputError as exc:
                problems.extend(exc.problems)
        if problems:
            raise InputError(problems)

    def substitute(self, command: str, *, shell: bool = True) -> str:
        """Replace markers by values: shell-quoted for commands, raw for config values."""

        def replace(match: re.Match[str]) -> str:
            value = self.value(match.group(1))
            return shlex.quote(value) if shell else value

        return SECRET_MARKER.sub(replace, command)

    def remarker(self, text: str | None) -> str | None:
        """Turn secret values back into markers: the inverse of ``substitute(shell=False)``.

        For a value read from a host (a config key's previous value) that must
        be journaled and later written back: the journal keeps the marker and
        undo substitutes it again.
        """
        if text is None:
            return None
        names: dict[str, str] = {}
        for name, value in self._resolvable().items():
            if value:
                names.setdefault(value, name)
        if not names:
            return text
        return _alternation(names).sub(lambda m: f"@@secret:{names[m.group(0)]}@@", text)

    def redact(self, text: str) -> str:
        """Replace every secret value we can resolve by ``***``.

        Secrets that cannot be resolved cannot have been sent, but a command
        may still print them (``cat`` of the source file), so every declared
        secret is tried, not only those used so far.
        """
        values = self._resolvable()
        if self._redaction is None or self._redaction[0] != len(values):
            needles = set().union(*(_needles(v) for v in values.values()))
            pattern = _alternation(needles) if needles else None
            self._redaction = (len(values), pattern)
        pattern = self._redaction[1]
        return text if pattern is None else pattern.sub(REDACTED, text)

    def _resolvable(self) -> dict[str, str]:
        """Every value that can be read; a source that could not be is not re-read here."""
        for name in self._refs:
            if name not in self._values and name not in self._unavailable:
                try:
                    self.value(name)
                except InputError:
                    self._unavailable.add(name)
        return self._values

    def _read(self, ref: SecretRef) -> str:
        where = f"secrets.{ref.name}"
        if ref.kind == "env":
            if ref.source not in self._environ:
                raise InputError(
                    Problem(f"secret {ref.name!r}: {ref.describe()} is not set", field=where)
                )
            return self._environ[ref.source]
        path = Path(ref.source).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            raise InputError(
                Problem(f"secret {ref.name!r}: cannot read {ref.describe()}: {reason}", field=where)
            ) from None
        # a file written by `echo` or an editor ends in a newline that is not part of the secret
        return text.removesuffix("\n").removesuffix("\r")


def _needles(value: str) -> set[str]:
    """The forms in which a value may show up in output."""
    if not value:
        return set()
    found = {value, shlex.quote(value)}
    # what a command may turn it into on the way out: `base64`, `xxd -p`,
    # `od`-free hex dumps, URL encoding
    raw = value.encode("utf-8", "surrogatepass")
    forms = {raw.hex(), raw.hex().upper()}
    forms.update({urllib.parse.quote(raw, safe=""), urllib.parse.quote_plus(raw)})
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms.update({text, text.rstrip("=")})
    # a very short secret's encodings ("ZQ", "65") would garble every output
    found.update(form for form in forms if len(form) >= 6)
    # a multi-line secret (a key file) is printed line by line; lines as short
    # as a lone brace would garble every output and reveal nothing
    found.update(s for line in value.splitlines() if len(s := line.strip()) >= 4)
    return found


def _alternation(values: Iterable[str]) -> re.Pattern[str]:
    """One pattern for all values, longest first, so one pass never rewrites its own output."""
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))
