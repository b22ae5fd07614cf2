"""JSON Schemas (draft 2020-12) of the inventory and the playbook, for editors.

Generated from the pydantic models, so they cannot drift from what
`orchestrator plan` accepts. Where a model takes more than its Python type
says (a duration written as "5m", `gate: all_at_target` as a bare string,
`all: compute` as a single role), the schema says so too: a schema that
rejected the shipped playbooks would be worse than none. The tool itself
stays the judge; the schema is slightly stricter only about types the
models coerce leniently (a port written as the string "22").

    python -m orchestrator.schemas           # rewrite docs/*.schema.json
    python -m orchestrator.schemas --check   # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from orchestrator import fields
from orchestrator.inventory import NAME, Inventory
from orchestrator.playbook import Phase, Playbook

DIALECT = "https://json-schema.org/draft/2020-12/schema"
DOCS = Path("docs")

DURATION: JsonSchemaValue = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": fields._DURATION.pattern},
    ],
    "description": "seconds, or a duration such as '30s', '5m', '1h' or '250ms'",
}
VERSION: JsonSchemaValue = {
    "anyOf": [{"type": "string"}, {"type": "integer"}],
    "description": 'a version such as "2025.2"; quote it, or 2025.10 reads as 2025.1',
}
PERCENT: JsonSchemaValue = {"type": "string", "pattern": fields._PERCENT.pattern}
ALL_AT_TARGET: JsonSchemaValue = {"const": "all_at_target"}


def _size(minimum: int, description: str) -> JsonSchemaValue:
    return {
        "anyOf": [{"type": "integer", "minimum": minimum}, PERCENT],
        "description": description,
    }


BATCH_SIZE = _size(1, "a host count, or a percentage of the phase's hosts (rounds up)")
MAX_UNAVAILABLE = _size(1, "a host count, or a percentage of the role's hosts (rounds down)")
MAX_FAILURES = _size(0, "a host count, or a percentage of the phase's hosts (rounds down)")


class _Generator(GenerateJsonSchema):
    """Describes what our validators accept where pydantic only sees the type."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        fn = _function(schema)
        if fn == fields.parse_duration:
            return dict(DURATION)
        if fn == fields._version_text:
            return dict(VERSION)
        if fn == Phase._all_list:
            inner = self.generate_inner(schema["schema"])
            return {"anyOf": [{"type": "string"}, *inner.get("anyOf", [inner])]}
        if fn == Phase._gates:
            listed = self.generate_inner(schema["schema"])
            one = {"anyOf": [ALL_AT_TARGET, listed["items"]]}
            return {
                "anyOf": [
                    ALL_AT_TARGET,
                    listed["items"],
                    {"type": "array", "items": one},
                    {"type": "null"},
                ],
                "description": "'all_at_target', a command gate, or a list of them",
            }
        return super().function_before_schema(schema)

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        fn = _function(schema)
        if fn == Phase._batch:
            return {
                "anyOf": [
                    BATCH_SIZE,
                    {"type": "array", "items": BATCH_SIZE, "minItems": 1},
                    {"type": "null"},
                ],
                "description": "a size, or a ramp: the i-th size sizes the i-th batch, "
                "the last repeats",
            }
        if fn == Phase._max_unavailable:
            return {
                "anyOf": [
                    MAX_UNAVAILABLE,
                    {"type": "object", "additionalProperties": MAX_UNAVAILABLE},
                    {"type": "null"},
                ]
            }
        if fn == Phase._max_failures:
            return dict(MAX_FAILURES)
        if fn == Inventory._names:
            inner = self.generate_inner(schema["schema"])
            return {**inner, "propertyNames": {"pattern": NAME.pattern}}
        return super().function_after_schema(schema)


def _function(
    schema: core_schema.BeforeValidatorFunctionSchema | core_schema.AfterValidatorFunctionSchema,
) -> Callable[..., Any]:
    return schema["function"]["function"]


def schema_of(model: type[BaseModel], name: str, description: str) -> dict[str, Any]:
    body = model.model_json_schema(schema_generator=_Generator)
    return {
        "$schema": DIALECT,
        "$id": f"urn:rolling-orchestrator:{name}",
        **body,
        "title": f"rolling-orchestrator {name}",
        "description": description,
    }


def inventory_schema() -> dict[str, Any]:
    return schema_of(
        Inventory,
        "inventory",
        "The hosts of a cloud, their roles, how to reach them over SSH, and per role "
        "how to probe the version, health-check and drain them. See docs/formats.md.",
    )


def playbook_schema() -> dict[str, Any]:
    return schema_of(
        Playbook,
        "playbook",
        "An upgrade procedure: ordered phases of steps with their undo. "
        "See docs/formats.md and docs/batching.md.",
    )


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def expected_files(directory: Path = DOCS) -> dict[Path, str]:
    return {
        directory / "inventory.schema.json": render(inventory_schema()),
        directory / "playbook.schema.json": render(playbook_schema()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.schemas", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    parser.add_argument("--out", type=Path, default=DOCS, help="directory (default: docs)")
    args = parser.parse_args(argv)
    stale = 0
    for path, text in expected_files(args.out).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale += 1
        if args.check:
            print(f"{path} is stale: run `python -m orchestrator.schemas`", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
