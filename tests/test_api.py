"""The HTTP API over a real app, a real journal and in-process SSH hosts.

The app runs in this process under aiohttp's test server; upgrades really
run over SSH against `tests.sshhosts`. Steps in the rolling phase wait for a
`go` file, so a test decides exactly when each host may finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from orchestrator import model
from orchestrator.api.app import make_app
from orchestrator.api.handlers import plan_data
from orchestrator.api.metrics import Metrics
from orchestrator.daemonconfig import SecretSources
from orchestrator.engine.manager import UpgradeManager
from orchestrator.store.journal import Journal
from tests.enginekit import inventory_text, seed
from tests.sshhosts import MakeSSHHosts, SSHHosts

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T = TypeVar("T")

# pin every host, roll them one by one (each waits for a `go` file: its own,
# or the shared one one level up), gate + approve + contract (the point of no
# return), then a last phase that waits for `finish`.
PLAYBOOK = """
name: lab
phases:
  - name: pin
    all: [app]
    steps:
      - {run: "echo pinned > pin", undo: "rm -f pin"}
  - name: roll
    rolling: app
    batch: 1
    steps:
      - run: >-
          while [ ! -f go ] && [ ! -f ../go ]; do sleep 0.02; done;
          echo {{ to_version }} > version
        undo: "echo {{ from_version }} > version"
        idempotent: true
  - name: contract
    once: app
    gate: all_at_target
    approve: true
    irreversible: true
    steps:
      - {run: "touch contracted"}
  - name: finish
    once: app
    steps:
      - {run: "while [ ! -f ../finish ]; do sleep 0.02; done", idempotent: true}
"""


def submit_body(hosts: SSHHosts, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inventory": inventory_text(hosts),
        "inventory_name": "site/inventory.yaml",
        "playbook": PLAYBOOK,
        "to_version": "2.0",
    }
    body.update(changes)
    return body


def release(hosts: SSHHosts, *names: str) -> None:
    """Let the rolling step finish on `names` (every host when none given)."""
    for name in names:
        (hosts.host_dir(name) / "go").touch()
    if not names:
        (hosts.root / "go").touch()


def finish(hosts: SSHHosts) -> None:
    (hosts.root / "finish").touch()


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    manager: UpgradeManager
    metrics: Metrics
    hosts: SSHHosts

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        resp = await self.client.request(
            method, path, json=body, headers={**AUTH, **(headers or {})}
        )
        raw = await resp.read()
        is_json = resp.content_type in ("application/json", "application/problem+json")
        return resp.status, json.loads(raw) if is_json else raw.decode()

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = await self.call(method, path, body, **kw)
        assert status < 300, (status, data)
        return data

    async def submit(self, **changes: Any) -> str:
        status, data = await self.call("POST", "/v1/upgrades", submit_body(self.hosts, **changes))
        assert status == 201, data
        return str(data["id"])

    async def status(self, upgrade_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("GET", f"/v1/upgrades/{upgrade_id}")
        return data

    async def wait_state(self, upgrade_id: str, *states: str) -> dict[str, Any]:
        return await poll(lambda: self.status(upgrade_id), lambda doc: doc["state"] in states)

    async def wait_step(self, upgrade_id: str, phase: str, host: str, state: str) -> None:
        await poll(
            lambda: self.status(upgrade_id), lambda doc: step_state(doc, phase, host) == state
        )


async def poll(
    fetch: Callable[[], Awaitable[T]], until: Callable[[T], bool], timeout: float = 20
) -> T:
    """Fetch until `until` holds: the API is observed from outside, as a client would."""
    async with asyncio.timeout(timeout):
        while True:
            value = await fetch()
            if until(value):
                return value
            await asyncio.sleep(0.02)


def step_state(doc: dict[str, Any], phase: str, host: str) -> str | None:
    for p in doc["phases"]:
        for batch in p["batches"]:
            for h in batch["hosts"]:
                if p["name"] == phase and h["host"] == host:
                    return str(h["steps"][0]["state"])
    return None


@contextlib.asynccontextmanager
async def running_api(hosts: SSHHosts, state_dir: Path) -> AsyncIterator[Api]:
    """The real app over a real journal in `state_dir`, served on a loopback port."""
    seed(hosts)
    journal = await Journal.open(state_dir / "journal.sqlite3")
    metrics = Metrics()
    manager = UpgradeManager(journal, on_event=metrics.observe)
    # the daemon's configuration lets one secret come from the environment
    sources = SecretSources(env=["LAB_DB_PASSWORD"])
    app = make_app(manager, TOKEN, metrics=metrics, max_body=256 * 1024, secret_sources=sources)
    try:
        async with TestClient(TestServer(app)) as client:
            yield Api(client, manager, metrics, hosts)
            # let blocked steps end, so the manager's graceful stop does not wait on them
            release(hosts)
            finish(hosts)
    finally:
        await journal.close()


@pytest.fixture
async def api(make_ssh_hosts: MakeSSHHosts, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(await make_ssh_hosts(3), tmp_path) as running:
        yield running


# --- security -------------------------------------------------------------------

ROUTES = [
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/upgrades"),
    ("POST", "/v1/upgrades"),
    ("GET", "/v1/upgrades/u1"),
    ("GET", "/v1/upgrades/u1/plan"),
    ("GET", "/v1/upgrades/u1/events"),
    ("POST", "/v1/upgrades/u1/pause"),
    ("POST", "/v1/upgrades/u1/rollback"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_endpoint_but_healthz_needs_the_token(api: Api, method: str, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        resp = await api.client.request(method, path, headers=headers)
        body = await resp.json()
        assert resp.status == 401, (headers, body)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert body["status"] == 401
        assert TOKEN not in json.dumps(body)
    resp = await api.client.request(method, path, headers=AUTH)
    assert resp.status != 401


async def test_healthz_needs_no_token(api: Api) -> None:
    resp = await api.client.get("/healthz")
    assert (resp.status, await resp.json()) == (
        200,
        {"status": "ok", "role": "leader", "store": "sqlite"},
    )


# --- bad input ---------------------------------------------------------------


async def test_malformed_json_is_400_with_line_and_column(api: Api) -> None:
    resp = await api.client.post(
        "/v1/upgrades",
        data=b'{\n  "inventory": "x",\n  oops\n}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    body = await resp.json()
    assert resp.status == 400
    [problem] = body["problems"]
    assert (problem["file"], problem["line"], problem["column"]) == ("request body", 3, 3)
    assert problem["message"].startswith("not JSON")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"options": {"on_failure": "explode"}}, "options.on_failure", "'rollback' or 'pause'"),
        ({"playbook_name": "nova"}, None, "exactly one of 'playbook'"),
        ({"dry_run": "yes"}, "dry_run", "valid boolean"),
        ({"to_version": None}, "to_version", "valid string"),
        ({"from_version": None}, None, "'from_version' must not be null"),
    ],
)
async def test_body_errors_are_422_naming_the_field(
    api: Api, changes: dict[str, Any], field: str | None, message: str
) -> None:
    status, body = await api.call("POST", "/v1/upgrades", submit_body(api.hosts, **changes))

    assert status == 422, body
    problems = body["problems"]
    assert any(p["field"] == field and message in p["message"] for p in problems), problems
    assert (await api.ok("GET", "/v1/upgrades"))["upgrades"] == []


async def test_document_errors_name_file_line_and_field_from_both_documents(api: Api) -> None:
    inventory = inventory_text(api.hosts).replace("roles:\n  app:", "roles:\n  app:\n    colour: 1")
    playbook = PLAYBOOK.replace("batch: 1", "batch: lots")
    status, body = await api.call(
        "POST", "/v1/upgrades", submit_body(api.hosts, inventory=inventory, playbook=playbook)
    )

    assert status == 422
    problems = {(p["file"], p["field"]): p for p in body["problems"]}
    inv = problems[("site/inventory.yaml", "roles.app.colour")]
    assert inv["line"] is not None and "colour" in inventory.splitlines()[inv["line"] - 1]
    pb = problems[("playbook.yaml", "phases[1].batch")]
    assert "batch: lots" in PLAYBOOK.replace("batch: 1", "batch: lots").splitlines()[pb["line"] - 1]


async def test_yaml_syntax_error_and_unknown_shipped_playbook(api: Api) -> None:
    body = submit_body(api.hosts, inventory="hosts: [unclosed\n", playbook_name="nvoa")
    del body["playbook"]
    status, answer = await api.call("POST", "/v1/upgrades", body)

    assert status == 422
    messages = {(p["file"], p["field"]): p["message"] for p in answer["problems"]}
    assert "YAML syntax error" in messages[("site/inventory.yaml", None)]
    assert "did you mean 'nova'" in messages[("request body", "playbook_name")]


async def test_content_type_size_and_header_limits(api: Api) -> None:
    resp = await api.client.post("/v1/upgrades", data=b"{}", headers=AUTH)
    assert resp.status == 415
    big = submit_body(api.hosts, inventory="#" * (300 * 1024))
    status, body = await api.call("POST", "/v1/upgrades", big)
    assert status == 413
    assert body["status"] == 413
    status, body = await api.call(
        "POST", "/v1/upgrades", submit_body(api.hosts), headers={"Idempotency-Key": "x" * 201}
    )
    assert status == 400
    status, body = await api.call(
        "GET", "/v1/upgrades/nope/events", headers={"Last-Event-ID": "seven"}
    )
    assert status == 404  # the upgrade is checked first
    assert (await api.ok("GET", "/v1/upgrades"))["upgrades"] == []


async def test_unknown_upgrade_is_404_everywhere(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/upgrades/u-none"),
        ("GET", "/v1/upgrades/u-none/plan"),
        ("GET", "/v1/upgrades/u-none/events"),
        ("POST", "/v1/upgrades/u-none/approve"),
    ]:
        status, body = await api.call(method, path)
        assert status == 404, path
        # issue 13: RFC 9457 problem documents
        assert body == {
            "type": "urn:rolling-orchestrator:error:NotFoundError",
            "title": "Not Found",
            "status": 404,
            "detail": "no upgrade 'u-none'",
            "instance": path,
            "problems": [],
        }
    resp = await api.client.get("/v1/upgrades/u-none", headers=AUTH)
    assert resp.headers["Content-Type"] == "application/problem+json"


# --- the life of an upgrade ---------------------------------------------------


async def test_dry_run_returns_the_plan_and_starts_nothing(api: Api) -> None:
    status, body = await api.call("POST", "/v1/upgrades", submit_body(api.hosts, dry_run=True))

    assert status == 200
    assert (body["id"], body["created"], body["dry_run"], body["upgrade"]) == (
        None,
        False,
        True,
        None,
    )
    assert [p["name"] for p in body["plan"]["phases"]] == ["pin", "roll", "contract", "finish"]
    assert body["plan"]["digest"] == body["digest"]
    assert (await api.ok("GET", "/v1/upgrades"))["upgrades"] == []
    assert not (api.hosts.host_dir("host-1") / "pin").exists()


async def test_the_plan_is_encoded_once_and_off_the_event_loop(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 2,000 hosts encoding the plan took 80 ms of the loop every status
    read shares, on every GET of /plan; now one worker thread's time, once."""
    threads: list[str] = []
    to_data = model.to_data

    def recording(plan: model.Plan) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return to_data(plan)

    monkeypatch.setattr(model, "to_data", recording)
    resp = await api.client.post("/v1/upgrades", json=submit_body(api.hosts), headers=AUTH)
    created = json.loads(await resp.read())
    assert resp.status == 201
    upgrade_id = created["id"]
    raw = [
        await (await api.client.get(f"/v1/upgrades/{upgrade_id}/plan", headers=AUTH)).read()
        for _ in range(3)
    ]
    assert threads and threading.main_thread().name not in threads
    assert len(threads) == 1  # the submit's answer encoded it; the GETs reuse it
    up = api.manager.get(upgrade_id)
    # byte for byte what json.dumps of the whole answer gave before
    assert raw == [json.dumps(plan_data(up.plan, up.digest), separators=(",", ":")).encode()] * 3
    assert created["plan"] == json.loads(raw[0])
    assert list(created)[-1] == "plan"


async def test_submit_pause_resume_approve_point_of_no_return(api: Api) -> None:
    resp = await api.client.post("/v1/upgrades", json=submit_body(api.hosts), headers=AUTH)
    created = await resp.json()
    assert resp.status == 201
    upgrade_id = created["id"]
    assert resp.headers["Location"] == f"/v1/upgrades/{upgrade_id}"
    assert created["upgrade"]["state"] in ("pending", "preflight", "running")

    # host-1 is in its rolling step; pause takes effect before host-2 starts
    await api.wait_step(upgrade_id, "roll", "host-1", "running")
    paused = await api.ok("POST", f"/v1/upgrades/{upgrade_id}/pause")
    assert paused["state"] == "paused"
    release(api.hosts, "host-1")
    await api.wait_step(upgrade_id, "roll", "host-1", "done")
    await asyncio.sleep(0.3)
    doc = await api.status(upgrade_id)
    assert doc["state"] == "paused"
    assert step_state(doc, "roll", "host-2") == "pending"
    assert doc["next"].startswith("resume")

    # the status document: phases, batches, hosts, steps, output, progress
    roll = doc["phases"][1]
    assert (roll["name"], roll["kind"], roll["hosts_total"], roll["hosts_finished"]) == (
        "roll",
        "rolling",
        3,
        1,
    )
    host1 = roll["batches"][0]["hosts"][0]
    assert host1["state"] == "done"
    assert host1["steps"][0]["exit"] == 0
    assert host1["steps"][0]["started_at"] <= host1["steps"][0]["finished_at"]
    assert doc["progress"]["phases_done"] == 1
    assert doc["point_of_no_return"] == "contract"

    status, body = await api.call("POST", f"/v1/upgrades/{upgrade_id}/approve")
    assert status == 409
    assert "nothing waits for approval" in body["detail"]

    assert (await api.ok("POST", f"/v1/upgrades/{upgrade_id}/resume"))["state"] == "running"
    release(api.hosts)
    doc = await api.wait_state(upgrade_id, "waiting_approval")
    assert doc["next"].startswith("approve")
    assert (await api.ok("POST", f"/v1/upgrades/{upgrade_id}/approve"))["state"] == "running"

    # past the point of no return, rollback is refused, naming it
    await poll(lambda: api.status(upgrade_id), lambda doc: doc["point_of_no_return_passed"])
    status, body = await api.call("POST", f"/v1/upgrades/{upgrade_id}/rollback")
    assert status == 409
    assert "contract" in body["detail"]
    assert "point of no return" in body["detail"]

    finish(api.hosts)
    doc = await api.wait_state(upgrade_id, "succeeded", "failed")
    assert doc["state"] == "succeeded"
    assert (doc["eta_s"], doc["progress"]["fraction"]) == (0.0, 1.0)
    # the next upgrade of this playbook has an estimate: this one's host times
    past = api.manager.history("lab")
    assert past.upgrades == 1 and set(past.per_host) == {"pin", "roll", "contract", "finish"}
    assert doc["terminal"] is True
    for name in api.hosts.names:
        assert (api.hosts.host_dir(name) / "version").read_text().strip() == "2.0"

    plan = await api.ok("GET", f"/v1/upgrades/{upgrade_id}/plan")
    assert plan["digest"] == created["digest"] == doc["digest"]
    listing = await api.ok("GET", "/v1/upgrades")
    assert [(u["id"], u["state"]) for u in listing["upgrades"]] == [(upgrade_id, "succeeded")]

    metrics = await api.ok("GET", "/metrics")
    assert 'orchestrator_upgrades{state="succeeded"} 1.0' in metrics
    assert 'orchestrator_step_duration_seconds_count{outcome="ok"} 8.0' in metrics
    assert 'orchestrator_step_duration_seconds_bucket{le="+Inf",outcome="ok"} 8.0' in metrics
    assert "\norchestrator_leader 1.0\n" in metrics  # on SQLite, the sole daemon leads
    # issue 13: through prometheus-client, with build info and process metrics
    assert re.search(r'orchestrator_build_info\{python="3[.\d]+",version="[^"]+"\} 1\.0', metrics)
    assert "process_resident_memory_bytes " in metrics
    assert "process_open_fds " in metrics
    assert "python_info{" in metrics


async def test_one_active_upgrade_per_inventory_and_idempotency_keys(api: Api) -> None:
    key = {"Idempotency-Key": "change-4711"}
    status, first = await api.call("POST", "/v1/upgrades", submit_body(api.hosts), headers=key)
    assert status == 201

    status, again = await api.call("POST", "/v1/upgrades", submit_body(api.hosts), headers=key)
    assert (status, again["id"], again["created"]) == (200, first["id"], False)

    status, body = await api.call("POST", "/v1/upgrades", submit_body(api.hosts))
    assert status == 409
    assert first["id"] in body["detail"]

    other = submit_body(api.hosts, to_version="3.0")
    status, body = await api.call("POST", "/v1/upgrades", other, headers=key)
    assert status == 409
    assert "Idempotency-Key" in body["detail"]
    assert len((await api.ok("GET", "/v1/upgrades"))["upgrades"]) == 1


async def test_rollback_before_the_point_of_no_return_restores_every_host(api: Api) -> None:
    upgrade_id = await api.submit()
    await api.wait_step(upgrade_id, "roll", "host-1", "running")
    release(api.hosts, "host-1")
    await api.wait_step(upgrade_id, "roll", "host-2", "running")

    answer = await api.ok("POST", f"/v1/upgrades/{upgrade_id}/rollback")
    assert answer["state"] == "rolling_back"
    release(api.hosts, "host-2")
    doc = await api.wait_state(upgrade_id, "rolled_back", "failed")

    assert doc["state"] == "rolled_back", doc["reason"]
    for name in api.hosts.names:
        directory = api.hosts.host_dir(name)
        assert (directory / "version").read_text().strip() == "1.0"
        assert not (directory / "pin").exists()
    status, body = await api.call("POST", f"/v1/upgrades/{upgrade_id}/rollback")
    assert status == 409
    assert "rolled_back" in body["detail"]


async def test_the_status_shows_where_a_health_check_stands(api: Api) -> None:
    """Issue 13: while a host was being checked the screen did not change."""
    inventory = yaml.safe_load(inventory_text(api.hosts))
    inventory["roles"]["app"]["health"] = [{"run": "test ! -f sick"}]
    inventory["roles"]["app"]["health_policy"] = {"passes": 3, "interval": "50ms", "deadline": 60}
    sick = api.hosts.host_dir("host-1") / "sick"
    sick.touch()
    release(api.hosts)
    upgrade_id = await api.submit(inventory=yaml.safe_dump(inventory))

    def health(doc: dict[str, Any]) -> dict[str, Any] | None:
        for phase in doc["phases"]:
            for batch in phase["batches"]:
                for host in batch["hosts"]:
                    if phase["name"] == "roll" and host["host"] == "host-1":
                        found: dict[str, Any] | None = host["health"]
                        return found
        return None

    doc = await poll(lambda: api.status(upgrade_id), lambda d: health(d) is not None)
    first = health(doc)
    assert first is not None
    assert (first["passes"], first["needed"], first["deadline_s"]) == (0, 3, 60.0)
    assert "exited 1" in first["last"]
    # it ticks without a journal event: rounds go on while the host is sick
    later = await poll(
        lambda: api.status(upgrade_id),
        lambda d: (h := health(d)) is not None and h["elapsed_s"] > first["elapsed_s"],
    )
    assert later["last_event"] == doc["last_event"]
    sick.unlink()
    finish(api.hosts)
    doc = await api.wait_state(upgrade_id, "waiting_approval", "rolled_back")
    assert doc["state"] == "waiting_approval"
    assert health(doc) is None  # done: no check under way


async def test_metrics_count_failed_health_checks_and_failed_steps(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = yaml.safe_load(inventory_text(api.hosts))
    inventory["roles"]["app"]["health"] = [{"run": "test ! -f sick"}]
    inventory["roles"]["app"]["health_policy"] = {"passes": 1, "interval": "50ms", "deadline": 0.3}
    (api.hosts.host_dir("host-2") / "sick").touch()
    release(api.hosts)
    upgrade_id = await api.submit(inventory=yaml.safe_dump(inventory))

    doc = await api.wait_state(upgrade_id, "rolled_back", "failed")

    assert doc["state"] == "rolled_back"
    metrics = await api.ok("GET", "/metrics")
    failures = [
        line
        for line in metrics.splitlines()
        if line.startswith('orchestrator_health_check_failures_total{phase="roll"}')
    ]
    assert len(failures) == 1
    assert float(failures[0].split()[-1]) >= 1
    assert 'orchestrator_upgrades{state="rolled_back"} 1.0' in metrics
    # issue 13: the first failure is one warning-level line, with its cause
    said = [line for line in capsys.readouterr().out.splitlines() if "first failure" in line]
    assert len(said) == 1, said
    assert "warning" in said[0] and "host=host-2" in said[0] and "what=health" in said[0]
    assert "# TYPE orchestrator_step_duration_seconds histogram" in metrics
    assert 'orchestrator_hosts{state="pending"} 0.0' in metrics  # terminal: not counted


# --- events -------------------------------------------------------------------


async def read_events(
    api: Api, upgrade_id: str, *, last_event_id: str | None = None, limit: int | None = None
) -> list[tuple[str | None, str, str]]:
    """(id, event, data) of each SSE event, until the stream ends or `limit` events."""
    headers = {**AUTH, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    resp = await api.client.get(f"/v1/upgrades/{upgrade_id}/events", headers=headers)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    events: list[tuple[str | None, str, str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(20):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                events.append((fields.get("id"), fields.get("event", "message"), fields["data"]))
                if limit is not None and len(events) >= limit:
                    break
            fields = {}
    resp.close()
    return events


async def test_events_stream_to_the_end_and_resume_after_last_event_id(api: Api) -> None:
    upgrade_id = await api.submit(playbook=PLAYBOOK.split("  - name: contract", maxsplit=1)[0])
    await api.wait_step(upgrade_id, "roll", "host-1", "running")

    first = await read_events(api, upgrade_id, limit=5)
    assert [e[0] for e in first] == ["1", "2", "3", "4", "5"]
    assert first[0][1] == "upgrade.state"
    assert json.loads(first[0][2])["data"] == {"v": 1, "state": "preflight"}

    release(api.hosts)
    rest = await read_events(api, upgrade_id, last_event_id="5")
    assert rest[-1][1] == "end"
    assert json.loads(rest[-1][2])["state"] == "succeeded"
    seqs = [int(e[0]) for e in rest if e[0] is not None]
    assert seqs == list(range(6, 6 + len(seqs)))
    # the whole stream again, from the start, matches the two halves
    whole = await read_events(api, upgrade_id)
    assert whole == first + rest

    status, body = await api.call(
        "GET", f"/v1/upgrades/{upgrade_id}/events", headers={"Last-Event-ID": "seven"}
    )
    assert status == 400
    assert "Last-Event-ID" in body["detail"]


# --- secrets -------------------------------------------------------------------


async def test_no_secret_in_any_response_event_or_log(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-value-8842"
    monkeypatch.setenv("LAB_DB_PASSWORD", secret)
    inventory = yaml.safe_load(inventory_text(api.hosts))
    inventory["secrets"] = {"db_password": {"env": "LAB_DB_PASSWORD"}}
    playbook = PLAYBOOK.replace(
        'undo: "rm -f pin"',
        'undo: "rm -f pin"}\n      - {run: "echo connecting with {{ secrets.db_password }}"',
    ).split("  - name: contract", maxsplit=1)[0]
    with capture_logs() as logs:
        upgrade_id = await api.submit(inventory=yaml.safe_dump(inventory), playbook=playbook)
        release(api.hosts)
        doc = await api.wait_state(upgrade_id, "succeeded", "failed")
        events = await read_events(api, upgrade_id)
        listing = await api.ok("GET", "/v1/upgrades")
        plan = await api.ok("GET", f"/v1/upgrades/{upgrade_id}/plan")
        metrics = await api.ok("GET", "/metrics")

    assert doc["state"] == "succeeded", doc["reason"]
    outputs = [
        s["output"] for b in doc["phases"][0]["batches"] for h in b["hosts"] for s in h["steps"]
    ]
    assert any("connecting with ***" in out for out in outputs), outputs
    everything = json.dumps([doc, events, listing, plan, metrics, logs], default=str)
    assert secret not in everything
    assert TOKEN not in everything
