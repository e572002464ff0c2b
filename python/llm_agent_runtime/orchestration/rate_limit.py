"""Token-bucket rate limiting per key (per tool, per user, ...)."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Hashable

from llm_agent_runtime._copies import CopiedWhole
from llm_agent_runtime.errors import RateLimitExceededError
from llm_agent_runtime.orchestration._checks import check_real, safe_repr
from llm_agent_runtime.orchestration.clock import Clock, checked_clock

_ROUNDING = 1e-9
"""Share of a request a bucket may lack by float rounding alone (4.1 - 4.0 is not quite 0.1
seconds): relative, so requests of a billionth of a token are not all granted."""

_FIRST_SWEEP = 1024
"""Buckets held before refilled ones are first dropped."""

__all__ = ["RateLimiter"]


Refund = tuple[int, int, float]
"""A reservation given back: `(after, at, seconds)`. The reservation numbered `after` was given
back when the count stood at `at`, so the reservations numbered between the two are due
`seconds` sooner (those before were ahead of it; those after saw the bucket refunded)."""


class _Waiter:
    """A caller of `acquire` waiting for its tokens: when it is due, and how to wake it sooner.

    When an earlier waiter gives its reservation back, the ones behind it are due sooner: its
    key's `_Line` records the refund, and `due` reads it. Only the first waiter of a key is
    woken for it (`wake_if_late`); the others are woken in turn, as the one before them
    leaves. `seq` numbers its reservation (None while its command is in flight, for a shared
    bucket); `gains` holds the refunds that landed meanwhile, to apply once its number is
    known.
    """

    __slots__ = ("_due", "_line", "_moved", "_until", "_wake", "gains", "seq")

    def __init__(self, due: float = math.inf, seq: int | None = None) -> None:
        self._due = due
        self.seq = seq
        self.gains: list[Refund] = []
        self._line: _Line | None = None  # its key's, while it waits in the room
        self._moved = 0  # what the line had moved its number up by when `_due` was set
        self._until = math.inf  # the due its current sleep ends at
        self._wake: asyncio.Future[None] | None = None

    @property
    def due(self) -> float:
        """When it is due: as set, less the refunds settled for it since."""
        line, seq = self._line, self.seq
        if line is None or seq is None:
            return self._due
        moved = line.moved(seq) - self._moved
        if not moved or not math.isfinite(self._due):
            return self._due
        # Rounded once, from the exact units: `_due - moved / units` rounded twice, so that
        # refunds settled one by one or together (or before or after it reserved) put it a
        # bit apart (0.4 - (0.2 + 0.1) gave 0.09999999999999998, 0.2 - 0.1 gave 0.1).
        return (_units(self._due) - moved) / _UNITS_PER_SECOND

    @due.setter
    def due(self, due: float) -> None:
        self._due = due
        line, seq = self._line, self.seq
        self._moved = line.moved(seq) if line is not None and seq is not None else 0

    @property
    def abandoned(self) -> bool:
        """Left waiting by an event loop that was closed: it never runs again."""
        return self._wake is not None and self._wake.get_loop().is_closed()

    def attach(self, line: _Line) -> None:
        """Starts reading the refunds of `line` settled from now on."""
        self._line = line
        if self.seq is None:
            line.unnumbered.append(self)
        else:
            self._moved = line.moved(self.seq)

    def detach(self) -> None:
        """Keeps its due as it stands once it has left its line."""
        self._due, self._line = self.due, None

    def take_in(self) -> None:
        """Makes the refunds settled so far part of `due`, so its line may forget them."""
        if self.seq is not None:
            self._due, self._moved = self.due, 0

    def wake_if_late(self) -> None:
        """Wakes the waiter if it sleeps past its due (refunds moved it up meanwhile)."""
        wake = self._wake
        if wake is not None and not wake.done() and not self.abandoned and self.due < self._until:
            wake.set_result(None)

    async def wait(self, clock: Clock, seconds: float, now: float) -> None:
        """Sleeps on `clock` until `due`, sooner if `wake_if_late` finds it moved up meanwhile.

        `seconds` is the time from `now` until `due`, as exactly as the caller computed it.
        """
        while seconds > 0:
            self._until = self.due
            # The sleep runs as a task of its own so that `wake_if_late` can cut it short,
            # while a CancelledError here always means this caller was cancelled.
            wake = self._wake = asyncio.get_running_loop().create_future()
            sleep = asyncio.ensure_future(self._sleep(clock, seconds, now))
            sleep.add_done_callback(functools.partial(_wake_up, wake))
            try:
                await wake
            finally:
                self._wake = None
                if not sleep.get_loop().is_closed():  # else dropped with its loop, unwoken
                    sleep.cancel()  # does nothing once it has slept
            if sleep.done() and not sleep.cancelled():
                sleep.result()  # a clock that failed to sleep fails the wait
                return
            now = clock.now()
            seconds = self.due - now

    async def _sleep(self, clock: Clock, seconds: float, since: float) -> None:
        # A task starts a turn of the event loop later: if the clock moved meanwhile, the
        # sleep is measured from `due`, else it is exactly `seconds`.
        now = clock.now()
        await clock.sleep(seconds if now == since else self.due - now)


def _wake_up(wake: asyncio.Future[None], _: object) -> None:
    if not wake.done():
        wake.set_result(None)


_UNITS_PER_SECOND = 1 << 1074
"""Every float is a whole number of 2**-1074 seconds: in these units, refunds add up and cancel
out exactly as ints (a closed refund leaves no rounding behind)."""


def _units(seconds: float) -> int:
    numerator, denominator = seconds.as_integer_ratio()  # a power of two, at most 2**1074
    return numerator * (_UNITS_PER_SECOND // denominator)


def owed(seq: int, refunds: list[Refund]) -> float:
    """The seconds `refunds` move up the reservation numbered `seq`."""
    return sum(seconds for after, at, seconds in refunds if after < seq < at)


class _Line:
    """What a key's waiters are owed: how far settled refunds moved up each reservation number.

    A refund moves up the numbers between two bounds by one amount: a change at each bound,
    in a Fenwick tree over the numbers, so that settling a refund and reading a waiter's due
    cost O(log) whatever the number of waiters (moving up each of them cost O(waiters) a
    refund, and waking each a new sleep task). Also the waiters whose number is not known
    yet: they are owed every refund settled meanwhile (`_Waiter.gains`).
    """

    __slots__ = ("_size", "_tree", "refunds", "unnumbered")

    def __init__(self) -> None:
        self._tree: dict[int, int] = {}  # in units of `_UNITS_PER_SECOND`
        self._size = 1  # the numbers the tree spans, a power of two: it doubles as they grow
        self.refunds = 0  # settled since the tree last started over
        self.unnumbered: list[_Waiter] = []

    def add(self, refund: Refund) -> None:
        """Moves up the reservations numbered after `after` and before `at`."""
        after, at, seconds = refund
        units = _units(seconds)
        self._change(after + 1, units)
        self._change(at, -units)
        self.refunds += 1

    def moved(self, seq: int) -> int:
        """How far the reservation numbered `seq` has been moved up, in units."""
        tree = self._tree
        if not tree:
            return 0
        total, seq = 0, min(seq, self._size)  # nothing changed beyond the size
        while seq > 0:
            total += tree.get(seq, 0)
            seq &= seq - 1
        return total

    def clear(self) -> None:
        """Forgets the refunds (once every waiter has taken them in)."""
        self._tree.clear()
        self.refunds = 0

    def _change(self, number: int, units: int) -> None:
        tree = self._tree
        while number > self._size:
            # The new root spans every number so far, as the old one did.
            if total := tree.get(self._size):
                tree[2 * self._size] = total
            self._size *= 2
        while number <= self._size:
            tree[number] = tree.get(number, 0) + units
            number += number & -number


class _WaitingRoom:
    """The waiters of each key, in arrival order, and the refunds owed to them.

    Refunds are settled once per turn of the event loop, each in O(log n) (see `_Line`), and
    wake one waiter: the key's first. Each other is woken, if it was moved up, when the one
    before it leaves: a cancellation costs O(log n), not a new sleep task per waiter behind.
    """

    __slots__ = ("_lines", "_owed", "waiters")

    def __init__(self) -> None:
        self.waiters: dict[Hashable, dict[_Waiter, None]] = {}
        self._lines: dict[Hashable, _Line] = {}  # per key with waiters
        # Per key: the refunds not settled yet, and the loop that is to settle them.
        self._owed: dict[Hashable, tuple[asyncio.AbstractEventLoop, list[Refund]]] = {}

    def enter(self, key: Hashable, waiter: _Waiter) -> None:
        queue = self.waiters.setdefault(key, {})
        if queue and next(iter(queue)).abandoned:
            # A closed loop left its waiters: dropped, so their tasks are collected and give
            # their reservations back (the oldest tells: loops use a limiter in turn).
            for abandoned in [w for w in queue if w.abandoned]:
                del queue[abandoned]
                abandoned.detach()
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        queue[waiter] = None
        waiter.attach(line)

    def leave(self, key: Hashable, waiter: _Waiter) -> None:
        queue = self.waiters.get(key)
        if queue is None or waiter not in queue:  # dropped by `enter`, abandoned
            return
        del queue[waiter]
        waiter.detach()
        if queue:
            self._wake_first(queue)  # the one behind may have been moved up meanwhile
        else:
            del self.waiters[key], self._lines[key]

    def owe(self, key: Hashable, refund: Refund) -> None:
        """Records a refund; the waiters it is owed to move up at the next turn of the loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a waiter dropped with no loop running (closed by the GC):
            return  # its tokens are back in the bucket; no loop has waiters to move up
        stale = None
        pending = self._owed.get(key)
        if pending is not None and pending[0] is not loop:
            # Another loop was to settle them, and stopped first (a limiter used by one event
            # loop, then another): settled now, once this refund is recorded.
            stale, pending = pending, None
        if pending is None:
            pending = self._owed[key] = (loop, [])
            loop.call_soon(self._settle, key, pending)
        pending[1].append(refund)
        if stale is not None:
            self._settle(key, stale, stale=True)

    def _settle(
        self,
        key: Hashable,
        pending: tuple[asyncio.AbstractEventLoop, list[Refund]],
        stale: bool = False,
    ) -> None:
        """Moves up the waiters of `key` by the `pending` refunds owed to them.

        `stale`: the refunds of a loop that stopped first, already taken off `_owed`.
        """
        if not stale:
            if self._owed.get(key) is not pending:
                return  # settled already
            del self._owed[key]
        queue = self.waiters.get(key)
        if queue is None:
            return  # no one is left to owe them to
        line = self._lines[key]
        # A refund numbered before its reservation (the shared bucket's count started again,
        # its key lost) is owed to no one.
        refunds = [refund for refund in pending[1] if refund[0] < refund[1]]
        for refund in refunds:
            line.add(refund)
        # In flight: its number, when known, says what it is owed.
        line.unnumbered = [w for w in line.unnumbered if w.seq is None and w._line is line]
        for waiter in line.unnumbered:
            waiter.gains += refunds
        if line.refunds > len(queue):
            # The tree starts over once it holds more refunds than there are waiters: O(1)
            # amortized a refund, and its size stays within a few entries a waiter.
            for waiter in queue:
                waiter.take_in()
            line.clear()
        self._wake_first(queue)

    @staticmethod
    def _wake_first(queue: dict[_Waiter, None]) -> None:
        """Wakes the first numbered waiter if refunds moved it up (the others: by `leave`)."""
        for waiter in queue:
            if waiter.seq is not None:
                waiter.wake_if_late()
                return


_LONGEST_REFILL_SECONDS = 1e12
"""The longest a bucket may take to refill from empty (about 31,700 years): waits and
refunds then add up to finite floats however many callers wait (at a rate of 1e-308 one
token's wait alone was past the floats' range, and a cancelled waiter raised OverflowError)."""


def _checked_bucket(rate: object, capacity: object) -> tuple[float, float]:
    """`rate` and `capacity` as floats: finite, > 0, and refilling within a bound.

    The bucket must refill from empty within `_LONGEST_REFILL_SECONDS`.

    Raises:
        ValueError: either is not positive, is NaN or infinite, or is not a number (a bool
            included); or `capacity / rate` is over `_LONGEST_REFILL_SECONDS`.
    """
    rate, capacity = check_real("rate", rate), check_real("capacity", capacity)
    # Written so that NaN fails the check (each comparison with NaN is false).
    if not (0 < rate < math.inf and 0 < capacity < math.inf):
        raise ValueError(f"rate and capacity must be finite and > 0, got {rate} and {capacity}")
    if not capacity / rate <= _LONGEST_REFILL_SECONDS:
        raise ValueError(
            f"rate {rate} is too slow for capacity {capacity}: the bucket would take over "
            f"{_LONGEST_REFILL_SECONDS:.0e} s to refill from empty"
        )
    return rate, capacity


class RateLimiter(CopiedWhole):
    """A token bucket per key: `capacity` tokens, refilled at `rate` tokens per second.

    `try_acquire` takes tokens or refuses at once; `acquire` waits until they are there.
    Meant for one event loop at a time (not shared between threads); the reservations of
    waiters a closed loop left behind (not yet due) come back once the next `acquire` of
    their key has let them go and the garbage collector has collected their tasks (until
    then `try_acquire` and `tokens` count them as taken). A bucket that has refilled is
    dropped now and then (a new key starts full, as it would), so many distinct keys do not
    pile up. A clock that steps back (a wall clock corrected) neither drains nor refills a
    bucket: its refill goes on from where the clock stands.

    Both `rate` and `capacity` may be set again later, checked as the constructor checks
    them (a bad value raises, and the old one stays). Every bucket refills at the new rate
    from then on; a lowered capacity caps every bucket at once (and the tokens one request
    may ask), a raised one lets them refill up to it from then on. What a bucket refilled
    before the change stays as the old settings made it. Callers already waiting in `acquire`
    keep the times they were given: after a raised rate, the bucket may refill past their
    reservations before they are due, for newcomers to take, and a caller cancelled then
    gives its tokens back all the same, so up to its tokens more than `capacity` may go out
    at once.

    Args:
        rate: tokens added per second.
        capacity: bucket size (the largest burst); a new key starts full.
        clock: time source.

    Raises:
        ValueError: `rate` or `capacity` is not positive, is NaN or infinite, or is not a
            number (a bool included); or the bucket takes over 1e12 s (`capacity / rate`)
            to refill from empty.
        TypeError: `clock` is not a `Clock` (see `checked_clock`).
    """

    def __init__(self, rate: float, capacity: float, clock: Clock | None = None) -> None:
        # The settings' backing attributes: the hot paths read them, not the properties.
        self._rate, self._capacity = _checked_bucket(rate, capacity)
        self._clock = checked_clock(clock)
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._room = _WaitingRoom()  # the callers of `acquire` waiting on each key
        self._count = 0  # numbers reservations and refunds (see `Refund`)
        self._sweep_at = _FIRST_SWEEP  # buckets held when refilled ones are next dropped

    def _in_use(self) -> str | None:
        """A copy is whole (its clock kept), but not while callers wait (see `CopiedWhole`)."""
        room = self._room
        return "callers wait in it" if room.waiters or room._owed else None

    @safe_repr
    def __repr__(self) -> str:
        return f"RateLimiter(rate={self._rate}, capacity={self._capacity})"

    @property
    def rate(self) -> float:
        """Tokens added per second; checked when set, as by the constructor."""
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        # Checked as in the constructor: a NaN or negative rate corrupted every bucket.
        rate = _checked_bucket(rate, self._capacity)[0]
        self._settle()  # the time until now refilled at the old rate
        self._rate = rate

    @property
    def capacity(self) -> float:
        """Bucket size (the largest burst); checked when set, and applied at once."""
        return self._capacity

    @capacity.setter
    def capacity(self, capacity: float) -> None:
        capacity = _checked_bucket(self._rate, capacity)[1]
        self._settle(capacity)  # the time until now refilled up to the old capacity
        self._capacity = capacity

    def _settle(self, capacity: float = math.inf) -> None:
        """Stores every bucket as it stands now, capped at `capacity` (for a setting changed).

        A bucket is refilled from the time it was stored, at the rate and up to the capacity
        in force when it is read: a setting changed later would apply to the time before it
        too (a raised rate or capacity granted, at once, tokens never refilled; a lowered rate
        took back tokens refilled already).
        """
        now = self._clock.now()
        refill = self._refill
        self._buckets = {key: (min(refill(key, now), capacity), now) for key in self._buckets}

    def tokens(self, key: Hashable = "default") -> float:
        """Tokens available for `key` now."""
        return self._refill(key, self._clock.now())

    def _refill(self, key: Hashable, now: float) -> float:
        capacity = self._capacity
        level, last = self._buckets.get(key, (capacity, now))
        if now <= last:
            # Else a clock that stepped back (a wall clock corrected) drained the bucket by
            # the step. No time has passed for it: the bucket stored next is timed from `now`.
            return level
        return min(capacity, level + (now - last) * self._rate)

    def _sweep(self, now: float) -> None:
        """Drops the buckets that have refilled (a new key starts full: nothing changes).

        Called when the buckets have doubled since the last sweep (`_sweep_at`): a sweep of
        n buckets comes after n/2 new ones at least, amortized O(1) a write.
        """
        buckets, rate, capacity = self._buckets, self._rate, self._capacity
        full = [k for k, (lv, last) in buckets.items() if lv + (now - last) * rate >= capacity]
        for k in full:
            del buckets[k]
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(buckets))

    def _check(self, tokens: float) -> float:
        """Returns `tokens` as a float when it is in (0, capacity]."""
        # The common cases cost a test or two on the hot path (a bool is no int here): the
        # ABC check of `check_real` cost an int 40% more a call.
        if type(tokens) is not float:
            try:
                tokens = float(tokens) if type(tokens) is int else check_real("tokens", tokens)
            except OverflowError:  # an int beyond the float range: refused below
                tokens = math.inf if tokens > 0 else -math.inf
        capacity = self._capacity
        if not 0 < tokens <= capacity:  # NaN fails too
            raise ValueError(f"tokens must be in (0, {capacity}], got {tokens}")
        return tokens

    def try_acquire(self, key: Hashable = "default", tokens: float = 1.0) -> bool:
        """Takes `tokens` from `key`'s bucket if it has them; returns whether it did.

        Raises:
            ValueError: `tokens` is not in (0, capacity] (it could never be granted), is NaN,
                or is not a number (a bool included).
        """
        tokens = self._check(tokens)
        now = self._clock.now()
        level = self._refill(key, now)
        if len(self._buckets) >= self._sweep_at:  # inline: this is the hot path
            self._sweep(now)
        if level > tokens * (1.0 - _ROUNDING):
            self._buckets[key] = (max(level - tokens, 0.0), now)
            return True
        self._buckets[key] = (level, now)
        return False

    async def acquire(
        self, key: Hashable = "default", tokens: float = 1.0, max_wait: float | None = None
    ) -> None:
        """Takes `tokens` from `key`'s bucket, waiting until they have been refilled.

        Waiters reserve tokens in arrival order (the bucket may go into debt), so each waits
        exactly as long as the rate requires and concurrent waiters are served first come,
        first served. A cancelled waiter gives its reservation back, and the waiters behind
        it are served that much sooner (a newcomer never overtakes them): by the time its
        tokens took at the rate when it reserved them (a rate set since changes no waiter's
        time). A waiter cancelled once it is due (before it resumed) was served: nothing is
        given back, as the bucket may have dropped the tokens refilled for it at capacity
        since.

        `max_wait` (seconds, None for no limit): a caller that would wait longer is refused at
        once, its tokens not reserved, rather than reserving them and giving up later (as
        `asyncio.wait_for` around `acquire` does: each such caller moves every later one
        back until it gives up).

        Raises:
            ValueError: `tokens` is not in (0, capacity], or is not a number (a bool
                included); `max_wait` is negative or not a number.
            RateLimitExceededError: The wait would be longer than `max_wait` (nothing was
                taken); a `TimeoutError` too.
        """
        tokens = self._check(tokens)
        limit = _checked_max_wait(max_wait)
        now = self._clock.now()
        available = self._refill(key, now)
        level = available - tokens
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now)
        if level > -tokens * _ROUNDING:
            self._buckets[key] = (max(level, 0.0), now)
            return
        wait = -level / self._rate
        if wait > limit:
            self._buckets[key] = (available, now)
            raise RateLimitExceededError(wait, limit)
        self._buckets[key] = (level, now)
        # What its tokens moved the waiters behind back by: a rate set while it waits
        # changes no one's time (they keep theirs), so neither does its refund.
        refund = tokens / self._rate
        self._count += 1
        seq = self._count
        waiter = _Waiter(now + wait, seq)
        self._room.enter(key, waiter)
        try:
            await waiter.wait(self._clock, wait, now)
        except BaseException:
            bucket = self._buckets.get(key)
            # None: it has refilled since, and was dropped (full). Once the waiter is due, its
            # tokens have been refilled, and may have been dropped at capacity since (giving
            # them back would grant them twice); before, the bucket is in debt for them (it
            # never reached capacity) and takes them all back. `due` counts the refunds
            # settled (the turn after they were given), not those owed to it yet: a refund
            # given in this turn of the loop (waiters ahead cancelled at once) does not make it
            # due after the fact, as it never was (the bucket was in debt for it until now).
            if bucket is not None and self._clock.now() < waiter.due:
                # Capped: a capacity lowered while it waited caps what it gives back too
                # (else a bucket with 3 tokens, capacity 2 by then, granted 3 at once).
                level = min(bucket[0] + tokens, self._capacity)
                self._buckets[key] = (level, bucket[1])
                # The refund is theirs: without it, a newcomer would be served before them.
                self._count += 1
                self._room.owe(key, (seq, self._count, refund))
            raise
        finally:
            self._room.leave(key, waiter)


def _checked_max_wait(max_wait: object) -> float:
    """`acquire`'s `max_wait` as a float (infinite for None).

    Raises:
        ValueError: It is negative, NaN, or not a number (a bool included).
    """
    if max_wait is None:
        return math.inf
    seconds = check_real("max_wait", max_wait)
    if not seconds >= 0:  # NaN fails too
        raise ValueError(f"max_wait must be >= 0 seconds or None, got {seconds}")
    return seconds
