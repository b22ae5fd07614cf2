"""Opening one verified SSH connection to a host, under `retry.connect_policy`.

`Dialer` is what `SSHPool` opens connections with (through
`orchestrator.transport.slots`, which decides when one may open):

* the host key is checked against the host's known_hosts file (unless the
  inventory turned that off for a lab); a mismatch is a `HostKeyError` and
  is never retried, nor is a refused login;
* the client key, the known_hosts file and the connection options are read
  once per pool: a fleet shares them, and reading them for each of N hosts
  made preflight O(N^2);
* every other fault is a `TransportError` for the policy to judge; when the
  attempts run out the error says how many were made.
"""

from __future__ import annotations

import os

import asyncssh
import structlog
from tenacity import RetryError

from orchestrator.errors import HostKeyError, PermanentTransportError, TransportError
from orchestrator.model import HostTarget
from orchestrator.retry import Sleep, connect_policy, first_then, is_transient_transport_fault
from orchestrator.transport.follow import describe

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
# unanswered keepalives before a silent peer counts as gone: asyncssh drops
# the connection at the (count + 1)-th silent `keepalive_interval`, so the
# default 5 s interval finds a half-open connection within 15 s
KEEPALIVE_COUNT_MAX = 2

# Curve25519 first: the post-quantum hybrids asyncssh prefers by default cost
# several times more CPU per handshake, which dominates preflight of a large
# fleet on a small orchestrator host. The rest stay as fallbacks.
KEX_PREFERENCE = [
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
]

# AES-GCM first: hardware-accelerated through `cryptography`, where
# chacha20-poly1305 costs a Python-level call per packet in asyncssh.
CIPHER_PREFERENCE = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger("orchestrator.transport.ssh")

# what the options of a connection depend on: hosts that agree on these share one
_OptionsKey = tuple[str, str | None, str | None, bool, float, float]


def known_hosts_path(target: HostTarget) -> str:
    return os.path.expanduser(target.known_hosts or DEFAULT_KNOWN_HOSTS)


class Dialer:
    """Opens connections for one pool; call it as ``await dialer(target, backoff)``."""

    def __init__(self) -> None:
        self._known_hosts: dict[str, asyncssh.SSHKnownHosts] = {}
        self._keys: dict[str, asyncssh.SSHKey] = {}
        self._options: dict[_OptionsKey, asyncssh.SSHClientConnectionOptions] = {}

    async def __call__(self, target: HostTarget, backoff: Sleep) -> asyncssh.SSHClientConnection:
        """Open a connection; `backoff` is the policy's sleep between attempts."""
        where = f"{target.address}:{target.port}"
        options = self.options(target, where)
        try:
            conn = await first_then(
                lambda: self._attempt(target, where, options),
                is_transient_transport_fault,
                lambda: connect_policy(backoff),
            )
        except PermanentTransportError as exc:
            raise exc.error from None
        except RetryError as exc:
            attempt = exc.last_attempt
            cause = attempt.exception()
            reason = cause.reason if isinstance(cause, TransportError) else str(cause)
            _log.error(
                "connect failed", host=target.name, address=where, attempts=attempt.attempt_number
            )
            raise TransportError(
                target.name, f"gave up after {attempt.attempt_number} attempts: {reason}"
            ) from cause
        _log.info(
            "connected", host=target.name, address=where, host_key_verified=target.verify_host_keys
        )
        return conn

    def options(self, target: HostTarget, where: str) -> asyncssh.SSHClientConnectionOptions:
        """Read outside the retries: a bad key or known_hosts file is not transient."""
        key = (
            target.user,
            known_hosts_path(target) if target.verify_host_keys else None,
            target.key,
            target.verify_host_keys,
            target.connect_timeout,
            target.keepalive_interval,
        )
        options = self._options.get(key)
        if options is None:
            options = self._options[key] = self._build(target, where)
        return options

    def _build(self, target: HostTarget, where: str) -> asyncssh.SSHClientConnectionOptions:
        known_hosts: asyncssh.SSHKnownHosts | None = None
        if target.verify_host_keys:
            path = known_hosts_path(target)
            try:
                known_hosts = self._known_hosts.get(path)
                if known_hosts is None:
                    known_hosts = self._known_hosts[path] = asyncssh.read_known_hosts(path)
            except (OSError, ValueError) as exc:
                raise HostKeyError(
                    target.name, f"{where}: cannot read known_hosts {path}: {describe(exc)}"
                ) from None
        extra: dict[str, object] = {}
        if target.key is not None:
            key = os.path.expanduser(target.key)
            try:
                if key not in self._keys:
                    self._keys[key] = asyncssh.read_private_key(key)
            except (OSError, asyncssh.KeyImportError) as exc:
                raise TransportError(
                    target.name, f"cannot read SSH key {key}: {describe(exc)}"
                ) from None
            extra = {"client_keys": [self._keys[key]], "agent_path": None}
        try:
            return asyncssh.SSHClientConnectionOptions(
                username=target.user,
                known_hosts=known_hosts,
                connect_timeout=target.connect_timeout,
                login_timeout=target.connect_timeout,
                keepalive_interval=target.keepalive_interval,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                config=[],
                kex_algs=KEX_PREFERENCE,
                encryption_algs=CIPHER_PREFERENCE,
                **extra,
            )
        except ValueError as exc:
            # asyncssh looks the local user up in the password database: out of
            # file descriptors it cannot, and says "Unknown local username"
            raise TransportError(target.name, f"{where}: SSH options: {exc}") from None

    async def _attempt(
        self, target: HostTarget, where: str, options: asyncssh.SSHClientConnectionOptions
    ) -> asyncssh.SSHClientConnection:
        """One connection attempt; raises `TransportError` for the policy to judge."""
        try:
            return await asyncssh.connect(target.address, target.port, options=options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyError(
                target.name,
                f"{where}: host key does not match known_hosts {known_hosts_path(target)} "
                f"({describe(exc)}); "
                "if the host was reinstalled, update known_hosts after checking its key",
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise PermanentTransportError(
                TransportError(
                    target.name,
                    f"{where}: authentication as {target.user!r} failed: {describe(exc)}",
                )
            ) from None
        except TimeoutError:
            raise TransportError(
                target.name, f"{where}: connect timed out after {target.connect_timeout:g} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(target.name, f"{where}: {describe(exc)}") from None
