"""Secret references resolved late, substituted safely and redacted everywhere."""

from __future__ import annotations

import base64
import shlex
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import InputError
from orchestrator.secrets import REDACTED, SecretStore


def test_env_and_file_sources(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-value\n")
    store = SecretStore.from_plan(
        [("db", "env", "DB_PASS"), ("token", "file", str(tmp_path / "token"))],
        environ={"DB_PASS": "env-value"},
    )
    assert store.names == ("db", "token")
    assert store.value("db") == "env-value"
    assert store.value("token") == "file-value"  # the editor's trailing newline is not secret


def test_file_source_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pw").write_text("from-home")
    store = SecretStore.from_plan([("pw", "file", "~/pw")], environ={})
    assert store.value("pw") == "from-home"


def test_sources_are_read_lazily_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "later"
    store = SecretStore.from_plan([("later", "file", str(path))], environ={})  # no error yet
    path.write_text("first")
    assert store.value("later") == "first"
    path.write_text("second")
    assert store.value("later") == "first"


def test_missing_env_names_secret_and_variable() -> None:
    store = SecretStore.from_plan([("db", "env", "DB_PASS")], environ={})
    with pytest.raises(InputError) as caught:
        store.value("db")
    message = str(caught.value)
    assert "'db'" in message
    assert "environment variable 'DB_PASS' is not set" in message
    assert caught.value.problems[0].field == "secrets.db"


def test_missing_file_names_secret_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    store = SecretStore.from_plan([("key", "file", str(missing))], environ={})
    with pytest.raises(InputError) as caught:
        store.value("key")
    assert f"secret 'key': cannot read file '{missing}': No such file or directory" in str(
        caught.value
    )


def test_require_all_reports_every_missing_secret(tmp_path: Path) -> None:
    store = SecretStore.from_plan(
        [("a", "env", "A"), ("b", "env", "B"), ("c", "file", str(tmp_path / "c"))],
        environ={"B": "present"},
    )
    with pytest.raises(InputError) as caught:
        store.require_all()
    assert sorted(p.field or "" for p in caught.value.problems) == ["secrets.a", "secrets.c"]


def test_unknown_source_kind_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown secret source kind 'vault'"):
        SecretStore.from_plan([("x", "vault", "path")], environ={})


def test_substitute_quotes_for_the_shell_and_not_for_config() -> None:
    store = SecretStore.from_plan([("pw", "env", "PW")], environ={"PW": "it's a s3cret"})
    command = store.substitute("mysql -p@@secret:pw@@ -e 'select 1'")
    assert shlex.split(command) == ["mysql", "-pit's a s3cret", "-e", "select 1"]
    assert store.substitute("password = @@secret:pw@@", shell=False) == "password = it's a s3cret"
    assert store.substitute("no markers here") == "no markers here"


def test_undeclared_marker_is_an_input_error() -> None:
    store = SecretStore.from_plan([], environ={})
    with pytest.raises(InputError, match="secret 'ghost' is used but not declared"):
        store.substitute("echo @@secret:ghost@@")


def test_redact_hides_every_form_of_every_resolvable_secret(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----\n")
    store = SecretStore.from_plan(
        [
            ("pw", "env", "PW"),
            ("key", "file", str(tmp_path / "key")),
            ("absent", "env", "ABSENT"),
            ("empty", "env", "EMPTY"),
        ],
        environ={"PW": "it's a s3cret", "EMPTY": ""},
    )
    text = "pw=it's a s3cret quoted='it'\"'\"'s a s3cret' line=AAAABBBBCCCC"
    assert store.redact(text) == f"pw={REDACTED} quoted={REDACTED} line={REDACTED}"
    assert store.redact("nothing secret") == "nothing secret"
    # issue 11: what `base64`, `xxd -p` and URL encoding make of it is hidden too
    pw = b"it's a s3cret"
    for form in (
        base64.b64encode(pw).decode(),
        base64.urlsafe_b64encode(pw).decode().rstrip("="),
        pw.hex(),
        pw.hex().upper(),
        urllib.parse.quote(pw.decode(), safe=""),
        urllib.parse.quote_plus(pw.decode()),
    ):
        assert store.redact(f"out: {form}\n") == f"out: {REDACTED}\n", form


@given(value=st.text(alphabet=st.characters(blacklist_characters="\x00*"), min_size=1))
def test_any_value_survives_the_shell_and_is_redacted(value: str) -> None:
    store = SecretStore.from_plan([("s", "env", "S")], environ={"S": value})
    command = store.substitute("printf %s @@secret:s@@")
    assert shlex.split(command) == ["printf", "%s", value]
    assert value not in store.redact(f"before {value} after")


def test_remarker_turns_values_back_into_markers() -> None:
    store = SecretStore.from_plan(
        [("long", "env", "LONG"), ("short", "env", "SHORT"), ("gone", "env", "GONE")],
        environ={"LONG": "secret-and-more", "SHORT": "secret"},
    )
    previous = "url=mysql://u:secret-and-more@db/x?fallback=secret"
    marked = store.remarker(previous)
    assert marked == "url=mysql://u:@@secret:long@@@db/x?fallback=@@secret:short@@"
    assert store.substitute(marked, shell=False) == previous
    assert store.remarker(None) is None
    assert store.remarker("plain") == "plain"


@given(
    value=st.text(alphabet=st.characters(blacklist_characters="\x00@"), min_size=1),
    around=st.text(alphabet=st.characters(blacklist_characters="@")),
)
def test_remarker_then_substitute_is_the_identity(value: str, around: str) -> None:
    store = SecretStore.from_plan([("s", "env", "S")], environ={"S": value})
    text = f"{around}{value}{around}"
    marked = store.remarker(text)
    assert marked is not None
    assert value not in marked.replace("@@secret:s@@", "")
    assert store.substitute(marked, shell=False) == text
