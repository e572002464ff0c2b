"""The exception tree of llm-agent-runtime, raised from Rust and from Python alike.

```
AgentRuntimeError                 base of every error the runtime raises
├── CircuitOpenError(service)     a circuit breaker is open and refuses calls
├── BackpressureShedError(depth, capacity)
│                                 the runtime is full and sheds the request at once
├── AgentLoopError                the agent loop cannot go on (unparseable output, timeout)
├── MemoryStoreError              bad input to, or failure of, a memory store or vector index
├── GraphError                    bad input to, or failure of, the knowledge graph
├── PersistenceError(key)         a checkpoint or record could not be saved or loaded
├── ProviderError(status, retryable, retry_after)
│                                 an LLM provider call failed
├── ToolError(tool)               a tool could not be run or must be reconciled by hand
├── PipelineStageError(stage)     a pipeline stage failed (the cause is chained)
├── PolicyDeniedError             a capability or policy forbids the action (its limit too)
├── BudgetExceededError           a token or money budget is spent
└── ParseError(position)          text is not a ReAct step
```

The Rust core imports these classes (it does not define its own), so `except GraphError`
catches the same class whichever side raised it. A panic inside the Rust core surfaces as
`AgentRuntimeError`, never as an abort of the interpreter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_agent_runtime.providers.base import Usage

__all__ = [
    "AgentLoopError",
    "AgentRuntimeError",
    "BackpressureShedError",
    "BudgetExceededError",
    "CircuitOpenError",
    "GraphError",
    "MemoryStoreError",
    "ParseError",
    "PersistenceError",
    "PipelineStageError",
    "PolicyDeniedError",
    "ProviderError",
    "ToolError",
]


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP response status is worth another attempt: 408, 409, 429 and every 5xx.

    One rule for the providers' own calls and for the HTTP errors a tool raises.
    """
    return status in (408, 409, 429) or 500 <= status <= 599


class AgentRuntimeError(Exception):
    """Base class of every error raised by llm-agent-runtime."""


class CircuitOpenError(AgentRuntimeError):
    """A circuit breaker is open: calls to `service` are refused until it recovers."""

    def __init__(self, service: str, message: str | None = None) -> None:
        self.service = service
        """Name of the service (or tool) whose breaker is open."""
        super().__init__(service, message or f"circuit open for service {service!r}")

    def __str__(self) -> str:
        return str(self.args[1])


class BackpressureShedError(AgentRuntimeError):
    """The runtime is at capacity; the request was shed at once rather than queued."""

    def __init__(self, depth: int, capacity: int) -> None:
        self.depth = depth
        """Number of requests in flight when this one was refused."""
        self.capacity = capacity
        """The configured maximum number of requests in flight."""
        super().__init__(depth, capacity)

    def __str__(self) -> str:
        return f"backpressure: shed request at depth {self.depth} (capacity {self.capacity})"


class RateLimitExceededError(AgentRuntimeError, TimeoutError):
    """A rate limiter refused a call at once: its wait for tokens would pass its `max_wait`.

    Nothing was taken from the bucket. A `TimeoutError` too (the call's time ran out before
    it could start), as it was before it had a type of its own.
    """

    def __init__(self, wait: float, max_wait: float) -> None:
        self.wait = wait
        """Seconds the call would have waited for its tokens."""
        self.max_wait = max_wait
        """The longest wait the caller allowed, in seconds."""
        # One argument: OSError (TimeoutError's base) reads two as (errno, strerror).
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"the rate limit would hold this call {self.wait:.3g} s, "
            f"past its max_wait of {self.max_wait:g} s"
        )

    def __reduce__(
        self,
    ) -> tuple[type[RateLimitExceededError], tuple[float, float], dict[str, Any]]:
        # Its `__dict__` too: notes (`add_note`) and attributes set since go with it.
        return type(self), (self.wait, self.max_wait), self.__dict__


class AgentLoopError(AgentRuntimeError):
    """The agent loop cannot continue (unparseable model output, loop timeout, ...)."""


class MemoryStoreError(AgentRuntimeError):
    """Bad input to, or a failure of, a memory store or the vector index."""


class GraphError(AgentRuntimeError):
    """Bad input to, or a failure of, the knowledge graph (unknown entity, bad weight, ...)."""


class PersistenceError(AgentRuntimeError):
    """A record could not be saved or loaded (I/O failure, corrupt data, unknown version)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        """The storage key concerned, when there is one."""
        super().__init__(message, key)

    def __str__(self) -> str:
        message = str(self.args[0])
        return f"{message} (key {self.key!r})" if self.key is not None else message


class ProviderError(AgentRuntimeError):
    """An LLM provider call failed.

    The message never contains an API key.
    """

    usage: Usage | None = None
    """The usage of a reply the server billed before this error refused it (cut off, say):
    set by the built-in providers, which charged it to their own metrics and budget; the
    agent loop charges it to the run's. The attempts of the call that were billed, failed
    and were tried again count in it too. None when no such reply came."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        """HTTP status of the failed response, or None for transport failures."""
        self.retryable = retryable
        """Whether trying again may succeed (429, 5xx, timeouts, dropped connections)."""
        self.retry_after = retry_after
        """Seconds the server asked the client to wait before retrying, when it said."""
        super().__init__(message, status, retryable, retry_after)

    def __str__(self) -> str:
        message = str(self.args[0])
        return f"{message} (status {self.status})" if self.status is not None else message


class ToolError(AgentRuntimeError):
    """A tool could not be run, or a tool call must be reconciled by hand."""

    def __init__(self, message: str, tool: str | None = None) -> None:
        self.tool = tool
        """Name of the tool concerned, when there is one."""
        super().__init__(message, tool)

    def __str__(self) -> str:
        return str(self.args[0])


class PipelineStageError(AgentRuntimeError):
    """A pipeline stage failed; the original error is the `__cause__`."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        self.stage = stage
        """Name of the stage that failed."""
        super().__init__(message, stage)

    def __str__(self) -> str:
        return str(self.args[0])


class PolicyDeniedError(AgentRuntimeError):
    """A capability set or policy forbids the requested action.

    A tool it does not allow, or a call past its action limit (`CapabilitySet.max_actions`).
    """


class BudgetExceededError(AgentRuntimeError):
    """A token or cost budget has been spent (an action limit is a `PolicyDeniedError`)."""


class ParseError(AgentRuntimeError):
    """Text is not a ReAct step; the message says what was expected and where."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        """Index (in characters, as `text[position:]` takes it) where the problem was found
        in the parsed text, when known."""
        super().__init__(message, position)

    def __str__(self) -> str:
        message = str(self.args[0])
        return f"{message} (at index {self.position})" if self.position is not None else message


def group_leaves(error: BaseException) -> list[BaseException] | None:
    """The members of an exception group, nested groups flattened; None for another error."""
    if not isinstance(error, BaseExceptionGroup):
        return None
    leaves: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(reversed(current.exceptions))  # in order: `pending` is a stack
        else:
            leaves.append(current)
    return leaves


def stage_error(error: BaseException) -> BaseException:
    """The error a pipeline stage raised, for a `PipelineStageError`; else `error` itself."""
    while isinstance(error, PipelineStageError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _refusals(error: BaseException) -> Iterator[tuple[BaseException, bool]]:
    """Each error `error` stands for, with whether it is a policy refusal.

    A pipeline stage's error stands for it, and a group's members (nested ones too).
    """
    error = stage_error(error)
    leaves = group_leaves(error)
    if leaves is None:
        yield error, isinstance(error, (PolicyDeniedError, BudgetExceededError))
        return
    for leaf in leaves:
        yield from _refusals(leaf)


def policy_error_in(error: BaseException) -> PolicyDeniedError | BudgetExceededError | None:
    """The first policy refusal `error` carries, if any.

    That is `error` itself, the error of a pipeline stage it reports (a `PipelineStageError`'s
    cause), or one inside an exception group (a `TaskGroup` of sub-agents, say), a stage's
    in a group too. The runtime ends a run on one as on a refusal raised alone, and retries
    never repeat one.
    """
    for leaf, _ in _refusals(error):
        if isinstance(leaf, (PolicyDeniedError, BudgetExceededError)):
            return leaf
    return None


def is_refusal(error: BaseException) -> bool:
    """Whether `error` is policy refusals and nothing else (see `policy_error_in`).

    A circuit breaker counts every other error against its service: a group that holds a
    service's failure beside a refusal says something of its health.
    """
    return all(refused for _, refused in _refusals(error))
