"""Every retry policy of the orchestrator, by name, in one place.

Only transport faults are retried: a connection that was refused, reset or
timed out before anything ran, and asking a supervised command's record
again after its connection dropped (which never runs it again). A command
that ran and failed is a result, not a fault, and nothing here ever runs it
again. `sleep` is injectable so
tests replace the backoff with a no-op (or with a hook that heals the fault).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from orchestrator.errors import HostKeyError, StoreError, TransportError

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

CONNECT_ATTEMPTS = 5
CONNECT_DEADLINE = 60.0

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)


def is_transient_transport_fault(exc: BaseException) -> bool:
    """A fault worth another try: transport trouble, but never a wrong host key.

    A host key mismatch is either an attack or a reinstalled host; waiting
    does not fix either, and an operator has to look.
    """
    return isinstance(exc, TransportError) and not isinstance(exc, HostKeyError)


def _log_retries(what: str) -> Callable[[RetryCallState], None]:
    """A `before_sleep` hook that logs the failed attempt and the wait: `what` failed."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        _log.warning(
            f"{what} failed, retrying",
            attempt=state.attempt_number,
            delay=round(delay, 3),
            error=str(exc),
        )

    return log_retry


def connect_policy(sleep: Sleep | None = None) -> AsyncRetrying:
    """Opening an SSH connection: 5 attempts within 60 s, exponential backoff with jitter.

    Call it as ``await connect_policy()(open_connection, target)``; when the
    attempts run out it raises `tenacity.RetryError` holding the last
    attempt, so the caller can say how many attempts were made.
    """
    return AsyncRetrying(
        retry=retry_if_exception(is_transient_transport_fault),
        stop=stop_after_attempt(CONNECT_ATTEMPTS) | stop_after_delay(CONNECT_DEADLINE),
        wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
        sleep=sleep if sleep is not None else asyncio.sleep,
        before_sleep=_log_retries("connect"),
        reraise=False,
    )


REATTACH_ATTEMPTS = 5


def lost_a_running_command(exc: BaseException) -> bool:
    """The connection went away while a supervised command ran (`may_still_run`)."""
    return isinstance(exc, TransportError) and exc.may_still_run


def reattach_policy(sleep: Sleep | None = None) -> AsyncRetrying:
    """Asking a supervised command's supervisor again after its connection
    dropped or went silent: 5 attempts, a short backoff. Asking again never
    runs the command twice, which is what makes this one retry of a started
    command safe. Each attempt reconnects under `connect_policy`; when that
    gives up, so does this (the error says the command may still run)."""
    return AsyncRetrying(
        retry=retry_if_exception(lost_a_running_command),
        stop=stop_after_attempt(REATTACH_ATTEMPTS),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        sleep=sleep if sleep is not None else asyncio.sleep,
        before_sleep=_log_retries("following a supervised command"),
        reraise=True,
    )


JOURNAL_ATTEMPTS = 5
JOURNAL_DEADLINE = 30.0


def journal_policy(sleep: Sleep | None = None) -> AsyncRetrying:
    """A journal write that failed (disk full, I/O error): 5 attempts within
    30 s, then the last StoreError is raised and the upgrade stalls until the
    operator resumes it. A failed commit wrote nothing, so a retry cannot
    duplicate an event."""
    return AsyncRetrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, StoreError)),
        stop=stop_after_attempt(JOURNAL_ATTEMPTS) | stop_after_delay(JOURNAL_DEADLINE),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        sleep=sleep if sleep is not None else asyncio.sleep,
        before_sleep=_log_retries("journal write"),
        reraise=True,
    )


async def journal_retry(
    write: Callable[[], Awaitable[T]], failed: StoreError | None, sleep: Sleep | None = None
) -> T:
    """`write` under `journal_policy`. `failed`: the error its first attempt,
    made outside the policy (the common case needs none of its machinery),
    already raised; it counts as attempt 1, so the policy's bounds hold."""
    return await resume(journal_policy(sleep), write, failed)


async def first_then(
    call: Callable[[], Awaitable[T]],
    retryable: Callable[[BaseException], bool],
    policy: Callable[[], AsyncRetrying],
) -> T:
    """`call` once, outside any policy; only a failure `retryable` says the
    policy would retry builds the policy, and counts as its first attempt.

    Nearly every call succeeds the first time, and a tenacity policy costs
    0.25 to 0.5 ms of CPU to build and enter: paid for every connection and
    every supervised command, that was a tenth of the engine's CPU per step.
    A failure the policy would not retry is raised as it is, as the policy
    would. A policy's deadline counts from the first failure."""
    try:
        return await call()
    except Exception as exc:
        if not retryable(exc):
            raise
        return await resume(policy(), call, exc)


async def resume(
    policy: AsyncRetrying, call: Callable[[], Awaitable[T]], failed: Exception | None
) -> T:
    """`call` under `policy`, whose first attempt already failed with `failed`
    (None: its first attempt is yet to be made)."""
    pending = [failed] if failed is not None else []

    async def attempt() -> T:
        if pending:
            raise pending.pop()
        return await call()

    result: T = await policy(attempt)
    return result
