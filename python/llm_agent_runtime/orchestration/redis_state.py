"""Orchestration state in Redis: one breaker, rate limit and single flight for all workers."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import random
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from llm_agent_runtime._copies import Unshared
from llm_agent_runtime._redis import redis_client
from llm_agent_runtime.errors import PersistenceError, RateLimitExceededError
from llm_agent_runtime.orchestration._calls import call_maybe_async, keep_alive
from llm_agent_runtime.orchestration._checks import check_real, check_seconds
from llm_agent_runtime.orchestration.circuit_breaker import CLOSED, CircuitState
from llm_agent_runtime.orchestration.clock import SYSTEM_CLOCK
from llm_agent_runtime.orchestration.dedup import _cycle_repr, _key_repr
from llm_agent_runtime.orchestration.rate_limit import (
    _checked_bucket,
    _checked_max_wait,
    _Waiter,
    _WaitingRoom,
    owed,
)

__all__ = ["RedisCircuitStateBackend", "RedisDeduplicator", "RedisRateLimiter"]

logger = logging.getLogger(__name__)


async def _settle(cleanup: Coroutine[Any, Any, None]) -> None:
    """Runs `cleanup` to its end, even if the caller is cancelled (again) meanwhile.

    Called by a cancelled caller before it re-raises `CancelledError`: it waits for the
    cleanup unless cancelled once more, and the cleanup finishes on its own then. A caller
    the GC closes with no loop running (its loop closed by hand) can run none: what the
    cleanup would give back is left to its expiry, as a crashed process's.
    """
    # The caller's coroutine being closed (GeneratorExit) may be closed in another loop's
    # turn, which the cleanup does not belong to.
    if isinstance(sys.exception(), GeneratorExit) or not _loop_running():
        cleanup.close()
        return
    await asyncio.shield(keep_alive(asyncio.ensure_future(cleanup)))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# Compare and set of one breaker's state. KEYS[1]: the state. ARGV: the value the caller read
# and computed its state from, then the new value. Values are passed as "seen" strings: '='
# and the stored value, or '' for a missing key (distinct from any stored value). Writes the new
# value only if the key still holds the one read; returns {1}, or {0, what it holds (seen)}
# so that the caller recomputes from there without another read.
_SWAP_SCRIPT = """
local current = redis.call('GET', KEYS[1])
local seen = current and '=' .. current or ''
if seen ~= ARGV[1] then return {0, seen} end
redis.call('SET', KEYS[1], ARGV[2])
return {1}
"""

_Update = tuple[
    Callable[[CircuitState], CircuitState], asyncio.Future[tuple[CircuitState, CircuitState]]
]
"""A pending `update`: its change and the future its caller awaits."""

_Queue = tuple[asyncio.AbstractEventLoop, str]
"""The updates of one service from one event loop (a loop's futures are its own)."""

_MAX_BACKOFF = 0.05
"""Most seconds a write waits before retrying after another process changed the state."""


class RedisCircuitStateBackend(Unshared):
    """A `CircuitStateBackend` in Redis: every process using it shares each breaker's state.

    `update` is optimistic: it reads the state, applies the change, and writes the result with
    a compare-and-set script that refuses it if another process changed the state in between
    (the change is then applied again to the state found, after a short random backoff), so
    failures counted by every process add up. Concurrent updates of one service in this
    process are applied together, in arrival order, by one read and one write: their cost in
    round trips does not grow with their number. Give the breakers a clock that all processes
    share (the default monotonic clock is shared by the processes of one machine; across
    machines use wall-clock time).

    States written by earlier versions (without trial rounds, or without `openings`) are
    read; an earlier version cannot read this one's: processes sharing a breaker's state
    run one version (upgrade them together, or give the new ones another `prefix`).

    `prefix` may be set again later, checked as the constructor checks it (a bad value
    raises, and the old one stays). The backend then reads and writes the states under the
    new prefix, as one constructed with it would (closed where none is stored there); the
    states under the old one stay in Redis as they were. An update queued but not yet
    written when it changes is written under the new prefix.

    Args:
        url: e.g. `redis://host:6379/0`.
        prefix: Prepended to each service name to form its key.

    Raises:
        TypeError: When `prefix` is not a str.
        PersistenceError: When redis-py is not installed (the `redis` extra), `url` is
            not a Redis URL redis-py can use, or `prefix` holds a lone surrogate.
    """

    def __init__(self, url: str, prefix: str = "llm_agent_runtime:breaker:") -> None:
        # Checked now: a bytes prefix failed every update, whose callers then waited forever.
        _check_name("prefix", prefix)
        self._prefix = prefix
        self.client: Any = redis_client(url, "RedisCircuitStateBackend")
        self._swap = self.client.register_script(_SWAP_SCRIPT)
        # Per service (and loop): the updates waiting for the next write, and the task
        # writing them.
        self._pending: dict[_Queue, list[_Update]] = {}
        self._writers: dict[_Queue, asyncio.Future[None]] = {}

    @property
    def prefix(self) -> str:
        """Prepended to each service name to form its key; checked when set (a str)."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        # Checked as in the constructor: a bytes prefix failed every update, whose callers
        # then waited forever.
        _check_name("prefix", prefix)
        self._prefix = prefix

    def __repr__(self) -> str:
        return f"RedisCircuitStateBackend(prefix={self._prefix!r})"

    async def close(self) -> None:
        """Closes every event loop's connection pool; a later call opens a new one.

        As `PostgresBackend.close`: the running loop's pool is closed before this returns,
        one of another running loop there, one of an idle loop when it next runs.
        """
        await self.client.aclose()

    async def get(self, service: str) -> CircuitState:
        """Returns the state of `service` (closed when never seen).

        Raises:
            TypeError: `service` is not a str (it is part of a Redis key).
            PersistenceError: Redis failed, or the stored state is corrupt.
        """
        _check_name("service", service)
        try:
            return _decode(await self.client.get(self._prefix + service))
        except PersistenceError:
            raise
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=self._prefix + service) from error

    async def update(
        self, service: str, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        """Applies `change` atomically to the shared state; returns (old, new).

        The change waits for the write of `service` under way in this process, if any, then
        is written with every other change queued meanwhile. A caller cancelled before its
        change is written leaves it out; once the write is sent, the change is made (as with
        any command whose reply the caller no longer waits for).

        Raises:
            TypeError: `service` is not a str (it is part of a Redis key).
            PersistenceError: Redis failed, the stored state is corrupt, or `change` raised.
        """
        _check_name("service", service)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[CircuitState, CircuitState]] = loop.create_future()
        queue = (loop, service)
        self._pending.setdefault(queue, []).append((change, future))
        if queue not in self._writers:
            self._start_writer(queue)
        return await future

    def _start_writer(self, queue: _Queue) -> None:
        """Starts the task writing the pending updates of `queue`.

        Under an eager task factory (`asyncio.eager_task_factory`, Python 3.12+)
        `create_task` runs the writer's first step before it returns: `_write` then yields
        once, so that the writer is registered below before it can end, as a lazy one is.
        """
        writer = keep_alive(queue[0].create_task(self._write(queue)))
        self._writers[queue] = writer
        writer.add_done_callback(functools.partial(self._writer_done, queue))

    def _writer_done(self, queue: _Queue, writer: asyncio.Future[None]) -> None:
        """Forgets a writer cancelled before its first step; starts one for updates left.

        Such a writer (cancelled by a sweep of every task, as a shutdown handler does) never
        ran the `finally` that forgets it: every later update of its service on that loop
        waited for it, for ever. The updates queued meanwhile are written by a new one.
        """
        if self._writers.get(queue) is writer:
            del self._writers[queue]
        elif queue in self._writers:
            return  # it ran and forgot itself, and a newer writer has the updates left
        # Updates left: queued behind a writer cancelled before its first step, or, by
        # callers not cancelled themselves, behind one cancelled while it wrote.
        if any(not future.done() for _, future in self._pending.get(queue, ())):
            self._start_writer(queue)
        else:
            self._pending.pop(queue, None)  # only cancelled callers' changes: none to write

    async def _write(self, queue: _Queue) -> None:
        """Writes the pending updates of `queue`, a batch at a time, until none is left."""
        if self._writers.get(queue) is not asyncio.current_task():
            # Run eagerly, inside `create_task`, before `_start_writer` registered it: a
            # write that failed before it waited for anything (a unix socket that is gone)
            # ended here, and its `finally` forgot a writer not registered yet (KeyError),
            # while the updates made in the same turn of the loop missed its first write.
            # Yield once, where a lazy writer's first step starts; cancelled here, it is a
            # writer cancelled before its first step (`_writer_done` starts another).
            await asyncio.sleep(0)
        batch: list[_Update] = []
        try:
            while True:
                batch = self._pending.pop(queue, [])
                if not batch:
                    return
                await self._commit(queue, batch)
        except BaseException as error:
            # No caller may wait for it forever: cancelled (its loop is closing), the callers
            # of the write under way are too (it may have been made); the updates queued
            # after it are left to a new writer (`_writer_done`): the callers a sweep of
            # every task cancelled left theirs out, and one made since (by the sweeping
            # task itself) is written. Any other failure is theirs, as an update's error.
            left = [] if isinstance(error, asyncio.CancelledError) else self._pending.pop(queue, [])
            for _, future in batch + left:
                if future.done():
                    continue
                if isinstance(error, Exception):
                    future.set_exception(_failure(error, self._prefix + queue[1]))
                else:
                    future.cancel()
            if not isinstance(error, Exception):
                raise
        finally:
            del self._writers[queue]

    async def _commit(self, queue: _Queue, batch: list[_Update]) -> None:
        """Applies `batch` in order to its service's state in one write; settles its futures.

        Updates queued while the write is refused by another process's change join it. So
        does a change of `prefix` before the write is sent: the batch, not written yet, is
        applied to the state under the new prefix (read then) and written there.
        """
        key = self._prefix + queue[1]
        outcomes: list[tuple[CircuitState, CircuitState] | PersistenceError] = []
        try:
            raw = await self.client.get(key)
            attempt = 0
            while True:
                if self._prefix + queue[1] != key:
                    # The prefix changed since the read: the batch, not written yet, and the
                    # updates queued since go under the new one, applied to its state.
                    key = self._prefix + queue[1]
                    raw = await self.client.get(key)
                    continue  # the prefix may have changed again meanwhile
                batch += self._pending.pop(queue, [])
                # Callers cancelled before this attempt leave their change out.
                batch[:] = [update for update in batch if not update[1].done()]
                old = _decode(raw)
                outcomes, new = _apply(old, batch, key)
                if new == old:
                    break  # nothing to write: the batch took effect at the read
                seen = b"" if raw is None else b"=" + raw
                reply = await self._swap(keys=[key], args=[seen, json.dumps(list(new))])
                if reply[0] == 1:
                    break
                raw = reply[1][1:] if reply[1] else None
                # Another process wrote first: back off (at random, so that contending
                # processes spread out) and apply the batch to the state it wrote.
                attempt += 1
                ceiling = min(_MAX_BACKOFF, 0.001 * 2 ** min(attempt, 6))
                await asyncio.sleep(random.uniform(0, ceiling))
        except Exception as error:
            outcomes = [_failure(error, key) for _ in batch]  # one each: each is raised
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue  # its caller was cancelled while the write was under way
            if isinstance(outcome, PersistenceError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _apply(
    state: CircuitState, batch: list[_Update], key: str
) -> tuple[list[tuple[CircuitState, CircuitState] | PersistenceError], CircuitState]:
    """Applies the changes of `batch` in order from `state`; returns each outcome and the end.

    A change that raises leaves the state as it was; its outcome is the error to raise.
    """
    outcomes: list[tuple[CircuitState, CircuitState] | PersistenceError] = []
    for change, _ in batch:
        try:
            new = change(state)
        except Exception as error:
            outcomes.append(_failure(error, key))
            continue
        outcomes.append((state, new))
        state = new
    return outcomes, state


def _check_name(what: str, name: object) -> None:
    """Refuses a name that is not a str, or not valid Unicode text.

    Part of a Redis key, `1` would name `"1"`'s state; no Redis key holds a lone surrogate
    (a prefix or namespace taken so would fail every later call).

    Raises:
        TypeError: `name` is not a str.
        PersistenceError: `name` holds a lone surrogate.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str (part of a Redis key), got {type(name).__name__}")
    if not name.isascii():
        try:
            name.encode("utf-8")  # as redis-py encodes keys
        except UnicodeEncodeError as error:
            raise PersistenceError(
                f"{what} is not valid Unicode text: it holds a lone surrogate at index "
                f"{error.start}"
            ) from None


def _failure(error: Exception, key: str) -> PersistenceError:
    """`error` as the `PersistenceError` an `update` raises (a new one for each caller)."""
    if isinstance(error, PersistenceError):  # a corrupt state: its copy, with its cause
        failure = PersistenceError(error.args[0], key=error.key)
        failure.__cause__ = error.__cause__
    else:
        failure = PersistenceError(f"Redis: {error}", key=key)
        failure.__cause__ = error
    return failure


def _decode(raw: bytes | None) -> CircuitState:
    if raw is None:
        return CLOSED
    try:
        # Four fields in states written before trial rounds existed: they read as round 0
        # with a trial admitted long ago (so slots such a state holds are reclaimable); six
        # in states written before openings were counted: they read as none yet.
        fields: list[Any] = json.loads(raw)
        status, failures, opened_at, trial_calls, *rest = fields
        if status not in ("closed", "open", "half_open") or len(rest) not in (0, 2, 3):
            raise ValueError(f"not a breaker state: {raw!r}")
        trial_started, trial_round, openings = [*rest, 0.0, 0, 0][:3]
        return CircuitState(
            status,
            int(failures),
            float(opened_at),
            int(trial_calls),
            float(trial_started),
            int(trial_round),
            int(openings),
        )
    except (ValueError, TypeError) as error:
        raise PersistenceError(f"corrupt breaker state: {error}") from error


# Token bucket, atomically in Redis, on the server's clock (shared by every worker).
# KEYS[1] bucket; ARGV: rate, capacity, tokens, mode (0 = take or refuse, 1 = reserve,
# 2 = refund), the id of the limiter object sending the command, and for a refund: the seq of
# the command it gives back, the id of the bucket that command ran on, the server time until
# which the tokens are given back in full, and what is given back from then on ('1': the
# tokens less what has refilled since, as the bucket would have dropped that much at capacity
# without the command; '0': none). Returns {granted (0/1; for a refund: whether any were given
# back), wait seconds (for a refund: the tokens given back), seq, server time, bucket id, level
# left}, numbers as strings: seq numbers the bucket's commands, so a refund tells which
# reservations came after the one it gives back.
# `owner` and `since`: the limiter object that sent the latest commands that took or gave back
# tokens, and the seq of the first of them. A refund is made only when that object sends it
# and its command came since: every reservation made after it is that object's, which moves
# them all up. The waiters of another object keep the times they were given, so giving the
# tokens back then would grant them twice.
# A missing key reads as a full bucket, so the key lives until its bucket has refilled from
# the level it is left at, debt included (plus a minute; at most ~31 years). Its seq starts
# again then, and its `id` is another (the id of the object that made it again, and the
# server time it did): a key lost before (a restart without persistence, an eviction) is
# another bucket, which never lent the tokens of a reservation made in the old one. A key
# stored before ids existed gets one at its next command.
# A stored number that is not one, or not finite (Lua reads 'inf' and 'nan'), is an error
# reply naming the field; the key is left as it is.
# Floats are stored with 17 significant digits, so they read back exactly: tostring keeps 14,
# which rounds an epoch time to 100 us (each command moved the bucket's clock by up to 50 us).
_BUCKET_SCRIPT = """
local rate, capacity, tokens, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local owner = ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'last', 'seq', 'since', 'owner', 'id')
local numbers = {'level', 'last', 'seq', 'since'}
for i, field in ipairs(numbers) do
  local x = state[i] and tonumber(state[i])
  if state[i] and not (x and x - x == 0) then  -- x - x is NaN for an infinite x
    return redis.error_reply('corrupt rate-limit bucket: its ' .. field ..
      ' is not a finite number')
  end
end
local level = tonumber(state[1]) or capacity
local last = tonumber(state[2]) or now
if now < last then now = last end  -- the server's clock stepped back: refill pauses
local seq = (tonumber(state[3]) or 0) + 1
local since = tonumber(state[4])  -- set whenever owner is
local id = state[6] or owner .. '@' .. t[1] .. '.' .. t[2]
level = math.min(capacity, level + (now - last) * rate)
local granted, wait = 0, 0
if mode == 2 then
  -- Until full_until the bucket has dropped none of the tokens at capacity (it is in debt
  -- for them, or would be below capacity without them): it takes them all back. From then
  -- on it may have dropped what refilled: given back, that would be granted twice. (A
  -- waiter's reservation is served once due: none is given back then.)
  local after, full_until = tonumber(ARGV[6]), tonumber(ARGV[8])
  if state[5] == owner and state[6] == ARGV[7] and since <= after then
    if now >= full_until then
      if ARGV[9] == '1' then
        tokens = tokens - (now - full_until) * rate
      else
        tokens = 0
      end
    end
    if tokens > 0 then
      level = math.min(capacity, level + tokens)
      granted, wait = 1, tokens
    end
  end
elseif mode == 1 then
  -- ARGV[6]: the longest wait the caller takes ('inf' for any); past it, nothing is taken.
  wait = math.max(tokens - level, 0) / rate
  if wait <= tonumber(ARGV[6]) then
    level = level - tokens
    granted = 1
  end
elseif level >= tokens then
  level = level - tokens
  granted = 1
end
local function exact(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], 'level', exact(level), 'last', exact(now), 'seq', seq, 'id', id)
if granted == 1 and state[5] ~= owner then
  redis.call('HSET', KEYS[1], 'owner', owner, 'since', seq)
end
redis.call('EXPIRE', KEYS[1], math.min(math.ceil((capacity - level) / rate) + 60, 1000000000))
return {granted, exact(wait), seq, exact(now), id, exact(level)}
"""


class _Bucket(NamedTuple):
    """A `RedisRateLimiter`'s settings, read once by each operation (as one: see `_bucket`)."""

    namespace: str
    """`<prefix><rate>/<capacity>:`, which the Redis key of each bucket starts with."""
    rate: float
    capacity: float


class _Reply(NamedTuple):
    """A reply of `_BUCKET_SCRIPT`."""

    granted: bool
    """Whether the tokens were taken (for a refund: whether any were given back)."""
    wait: float
    """Seconds a reservation waits for its tokens (for a refund: the tokens given back)."""
    seq: int
    """The command's number in its bucket."""
    now: float
    """The server's time when it ran."""
    bucket: bytes
    """The id of the bucket it ran on: another once the key was lost and made again."""
    level: float
    """The level it left the bucket at."""


class _Worker(NamedTuple):
    """What one event loop's use of a `RedisRateLimiter` keeps: its id and its waiters."""

    owner: str
    rooms: dict[str, _WaitingRoom]
    """The waiters of the buckets of each namespace (`_Bucket.namespace`), by key. A refund
    moves up waiters by the seq numbers of its bucket: those of another bucket (the limiter's
    settings changed since) number other commands."""

    def room(self, namespace: str) -> _WaitingRoom:
        """The waiting room of `namespace`'s buckets (a new one if none is kept)."""
        room = self.rooms.get(namespace)
        if room is None:
            room = self.rooms[namespace] = _WaitingRoom()
        return room

    def vacate(self, namespace: str, room: _WaitingRoom) -> None:
        """Forgets `room` once no one waits in it: settings changed often leave none behind."""
        if not room.waiters and self.rooms.get(namespace) is room:
            del self.rooms[namespace]


class RedisRateLimiter(Unshared):
    """A token bucket per key shared by every process that uses the same Redis.

    The semantics of `RateLimiter` (capacity, refill rate, waiters served in arrival order),
    made atomic by a Lua script running on the Redis server's clock, so workers on many
    machines draw from one bucket. The bucket's capacity and rate hold across all of them.

    A cancelled waiter's tokens are given back only while every command that has taken or
    given back tokens of the bucket since its reservation came from this limiter object: the
    waiters of this object behind it are then served that much sooner, as in `RateLimiter`.
    Once another worker (another process, or another limiter object) has taken tokens since,
    the bucket keeps them: that worker's waiters were given their times already, and giving
    the tokens back would let the waiters behind them use the same tokens again. So a
    cancelled waiter may cost throughput; it never lets callers exceed the limit.

    One limiter may serve event loops in several threads: each loop is a worker of its own
    (its own waiters, and refunds only while no other loop has taken tokens since).

    Limiters share the bucket of a key when they have the same `prefix`, `rate` and
    `capacity` (the bucket's Redis key is `redis_key(key)`: `<prefix><rate>/<capacity>:<key>`),
    so the workers of one limiter share it, and a limiter configured otherwise never draws
    from it by accident, under one prefix. A key may hold `:`, so a prefix must not be
    another one followed by `<rate>/<capacity>:` (prefix `rl:1.0/2.0:` with key `u` of a
    100/100 limiter is prefix `rl:` with key `100.0/100.0:u` of a 1/2 one). Give limiters of
    one rate and capacity that must not share distinct keys or prefixes.

    A caller cancelled while its command is in flight gives back what the command took
    (under the same condition): the command runs to its end, then the tokens are refunded,
    then `CancelledError` is raised. A reply that comes late gives back less: once the
    bucket would have been full again without the command, it drops what refills, and the
    tokens refilled since are not given back (the bucket would grant them twice).

    A bucket whose Redis key is lost (a restart without persistence, an eviction) starts
    full again, as a new key does; a reservation made before is not given back to it, as it
    never lent those tokens.

    `rate`, `capacity` and `prefix` may be set again later, checked as the constructor
    checks them (a bad value raises, and the old one stays). The limiter then draws from
    the buckets of its new settings, as one constructed with them would; a call under way
    when they change finishes (and gives back what it took) with the bucket it started on.

    Args:
        url: e.g. `redis://host:6379/0`.
        rate: Tokens added per second.
        capacity: Bucket size (the largest burst); a new key starts full.
        prefix: Prepended to each Redis key.

    Raises:
        TypeError: `prefix` is not a str.
        ValueError: `rate` or `capacity` is not positive, is NaN or infinite, or is not a
            number (a bool included); or the bucket takes over 1e12 s (`capacity / rate`)
            to refill from empty.
        PersistenceError: When `prefix` holds a lone surrogate, redis-py is not installed
            (the `redis` extra), or `url` is not a Redis URL redis-py can use.
    """

    def __init__(
        self,
        url: str,
        rate: float,
        capacity: float,
        prefix: str = "llm_agent_runtime:bucket:",
    ) -> None:
        # Checked: formatted into the key, a bytes prefix named another bucket ("b'...'").
        _check_name("prefix", prefix)
        # Floats: redis-py sends no bool nor numpy scalar (every command would fail).
        rate, capacity = _checked_bucket(rate, capacity)
        self._bucket = _bucket(prefix, rate, capacity)
        self._prefix = prefix
        self.client: Any = redis_client(url, "RedisRateLimiter")
        self._script = self.client.register_script(_BUCKET_SCRIPT)
        # Per event loop: the id that tells the bucket which commands are that loop's (see
        # `_BUCKET_SCRIPT`), and its callers of `acquire` on each key, from before their
        # command is sent. Each loop is a worker of its own (see `_worker`).
        self._workers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Worker] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _this_process(self) -> None:
        """Makes a limiter inherited through `fork()` another worker than its parent's.

        The child's commands must not pass for the parent's (a refund would then give back
        tokens the parent's waiters were promised since), nor its waiters be the parent's.
        """
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._lock = threading.Lock()  # the parent's may have been held by another thread
            self._workers = weakref.WeakKeyDictionary()

    def _worker(self) -> _Worker:
        """The running event loop's id and waiting room: each loop is a worker of its own.

        Loops in several threads may share the limiter (its Redis clients are per loop), but
        not waiters: one loop would settle refunds in another's line while that one changes
        it, and wake its waiters from the wrong thread. A refund of one loop's reservation
        is made only while no other loop (or process) has taken tokens of the bucket since,
        as for any other worker.
        """
        self._this_process()
        loop = asyncio.get_running_loop()
        with self._lock:
            worker = self._workers.get(loop)
            if worker is None:
                worker = self._workers[loop] = _Worker(uuid.uuid4().hex, {})
            return worker

    @property
    def rate(self) -> float:
        """Tokens added per second; checked when set, as by the constructor."""
        return self._bucket.rate

    @rate.setter
    def rate(self, rate: float) -> None:
        # Checked as in the constructor: a NaN rate failed every command in the script.
        rate = _checked_bucket(rate, self._bucket.capacity)[0]
        self._bucket = _bucket(self._prefix, rate, self._bucket.capacity)

    @property
    def capacity(self) -> float:
        """Bucket size (the largest burst); checked when set, as by the constructor."""
        return self._bucket.capacity

    @capacity.setter
    def capacity(self, capacity: float) -> None:
        capacity = _checked_bucket(self._bucket.rate, capacity)[1]
        self._bucket = _bucket(self._prefix, self._bucket.rate, capacity)

    @property
    def prefix(self) -> str:
        """Prepended to each Redis key; checked when set (a str), as by the constructor."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        _check_name("prefix", prefix)
        self._bucket = _bucket(prefix, self._bucket.rate, self._bucket.capacity)
        self._prefix = prefix

    @property
    def _owner(self) -> str:
        """The running loop's id: tells the bucket which commands are its (`_BUCKET_SCRIPT`)."""
        return self._worker().owner

    @property
    def _room(self) -> _WaitingRoom:
        """The running loop's callers of `acquire` on each key of its current buckets."""
        return self._worker().room(self._bucket.namespace)

    def __repr__(self) -> str:
        bucket = self._bucket
        return f"RedisRateLimiter(rate={bucket.rate}, capacity={bucket.capacity})"

    def redis_key(self, key: str = "default") -> str:
        """The Redis key of `key`'s bucket (its prefix, rate and capacity, then `key`).

        Raises:
            TypeError: `key` is not a str (part of a Redis key: `1` would name `"1"`'s).
        """
        _check_name("key", key)
        return self._bucket.namespace + key

    async def close(self) -> None:
        """Closes every event loop's connection pool; a later call opens a new one.

        As `PostgresBackend.close`: the running loop's pool is closed before this returns,
        one of another running loop there, one of an idle loop when it next runs.
        """
        await self.client.aclose()

    @staticmethod
    def _check(tokens: float, bucket: _Bucket) -> float:
        """Returns `tokens` as a float when it is in (0, capacity]."""
        tokens = check_real("tokens", tokens)
        if not 0 < tokens <= bucket.capacity:  # NaN fails too
            raise ValueError(f"tokens must be in (0, {bucket.capacity}], got {tokens}")
        return tokens

    async def _run(
        self,
        bucket: _Bucket,
        key: str,
        tokens: float,
        mode: int,
        refund: tuple[int, bytes, float, bool] | None = None,
        max_wait: float = math.inf,
    ) -> _Reply:
        """Runs the script; returns its reply (see `_BUCKET_SCRIPT`).

        `max_wait`, for a reservation (mode 1): the longest wait it takes (else it takes
        nothing).

        `bucket`: the settings the call started with (a refund goes to the bucket it gives
        back to). `refund`, for a refund (mode 2): the seq of the command it gives back and the
        id of that command's bucket, the server time until which the tokens are given back in
        full, and whether less is given back from then on (else none).

        Raises:
            PersistenceError: Redis failed, or the stored bucket is corrupt.
        """
        redis_key = bucket.namespace + key
        args: list[Any] = [bucket.rate, bucket.capacity, tokens, mode, self._owner]
        if mode == 1:
            args.append(repr(max_wait))
        if refund is not None:
            after, bucket_id, until, fade = refund
            args += [after, bucket_id, until, int(fade)]
        try:
            granted, wait, seq, now, bucket_id, level = await self._script(
                keys=[redis_key], args=args
            )
        except Exception as error:
            if str(error).startswith("corrupt rate-limit bucket:"):  # the script's error reply
                raise PersistenceError(str(error), key=redis_key) from error
            raise PersistenceError(f"Redis: {error}", key=redis_key) from error
        return _Reply(bool(granted), float(wait), int(seq), float(now), bucket_id, float(level))

    async def _take(
        self, bucket: _Bucket, key: str, tokens: float, mode: int, max_wait: float = math.inf
    ) -> _Reply:
        """Runs the take (mode 0) or reserve (mode 1, waiting at most `max_wait`) command.

        If the caller is cancelled while the command is in flight, the command still runs to
        its end, what it took is given back, and then `CancelledError` is raised.
        """
        command = keep_alive(
            asyncio.ensure_future(self._run(bucket, key, tokens, mode, max_wait=max_wait))
        )
        try:
            return await asyncio.shield(command)
        except asyncio.CancelledError:
            await _settle(self._refund_after(command, bucket, key, tokens))
            raise

    async def _refund_after(
        self, command: asyncio.Future[_Reply], bucket: _Bucket, key: str, tokens: float
    ) -> None:
        """Waits for `command`, then gives back what it took.

        Its reply may come late: the tokens are given back in full only until the bucket
        would have been full again without the command, as it drops what refills from then
        on (given back whatever the time, they were granted twice).
        """
        try:
            reply = await command
        except Exception:
            return  # the command failed: it took nothing (that this process can know of)
        if reply.granted:
            full = reply.now + (bucket.capacity - (reply.level + tokens)) / bucket.rate
            await self._refund(bucket, key, tokens, reply, full, fade=True)

    async def _refund(
        self, bucket: _Bucket, key: str, tokens: float, reply: _Reply, until: float, fade: bool
    ) -> None:
        """Gives back `tokens` that the command of `reply` took; a Redis failure is logged.

        They are given back in full until the server time `until`; from then on, with
        `fade`, less what the bucket has refilled since, else none. None is given back once
        another limiter object has taken or given back tokens of the bucket since the command
        (see the class docstring), nor once the bucket's key was lost since (the bucket made
        again never lent them). When tokens are given back, the reservations made since (all
        this object's) are due sooner: its waiters among them are moved up.
        """
        try:
            refund = await self._run(bucket, key, tokens, 2, (reply.seq, reply.bucket, until, fade))
        except Exception as error:
            logger.warning("RedisRateLimiter: could not give back %s tokens: %s", tokens, error)
            return
        room = self._worker().rooms.get(bucket.namespace)  # none: no one waits in the bucket
        if refund.granted and room is not None:
            room.owe(key, (reply.seq, refund.seq, refund.wait / bucket.rate))

    async def try_acquire(self, key: str = "default", tokens: float = 1.0) -> bool:
        """Takes `tokens` from `key`'s shared bucket if it has them; returns whether it did.

        Raises:
            TypeError: `key` is not a str (part of a Redis key).
            ValueError: `tokens` is not in (0, capacity], or is not a number (a bool
                included).
            PersistenceError: Redis failed.
        """
        _check_name("key", key)
        bucket = self._bucket  # read once: settings set meanwhile do not split the call
        tokens = self._check(tokens, bucket)
        self._this_process()
        return (await self._take(bucket, key, tokens, 0)).granted

    async def acquire(
        self, key: str = "default", tokens: float = 1.0, max_wait: float | None = None
    ) -> None:
        """Takes `tokens`, waiting (in arrival order across all workers) until refilled.

        A cancelled caller is not served. Its reservation is given back, and the callers of
        this limiter waiting behind it are served that much sooner, unless another limiter
        object (another worker) has taken or given back tokens of the bucket since it was
        made: the bucket keeps the tokens then (see the class docstring). A caller cancelled
        once its reservation is due on the server's clock (before it resumed) was served:
        nothing is given back, as the bucket may have dropped the tokens refilled for it at
        capacity since.

        `max_wait` (seconds, None for no limit): a caller that would wait longer is refused at
        once, its tokens not reserved. Give callers with a deadline one: a caller that
        reserves and then gives up (`asyncio.wait_for` around `acquire`) moves every later
        caller back, and once another worker has taken tokens since, its tokens are not given
        back (see above), so under steady overload such callers can hold the bucket in debt
        until demand stops.

        Raises:
            TypeError: `key` is not a str (part of a Redis key).
            ValueError: `tokens` is not in (0, capacity], or is not a number (a bool
                included); `max_wait` is negative or not a number.
            RateLimitExceededError: The wait would be longer than `max_wait` (nothing was
                taken); a `TimeoutError` too.
            PersistenceError: Redis failed.
        """
        _check_name("key", key)
        bucket = self._bucket  # read once: its refund goes to the bucket it reserved from
        tokens = self._check(tokens, bucket)
        limit = _checked_max_wait(max_wait)
        self._this_process()
        worker = self._worker()  # this loop's, kept: `leave` may run once no loop is running
        room = worker.room(bucket.namespace)
        waiter = _Waiter()
        room.enter(key, waiter)
        try:
            reply = await self._take(bucket, key, tokens, 1, limit)
            if not reply.granted:
                raise RateLimitExceededError(reply.wait, limit)
            now = SYSTEM_CLOCK.now()
            waiter.seq = reply.seq
            # Less the refunds that landed while its command was out.
            wait = reply.wait - owed(reply.seq, waiter.gains)
            waiter.due = now + wait
            try:
                await waiter.wait(SYSTEM_CLOCK, wait, now)
            except BaseException:
                # When it is due on the server's clock: `wait` after the command ran there,
                # less what the refunds settled since have moved it up by (one owed to it but
                # not settled, given in this turn of the loop, does not make it due after the
                # fact: as `RateLimiter`).
                due = reply.now + (waiter.due - now)
                await _settle(self._refund(bucket, key, tokens, reply, due, fade=False))
                raise
        finally:
            room.leave(key, waiter)
            worker.vacate(bucket.namespace, room)


def _bucket(prefix: str, rate: float, capacity: float) -> _Bucket:
    """The settings of a limiter's buckets: limiters of the same ones share each key's."""
    return _Bucket(f"{prefix}{rate!r}/{capacity!r}:", rate, capacity)


class _Run(NamedTuple):
    """A `RedisDeduplicator` run under way in this process (its caller holds the lease)."""

    token: str
    lease: str
    """The Redis key of its lease (shared by every deduplicator of its prefix and namespace)."""
    key: str


# This process's wait-for graph of `RedisDeduplicator` runs, for all deduplicators (those of
# one prefix and namespace share keys). A run's call runs in its caller's task, so a task may
# be in several runs, one inside the other; it waits for one key at a time.
_RUNS: dict[asyncio.Task[Any], list[_Run]] = {}
"""The runs each task is in, outermost first."""
_RUNNERS: dict[str, asyncio.Task[Any]] = {}
"""The task of each run, by its lease token (a claim that finds a lease taken returns it)."""
_WAITS: dict[asyncio.Task[Any], tuple[str, str]] = {}
"""Of each task in a run that waits for another key: the token of the run holding that key's
lease when it last looked, and that key."""


def _refuse_cycle(task: asyncio.Task[Any], runs: list[_Run], key: str, holder: str) -> None:
    """Raises `RuntimeError` when `task` waiting for `holder` would close a cycle of waits.

    `task` is in `runs`; `holder` is the token of the run of `key`, whose lease is taken.
    A run waits for the runs inside it (in its task) and, at the innermost, for the run its
    task waits on: the walk follows that one chain, and keeps its keys for the message.
    """
    keys = [runs[-1].key, key]
    for _ in range(len(_WAITS) + 1):  # the graph has no cycle; bounded all the same
        runner = _RUNNERS.get(holder)
        if runner is None:
            return  # another process's run, or over: a wait that ends
        inner = _RUNS.get(runner, [])
        index = next((i for i, run in enumerate(inner) if run.token == holder), len(inner))
        keys.extend(run.key for run in inner[index + 1 :])
        if runner is task:
            raise RuntimeError(
                f"RedisDeduplicator: the run of key {_key_repr(keys[0])} asked for key "
                f"{_key_repr(key)}, whose run waits for this one: the cycle of waits "
                f"{_cycle_repr(keys)} would never end"
            )
        wait = _WAITS.get(runner)
        if wait is None:
            return
        holder, waited = wait
        keys.append(waited)


_GIVE_BACK_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Seconds between the attempts to give back the lease of a claim that failed: a few, so
that an outage does not multiply the commands sent to the server for long."""


def _outcome_unknown(error: BaseException | None) -> bool:
    """Whether a command that failed with `error` may have run on the server all the same.

    A lost connection or a reply that timed out: the server may have run the command (or
    may yet, once free). Not an error reply, a command that could not be encoded, nor a
    connection refused at its handshake (credentials, a server still loading its data).
    """
    from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(error, AuthenticationError | AuthorizationError | BusyLoadingError):
        return False
    return isinstance(error, RedisConnectionError | RedisTimeoutError | OSError)


_MAX_PX = 2**53
"""Most milliseconds a result or lease is kept (~285,000 years): Redis adds PX to its clock in
64 bits, and a float counts whole milliseconds exactly up to here."""

# Single flight. KEYS: result, lease, and the copy left for the waiters of a run (see below)
# once the caller knows whose run it waits on. ARGV: lease token, lease ms. Returns {1,
# result} when a result is published (or that run's copy is there), {2} when the caller took
# the lease (it runs the call), else {0, the token of the run under way, its lease's PTTL}.
_CLAIM_SCRIPT = """
local result = redis.call('GET', KEYS[1])
if result then return {1, result} end
if KEYS[3] then
  result = redis.call('GET', KEYS[3])
  if result then return {1, result} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0, redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[2])}
"""

# KEYS: result, lease, the run's copy for its waiters. ARGV: lease token, result ('' = failed:
# publish nothing), ttl ms, ms to keep the waiters' copy (0: none).
_FINISH_SCRIPT = """
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if ARGV[4] ~= '0' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4]) end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


def _lease_holder(claim: list[Any], lease: str) -> str:
    """The token of the run holding `lease`, from the reply of a claim that found it taken.

    Raises:
        PersistenceError: The lease is corrupt: it has no expiry (no run would ever end it,
            and every caller would wait for ever), or its holder is not UTF-8 text.
    """
    if claim[2] == -1:
        raise PersistenceError("corrupt lease: it has no expiry", key=lease)
    holder: bytes = claim[1]
    try:
        return holder.decode()
    except UnicodeDecodeError:
        raise PersistenceError("corrupt lease: its holder is not UTF-8 text", key=lease) from None


def _check_namespace(namespace: object) -> None:
    """Refuses a `namespace` that is not a str, or not valid Unicode text.

    Checked before the prefix, as ever.

    Raises:
        TypeError: `namespace` is not a str.
        PersistenceError: `namespace` holds a lone surrogate.
    """
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a string, got {namespace!r}")
    _check_name("namespace", namespace)


def _check_namespace_value(namespace: str) -> None:
    """Refuses an empty `namespace`, or one holding a `:`.

    Raises:
        ValueError: `namespace` is empty or holds a `:`.
    """
    if not namespace or ":" in namespace:
        raise ValueError(
            f"namespace must be a non-empty string without ':' (put a hierarchy in "
            f"prefix), got {namespace!r}"
        )


def _checked_px(name: str, seconds: object) -> float:
    """`seconds` as a float when Redis takes it as a PX: 1 ms to 2**53 ms.

    Raises:
        ValueError: `seconds` is out of that range, NaN, or not a number (a bool included).
    """
    value = check_real(name, seconds)
    # Written so that NaN fails the check (each comparison with NaN is false). A duration
    # Redis refuses would fail every call (a ttl, after `fn` ran: result lost).
    if not 0.001 <= value <= _MAX_PX / 1000:
        raise ValueError(
            f"{name} must be at least 0.001 s (1 ms) and at most {_MAX_PX / 1000} s "
            f"(2**53 ms), got {value}"
        )
    return value


class RedisDeduplicator(Unshared):
    """Single flight across processes: concurrent requests for one key run once.

    The first caller of a key takes a lease, runs the call and publishes its result (as JSON)
    for `ttl` seconds; the other callers, in any process, wait for that result instead of
    running the call again. A failure is not shared: the next caller runs the call. If the
    runner dies, its lease expires after `lease` seconds and a waiter takes over. A `ttl`
    shorter than the waiters' polling does not make them run the call again: the result is
    also kept for the callers that waited on that run (under `...:done:<run>`, for `lease`
    seconds, or two polls if longer, by the runner's settings; only when `ttl` is shorter
    than that: a waiter polling less often than that misses it, so give the deduplicators
    of one namespace the same `lease` and `poll_interval`). A caller
    cancelled while it holds the lease (or while the command taking it is in flight) gives
    the lease back before `CancelledError` is raised, so the next caller need not wait it out;
    so does, in the background, a caller whose command taking it failed with no reply (timed
    out, its connection lost): the server may have run it all the same.

    A run whose call asks for its own key, or for a key whose run waits, through any others
    of this process (of any deduplicator), for it, is refused with `RuntimeError` (see `run`):
    the cycle of waits would never end. A cycle through another process is not seen: its runs
    wait until a lease in it expires (after `lease` seconds); then a waiter takes that key
    over and runs its call inside its own run, which asks for a key that run holds, and the
    refusal of a run asking for its own key ends the cycle.

    Keys live in a `namespace`, which is required: deduplicators of one namespace (and
    prefix) share results, for instance one per worker process for the same function;
    deduplicators of different namespaces never serve each other's results, even for the
    same key, under one prefix. Name it after what the calls compute
    (`namespace="user-profiles"`). The Redis keys are `redis_keys(key)`:
    `<prefix><namespace>:<key>:result` and `...:lease`; a key may hold `:`, so a prefix must
    not be another one followed by `<namespace>:` (prefix `app:cache:` with namespace
    `profile` and key `42` is prefix `app:` with namespace `cache` and key `profile:42`).

    Every caller, the one that ran the call included, gets the JSON round trip of the result:
    tuples come back as lists and dict keys as strings (`{1: (1, 2)}` is `{"1": [1, 2]}`), so
    the value does not depend on which caller ran it.

    `ttl`, `lease`, `poll_interval`, `prefix` and `namespace` may be set again later, checked
    as the constructor checks them (a bad value raises, and the old one stays). A new `ttl`
    times the results published from then on (a run under way included), a new `lease` and
    `poll_interval` the claims and polls made from then on; a new `prefix` or `namespace`
    goes for the runs that start from then on (a run under way keeps its keys).

    Args:
        url: e.g. `redis://host:6379/0`.
        ttl: Seconds a result is served (at least 1 ms: Redis keeps it in milliseconds; at
            most 2**53 ms, about 285,000 years).
        lease: Seconds a runner holds a key before another caller may take over (at least
            1 ms, at most 2**53 ms).
        poll_interval: Seconds between a waiter's checks.
        prefix: Prepended to each Redis key.
        namespace: The results this deduplicator shares (keyword only, required): a
            non-empty string without `:`.

    Raises:
        TypeError: When `namespace` or `prefix` is not a string.
        PersistenceError: When `namespace` or `prefix` holds a lone surrogate.
        ValueError: When `ttl` or `lease` is below 1 ms or above 2**53 ms,
            `poll_interval` is not positive, any of them is NaN, infinite or not a number
            (a bool included); when `namespace` is empty or holds a `:`.
        PersistenceError: When redis-py is not installed (the `redis` extra), or `url` is
            not a Redis URL redis-py can use.
    """

    def __init__(
        self,
        url: str,
        ttl: float,
        lease: float = 30.0,
        poll_interval: float = 0.01,
        prefix: str = "llm_agent_runtime:dedup:",
        *,
        namespace: str,
    ) -> None:
        _check_namespace(namespace)
        # Formatted into the keys: a bytes prefix named others ("b'...'") silently.
        _check_name("prefix", prefix)
        _check_namespace_value(namespace)
        ttl, lease = _checked_px("ttl", ttl), _checked_px("lease", lease)
        poll_interval = check_seconds("poll_interval", poll_interval)
        # The settings' backing attributes, and the milliseconds derived from them.
        self._ttl, self._lease, self._poll_interval = ttl, lease, poll_interval
        self._prefix, self._namespace = prefix, namespace
        self._derive_ms()
        self.client: Any = redis_client(url, "RedisDeduplicator")
        self._claim = self.client.register_script(_CLAIM_SCRIPT)
        self._finish = self.client.register_script(_FINISH_SCRIPT)
        self.executions = 0
        """Calls this process actually ran."""

    def __repr__(self) -> str:
        return (
            f"RedisDeduplicator(namespace={self._namespace!r}, ttl={self._ttl}, "
            f"lease={self._lease})"
        )

    def _derive_ms(self) -> None:
        """Sets the milliseconds sent to Redis from the settings."""
        self._ttl_ms = int(self._ttl * 1000)
        self._lease_ms = int(self._lease * 1000)
        # A waiter polls at least once in this time, so it finds the result of the run it
        # waited on even when the published one has expired.
        waiters_ms = max(self._lease_ms, math.ceil(min(2_000 * self._poll_interval, _MAX_PX)))
        self._waiters_ms = 0 if self._ttl_ms >= waiters_ms else min(waiters_ms, _MAX_PX)

    @property
    def ttl(self) -> float:
        """Seconds a result is served; checked when set, as by the constructor."""
        return self._ttl

    @ttl.setter
    def ttl(self, ttl: float) -> None:
        # Checked as in the constructor (a ttl Redis refuses lost each result after its run),
        # and sent from then on: set as a plain attribute, the milliseconds stayed the same.
        self._ttl = _checked_px("ttl", ttl)
        self._derive_ms()

    @property
    def lease(self) -> float:
        """Seconds a runner holds a key before another may take over; checked when set."""
        return self._lease

    @lease.setter
    def lease(self, lease: float) -> None:
        self._lease = _checked_px("lease", lease)
        self._derive_ms()

    @property
    def poll_interval(self) -> float:
        """Seconds between a waiter's checks; checked when set, as by the constructor."""
        return self._poll_interval

    @poll_interval.setter
    def poll_interval(self, poll_interval: float) -> None:
        self._poll_interval = check_seconds("poll_interval", poll_interval)
        self._derive_ms()

    @property
    def prefix(self) -> str:
        """Prepended to each Redis key; checked when set (a str), as by the constructor."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        _check_name("prefix", prefix)
        self._prefix = prefix

    @property
    def namespace(self) -> str:
        """The results this deduplicator shares; checked when set, as by the constructor."""
        return self._namespace

    @namespace.setter
    def namespace(self, namespace: str) -> None:
        _check_namespace(namespace)
        _check_namespace_value(namespace)
        self._namespace = namespace

    def redis_keys(self, key: str) -> tuple[str, str]:
        """The Redis keys of `key`: its published result and its lease."""
        base = self._base(key)
        return f"{base}:result", f"{base}:lease"

    def _base(self, key: str) -> str:
        _check_name("key", key)
        return f"{self._prefix}{self._namespace}:{key}"

    async def close(self) -> None:
        """Closes every event loop's connection pool; a later call opens a new one.

        As `PostgresBackend.close`: the running loop's pool is closed before this returns,
        one of another running loop there, one of an idle loop when it next runs.
        """
        await self.client.aclose()

    async def run(self, key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Returns `fn(*args, **kwargs)` (sync or async), run once for all callers of `key`.

        `key` and `fn` are positional-only, so `kwargs` may hold arguments of those names.

        Returns:
            The JSON round trip of the result (the same value for every caller).

        Raises:
            TypeError: `key` is not a str (part of a Redis key: `1` would share `"1"`'s
                result).
            PersistenceError: When Redis fails, the result is not JSON-serializable (an
                error `fn` itself raises propagates as it is), or the key's stored result or
                lease is corrupt. A lease is corrupt when its holder is not UTF-8 text, or
                when it has no expiry: every lease a run takes expires, and one that does
                not would keep every caller of the key waiting for ever (delete it).
            RuntimeError: The run of `key` in this task asks for `key` itself (through any
                deduplicator sharing its keys): it would wait for its own lease. Or a run
                asks for a key whose run, in another task of this process, waits through
                any others for it (a cycle of waits such as `'a' -> 'b' -> 'a'`, which the
                message names): only the wait that would close the cycle is refused, the
                run that asked may handle the error, and the others then go on.
        """
        base = self._base(key)
        token = uuid.uuid4().hex
        # A run publishes its result, and a copy for its waiters under its token; a waiter's
        # claims read the copy of the run under way once they know it.
        keys = [*self.redis_keys(key), f"{base}:done:{token}"]
        task = asyncio.current_task()
        runs = _RUNS.get(task) if task is not None else None  # None: in no run
        if runs is not None and any(run.lease == keys[1] for run in runs):
            # Else it waited for the lease its own run holds, then ran the call again inside
            # that run once the lease expired, and so on, for ever.
            raise RuntimeError(
                f"RedisDeduplicator: the run of key {key!r:.80} asked for that key itself, "
                "and would wait for its own lease"
            )
        claim_keys = keys[:2]
        waiting: asyncio.Task[Any] | None = None  # set while this wait is an edge of the graph
        waited = ""
        try:
            while True:
                claim = await self._claim_once(claim_keys, token)
                if claim[0] == 1:
                    try:
                        return json.loads(claim[1])
                    except (ValueError, RecursionError) as error:  # nested too deep
                        raise PersistenceError(
                            f"corrupt shared result: {error}", key=keys[0]
                        ) from None
                if claim[0] == 2:
                    break
                if len(claim) > 1:  # the token of the run under way
                    holder = _lease_holder(claim, keys[1])
                    claim_keys = [*keys[:2], f"{base}:done:{holder}"]
                    # Checked again when another run holds the key (the lease expired).
                    if runs is not None and task is not None and holder != waited:
                        _refuse_cycle(task, runs, key, holder)
                        _WAITS[task] = (holder, key)
                        waiting, waited = task, holder
                await asyncio.sleep(self._poll_interval)
        finally:
            if waiting is not None:
                del _WAITS[waiting]
        # This caller holds the lease: whatever happens from here, it gives the lease back.
        self.executions += 1
        if task is not None:
            runs = _RUNS.setdefault(task, [])
            runs.append(_Run(token, keys[1], key))
            _RUNNERS[token] = task
        try:
            value = await call_maybe_async(fn, *args, **kwargs)
        except BaseException:
            await _settle(self._release(keys, token))
            raise
        finally:
            if task is not None and runs is not None:
                runs.pop()
                del _RUNNERS[token]
                if not runs:
                    del _RUNS[task]
        try:
            encoded = json.dumps(value)
            # Read back before it is published: what this caller cannot read (nested too
            # deep), its waiters could not either.
            shared = json.loads(encoded)
        except (TypeError, ValueError, RecursionError) as error:
            await _settle(self._release(keys, token))
            raise PersistenceError(
                f"a shared result must be JSON-serializable: {error}", key=keys[0]
            ) from error
        publish = keep_alive(
            asyncio.ensure_future(
                self._finish(keys=keys, args=[token, encoded, self._ttl_ms, self._waiters_ms])
            )
        )
        try:
            await asyncio.shield(publish)
        except asyncio.CancelledError:
            # The result is computed: publishing it runs to its end (and gives the lease back).
            await _settle(self._release_unless_done(publish, keys, token))
            raise
        except Exception as error:
            await _settle(self._release(keys, token))
            raise PersistenceError(f"Redis: {error}", key=keys[0]) from error
        return shared

    async def _claim_once(self, keys: list[str], token: str) -> Any:
        """Runs the claim command once; returns its reply.

        If the caller is cancelled while the command is in flight, the command still runs to
        its end, the lease it may have taken is given back, and then `CancelledError` is
        raised.

        Raises:
            PersistenceError: Redis failed.
        """
        command = keep_alive(asyncio.ensure_future(self._claim_command(keys, token)))
        try:
            return await asyncio.shield(command)
        except asyncio.CancelledError:
            await _settle(self._release_unless_done(command, keys, token, claim=True))
            raise
        except PersistenceError as error:
            if _outcome_unknown(error.__cause__):
                # The claim may have run all the same (a server busy past the socket timeout
                # runs it once free): else the lease it took, for a run that never comes,
                # kept every caller of the key waiting it out. In the background: the
                # caller's error is not delayed for a server that may still be busy.
                keep_alive(asyncio.ensure_future(self._give_back(keys, token)))
            raise

    async def _claim_command(self, keys: list[str], token: str) -> Any:
        try:
            return await self._claim(keys=keys, args=[token, self._lease_ms])
        except Exception as error:
            raise PersistenceError(f"Redis: {error}", key=keys[0]) from error

    async def _release_unless_done(
        self, command: asyncio.Future[Any], keys: list[str], token: str, claim: bool = False
    ) -> None:
        """Waits for `command` (a claim or a publication), then gives the lease back if needed.

        It is needed when the command may hold the lease: a claim that took it, or any
        command that failed or was cancelled (it may have run on the server all the same: a
        sweep of every task, as a shutdown handler does, cancels the shielded command too).
        """
        try:
            reply = await command
        except Exception:
            reply = None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not command.cancelled() or (task is not None and task.cancelling()):
                raise  # this cleanup itself is cancelled
            reply = None
        if reply is None or (claim and reply[0] == 2):
            await self._release(keys, token)

    async def _give_back(self, keys: list[str], token: str) -> None:
        """Gives back the lease a failed claim may have taken, trying again while it fails.

        The server that failed the claim may be busy or unreachable still: an attempt that
        fails is tried again after a pause, a few times, until the lease has expired anyway.
        Only the last failure is logged. Taking nothing but the lease of this `token`, an
        attempt is safe to repeat.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease
        error: Exception | None = None
        for pause in (*_GIVE_BACK_PAUSES, None):
            try:
                await self._finish(keys=keys, args=[token, "", 0, 0])
                return
            except Exception as failure:
                error = failure
            if pause is None or loop.time() + pause >= deadline:
                break
            await asyncio.sleep(pause)
        logger.warning("RedisDeduplicator: could not give back the lease of %s: %s", keys[1], error)

    async def _release(self, keys: list[str], token: str) -> None:
        """Gives the lease back (if still held) without publishing a result.

        A Redis failure here is logged, not raised: the caller's own error matters more, and
        the lease expires anyway.
        """
        try:
            await self._finish(keys=keys, args=[token, "", 0, 0])
        except Exception as error:
            logger.warning(
                "RedisDeduplicator: could not give back the lease of %s: %s", keys[1], error
            )
