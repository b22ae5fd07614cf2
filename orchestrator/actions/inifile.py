"""Read and edit one key of an INI file as text, leaving every other byte alone.

Pure functions for the `config` step; the engine does the SFTP around them.
The file is read the way oslo.config's parser reads it, because that is who
reads these files on the hosts:

* ``[name]`` at column 0 starts a section; names compare exactly (no case
  folding), and ``DEFAULT`` is a section like any other. A section may appear
  in several blocks; together they are one section.
* ``key = value``, ``key=value`` and ``key: value``: the first ``=`` or ``:``
  splits the line; the key is stripped and compared case-sensitively.
* Lines that start with a space or a tab right after an assignment continue
  its value; a blank line, a comment or a section ends it. (Where oslo would
  refuse an indented line, one that follows no assignment, we read it as an
  indented assignment if it has a delimiter, and otherwise leave it alone.)
* ``#`` and ``;`` start a comment only at column 0. There are no inline
  comments: in ``key = 1 # one`` the value is ``1 # one``, as oslo sees it.
  Setting such a key replaces the whole rest of the line.
* A key given twice: the last one wins (oslo's reading for single-valued
  options). `set_value` with a string rewrites only that last one, the one in
  effect; earlier duplicates are left as they are, so the edit can be undone
  exactly. Removing a key removes every occurrence, else an earlier one
  would silently take effect.

Values are handled as written: surrounding quotes are kept, and trailing
whitespace and continuation lines (with their indentation, joined by
``\\n``) are part of the value. That raw reading is what makes the undo
contract exact: with ``old = get_value(text, s, k)``,
``set_value(set_value(text, s, k, v), s, k, old) == text`` whenever the key
existed, and ``set_value(set_value(text, s, k, v), s, k, None) == text``
whenever it did not. One case cannot be told apart afterwards and is the
exception: a file that *ends* with the header of an empty ``[s]`` (after a
blank line, or as its only line) loses that header when the key added to it
is removed again, because that is exactly what a section we appended looks
like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from orchestrator.errors import InputError, Problem

_EOL = re.compile(r"(\r?\n)")
_INDENT = (" ", "\t")
_COMMENT = ("#", ";")


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    start: int  # line of `key = ...`
    end: int  # one past its last continuation line
    delim: int  # column of the `=` or `:`
    value_at: int  # column where the value starts


@dataclass(slots=True)
class _Block:
    name: str | None  # None: the lines before the first section header
    header: int  # line of `[name]`; -1 for the lines before the first header
    end: int = 0  # one past the block's last line
    entries: list[_Entry] = field(default_factory=list)


@dataclass(slots=True)
class _Doc:
    lines: list[str]  # without line endings
    eols: list[str]  # each line's ending; "" only for a last line without one
    final: str  # what the last line ends with
    newline: str  # what lines we add end with
    blocks: list[_Block]

    def render(self) -> str:
        last = len(self.lines) - 1
        return "".join(
            line + (self.final if i == last else (eol or self.newline))
            for i, (line, eol) in enumerate(zip(self.lines, self.eols, strict=True))
        )


def _assignment(line: str) -> tuple[str, int, int] | None:
    """(key, delimiter column, value column) of an assignment line, else None."""
    found = [at for at in (line.find("="), line.find(":")) if at >= 0]
    if not found:
        return None
    delim = min(found)
    key = line[:delim].strip()
    if not key:
        return None
    value_at = delim + 1
    while value_at < len(line) and line[value_at] in _INDENT:
        value_at += 1
    return key, delim, value_at


def _parse(text: str) -> _Doc:
    parts = _EOL.split(text)
    lines, eols = parts[0::2], parts[1::2]
    if lines[-1] == "":
        lines.pop()  # the text ends with a line ending (or is empty)
    else:
        eols.append("")
    newline = next((eol for eol in eols if eol), "\n")
    doc = _Doc(lines, eols, eols[-1] if eols else newline, newline, [_Block(None, -1)])
    block = doc.blocks[0]
    current: tuple[str, int, int, int] | None = None  # the assignment being read

    def close(end: int) -> None:
        nonlocal current
        if current is not None:
            block.entries.append(_Entry(current[0], current[1], end, current[2], current[3]))
            current = None

    for i, line in enumerate(lines):
        stripped = line.rstrip()
        if not stripped:
            close(i)
        elif line.startswith(_INDENT):
            if current is None and not line.lstrip().startswith(("[", *_COMMENT)):
                found = _assignment(line)
                if found is not None:
                    current = (found[0], i, found[1], found[2])
        else:
            close(i)
            if line.startswith("["):
                if stripped.endswith("]") and len(stripped) > 2:
                    block.end = i
                    block = _Block(stripped[1:-1], i)
                    doc.blocks.append(block)
            elif not line.startswith(_COMMENT):
                found = _assignment(line)
                if found is not None:
                    current = (found[0], i, found[1], found[2])
    close(len(lines))
    block.end = len(lines)
    return doc


def _find(doc: _Doc, section: str, key: str) -> list[tuple[_Block, _Entry]]:
    return [
        (block, entry)
        for block in doc.blocks
        if block.name == section
        for entry in block.entries
        if entry.key == key
    ]


def get_value(text: str, section: str, key: str) -> str | None:
    """The value of `key` in `[section]` as written, or None when it is absent."""
    doc = _parse(text)
    found = _find(doc, section, key)
    if not found:
        return None
    entry = found[-1][1]
    first = doc.lines[entry.start][entry.value_at :]
    return "\n".join([first, *doc.lines[entry.start + 1 : entry.end]])


def validate(section: str, key: str, value: str | None) -> None:
    """Refuse what cannot be written so that `get_value` reads it back unchanged."""
    where = f"[{section}] {key}"
    reasons: list[str] = []
    if not section or "\n" in section or "\r" in section:
        reasons.append("the section name must be one non-empty line")
    if not key or key != key.strip() or any(c in key for c in "=:\r\n"):
        reasons.append("the key must be non-empty, unpadded, without '=', ':' or line breaks")
    elif key.startswith(("[", *_COMMENT)):
        reasons.append("the key must not start with '[', '#' or ';'")
    if value is not None:
        first, *more = value.split("\n")
        if first.startswith(_INDENT):
            reasons.append("the value must not start with a space or a tab")
        if any(not line.startswith(_INDENT) or not line.rstrip() for line in more):
            reasons.append("each further line of the value must be indented and not blank")
        if any(line.endswith("\r") for line in (first, *more)):
            reasons.append("the value's lines must not end with a carriage return")
    if reasons:
        raise InputError([Problem(reason, field=where) for reason in reasons])


def set_value(text: str, section: str, key: str, value: str | None) -> str:
    """Set `key` in `[section]` to `value`, or remove it when `value` is None.

    An existing key keeps its line: indentation, key, delimiter and the space
    around it stay, only the value (with its continuation lines) changes. A
    missing key goes at the end of the last block of its section, after its
    last non-blank line, before the blank lines (and a comment block set off
    by a blank line) that lead into the next section. A missing section goes
    at the end of the file after one blank line.
    """
    validate(section, key, value)
    doc = _parse(text)
    found = _find(doc, section, key)
    if value is None:
        return _remove(doc, found) if found else text
    first, *more = value.split("\n")
    if found:
        entry = found[-1][1]
        head = doc.lines[entry.start][: entry.value_at]
        new = [head + first, *more]
        doc.lines[entry.start : entry.end] = new
        doc.eols[entry.start : entry.end] = [doc.eols[entry.start]] * len(new)
        return doc.render()
    blocks = [block for block in doc.blocks if block.name == section]
    if blocks:
        block = blocks[-1]
        at = _insert_at(doc, block)
        new = [_key_line(doc, block, key) + first, *more]
    else:
        at = len(doc.lines)
        new = [*([""] if doc.lines else []), f"[{section}]", f"{key} = {first}", *more]
    doc.lines[at:at] = new
    doc.eols[at:at] = [doc.newline] * len(new)
    return doc.render()


def _remove(doc: _Doc, found: list[tuple[_Block, _Entry]]) -> str:
    doomed = {i for _, entry in found for i in range(entry.start, entry.end)}
    block = doc.blocks[-1]
    if (
        block is found[-1][0]
        and doomed.issuperset(range(block.header + 1, block.end))
        and (block.header == 0 or doc.lines[block.header - 1] == "")
    ):
        # the key emptied the file's last section, laid out as `set_value`
        # appends one: take the header and its blank line away as well
        doomed.update({block.header, block.header - 1} - {-1})
    for i in sorted(doomed, reverse=True):
        del doc.lines[i], doc.eols[i]
    return doc.render()


def _insert_at(doc: _Doc, block: _Block) -> int:
    start = block.header + 1
    at = block.end
    comments = at
    while comments > start and doc.lines[comments - 1].startswith(_COMMENT):
        comments -= 1
    if start < comments < at and not doc.lines[comments - 1].strip():
        at = comments  # that comment block introduces what follows, not this section
    while at > start and not doc.lines[at - 1].strip():
        at -= 1
    return at


def _key_line(doc: _Doc, block: _Block, key: str) -> str:
    """`key = `, spaced like the section's last assignment (without its indentation)."""
    if not block.entries:
        return f"{key} = "
    entry = block.entries[-1]
    line = doc.lines[entry.start]
    before = line[len(line[: entry.delim].rstrip()) : entry.delim]
    delim = line[entry.delim]
    return f"{key}{before}{delim}{' ' if before or delim == ':' else ''}"
