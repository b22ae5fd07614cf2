"""The JSON Schemas in docs/: current, valid draft 2020-12, and in agreement
with the models on the shipped files and on generated ones.

Instances are validated with jsonschema-rs, a real draft 2020-12 validator
that the dev extra already installs (schemathesis depends on it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings

from orchestrator import schemas
from orchestrator.errors import InputError
from orchestrator.inventory import parse_inventory
from orchestrator.playbook import parse_playbook
from orchestrator.source import load_file, load_text
from tests.conftest import EXAMPLE_INVENTORY, REPO_ROOT
from tests.test_batching_properties import Scenario, scenarios

DOCS = REPO_ROOT / "docs"
INVENTORIES = [REPO_ROOT / EXAMPLE_INVENTORY, REPO_ROOT / "tests/corpus/good/inventory.yaml"]
PLAYBOOKS = [
    *sorted((REPO_ROOT / "playbooks").glob("*.yaml")),
    REPO_ROOT / "tests/corpus/good/playbook.yaml",
]


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DOCS / name).read_text(encoding="utf-8"))
    return data


@functools.cache
def _validator(name: str) -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(_load(name))


def _errors(validator: jsonschema_rs.Validator, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def test_docs_schemas_are_the_generated_ones() -> None:
    for path, text in schemas.expected_files(DOCS).items():
        assert path.is_file(), f"{path} is missing: run `python -m orchestrator.schemas`"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(REPO_ROOT)} is stale: run `python -m orchestrator.schemas`"
        )


def test_main_writes_then_check_passes_and_catches_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 1
    assert "inventory.schema.json is stale" in capsys.readouterr().err
    assert schemas.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["inventory.schema.json", "playbook.schema.json"]
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "playbook.schema.json").read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    (tmp_path / "playbook.schema.json").write_text(text.replace("phases", "fazes"))
    assert schemas.main(["--check", "--out", str(tmp_path)]) == 1
    assert "playbook.schema.json is stale" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "properties", "required"),
    [
        (
            "inventory.schema.json",
            {"name", "ssh", "vars", "secrets", "load_balancers", "roles", "hosts"},
            ["hosts"],
        ),
        (
            "playbook.schema.json",
            {"name", "description", "follows", "on_failure", "vars", "phases"},
            ["name", "phases"],
        ),
    ],
)
def test_schema_is_draft_2020_12_with_the_model_fields(
    name: str, properties: set[str], required: list[str]
) -> None:
    schema = _load(name)
    jsonschema_rs.meta.validate(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:rolling-orchestrator:{name.removesuffix('.schema.json')}"
    assert schema["title"].startswith("rolling-orchestrator ")
    assert set(schema["properties"]) == properties
    assert schema["required"] == required
    assert schema["additionalProperties"] is False
    assert isinstance(jsonschema_rs.validator_for(schema), jsonschema_rs.Draft202012Validator)


@pytest.mark.parametrize("path", INVENTORIES, ids=lambda p: p.name)
def test_inventory_files_validate_against_schema_and_model(path: Path) -> None:
    doc = load_file(path)
    assert _errors(_validator("inventory.schema.json"), doc.data) == []
    inventory, _ = parse_inventory(doc)
    assert inventory.hosts


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_playbook_files_validate_against_schema_and_model(path: Path) -> None:
    doc = load_file(path)
    assert _errors(_validator("playbook.schema.json"), doc.data) == []
    playbook, _ = parse_playbook(doc)
    assert playbook.phases


def test_shipped_files_exercise_the_widened_types() -> None:
    """The example and nova use what a naive schema would reject: durations
    like '10s' and a bare `gate: all_at_target`. Guard that they still do."""
    inventory = load_file(REPO_ROOT / EXAMPLE_INVENTORY).data
    assert inventory["ssh"]["connect_timeout"] == "10s"
    nova = load_file(REPO_ROOT / "playbooks/nova.yaml").data
    assert "all_at_target" in [p.get("gate") for p in nova["phases"]]


INVENTORY_HEAD = "hosts:\n  ctl-1: {address: 10.0.0.1, roles: [conductor]}\n"
PLAYBOOK_HEAD = "name: pb\nphases:\n  - name: p\n    rolling: conductor\n    steps: [{run: x}]\n"


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("inventory", INVENTORY_HEAD + "ssh: {connect_timeout: 10 minutes}\n"),
        ("inventory", INVENTORY_HEAD + "ssh: {usr: stack}\n"),
        ("inventory", INVENTORY_HEAD + "  bad name: {address: 10.0.0.2}\n"),
        ("inventory", "hosts: {}\n"),
        ("inventory", INVENTORY_HEAD + "ssh: {become: su}\n"),
        ("playbook", PLAYBOOK_HEAD + "    gate: all_at_targets\n"),
        ("playbook", PLAYBOOK_HEAD + "    batch: 0\n"),
        ("playbook", PLAYBOOK_HEAD + "    batch: []\n"),
        ("playbook", PLAYBOOK_HEAD + "    batch: {size: 2}\n"),
        ("playbook", PLAYBOOK_HEAD + "    max_unavailable: 25 percent\n"),
        ("playbook", PLAYBOOK_HEAD + "    zones: split\n"),
        ("playbook", PLAYBOOK_HEAD + "    batch_pause: -1\n"),
        ("playbook", "name: pb\nphases: []\n"),
    ],
)
def test_schema_rejects_what_the_model_rejects(kind: str, text: str) -> None:
    doc = load_text(text, f"{kind}.yaml")
    assert _errors(_validator(f"{kind}.schema.json"), doc.data), "the schema accepted it"
    parse = parse_inventory if kind == "inventory" else parse_playbook
    with pytest.raises(InputError):
        parse(doc)


@settings(max_examples=40, deadline=None)
@given(scenarios())
def test_schema_accepts_generated_files_the_model_accepts(s: Scenario) -> None:
    inventory = load_text(s.inventory_yaml(), "inv.yaml")
    playbook = load_text(s.playbook_yaml(), "pb.yaml")
    parse_inventory(inventory)
    parse_playbook(playbook)
    assert _errors(_validator("inventory.schema.json"), inventory.data) == []
    assert _errors(_validator("playbook.schema.json"), playbook.data) == []
