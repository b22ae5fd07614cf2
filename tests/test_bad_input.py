"""The bad-input corpus: every file in ``tests/corpus/bad`` must make
``orchestrator plan`` exit 2 and print exactly the errors its header expects.

A case is one YAML file that starts with comment lines::

    # case: what is wrong, in words
    # role: inventory            (or playbook: which side of the pair this file is)
    # args: --from 1.0 --to 2.0  (optional; default "--to 2.0")
    # expect: error: FILE:LINE:COL: FIELD: message
    # expect: ...one line per expected stderr line, in order

The other side of the pair is ``tests/corpus/good/inventory.yaml`` or
``tests/corpus/good/playbook.yaml``. The command runs with the working
directory at ``tests/corpus/bad`` so the case's own name appears bare in the
messages, the way an operator would see it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest

from orchestrator.cli import EXIT_BAD_INPUT, EXIT_OK, main

CORPUS = Path(__file__).resolve().parent / "corpus"
BAD = CORPUS / "bad"
GOOD_INVENTORY = "../good/inventory.yaml"
GOOD_PLAYBOOK = "../good/playbook.yaml"
DEFAULT_ARGS = "--to 2.0"
KEYS = {"case", "role", "args", "expect"}


@dataclass(frozen=True, slots=True)
class Case:
    file: str
    title: str
    role: str
    args: tuple[str, ...]
    expect: tuple[str, ...]

    def argv(self) -> list[str]:
        inventory, playbook = (
            (self.file, GOOD_PLAYBOOK) if self.role == "inventory" else (GOOD_INVENTORY, self.file)
        )
        return ["plan", "-i", inventory, "-p", playbook, *self.args]


def parse_case(path: Path) -> Case:
    """Read the header: the leading ``# key: value`` comment lines."""
    fields: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line.removeprefix("#").strip().partition(":")
        if not sep or key not in KEYS:
            raise ValueError(f"{path.name}: header line {line!r} is not '# KEY: value'")
        fields.setdefault(key, []).append(value.strip() if key != "expect" else value[1:])
    for key in ("case", "role", "expect"):
        if key not in fields:
            raise ValueError(f"{path.name}: header has no '# {key}:' line")
    (role,) = fields["role"]
    if role not in ("inventory", "playbook"):
        raise ValueError(f"{path.name}: role must be 'inventory' or 'playbook', got {role!r}")
    return Case(
        file=path.name,
        title=" ".join(fields["case"]),
        role=role,
        args=tuple(shlex.split(" ".join(fields.get("args", [DEFAULT_ARGS])))),
        expect=tuple(fields["expect"]),
    )


CASES = sorted(BAD.glob("*.yaml"))


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_input_is_refused_with_exact_messages(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = parse_case(path)
    monkeypatch.chdir(BAD)

    code, out, err = run(case.argv())

    assert err == "".join(f"{line}\n" for line in case.expect), case.title
    assert code == EXIT_BAD_INPUT
    assert out == ""


def test_every_expected_line_is_a_located_error() -> None:
    """Each expected line names the file (and a line) unless the fault is on the command line."""
    for path in CASES:
        case = parse_case(path)
        for line in case.expect:
            assert line.startswith("error: "), f"{case.file}: {line}"
            where = line.removeprefix("error: ").split(": ", 1)[0]
            if where in ("from_version", "to_version"):
                continue  # the versions may come from --from/--to, which have no file
            file, _, position = where.partition(":")
            assert file in (case.file, GOOD_INVENTORY, GOOD_PLAYBOOK), f"{case.file}: {line}"
            assert position.replace(":", "").isdigit(), f"{case.file}: {line}"


def test_corpus_is_large_and_each_case_says_what_it_tests() -> None:
    cases = [parse_case(p) for p in CASES]

    assert len(cases) >= 34
    titles = [c.title for c in cases]
    assert len(set(titles)) == len(titles), "two cases share a title"
    assert all(c.title and c.expect for c in cases)


def test_good_pair_plans_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)

    code, out, err = run(["plan", "-i", GOOD_INVENTORY, "-p", GOOD_PLAYBOOK, "--to", "2.0"])

    assert (code, err) == (EXIT_OK, "")
    assert out.startswith("Plan corpus-nova: 1.0 -> 2.0 on corpus (6 hosts, 5 phases)\n")
