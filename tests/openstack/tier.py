"""What the `openstack` tier needs on this machine, and what to say when it is missing.

The integration tier's servers (OpenSSH sshd, HAProxy, nss_wrapper) plus
MariaDB from Debian's packages, and iptables and ss for the conductors'
JSON-RPC drain (`tests.openstack.ironiccloud.CONDUCTOR_DRAIN`), which
needs root, as CI is. Under ``CI=true`` a missing part fails the
test (`.ci/run` installs them); elsewhere the test skips with the command
that installs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tests.integration.servers import (
    PACKAGES,
    Servers,
    find_program,
    find_servers,
    missing_parts,
)

MARIADB_PACKAGES = "mariadb-server mariadb-client iptables iproute2"
INSTALL_HINT = (
    f"install with: sudo apt-get install -y {PACKAGES} {MARIADB_PACKAGES} (what .ci/run does)"
)


@dataclass(frozen=True, slots=True)
class Programs:
    servers: Servers
    mariadbd: str
    mariadb_install_db: str
    mariadb: str
    iptables: str
    ss: str


def find_programs() -> tuple[Programs | None, list[str]]:
    servers, missing = find_servers()
    found = {
        "mariadbd": find_program("mariadbd", "/usr/sbin/mariadbd", "/usr/libexec/mariadbd"),
        "mariadb_install_db": find_program("mariadb-install-db", "/usr/bin/mariadb-install-db"),
        "mariadb": find_program("mariadb", "/usr/bin/mariadb"),
        "iptables": find_program("iptables", "/usr/sbin/iptables", "/sbin/iptables"),
        "ss": find_program("ss", "/usr/bin/ss", "/bin/ss"),
    }
    missing += [name for name, path in found.items() if path is None]
    if os.geteuid() != 0:
        missing.append("root (the conductors' drain changes the firewall)")
    if servers is None or missing:
        return None, missing
    return Programs(servers, **{k: str(v) for k, v in found.items()}), []


def require_programs() -> Programs:
    programs, missing = find_programs()
    if programs is not None:
        return programs
    missing_parts(f"openstack tier needs {', '.join(missing)}; {INSTALL_HINT}")
