"""The plan as a readable tree."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator import model, planview
from orchestrator.inventory import parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.planview import (
    describe_action,
    describe_check,
    describe_drain,
    describe_probe,
    render_tree,
    tree_chunks,
)
from orchestrator.playbook import parse_playbook_text

INVENTORY = """\
name: lab
vars: {from_version: "1.0"}
load_balancers:
  lb: {address: "127.0.0.1:9999", backend: web}
roles:
  api:
    version: {http: "http://{{ host.address }}/", json_path: version}
    health: [{http: "http://{{ host.address }}/health", json_path: status, expect: ok}]
    drain: {load_balancer: lb, timeout: 1m}
hosts:
  api-1: {address: 10.0.0.1, roles: [api]}
  api-2: {address: 10.0.0.2, roles: [api]}
"""

PLAYBOOK = """\
name: demo
phases:
  - name: upgrade
    description: one at a time
    rolling: api
    canary_pause: true
    batch_pause: 30s
    steps:
      - run: "install {{ to_version }}"
        undo: "install {{ from_version }}"
        check: "has {{ to_version }}"
    cleanup:
      - {run: "rm -rf /tmp/cache"}
  - name: finish
    once: api
    gate: [all_at_target, {run: "ready", expect_exit: 0}]
    approve: true
    irreversible: true
    steps:
      - {run: "migrate", repeat_while_exit: [1], repeat_interval: 2s, ok_exit: [0, 3]}
"""


def _plan() -> model.Plan:
    inv, inv_doc = parse_inventory_text(INVENTORY, "lab.yaml")
    pb, pb_doc = parse_playbook_text(PLAYBOOK, "demo.yaml")
    return compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0"))


def test_tree_header_and_phase_facts() -> None:
    plan = _plan()
    lines = render_tree(plan).splitlines()

    assert lines[:4] == [
        "Plan demo: 1.0 -> 2.0 on lab (2 hosts, 2 phases)",
        f"digest   {plan.digest}",
        "on failure: rollback",
        "point of no return: phase 'finish'",
    ]
    assert "[1] upgrade  (rolling api; 2 hosts in 2 batches)" in lines
    assert "    one at a time" in lines
    assert "    batch 1; max failures 0; pause after canary; pause 30s between batches" in lines
    assert "[2] finish  (once api; 1 host in 1 batch)" in lines


def test_tree_shows_the_host_procedure_in_order() -> None:
    text = render_tree(_plan())
    start = text.index("  batch 1 (canary): api-1")
    block = text[start : text.index("  batch 2: api-2")].splitlines()

    assert block == [
        "  batch 1 (canary): api-1",
        "    api-1 (api)",
        "      drain   load balancer lb: server web/api-1 drain -> 0 sessions (<= 60s) -> maint;"
        " ready after",
        "      1. run     install 2.0",
        "         undo    install 1.0",
        "         check   has 2.0",
        "      health  3 passes, every 2s, deadline 300s:",
        "              http http://10.0.0.1/health -> 200, status == 'ok'",
        "      version http http://10.0.0.1/ version == target",
        "      cleanup run     rm -rf /tmp/cache",
        "      undrain",
    ]


def test_tree_shows_gates_approval_and_the_point_of_no_return() -> None:
    text = render_tree(_plan())
    finish = text[text.index("[2] finish") :].splitlines()

    assert finish == [
        "[2] finish  (once api; 1 host in 1 batch)",
        "    gate: all 2 probed hosts report the target version",
        "    gate: on api-1: ready exits 0",
        "    approval: waits for the operator",
        "    IRREVERSIBLE: rollback is refused once this phase runs",
        "  batch 1: api-1",
        "    api-1 (api)",
        "      1. run     migrate  (ok exit 0,3; repeat while exit 1 every 2s, at most 1000x)",
    ]


def test_tree_uses_a_given_digest_and_lists_warnings() -> None:
    plan = _plan()
    warned = dataclasses.replace(plan, warnings=("role 'x' has no drain",))

    text = render_tree(warned, digest="abc")

    assert "digest   abc\n" in text
    assert "warning: role 'x' has no drain\n" in text
    assert text.endswith("\n")


def test_describe_actions() -> None:
    assert describe_action(model.RunAction(command="ls")) == "run     ls"
    assert (
        describe_action(model.ConfigAction(file="/f", section="s", key="k", value=None))
        == "config  /f [s] k = <absent>"
    )
    assert describe_action(model.WaitAction(seconds=90)) == "wait    90s"


def test_describe_drains_checks_and_probes() -> None:
    run_drain = model.RunDrain(run="off", undo="on", wait_until="idle", timeout=5)
    http_drain = model.HttpDrain(
        url="http://a/off", undo_url="http://a/on", method="PUT", timeout=5
    )

    assert describe_drain(run_drain) == "run: off; wait until: idle; undo: on"
    assert describe_drain(http_drain) == "PUT http://a/off; undo: PUT http://a/on"
    assert describe_check(model.TcpCheck(address="10.0.0.1", port=22)) == "tcp 10.0.0.1:22"
    assert describe_check(model.CommandCheck(run="true")) == "command true"
    assert (
        describe_check(model.HttpCheck(url="http://a/", expect_status=204, json_path="x"))
        == "http http://a/ -> 204, x present"
    )
    assert describe_probe(model.VersionProbe(run="v")) == "run v"
    assert describe_probe(model.VersionProbe(http="http://a/")) == "http http://a/"


def test_the_tree_comes_in_pieces_a_batch_at_most() -> None:
    plan = _plan()

    chunks = list(tree_chunks(plan, digest="abc"))

    assert "".join(chunks) == render_tree(plan, digest="abc")
    assert sum(chunk.startswith("  batch ") for chunk in chunks) == sum(
        len(p.batches) for p in plan.phases
    )


def test_a_shared_action_is_described_once(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan()
    described: list[model.RunAction | model.ConfigAction | model.WaitAction] = []
    real = planview.describe_action

    def counting(action: model.RunAction | model.ConfigAction | model.WaitAction) -> str:
        described.append(action)
        return real(action)

    monkeypatch.setattr(planview, "describe_action", counting)
    text = render_tree(plan, digest="abc")

    hosts = [h for p in plan.phases for b in p.batches for h in b.hosts]
    actions = [s.action for h in hosts for s in (*h.steps, *h.cleanup)]
    assert text.count("run     install 2.0") == 2  # both api hosts show it
    assert len(described) == len({id(a) for a in actions}) < len(actions)
