"""Command line. `entrypoint` is the only place that calls sys.exit, and the
only place that turns an OrchestratorError into an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from orchestrator import model
from orchestrator.errors import InputError, OrchestratorError, UsageError
from orchestrator.inventory import load_inventory
from orchestrator.plan import Options, compile_plan
from orchestrator.planview import render_tree
from orchestrator.playbook import load_playbook

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.format_usage() + f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="compile and print a plan (dry run, touches nothing)")
    p.add_argument("-i", "--inventory", required=True, help="inventory YAML file")
    p.add_argument("-p", "--playbook", required=True, help="playbook file or shipped name (nova)")
    p.add_argument(
        "--from", dest="from_version", help="current version (default: vars.from_version)"
    )
    p.add_argument("--to", dest="to_version", required=True, help="target version")
    p.add_argument("--on-failure", choices=["rollback", "pause"], help="override the playbook")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def build(inventory: str, playbook: str, options: Options) -> model.Plan:
    """Load, validate and compile; problems from both files are reported together."""
    problems = []
    loaded_inv = loaded_pb = None
    try:
        loaded_inv = load_inventory(inventory)
    except InputError as exc:
        problems.extend(exc.problems)
    try:
        loaded_pb = load_playbook(playbook)
    except InputError as exc:
        problems.extend(exc.problems)
    if problems or loaded_inv is None or loaded_pb is None:
        raise InputError(problems)
    return compile_plan(loaded_inv[0], loaded_inv[1], loaded_pb[0], loaded_pb[1], options)


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    plan = build(
        args.inventory,
        args.playbook,
        Options(
            to_version=args.to_version,
            from_version=args.from_version,
            on_failure=args.on_failure,
        ),
    )
    if args.json:
        out.write(model.to_json(plan) + "\n")
    else:
        out.write(render_tree(plan))
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        handler = {"plan": cmd_plan}[args.command]
        return handler(args, out)
    except InputError as exc:
        for problem in exc.problems:
            err.write(f"error: {problem}\n")
        return exc.exit_code
    except UsageError as exc:
        err.write(f"{exc}\n")
        return exc.exit_code
    except OrchestratorError as exc:
        err.write(f"error: {exc}\n")
        return exc.exit_code


def entrypoint() -> None:
    sys.exit(main())
