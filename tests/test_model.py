"""Plan values: JSON round trip, digest, immutability."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator import model
from orchestrator.inventory import load_inventory
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import load_playbook


def _step(n: int, action: model.Action) -> model.Step:
    return model.Step(id=f"p/h/{n}", name=f"step {n}", action=action)


def _small_plan(to_version: str = "2.0") -> model.Plan:
    host = model.HostPlan(
        host="h",
        roles=("compute",),
        steps=(
            _step(1, model.RunAction(command="install", repeat_while_exit=(1,))),
            _step(2, model.ConfigAction(file="/f", section="s", key="k", value=None)),
            _step(3, model.WaitAction(seconds=1.5)),
        ),
        drains=(
            model.RunDrain(run="off", undo="on", wait_until=None, timeout=30.0),
            model.LoadBalancerDrain(load_balancer="lb", server="h", backend="b", timeout=5.0),
            model.HttpDrain(url="http://x/off", undo_url="http://x/on", method="POST", timeout=5.0),
        ),
        health=model.Health(
            checks=(
                model.HttpCheck(url="http://h/"),
                model.TcpCheck(address="h", port=22),
                model.CommandCheck(run="true"),
            ),
            passes=3,
            interval=2.0,
            deadline=60.0,
        ),
        version=model.VersionProbe(run="svc --version"),
    )
    phase = model.Phase(
        name="p",
        kind="rolling",
        roles=("compute",),
        batches=(model.Batch(index=1, zone="az1", hosts=(host,), canary=True),),
        gates=(
            model.Gate(kind="all_at_target", probes=(("h", model.VersionProbe(run="v")),)),
            model.Gate(kind="command", run="check", host="h"),
        ),
        max_unavailable=(("compute", 1),),
        irreversible=True,
    )
    target = model.HostTarget(
        name="h",
        address="127.0.0.1",
        port=22,
        user="u",
        key=None,
        known_hosts=None,
        verify_host_keys=True,
        become="none",
        roles=("compute",),
        zone="az1",
        connect_timeout=10.0,
        command_timeout=600.0,
        keepalive_interval=15.0,
    )
    return model.Plan(
        name="t",
        from_version="1.0",
        to_version=to_version,
        inventory="lab",
        on_failure="rollback",
        hosts=(target,),
        load_balancers=(),
        phases=(phase,),
        secrets=(("pw", "env", "PW"),),
        warnings=("careful",),
    )


def test_json_round_trip_restores_an_equal_plan_with_typed_variants() -> None:
    plan = _small_plan()

    back = model.from_json(model.to_json(plan))

    assert back == plan
    host = back.phases[0].batches[0].hosts[0]
    assert [type(s.action) for s in host.steps] == [
        model.RunAction,
        model.ConfigAction,
        model.WaitAction,
    ]
    assert [type(d) for d in host.drains] == [
        model.RunDrain,
        model.LoadBalancerDrain,
        model.HttpDrain,
    ]
    assert host.health is not None
    assert isinstance(host.health.checks[1], model.TcpCheck)
    assert isinstance(back.phases[0].gates[0].probes[0], tuple)


def test_json_carries_the_digest_of_the_plan() -> None:
    plan = _small_plan()

    data = json.loads(model.to_json(plan))

    assert data["digest"] == plan.digest
    assert data["format"] == 1
    assert data["phases"][0]["batches"][0]["hosts"][0]["steps"][0]["action"]["kind"] == "run"


def test_digest_is_deterministic_and_content_sensitive() -> None:
    assert _small_plan().digest == _small_plan().digest
    assert _small_plan().digest != _small_plan(to_version="3.0").digest
    # canonical: key order and indentation do not matter
    assert model.to_json(_small_plan(), indent=None) != model.to_json(_small_plan())
    assert model.from_json(model.to_json(_small_plan(), indent=None)).digest == _small_plan().digest


def test_tampered_plan_is_rejected() -> None:
    data = json.loads(model.to_json(_small_plan()))
    data["phases"][0]["batches"][0]["hosts"][0]["steps"][0]["action"]["command"] = "rm -rf /"

    with pytest.raises(ValueError, match="plan digest mismatch"):
        model.from_data(data)


def test_plan_without_digest_is_accepted() -> None:
    data = json.loads(model.to_json(_small_plan()))
    del data["digest"]

    assert model.from_data(data) == _small_plan()


def test_invalid_plan_data_is_rejected() -> None:
    data = model.to_data(_small_plan())
    data["phases"][0]["batches"][0]["hosts"][0]["steps"][0]["action"]["kind"] = "teleport"

    with pytest.raises(ValidationError):
        model.from_data(data)


def test_values_are_frozen() -> None:
    plan = _small_plan()

    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.name = "other"  # type: ignore[misc]
    assert not hasattr(plan, "__dict__")  # slotted


def test_plan_helpers() -> None:
    plan = _small_plan()

    assert plan.host("h").address == "127.0.0.1"
    assert plan.irreversible_phase() is plan.phases[0]
    assert plan.phases[0].host_count == 1


def test_compiled_example_plan_round_trips(repo_root: Path) -> None:
    inv, inv_doc = load_inventory("inventory.example.yaml")
    pb, pb_doc = load_playbook("nova")
    plan = compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2026.1"))

    back = model.from_json(model.to_json(plan))

    assert back == plan
    assert back.digest == plan.digest
