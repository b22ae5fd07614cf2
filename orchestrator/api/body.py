"""The one request body the API parses: POST /v1/upgrades.

Validated with pydantic at the edge, turned into the same located problems
(`file`, `line`, `field`, `message`) that `orchestrator plan` prints.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.api.endpoint import FILE_NAME_PATTERN
from orchestrator.errors import InputError, MalformedBody, NumberTooLong, Problem

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# a file name as the operator typed it, for error messages ("site/inv.yaml:3")
MAX_TEXT = 4 * 1024 * 1024
BODY = "request body"
NOT_NULLABLE = (
    "inventory_name",
    "playbook",
    "playbook_file",
    "playbook_name",
    "from_version",
    "options",
)


class SubmitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    on_failure: Literal["rollback", "pause"] | None = None


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    inventory: str = Field(min_length=1, max_length=MAX_TEXT)
    inventory_name: str = Field("inventory.yaml", pattern=FILE_NAME_PATTERN)
    playbook: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    playbook_file: str = Field("playbook.yaml", pattern=FILE_NAME_PATTERN)
    playbook_name: str | None = Field(None, pattern=NAME_PATTERN)
    from_version: str | None = Field(None, min_length=1, max_length=64)
    to_version: str = Field(min_length=1, max_length=64)
    options: SubmitOptions = SubmitOptions()
    dry_run: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        """Optional means "leave it out", never null: the OpenAPI schema says so too."""
        if isinstance(data, dict):
            for key in NOT_NULLABLE:
                if key in data and data[key] is None:
                    raise ValueError(f"'{key}' must not be null; leave it out instead")
        return data

    @model_validator(mode="after")
    def _one_playbook(self) -> SubmitBody:
        if (self.playbook is None) == (self.playbook_name is None):
            raise ValueError(
                "give exactly one of 'playbook' (YAML text) or 'playbook_name' (a shipped one)"
            )
        if self.playbook is None and "playbook_file" in self.model_fields_set:
            raise ValueError("'playbook_file' names the text given in 'playbook'")
        return self


# the submit body is a flat object of strings: anything deeper is not one
MAX_JSON_DEPTH = 32
# digits of one JSON number; Python refuses more than 4,300 with a ValueError
MAX_NUMBER_DIGITS = 40


def _number(text: str) -> Any:
    if len(text) > MAX_NUMBER_DIGITS:
        raise NumberTooLong(f"a number of {len(text)} characters (at most {MAX_NUMBER_DIGITS})")
    return float(text) if any(c in text for c in ".eE") else int(text)


def _depth_within(data: Any, limit: int) -> bool:
    """Whether `data` nests at most `limit` levels of objects and arrays."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return False
            values = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in values)
    return True


def parse_submit(raw: bytes) -> SubmitBody:
    """Bytes -> SubmitBody, or MalformedBody (400) / InputError (422)."""
    try:
        data = json.loads(raw, parse_int=_number, parse_float=_number)
    except UnicodeDecodeError as exc:
        raise MalformedBody(Problem(file=BODY, message=f"not UTF-8: {exc.reason}")) from None
    except json.JSONDecodeError as exc:
        raise MalformedBody(
            Problem(file=BODY, line=exc.lineno, column=exc.colno, message=f"not JSON: {exc.msg}")
        ) from None
    except NumberTooLong as exc:
        raise MalformedBody(Problem(file=BODY, message=f"not accepted: {exc}")) from None
    except RecursionError:
        raise MalformedBody(
            Problem(file=BODY, message=f"nested deeper than {MAX_JSON_DEPTH} levels")
        ) from None
    if not _depth_within(data, MAX_JSON_DEPTH):
        raise MalformedBody(
            Problem(file=BODY, message=f"nested deeper than {MAX_JSON_DEPTH} levels")
        )
    try:
        return SubmitBody.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_problems(exc)) from None


def validation_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        field = ".".join(loc) or None
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        message = message.removeprefix("Value error, ")
        problems.append(Problem(file=BODY, field=field, message=message))
    return problems
