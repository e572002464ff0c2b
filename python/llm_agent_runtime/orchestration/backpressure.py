"""Backpressure: a bound on work in flight that sheds excess at once instead of queueing."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime.errors import BackpressureShedError
from llm_agent_runtime.orchestration._calls import current_task
from llm_agent_runtime.orchestration._checks import check_count, safe_repr

if TYPE_CHECKING:
    from llm_agent_runtime._core import RuntimeMetrics

__all__ = ["BackpressureGuard"]

logger = logging.getLogger(__name__)


class _Block:
    """An open `async with guard:` block: its task, and the slots it accounts for."""

    __slots__ = ("bare", "guard", "holds", "task")

    def __init__(self, guard: BackpressureGuard, task: asyncio.Task[Any] | None) -> None:
        self.guard = guard
        self.task = task
        self.holds = True
        """Whether the block still holds its own slot (not given back by `release()`)."""
        self.bare = 0
        """Slots its task took with `acquire()` inside it, not given back yet."""


_BLOCKS: ContextVar[tuple[_Block, ...]] = ContextVar(
    "llm_agent_runtime_backpressure_blocks", default=()
)
"""The `async with guard:` blocks open in this context, innermost last. A task started in a
block sees them too (it copies the context): only a block's own task counts in it."""


class BackpressureGuard(Unshared):
    """Admits at most `capacity` concurrent holders; rejects the rest immediately.

    Use `async with guard:` (or `acquire()` / `release()`). Depth always returns to zero:
    the context manager releases on success, error and cancellation alike. Thread-safe:
    every change of the depth is made under a lock (held for the change alone, never across
    an await), so threads sharing a guard never exceed `capacity` together.

    Args:
        capacity: most holders at once (an int).
        soft_limit: depth at which a warning is logged: each acquire that brings the depth to
            `soft_limit` or beyond warns (an int in 1..capacity; `soft_limit == capacity`
            warns when the guard becomes full).
        metrics: counts each shed request when given (a `RuntimeMetrics`, or anything with
            a `record_backpressure_shed()` method). One that raises is logged: the request
            is shed with `BackpressureShedError` all the same.

    Both `capacity` and `soft_limit` may be set again later, checked as the constructor
    checks them (a bad value raises, and the old one stays). A capacity set below the depth
    takes no slot back: holders keep theirs, and newcomers are shed until the depth is below
    it. A capacity below `soft_limit` is refused: lower `soft_limit` first (or set it to
    None).

    Raises:
        ValueError: `capacity` < 1, `soft_limit` outside 1..capacity, or either is not an int
            (a float such as 1.5, NaN or infinity, or a bool).
        TypeError: `metrics` has no `record_backpressure_shed()` method (else the first shed
            request would fail with an `AttributeError` instead of `BackpressureShedError`).
    """

    def __init__(
        self,
        capacity: int,
        soft_limit: int | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        capacity = check_count("capacity", capacity, 1)
        if soft_limit is not None:
            soft_limit = check_count("soft_limit", soft_limit, 1)
            if soft_limit > capacity:
                raise ValueError(f"soft_limit must be in 1..{capacity}, got {soft_limit}")
        if metrics is not None and not callable(getattr(metrics, "record_backpressure_shed", None)):
            raise TypeError(
                "metrics must be a RuntimeMetrics (or have a record_backpressure_shed() "
                f"method), got {type(metrics).__name__}"
            )
        # The settings' backing attributes: the hot paths read them, not the properties.
        self._capacity = capacity
        self._soft_limit = soft_limit
        self._metrics = metrics
        # Guards each read-modify-write of `_depth` and `shed_count`, and each change of a
        # setting (so that two threads cannot set a capacity below the soft limit between
        # them): the runtime takes and gives back slots from several threads.
        self._lock = threading.Lock()
        self._depth = 0
        self.shed_count = 0
        """Requests rejected so far."""

    @property
    def capacity(self) -> int:
        """Most holders at once; checked when set, as by the constructor (see the class)."""
        return self._capacity

    @capacity.setter
    def capacity(self, capacity: int) -> None:
        # Checked as in the constructor: a str failed every later acquire with a TypeError.
        capacity = check_count("capacity", capacity, 1)
        with self._lock:
            soft_limit = self._soft_limit
            if soft_limit is not None and capacity < soft_limit:
                raise ValueError(
                    f"capacity must be >= soft_limit ({soft_limit}), got {capacity}: lower "
                    "soft_limit first"
                )
            self._capacity = capacity

    @property
    def soft_limit(self) -> int | None:
        """Depth at which a warning is logged (None: never); checked when set (1..capacity)."""
        return self._soft_limit

    @soft_limit.setter
    def soft_limit(self, soft_limit: int | None) -> None:
        if soft_limit is not None:
            soft_limit = check_count("soft_limit", soft_limit, 1)
        with self._lock:
            capacity = self._capacity
            if soft_limit is not None and soft_limit > capacity:
                raise ValueError(f"soft_limit must be in 1..{capacity}, got {soft_limit}")
            self._soft_limit = soft_limit

    @property
    def depth(self) -> int:
        """Holders right now."""
        return self._depth

    def _block(self) -> _Block | None:
        """This guard's innermost block open in the current task, if any."""
        blocks = _BLOCKS.get()
        if not blocks:
            return None
        task = current_task()
        for block in reversed(blocks):
            if block.guard is self and block.task is task:
                return block
        return None

    def _holding_block(self) -> _Block | None:
        """This guard's innermost block open in the current task that still holds a slot.

        One that gave back its own slot, and every slot taken with `acquire()` in it, is
        passed over for the block around it.
        """
        task = current_task()
        for block in reversed(_BLOCKS.get()):
            if block.guard is self and block.task is task and (block.bare or block.holds):
                return block
        return None

    def acquire(self) -> None:
        """Takes a slot.

        Raises:
            BackpressureShedError: all `capacity` slots are taken.
        """
        self._take()
        block = self._block()
        if block is not None:  # its own slot, which a `release()` gives back before the block's
            block.bare += 1

    def _take(self, shed: bool = True) -> bool:
        """Takes a slot, refusing it at capacity (see `acquire`).

        Args:
            shed: Whether a refusal is a shed (counted, and raised); else it returns False.
        """
        with self._lock:
            depth = self._depth
            # Read once, under the lock: the decision and its report agree even when the
            # capacity is set meanwhile.
            capacity = self._capacity
            if depth < capacity:
                self._depth = depth + 1
            elif shed:
                self.shed_count += 1
            else:
                return False
        # Outside the lock: the metrics and the log are not the guard's to wait for.
        if depth >= capacity:
            if self._metrics is not None:
                try:
                    self._metrics.record_backpressure_shed()
                except Exception:  # else its error would replace the shed the caller handles
                    logger.exception("backpressure: metrics failed to count a shed request")
            raise BackpressureShedError(depth, capacity)
        soft_limit = self._soft_limit
        if soft_limit is not None and depth + 1 >= soft_limit:
            logger.warning(
                "backpressure: depth %d reached soft limit %d (capacity %d)",
                depth + 1,
                soft_limit,
                capacity,
            )
        return True

    def try_acquire(self) -> bool:
        """Takes a slot if one is free; returns whether it did (a refusal is not counted)."""
        if not self._take(shed=False):
            return False
        block = self._block()
        if block is not None:  # as `acquire` does
            block.bare += 1
        return True

    def release(self) -> None:
        """Gives a slot back.

        It gives back the slot of the last `acquire()` not given back yet. Called inside an
        `async with guard:` block, by the block's task, with every slot that task took in
        the block with `acquire()` given back already, it gives back the block's own slot:
        the block then gives none back as it ends. In nested blocks of the guard, once the
        inner block's slots are all given back, it goes on to the enclosing block's.

        Raises:
            RuntimeError: nothing was held.
        """
        block = self._block()
        if block is not None and not (block.bare or block.holds):
            # A nested block that gave back its slots passes the release on to the block
            # around it, which then gives none back as it ends (else it would, twice).
            block = self._holding_block()
        with self._lock:
            if self._depth == 0:
                raise RuntimeError("BackpressureGuard.release() without a matching acquire()")
            self._depth -= 1
        if block is not None:  # its task's own bookkeeping: no other thread changes it
            if block.bare:
                block.bare -= 1
            elif block.holds:
                block.holds = False

    async def __aenter__(self) -> BackpressureGuard:
        self._take()
        _BLOCKS.set((*_BLOCKS.get(), _Block(self, current_task())))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        blocks = _BLOCKS.get()
        if blocks and blocks[-1].guard is self:  # the usual case: it is the innermost block
            _BLOCKS.set(blocks[:-1])
            if blocks[-1].holds:  # not given back inside the block already
                with self._lock:
                    self._depth -= 1
            return
        for index in range(len(blocks) - 2, -1, -1):  # the innermost block of this guard
            if blocks[index].guard is self:
                _BLOCKS.set(blocks[:index] + blocks[index + 1 :])
                if blocks[index].holds:
                    with self._lock:
                        self._depth -= 1
                return
        # Left in another context than it was entered in (an async generator's block closed
        # by its loop): its slot is given back, as any block's.
        with self._lock:
            if self._depth > 0:
                self._depth -= 1

    @safe_repr
    def __repr__(self) -> str:
        return f"BackpressureGuard(depth={self._depth}, capacity={self._capacity})"
