"""Command line. `entrypoint` is the only place that calls sys.exit, and the
only place that turns an OrchestratorError into an exit code."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import quote

from orchestrator.api.endpoint import (
    ACTIONS,
    DEFAULT_LISTEN,
    FILE_NAME_PATTERN,
    HOST_ACTIONS,
    JOURNAL_FILE,
    default_state_dir,
)
from orchestrator.errors import InputError, OrchestratorError, Problem, UsageError

# Everything else loads inside the command that needs it: `--help`,
# `--version` and `completion` import nothing heavier than argparse, and a
# client command never loads the compiler or the server (bench/cli_start.py).
if TYPE_CHECKING:
    import asyncio

    from orchestrator import model
    from orchestrator.client import Client
    from orchestrator.plan import Options
    from orchestrator.quickclient import Endpoint

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.format_usage() + f"{self.prog}: error: {message}")


class _Version(argparse.Action):
    """--version: the installed package's version (read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            number = version("rolling-orchestrator")
        except PackageNotFoundError:  # a source tree that was never installed
            number = "unknown (not installed)"
        print(f"orchestrator {number}")
        parser.exit()


# `orchestrator X --help` ends with these: the commands as an operator types them
EXAMPLES = {
    "plan": "orchestrator plan -i cloud.yaml -p nova --to 2025.2\n"
    "orchestrator plan -i cloud.yaml -p my-playbook.yaml --to 2025.2 --json > plan.json",
    "serve": "orchestrator serve                       # 127.0.0.1:8750, state in "
    "~/.local/state/orchestrator\n"
    "orchestrator serve --listen 10.0.0.5:8750 --tls-cert c.pem --tls-key k.pem\n"
    "ORCHESTRATOR_STORE=postgresql://orch@db/orch orchestrator serve   # one of several peers",
    "submit": "orchestrator submit -i cloud.yaml -p nova --to 2025.2 --watch\n"
    "orchestrator submit -i cloud.yaml -p nova --to 2025.2 --dry-run",
    "status": "orchestrator status                      # every upgrade\n"
    "orchestrator status u20261202-101500-a1b2c3 --json",
    "watch": "orchestrator watch u20261202-101500-a1b2c3",
    "pause": "orchestrator pause u20261202-101500-a1b2c3",
    "resume": "orchestrator resume u20261202-101500-a1b2c3",
    "abort": "orchestrator abort u20261202-101500-a1b2c3",
    "approve": "orchestrator approve u20261202-101500-a1b2c3   # the point of no return",
    "rollback": "orchestrator rollback u20261202-101500-a1b2c3",
    "retry": "orchestrator retry u20261202-101500-a1b2c3 cmp-2",
    "skip": "orchestrator skip u20261202-101500-a1b2c3 cmp-2",
    "demo": "orchestrator demo\norchestrator demo --fail-host cmp-2   # see a rollback",
    "minicloud": "orchestrator minicloud up --dir /tmp/mc\n"
    "orchestrator minicloud status --dir /tmp/mc",
    "token": "orchestrator token new grafana --role viewer",
    "completion": "orchestrator completion bash > ~/.local/share/bash-completion/completions/"
    "orchestrator\norchestrator completion zsh > ~/.zfunc/_orchestrator   # fpath+=~/.zfunc",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description=__doc__)
    parser.add_argument("--version", action=_Version)
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

    _serve_command(sub)

    remote = _Parser(add_help=False)
    remote.add_argument("--server", help="daemon URL (env ORCHESTRATOR_URL; default: local)")
    remote.add_argument("--token", help="bearer token (env ORCHESTRATOR_TOKEN; default: local)")
    remote.add_argument("--cacert", help="CA bundle to verify an HTTPS daemon")

    p = sub.add_parser("submit", parents=[remote], help="submit an upgrade to the daemon")
    p.add_argument("-i", "--inventory", required=True, help="inventory YAML file")
    p.add_argument("-p", "--playbook", required=True, help="playbook file or shipped name (nova)")
    p.add_argument("--from", dest="from_version", help="current version")
    p.add_argument("--to", dest="to_version", required=True, help="target version")
    p.add_argument("--on-failure", choices=["rollback", "pause"], help="override the playbook")
    p.add_argument("--idempotency-key", help="a repeated submit with this key is a no-op")
    p.add_argument("--dry-run", action="store_true", help="let the daemon compile, not run")
    p.add_argument("--watch", action="store_true", help="then watch it to the end")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    p = sub.add_parser("status", parents=[remote], help="one upgrade in detail, or all of them")
    p.add_argument("id", nargs="?", help="upgrade id (default: list every upgrade)")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")

    p = sub.add_parser("watch", parents=[remote], help="follow an upgrade live to its end")
    p.add_argument("id", help="upgrade id")
    p.add_argument(
        "--timeout",
        type=float,
        help="stop watching after this many seconds (exit 3; the upgrade goes on)",
    )

    for action in ACTIONS:
        p = sub.add_parser(action, parents=[remote], help=f"{action} an upgrade")
        p.add_argument("id", help="upgrade id")
    for action, what in HOST_ACTIONS.items():
        p = sub.add_parser(action, parents=[remote], help=f"{what} (on a paused upgrade)")
        p.add_argument("id", help="upgrade id")
        p.add_argument("host", help="a host that failed in the upgrade")

    _local_commands(sub)
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=["bash", "zsh"])
    for name, command in sub.choices.items():
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = "examples:\n" + "\n".join(
            "  " + line for line in EXAMPLES[name].splitlines()
        )
    return parser


def cmd_completion(args: argparse.Namespace, out: TextIO) -> int:
    import shtab  # noqa: PLC0415 - only this command needs it

    out.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the daemon (HTTP API; resumes unfinished upgrades)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default: %(default)s)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="journal, token, lock (default: $ORCHESTRATOR_STATE_DIR, ~/.local/state/orchestrator)",
    )
    p.add_argument("--token-file", type=Path, help="bearer token file (default: STATE_DIR/token)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="bytes per request body")
    p.add_argument(
        "--config",
        type=Path,
        help="tokens, secret sources, limits (YAML; env ORCHESTRATOR_CONFIG; docs/daemon.md)",
    )
    p.add_argument(
        "--insecure-no-tls",
        action="store_true",
        help="allow plain HTTP beyond loopback (tokens then travel in clear text)",
    )
    p.add_argument(
        "--store",
        help="journal store: postgresql://... shares it with other daemons, one of which "
        "leads (env ORCHESTRATOR_STORE, which keeps a password off the command line; "
        "default: SQLite in STATE_DIR)",
    )
    p.add_argument(
        "--advertise",
        metavar="URL",
        help="with --store postgresql: the URL standbys redirect clients to while this "
        "daemon leads (default: the listen address)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=10.0,
        help="with --store postgresql: how long the leader's lease lasts (default: %(default)s)",
    )
    p.add_argument(
        "--renew-seconds",
        type=float,
        default=2.0,
        help="with --store postgresql: how often the leader renews it and a standby "
        "looks for an expired one (default: %(default)s)",
    )
    p.add_argument(
        "--ssh-max-connections",
        type=_positive,
        metavar="N",
        help="SSH connections open at once, every upgrade together (default: the config's "
        "ssh.max_connections, 256)",
    )
    p.add_argument("--log-format", choices=["json", "console"], default="json")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _local_commands(sub: Any) -> None:
    """`demo` and `minicloud`: everything on this machine, no daemon needed."""
    p = sub.add_parser("demo", help="upgrade a local minicloud under load through the daemon")
    p.add_argument("--computes", type=_positive, default=3, help="compute hosts (at least 2)")
    p.add_argument("--fail-host", help="this host's 2.0 fails its health check: see rollback")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    mc = sub.add_parser("minicloud", help="run or inspect a minicloud by hand")
    mc_sub = mc.add_subparsers(dest="minicloud_command", required=True, parser_class=_Parser)
    p = mc_sub.add_parser(
        "up", help="start a minicloud, print its inventory path, run until stopped"
    )
    p.add_argument(
        "--dir", type=Path, default=Path("minicloud"), help="where (default: ./minicloud)"
    )
    p.add_argument("--conductors", type=_positive, default=2)
    p.add_argument("--apis", type=_positive, default=2)
    p.add_argument("--computes", type=_positive, default=3)
    p = mc_sub.add_parser("status", help="each host's service versions and pins")
    p.add_argument("--dir", type=Path, default=Path("minicloud"), help="the cloud's directory")
    p.add_argument("--json", action="store_true")

    tk = sub.add_parser("token", help="make API tokens for the daemon's --config")
    tk_sub = tk.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    p = tk_sub.add_parser("new", help="print a new token and its line for the config's tokens:")
    p.add_argument("name", help="who uses it (journaled as 'by' with every action)")
    p.add_argument("--role", required=True, choices=["viewer", "operator", "approver"])


def cmd_token(args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator import access  # noqa: PLC0415 - see cmd_demo
    from orchestrator.daemonconfig import NAME  # noqa: PLC0415 - the config's own rule

    if not NAME.match(args.name) or args.name == access.DEFAULT_NAME:
        raise UsageError(f"token name {args.name!r}: letters, digits, '.', '_', '-'; not 'default'")
    token = access.new_token()
    out.write(f"token (give it to {args.name}; it is not stored anywhere): {token}\n")
    out.write("for the daemon's --config, under tokens:\n")
    out.write(f"  {args.name}: {{role: {args.role}, sha256: {access.digest(token).hex()}}}\n")
    return EXIT_OK


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def build(inventory: str, playbook: str, options: Options) -> model.Plan:
    """The plan of an inventory file and a playbook file or shipped name."""
    from orchestrator import pipeline  # noqa: PLC0415 - see the imports
    from orchestrator.pipeline import Source  # noqa: PLC0415

    sources = Source.of_file(inventory), Source.of_playbook_ref(playbook)
    return pipeline.build(*sources, options).plan


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator import model  # noqa: PLC0415 - see the imports
    from orchestrator.pipeline import paused_gc  # noqa: PLC0415
    from orchestrator.plan import Options  # noqa: PLC0415
    from orchestrator.planjson import gathered  # noqa: PLC0415
    from orchestrator.planview import tree_chunks  # noqa: PLC0415

    options = Options(
        to_version=args.to_version, from_version=args.from_version, on_failure=args.on_failure
    )
    # the plan's objects make no garbage cycles (pipeline.paused_gc); they are
    # freed before the collector resumes, or its first pass walks them all
    with paused_gc():
        plan = build(args.inventory, args.playbook, options)
        # written as it is made, a megabyte at a time: a 10,000-host plan is
        # 100 MB of JSON
        chunks = model.json_chunks(plan) if args.json else tree_chunks(plan)
        for chunk in gathered(chunks):
            out.write(chunk)
        out.write("\n" if args.json else estimate_line(plan) + "\n")
        del plan, chunks
    return EXIT_OK


def estimate_line(plan: model.Plan) -> str:
    """The critical path's length, from this user's daemon journal, if it has
    earlier successful upgrades of the same playbook."""
    journal = default_state_dir() / JOURNAL_FILE
    none_yet = (
        f"estimate: none yet (no earlier successful upgrade of playbook {plan.name} "
        f"covering every phase in {journal})"
    )
    if not journal.exists():  # nothing to read: the engine need not load
        return none_yet
    from orchestrator.engine.eta import critical_path, from_journal  # noqa: PLC0415
    from orchestrator.render import duration  # noqa: PLC0415

    past = from_journal(journal, plan.name)
    left = critical_path(plan, past) if past.upgrades else None
    if left is None:
        return none_yet
    runs = f"{past.upgrades} earlier upgrade" + ("s" if past.upgrades != 1 else "")
    return (
        f"estimate: about {duration(left)} along the critical path "
        f"(from {runs} of {plan.name} in {journal}; approval waits not counted)"
    )


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    # the server side (engine, SSH, HTTP app) loads only for `serve`: the client
    # commands stay quick to start
    from orchestrator import eventloop  # noqa: PLC0415 - see above
    from orchestrator.daemon import ServeConfig, serve  # noqa: PLC0415 - see above
    from orchestrator.logs import configure  # noqa: PLC0415
    from orchestrator.store.role import LeaseSettings  # noqa: PLC0415 - see above

    configure(args.log_format, args.log_level)
    config = ServeConfig(
        state_dir=args.state_dir or default_state_dir(),
        listen=args.listen,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_body=args.max_body,
        config_file=args.config or _env_path("ORCHESTRATOR_CONFIG"),
        insecure_no_tls=args.insecure_no_tls,
        store=args.store or os.environ.get("ORCHESTRATOR_STORE") or None,
        lease=LeaseSettings(lease=args.lease_seconds, renew=args.renew_seconds),
        advertise=args.advertise,
        ssh_max_connections=args.ssh_max_connections,
    )
    return _run_async(serve(config), loop_factory=eventloop.new_loop)


def _run_async(
    main: Coroutine[Any, Any, T],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    import asyncio  # noqa: PLC0415 - see the imports

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _remote(
    command: Callable[[Client, argparse.Namespace, TextIO], Awaitable[int]],
) -> Callable[[argparse.Namespace, TextIO], int]:
    """Run a client command in its own event loop with a connected Client."""

    def run(args: argparse.Namespace, out: TextIO) -> int:
        from orchestrator.client import Client, resolve_endpoint  # noqa: PLC0415

        endpoint = resolve_endpoint(args.server, args.token, args.cacert)

        async def go() -> int:
            async with Client(endpoint) as client:
                return await command(client, args, out)

        return _run_async(go())

    return run


def _quick(
    command: Callable[[Endpoint, argparse.Namespace, TextIO], int],
) -> Callable[[argparse.Namespace, TextIO], int]:
    """A one-shot client command: the standard library's HTTP, no event loop."""

    def run(args: argparse.Namespace, out: TextIO) -> int:
        from orchestrator.quickclient import resolve_endpoint  # noqa: PLC0415

        return command(resolve_endpoint(args.server, args.token, args.cacert), args, out)

    return run


def _outcome(doc: dict[str, Any]) -> int:
    return EXIT_OK if doc["state"] == "succeeded" else EXIT_FAILED


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(Problem(file=path, message="file not found")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(Problem(file=path, message=f"cannot read: {exc}")) from None


def _display_name(path: str) -> str:
    """The path as typed, for the daemon's error messages (if it is a plain one)."""
    if re.fullmatch(FILE_NAME_PATTERN, path):
        return path
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(path).name)[:255] or "file"


def submit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The files' text goes to the daemon, which validates and compiles it."""
    body: dict[str, Any] = {
        "inventory": _read(args.inventory),
        "inventory_name": _display_name(args.inventory),
        "to_version": args.to_version,
        "dry_run": args.dry_run,
        "options": {"on_failure": args.on_failure} if args.on_failure else {},
    }
    if args.from_version:
        body["from_version"] = args.from_version
    if Path(args.playbook).is_file():
        body["playbook"] = _read(args.playbook)
        body["playbook_file"] = _display_name(args.playbook)
    elif "/" in args.playbook or args.playbook.endswith((".yaml", ".yml")):
        raise InputError(Problem(file=args.playbook, message="file not found"))
    else:
        body["playbook_name"] = args.playbook
    return body


async def cmd_submit(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator import model  # noqa: PLC0415 - see the imports
    from orchestrator.client import watch  # noqa: PLC0415
    from orchestrator.planview import render_tree  # noqa: PLC0415

    answer = await client.submit(submit_body(args), args.idempotency_key)
    if args.json:
        out.write(json.dumps(answer, indent=2) + "\n")
    elif answer["dry_run"]:
        out.write(render_tree(model.from_data(answer["plan"])))
    else:
        verb = "submitted" if answer["created"] else "already submitted"
        out.write(f"{verb}: {answer['id']} (plan {answer['digest'][:12]})\n")
    out.flush()
    if args.watch and not answer["dry_run"]:
        return _outcome(await watch(client, answer["id"], out))
    return EXIT_OK


def cmd_status(endpoint: Endpoint, args: argparse.Namespace, out: TextIO) -> int:
    from rich.console import Console  # noqa: PLC0415 - see the imports
    from rich.table import Table  # noqa: PLC0415

    from orchestrator.quickclient import request  # noqa: PLC0415
    from orchestrator.render import render_status  # noqa: PLC0415

    console = Console(file=out, highlight=False)
    if args.id is None:
        ups = request(endpoint, "GET", "/v1/upgrades")["upgrades"]
        if args.json:
            out.write(json.dumps(ups, indent=2) + "\n")
            return EXIT_OK
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("id", "state", "playbook", "inventory", "versions"):
            table.add_column(column)
        for up in ups:
            versions = f"{up['from_version']} -> {up['to_version']}"
            table.add_row(up["id"], up["state"], up["name"], up["inventory"], versions)
        console.print(table)
        return EXIT_OK
    doc = request(endpoint, "GET", f"/v1/upgrades/{quote(args.id, safe='')}")
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        console.print(render_status(doc))
    return EXIT_OK


async def cmd_watch(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator.client import watch  # noqa: PLC0415 - see the imports

    try:
        return _outcome(await watch(client, args.id, out, timeout=args.timeout))
    except TimeoutError:
        out.write(f"still {args.id} after {args.timeout:g} s: stopped watching; it goes on\n")
        return EXIT_UNREACHABLE


def cmd_control(endpoint: Endpoint, args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator.quickclient import request  # noqa: PLC0415 - see the imports

    path = f"/v1/upgrades/{quote(args.id, safe='')}/{args.command}"
    host = getattr(args, "host", None)
    if host is not None:
        path = f"/v1/upgrades/{quote(args.id, safe='')}/hosts/{quote(host, safe='')}/{args.command}"
    answer = request(endpoint, "POST", path)
    reason = f" ({answer['reason']})" if answer.get("reason") else ""
    out.write(f"{args.command}: upgrade {answer['id']} is {answer['state']}{reason}\n")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    # minicloud and the demo load only for these commands
    from orchestrator import demo  # noqa: PLC0415 - see above
    from orchestrator.logs import configure  # noqa: PLC0415

    configure("console", "warning")
    if args.computes < 2:
        raise UsageError("--computes: the minicloud playbook needs at least 2 computes")
    summary = _run_async(
        demo.run_demo(
            computes=args.computes,
            fail_host=args.fail_host,
            as_json=args.json,
            out=out,
            keep=demo.env_keep(),
        )
    )
    return demo.exit_code(summary)


def cmd_minicloud(args: argparse.Namespace, out: TextIO) -> int:
    from orchestrator.logs import configure  # noqa: PLC0415
    from orchestrator.minicloud import commands  # noqa: PLC0415 - see cmd_demo

    configure("console", "warning")
    if args.minicloud_command == "up":
        return _run_async(
            commands.up(
                args.dir.resolve(),
                conductors=args.conductors,
                apis=args.apis,
                computes=args.computes,
                out=out,
            )
        )
    if not (args.dir / "db.sqlite").exists():
        raise UsageError(f"--dir {args.dir}: no minicloud there (start one with 'minicloud up')")
    return _run_async(commands.status(args.dir.resolve(), as_json=args.json, out=out))


HANDLERS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "demo": cmd_demo,
    "completion": cmd_completion,
    "token": cmd_token,
    "minicloud": cmd_minicloud,
    "plan": cmd_plan,
    "serve": cmd_serve,
    "submit": _remote(cmd_submit),
    "status": _quick(cmd_status),
    "watch": _remote(cmd_watch),
    **dict.fromkeys((*ACTIONS, *HOST_ACTIONS), _quick(cmd_control)),
}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        return HANDLERS[args.command](args, out)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    except InputError as exc:
        for problem in exc.problems:
            err.write(f"error: {problem}\n")
        return exc.exit_code
    except UsageError as exc:
        text = str(exc)  # argparse's own messages start with the usage line
        err.write(f"{text}\n" if text.startswith("usage:") else f"error: {text}\n")
        return exc.exit_code
    except OrchestratorError as exc:
        err.write(f"error: {exc}\n")
        return exc.exit_code


def entrypoint() -> None:
    # pydantic looks for plugins by reading the entry points of every installed
    # distribution when it builds its first model: 60 ms of every command
    # (a third of `plan`'s imports), and the orchestrator uses none. An
    # operator's own setting stands.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`orchestrator status | head`): not our error.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
