"""Sandboxed Jinja2: shell quoting, secrets as markers, strict undefined messages."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import pytest

from orchestrator.errors import TemplateError
from orchestrator.templating import SECRET_MARKER, Namespace, Secrets, is_template, render


def _ctx(**extra: Any) -> dict[str, Any]:
    return {
        "host": Namespace("host", {"name": "cmp-1", "address": "10.0.0.1", "zone": None}),
        "groups": Namespace("groups", {"compute": ["cmp-1", "cmp-2"]}),
        "secrets": Secrets(["db_password"]),
        **extra,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "echo plain"),
        ("two words", "echo 'two words'"),
        ("it's", "echo 'it'\"'\"'s'"),
        ("", "echo ''"),
        ("$(reboot)", "echo '$(reboot)'"),
        ("a; rm -rf /", "echo 'a; rm -rf /'"),
        (5, "echo 5"),
    ],
)
def test_shell_flavour_quotes_every_expression(value: Any, expected: str) -> None:
    assert render("echo {{ x }}", _ctx(x=value), "shell") == expected


@pytest.mark.parametrize("value", ["two words", "it's", "", '$HOME `id` "q" \\ *', "a\nb"])
def test_shell_quoting_round_trips_through_a_real_shell(value: str) -> None:
    command = render("printf %s {{ x }}", _ctx(x=value), "shell")

    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)

    assert done.stdout == value


def test_shell_quotes_the_result_of_filters_too() -> None:
    assert render("echo {{ x | upper }}", _ctx(x="a b"), "shell") == "echo 'A B'"


def test_raw_filter_opts_out_of_quoting() -> None:
    assert render("echo {{ x | raw }}", _ctx(x="a && b"), "shell") == "echo a && b"


def test_quote_filter_quotes_once_in_both_flavours() -> None:
    assert render("echo {{ x | quote }}", _ctx(x="a b"), "shell") == "echo 'a b'"
    assert render("echo {{ x | quote }}", _ctx(x="a b"), "text") == "echo 'a b'"


def test_text_flavour_does_not_quote() -> None:
    ctx = _ctx()
    assert render("http://{{ host.address }}:8774/", ctx) == "http://10.0.0.1:8774/"
    assert render("{{ x }}", _ctx(x="a b"), "text") == "a b"


def test_literal_text_is_not_quoted_and_loops_work() -> None:
    source = "for h in{% for h in groups.compute %} {{ h }}{% endfor %}; do :; done"

    assert render(source, _ctx(), "shell") == "for h in cmp-1 cmp-2; do :; done"


def test_non_templates_come_back_unchanged() -> None:
    assert not is_template("echo {x} ${HOME}")
    assert render("echo {x} ${HOME}", {}, "shell") == "echo {x} ${HOME}"
    assert is_template("{# comment #}")


def test_secret_renders_as_a_marker_not_quoted() -> None:
    out = render("mysql -p{{ secrets.db_password }}", _ctx(), "shell")

    assert out == "mysql -p@@secret:db_password@@"
    assert SECRET_MARKER.findall(out) == ["db_password"]
    assert render("{{ secrets['db_password'] }}", _ctx(), "text") == "@@secret:db_password@@"


def test_secret_marker_survives_quote_filter_intact() -> None:
    out = render("{{ secrets.db_password | quote }}", _ctx(), "shell")

    assert SECRET_MARKER.fullmatch(shlex.split(out)[0])


def test_unknown_secret_name_is_an_error_that_names_it() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ secrets.db_pasword }}", _ctx(), "shell")

    message = info.value.message
    assert "db_pasword" in message
    assert "did you mean 'db_password'" in message
    # operator-facing: no Python class paths
    assert "orchestrator." not in message


def test_sandbox_blocks_dunder_access() -> None:
    with pytest.raises(TemplateError, match="not allowed by the sandbox") as info:
        render("{{ ''.__class__ }}", {})
    assert "__class__" in info.value.message

    with pytest.raises(TemplateError, match="not allowed by the sandbox"):
        render("{{ host.name.__class__.__mro__ }}", _ctx())


def test_sandbox_is_immutable() -> None:
    with pytest.raises(TemplateError, match="not allowed by the sandbox"):
        render("{{ items.append(3) }}", {"items": [1, 2]})


def test_undefined_top_level_variable_suggests_a_close_name() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ hots.name }}", _ctx())

    assert info.value.message == "undefined template variable: 'hots' (did you mean 'host'?)"


def test_undefined_top_level_variable_without_a_close_name() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ zzz }}", _ctx())

    assert info.value.message == "undefined template variable: 'zzz'"


@pytest.mark.parametrize("source", ["{{ host.nme }}", "{{ host['nme'] }}"])
def test_undefined_field_of_a_namespace_names_the_namespace(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(source, _ctx())

    assert info.value.message == (
        "undefined template variable: 'host' has no field 'nme' (did you mean 'name'?)"
    )


def test_undefined_group_suggests_the_role() -> None:
    with pytest.raises(TemplateError, match=r"'groups' has no field 'comput' \(did you mean"):
        render("{{ groups.comput }}", _ctx())


def test_undefined_is_strict_even_when_only_tested() -> None:
    # StrictUndefined: even iterating or comparing an undefined fails
    with pytest.raises(TemplateError, match="'missing'"):
        render("{% for x in missing %}{{ x }}{% endfor %}", {})


def test_syntax_error_is_reported() -> None:
    with pytest.raises(TemplateError, match="template syntax error"):
        render("echo {{ x", {"x": 1})


def test_runtime_errors_become_template_errors() -> None:
    with pytest.raises(TemplateError, match="division by zero"):
        render("{{ 1 / 0 }}", {})


def test_namespace_is_a_mapping_with_a_label() -> None:
    ns = Namespace("host", {"name": "a"})

    assert dict(ns) == {"name": "a"}
    assert ns.label == "host"


def test_secrets_mapping_holds_names_only() -> None:
    secrets = Secrets(["a", "b"])

    assert list(secrets) == ["a", "b"]
    assert len(secrets) == 2
    assert secrets["a"] == "@@secret:a@@"
    with pytest.raises(KeyError):
        secrets["c"]
