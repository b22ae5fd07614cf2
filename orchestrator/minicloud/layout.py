"""The minicloud directory: hosts, their configuration, the shared database.

```
DIR/cloud.json                 the description create_cloud returned
DIR/db.sqlite                  shared database (WAL)
DIR/bin/minicloud-ctl          on every host's PATH: exec <python> -m orchestrator.minicloud.ctl
DIR/bin/minicloud-manage       on PATH: the manage command of the release the host points at
DIR/hosts/NAME/etc/minicloud.conf
DIR/hosts/NAME/releases/R/bin/minicloud-manage
                               release R's code, installed side by side (a venv per release)
DIR/hosts/NAME/release         the release this host's services point at: 1.0 or 2.0
DIR/hosts/NAME/run/SERVICE.pid
DIR/hosts/NAME/log/SERVICE.log
```

Releases are deployed the way openstack-ansible deploys services: each
release's code in its own directory beside the others (its venv), and the
host's services pointing at one of them. `minicloud-ctl stage R` puts R's code
on the host without touching what runs; `minicloud-ctl install R` stages it if
need be and points the services at it (a restart runs it). So the schema
sync runs with the new release's code (`releases/2.0/bin/minicloud-manage db
expand`) before any service has moved, as upstream asks, while 1.0's
`minicloud-manage` refuses to do 2.0's schema work (see `manage`).

Every command finds its host directory from `HOST_DIR` or the working
directory, so the same command line works on every host.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import random
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.minicloud import MinicloudError, db

RELEASES = ("1.0", "2.0")
SERVICES = ("conductor", "api", "compute")
PREFIX = {"conductor": "ctl", "api": "api", "compute": "cmp"}
CONFIG = "etc/minicloud.conf"
FAULT_FILE = "etc/fault"
RELEASES_DIR = "releases"  # DIR/hosts/NAME/releases/R: release R's code
MANAGE = "bin/minicloud-manage"  # inside a release directory
LOOPBACK = "127.0.0.1"
MIN_PORT = 20000  # lowest port create_cloud hands out
# the package root, so the wrappers work from any directory without an install
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    roles: tuple[str, ...]
    directory: Path
    ports: Mapping[str, int]

    def url(self, service: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[service]}"


@dataclass(frozen=True, slots=True)
class Cloud:
    """What create_cloud made: where everything is and which ports it listens on."""

    directory: Path
    hosts: tuple[Host, ...]
    lb_port: int
    lb_api_port: int

    @property
    def db(self) -> Path:
        return self.directory / "db.sqlite"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise MinicloudError(f"no host '{name}' in {self.directory}")

    def by_role(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if role in h.roles)

    def env(self) -> dict[str, str]:
        """The environment of a command on a host: the cloud's bin/ first on PATH."""
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env.pop("HOST_DIR", None)
        return env

    def to_json(self) -> str:
        return json.dumps(
            {
                "directory": str(self.directory),
                "lb_port": self.lb_port,
                "lb_api_port": self.lb_api_port,
                "hosts": [
                    {"name": h.name, "roles": list(h.roles), "ports": dict(h.ports)}
                    for h in self.hosts
                ],
            },
            indent=2,
        )


@dataclass(frozen=True, slots=True)
class HostConfig:
    """One host's etc/minicloud.conf, as a service or command reads it at start."""

    directory: Path
    host: str
    roles: tuple[str, ...]
    db: Path
    cloud_dir: Path
    conductor_urls: tuple[str, ...]
    ports: Mapping[str, int]
    pin: str | None

    def port(self, service: str) -> int:
        if service not in self.ports:
            raise MinicloudError(f"host {self.host} does not run '{service}'")
        return self.ports[service]


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        low, high = (int(v) for v in text.split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


# the ports free_ports has handed out in this process: a port is free only
# until whoever asked binds it, and another call in between (the next server
# of the same cloud) must not pick it too
_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, all held open until all are found,
    none handed out before by this process (until it has used most of them).

    Chosen outside the kernel's ephemeral range when there is room: a service
    keeps its port across restarts, and while it is down no `bind(0)` or
    outgoing connection elsewhere on the machine can take it from there.
    """
    low, high = _ephemeral_range()
    if low - MIN_PORT >= 1000:
        candidates = range(MIN_PORT, low)
    elif 65535 - high >= 1000:
        candidates = range(high + 1, 65536)
    else:
        candidates = range(0)  # no room outside it: let the kernel choose
    if len(candidates) - len(_HANDED_OUT) < max(1000, count):
        _HANDED_OUT.clear()  # most are taken: the oldest have long been bound
    fresh = [port for port in candidates if port not in _HANDED_OUT]
    order = random.sample(fresh, len(fresh))
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in [*order, *[0] * count]:
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(sock.getsockname()[1])
        _HANDED_OUT.update(ports)
        return ports


def _wrapper(name: str, module: str, args: str) -> str:
    root = str(PACKAGE_ROOT).replace("'", "'\\''")
    return (
        "#!/bin/sh\n"
        f"# {name}: generated by orchestrator.minicloud.layout\n"
        f"PYTHONPATH='{root}'${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {sys.executable} -m orchestrator.minicloud.{module} {args}"$@"\n'
    )


def _write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


def _config_text(
    host: Host, cloud_dir: Path, conductor_urls: list[str], pin: str | None = None
) -> str:
    lines = [
        "[DEFAULT]",
        f"host = {host.name}",
        f"roles = {','.join(host.roles)}",
        f"cloud_dir = {cloud_dir}",
        f"db = {cloud_dir / 'db.sqlite'}",
        f"conductor_urls = {','.join(conductor_urls)}",
        "",
    ]
    for service in host.roles:
        lines += [f"[{service}]", f"port = {host.ports[service]}", ""]
    lines += ["[upgrade_levels]"]
    if pin is not None:
        lines.append(f"compute = {pin}")
    return "\n".join(lines) + "\n"


def create_cloud(
    directory: Path | str, conductors: int = 2, apis: int = 2, computes: int = 3
) -> Cloud:
    """Write a fresh cloud at release 1.0 into `directory` (created if missing)."""
    root = Path(directory).resolve()
    if (root / "cloud.json").exists():
        raise MinicloudError(f"{root} already holds a minicloud")
    counts = {"conductor": conductors, "api": apis, "compute": computes}
    if conductors < 1 or apis < 1 or computes < 1:
        raise MinicloudError("a minicloud needs at least one conductor, api and compute")
    ports = iter(free_ports(sum(counts.values()) + 2))
    hosts = tuple(
        Host(
            name=f"{PREFIX[role]}-{i}",
            roles=(role,),
            directory=root / "hosts" / f"{PREFIX[role]}-{i}",
            ports={role: next(ports)},
        )
        for role in SERVICES
        for i in range(1, counts[role] + 1)
    )
    cloud = Cloud(directory=root, hosts=hosts, lb_port=next(ports), lb_api_port=next(ports))
    bin_dir = cloud.bin_dir
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, args in (("minicloud-ctl", ""), ("minicloud-manage", "manage ")):
        _write_executable(bin_dir / name, _wrapper(name, "ctl", args))
    urls = [h.url("conductor") for h in cloud.by_role("conductor")]
    for host in hosts:
        for sub in ("etc", "run", "log"):
            (host.directory / sub).mkdir(parents=True, exist_ok=True)
        (host.directory / CONFIG).write_text(_config_text(host, root, urls), encoding="utf-8")
        stage_release(host.directory, "1.0")
        write_release(host.directory, "1.0")
    db.init_db(cloud.db)
    (root / "cloud.json").write_text(cloud.to_json() + "\n", encoding="utf-8")
    return cloud


def load_cloud(directory: Path | str) -> Cloud:
    """The description of a cloud create_cloud wrote earlier."""
    root = Path(directory).resolve()
    try:
        data = json.loads((root / "cloud.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinicloudError(f"{root} is not a minicloud (no cloud.json)") from None
    hosts = tuple(
        Host(
            name=h["name"],
            roles=tuple(h["roles"]),
            directory=root / "hosts" / h["name"],
            ports=dict(h["ports"]),
        )
        for h in data["hosts"]
    )
    return Cloud(root, hosts, int(data["lb_port"]), int(data["lb_api_port"]))


def host_dir() -> Path:
    """This host's directory: $HOST_DIR, else the working directory."""
    directory = Path(os.environ.get("HOST_DIR") or os.getcwd()).resolve()
    if not (directory / CONFIG).is_file():
        raise MinicloudError(
            f"{directory} is not a minicloud host directory (no {CONFIG}); "
            "run from the host's directory or set HOST_DIR"
        )
    return directory


def read_host_config(directory: Path) -> HostConfig:
    parser = configparser.ConfigParser(interpolation=None)
    path = directory / CONFIG
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise MinicloudError(f"{path}: {exc}") from None
    defaults = parser.defaults()
    try:
        roles = tuple(r.strip() for r in defaults["roles"].split(",") if r.strip())
        ports = {s: parser.getint(s, "port") for s in roles}
        host, db_path, cloud_dir = defaults["host"], defaults["db"], defaults["cloud_dir"]
    except (KeyError, ValueError, configparser.Error) as exc:
        raise MinicloudError(f"{path}: missing or bad setting: {exc}") from None
    pin = None
    if parser.has_section("upgrade_levels"):
        raw = parser.get("upgrade_levels", "compute", fallback="").strip().strip("\"'")
        pin = raw or None
    if pin is not None and pin not in RELEASES:
        raise MinicloudError(
            f"{path}: [upgrade_levels] compute = {pin!r}; expected one of {', '.join(RELEASES)}"
        )
    urls = tuple(u.strip() for u in defaults.get("conductor_urls", "").split(",") if u.strip())
    return HostConfig(
        directory=directory,
        host=host,
        roles=roles,
        db=Path(db_path),
        cloud_dir=Path(cloud_dir),
        conductor_urls=urls,
        ports=ports,
        pin=pin,
    )


def read_release(directory: Path) -> str:
    try:
        release = (directory / "release").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise MinicloudError(f"{directory}: nothing installed (no release file)") from None
    if release not in RELEASES:
        raise MinicloudError(f"{directory}/release holds {release!r}, not a known release")
    return release


def write_release(directory: Path, release: str) -> None:
    """Point the host's services at `release`, whose code must be on the host."""
    if release not in RELEASES:
        raise MinicloudError(f"unknown release {release!r}; known: {', '.join(RELEASES)}")
    if release not in staged_releases(directory):
        raise MinicloudError(f"{directory}: release {release} is not installed (not staged)")
    tmp = directory / "release.tmp"
    tmp.write_text(release + "\n", encoding="utf-8")
    tmp.replace(directory / "release")


def release_dir(directory: Path, release: str) -> Path:
    return directory / RELEASES_DIR / release


def staged_releases(directory: Path) -> tuple[str, ...]:
    """The releases whose code is on this host, side by side, oldest first."""
    return tuple(r for r in RELEASES if (release_dir(directory, r) / MANAGE).is_file())


def stage_release(directory: Path, release: str) -> bool:
    """Put `release`'s code on the host beside the others (False: already there).

    Touches nothing that runs: the services keep the release they point at.
    Built aside and renamed into place, so a half-staged release never counts.
    """
    if release not in RELEASES:
        raise MinicloudError(f"unknown release {release!r}; known: {', '.join(RELEASES)}")
    if release in staged_releases(directory):
        return False
    target = release_dir(directory, release)
    building = target.with_name(f".{release}.staging")
    shutil.rmtree(building, ignore_errors=True)
    name = f"minicloud-manage of release {release}"
    _write_executable(building / MANAGE, _wrapper(name, "manage", f"--release {release} "))
    shutil.rmtree(target, ignore_errors=True)  # a leftover without its manage command
    building.replace(target)
    return True


def faults(directory: Path) -> set[str]:
    """Injected faults: the lines of etc/fault (e.g. `unhealthy-2.0`)."""
    try:
        text = (directory / FAULT_FILE).read_text(encoding="utf-8")
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def set_pin(directory: Path, pin: str | None) -> None:
    """Set (or with None remove) `[upgrade_levels] compute`, as the playbook's config step does."""
    path = directory / CONFIG
    parser = configparser.ConfigParser(interpolation=None)
    with path.open(encoding="utf-8") as f:
        parser.read_file(f)
    if not parser.has_section("upgrade_levels"):
        parser.add_section("upgrade_levels")
    if pin is None:
        parser.remove_option("upgrade_levels", "compute")
    else:
        parser.set("upgrade_levels", "compute", pin)
    with path.open("w", encoding="utf-8") as f:
        parser.write(f)
