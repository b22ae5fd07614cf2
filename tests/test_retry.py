"""The connect policy: what it retries, how long it waits, when it gives up."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs
from tenacity import AsyncRetrying, RetryCallState, RetryError

from orchestrator.errors import HostKeyError, StepFailed, TransportError
from orchestrator.retry import (
    CONNECT_ATTEMPTS,
    CONNECT_DEADLINE,
    connect_policy,
    first_then,
    is_transient_transport_fault,
)


class Sleeps:
    """A no-op sleep that records the delays the policy asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Flaky:
    """Fails with `error` the first `failures` calls, then returns the call count."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


async def test_transport_faults_are_retried_until_success() -> None:
    sleeps = Sleeps()
    flaky = Flaky(3, TransportError("h1", "connection refused"))
    assert await connect_policy(sleeps)(flaky) == 4
    assert len(sleeps.delays) == 3


async def test_gives_up_after_five_attempts_with_the_last_error() -> None:
    sleeps = Sleeps()
    flaky = Flaky(100, TransportError("h1", "connection refused"))
    with pytest.raises(RetryError) as caught:
        await connect_policy(sleeps)(flaky)
    assert flaky.calls == CONNECT_ATTEMPTS == 5
    assert len(sleeps.delays) == 4
    last = caught.value.last_attempt
    assert last.attempt_number == 5
    assert isinstance(last.exception(), TransportError)


async def test_backoff_is_exponential_with_bounded_jitter() -> None:
    sleeps = Sleeps()
    with pytest.raises(RetryError):
        await connect_policy(sleeps)(Flaky(100, TransportError("h1", "reset")))
    for retry, delay in enumerate(sleeps.delays):
        base = 0.5 * 2**retry
        assert base <= delay <= base + 0.5, (retry, delay)


@pytest.mark.parametrize(
    "error",
    [
        HostKeyError("h1", "host key does not match known_hosts"),
        StepFailed("h1", "s1", "exit status 1", exit_status=1),
        ValueError("a bug"),
    ],
)
async def test_host_key_errors_failed_commands_and_bugs_are_not_retried(
    error: Exception,
) -> None:
    sleeps = Sleeps()
    flaky = Flaky(1, error)
    with pytest.raises(type(error)):
        await connect_policy(sleeps)(flaky)
    assert flaky.calls == 1
    assert sleeps.delays == []


def test_transient_predicate() -> None:
    assert is_transient_transport_fault(TransportError("h", "refused"))
    assert not is_transient_transport_fault(HostKeyError("h", "mismatch"))
    assert not is_transient_transport_fault(StepFailed("h", "s", "failed"))


def test_stops_after_sixty_seconds_even_before_five_attempts() -> None:
    policy = connect_policy(Sleeps())
    state = RetryCallState(policy, fn=None, args=(), kwargs={})
    state.attempt_number = 2
    state.outcome_timestamp = state.start_time + CONNECT_DEADLINE - 1
    assert not policy.stop(state)
    state.outcome_timestamp = state.start_time + CONNECT_DEADLINE
    assert policy.stop(state)


async def test_each_retry_is_logged() -> None:
    with capture_logs() as logs:
        await connect_policy(Sleeps())(Flaky(2, TransportError("h1", "connection reset")))
    retries = [entry for entry in logs if entry["event"] == "connect failed, retrying"]
    assert [entry["attempt"] for entry in retries] == [1, 2]
    assert all("connection reset" in entry["error"] for entry in retries)
    assert all(entry["log_level"] == "warning" for entry in retries)


# --- first_then: the first attempt without the policy's machinery --------------


class Policies:
    """A policy factory that counts how many policies were built."""

    def __init__(self, sleeps: Sleeps) -> None:
        self.sleeps, self.built = sleeps, 0

    def __call__(self) -> AsyncRetrying:
        self.built += 1
        return connect_policy(self.sleeps)


async def test_a_first_attempt_that_succeeds_builds_no_policy() -> None:
    policies = Policies(Sleeps())
    flaky = Flaky(0, TransportError("h1", "reset"))
    assert await first_then(flaky, is_transient_transport_fault, policies) == 1
    assert policies.built == 0


async def test_a_failure_the_policy_would_not_retry_is_raised_as_it_is() -> None:
    policies = Policies(Sleeps())
    flaky = Flaky(1, HostKeyError("h1", "key changed"))
    with pytest.raises(HostKeyError, match="key changed"):
        await first_then(flaky, is_transient_transport_fault, policies)
    assert (flaky.calls, policies.built) == (1, 0)


async def test_the_first_failure_counts_as_the_policys_first_attempt() -> None:
    sleeps = Sleeps()
    flaky = Flaky(100, TransportError("h1", "connection refused"))
    with pytest.raises(RetryError) as caught:
        await first_then(flaky, is_transient_transport_fault, Policies(sleeps))
    # five attempts in all, as under the policy alone, and four waits between them
    assert flaky.calls == CONNECT_ATTEMPTS == caught.value.last_attempt.attempt_number
    assert len(sleeps.delays) == CONNECT_ATTEMPTS - 1


async def test_a_retried_call_returns_what_its_later_attempt_returns() -> None:
    sleeps = Sleeps()
    flaky = Flaky(2, TransportError("h1", "connection refused"))
    policies = Policies(sleeps)
    assert await first_then(flaky, is_transient_transport_fault, policies) == 3
    assert (policies.built, len(sleeps.delays)) == (1, 2)
