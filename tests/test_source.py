"""YAML loading with positions, duplicate keys, merge keys, and located validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from orchestrator import source
from orchestrator.errors import InputError, Problem
from orchestrator.source import Document, dotted, load_file, load_text, suggest, validate

NESTED = """\
hosts:
  cmp-1:
    address: 10.0.0.1
    roles: [compute, agent]
    checks:
      - first
      - name: second
        port: 22
"""


def test_positions_of_nested_keys_and_list_items() -> None:
    doc = load_text(NESTED, "inv.yaml")

    assert doc.data["hosts"]["cmp-1"]["roles"] == ["compute", "agent"]
    # a mapping key is located at the key itself (1-based line and column)
    assert doc.positions[("hosts",)] == (1, 1)
    assert doc.positions[("hosts", "cmp-1")] == (2, 3)
    assert doc.positions[("hosts", "cmp-1", "address")] == (3, 5)
    # flow-sequence items at their own columns
    assert doc.positions[("hosts", "cmp-1", "roles", 0)] == (4, 13)
    assert doc.positions[("hosts", "cmp-1", "roles", 1)] == (4, 22)
    # block-sequence items at the item, and keys inside an item mapping
    assert doc.positions[("hosts", "cmp-1", "checks", 0)] == (6, 9)
    assert doc.positions[("hosts", "cmp-1", "checks", 1)] == (7, 9)
    assert doc.positions[("hosts", "cmp-1", "checks", 1, "port")] == (8, 9)


def test_locate_falls_back_to_nearest_existing_ancestor() -> None:
    doc = load_text(NESTED, "inv.yaml")

    assert doc.locate(("hosts", "cmp-1", "zone")) == (2, 3)
    assert doc.locate(("hosts", "cmp-1", "checks", 1, "missing", 3)) == (7, 9)
    assert doc.locate(("nothing", "here")) == (1, 1)
    assert Document(name="x", data=None).locate(("a",)) == (None, None)


def test_problem_names_file_line_column_and_dotted_field() -> None:
    doc = load_text(NESTED, "inv.yaml")

    problem = doc.problem(("hosts", "cmp-1", "roles", 1), "bad role")

    assert problem == Problem(
        message="bad role", file="inv.yaml", line=4, column=22, field="hosts.cmp-1.roles[1]"
    )
    assert str(problem) == "inv.yaml:4:22: hosts.cmp-1.roles[1]: bad role"


def test_dotted_paths() -> None:
    assert dotted(("hosts", "cmp-1", "roles", 0)) == "hosts.cmp-1.roles[0]"
    assert dotted((0, "name")) == "[0].name"
    assert dotted(()) == ""


def test_duplicate_key_is_a_problem_and_the_first_value_wins() -> None:
    doc = load_text("a: 1\nb:\n  c: 2\n  c: 3\na: 4\n", "f.yaml")

    assert doc.data == {"a": 1, "b": {"c": 2}}
    assert [str(p) for p in doc.problems] == [
        "f.yaml:4:3: b.c: duplicate key 'c' (first defined on line 3)",
        "f.yaml:5:1: a: duplicate key 'a' (first defined on line 1)",
    ]


def test_merge_keys_are_refused() -> None:
    doc = load_text("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", "f.yaml")

    assert doc.data["other"] == {"y": 2}
    assert len(doc.problems) == 1
    problem = doc.problems[0]
    assert "merge keys" in problem.message
    assert (problem.line, problem.column, problem.field) == (3, 3, "other")


def test_non_scalar_keys_are_refused() -> None:
    doc = load_text("? [a, b]\n: 1\nok: 2\n", "f.yaml")

    assert doc.data == {"ok": 2}
    assert [p.message for p in doc.problems] == ["mapping keys must be plain strings"]


def test_scalar_keys_keep_their_text() -> None:
    # `yes:` would become True and `1:` an int; keep what the operator wrote
    doc = load_text("yes: 1\n1: 2\nnull: 3\n", "f.yaml")

    assert doc.data == {"yes": 1, "1": 2, "null": 3}


def test_text_of_non_string_scalars_is_kept_for_messages() -> None:
    doc = load_text("v: 2025.10\nn: 3\ns: x\nb: true\n", "f.yaml")

    assert doc.data["v"] == 2025.1
    assert doc.texts == {("v",): "2025.10", ("n",): "3", ("b",): "true"}


def test_syntax_error_is_located() -> None:
    with pytest.raises(InputError) as info:
        load_text("a: [1, 2\nb: 3\n", "bad.yaml")

    (problem,) = info.value.problems
    assert problem.file == "bad.yaml"
    assert problem.line == 2
    assert problem.message.startswith("YAML syntax error:")
    assert "started on line 1" in problem.message


def test_empty_document_is_an_error() -> None:
    with pytest.raises(InputError) as info:
        load_text("# only a comment\n", "empty.yaml")

    assert str(info.value) == "empty.yaml:1: the document is empty"


def test_load_file_missing_and_present(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_file(tmp_path / "nope.yaml", "nope.yaml")
    assert str(info.value) == "nope.yaml: file not found"

    path = tmp_path / "ok.yaml"
    path.write_text("k: v\n", encoding="utf-8")
    doc = load_file(path)
    assert doc.name == str(path)
    assert doc.data == {"k": "v"}


def test_load_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"k: caf\xe9\n")

    with pytest.raises(InputError) as info:
        load_file(path, "latin.yaml")

    assert info.value.problems[0].message.startswith("cannot read:")


def test_suggest() -> None:
    assert suggest("rolls", ["roles", "hosts"]) == " (did you mean 'roles'?)"
    assert suggest("zzz", ["roles", "hosts"]) == ""


# --- validate: pydantic errors become located problems -------------------------


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int
    name: str = "x"


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    items: list[_Inner] = []
    by_name: dict[str, _Inner] = {}
    count: int = Field(0, ge=0)


def test_validate_returns_the_model() -> None:
    doc = load_text("title: t\nitems:\n  - {port: 1}\n", "m.yaml")

    result = validate(_Outer, doc)

    assert isinstance(result, _Outer)
    assert result.items[0].port == 1


def test_validate_unknown_field_suggests_and_points_at_the_key() -> None:
    doc = load_text("title: t\nitems:\n  - {port: 1, nmae: y}\n", "m.yaml")

    with pytest.raises(InputError) as info:
        validate(_Outer, doc)

    assert [str(p) for p in info.value.problems] == [
        "m.yaml:3:15: items[0].nmae: unknown field 'nmae' (did you mean 'name'?)"
    ]


def test_validate_unknown_field_inside_a_dict_of_models() -> None:
    doc = load_text("title: t\nby_name:\n  a:\n    prot: 1\n", "m.yaml")

    with pytest.raises(InputError) as info:
        validate(_Outer, doc)

    messages = [str(p) for p in info.value.problems]
    assert "m.yaml:4:5: by_name.a.prot: unknown field 'prot' (did you mean 'port'?)" in messages
    # the missing 'port' points at the mapping that lacks it
    assert "m.yaml:3:3: by_name.a.port: missing required field 'port'" in messages


def test_validate_type_errors_describe_the_input() -> None:
    doc = load_text("title: [a]\nitems:\n  - {port: eighty}\n", "m.yaml")

    with pytest.raises(InputError) as info:
        validate(_Outer, doc)

    assert [str(p) for p in info.value.problems] == [
        "m.yaml:1:1: title: expected a string, got a list",
        "m.yaml:3:6: items[0].port: expected an integer, got str 'eighty'",
    ]


class _Union(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch: int | str | list[int | str] | None = None


def test_a_value_fitting_no_union_member_is_one_problem() -> None:
    for text, expected in [
        (
            "batch: {a: 1}\n",
            "m.yaml:1:1: batch: expected an integer, a string or a list, got a mapping",
        ),
        (
            "batch: [1, {a: 1}]\n",
            "m.yaml:1:12: batch[1]: expected an integer or a string, got a mapping",
        ),
    ]:
        with pytest.raises(InputError) as info:
            validate(_Union, load_text(text, "m.yaml"))
        assert [str(p) for p in info.value.problems] == [expected]


def test_validate_reports_every_problem_including_duplicate_keys() -> None:
    doc = load_text("title: t\ntitle: u\ncount: -1\n", "m.yaml")

    with pytest.raises(InputError) as info:
        validate(_Outer, doc)

    lines = {p.line for p in info.value.problems}
    assert lines == {2, 3}
    assert any("duplicate key 'title'" in p.message for p in info.value.problems)


def test_validate_fails_on_load_problems_even_when_the_model_is_happy() -> None:
    doc = load_text("title: t\ntitle: t\n", "m.yaml")

    with pytest.raises(InputError) as info:
        validate(_Outer, doc)

    assert [p.message for p in info.value.problems] == [
        "duplicate key 'title' (first defined on line 1)"
    ]


def test_input_error_sorts_problems_by_position() -> None:
    error = InputError(
        [
            Problem("late", file="a.yaml", line=9, column=1),
            Problem("unlocated"),
            Problem("early", file="a.yaml", line=2, column=5),
        ]
    )

    assert [p.message for p in error.problems] == ["unlocated", "early", "late"]
    assert error.exit_code == 2


# --- limits: measured only when the parser's events cannot rule them out ------


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("[" * 63 + "1" + "]" * 63, False),
        ("[" * 64 + "]" * 64, False),  # 64 collections, nothing deeper
        ("[" * 64 + "1" + "]" * 64, True),  # the scalar is the 65th level
        ("[" * 65 + "]" * 65, True),
    ],
)
def test_nesting_is_bounded_at_max_depth_levels(text: str, refused: bool) -> None:
    if not refused:
        load_text(text, "deep.yaml")
        return
    with pytest.raises(InputError, match="nests deeper than 64 levels"):
        load_text(text, "deep.yaml")


def test_values_are_counted_without_aliases_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "MAX_NODES", 10)

    load_text("[" + ", ".join(["1"] * 9) + "]", "ok.yaml")  # 10 values with the list
    with pytest.raises(InputError, match="expands through YAML aliases to more than 10 values"):
        load_text("[" + ", ".join(["1"] * 10) + "]", "big.yaml")


def test_aliases_are_measured_and_one_referring_to_itself_is_refused() -> None:
    doc = load_text("base: &b {a: 1}\ncopy: *b\n", "alias.yaml")
    assert doc.data == {"base": {"a": 1}, "copy": {"a": 1}}

    with pytest.raises(InputError, match="a YAML alias refers to itself"):
        load_text("a: &x [*x]\n", "loop.yaml")


def test_plain_strings_and_tagged_scalars_read_as_yaml_reads_them() -> None:
    doc = load_text("a: text\nb: !!str 12\nc: 12\nd: '12'\ne: !!binary aGk=\n", "t.yaml")

    assert doc.data == {"a": "text", "b": "12", "c": 12, "d": "12", "e": b"hi"}


# --- composed first when nothing can expand: the same documents, the same refusals

YAML_TOKENS = [
    "a",
    "b: ",
    "- ",
    ": ",
    "? ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "'q'",
    '"d"',
    "1",
    "yes",
    "!!int ",
    "!!binary ",
    "<<: ",
    "#c",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "---\n",
    "é",
]


def _outcome(text: str) -> object:
    try:
        doc = load_text(text, "t.yaml")
    except InputError as exc:
        return [str(p) for p in exc.problems]
    return (doc.data, doc.positions, [str(p) for p in doc.problems], doc.texts)


def _checked_first(monkeypatch: pytest.MonkeyPatch, text: str) -> object:
    with monkeypatch.context() as patched:
        patched.setattr(source, "_nesting_bounded", lambda: False)  # the events first, always
        return _outcome(text)


EDGES = [
    "[" * 63 + "1" + "]" * 63,
    "[" * 64 + "1" + "]" * 64,
    "[" * 65 + "]" * 65,
    "[" * 1001 + "]" * 1001,  # past libyaml's own limit: refused by ours
    "[" * 70 + "1, {a: [" + "]" * 70,  # too deep, and a syntax error after
    "a: {" * 30 + "b: [" * 40 + "x" + "]" * 40 + "}" * 30,
    "".join(" " * i + f"k{i}:\n" for i in range(70)) + " " * 70 + "v\n",
    "a: 1\na: {b: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]"
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}\n",  # deep under a duplicate
    "? [" * 66 + "k" + "]" * 66 + "\n: v\n",  # deep in a key
    "a: !!binary nope\nb: !!int x\n<<: {c: 1}\n[1]: 2\n",
    "",
    "a: 'unclosed\n",
]


@pytest.mark.parametrize("text", EDGES)
def test_documents_composed_first_load_as_when_checked_first(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    assert _outcome(text) == _checked_first(monkeypatch, text)


def test_too_many_values_is_refused_as_when_checked_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "MAX_NODES", 20)
    for text in ("[" + ", ".join(["1"] * 30) + "]", "a: 1\na: [" + ", ".join(["1"] * 30) + "]"):
        assert _outcome(text) == _checked_first(monkeypatch, text)
        assert "more than 20 values" in str(_outcome(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join))
def test_random_documents_load_as_when_checked_first(text: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _outcome(text) == _checked_first(monkeypatch, text)


@pytest.mark.parametrize(
    ("text", "tag"),
    [("a: !!int\n", "!!int"), ("a: !!float\n", "!!float"), ("a: !!bool\n", "!!bool")],
)
def test_an_empty_tagged_value_is_a_located_problem_not_a_crash(text: str, tag: str) -> None:
    doc = load_text(text, "t.yaml")

    assert [str(p) for p in doc.problems] == [
        f"t.yaml:1:4: a: cannot read this value: not a valid {tag}"
    ]
