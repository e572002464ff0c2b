"""Circuit breaker: stop calling a failing service, probe it again after a recovery window.

States: `closed` (calls pass; consecutive failures are counted, a success resets the count),
`open` (calls are refused with `CircuitOpenError` until `recovery_window` has passed),
`half_open` (up to `half_open_max_calls` trial calls pass; a trial's success closes the circuit,
a failure opens it again).

Each call remembers the state that admitted it: a trial call of the current half-open period,
or a call of the current closed period (the closed periods are told apart by the outage each
follows). Only a trial frees a trial slot when it ends without a verdict (cancelled, or an
error that `is_failure` does not count), and only its success or failure decides the half-open
state. A call admitted while the circuit was closed that ends after the circuit opened is
stale, even once the circuit has closed again: its success changes nothing (the service was
not probed, and failures counted since stay counted), its failure neither reopens the circuit
nor counts (the service failed it before the outage, and the probe decides), and it frees no
slot it never held.

A half-open circuit always recovers. Trial slots are handed back when a trial ends (a caller
cancelled while a shared backend admits it gives back the slot it was given, once the backend
replies), but a trial can also end unseen: its worker process is killed, or its outcome (or
that slot's return) cannot be written to a shared backend. So when every slot is taken and the
latest trial was admitted `trial_timeout` seconds ago or more, the next call reclaims the
slots and starts a new round of trials; the trials of the earlier round then count as stale.
Recording a call's outcome never changes that outcome: a backend failure is logged and counted
in `record_errors`, and an exception raised by a state-change listener (or by `is_failure`) is
logged.

The state lives in a `CircuitStateBackend`, so several processes can share one breaker (a
Redis backend does that); the default keeps it in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import GeneratorType, TracebackType
from typing import (
    Any,
    Literal,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime.errors import CircuitOpenError, is_refusal
from llm_agent_runtime.orchestration._calls import (
    call_maybe_async,
    is_async_callable,
    keep_alive,
    refuse_awaitable,
)
from llm_agent_runtime.orchestration._checks import (
    check_count,
    check_seconds,
    safe_repr,
    short_repr,
)
from llm_agent_runtime.orchestration.clock import Clock, checked_clock

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "CircuitStateBackend",
    "CircuitStateChange",
    "InMemoryCircuitStateBackend",
]

Status = Literal["closed", "open", "half_open"]
P = ParamSpec("P")
T = TypeVar("T")

Admission = tuple[int, int]
"""The token of an admitted call: `(openings, trial_round)` of the state that admitted it.

A trial's names its round of trials; a call admitted while closed has round `CLOSED_ROUND`
(its `openings` tells the closed period apart from those before and after an outage).
"""

CLOSED_ROUND = -1
"""The `trial_round` of the token of a call admitted while the circuit was closed."""

logger = logging.getLogger(__name__)

_GIVE_BACK_SECONDS = 1.0
"""How long a caller cancelled while a shared backend admits it waits to give its trial slot
back before its cancellation goes on (see `CircuitBreaker._enter`)."""


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
    trial_started: float = 0.0
    """Clock time the latest trial call was admitted while half-open."""
    trial_round: int = 0
    """Rounds of trial slots reclaimed in this half-open period (see `trial_timeout`)."""
    openings: int = 0
    """Times the circuit has opened: it numbers the periods, an open period and the
    half-open and closed ones after it."""


CLOSED = CircuitState()

_HELD: contextvars.ContextVar[tuple[tuple[object, Admission], ...]] = contextvars.ContextVar(
    "llm_agent_runtime_circuit_breaker_held", default=()
)
"""(breaker, admission token) of each `async with breaker:` block open in the current task."""


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


class InMemoryCircuitStateBackend(Unshared):
    """Keeps breaker state in this process (thread-safe)."""

    def __init__(self) -> None:
        self._states: dict[str, CircuitState] = {}
        self._lock = threading.Lock()

    @safe_repr
    def __repr__(self) -> str:
        return f"InMemoryCircuitStateBackend(services={len(self._states)})"

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


def _plain_in_memory(backend: object) -> InMemoryCircuitStateBackend | None:
    """`backend` when it is an in-process one whose methods are all the base class's.

    The breaker then reads and changes its states directly; a subclass overriding one of
    them (to log, say) is called through them, as a shared backend is.
    """
    kind = type(backend)
    if not isinstance(backend, InMemoryCircuitStateBackend) or any(
        getattr(kind, name) is not getattr(InMemoryCircuitStateBackend, name)
        for name in ("get", "update", "update_now", "peek")
    ):
        return None
    return backend


class CircuitBreaker(Unshared):
    """A circuit breaker around calls to one service.

    Use it as `await breaker.call(fn, *args)`, as `async with breaker:`, or as a decorator
    on a sync or async function.

    Args:
        service: name of the protected service (used in errors, events and the backend).
        failure_threshold: consecutive failures that open the circuit (an int).
        recovery_window: seconds the circuit stays open before trial calls are let through.
        half_open_max_calls: trial calls allowed at once while half-open (an int).
        backend: where the state lives; in this process by default.
        clock: time source; the system clock by default. One that steps back (a wall clock
            corrected) holds an open circuit, or a lost trial's slot, one more
            `recovery_window` (or `trial_timeout`) at most, timed from the first call that
            sees the step, not the step itself.
        is_failure: decides whether an exception counts as a failure (default: any
            `Exception` but the runtime's policy refusals, `PolicyDeniedError` and
            `BudgetExceededError`, which say nothing of the service's health, also inside
            an exception group or as a pipeline stage's error; pass
            `lambda error: True` to count those too; cancellation never counts; an exception
            it raises is logged, and the error counts).
        trial_timeout: seconds after which the trial slots of a half-open circuit whose
            trials never reported back (a killed worker, an outcome the backend failed to
            record) are reclaimed: once every slot is taken and the latest trial was admitted
            this long ago, the next call starts a new round of trials (default:
            `recovery_window`). Make it longer than a trial call may take.

    `service`, `failure_threshold`, `recovery_window`, `half_open_max_calls` and
    `trial_timeout` may be set again later, checked as the constructor checks them (a bad
    value raises, and the old one stays); the next call goes by them. A `trial_timeout` left
    to its default (or set to None) follows `recovery_window` when that is set. The state
    stays as it is: a threshold set at or below the failures counted opens the circuit at the
    next failure; a breaker given another `service` goes by that service's state (see
    `service`).

    Raises:
        ValueError: a threshold, window, timeout or trial count is not positive, or is NaN or
            infinite; a threshold or trial count is not an int (a float such as 1.5, or a
            bool); a window or timeout is not a number (a bool included).
        TypeError: `service` is not a str, `is_failure` is neither callable nor None,
            `clock` is not a `Clock` (see `checked_clock`), or `backend` is not a
            `CircuitStateBackend` (an object with callable `get` and `update`; a class or a
            URL is none).
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
        trial_timeout: float | None = None,
    ) -> None:
        service = _checked_service(service)
        if is_failure is not None and not callable(is_failure):
            # Else every error would go through "is_failure raised" and count as a failure.
            raise TypeError(f"is_failure must be callable (or None), got {short_repr(is_failure)}")
        if backend is not None and (
            isinstance(backend, type | Mapping)  # a dict has a get() and an update() too
            or not all(callable(getattr(backend, name, None)) for name in ("get", "update"))
        ):
            # Else every call failed with an AttributeError (or a dict's TypeError) from the
            # backend's place.
            raise TypeError(
                f"backend must be a CircuitStateBackend (with get() and update()), "
                f"got {backend!r:.80}"
            )
        failure_threshold = check_count("failure_threshold", failure_threshold, 1)
        half_open_max_calls = check_count("half_open_max_calls", half_open_max_calls, 1)
        recovery_window = check_seconds("recovery_window", recovery_window)
        # The settings' backing attributes: the state machine reads them, not the properties.
        self._service = service
        self._failure_threshold = failure_threshold
        self._recovery_window = recovery_window
        self._half_open_max_calls = half_open_max_calls
        # None: it follows `recovery_window` (the default).
        self._trial_timeout_given: float | None = None
        self._trial_timeout = recovery_window
        self.trial_timeout = trial_timeout
        # `is None`, not truth: a shared backend may be falsy while it holds no state.
        self._backend: CircuitStateBackend = (
            InMemoryCircuitStateBackend() if backend is None else backend
        )
        self._local = _plain_in_memory(self._backend)
        # The in-process states, read directly on the fast path (`peek` without the call).
        self._local_states = None if self._local is None else self._local._states
        # The sync functions decorated with this breaker (see `__call__`): one that returns
        # an awaitable has it awaited under the breaker, where `call_sync` refuses it.
        self._decorated: weakref.WeakSet[Callable[..., Any]] | None = None
        self._clock = checked_clock(clock)
        self._is_failure = is_failure
        self._listeners: list[Callable[[CircuitStateChange], None]] = []
        self.transitions: Counter[str] = Counter()
        """How many times each change happened, keyed `"old->new"`."""
        self.record_errors = 0
        """Outcomes of calls the backend failed to record (each is counted, and logged once
        per failed write: the outcomes written together fail together; the call's own result
        or error is what its caller got)."""
        self._unrecorded: BaseException | None = None  # what failed the last logged write
        self._last: CircuitState = CLOSED
        # Held while an in-process change is made and observed (reentrant: a listener may
        # call through the breaker).
        self._order = threading.RLock()

    # -- settings -------------------------------------------------------------------------

    @property
    def service(self) -> str:
        """The protected service's name (in errors, events and the backend); checked when set.

        Its state is kept under this name: a breaker given another service goes by that
        service's state from its next call on (its backend's, closed when never seen), and
        the state of the one before stays in the backend as it was (a breaker given that
        name again finds it). Set it between calls: a call under way records its outcome
        under the name it ends with. `transitions` and `record_errors` go on counting for
        the breaker.
        """
        return self._service

    @service.setter
    def service(self, service: str) -> None:
        # Checked as in the constructor: an int worked in this process, and failed every
        # call with a shared backend (where it is part of a Redis key).
        self._service = _checked_service(service)
        # The state a shared backend gave last was the old service's: the new one's is not
        # known until it is read (`state` reports it closed until then).
        self._last = CLOSED

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the circuit; checked when set."""
        return self._failure_threshold

    @failure_threshold.setter
    def failure_threshold(self, failure_threshold: int) -> None:
        # Checked as in the constructor: a str failed each later failure with a TypeError.
        self._failure_threshold = check_count("failure_threshold", failure_threshold, 1)

    @property
    def recovery_window(self) -> float:
        """Seconds the circuit stays open before trial calls; checked when set."""
        return self._recovery_window

    @recovery_window.setter
    def recovery_window(self, recovery_window: float) -> None:
        recovery_window = check_seconds("recovery_window", recovery_window)
        self._recovery_window = recovery_window
        if self._trial_timeout_given is None:  # the default follows it
            self._trial_timeout = recovery_window

    @property
    def half_open_max_calls(self) -> int:
        """Trial calls allowed at once while half-open; checked when set."""
        return self._half_open_max_calls

    @half_open_max_calls.setter
    def half_open_max_calls(self, half_open_max_calls: int) -> None:
        self._half_open_max_calls = check_count("half_open_max_calls", half_open_max_calls, 1)

    @property
    def trial_timeout(self) -> float:
        """Seconds after which lost trial slots are reclaimed; checked when set.

        Set to None, it is `recovery_window`, and follows it, as the constructor's default.
        """
        return self._trial_timeout

    @trial_timeout.setter
    def trial_timeout(self, trial_timeout: float | None) -> None:
        if trial_timeout is None:
            self._trial_timeout_given = None
            self._trial_timeout = self._recovery_window
        else:
            seconds = check_seconds("trial_timeout", trial_timeout)
            self._trial_timeout_given = self._trial_timeout = seconds

    # -- state machine (pure functions of the state) ------------------------------------

    def _admit(self, state: CircuitState) -> CircuitState:
        """The state after admitting a call (see `_is_trial`).

        When the call must be refused: unchanged, or with its wait timed anew from a clock
        that stepped back.
        """
        if state.status == "closed":
            return state
        now = self._clock.now()
        # Deadlines, not elapsed times: `now - opened_at` can round below a window that
        # `opened_at + window` (what a clock sleeping that window reaches) does not.
        # A time before the one stored means the clock stepped back (a wall clock corrected,
        # or another machine's ahead): the wait is timed from now on, else it lasted the step
        # too. The call is refused all the same (see `_is_trial`).
        if state.status == "open":
            if now < state.opened_at:
                return state._replace(opened_at=now)
            if now < state.opened_at + self._recovery_window:
                return state
            return state._replace(status="half_open", trial_calls=1, trial_started=now)
        if state.trial_calls < self._half_open_max_calls:
            return state._replace(trial_calls=state.trial_calls + 1, trial_started=now)
        if now < state.trial_started:
            return state._replace(trial_started=now)
        if now >= state.trial_started + self._trial_timeout:
            # Every slot is held by a trial admitted at least `trial_timeout` ago that never
            # reported back: a new round of trials begins with this call.
            return state._replace(
                trial_calls=1, trial_started=now, trial_round=state.trial_round + 1
            )
        return state

    # A call admitted as a trial holds a slot of one round of trials, identified by the
    # `openings` of the open period the half-open period ended and the `trial_round` within
    # it: the call's admission token. A call admitted while closed has the token of the
    # closed period: its `openings`, and `CLOSED_ROUND`.

    @staticmethod
    def _is_current(state: CircuitState, token: Admission) -> bool:
        """Whether `token` is of the current closed period, or round of trials, of `state`."""
        if state.status == "open" or token[0] != state.openings:
            return False
        if state.status == "closed":
            return token[1] == CLOSED_ROUND
        return token[1] == state.trial_round

    def _on_success(self, state: CircuitState, token: Admission) -> CircuitState:
        if not self._is_current(state, token):
            return state  # open, or a stale call (of an earlier period or round)
        if state.status == "closed":
            return state if state.failures == 0 else state._replace(failures=0)
        # A trial succeeded: recovered, in the closed period after this outage.
        return CircuitState(opened_at=state.opened_at, openings=state.openings)

    def _on_failure(self, state: CircuitState, token: Admission) -> CircuitState:
        if not self._is_current(state, token):
            return state  # open, or a stale call: the trials decide, or it failed before
        failures = state.failures if state.status == "half_open" else state.failures + 1
        if state.status == "half_open" or failures >= self._failure_threshold:
            return CircuitState("open", failures, self._clock.now(), openings=state.openings + 1)
        return state._replace(failures=failures)

    @classmethod
    def _release_trial(cls, state: CircuitState, trial: Admission) -> CircuitState:
        # A trial call ended without a verdict (cancelled or not a failure): free its slot,
        # if the round it holds a slot of is still the current one.
        if state.status == "half_open" and cls._is_current(state, trial) and state.trial_calls:
            return state._replace(trial_calls=state.trial_calls - 1)
        return state

    # -- plumbing -------------------------------------------------------------------------

    def _observe(self, old: CircuitState, new: CircuitState) -> None:
        self._last = new
        if old.status != new.status:
            self.transitions[f"{old.status}->{new.status}"] += 1
            if self._listeners:
                event = CircuitStateChange(self._service, old.status, new.status, self._clock.now())
                for listener in self._listeners:
                    try:
                        listener(event)
                    except Exception:
                        # A listener (a metrics or alerting hook) must not break admission
                        # nor the state machine: the change has happened already.
                        logger.exception(
                            "circuit breaker %r: state-change listener %r failed on %s->%s",
                            self._service,
                            listener,
                            old.status,
                            new.status,
                        )

    def _admission(self, old: CircuitState, new: CircuitState) -> Admission:
        """The token of a call `_admit` took `old` to `new` for; refuses a call.

        Raises:
            CircuitOpenError: `_admit` refused the call.
        """
        if new.status == "closed":
            return new.openings, CLOSED_ROUND
        if not self._is_trial(old, new):
            raise CircuitOpenError(self._service)
        return new.openings, new.trial_round  # admitted as a trial of this round

    @staticmethod
    def _is_trial(old: CircuitState, new: CircuitState) -> bool:
        """Whether `_admit` took `old` to `new` by admitting a trial call.

        Else it refused the call, leaving the state as it was or only timing its wait anew.
        """
        return new.status == "half_open" and (
            old.status != "half_open"
            or new.trial_calls != old.trial_calls
            or new.trial_round != old.trial_round
        )

    def _update_local(
        self, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        """Applies `change` to the in-process state and observes it, in one step.

        In one step so that threads (`call_sync`) report changes in the order they happened:
        a listener keeping a gauge ends on the current state.
        """
        local = self._local
        assert local is not None
        with self._order:
            old, new = local.update_now(self._service, change)
            self._observe(old, new)
        return old, new

    async def _enter(self) -> Admission:
        if self._local is not None:
            old, new = self._update_local(self._admit)
            return self._admission(old, new)
        # Shielded: a caller cancelled while a shared backend admits it must learn what was
        # admitted, or a trial slot it took would stay taken, refusing every call until
        # `trial_timeout`.
        update = keep_alive(asyncio.ensure_future(self._backend.update(self._service, self._admit)))
        try:
            old, new = await asyncio.shield(update)
        except asyncio.CancelledError:
            # The slot is given back before the cancellation goes on, within a grace period
            # (unless the caller is cancelled again): left to the background, it stayed taken
            # when the loop then shut down (Ctrl-C under `asyncio.run` cancels every task
            # left, the update too). A backend slower than that goes on in the background.
            giving_back = keep_alive(asyncio.ensure_future(self._admitted_late(update)))
            await asyncio.wait([giving_back], timeout=_GIVE_BACK_SECONDS)
            raise
        self._observe(old, new)
        return self._admission(old, new)

    async def _admitted_late(
        self, update: asyncio.Future[tuple[CircuitState, CircuitState]]
    ) -> None:
        """Gives back the trial slot of an admission that outlived its (cancelled) caller."""
        try:
            old, new = await update
        except BaseException:  # cancelled, or failed: nothing admitted this process knows of
            return
        self._observe(old, new)
        if not self._is_trial(old, new):
            return  # admitted while closed (nothing to give back), or refused
        release = functools.partial(self._release_trial, trial=(new.openings, new.trial_round))
        given_back = keep_alive(asyncio.ensure_future(self._backend.update(self._service, release)))
        given_back.add_done_callback(self._recorded_late)
        await asyncio.wait([given_back])

    async def _exit(self, error: BaseException | None, trial: Admission) -> None:
        """Records the outcome of a call; never raises but `CancelledError`.

        A backend failure is logged and counted (the call's own outcome stands). The update
        runs to its end even if the caller is cancelled meanwhile (then `CancelledError` is
        raised, and the update is observed when it is done).
        """
        change = self._verdict(error, trial)
        if change is None:
            return
        if self._local is not None:
            self._record_now(change)
            return
        update = keep_alive(asyncio.ensure_future(self._backend.update(self._service, change)))
        try:
            old, new = await asyncio.shield(update)
        except asyncio.CancelledError:
            update.add_done_callback(self._recorded_late)
            raise
        except Exception as failure:
            self._record_failed(failure)
            return
        self._observe(old, new)

    def _exit_sync(self, error: BaseException | None, trial: Admission) -> None:
        """`_exit` for the in-process backend."""
        change = self._verdict(error, trial)
        if change is not None:
            self._record_now(change)

    def _record_now(self, change: Callable[[CircuitState], CircuitState]) -> None:
        try:
            self._update_local(change)
        except Exception as failure:
            self._record_failed(failure)

    def _recorded_late(self, update: asyncio.Future[tuple[CircuitState, CircuitState]]) -> None:
        """Observes an outcome update that outlived its (cancelled) caller."""
        if update.cancelled():
            self._record_failed(asyncio.CancelledError("the update was cancelled"))
        elif (failure := update.exception()) is not None:
            self._record_failed(failure)
        else:
            self._observe(*update.result())

    def _record_failed(self, failure: BaseException) -> None:
        self.record_errors += 1
        # The outcomes of one batched write fail each with an error of its own, caused by
        # the write's: that one is logged once.
        cause = failure.__cause__ or failure
        if cause is self._unrecorded:
            return
        self._unrecorded = cause
        logger.warning(
            "circuit breaker %r: could not record a call's outcome (%s: %s); the call's own "
            "result stands, and a trial slot it held is reclaimed after trial_timeout",
            self._service,
            type(failure).__name__,
            failure,
        )

    def _verdict(
        self, error: BaseException | None, token: Admission
    ) -> Callable[[CircuitState], CircuitState] | None:
        """The state change for a call that ended with `error`; None when there is none."""
        if error is None:
            return functools.partial(self._on_success, token=token)
        if isinstance(error, Exception) and self._counts_as_failure(error):
            return functools.partial(self._on_failure, token=token)
        # Cancelled, or not a failure: only a trial call has something (its slot) to give back.
        if token[1] == CLOSED_ROUND:
            return None
        return functools.partial(self._release_trial, trial=token)

    def _counts_as_failure(self, error: Exception) -> bool:
        if self._is_failure is None:
            # A policy refusal (a spent budget, a denied capability) says nothing of the
            # service's health, also when it comes in a group or from a pipeline's stage.
            return not is_refusal(error)
        try:
            return bool(self._is_failure(error))
        except Exception:
            # A broken predicate must not replace the call's own error either.
            logger.exception(
                "circuit breaker %r: is_failure raised on %r; counted as a failure",
                self._service,
                error,
            )
            return True

    # -- public API -----------------------------------------------------------------------

    @property
    def state(self) -> Status:
        """The current state (`closed`, `open` or `half_open`).

        Exact for the in-process backend; with a shared backend, the last state this breaker
        saw (use `current_state()` to read the backend). A state changes at a call: `open`
        stays `open` past `recovery_window` until the next call is let through as the trial
        (a health check polling it with no traffic sees `open`).
        """
        if self._local is not None:
            return self._local.peek(self._service).status
        return self._last.status

    async def current_state(self) -> CircuitState:
        """Reads the state from the backend (shared with other processes)."""
        state = await self._backend.get(self._service)
        self._last = state
        return state

    def add_listener(self, listener: Callable[[CircuitStateChange], None]) -> None:
        """Calls `listener` with a `CircuitStateChange` on every state change.

        Raises:
            TypeError: `listener` is not callable, or is async: state changes happen in sync
                code, where it could not be awaited (schedule a task from a sync listener
                instead).
        """
        if not callable(listener):
            # Else each state change logged the TypeError of calling it.
            raise TypeError(
                f"a circuit state-change listener must be callable, got {listener!r:.80}"
            )
        if is_async_callable(listener):
            raise TypeError(
                "a circuit state-change listener must be sync: state changes happen where it "
                "cannot be awaited (a sync listener can schedule a task)"
            )
        self._listeners.append(listener)

    @overload
    async def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Calls `fn` (sync or async) through the breaker.

        `fn` is positional-only, so `kwargs` may hold an argument named `fn`. An awaitable
        that `fn` returns is awaited: `await breaker.call(fn, ...)` gives what `fn` returns,
        or what its awaitable gives.

        Raises:
            CircuitOpenError: the circuit is open; `fn` was not called.
            TypeError: `fn` is not callable (a coroutine passed instead of its function, say:
                it is closed); the breaker's state is left as it was.
            PersistenceError: a shared backend's store failed (Redis unreachable, say).
        """
        states = self._local_states
        if states is not None:
            start = states.get(self._service, CLOSED)
            if start.status == "closed" and not start.failures:
                # The fast path: in-process state, closed with no failures counted. Such a
                # call needs no state change to start, nor to succeed unless the state moved
                # meanwhile (a read of a dict, no lock).
                token = (start.openings, CLOSED_ROUND)
                try:
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                except BaseException as exc:
                    if not callable(fn):  # checked here, off the path of a call that works
                        raise _uncallable(fn, "CircuitBreaker.call") from None
                    self._exit_sync(exc, token)
                    raise
                if states.get(self._service, CLOSED) is not start:
                    # Failures were counted while this call ran (its success resets them), or
                    # the circuit opened (then its success changes nothing).
                    self._exit_sync(None, token)
                return result
        if not callable(fn):  # before admission: a trial slot would be taken, then failed
            raise _uncallable(fn, "CircuitBreaker.call")
        trial = await self._enter()
        try:
            result = await call_maybe_async(fn, *args, **kwargs)
        except BaseException as exc:
            await self._exit(exc, trial)
            raise
        await self._exit(None, trial)
        return result

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Calls a sync `fn` through the breaker without an event loop (`fn` positional-only).

        Raises:
            CircuitOpenError: the circuit is open; `fn` was not called.
            TypeError: the breaker uses a shared backend, which needs the async API; or `fn`
                returned an awaitable (an async callable, a future...: it counts as a failed
                call, whatever the state); or `fn` is not callable (the state is left as it
                was).
        """
        states = self._local_states
        if states is None:
            raise TypeError("a shared circuit backend needs the async API: await breaker.call(...)")
        start = states.get(self._service, CLOSED)
        if start.status == "closed" and not start.failures:
            # The fast path, as in `call`.
            token = (start.openings, CLOSED_ROUND)
            try:
                result = fn(*args, **kwargs)
                # Any awaitable is refused, as on a trial. This is the hot path: what
                # `surely_not_awaitable` tests, inline, skips the call.
                if getattr(result, "__await__", None) is not None or type(result) is GeneratorType:
                    later = self._awaited_later(fn, result, token)
                    if later is not None:
                        return cast("T", later)
            except BaseException as exc:
                if not callable(fn):  # as in `call`
                    raise _uncallable(fn, "CircuitBreaker.call_sync") from None
                self._exit_sync(exc, token)
                raise
            if states.get(self._service, CLOSED) is not start:
                self._exit_sync(None, token)  # as in `call`: the state moved while it ran
            return result
        if not callable(fn):  # as in `call`
            raise _uncallable(fn, "CircuitBreaker.call_sync")
        old, new = self._update_local(self._admit)
        trial = self._admission(old, new)
        try:
            result = fn(*args, **kwargs)
            later = self._awaited_later(fn, result, trial)
            if later is not None:
                return cast("T", later)
        except BaseException as exc:
            self._exit_sync(exc, trial)
            raise
        self._exit_sync(None, trial)
        return result

    def _awaited_later(self, fn: Callable[..., Any], result: object, token: Admission) -> Any:
        """For `call_sync`'s `fn` that returned `result`, maybe an awaitable: what to return.

        None when `result` is no awaitable (it is the call's result). An awaitable that a
        sync function decorated with this breaker returned gives a coroutine awaiting it
        under the breaker (the call's outcome is the awaited one's); any other is refused.

        Raises:
            TypeError: `fn` is not such a decorated function (see `refuse_awaitable`).
        """
        decorated = self._decorated
        if decorated is not None and inspect.isawaitable(result):
            try:
                known = fn in decorated
            except TypeError:  # unhashable: no decorated function
                known = False
            if known:
                return self._settled_later(result, token)
        refuse_awaitable(result, "CircuitBreaker.call_sync")
        return None

    async def _settled_later(self, awaitable: Awaitable[Any], token: Admission) -> Any:
        """Awaits what a decorated sync function returned; its outcome is the call's."""
        try:
            result = await awaitable
        except BaseException as exc:
            self._exit_sync(exc, token)
            raise
        self._exit_sync(None, token)
        return result

    async def __aenter__(self) -> CircuitBreaker:
        trial = await self._enter()
        _HELD.set((*_HELD.get(), (self, trial)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = _HELD.get()
        for index in range(len(held) - 1, -1, -1):  # the innermost block of this breaker
            if held[index][0] is self:
                _HELD.set(held[:index] + held[index + 1 :])
                await self._exit(exc, held[index][1])
                return
        # Left in another context than it was entered in: an async generator's block closed
        # by its loop as it ends, or by the garbage collector (`GeneratorExit`, which has no
        # verdict). The admission is not known here: nothing is recorded (a trial slot it
        # held is reclaimed after `trial_timeout`).

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorates a sync or async callable so every call goes through the breaker.

        The decorated function takes the same arguments and returns the same type: an async
        one is called by `call` (its coroutine gives what `fn`'s would), a sync one by
        `call_sync`. A sync one that returns an awaitable (a lambda returning a coroutine, a
        function starting a task) returns instead a coroutine awaiting it under the breaker:
        the call succeeds or fails as the awaited work does (`call_sync` refuses it).

        Raises:
            TypeError: `fn` is sync and the breaker uses a shared backend, which needs the
                async API (else every call of the decorated function raised it).
        """
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call(fn, *args, **kwargs)

            return cast("Callable[P, T]", async_wrapper)
        if self._local_states is None:
            raise TypeError(
                f"a shared circuit backend needs the async API: decorate an async function, "
                f"or await breaker.call({getattr(fn, '__name__', 'fn')}, ...)"
            )

        if self._decorated is None:
            self._decorated = weakref.WeakSet()
        with contextlib.suppress(TypeError):  # no weak reference to it: refused as by call_sync
            self._decorated.add(fn)

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call_sync(fn, *args, **kwargs)

        return sync_wrapper

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(service={self._service!r}, state={self.state!r}, "
            f"failure_threshold={self._failure_threshold}, "
            f"recovery_window={self._recovery_window})"
        )


def _checked_service(service: object) -> str:
    """`service` when it is a str (a name): the constructor's check, and the setter's.

    Raises:
        TypeError: `service` is not a str.
    """
    if not isinstance(service, str):
        # Else it worked in this process, and failed at the first call with a shared
        # backend (where it is part of a Redis key).
        raise TypeError(f"service must be a str (a name), got {service!r:.80}")
    return service


def _uncallable(fn: object, api: str) -> TypeError:
    """The error for a call through a breaker of something that cannot be called.

    Such a call says nothing of the service's health: it is not counted. A coroutine passed
    instead of its function (`breaker.call(fetch(query))`) is closed: it is refused on
    purpose, not left "never awaited".
    """
    if inspect.iscoroutine(fn):
        fn.close()
    return TypeError(
        f"{api} needs a callable, got {type(fn).__name__}: pass the function and its "
        f"arguments ({api.rsplit('.', 1)[1]}(fn, *args)), not what calling it returned"
    )
