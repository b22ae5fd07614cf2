"""The one exception tree of the orchestrator.

Every error carries the fields a caller needs to act on it; only
`orchestrator.cli.entrypoint` turns them into exit codes and only the HTTP
layer turns them into status codes, using `exit_code` and `http_status`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, located as precisely as we can.

    `field` is a dotted path into the document (``hosts.cmp-1.roles[0]``);
    `line` and `column` are 1-based and refer to `file`.
    """

    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1
    http_status = 500


class InputError(OrchestratorError):
    """Operator input (YAML, template, option, HTTP body) is invalid.

    Holds every problem found, not just the first, so one run of
    `orchestrator plan` shows everything to fix.
    """

    exit_code = 2
    http_status = 422

    def __init__(self, problems: list[Problem] | Problem) -> None:
        items = [problems] if isinstance(problems, Problem) else list(problems)
        # read top-down: by file, then line and column; unlocated ones first
        self.problems = sorted(items, key=lambda p: (p.file or "", p.line or 0, p.column or 0))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(OrchestratorError):
    """The command line itself is wrong (unknown option, missing argument)."""

    exit_code = 2
    http_status = 400


class NotFoundError(OrchestratorError):
    """A named thing (playbook, upgrade) does not exist."""

    exit_code = 2
    http_status = 404


class ForbiddenError(OrchestratorError):
    """The token is valid, but its role may not do this."""

    exit_code = 4
    http_status = 403


class TooManyError(OrchestratorError):
    """A per-token limit is reached (open event streams)."""

    exit_code = 3
    http_status = 429


class ConflictError(OrchestratorError):
    """The request is valid but the current state forbids it."""

    exit_code = 3
    http_status = 409


class RollbackRefused(ConflictError):
    """Rollback asked for after the point of no return."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        super().__init__(
            f"rollback refused: phase '{phase}' is irreversible and has run; "
            "it is the point of no return"
        )


class InvalidTransition(OrchestratorError):
    """The engine was asked for a state change its transition table forbids."""

    def __init__(self, what: str, current: str, target: str) -> None:
        self.what, self.current, self.target = what, current, target
        super().__init__(f"{what}: transition {current} -> {target} is not allowed")


class TransportError(OrchestratorError):
    """SSH could not connect, or the connection dropped: the command may not have run.

    `may_still_run`: a command was started and the transport lost sight of it
    before it ended, so it may be running on the host now; nothing that
    assumes it is over (an undo, the next step) may start until a run with
    the same run id has reported its end. False: it certainly did not start,
    or it is over.
    """

    def __init__(self, host: str, reason: str, *, may_still_run: bool = False) -> None:
        self.host, self.reason, self.may_still_run = host, reason, may_still_run
        super().__init__(f"{host}: {reason}")


class HostKeyError(TransportError):
    """The host presented a key that does not match known_hosts."""


class StepFailed(OrchestratorError):
    """A command ran and did not succeed; carries what it printed."""

    def __init__(
        self,
        host: str,
        step: str,
        reason: str,
        exit_status: int | None = None,
        output: str = "",
    ) -> None:
        self.host, self.step, self.reason = host, step, reason
        self.exit_status, self.output = exit_status, output
        super().__init__(f"{host}: step {step}: {reason}")


class StateDirError(OrchestratorError):
    """The daemon's state directory cannot be used: exit 2, or 3 when the disk is full."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.exit_code = 3 if full else 2


class StoreError(OrchestratorError):
    """The journal could not be read or written (disk full, I/O error, closed, bad schema)."""


class NotLeaderError(OrchestratorError):
    """This daemon is a standby on a shared store: only the leader writes.
    The API answers a write with 307 to the leader (503 while none is known)."""

    exit_code = 3
    http_status = 503


class FencedError(NotLeaderError):
    """The store refused a write: a newer leader holds the lease (its epoch
    is higher than this daemon's). Never retried: this daemon steps down."""


# --- moved here so that every exception class lives in one file ---------------


class FieldProblem(ValueError):
    """Raised by a model validator about one of the model's own fields, so
    the error points at that field's line rather than at the whole mapping."""

    def __init__(self, at: str | tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.at = (at,) if isinstance(at, str) else at


class TemplateError(Exception):
    """A template failed to compile or render; `message` is operator-facing."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class MalformedBody(UsageError):
    """The body is not JSON at all (HTTP 400); carries where it broke."""

    def __init__(self, problem: Problem) -> None:
        self.problems = [problem]
        super().__init__(str(problem))


class NumberTooLong(ValueError):
    """A JSON number longer than the body accepts (raised inside json.loads)."""


class DrainError(OrchestratorError):
    """A drain or undrain did not complete."""


class PermanentTransportError(Exception):
    """Carries a `TransportError` past the connect policy: retrying would not help."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class AgentLost(Exception):
    """Inside the transport: a host's agent went away, or said something that
    is not a reply, before its reply; the pool follows the run's record."""


class AgentRefused(Exception):
    """Inside the transport: the host's agent cannot work there and read no
    request; the run execs the wrapper instead."""


class Stop(Exception):
    """Raised at a checkpoint when the upgrade is aborting or rolling back."""


class Suspend(Exception):
    """Raised at a checkpoint when the daemon shuts down: stop where we are,
    change nothing; the journal lets the next daemon continue from here."""


class EventFormatError(ValueError):
    """An event in the journal that this release cannot read."""


class DaemonUnavailable(OrchestratorError):
    """The daemon cannot be reached, refused the token, or is shutting down."""

    exit_code = 3
    http_status = 503


class DemoError(OrchestratorError):
    """The demo could not set itself up (daemon did not start, ...)."""
