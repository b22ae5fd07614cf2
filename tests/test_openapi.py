"""The OpenAPI document is kept true: real responses validate against it, every
route is in it, and schemathesis (bounded) finds no 5xx and no answer that
breaks it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema_rs
import pytest
import schemathesis
from aiohttp import web
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from orchestrator import access
from orchestrator.api.app import make_app
from orchestrator.api.openapi import SPEC
from orchestrator.engine.manager import UpgradeManager
from orchestrator.store.journal import Journal
from tests.sshhosts import MakeSSHHosts
from tests.test_api import AUTH, TOKEN, Api, poll, release, running_api, submit_body


def validate(method: str, template: str, status: int, content_type: str, raw: bytes) -> None:
    """One real answer against what the document promises for it."""
    operation = SPEC["paths"][template][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}: not documented"
    content = responses[str(status)]["content"]
    assert content_type in content, f"{method} {template} {status}: {content_type} not documented"
    if content_type not in ("application/json", "application/problem+json"):
        return
    schema = {**content[content_type]["schema"], "components": SPEC["components"]}
    validator = jsonschema_rs.Draft202012Validator(schema)
    errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(json.loads(raw))]
    assert not errors, f"{method} {template} {status}: {errors[:5]}"


class Checked:
    """Sends requests through the test client and validates every answer."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(
        self,
        method: str,
        template: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        **params: str,
    ) -> tuple[int, Any]:
        path = template.format(**params)
        all_headers = {**AUTH, **(headers or {})}
        if raw is not None:
            all_headers.setdefault("Content-Type", "application/json")
        resp = await self.api.client.request(method, path, json=body, data=raw, headers=all_headers)
        if resp.content_type == "text/event-stream":
            data: bytes = b""  # the stream is checked by test_api; its type is checked here
            resp.close()
        else:
            data = await resp.read()
        validate(method, template, resp.status, resp.content_type, data)
        self.seen.add((method, template, resp.status))
        return resp.status, json.loads(data) if resp.content_type in (
            "application/json",
            "application/problem+json",
        ) else data


async def test_real_responses_validate_against_the_document(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    async with running_api(hosts, tmp_path) as api:
        call = Checked(api)
        one = "/v1/upgrades/{id}"
        assert (await call("GET", "/healthz"))[0] == 200
        assert (await call("GET", "/"))[0] == 200
        assert (await call("GET", "/static/{name}", name="app.js"))[0] == 200
        assert (await call("GET", "/static/{name}", name="style.css"))[0] == 200
        assert (await call("GET", "/static/{name}", name="..%2Fpage.py"))[0] == 404
        assert (await call("GET", "/metrics"))[0] == 200
        assert (await call("GET", "/v1/openapi.json"))[0] == 200
        assert (await call("GET", "/v1/upgrades"))[0] == 200
        assert (await call("GET", "/v1/upgrades", headers={"Authorization": "Bearer no"}))[0] == 401
        assert (await call("POST", "/v1/upgrades", raw=b"{nope"))[0] == 400
        assert (await call("POST", "/v1/upgrades", {"inventory": "x"}))[0] == 422
        big = submit_body(hosts, inventory="#" * 300_000)
        assert (await call("POST", "/v1/upgrades", big))[0] == 413
        plain = {"Content-Type": "text/plain"}
        assert (await call("POST", "/v1/upgrades", raw=b"{}", headers=plain))[0] == 415
        assert (await call("POST", "/v1/upgrades", submit_body(hosts, dry_run=True)))[0] == 200
        status, created = await call("POST", "/v1/upgrades", submit_body(hosts))
        assert status == 201
        upgrade_id = created["id"]
        assert (await call("POST", "/v1/upgrades", submit_body(hosts)))[0] == 409
        for method, template in [
            ("GET", one),
            ("GET", one + "/plan"),
            ("GET", one + "/events"),
            ("POST", one + "/pause"),
        ]:
            assert (await call(method, template, id="x"))[0] == 404
        await api.wait_step(upgrade_id, "roll", "host-1", "running")
        assert (await call("GET", one, id=upgrade_id))[0] == 200
        assert (await call("POST", one + "/pause", id=upgrade_id))[0] == 200
        assert (await call("POST", one + "/approve", id=upgrade_id))[0] == 409
        for action in ("retry", "skip"):  # host-1 has not failed
            host_action = one + "/hosts/{host}/" + action
            assert (await call("POST", host_action, id=upgrade_id, host="host-1"))[0] == 409
            assert (await call("POST", host_action, id="x", host="host-1"))[0] == 404
        assert (await call("GET", one, id=upgrade_id))[0] == 200
        assert (await call("POST", one + "/resume", id=upgrade_id))[0] == 200
        release(hosts)
        await api.wait_state(upgrade_id, "waiting_approval")
        assert (await call("GET", one, id=upgrade_id))[0] == 200
        assert (await call("POST", one + "/approve", id=upgrade_id))[0] == 200
        await poll(lambda: api.status(upgrade_id), lambda d: d["point_of_no_return_passed"])
        assert (await call("POST", one + "/rollback", id=upgrade_id))[0] == 409
        (hosts.root / "finish").touch()
        await api.wait_state(upgrade_id, "succeeded")
        assert (await call("GET", one, id=upgrade_id))[0] == 200
        assert (await call("GET", one + "/plan", id=upgrade_id))[0] == 200
        events = one + "/events"
        assert (await call("GET", events, id=upgrade_id))[0] == 200
        bad_id = {"Last-Event-ID": "x"}
        assert (await call("GET", events, id=upgrade_id, headers=bad_id))[0] == 400
        assert (await call("GET", "/v1/upgrades"))[0] == 200
        assert (await call("GET", "/metrics"))[0] == 200

        # a second upgrade that is rolled back: its status has other states in it
        (hosts.root / "go").unlink()
        status, second = await call(
            "POST", "/v1/upgrades", submit_body(hosts, from_version="2.0", to_version="3.0")
        )
        assert status == 201
        await api.wait_step(second["id"], "roll", "host-1", "running")
        assert (await call("POST", one + "/rollback", id=second["id"]))[0] == 200
        release(hosts)
        await api.wait_state(second["id"], "rolled_back")
        assert (await call("GET", one, id=second["id"]))[0] == 200
        assert (await call("POST", one + "/abort", id=second["id"]))[0] == 409
    documented = {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops}
    assert {(m, p) for m, p, _ in call.seen} == documented


async def test_every_route_is_documented_and_every_documented_path_routed(
    tmp_path: Path,
) -> None:
    async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
        app = make_app(UpgradeManager(journal), TOKEN)
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert routed == documented


# --- schemathesis -----------------------------------------------------------------


class ThreadedDaemon:
    """The real app with a real journal on its own event loop in a thread, so
    schemathesis (synchronous, requests-based) can call it from the test."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="api-under-test", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> ThreadedDaemon:
        self._thread.start()
        if not self._ready.wait(20):
            raise TimeoutError("the API did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        journal = await Journal.open(self.state_dir / "journal.sqlite3")
        try:
            app = make_app(UpgradeManager(journal), ROLE_TOKENS, max_body=256 * 1024)
            runner = web.AppRunner(app, shutdown_timeout=2)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url = f"http://{host}:{port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()
        finally:
            await journal.close()


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ThreadedDaemon(tmp_path_factory.mktemp("schemathesis")) as daemon:
        yield daemon.url


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    ignored_auth,
    unsupported_method,
    allow_header_conformance,
    use_after_free,
    ensure_resource_availability,
]
schema = schemathesis.openapi.from_dict(SPEC)


# one token per role (issue 11): every operation is fuzzed with each, so a
# viewer's or an operator's refused calls (403) must be documented and sane too
TOKENS_BY_ROLE = {role: access.new_token() for role in access.Role}
ROLE_TOKENS = access.Tokens(
    [
        access.Token(f"{role.label}-fuzz", role, access.digest(token))
        for role, token in TOKENS_BY_ROLE.items()
    ]
)
CASES: Counter[str] = Counter()
OPERATIONS = sum(len(ops) for ops in SPEC["paths"].values())
MIN_CASES = 1000


@pytest.fixture(scope="module")
def case_count() -> Iterator[Counter[str]]:
    """At the module's end: every role's token was fuzzed at least MIN_CASES times
    (checked when every operation ran for every role, not in a -k subset)."""
    yield CASES
    runs = sum(1 for key in CASES if key.startswith("op:"))
    if runs == OPERATIONS * len(access.Role):
        print("\nschemathesis cases per role:", {r.label: CASES[r.label] for r in access.Role})
        for role in access.Role:
            assert CASES[role.label] >= MIN_CASES, dict(CASES)


@pytest.mark.parametrize("role", list(access.Role), ids=lambda r: r.label)
@schema.parametrize()
@hypothesis.settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(
    case: schemathesis.Case[Any], daemon_url: str, role: access.Role, case_count: Counter[str]
) -> None:
    case_count[role.label] += 1
    case_count[f"op:{role.label}:{case.operation.method} {case.operation.path}"] = 1
    headers = {"Authorization": f"Bearer {TOKENS_BY_ROLE[role]}"}
    case.call_and_validate(base_url=daemon_url, headers=headers, checks=CHECKS, timeout=10)
