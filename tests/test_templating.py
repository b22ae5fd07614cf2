"""Sandboxed Jinja2: shell quoting, secrets as markers, strict undefined messages."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import pytest

from orchestrator.errors import TemplateError
from orchestrator.templating import (
    SECRET_MARKER,
    Flavour,
    Namespace,
    Raw,
    Secrets,
    Templates,
    is_template,
    render,
)


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


# --- Templates: compiled once, rendered once per distinct context read ----------


def _host(name: str, address: str, roles: list[str] | None = None) -> Namespace:
    return Namespace(
        "host", {"name": name, "address": address, "roles": roles or ["compute"], "vars": {}}
    )


def _contexts(n: int, **shared: Any) -> list[dict[str, Any]]:
    base = {"to_version": "2026.1", "from_version": "2025.2", **shared}
    return [{**base, "host": _host(f"cmp-{i}", f"10.0.0.{i}")} for i in range(n)]


def test_a_template_reading_only_shared_names_renders_once_for_every_host() -> None:
    templates = Templates()

    out = {
        templates.render("apt-get install -y nova={{ to_version }}", c, "shell")
        for c in _contexts(50)
    }

    assert out == {"apt-get install -y nova=2026.1"}
    assert templates.renders == 1


def test_a_template_reading_a_host_field_renders_once_per_host_and_never_mixes_them() -> None:
    templates = Templates()
    contexts = _contexts(20)

    first = [templates.render("ping {{ host.address }}", c, "shell") for c in contexts]
    again = [templates.render("ping {{ host.address }}", c, "shell") for c in contexts]

    assert first == again == [f"ping 10.0.0.{i}" for i in range(20)]
    assert templates.renders == 20


def test_hosts_equal_in_the_fields_read_share_a_result() -> None:
    templates = Templates()
    source = "restart{% for r in host.roles %} nova-{{ r }}{% endfor %}"
    contexts = [{"host": _host(f"h{i}", f"10.0.0.{i}", ["api", "conductor"])} for i in range(10)]
    contexts.append({"host": _host("other", "10.0.1.1", ["compute"])})

    out = [templates.render(source, c, "shell") for c in contexts]

    assert out[:10] == ["restart nova-api nova-conductor"] * 10
    assert out[10] == "restart nova-compute"
    assert templates.renders == 2


@pytest.mark.parametrize(
    "source",
    [
        "{{ host | tojson }}",  # the whole namespace
        "{% for k, v in host.items() %}{{ v }}{% endfor %}",  # a dict method, not a field
        "{{ host[key] }}",  # a field chosen at render time
    ],
)
def test_a_namespace_read_as_a_whole_is_keyed_by_the_host(source: str) -> None:
    templates = Templates()
    contexts = [{**c, "key": "name"} for c in _contexts(5)]

    out = [templates.render(source, c) for c in contexts]

    assert len(set(out)) == 5
    assert all(f"cmp-{i}" in text for i, text in enumerate(out))
    assert templates.renders == 5


def test_a_loop_variable_named_like_a_namespace_does_not_narrow_the_key() -> None:
    templates = Templates()
    source = "{{ host.name }}:{% for host in hosts %}{{ host }}{% endfor %}"
    contexts = [{**c, "hosts": ["a", "b"]} for c in _contexts(3)]

    assert [templates.render(source, c) for c in contexts] == [
        "cmp-0:ab",
        "cmp-1:ab",
        "cmp-2:ab",
    ]
    assert templates.renders == 3


@pytest.mark.parametrize("values", [(1, 1.0, True), (0.0, -0.0, False), ("1", 1, Raw("1"))])
def test_values_that_compare_equal_but_render_differently_are_not_mixed(
    values: tuple[Any, ...],
) -> None:
    templates = Templates()

    out = [templates.render("echo {{ x }}", {"x": v}, "shell") for v in values]

    assert out == [render("echo {{ x }}", {"x": v}, "shell") for v in values]
    assert templates.renders == len(values)


def test_a_namespace_field_holding_a_mapping_is_keyed_by_its_content() -> None:
    templates = Templates()
    source = "{{ host.vars.rack | default('none') }}"
    hosts = [
        Namespace("host", {"vars": {"rack": "r1"}}),
        Namespace("host", {"vars": {"rack": "r1"}}),
        Namespace("host", {"vars": {"rack": "r2"}}),
        Namespace("host", {"vars": {}}),
    ]

    assert [templates.render(source, {"host": h}) for h in hosts] == ["r1", "r1", "r2", "none"]
    assert templates.renders == 3


def test_shared_mappings_are_keyed_by_identity() -> None:
    templates = Templates()
    units = {"compute": "nova-compute"}
    other = {"compute": "nova-compute-ironic"}

    a = templates.render("{{ units[role] }}", {"units": units, "role": "compute"})
    b = templates.render("{{ units[role] }}", {"units": dict(units), "role": "compute"})
    c = templates.render("{{ units[role] }}", {"units": other, "role": "compute"})

    assert (a, b, c) == ("nova-compute", "nova-compute", "nova-compute-ironic")
    assert templates.renders == 3  # an equal copy is another object: rendered again


def test_secrets_stay_markers_through_the_cache() -> None:
    templates = Templates()
    contexts = _contexts(3, secrets=Secrets(["db_password"]))

    out = {templates.render("mysql -p{{ secrets.db_password }}", c, "shell") for c in contexts}

    assert out == {"mysql -p@@secret:db_password@@"}
    assert templates.renders == 1


def test_a_macro_reads_the_names_its_body_uses() -> None:
    templates = Templates()
    source = "{% macro pkg(p) %}{{ p }}={{ to_version }}{% endmacro %}{{ pkg('nova') }}"

    assert templates.render(source, {"to_version": "1"}) == "nova=1"
    assert templates.render(source, {"to_version": "2"}) == "nova=2"
    assert templates.renders == 2


def test_failures_are_reported_every_time_with_their_own_suggestions() -> None:
    templates = Templates()

    with pytest.raises(TemplateError, match=r"'rak' \(did you mean 'rack'\?\)"):
        templates.render("{{ rak }}", {"rack": "r1"})
    with pytest.raises(TemplateError) as info:
        templates.render("{{ rak }}", {"zone": "z"})

    assert info.value.message == "undefined template variable: 'rak'"
    with pytest.raises(TemplateError, match="'host' has no field 'nme'"):
        templates.render("{{ host.nme }}", _contexts(1)[0])


def test_the_cache_keeps_the_sandbox() -> None:
    templates = Templates()

    for _ in range(2):
        with pytest.raises(TemplateError, match="not allowed by the sandbox"):
            templates.render("{{ items.append(3) }}", {"items": [1, 2]})


# --- several templates in one render -------------------------------------------


@pytest.mark.parametrize(
    "sources",
    [
        ("disable {{ host.name }}", "enable {{ host.name }}", "test {{ host.address }}"),
        ("{{ x | upper }}", "a {{- ' b ' -}} c", "{{ y if y else 'none' }}", "plain {x}"),
        ("{{ secrets.db_password }}", "{{ x | quote }} {{ x | raw }}"),
    ],
)
@pytest.mark.parametrize("flavour", ["text", "shell"])
def test_templates_rendered_together_render_as_they_do_alone(
    sources: tuple[str, ...], flavour: Flavour
) -> None:
    ctx = {**_ctx(x="two words", y=""), "host": _host("cmp-1", "10.0.0.1")}

    together = Templates().render_all(sources, ctx, flavour)

    assert together == [render(s, ctx, flavour) for s in sources]


@pytest.mark.parametrize(
    "sources",
    [
        ("{% set x = 'leak' %}{{ x }}", "{{ x }}"),  # a statement: could leak into the next
        ("line\n", "{{ x }}"),  # Jinja drops a template's last newline, not one inside
        ("{{ x }}\x00\x1f\x1e\x00", "{{ x }}"),  # the separator itself
        ("{{ x }}", "{{ missing }}"),  # one fails: rendered alone, it says which
    ],
)
def test_templates_that_would_render_differently_together_are_not_joined(
    sources: tuple[str, ...],
) -> None:
    assert Templates().render_all(sources, _ctx(x="v")) is None


def test_a_value_holding_the_separator_is_noticed() -> None:
    ctx = _ctx(x="a\x00\x1f\x1e\x00b")

    assert Templates().render_all(("{{ x }}", "{{ x }}"), ctx) is None


def test_templates_rendered_together_count_as_each_rendered() -> None:
    templates = Templates()
    for c in _contexts(3):
        templates.render_all(("on {{ host.name }}", "off {{ host.name }}"), c, "shell")

    assert templates.renders == 6


def test_text_without_jinja_syntax_is_returned_as_it_is_even_among_templates() -> None:
    # Jinja would turn this \r\n into \n; render() leaves text that is not a template alone
    sources = ("a\r\nb {x}", "{{ x }}", "{{ x }}!")

    assert Templates().render_all(sources, _ctx(x="v")) == ["a\r\nb {x}", "v", "v!"]


# --- one render for many hosts ---------------------------------------------------


def test_templates_rendered_for_many_hosts_render_as_for_each_alone() -> None:
    sources = ("disable {{ host.name }}", "plain", "ping {{ host.address }} {{ to_version }}")
    contexts = _contexts(4)
    shared = {k: v for k, v in contexts[0].items() if k != "host"}

    rows = Templates().render_for_hosts(sources, shared, [c["host"] for c in contexts], "shell")

    assert rows == [[render(s, c, "shell") for s in sources] for c in contexts]


@pytest.mark.parametrize(
    "sources",
    [
        ("{{ loop }}",),  # the loop defines it
        ("{% if host.name %}x{% endif %}",),  # a statement
        ("{{ host.name }}\n",),  # a final newline
        ("{{ missing }}",),  # fails: host by host says where
    ],
)
def test_templates_that_a_loop_would_change_are_not_rendered_for_many(
    sources: tuple[str, ...],
) -> None:
    hosts = [c["host"] for c in _contexts(2)]

    assert Templates().render_for_hosts(sources, {}, hosts) is None


def test_a_host_value_holding_a_separator_is_noticed() -> None:
    hosts = [_host("a\x00\x1d\x1c\x00b", "10.0.0.1"), _host("c", "10.0.0.2")]

    assert Templates().render_for_hosts(("{{ host.name }}",), {}, hosts) is None
