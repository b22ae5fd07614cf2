"""A real Ironic cloud at release N (2026.1) on this machine, for the shipped playbook to upgrade.

* MariaDB, started by the tier (`tests.openstack.mariadb`), holds the
  ``ironic`` database, its schema created by the old release.
* Two conductor hosts and two API hosts, each a machine of its own: a real
  OpenSSH sshd listening on the host's own loopback address (127.77.0.x),
  whose home directory is the host. Services are real processes of the
  host: ``ironic-conductor`` binds its JSON-RPC server on the host's
  address (``[DEFAULT] host`` is that address, which is how the APIs reach
  it), ``ironic-api`` serves on the host's address.
* A fifth host, ``lb-1``, carries the runtime API socket of a real HAProxy
  that fronts the two APIs (backend ``ironic_api``); the orchestrator drains
  through it over SSH, as in production; the load generator goes through it.
* Releases are the cached virtualenvs of `tests.openstack.releases`, linked
  into each host as ``openstack/venvs/ironic-<release>`` (the playbook's
  ``venvs``); a service's unit starts from ``openstack/current/<service>``
  (the playbook's ``current``), a link to the release it runs.
  ``systemctl`` on the hosts is `tests.openstack.systemctl`.
* Standalone settings, as Ironic documents them for a deployment without
  Keystone or a message queue: ``auth_strategy = noauth``, ``rpc_transport
  = json-rpc``, fake-hardware with fake interfaces, no DHCP, no cleaning.

The inventory it writes (`inventory_data`) is the tier's own; the playbook
is the shipped ``playbooks/ironic.yaml``, unchanged.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import shlex
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from orchestrator.minicloud.layout import free_ports
from tests.integration.realhaproxy import RealHAProxy
from tests.integration.realsshd import DEFAULT_PATH, RealSSHHosts
from tests.openstack.ironicload import MICROVERSION
from tests.openstack.mariadb import MariaDB
from tests.openstack.releases import OLD, RELEASES, Venv
from tests.openstack.tier import Programs

CONDUCTOR, API = "ironic-conductor", "ironic-api"
LB_HOST = "lb-1"
LB_ADDRESS = "127.77.0.5"
BACKEND = "ironic_api"
LOAD_BALANCER = "ironic"
CONF = "etc/ironic/ironic.conf"
VENVS = "openstack/venvs"
CURRENT = "openstack/current"
SYSTEMCTL = Path(__file__).resolve().parent / "systemctl.py"
READY_DEADLINE = 120.0

# the version a service's own running code reports: the program its main
# process was started from (by path, or in the title cotyledon gives it),
# asked for its --version
VERSION_PROBE = (
    'pid=$(systemctl show --property MainPID --value {{ role }}) && test "$pid" != 0'
    " && exe=$(tr '\\0' ' ' < /proc/\"$pid\"/cmdline | grep -o '[^[ ]*/bin/{{ role }}' | head -n 1)"
    ' && "$exe" --version 2>/dev/null'
)


# A conductor's drain: refuse new JSON-RPC calls to it (a TCP reset, which
# the APIs' clients retry), so that no call reaches it while it shuts down.
# Ironic 35 and 39 shut their worker pool down before their RPC server, and
# answer a power call arriving in between with HTTP 500 ("Can not schedule
# new futures after being shutdown"); a message queue would hold such calls,
# JSON-RPC has none. A new call is a new connection (SYN) or a request on a
# kept-alive one (a segment with data, which ends with PSH); the ACKs of a
# caller reading the answer of a call already running pass, so that answer
# arrives whole: resetting every packet cut such answers off mid-read, which
# the clients do not retry (tests/openstack/test_conductor_drain.py). The
# undo removes every copy of both rules.
_MATCH = "INPUT -d {{ host.address }} -p tcp --dport {{ json_rpc_port }}"
_REJECT = tuple(
    f"{_MATCH} {packets} -j REJECT --reject-with tcp-reset"
    for packets in ("--syn", "--tcp-flags PSH PSH")
)
CONDUCTOR_DRAIN = {
    "run": " && ".join(f"{{ iptables -C {r} 2>/dev/null || iptables -I {r}; }}" for r in _REJECT),
    "undo": "; ".join(f"while iptables -D {r} 2>/dev/null; do :; done" for r in _REJECT),
    "timeout": "30s",
}


@dataclass(frozen=True, slots=True)
class IronicHost:
    name: str
    role: str
    address: str
    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / CONF

    def pin(self) -> str | None:
        """`[DEFAULT] pin_release_version` as configured on disk."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(self.conf)
        return parser.get("DEFAULT", "pin_release_version", fallback=None)

    def linked_release(self) -> str:
        """The release the service's `openstack/current` link points at."""
        target = os.readlink(self.directory / CURRENT / self.role)
        return Path(target).name.removeprefix("ironic-")


class IronicCloud:
    def __init__(self, programs: Programs, directory: Path, venvs: Mapping[str, Venv]) -> None:
        self.programs = programs
        self.directory = directory
        self.venvs = dict(venvs)
        self.hosts = {
            **{
                f"cond-{n}": IronicHost(
                    f"cond-{n}", CONDUCTOR, f"127.77.0.1{n}", directory / f"cond-{n}"
                )
                for n in (1, 2)
            },
            **{
                f"api-{n}": IronicHost(f"api-{n}", API, f"127.77.0.2{n}", directory / f"api-{n}")
                for n in (1, 2)
            },
        }
        self.api_port, self.rpc_port = free_ports(2)
        self.db = MariaDB(programs, directory / "mariadb")
        self.db_url = ""
        self.bin_dir = directory / "bin"
        addresses = {h.name: h.address for h in self.hosts.values()} | {LB_HOST: LB_ADDRESS}
        host_dirs = {h.name: h.directory for h in self.hosts.values()} | {
            LB_HOST: directory / LB_HOST
        }
        self.sshd = RealSSHHosts(
            programs.servers,
            directory / "sshd",
            list(host_dirs),
            host_dirs=host_dirs,
            addresses=addresses,
            env={"PATH": f"{self.bin_dir}:{DEFAULT_PATH}"},
        )
        self.haproxy = RealHAProxy(
            programs.servers,
            directory / "haproxy",
            {h.name: (h.address, self.api_port) for h in self.by_role(API)},
            backend=BACKEND,
        )
        self.inventory_path = directory / "inventory.yaml"

    def by_role(self, role: str) -> list[IronicHost]:
        return [h for h in self.hosts.values() if h.role == role]

    # --- building it ----------------------------------------------------------------

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_systemctl()
        await self.db.start()
        self.db_url = await self.db.create_database("ironic")
        for host in self.hosts.values():
            self._lay_out(host)
        # the database of a cloud that has run release N: its schema, by N's code
        first = self.by_role(CONDUCTOR)[0]
        await self.run_local(
            first,
            f"{VENVS}/ironic-{OLD.name}/bin/ironic-dbsync --config-file {CONF} create_schema",
        )
        await self.sshd.start()
        # a firewall rule a killed run left on the ports just picked would
        # refuse the conductors: ports are reused, the rules outlive the run
        await self._undrain()
        await asyncio.gather(*(self.service(h, "start") for h in self.hosts.values()))
        await self.haproxy.start()
        await self.wait_ready()
        self.inventory_path.write_text(yaml.safe_dump(self.inventory_data(), sort_keys=False))

    async def _undrain(self) -> None:
        """Remove every conductor's drain rules (the drain's own undo)."""
        for conductor in self.by_role(CONDUCTOR):
            undo = CONDUCTOR_DRAIN["undo"].replace("{{ host.address }}", conductor.address)
            with contextlib.suppress(Exception):
                await self.run_local(
                    conductor, undo.replace("{{ json_rpc_port }}", str(self.rpc_port))
                )

    async def close(self) -> None:
        await self._undrain()  # a drain a failed test left behind
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(self.service(h, "stop") for h in self.hosts.values()), return_exceptions=True
            )
        for closing in (self.haproxy.close, self.sshd.close, self.db.close):
            with contextlib.suppress(Exception):
                await closing()

    def _write_systemctl(self) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        shim = self.bin_dir / "systemctl"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {SYSTEMCTL} "$@"\n')
        shim.chmod(0o755)

    def _lay_out(self, host: IronicHost) -> None:
        for sub in ("etc/ironic", "etc/units", VENVS, CURRENT, "run", "log", "lock"):
            (host.directory / sub).mkdir(parents=True, exist_ok=True)
        for release in RELEASES:
            (host.directory / VENVS / f"ironic-{release.name}").symlink_to(
                self.venvs[release.name].path
            )
        (host.directory / CURRENT / host.role).symlink_to(
            host.directory / VENVS / f"ironic-{OLD.name}"
        )
        host.conf.write_text(self.conf_text(host))
        unit = f"[Service]\nExecStart={CURRENT}/{host.role}/bin/{host.role} --config-file {CONF}\n"
        (host.directory / "etc" / "units" / f"{host.role}.service").write_text(unit)

    def conf_text(self, host: IronicHost) -> str:
        interfaces = {
            "boot": "fake",
            "deploy": "fake",
            "management": "fake",
            "power": "fake",
            "bios": "no-bios",
            "console": "no-console",
            "firmware": "no-firmware",
            "inspect": "no-inspect",
            "network": "noop",
            "raid": "no-raid",
            "rescue": "no-rescue",
            "storage": "noop",
            "vendor": "no-vendor",
        }
        enabled = "\n".join(f"enabled_{k}_interfaces = {v}" for k, v in interfaces.items())
        return f"""\
[DEFAULT]
# the JSON-RPC identity of a conductor, and how the APIs reach it
host = {host.address}
auth_strategy = noauth
rpc_transport = json-rpc
enabled_hardware_types = fake-hardware
{enabled}
default_network_interface = noop
# a conductor that stops unregisters at once; the others take over its nodes
# at the next ring refresh
hash_ring_reset_interval = 5

[database]
connection = {self.db_url}

[json_rpc]
auth_strategy = noauth
host_ip = {host.address}
port = {self.rpc_port}
# JSON-RPC has no queue to hold a call while its conductor restarts, and a
# conductor's graceful stop waits for the other nodes' hash rings only while
# more than one other conductor is online (two conductors: it does not
# wait), so an API's call can reach a conductor that is gone. These
# keystoneauth adapter options make the API retry the connection for 30 s,
# longer than a drained conductor restart takes here (see CONDUCTOR_DRAIN).
connect_retries = 60
connect_retry_delay = 0.5

[api]
host_ip = {host.address}
port = {self.api_port}
api_workers = 1

[dhcp]
dhcp_provider = none

[conductor]
automated_clean = false

[oslo_concurrency]
lock_path = {host.directory / "lock"}
"""

    async def run_local(self, host: IronicHost, command: str) -> str:
        """Run a command as the host would, without SSH (setting the cloud up)."""
        env = {
            "HOME": str(host.directory),
            "PATH": f"{self.bin_dir}:{DEFAULT_PATH}",
            "LANG": "C.UTF-8",
        }
        process = await asyncio.create_subprocess_shell(
            command,
            cwd=host.directory,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        text = out.decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(
                f"{host.name}: {command} exited {process.returncode}:\n{text[-3000:]}"
            )
        return text

    async def service(self, host: IronicHost, verb: str) -> None:
        await self.run_local(host, f"systemctl {verb} {host.role}")

    async def wait_ready(self) -> None:
        """Every API answers, and every conductor is registered and alive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_DEADLINE
        last = ""
        async with aiohttp.ClientSession(headers=self.headers) as session:
            while loop.time() < deadline:
                try:
                    for api in self.by_role(API):
                        async with session.get(
                            f"http://{api.address}:{self.api_port}/v1/conductors"
                        ) as r:
                            body = await r.json() if r.status == 200 else {}
                        alive = {
                            c["hostname"] for c in body.get("conductors", []) if c.get("alive")
                        }
                        want = {f"{c.address}:{self.rpc_port}" for c in self.by_role(CONDUCTOR)}
                        if not want <= alive:
                            raise ValueError(f"{api.name}: conductors alive {sorted(alive)}")
                    return
                except (aiohttp.ClientError, ValueError, OSError) as exc:
                    last = str(exc)
                await asyncio.sleep(0.5)
        logs = "\n".join(f"--- {h.name}\n{self.log(h)[-2000:]}" for h in self.hosts.values())
        raise RuntimeError(f"ironic did not come up: {last}\n{logs}")

    @property
    def headers(self) -> dict[str, str]:
        return {"X-OpenStack-Ironic-API-Version": MICROVERSION}

    def log(self, host: IronicHost) -> str:
        path = host.directory / "log" / f"{host.role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- what the tests read ------------------------------------------------------------

    async def running_version(self, host: IronicHost) -> str:
        """The package version the host's running service reports from its own code."""
        command = VERSION_PROBE.replace("{{ role }}", host.role)
        return (await self.run_local(host, command)).strip().splitlines()[-1]

    def inventory_data(self, *, health_deadline: str = "120s") -> dict[str, Any]:
        releases = {r.name: r.specifier for r in RELEASES}
        ports = {name: self.sshd.port(name) for name in self.sshd.names}

        def host(entry: IronicHost | None, name: str, address: str) -> dict[str, Any]:
            data: dict[str, Any] = {
                "address": address,
                "roles": [entry.role] if entry else [],
                "ssh": {"port": ports[name]},
            }
            if entry is not None:  # links must name absolute paths
                data["vars"] = {
                    "venvs": str(entry.directory / VENVS),
                    "current": str(entry.directory / CURRENT),
                }
            return data

        policy = {"passes": 2, "interval": "1s", "deadline": health_deadline}
        return {
            "name": "ironic-tier",
            "ssh": {
                "user": self.sshd.user,
                "key": str(self.sshd.client_key_path),
                "known_hosts": str(self.sshd.known_hosts_path),
                "verify_host_keys": True,
                "connect_timeout": "10s",
                "command_timeout": "300s",
            },
            "vars": {
                "from_version": OLD.name,
                # relative to a host's home, where commands run
                "ironic_conf": CONF,
                "json_rpc_port": self.rpc_port,
            },
            "load_balancers": {
                LOAD_BALANCER: {
                    "driver": "haproxy",
                    "host": LB_HOST,
                    "socket": str(self.haproxy.socket),
                    "backend": BACKEND,
                }
            },
            "roles": {
                CONDUCTOR: {
                    "version": {"run": VERSION_PROBE, "releases": releases, "timeout": "30s"},
                    "health": [
                        {"run": "systemctl is-active ironic-conductor"},
                        # listening on JSON-RPC (asked on the host: the drain
                        # refuses connections from outside until it is undone)
                        {
                            "run": "ss -Hltn src {{ host.address }} sport = :{{ json_rpc_port }}"
                            " | grep -q LISTEN"
                        },
                    ],
                    "health_policy": policy,
                    "drain": CONDUCTOR_DRAIN,
                },
                API: {
                    "version": {"run": VERSION_PROBE, "releases": releases, "timeout": "30s"},
                    "health": [
                        {
                            "http": f"http://{{{{ host.address }}}}:{self.api_port}/",
                            "expect_status": 200,
                        },
                        {
                            "http": f"http://{{{{ host.address }}}}:{self.api_port}/v1/",
                            "expect_status": 200,
                        },
                    ],
                    "health_policy": policy,
                    "drain": {
                        "load_balancer": LOAD_BALANCER,
                        "server": "{{ host.name }}",
                        "timeout": "60s",
                    },
                },
            },
            "hosts": {
                **{h.name: host(h, h.name, h.address) for h in self.hosts.values()},
                LB_HOST: host(None, LB_HOST, LB_ADDRESS),
            },
        }


@contextlib.asynccontextmanager
async def ironic_cloud(
    programs: Programs, directory: Path, venvs: Mapping[str, Venv]
) -> AsyncIterator[IronicCloud]:
    cloud = IronicCloud(programs, directory, venvs)
    try:
        await cloud.start()
        yield cloud
    finally:
        await cloud.close()
