"""The command line: exit codes, output formats, error reporting."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import model
from orchestrator.cli import main

NOVA = ["plan", "-i", "inventory.example.yaml", "-p", "nova", "--to", "2026.1"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def test_plan_prints_the_tree(repo_root: Path) -> None:
    code, out, err = _run(NOVA)

    assert (code, err) == (0, "")
    assert out.startswith("Plan nova: 2025.2 -> 2026.1 on example-cloud (13 hosts, 11 phases)\n")
    # nova drops columns in a later release's db sync: nothing here is irreversible
    assert "point of no return" not in out


def test_plan_json_parses_and_carries_its_digest(repo_root: Path) -> None:
    code, out, err = _run([*NOVA, "--json"])

    assert (code, err) == (0, "")
    data = json.loads(out)
    assert len(data["digest"]) == 64
    assert model.from_data(data).digest == data["digest"]
    # the tree shows the same digest
    _, tree, _ = _run(NOVA)
    assert f"digest   {data['digest']}\n" in tree


def test_on_failure_and_from_options(repo_root: Path) -> None:
    code, out, _ = _run([*NOVA, "--json", "--on-failure", "pause", "--from", "2025.1"])

    assert code == 0
    data = json.loads(out)
    assert (data["on_failure"], data["from_version"]) == ("pause", "2025.1")


def test_unknown_playbook_name_suggests_and_exits_2(repo_root: Path) -> None:
    code, out, err = _run(["plan", "-i", "inventory.example.yaml", "-p", "nvoa", "--to", "2026.1"])

    assert (code, out) == (2, "")
    assert err.startswith("error: no playbook file 'nvoa'")
    assert "(did you mean 'nova'?)" in err


def test_usage_errors_exit_2(repo_root: Path) -> None:
    code, out, err = _run(["plan", "-i", "inventory.example.yaml", "-p", "nova"])
    assert (code, out) == (2, "")
    assert "usage: orchestrator plan" in err
    assert "--to" in err

    assert _run([])[0] == 2
    assert _run(["frobnicate"])[0] == 2
    assert _run([*NOVA, "--on-failure", "panic"])[0] == 2


def test_input_errors_from_both_files_are_reported_together(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.yaml"
    inventory.write_text("hosts:\n  cmp-1: {address: 10.0.1.1, rolls: [compute]}\n")
    playbook = tmp_path / "pb.yaml"
    playbook.write_text("name: x\nphases:\n  - {name: a, once: c, stesp: [{run: x}]}\n")

    code, out, err = _run(["plan", "-i", str(inventory), "-p", str(playbook), "--to", "2.0"])

    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: {inventory}:2:30: hosts.cmp-1.rolls: unknown field 'rolls' "
        "(did you mean 'roles'?)",
        f"error: {playbook}:3:5: phases[0].steps: missing required field 'steps'",
        f"error: {playbook}:3:24: phases[0].stesp: unknown field 'stesp' (did you mean 'steps'?)",
    ]


def test_compile_errors_exit_2(repo_root: Path) -> None:
    code, out, err = _run(["plan", "-i", "inventory.example.yaml", "-p", "nova", "--to", "2025.1"])

    assert (code, out) == (2, "")
    assert err == (
        "error: inventory.example.yaml:25:3: vars.from_version: 2025.2 -> 2025.1 is not an "
        "upgrade: the target must be newer\n"
    )


def test_entrypoint_exit_codes(repo_root: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "orchestrator", *NOVA],
        capture_output=True,
        text=True,
        check=False,
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "plan",
            "-i",
            "missing.yaml",
            "-p",
            "nova",
            "--to",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert ok.returncode == 0
    assert ok.stdout.startswith("Plan nova:")
    assert bad.returncode == 2
    assert bad.stderr == "error: missing.yaml: file not found\n"


def test_a_reader_that_goes_away_is_not_a_traceback(repo_root: Path) -> None:
    """`orchestrator plan ... | head`: the pipe closes early; say nothing, exit 1."""
    with subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *NOVA, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the plan is written
        err = process.stderr.read().decode()
        assert process.wait(timeout=30) == 1
    assert err == ""


def test_serve_refuses_a_store_that_is_not_postgresql(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    code, _, err = _run(["serve", "--state-dir", state, "--store", "mysql://u:pw@db/x"])
    assert code == 2
    assert "--store mysql:...: expected a PostgreSQL URL" in err
    assert "pw" not in err
    code, _, err = _run(
        ["serve", "--state-dir", state, "--lease-seconds", "3", "--renew-seconds", "2"]
    )
    assert code == 2
    assert "renew <= lease / 2" in err
    assert not (tmp_path / "state").exists(), "refused before anything was created"


def test_version_and_examples_in_every_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"orchestrator \d+\.\d+\.\d+.*\n", capsys.readouterr().out)
    for command in ("plan", "serve", "submit", "status", "approve", "retry", "demo", "completion"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:\n  orchestrator " + command in text, command


def test_completion_scripts_know_the_commands_and_options() -> None:
    for shell in ("bash", "zsh"):
        code, out, _ = _run(["completion", shell])
        assert code == 0
        for word in ("submit", "approve", "--idempotency-key", "--lease-seconds", "rollback"):
            assert word in out, (shell, word)
    bash = shutil.which("bash")
    if bash is not None:  # the bash script is valid bash
        _, out, _ = _run(["completion", "bash"])
        assert subprocess.run([bash, "-n"], input=out.encode(), check=False).returncode == 0


def test_server_without_a_scheme_is_a_clear_usage_error() -> None:
    code, _, err = _run(["status", "--server", "127.0.0.1:8750"])
    assert code == 2
    assert err == (
        "error: --server 127.0.0.1:8750: give the scheme too, like http://127.0.0.1:8750 "
        "or https://127.0.0.1:8750\n"
    )
    code, _, err = _run(["pause", "u1", "--server", "ftp://h:1"])
    assert (code, err) == (
        2,
        "error: --server ftp://h:1: expected http://HOST:PORT or https://HOST:PORT\n",
    )


def test_an_unreachable_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for argv in (["status"], ["approve", "u1"], ["watch", "u1"]):
        code, _, err = _run([*argv, "--server", f"http://127.0.0.1:{port}"])
        assert code == 3, argv
        assert err.startswith(f"error: cannot reach the daemon at http://127.0.0.1:{port}: "), err
        assert "connection refused; start one with 'orchestrator serve' (in another shell)" in err
