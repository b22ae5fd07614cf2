"""The `run` action: exit-code semantics, repeat-while, timeout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from orchestrator.actions.remote import Remote
from orchestrator.model import RunAction
from orchestrator.transport.supervise import repeat_run_id


@dataclass(frozen=True, slots=True)
class RunOutcome:
    ok: bool
    exit_status: int | None
    output: str
    attempts: int
    reason: str | None = None
    timed_out: bool = False


async def run_action(
    remote: Remote,
    host: str,
    action: RunAction,
    *,
    become: bool,
    sleep: Callable[[float], Awaitable[None]],
    run_id: str | None = None,
) -> RunOutcome:
    """Run until the exit status is not in `repeat_while_exit` (online data
    migrations exit 1 while rows remain), then judge it against `ok_exit`.

    With a `run_id` each run is supervised, the n-th repeat as
    ``repeat_run_id(run_id, n)``: run again with the same run id (a daemon
    resuming the step), the repeats already made return their recorded
    results and only the unfinished one is followed or started.
    Transport errors propagate: see `TransportError.may_still_run`."""
    attempts = 0
    while True:
        attempts += 1
        result = await remote.run(
            host,
            action.command,
            timeout=action.timeout,
            become=become,
            run_id=repeat_run_id(run_id, attempts),
        )
        if result.timed_out:
            why = f"timed out after {action.timeout:g}s"
            return RunOutcome(False, None, result.output, attempts, why, timed_out=True)
        status = result.exit_status
        if status is not None and status in action.repeat_while_exit:
            if attempts >= action.repeat_max:
                return RunOutcome(
                    False,
                    status,
                    result.output,
                    attempts,
                    f"still exiting {status} after {attempts} runs (repeat_max)",
                )
            await sleep(action.repeat_interval)
            continue
        if status is not None and status in action.ok_exit:
            return RunOutcome(True, status, result.output, attempts)
        why = result.reason or ("killed by a signal" if status is None else f"exit status {status}")
        return RunOutcome(False, status, result.output, attempts, why)
