"""Circuit breaker: stop calling a failing service, probe it again after a recovery window.

States: `closed` (calls pass; consecutive failures are counted), `open` (calls are refused
with `CircuitOpenError` until `recovery_window` has passed), `half_open` (up to
`half_open_max_calls` trial calls pass; a success closes the circuit, a failure opens it again).

The state lives in a `CircuitStateBackend`, so several processes can share one breaker (a
Redis backend does that); the default keeps it in this process.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

from llm_agent_runtime.errors import CircuitOpenError
from llm_agent_runtime.orchestration._calls import call_maybe_async
from llm_agent_runtime.orchestration.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "CircuitStateBackend",
    "CircuitStateChange",
    "InMemoryCircuitStateBackend",
]

Status = Literal["closed", "open", "half_open"]
T = TypeVar("T")


class CircuitState(NamedTuple):
    """The shared state of one breaker (immutable: each change makes a new one)."""

    status: Status = "closed"
    """Current state."""
    failures: int = 0
    """Consecutive failures counted while closed."""
    opened_at: float = 0.0
    """Clock time the circuit last opened."""
    trial_calls: int = 0
    """Trial calls in flight while half-open."""


CLOSED = CircuitState()


@dataclass(frozen=True)
class CircuitStateChange:
    """Event: a breaker changed state."""

    service: str
    """The breaker's service name."""
    old: Status
    """State before the change."""
    new: Status
    """State after the change."""
    at: float
    """Clock time of the change."""


@runtime_checkable
class CircuitStateBackend(Protocol):
    """Where breakers keep their state; `update` must be atomic per service."""

    async def get(self, service: str) -> CircuitState:
        """Returns the state of `service` (closed when never seen)."""
        ...

    async def update(
        self, service: str, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        """Applies `change` atomically to the state of `service`; returns (old, new)."""
        ...


class InMemoryCircuitStateBackend:
    """Keeps breaker state in this process (thread-safe)."""

    def __init__(self) -> None:
        self._states: dict[str, CircuitState] = {}
        self._lock = threading.Lock()

    def update_now(
        self, service: str, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        """Synchronous `update` (the in-process backend needs no I/O)."""
        with self._lock:
            old = self._states.get(service, CLOSED)
            new = change(old)
            if new is not old:
                self._states[service] = new
            return old, new

    def peek(self, service: str) -> CircuitState:
        """Returns the state of `service` without locking (a snapshot read)."""
        return self._states.get(service, CLOSED)

    async def get(self, service: str) -> CircuitState:
        """Returns the state of `service`."""
        return self._states.get(service, CLOSED)

    async def update(
        self, service: str, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        """Applies `change` atomically; returns (old, new)."""
        return self.update_now(service, change)


class CircuitBreaker:
    """A circuit breaker around calls to one service.

    Use it as `await breaker.call(fn, *args)`, as `async with breaker:`, or as a decorator
    on a sync or async function.

    Args:
        service: name of the protected service (used in errors, events and the backend).
        failure_threshold: consecutive failures that open the circuit.
        recovery_window: seconds the circuit stays open before trial calls are let through.
        half_open_max_calls: trial calls allowed at once while half-open.
        backend: where the state lives; in this process by default.
        clock: time source; the system clock by default.
        is_failure: decides whether an exception counts as a failure (default: any
            `Exception`; cancellation never counts).

    Raises:
        ValueError: a threshold, window or trial count is not positive.
    """

    def __init__(
        self,
        service: str,
        failure_threshold: int = 5,
        recovery_window: float = 30.0,
        half_open_max_calls: int = 1,
        backend: CircuitStateBackend | None = None,
        clock: Clock | None = None,
        is_failure: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if recovery_window <= 0:
            raise ValueError(f"recovery_window must be > 0, got {recovery_window}")
        if half_open_max_calls < 1:
            raise ValueError(f"half_open_max_calls must be >= 1, got {half_open_max_calls}")
        self.service = service
        self.failure_threshold = failure_threshold
        self.recovery_window = recovery_window
        self.half_open_max_calls = half_open_max_calls
        self._backend: CircuitStateBackend = backend or InMemoryCircuitStateBackend()
        self._local = (
            self._backend if isinstance(self._backend, InMemoryCircuitStateBackend) else None
        )
        self._clock = clock or SYSTEM_CLOCK
        self._is_failure = is_failure
        self._listeners: list[Callable[[CircuitStateChange], None]] = []
        self.transitions: Counter[str] = Counter()
        """How many times each change happened, keyed `"old->new"`."""
        self._last: CircuitState = CLOSED

    # -- state machine (pure functions of the state) ------------------------------------

    def _admit(self, state: CircuitState) -> CircuitState:
        """The state after admitting a call; unchanged when the call must be refused."""
        if state.status == "closed":
            return state
        if state.status == "open":
            if self._clock.now() - state.opened_at < self.recovery_window:
                return state
            return CircuitState("half_open", state.failures, state.opened_at, 1)
        if state.trial_calls < self.half_open_max_calls:
            return state._replace(trial_calls=state.trial_calls + 1)
        return state

    def _on_success(self, state: CircuitState) -> CircuitState:
        if state.status == "closed" and state.failures == 0:
            return state
        return CLOSED

    def _on_failure(self, state: CircuitState) -> CircuitState:
        if state.status == "half_open":
            return CircuitState("open", state.failures, self._clock.now(), 0)
        if state.status == "open":
            return state
        failures = state.failures + 1
        if failures >= self.failure_threshold:
            return CircuitState("open", failures, self._clock.now(), 0)
        return state._replace(failures=failures)

    def _release_trial(self, state: CircuitState) -> CircuitState:
        # A trial call ended without a verdict (cancelled or not a failure): free its slot.
        if state.status == "half_open" and state.trial_calls > 0:
            return state._replace(trial_calls=state.trial_calls - 1)
        return state

    # -- plumbing -------------------------------------------------------------------------

    def _observe(self, old: CircuitState, new: CircuitState) -> None:
        self._last = new
        if old.status != new.status:
            self.transitions[f"{old.status}->{new.status}"] += 1
            if self._listeners:
                event = CircuitStateChange(self.service, old.status, new.status, self._clock.now())
                for listener in self._listeners:
                    listener(event)

    @staticmethod
    def _admitted(old: CircuitState, new: CircuitState) -> bool:
        # `_admit` leaves the state unchanged exactly when it refuses a call.
        return new.status == "closed" or new != old

    async def _enter(self) -> None:
        old, new = await self._backend.update(self.service, self._admit)
        self._observe(old, new)
        if not self._admitted(old, new):
            raise CircuitOpenError(self.service)

    async def _exit(self, error: BaseException | None) -> None:
        change = self._verdict(error)
        old, new = await self._backend.update(self.service, change)
        self._observe(old, new)

    def _verdict(self, error: BaseException | None) -> Callable[[CircuitState], CircuitState]:
        if error is None:
            return self._on_success
        if not isinstance(error, Exception):
            return self._release_trial
        if self._is_failure is not None and not self._is_failure(error):
            return self._release_trial
        return self._on_failure

    # -- public API -----------------------------------------------------------------------

    @property
    def state(self) -> Status:
        """The current state (`closed`, `open` or `half_open`).

        Exact for the in-process backend; with a shared backend, the last state this breaker
        saw (use `current_state()` to read the backend).
        """
        if self._local is not None:
            return self._local.peek(self.service).status
        return self._last.status

    async def current_state(self) -> CircuitState:
        """Reads the state from the backend (shared with other processes)."""
        state = await self._backend.get(self.service)
        self._last = state
        return state

    def add_listener(self, listener: Callable[[CircuitStateChange], None]) -> None:
        """Calls `listener` with a `CircuitStateChange` on every state change."""
        self._listeners.append(listener)

    def _closed_and_clean(self) -> bool:
        """Whether the in-process state is closed with no failures counted.

        The fast path: such a call needs no state change when it succeeds, so it skips the
        backend entirely (a read of a dict, no lock).
        """
        local = self._local
        return local is not None and local.peek(self.service) is CLOSED

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Calls `fn` (sync or async) through the breaker.

        Raises:
            CircuitOpenError: the circuit is open; `fn` was not called.
        """
        if self._closed_and_clean():
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except BaseException as exc:
                await self._exit(exc)
                raise
            return result
        await self._enter()
        try:
            result = await call_maybe_async(fn, *args, **kwargs)
        except BaseException as exc:
            await self._exit(exc)
            raise
        await self._exit(None)
        return result

    def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Calls a sync `fn` through the breaker without an event loop.

        Raises:
            CircuitOpenError: the circuit is open; `fn` was not called.
            TypeError: the breaker uses a shared backend, which needs the async API.
        """
        local = self._local
        if local is None:
            raise TypeError("a shared circuit backend needs the async API: await breaker.call(...)")
        if local.peek(self.service) is CLOSED:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                self._observe(*local.update_now(self.service, self._verdict(exc)))
                raise
        old, new = local.update_now(self.service, self._admit)
        self._observe(old, new)
        if not self._admitted(old, new):
            raise CircuitOpenError(self.service)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._observe(*local.update_now(self.service, self._verdict(exc)))
            raise
        self._observe(*local.update_now(self.service, self._on_success))
        return result

    async def __aenter__(self) -> CircuitBreaker:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit(exc)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorates a sync or async function so every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call_sync(fn, *args, **kwargs)

        return sync_wrapper

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(service={self.service!r}, state={self.state!r}, "
            f"failure_threshold={self.failure_threshold}, recovery_window={self.recovery_window})"
        )
