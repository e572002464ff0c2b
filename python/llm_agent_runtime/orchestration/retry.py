"""Retry with exponential backoff (capped at 60 s), full jitter and server-given delays."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, ParamSpec, TypeVar, overload

from llm_agent_runtime._cancelling import CANCEL_COUNTS_EXACT
from llm_agent_runtime.errors import (
    AgentRuntimeError,
    BudgetExceededError,
    CircuitOpenError,
    PolicyDeniedError,
    ProviderError,
    RateLimitExceededError,
    group_leaves,
    stage_error,
)
from llm_agent_runtime.orchestration._calls import current_task
from llm_agent_runtime.orchestration._checks import (
    check_count,
    check_flag,
    check_real,
    safe_repr,
)
from llm_agent_runtime.orchestration.clock import Clock, checked_clock

__all__ = ["DEFAULT_MAX_DELAY", "RetryPolicy"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_DELAY = 60.0
"""No backoff ever waits longer than this many seconds."""

NEVER_RETRIED: tuple[type[BaseException], ...] = (
    CircuitOpenError,
    PolicyDeniedError,
    BudgetExceededError,
)
"""Errors that another attempt cannot fix."""


def _never_retried_in(error: BaseException) -> bool:
    """Whether `error` is, or carries, one of `NEVER_RETRIED`.

    A pipeline stage's error stands for it, and so does any member of an exception group
    (nested groups and a stage's error in a group too), as `policy_error_in` reads refusals.
    """
    error = stage_error(error)
    leaves = group_leaves(error)
    if leaves is None:
        return isinstance(error, NEVER_RETRIED)
    return any(_never_retried_in(leaf) for leaf in leaves)


def default_retry_on(error: BaseException) -> bool:
    """Retries retryable provider errors, timeouts and connection errors; nothing else.

    A timeout is the builtin `TimeoutError` (which `asyncio.TimeoutError` is), a rate
    limiter's refusal past `max_wait` (`RateLimitExceededError`) included: the next attempt
    may find tokens.
    """
    if isinstance(error, ProviderError):
        return error.retryable
    if isinstance(error, AgentRuntimeError) and not isinstance(error, RateLimitExceededError):
        return False
    return isinstance(error, (TimeoutError, ConnectionError))


_SHARED_IN_COPIES = frozenset({"_clock", "_retry_on", "_rng"})
"""What a `RetryPolicy`'s deep copy shares with it: the objects the user gave."""


class RetryPolicy:
    """Retries a failing call with exponential backoff and full jitter.

    The delay before attempt `n + 1` is drawn uniformly from `[0, min(max_delay,
    base_delay * 2**(n-1))]` (or is that bound itself without jitter). A `ProviderError`
    carrying `retry_after` (or a `PipelineStageError` caused by one) waits what the server
    asked instead (still capped at `max_delay`; a negative, NaN, infinite or non-numeric
    `retry_after` is ignored).
    `CircuitOpenError`, `PolicyDeniedError` and `BudgetExceededError` are never retried,
    nor is an exception group holding one.

    Args:
        max_attempts: total attempts, the first included.
        base_delay: seconds before the second attempt (before jitter).
        max_delay: cap on any single delay: at most 60 s (the default), a larger value is
            taken as 60 s.
        jitter: draw delays uniformly below the exponential bound.
        retry_on: decides whether an error is worth another attempt (see `default_retry_on`).
        clock: time source used to sleep.
        rng: random source for jitter (seed it for reproducible delays). None, the
            default: the `random` module's, which Python seeds anew in each forked child,
            so workers that failed at once do not retry in step.

    `max_attempts`, `base_delay`, `max_delay`, `jitter` and `retry_on` may be set again
    later, checked and normalised as the constructor does (a bad value raises, and the old
    one stays): `max_delay` is capped at 60 s, `jitter` made a bool, and a `retry_on` of
    None is `default_retry_on`. The next attempt goes by them.

    Raises:
        ValueError: an attempt count or delay is out of range or NaN, `base_delay` is
            infinite, `max_attempts` is not an int (a float such as 1.5, or a bool), or a
            delay is not a number (a bool included).
        TypeError: `jitter` is not a bool (a numpy bool, or the int 0 or 1, is one), or
            `retry_on` is neither None nor callable, or `clock` is not a `Clock` (see
            `checked_clock`), or `rng` has no callable `uniform` (a `random.Random`, or the
            `random` module, has one).
    """

    def __init__(
        self,
        max_attempts: int = 3,
        base_delay: float = 0.5,
        max_delay: float = DEFAULT_MAX_DELAY,
        jitter: bool = True,
        retry_on: Callable[[BaseException], bool] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        max_attempts = check_count("max_attempts", max_attempts, 1)
        base_delay, max_delay = _checked_delays(base_delay, max_delay)
        # Else unnoticed: any string is a true `jitter`, and a `retry_on` that cannot be
        # called would only log, at each failure, that the error is not retried.
        jitter = check_flag("jitter", jitter)
        retry_on = _checked_retry_on(retry_on)
        # Else the first retry failed with an AttributeError in place of the call's own error.
        if rng is not None and (
            isinstance(rng, type) or not callable(getattr(rng, "uniform", None))
        ):
            raise TypeError(f"rng must be a random.Random (or None), got {rng!r:.80}")
        # The settings' backing attributes: the call path reads them, not the properties.
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._jitter = jitter
        self._retry_on = retry_on
        self._clock = checked_clock(clock)
        # None: `random`'s own, read at each draw (a generator of this policy's own would be
        # copied into every forked worker, and each would draw the same delays).
        self._rng = rng

    def __deepcopy__(self, memo: dict[int, Any]) -> RetryPolicy:
        """A copy with settings of its own, sharing the objects the user gave.

        Its clock, `retry_on` and `rng`: a copy of the clock would not be the one a test
        advances, and a classifier may hold a lock or count what it sees.
        """
        clone = copy.copy(self)
        memo[id(self)] = clone
        for name, value in vars(self).items():  # a subclass's own attributes: its copy's own
            if name not in _SHARED_IN_COPIES:
                vars(clone)[name] = copy.deepcopy(value, memo)
        return clone

    @property
    def max_attempts(self) -> int:
        """Total attempts, the first included; checked when set, as by the constructor."""
        return self._max_attempts

    @max_attempts.setter
    def max_attempts(self, max_attempts: int) -> None:
        # Checked as in the constructor: a str failed the first failed call with a TypeError.
        self._max_attempts = check_count("max_attempts", max_attempts, 1)

    @property
    def base_delay(self) -> float:
        """Seconds before the second attempt (before jitter); checked when set."""
        return self._base_delay

    @base_delay.setter
    def base_delay(self, base_delay: float) -> None:
        self._base_delay = _checked_delays(base_delay, self._max_delay)[0]

    @property
    def max_delay(self) -> float:
        """Cap on any single delay; checked when set, and capped at 60 s as by the constructor."""
        return self._max_delay

    @max_delay.setter
    def max_delay(self, max_delay: float) -> None:
        self._max_delay = _checked_delays(self._base_delay, max_delay)[1]

    @property
    def jitter(self) -> bool:
        """Whether delays are drawn below the exponential bound; checked when set."""
        return self._jitter

    @jitter.setter
    def jitter(self, jitter: bool) -> None:
        # Any string would read as true.
        self._jitter = check_flag("jitter", jitter)

    @property
    def retry_on(self) -> Callable[[BaseException], bool]:
        """Decides whether an error is worth another attempt; checked when set.

        Set to None, it is `default_retry_on`, as the constructor's default.
        """
        return self._retry_on

    @retry_on.setter
    def retry_on(self, retry_on: Callable[[BaseException], bool] | None) -> None:
        self._retry_on = _checked_retry_on(retry_on)

    def should_retry(self, error: BaseException) -> bool:
        """Whether `error` may succeed on another attempt.

        A `PipelineStageError` is judged by the stage's own error (its `__cause__`). An
        exception group holding a `CircuitOpenError`, `PolicyDeniedError` or
        `BudgetExceededError` (a `TaskGroup` of calls, one refused) is not retried. A
        `retry_on` that raises is logged and means "no": the call's own error propagates.
        """
        cause = stage_error(error)
        if not isinstance(cause, Exception):
            return False
        # Also inside a group: an open breaker or a refusal there fails the next attempt too.
        if _never_retried_in(cause):
            return False
        try:
            return bool(self._retry_on(cause))
        except Exception:
            logger.exception("retry_on raised on %r: not retried", cause)
            return False

    def delay_for(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        A `ProviderError`'s `retry_after` (also as a `PipelineStageError`'s cause) sets it. A
        rate limiter's refusal (`RateLimitExceededError`) adds the time its bucket needs
        before the same call's wait fits its `max_wait` (`wait - max_wait`) to the backoff:
        the backoff alone retried too early, to be refused again.

        Raises:
            ValueError: `attempt` is not an int of at least 1 (0 would give a bound below
                `base_delay`).
        """
        # As an int: a numpy integer made the delay a numpy float.
        attempt = check_count("attempt", attempt, 1)
        cause = None if error is None else stage_error(error)
        if isinstance(cause, ProviderError) and cause.retry_after is not None:
            # A negative, NaN, infinite or non-numeric delay (a raw header value, a bool) is
            # no delay at all: the backoff applies. Any real number counts, as a setting does
            # (a numpy number, a Decimal: only a float or an int used to); an int beyond the
            # float range is infinite. One that cannot be read (a `__float__` that fails) is
            # no delay either: its error must not replace the call's own.
            try:
                seconds = check_real("retry_after", cause.retry_after)
            except Exception:
                seconds = math.nan
            if 0.0 <= seconds < math.inf:
                return min(seconds, self._max_delay)
        # The exponent is clamped only to keep 2.0**n finite; the cap applies long before.
        bound = min(self._max_delay, self._base_delay * 2.0 ** min(attempt - 1, 1000))
        backoff = (
            (random if self._rng is None else self._rng).uniform(0.0, bound)
            if self._jitter
            else bound
        )
        if isinstance(cause, RateLimitExceededError):
            # The jittered backoff on top: callers refused together do not retry together.
            # Numbers that cannot be read (an error made by hand) are no delay, as above.
            try:
                needed = check_real("wait", cause.wait) - check_real("max_wait", cause.max_wait)
            except Exception:
                needed = math.nan
            if 0.0 < needed < math.inf:
                return min(self._max_delay, needed + backoff)
        return backoff

    @overload
    async def run(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Calls `fn` (sync or async) until it succeeds; re-raises the last error.

        Stops early on an error that `should_retry` rejects. `fn` is positional-only, so
        `kwargs` may hold an argument named `fn`. An awaitable that `fn` returns is awaited:
        `await policy.run(fn, ...)` gives what `fn` returns, or what its awaitable gives.

        Raises:
            TypeError: `fn` is not callable: a coroutine (`policy.run(fetch(query))` in place
                of `policy.run(fetch, query)`, which is closed), say. Never retried.
        """
        attempt = 1
        task = current_task()  # the fast lookup (`asyncio.current_task` is ~0.4 us on 3.11)
        while True:
            cancels = task.cancelling() if task is not None else 0
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except Exception as exc:
                if attempt == 1 and not callable(fn):
                    # Checked on failure only: the success path stays free of it.
                    _refuse_uncallable(fn)
                if attempt >= self._max_attempts or not self.should_retry(exc):
                    raise
                if task is not None and _cancelled_into(exc, task, cancels):
                    raise  # the caller's cancellation, turned into this error: no retry
                await self._clock.sleep(self.delay_for(attempt, exc))
                attempt += 1

    @safe_repr
    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self._max_attempts}, base_delay={self._base_delay}, "
            f"max_delay={self._max_delay}, jitter={self._jitter})"
        )


def policy_or_default(retry: object) -> RetryPolicy:
    """`retry`, a `RetryPolicy` setting of a client: itself, or `RetryPolicy()` for None.

    Raises:
        TypeError: It is neither (found out at the first retry otherwise).
    """
    if retry is None:
        return RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy (or None), got {retry!r:.80}")
    return retry


def note_attempts(error: BaseException, attempts: int, started: float) -> None:
    """Adds to `error`'s message how often a call was tried, and for how long.

    Only when it was tried more than once; `started` is the first attempt's
    `time.monotonic()`.
    """
    if attempts > 1 and error.args:
        took = time.monotonic() - started
        note = f"(after {attempts} attempts over {took:.1f} s)"
        error.args = (f"{error.args[0]} {note}", *error.args[1:])


def _cancelled_into(error: BaseException, task: asyncio.Task[Any], cancels: int) -> bool:
    """Whether `error` replaced a cancellation of `task` asked during the attempt.

    A `finally` that closes a connection and fails, or (before Python 3.12) a `TaskGroup`
    cancelled with its children failing, raises another error in place of the
    `CancelledError`: retried, the caller's timeout or cancel was lost (the call went on).
    The task's count of cancellation requests rose from `cancels` (its count before the
    attempt) then. Before Python 3.13 a `TaskGroup` whose child failed may raise the count
    with no cancellation (CPython gh-116720): there, the error must also have been raised
    while a `CancelledError` was handled (a cancellation the call swallowed before failing
    is then missed).
    """
    if task.cancelling() <= cancels:
        return False
    if CANCEL_COUNTS_EXACT:
        return True
    seen: set[int] = set()
    context: BaseException | None = error.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, asyncio.CancelledError):
            return True
        seen.add(id(context))
        context = context.__context__
    return False


def _checked_delays(base_delay: object, max_delay: object) -> tuple[float, float]:
    """`base_delay` and `max_delay` as floats, `max_delay` capped at `DEFAULT_MAX_DELAY`.

    Raises:
        ValueError: either is negative, NaN or not a number (a bool included), or
            `base_delay` is infinite.
    """
    base, most = check_real("base_delay", base_delay), check_real("max_delay", max_delay)
    # Written so that NaN fails every check (each comparison with NaN is false).
    # max_delay may be infinite: it is capped at DEFAULT_MAX_DELAY anyway.
    if not (0 <= base < math.inf and 0 <= most <= math.inf):
        raise ValueError(f"delays must be >= 0 (base_delay finite), got {base} and {most}")
    return base, min(most, DEFAULT_MAX_DELAY)


def _checked_retry_on(
    retry_on: Callable[[BaseException], bool] | None,
) -> Callable[[BaseException], bool]:
    """`retry_on`, or `default_retry_on` for None.

    Raises:
        TypeError: `retry_on` is neither None nor callable.
    """
    if retry_on is None:
        return default_retry_on
    if not callable(retry_on):
        raise TypeError(f"retry_on must be callable (or None), got {retry_on!r}")
    return retry_on


def _refuse_uncallable(fn: object) -> NoReturn:
    """Raises the `TypeError` of a `run` given something it cannot call again at each attempt.

    Else a `retry_on` that retries every error slept through each backoff before the
    "not callable" error came out, and a coroutine given was left never awaited.
    """
    if inspect.iscoroutine(fn):
        fn.close()  # no "never awaited" warning: it is refused on purpose
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise TypeError(
            f"RetryPolicy.run needs the function to call at each attempt, got the coroutine "
            f"{name}(): pass the function and its arguments, run(fn, *args), not its call"
        ) from None
    raise TypeError(
        f"RetryPolicy.run needs a callable to call at each attempt, got {fn!r:.80}"
    ) from None
