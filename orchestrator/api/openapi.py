"""The OpenAPI 3.1 document of the HTTP API, as data.

Kept true by tests/test_openapi.py, which validates real responses against
these schemas and runs schemathesis over every operation. The request body
schema mirrors `orchestrator.api.body.SubmitBody`; the status schemas mirror
`orchestrator.engine.status`.
"""

from __future__ import annotations

from typing import Any

from orchestrator.api.body import MAX_TEXT, NAME_PATTERN
from orchestrator.api.endpoint import ACTIONS, FILE_NAME_PATTERN, HOST_ACTIONS
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
LAST_EVENT_ID_PATTERN = r"^[0-9]{1,18}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _obj(props: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


def _counts() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
TIME = _nullable("number")

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(
        {
            "file": _nullable("string"),
            "line": _nullable("integer"),
            "column": _nullable("integer"),
            "field": _nullable("string"),
            "message": STR,
        }
    ),
    "Error": {
        **_obj(
            {
                "type": {
                    "type": "string",
                    "description": "urn:rolling-orchestrator:error:<class>, e.g. ...:ConflictError",
                },
                "title": STR,
                "status": INT,
                "detail": STR,
                "instance": {"type": "string", "description": "the request's path"},
                "problems": {"type": "array", "items": _ref("Problem")},
            },
            required=["type", "title", "status", "detail", "problems"],
        ),
        "description": "an RFC 9457 problem document (application/problem+json)",
    },
    "SubmitRequest": {
        "type": "object",
        "description": "Give the playbook as YAML text (`playbook`) or by the name of a "
        "shipped one (`playbook_name`), never both. Optional fields are left out, not null.",
        "properties": {
            "inventory": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "inventory_name": {
                "type": "string",
                "pattern": FILE_NAME_PATTERN,
                "description": "the inventory's file name, used in error messages",
            },
            "playbook": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "playbook_file": {
                "type": "string",
                "pattern": FILE_NAME_PATTERN,
                "description": "the playbook's file name, used in error messages",
            },
            "playbook_name": {"type": "string", "pattern": NAME_PATTERN},
            "from_version": {"type": "string", "minLength": 1, "maxLength": 64},
            "to_version": {"type": "string", "minLength": 1, "maxLength": 64},
            "options": _obj(
                {"on_failure": {"type": "string", "enum": ["rollback", "pause"]}}, required=[]
            ),
            "dry_run": BOOL,
        },
        "required": ["inventory", "to_version"],
        "oneOf": [{"required": ["playbook"]}, {"required": ["playbook_name"]}],
        "dependentRequired": {"playbook_file": ["playbook"]},
        "additionalProperties": False,
    },
    "Plan": {
        "type": "object",
        "description": "The compiled plan (see `orchestrator plan --json`).",
        "properties": {
            "digest": STR,
            "name": STR,
            "from_version": STR,
            "to_version": STR,
            "inventory": STR,
            "on_failure": {"type": "string", "enum": ["rollback", "pause"]},
            "hosts": {"type": "array", "items": {"type": "object"}},
            "load_balancers": {"type": "array", "items": {"type": "object"}},
            "phases": {"type": "array", "items": {"type": "object"}},
            "warnings": {"type": "array", "items": STR},
        },
        "required": ["digest", "name", "from_version", "to_version", "inventory", "phases"],
    },
    "UpgradeSummary": _obj(
        {
            "id": STR,
            "name": STR,
            "inventory": STR,
            "from_version": STR,
            "to_version": STR,
            "digest": STR,
            "state": {"type": "string", "enum": [s.label for s in UpgradeState]},
            "reason": _nullable("string"),
            "created_at": TIME,
            "updated_at": TIME,
        }
    ),
    "UpgradeList": _obj({"upgrades": {"type": "array", "items": _ref("UpgradeSummary")}}),
    "SubmitResult": _obj(
        {
            "id": _nullable("string"),
            "created": BOOL,
            "dry_run": BOOL,
            "digest": STR,
            "warnings": {"type": "array", "items": STR},
            "upgrade": {"oneOf": [_ref("UpgradeSummary"), {"type": "null"}]},
            "plan": _ref("Plan"),
        }
    ),
    "Step": _obj(
        {
            "id": STR,
            "name": STR,
            "state": {"type": "string", "enum": [s.value for s in StepState]},
            "started_at": TIME,
            "finished_at": TIME,
            "exit": _nullable("integer"),
            "output": {"type": "string", "description": "the last lines of output"},
            "error": _nullable("string"),
            "attempts": INT,
        }
    ),
    "Host": _obj(
        {
            "host": STR,
            "roles": {"type": "array", "items": STR},
            "state": {"type": "string", "enum": [s.value for s in HostState]},
            "drained": BOOL,
            "tolerated": {
                **BOOL,
                "description": "failed within the phase's failure budget: rolled back, out "
                "of service, holding the next gate until retried or skipped",
            },
            "error": _nullable("string"),
            "started_at": TIME,
            "finished_at": TIME,
            "health": {
                "oneOf": [
                    {"type": "null"},
                    _obj(
                        {
                            "passes": INT,
                            "needed": INT,
                            "elapsed_s": {"type": "number"},
                            "deadline_s": {"type": "number"},
                            "last": STR,
                        }
                    ),
                ],
                "description": "while its health check runs: consecutive passes so far of "
                "those needed, seconds spent of the deadline, the last round's result",
            },
            "steps": {"type": "array", "items": _ref("Step")},
        }
    ),
    "Batch": _obj(
        {
            "index": INT,
            "zone": _nullable("string"),
            "canary": BOOL,
            "hosts": {"type": "array", "items": _ref("Host")},
            "counts": _counts(),
        }
    ),
    "Phase": _obj(
        {
            "name": STR,
            "kind": {"type": "string", "enum": ["once", "all", "rolling"]},
            "roles": {"type": "array", "items": STR},
            "state": {"type": "string", "enum": [s.value for s in PhaseState]},
            "reason": _nullable("string"),
            "started_at": TIME,
            "finished_at": TIME,
            "irreversible": BOOL,
            "approve": BOOL,
            "hosts_total": INT,
            "hosts_finished": INT,
            "batches": {"type": "array", "items": _ref("Batch")},
        }
    ),
    "UpgradeStatus": _obj(
        {
            "id": STR,
            "name": STR,
            "inventory": STR,
            "from_version": STR,
            "to_version": STR,
            "digest": STR,
            "state": {"type": "string", "enum": [s.label for s in UpgradeState]},
            "terminal": BOOL,
            "reason": _nullable("string"),
            "created_at": TIME,
            "updated_at": TIME,
            "last_event": INT,
            "point_of_no_return": _nullable("string"),
            "point_of_no_return_passed": BOOL,
            "progress": _obj(
                {
                    "phases_total": INT,
                    "phases_done": INT,
                    "steps_total": INT,
                    "steps_done": INT,
                    "hosts_by_state": _counts(),
                    "fraction": {
                        "type": "number",
                        "description": "steps done / steps in the plan, 0 to 1",
                    },
                }
            ),
            "eta_s": {
                **_nullable("number"),
                "description": "seconds left along the critical path, from the playbook's "
                "earlier upgrades (approval waits not counted); null: no history yet",
            },
            "next": {"type": "string", "description": "what happens next, in words"},
            "hosts": {
                **_obj({"total": INT, "through": INT, "by_state": _counts()}),
                "description": "hosts counted once each: how many, how many are through "
                "every phase they take part in, and each one's state in its latest phase",
            },
            "first_failure": {
                "oneOf": [
                    {"type": "null"},
                    _obj(
                        {
                            "what": {
                                "type": "string",
                                "enum": ["step", "health", "host", "gate", "upgrade"],
                            },
                            "phase": _nullable("string"),
                            "host": _nullable("string"),
                            "step": _nullable("string"),
                            "exit": _nullable("integer"),
                            "message": STR,
                            "output": {"type": "string", "description": "its last lines"},
                            "at": {"type": "number"},
                            "summary": {"type": "string", "description": "in one line"},
                        }
                    ),
                ],
                "description": "the first thing that went wrong, kept through rollback",
            },
            "skipped_hosts": {
                "type": "object",
                "additionalProperties": STR,
                "description": "host -> the phase it failed in, for hosts the operator skipped",
            },
            "approvals": {
                "type": "array",
                "description": "who approved which phase (the point of no return), and when",
                "items": _obj({"phase": STR, "by": STR, "at": {"type": "number"}}),
            },
            "phases": {"type": "array", "items": _ref("Phase")},
            "stalled": {
                **_nullable("string"),
                "description": "why the journal cannot record the upgrade, which waits "
                "until the storage is fixed and it is resumed",
            },
        }
    ),
    "Health": _obj(
        {
            "status": {"type": "string", "enum": ["ok", "stopping", "stalled"]},
            "stalled": {"type": "object", "additionalProperties": STR},
            "role": {
                "type": "string",
                "enum": ["leader", "standby"],
                "description": "on a shared store one daemon leads (runs the upgrades); "
                "the others stand by, serve reads and redirect writes to it",
            },
            "store": {"type": "string", "enum": ["sqlite", "postgresql"]},
            "epoch": {**_nullable("integer"), "description": "the leader lease's epoch"},
            "holder": STR,
            "leader": {**_nullable("string"), "description": "the leader's API URL"},
            "lease_age_s": {
                **_nullable("number"),
                "description": "seconds since the leader last renewed its lease",
            },
            "lease_expires_in_s": _nullable("number"),
            "lease_s": {"type": "number"},
            "renew_s": {"type": "number"},
        },
        required=["status", "role", "store"],
    ),
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Error")}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


UNAUTHORIZED = _error("missing or wrong bearer token")
NOT_FOUND = _error("no such upgrade")
UPGRADE_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
}


def _control(action: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{action}Upgrade",
            "summary": f"{action} an upgrade",
            "parameters": [UPGRADE_ID],
            "responses": {
                "200": _json("the action was journaled", "UpgradeSummary"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": _error(
                    "the upgrade's state forbids it (rollback after the point of no return "
                    "names that phase)"
                ),
            },
        }
    }


HOST_NAME = {
    "name": "host",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,253}$"},
}


def _host_control(action: str, what: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{action}Host",
            "summary": what,
            "parameters": [UPGRADE_ID, HOST_NAME],
            "responses": {
                "200": _json("the action was journaled, with who ordered it", "UpgradeSummary"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": _error("the upgrade is not paused, or the host has not failed in it"),
            },
        }
    }


PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "operationId": "page",
            "summary": "the status page (HTML); it asks for a token itself, kept in the tab",
            "security": [],
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {"schema": STR}}}
            },
        }
    },
    "/static/{name}": {
        "get": {
            "operationId": "static",
            "summary": "the page's script and style sheet",
            "security": [],
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": STR},
            ],
            "responses": {
                "200": {
                    "description": "the file",
                    "content": {"text/javascript": {"schema": STR}, "text/css": {"schema": STR}},
                },
                "404": _error("no such file"),
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "liveness; needs no token",
            "security": [],
            "responses": {
                "200": _json("the daemon is up", "Health"),
                "503": _json("an upgrade's journal cannot write: it is stalled", "Health"),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "text exposition format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": UNAUTHORIZED,
            },
        }
    },
    "/v1/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "this document",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": UNAUTHORIZED,
            },
        }
    },
    "/v1/upgrades": {
        "get": {
            "operationId": "listUpgrades",
            "summary": "every upgrade the daemon knows, oldest first",
            "responses": {"200": _json("the list", "UpgradeList"), "401": UNAUTHORIZED},
        },
        "post": {
            "operationId": "submitUpgrade",
            "summary": "compile a plan and start it (or only compile it, with dry_run)",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "a repeated submit with the same key returns the same upgrade",
                    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("SubmitRequest")}},
            },
            "responses": {
                "200": _json("dry run, or a repeat of an earlier submit", "SubmitResult"),
                "201": _json("the upgrade was created and started", "SubmitResult"),
                "400": _error("the body is not JSON, or a header is malformed"),
                "401": UNAUTHORIZED,
                "409": _error(
                    "another upgrade holds one of its hosts (by SSH endpoint), or there is "
                    "nothing to do: every host reports the target and the point of no "
                    "return is already done"
                ),
                "413": _error("the body is too large"),
                "415": _error("the body is not application/json"),
                "422": _error("invalid input: every problem with file, line and field"),
                "503": _error("the daemon is shutting down"),
            },
        },
    },
    "/v1/upgrades/{id}": {
        "get": {
            "operationId": "getUpgrade",
            "summary": "state of every phase, batch, host and step; progress; what is next",
            "parameters": [UPGRADE_ID],
            "responses": {
                "200": _json("the status document", "UpgradeStatus"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        }
    },
    "/v1/upgrades/{id}/plan": {
        "get": {
            "operationId": "getUpgradePlan",
            "summary": "the compiled plan the upgrade runs",
            "parameters": [UPGRADE_ID],
            "responses": {
                "200": _json("the plan", "Plan"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        }
    },
    "/v1/upgrades/{id}/events": {
        "get": {
            "operationId": "upgradeEvents",
            "summary": "journal events as Server-Sent Events; resumable with Last-Event-ID",
            "description": "Each event has `id` (the journal sequence number), `event` (its "
            "kind) and `data` (JSON: {seq, at, kind, data}). The stream ends with an `end` "
            "event once the upgrade is finished and every event was sent.",
            "parameters": [
                UPGRADE_ID,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
                },
            ],
            "responses": {
                "200": {
                    "description": "the event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("Last-Event-ID is not a sequence number"),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "429": _error("this token has as many event streams open as it may"),
            },
        }
    },
    **{f"/v1/upgrades/{{id}}/{action}": _control(action) for action in ACTIONS},
    **{
        f"/v1/upgrades/{{id}}/hosts/{{host}}/{action}": _host_control(action, what)
        for action, what in HOST_ACTIONS.items()
    },
}

FORBIDDEN = _error(
    "the token's role may not do this (viewer: GET; operator: also submit, "
    "pause, resume, abort, retry, skip; approver: also approve, rollback)"
)
STANDBY = {
    "description": "this daemon is a standby on a shared store: send the same request "
    "(method, body, token) to the leader named in Location",
    "headers": {"Location": {"schema": STR, "description": "the same path on the leader"}},
    "content": {"application/problem+json": {"schema": _ref("Error")}},
}
NO_LEADER = _error(
    "a standby while no daemon holds the leader lease (or this one is shutting down); retry"
)
for _methods in PATHS.values():
    for _method, _operation in _methods.items():
        if "401" in _operation["responses"]:
            _operation["responses"]["403"] = FORBIDDEN
        if _method == "post":
            _operation["responses"]["307"] = STANDBY
            _operation["responses"].setdefault("503", NO_LEADER)

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "rolling-upgrade orchestrator",
        "version": "1",
        "description": "Submit, watch and steer rolling upgrades. Every endpoint but "
        "/healthz needs `Authorization: Bearer <token>`; the token's role (viewer, operator, "
        "approver) decides what it may do.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
