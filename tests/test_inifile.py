"""INI edits: byte-for-byte preservation and the exact-undo contract."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.actions.inifile import get_value, set_value
from orchestrator.errors import InputError

NOVA = """\
# nova.conf
[DEFAULT]
debug = true
transport_url = rabbit://nova:secret@ctl-1:5672/

[upgrade_levels]
# Set a version cap for messages sent to compute services (string value)
#compute = <None>

[database]
connection=sqlite:////var/lib/nova/nova.sqlite
"""


def test_get_reads_each_delimiter_style() -> None:
    text = "[s]\na=1\nb = 2\nc: 3\nd :4\ne =\nf = x = y\ng = url: http://h:1/\n"
    got = {k: get_value(text, "s", k) for k in "abcdefg"}
    assert got == {
        "a": "1",
        "b": "2",
        "c": "3",
        "d": "4",
        "e": "",
        "f": "x = y",
        "g": "url: http://h:1/",
    }
    assert get_value(text, "s", "z") is None
    assert get_value(text, "t", "a") is None


def test_set_existing_keeps_the_line_style() -> None:
    text = "[s]\na=1\nb = 2\nc: 3\n\n  d  =  4\n"
    assert set_value(text, "s", "a", "9") == "[s]\na=9\nb = 2\nc: 3\n\n  d  =  4\n"
    assert set_value(text, "s", "b", "9") == "[s]\na=1\nb = 9\nc: 3\n\n  d  =  4\n"
    assert set_value(text, "s", "c", "9") == "[s]\na=1\nb = 2\nc: 9\n\n  d  =  4\n"
    # (indented after a blank line, so not a continuation of `c`)
    assert set_value(text, "s", "d", "9") == "[s]\na=1\nb = 2\nc: 3\n\n  d  =  9\n"


def test_set_missing_key_goes_after_the_sections_last_line() -> None:
    updated = set_value(NOVA, "DEFAULT", "state_path", "/var/lib/nova")
    assert updated == NOVA.replace(
        "5672/\n\n[upgrade", "5672/\nstate_path = /var/lib/nova\n\n[upgrade"
    )
    # the commented-out sample option is this section's content, so the key follows it
    pinned = set_value(NOVA, "upgrade_levels", "compute", "2025.1")
    assert pinned == NOVA.replace("#compute = <None>\n", "#compute = <None>\ncompute = 2025.1\n")
    assert get_value(pinned, "upgrade_levels", "compute") == "2025.1"
    # spaced like the section's last assignment
    assert set_value(NOVA, "database", "max_pool_size", "5").endswith("max_pool_size=5\n")


def test_comment_block_introducing_the_next_section_stays_with_it() -> None:
    text = "[a]\nx = 1\n# about x\n\n# about b\n[b]\n"
    assert set_value(text, "a", "y", "2") == "[a]\nx = 1\n# about x\ny = 2\n\n# about b\n[b]\n"
    only_comments = "[a]\n# first\n[b]\n"
    assert set_value(only_comments, "a", "y", "2") == "[a]\n# first\ny = 2\n[b]\n"


def test_set_missing_section_appends_it_after_one_blank_line() -> None:
    assert set_value("[a]\nx = 1\n", "b", "y", "2") == "[a]\nx = 1\n\n[b]\ny = 2\n"
    # the absence of a final newline is kept
    assert set_value("[a]\nx = 1", "b", "y", "2") == "[a]\nx = 1\n\n[b]\ny = 2"
    assert set_value("", "b", "y", "2") == "[b]\ny = 2\n"
    assert set_value("\n", "b", "y", "2") == "\n\n[b]\ny = 2\n"


def test_remove() -> None:
    assert set_value(NOVA, "DEFAULT", "debug", None) == NOVA.replace("debug = true\n", "")
    assert set_value(NOVA, "DEFAULT", "absent", None) == NOVA
    assert set_value(NOVA, "absent", "debug", None) == NOVA
    assert set_value("", "s", "k", None) == ""
    # a section left empty is kept, except one laid out like an appended section
    assert set_value("[s]\nk = 1\n[t]\n", "s", "k", None) == "[s]\n[t]\n"
    assert set_value("[t]\n\n[s]\nk = 1\n", "s", "k", None) == "[t]\n"


def test_no_inline_comments_as_oslo_reads_them() -> None:
    text = "[s]\nk = 1 # one\nj = 2 ;two\n#c = 3\n"
    assert get_value(text, "s", "k") == "1 # one"
    assert get_value(text, "s", "j") == "2 ;two"
    assert get_value(text, "s", "#c") is None
    assert set_value(text, "s", "k", "5") == "[s]\nk = 5\nj = 2 ;two\n#c = 3\n"


def test_values_are_raw_quotes_and_trailing_space_included() -> None:
    text = '[s]\nk = "quoted"\nj = spaced  \n'
    assert get_value(text, "s", "k") == '"quoted"'
    assert get_value(text, "s", "j") == "spaced  "
    assert set_value(text, "s", "k", "'x'") == "[s]\nk = 'x'\nj = spaced  \n"


def test_continuation_lines_belong_to_their_key() -> None:
    text = "[s]\nk = a\n  b\n\tc\nj = 1\n\n  stray = 2\n"
    assert get_value(text, "s", "k") == "a\n  b\n\tc"
    assert set_value(text, "s", "k", "z") == "[s]\nk = z\nj = 1\n\n  stray = 2\n"
    assert set_value(text, "s", "k", None) == "[s]\nj = 1\n\n  stray = 2\n"
    assert (
        set_value(text, "s", "j", "x\n  y") == "[s]\nk = a\n  b\n\tc\nj = x\n  y\n\n  stray = 2\n"
    )
    # an indented line after a blank one follows no key: read as an indented assignment
    assert get_value(text, "s", "stray") == "2"
    assert set_value(text, "s", "stray", "3").endswith("\n  stray = 3\n")
    # an indented comment after a key continues it, as in oslo
    assert get_value("[s]\nk = a\n  # b\n", "s", "k") == "a\n  # b"


def test_duplicates_last_wins_set_rewrites_it_remove_takes_all() -> None:
    text = "[s]\nk = 1\nk = 2\n[t]\n[s]\nk = 3\n"
    assert get_value(text, "s", "k") == "3"
    assert set_value(text, "s", "k", "9") == "[s]\nk = 1\nk = 2\n[t]\n[s]\nk = 9\n"
    assert set_value(text, "s", "k", None) == "[s]\n[t]\n[s]\n"
    # a section split over two blocks is one section; new keys go to the last block
    split = "[s]\na = 1\n[t]\n[s]\nb = 2\n"
    assert get_value(split, "s", "a") == "1"
    assert set_value(split, "s", "c", "3") == split + "c = 3\n"


def test_names_compare_exactly() -> None:
    text = "[DEFAULT]\nDebug = 1\n[default]\ndebug = 2\n"
    assert get_value(text, "DEFAULT", "Debug") == "1"
    assert get_value(text, "DEFAULT", "debug") is None
    assert get_value(text, "default", "debug") == "2"
    # keys before any section belong to none
    assert get_value("k = 1\n[s]\n", "s", "k") is None
    assert set_value("k = 1\n[s]\n", "s", "k", "2") == "k = 1\n[s]\nk = 2\n"


def test_crlf_files_stay_crlf() -> None:
    text = "[s]\r\nk = 1\r\n"
    assert get_value(text, "s", "k") == "1"
    assert set_value(text, "s", "k", "2") == "[s]\r\nk = 2\r\n"
    assert set_value(text, "s", "j", "2") == "[s]\r\nk = 1\r\nj = 2\r\n"
    assert set_value(text, "t", "j", "a\n b") == "[s]\r\nk = 1\r\n\r\n[t]\r\nj = a\r\n b\r\n"


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("", "k", "v", "section name"),
        ("a\nb", "k", "v", "section name"),
        ("s", "", "v", "key must be"),
        ("s", " k", "v", "key must be"),
        ("s", "a=b", "v", "key must be"),
        ("s", "a:b", "v", "key must be"),
        ("s", "#k", "v", "must not start"),
        ("s", "k", " v", "must not start with a space"),
        ("s", "k", "v\nw", "indented and not blank"),
        ("s", "k", "v\n  ", "indented and not blank"),
        ("s", "k", "v\r", "carriage return"),
    ],
)
def test_unwritable_input_is_refused(section: str, key: str, value: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        set_value("[s]\n", section, key, value)
    assert caught.value.problems[0].field == f"[{section}] {key}"


# --- properties over generated files ------------------------------------------

SECTIONS = ["a", "b", "DEFAULT", "A"]
KEYS = ["k", "j", "K", "two words"]
TEXT = st.text(alphabet="ab1 #;=:'\"\t", max_size=8)
SOLID = st.sampled_from("ab1#;=:'\"")  # a character that is not blank
# a value's first line: anything without a line break that does not start with blanks
FIRST = st.one_of(st.just(""), st.builds(str.__add__, SOLID, TEXT))
CONTINUATION = st.builds(
    lambda indent, solid, rest: indent + solid + rest,
    st.sampled_from([" ", "  ", "\t", " \t "]),
    SOLID,
    TEXT,
)
VALUES = st.builds(
    lambda first, more: "\n".join([first, *more]),
    FIRST,
    st.lists(CONTINUATION, max_size=2),
)

LINES = st.one_of(
    st.builds(
        lambda name, pad: f"[{name}]{pad}", st.sampled_from(SECTIONS), st.sampled_from(["", " "])
    ),
    st.builds(
        lambda indent, key, before, delim, after, value: (
            f"{indent}{key}{before}{delim}{after}{value}"
        ),
        st.sampled_from(["", "", "", "  "]),
        st.sampled_from(KEYS),
        st.sampled_from(["", " "]),
        st.sampled_from(["=", ":"]),
        st.sampled_from(["", " ", "  "]),
        TEXT,
    ),
    CONTINUATION,
    st.builds(lambda mark, body: mark + body, st.sampled_from(["#", ";"]), TEXT),
    st.sampled_from(["", "", " ", "junk", "[broken", "= no key", "[]"]),
)


@st.composite
def ini_texts(draw: st.DrawFn, having: tuple[str, str] | None = None) -> str:
    """Generated INI text; with `having`, one that assigns that (section, key)."""
    lines = draw(st.lists(LINES, max_size=14))
    if having is not None:
        section, key = having
        spacing = draw(st.sampled_from(["=", " = ", ": ", " =  "]))
        value = draw(VALUES).split("\n")
        entry = [f"[{section}]", f"{key}{spacing}{value[0]}", *value[1:]]
        at = draw(st.integers(0, len(lines)))
        lines[at:at] = entry
    eol = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    final = draw(st.booleans())
    return eol.join(lines) + (eol if final and lines else "")


def ends_with_empty_section(text: str, section: str) -> bool:
    """The one layout undo cannot restore (see the module docstring)."""
    lines = re.split(r"\r?\n", text)
    if lines[-1] == "":
        lines.pop()
    return (
        bool(lines)
        and lines[-1].rstrip() == f"[{section}]"
        and (len(lines) == 1 or lines[-2] == "")
    )


def others(text: str, section: str, key: str) -> dict[tuple[str, str], str | None]:
    return {
        (s, k): get_value(text, s, k) for s in SECTIONS for k in KEYS if (s, k) != (section, key)
    }


names = st.tuples(st.sampled_from(SECTIONS), st.sampled_from(KEYS))


@settings(max_examples=400, deadline=None)
@given(st.data(), names, VALUES)
def test_undo_restores_an_existing_value_exactly(
    data: st.DataObject, name: tuple[str, str], value: str
) -> None:
    section, key = name
    # mostly files that assign the key, sometimes any file (where it may be absent)
    having = data.draw(st.sampled_from([name, name, name, None]))
    text = data.draw(ini_texts(having=having))
    old = get_value(text, section, key)
    assume(old is not None)
    assert old is not None
    assert set_value(text, section, key, old) == text  # writing what is there changes nothing
    updated = set_value(text, section, key, value)
    assert get_value(updated, section, key) == value
    assert others(updated, section, key) == others(text, section, key)
    assert set_value(updated, section, key, old) == text


@settings(max_examples=400, deadline=None)
@given(ini_texts(), names, VALUES)
def test_undo_removes_an_added_key_exactly(text: str, name: tuple[str, str], value: str) -> None:
    section, key = name
    assume(get_value(text, section, key) is None)
    assume(not ends_with_empty_section(text, section))
    updated = set_value(text, section, key, value)
    assert get_value(updated, section, key) == value
    assert others(updated, section, key) == others(text, section, key)
    assert set_value(updated, section, key, None) == text


@settings(max_examples=300, deadline=None)
@given(ini_texts(), names)
def test_remove_leaves_no_occurrence_and_nothing_else_changes(
    text: str, name: tuple[str, str]
) -> None:
    section, key = name
    removed = set_value(text, section, key, None)
    assert get_value(removed, section, key) is None
    assert others(removed, section, key) == others(text, section, key)
    if get_value(text, section, key) is None:
        assert removed == text
