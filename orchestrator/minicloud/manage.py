"""`minicloud-manage`: the database commands of an upgrade, run on a conductor host.

```
minicloud-manage db expand                     add the 2.0 tables (idempotent)
minicloud-manage db migrate-data [--max-count N]
                                               "N migrated, M remaining"; exit 1 while
                                               rows remain, 0 when done
minicloud-manage db contract [--check|--done]  drop instances.host; exit 2 and say why
                                               while a 1.0 service is alive or rows
                                               are unmigrated (--check: only say;
                                               --done: exit 0 if contracted, else 1)
minicloud-manage db status                     schema state and row counts
minicloud-manage service-versions [--json]     the services table
minicloud-manage version                       the release this code is
```

Each run is the code of one release, as `nova-manage` is the code of the venv
it comes from: `releases/R/bin/minicloud-manage` on a host is release R's
(staged there by `minicloud-ctl stage R` or `install R`), and the
`minicloud-manage` on PATH is the release the host's services point at.
(`--release R` names the code explicitly; the per-release wrappers pass it,
and it is refused unless R is staged on this host.)

Old code knows nothing of newer schemas: release 1.0's `db expand` cannot
expand for 2.0, and `migrate-data` and `contract` are 2.0 commands, so 1.0's
refuse all three (exit 2, saying which code to run). `db status`,
`service-versions` and `version` work in every release. An upgrade therefore
stages the new code where the schema sync runs and expands with it, before
any service restarts, as upstream asks.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from orchestrator.minicloud import MinicloudError, db
from orchestrator.minicloud.layout import (
    MANAGE,
    RELEASES,
    RELEASES_DIR,
    host_dir,
    read_host_config,
    read_release,
    staged_releases,
)

NEWEST = RELEASES[-1]
# the schema commands each release's code has; 1.0's knows only its own schema
SCHEMA_COMMANDS: dict[str, frozenset[str]] = {
    "1.0": frozenset(),
    "2.0": frozenset({"expand", "migrate-data", "contract"}),
}


class WrongRelease(MinicloudError):
    """This release's code cannot do what was asked: run another release's."""

    exit_code = 2


def newer_code(release: str, action: str) -> str:
    """Why `release`'s `db ACTION` refuses, and which code to run instead."""
    why = {
        "expand": f"release {release} knows no schema newer than {release}",
        "migrate-data": f"release {release} has no online data migrations (they come with "
        f"{NEWEST})",
        "contract": f"a {NEWEST} command; release {release} has nothing to contract",
    }[action]
    return (
        f"db {action}: {why}; run it with the new release's code: `minicloud-ctl stage "
        f"{NEWEST}`, then `{RELEASES_DIR}/{NEWEST}/{MANAGE} db {action}`"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicloud-manage", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--release",
        choices=RELEASES,
        help="whose code this is (default: the release this host's services point at)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dbp = sub.add_parser("db", help="schema and data migrations")
    dbsub = dbp.add_subparsers(dest="action", required=True)
    dbsub.add_parser("expand", help="add the 2.0 tables")
    migrate = dbsub.add_parser("migrate-data", help="online data migration")
    migrate.add_argument("--max-count", type=int, default=None, metavar="N")
    contract = dbsub.add_parser("contract", help="drop what 1.0 used")
    how = contract.add_mutually_exclusive_group()
    how.add_argument("--check", action="store_true", help="only report whether it may")
    how.add_argument("--done", action="store_true", help="exit 0 if contracted, 1 if not")
    dbsub.add_parser("status", help="schema state and row counts")
    versions = sub.add_parser("service-versions", help="every service's version and heartbeat")
    versions.add_argument("--json", action="store_true")
    sub.add_parser("version", help="the release this minicloud-manage is")
    return parser


def code_release(directory: Path, requested: str | None) -> str:
    """The release whose code runs: `requested` if staged here, else the host's."""
    if requested is None:
        return read_release(directory)
    staged = staged_releases(directory)
    if requested not in staged:
        raise WrongRelease(
            f"release {requested} is not installed on this host (staged: "
            f"{', '.join(staged) or 'none'}); `minicloud-ctl stage {requested}` puts it there"
        )
    return requested


def service_versions(rows: list[db.ServiceRow], as_json: bool) -> str:
    now = time.time()
    if as_json:
        return json.dumps(
            [
                {
                    "binary": r.binary,
                    "host": r.host,
                    "version": r.version,
                    "pin": r.pin,
                    "port": r.port,
                    "age": round(now - r.heartbeat, 3),
                    "alive": r.alive(now),
                }
                for r in rows
            ],
            indent=2,
        )
    lines = [f"{'BINARY':<10} {'HOST':<10} VERSION PIN  {'AGE':>7}  STATE"]
    for r in rows:
        lines.append(
            f"{r.binary:<10} {r.host:<10} {r.version:<7} {r.pin or '-':<4} "
            f"{now - r.heartbeat:>6.1f}s  {'up' if r.alive(now) else 'down'}"
        )
    return "\n".join(lines)


def run(argv: list[str]) -> tuple[int, str]:
    args = _parser().parse_args(argv)
    directory = host_dir()
    release = code_release(directory, args.release)
    if args.command == "version":
        return 0, release
    path = read_host_config(directory).db
    if args.command == "service-versions":
        return 0, service_versions(db.services(path), args.json)
    if args.action == "status":
        return 0, json.dumps(db.counts(path))
    if args.action not in SCHEMA_COMMANDS[release]:
        raise WrongRelease(newer_code(release, args.action))
    if args.action == "expand":
        return 0, "expanded: placements added" if db.expand(path) else "already expanded"
    if args.action == "migrate-data":
        if args.max_count is not None and args.max_count < 1:
            return 2, "--max-count must be at least 1"
        migrated, remaining = db.migrate(path, args.max_count)
        return (1 if remaining else 0), f"{migrated} migrated, {remaining} remaining"
    if args.done:
        return (0, "contracted") if db.contracted(path) else (1, "not contracted")
    if args.check:
        reasons = db.contract_blockers(path)
        if reasons:
            return 2, "contract would be refused: " + "; ".join(reasons)
        return 0, "contract may proceed"
    return 0, "contracted: instances.host dropped" if db.contract(path) else "already contracted"


def main(argv: list[str] | None = None) -> int:
    try:
        code, output = run(sys.argv[1:] if argv is None else argv)
    except MinicloudError as exc:
        print(f"minicloud-manage: {exc}", file=sys.stderr)
        return exc.exit_code
    except sqlite3.Error as exc:
        print(f"minicloud-manage: database: {exc}", file=sys.stderr)
        return 1
    print(output, file=sys.stdout if code in (0, 1) else sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
