"""Durable sessions under concurrency and across hosts, on every backend: prunes that
overlap (one's write landing late), runs on hosts whose clocks disagree, forks onto an id
that is taken."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest

import llm_agent_runtime as ar
import llm_agent_runtime.persistence.checkpoints as checkpoints
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import encode
from llm_agent_runtime.session import AgentSession

from .test_backends import backend_fixture
from .test_checkpoint_keys import record, start
from .test_durable import FINAL, Effects, add_step, fails_after, script

backend = backend_fixture()


def observations(state: checkpoints.SessionState) -> list[str]:
    return [r.step.observation for r in state.records]


class Delegating:
    """A backend that hands every call to `inner`, but those a subclass overrides."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LateBaseWrite(Delegating):
    """The backend, but the first write of a base record waits for `go`: a prune's write in
    flight (a slow link, a paused process) while the session and other prunes go on."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def _late(self, keys: Iterable[str]) -> None:
        if any(":base" in key for key in keys) and not self.go.is_set():
            self.reached.set()
            await self.go.wait()

    async def save(self, key: str, value: bytes) -> None:
        await self._late([key])
        await self.inner.save(key, value)

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: dict[str, bytes]
    ) -> bool:
        await self._late(items)
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


# ---------------------------------------------------------------------- overlapping prunes
@pytest.mark.parametrize(("late_keeps", "other_keeps"), [(2, 1), (1, 4)])
async def test_a_prune_whose_write_lands_late_loses_no_step(
    backend: ar.PersistenceBackend, late_keeps: int, other_keeps: int
) -> None:
    writer = CheckpointStore(backend)
    await start(writer, "s", steps=10)
    late = LateBaseWrite(backend)
    first = asyncio.create_task(CheckpointStore(late).prune("s", keep_last=late_keeps))
    await late.reached.wait()  # it has read the session and is writing its base
    await writer.save_steps("s", 11, [record(11), record(12)])  # the session runs on
    assert await CheckpointStore(backend).prune("s", keep_last=other_keeps) == 12 - other_keeps
    late.go.set()
    assert await first == 10 - late_keeps
    everything = [str(n) for n in range(1, 13)]
    assert observations(await CheckpointStore(backend).load("s")) == everything
    # The shorter base is gone again; a later prune folds on from the longest.
    longest = max(10 - late_keeps, 12 - other_keeps)
    assert await backend.list_keys("session:s:base") == [f"session:s:base:{longest}"]
    assert await writer.prune("s", keep_last=0) == 12 - longest
    assert await backend.list_keys("session:s:base") == ["session:s:base:12"]
    assert await backend.list_keys("session:s:step:") == []
    assert observations(await writer.load("s")) == everything


async def test_many_prunes_at_once_while_the_session_runs(backend: ar.PersistenceBackend) -> None:
    writer = CheckpointStore(backend)
    await start(writer, "s", steps=20)

    async def run_on() -> None:
        for n in range(21, 31):
            await writer.save_steps("s", n, [record(n)])

    prunes = [CheckpointStore(backend).prune("s", keep_last=k) for k in (0, 3, 7, 1, 12, 5)]
    await asyncio.gather(run_on(), *prunes)
    assert observations(await writer.load("s")) == [str(n) for n in range(1, 31)]
    assert len(await backend.list_keys("session:s:base")) == 1  # the longest alone


async def test_a_step_saved_again_after_a_prune_folded_it_is_pruned_later(
    backend: ar.PersistenceBackend,
) -> None:
    cs = CheckpointStore(backend)
    await start(cs, "s", steps=4)
    await cs.journal("s", 2, 0, {"state": "done"})
    assert await cs.prune("s", keep_last=1) == 3
    # A save the runtime took for failed is sent again with the next step (see
    # `AgentRuntime._save_steps`): it may land after a prune folded those steps.
    await cs.save_steps("s", 2, [record(2), record(3), record(4), record(5)])
    assert observations(await cs.load("s")) == ["1", "2", "3", "4", "5"]
    assert await cs.prune("s", keep_last=0) == 2
    assert await backend.list_keys("session:s:step:") == []
    assert await backend.list_keys("session:s:call:") == []
    assert observations(await cs.load("s")) == ["1", "2", "3", "4", "5"]


async def test_a_base_record_of_older_versions_is_read_and_folded_on(
    backend: ar.PersistenceBackend,
) -> None:
    cs = CheckpointStore(backend)
    await start(cs, "s", steps=5)
    # As versions before `:base:<n>` left a pruned session: `:base` with steps 1 to 3.
    folded = {"records": [record(n).to_dict() for n in (1, 2, 3)]}
    await backend.save("session:s:base", encode("base", folded))
    for n in (1, 2, 3):
        await backend.delete(f"session:s:step:{n}")
    assert observations(await cs.load("s")) == ["1", "2", "3", "4", "5"]
    assert await cs.prune("s", keep_last=3) == 0
    assert await cs.prune("s", keep_last=1) == 1
    assert await backend.list_keys("session:s:base") == ["session:s:base:4"]
    assert observations(await cs.load("s")) == ["1", "2", "3", "4", "5"]


# ---------------------------------------------------------------------- hosts' clocks
class Clock:
    """`time` as a host whose clock is `behind` seconds behind this one's sees it."""

    def __init__(self, behind: float) -> None:
        self.behind = behind

    def time(self) -> float:
        return time.time() - self.behind


@pytest.mark.parametrize("behind", [2.0, 0.0, -2.0])
async def test_a_later_turn_interrupted_on_another_host_is_seen_whatever_its_clock(
    backend: ar.PersistenceBackend, behind: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_a = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    worker_b = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = worker_a.create_session("a", "chat-1")
    assert await worker_a.run_turn(session, "turn 1", script(FINAL)) == "finished"
    with monkeypatch.context() as host_b:  # worker B's clock
        host_b.setattr(checkpoints, "time", Clock(behind))
        with pytest.raises(ConnectionError):
            await worker_b.run_turn(session, "turn 2", fails_after(add_step(0), add_step(1)))

    state = await CheckpointStore(backend).load("chat-1")
    assert state.interrupted_turn and state.final is None and state.prompt == "turn 2"
    assert len(state.records) == 3
    assert await worker_a.sweep(older_than=-1000) == []  # turn 2's steps are kept
    saved = await ar.AgentSession.load_checkpoint(backend, "chat-1")
    assert [s.action for s in saved.steps] == ["FINAL_ANSWER", "add", "add"]

    # A resumes the turn B started, to its end.
    resumed = await worker_a.resume("chat-1", script(FINAL))
    assert [s.action for s in resumed.steps] == ["FINAL_ANSWER", "add", "add", "FINAL_ANSWER"]
    assert [m["content"] for m in resumed.messages] == ["turn 1", "finished", "turn 2", "finished"]
    state = await CheckpointStore(backend).load("chat-1")
    assert not state.interrupted_turn and state.final is not None
    assert await worker_a.sweep(older_than=-1000) == ["chat-1"]


@pytest.mark.parametrize("behind", [2.0, -2.0])
async def test_a_run_resumed_on_another_host_is_finished_whatever_its_clock(
    backend: ar.PersistenceBackend, behind: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_a = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    worker_b = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = worker_a.create_session("a", "job")
    with pytest.raises(ConnectionError):
        await worker_a.run_agent("a", "q", fails_after(add_step(0)), session=session)
    with monkeypatch.context() as host_b:
        host_b.setattr(checkpoints, "time", Clock(behind))
        assert (await worker_b.resume("job", script(FINAL))).final_answer == "finished"
    state = await CheckpointStore(backend).load("job")
    assert not state.interrupted_turn and state.final is not None
    finished = await worker_a.resume("job", script())  # finished: returned as saved
    assert [s.action for s in finished.steps] == ["add", "FINAL_ANSWER"]
    assert await worker_a.sweep(older_than=-1000) == ["job"]


async def test_records_that_name_no_run_are_told_apart_by_their_times(
    backend: ar.PersistenceBackend,
) -> None:
    """Meta and final records written before runs were named (and a mix of both kinds)."""
    cs = CheckpointStore(backend)
    turn1 = AgentSession("s", "a", prompt="turn 1")

    async def write(started: float, finished: float, run: str | None) -> None:
        meta: dict[str, Any] = {"agent_id": "a", "prompt": "turn 2", "mode": "react"}
        meta = {"session_id": "s", **meta, "started_at": started}
        if run is not None:
            meta["run"] = run
        final = {"session": turn1.to_dict(), "finished_at": finished}
        await backend.batch_save(
            {"session:s:meta": encode("meta", meta), "session:s": encode("session", final)}
        )

    for run in (None, "r2"):
        await write(started=20.0, finished=10.0, run=run)  # turn 2 began after turn 1 ended
        state = await cs.load("s")
        assert state.interrupted_turn and state.prompt == "turn 2"
        assert await cs.sweep(older_than=-1000) == []
        await write(started=10.0, finished=20.0, run=run)  # the final record closes the run
        state = await cs.load("s")
        assert not state.interrupted_turn and state.final is not None
    assert await cs.sweep(older_than=-1000) == ["s"]


# ---------------------------------------------------------------------- fork
async def test_fork_refuses_an_id_that_has_checkpoints(backend: ar.PersistenceBackend) -> None:
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    source = runtime.create_session("a", "src")
    replies = [add_step(0), add_step(1), add_step(2), FINAL]
    await runtime.run_agent("a", "q", script(*replies), session=source)
    assert await runtime.fork("src", 3, "retry") == "retry"
    await runtime.resume("retry", script(add_step(7), FINAL))
    kept = {k: await backend.load(k) for k in await backend.list_keys("session:retry")}

    with pytest.raises(ar.PersistenceError, match="'retry': it already has checkpoints") as info:
        await runtime.fork("src", 1, "retry")  # a retried fork, under the same name
    assert info.value.key == "session:retry"
    assert {k: await backend.load(k) for k in await backend.list_keys("session:retry")} == kept
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.fork("src", 1, "src")  # onto its own source
    await CheckpointStore(backend).save_meta(AgentSession("started", "a"), "react")
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.fork("src", 1, "started")  # a run that has only started

    # Ids that extend a taken one, or that it extends, are others: free.
    for free in ("retry:2", "re", "retryx"):
        assert await runtime.fork("src", 1, free) == free
        forked = await runtime.resume(free, script(FINAL))
        assert [s.action_input for s in forked.steps] == [{"a": 0, "b": 1}, "finished"]


async def test_a_fork_that_failed_to_save_left_nothing_and_can_be_retried() -> None:
    class FailsOnce(ar.InMemoryBackend):
        fail = True

        async def batch_save(self, items: Any) -> None:
            if self.fail and any(k.startswith("session:copy") for k in items):
                self.fail = False
                raise OSError("disk full")
            await super().batch_save(items)

    backend = FailsOnce()
    cs = CheckpointStore(backend)
    await start(cs, "src", steps=2)
    with pytest.raises(ar.PersistenceError, match="disk full") as caught:
        await cs.fork("src", 2, "copy")
    assert isinstance(caught.value.__cause__, OSError)
    assert await backend.list_keys("session:copy") == []  # meta and steps: all or none
    await cs.fork("src", 2, "copy")
    assert observations(await cs.load("copy")) == ["1", "2"]


# ---------------------------------------------------------------------- a reused id
async def test_a_new_session_under_an_id_that_has_checkpoints_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # A stable per-user id reused after a restart: the new run's steps mixed with the old
    # run's, so a load, a resume or a fork found the old run's steps and answer.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    replies = [*(add_step(i) for i in range(4)), FINAL]
    old = await runtime.run_agent(
        "a", "old", script(*replies), session=runtime.create_session("a", "user-42")
    )
    saved = {k: await backend.load(k) for k in await backend.list_keys()}

    fresh = runtime.create_session("a", "user-42")
    with pytest.raises(ar.PersistenceError, match="'user-42' already has checkpoints") as info:
        await runtime.run_agent("a", "new", fails_after(add_step(9)), session=fresh)
    assert info.value.key == "session:user-42"
    # An older copy of the session (fewer steps than saved) is refused too.
    older = AgentSession.from_json(old.to_json())
    del older.steps[2:]
    with pytest.raises(ar.PersistenceError, match="5 steps saved, the session has 2"):
        await runtime.run_turn(older, "new", script(FINAL))
    # Nothing was written, not even the refused runs' event logs.
    assert {k: await backend.load(k) for k in await backend.list_keys()} == saved
    assert await ar.AgentSession.load_checkpoint(backend, "user-42") == old
    assert (await runtime.resume("user-42", script())).final_answer == "finished"


async def test_a_session_whose_run_saved_no_step_runs_again(
    backend: ar.PersistenceBackend,
) -> None:
    # A run that failed before its first step (a provider down, a spent budget) left its
    # meta record alone: the retry was refused as a new session under a taken id, and so
    # were a loaded copy's turn and a fork at step 0's.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "s1")
    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "q", fails_after(), session=session)
    assert (await runtime.run_agent("a", "q", script(FINAL), session=session)).final_answer
    assert (await ar.AgentSession.load_checkpoint(backend, "s1")).final_answer == "finished"
    with pytest.raises(ConnectionError):
        await runtime.run_turn(runtime.create_session("a", "s2"), "q", fails_after())
    loaded = await ar.AgentSession.load_checkpoint(backend, "s2")
    assert await runtime.run_turn(loaded, "q", script(FINAL)) == "finished"
    fork = await runtime.fork("s1", 0)
    copy = await ar.AgentSession.load_checkpoint(backend, fork)
    assert await runtime.run_turn(copy, "again", script(FINAL)) == "finished"


async def test_two_runs_starting_one_fresh_id_at_once_run_one(
    backend: ar.PersistenceBackend,
) -> None:
    # Both passed the check that the id was free, then wrote over each other's meta,
    # steps and events.
    first = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    second = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    runs = await asyncio.gather(
        first.run_agent("a", "Q1", script(FINAL), session=first.create_session("a", "x")),
        second.run_agent("a", "Q2", script(FINAL), session=second.create_session("a", "x")),
        return_exceptions=True,
    )
    refused = [r for r in runs if isinstance(r, ar.PersistenceError)]
    ran = [r for r in runs if isinstance(r, AgentSession)]
    assert len(refused) == 1 and len(ran) == 1, runs  # what each run gave, when it fails
    # Refused by the first run's meta record or claim or, where a backend never suspends,
    # by its steps.
    whys = ("was just taken", "is being run by another run", "1 steps saved")
    assert any(why in str(refused[0]) for why in whys)
    assert await ar.AgentSession.load_checkpoint(backend, "x") == ran[0]


def held(reached: asyncio.Event, go: asyncio.Event) -> Any:
    """A model whose first reply waits for `go` (a slow first call: no step saved yet)."""

    async def infer(prompt: str) -> str:
        reached.set()
        await go.wait()
        return FINAL

    return infer


@contextlib.asynccontextmanager
async def under_way(start: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[list[Any]]:
    """Runs `start(model)`, the model's first reply held until the block ends: the block
    runs while that run is under way, no step saved. The list yielded holds the run's result
    once the block is left.
    """
    reached, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(start(held(reached, go)))
    await reached.wait()
    result: list[Any] = []
    try:
        yield result
    finally:
        go.set()
        result.append(await running)


async def failed_first_run(backend: ar.PersistenceBackend, session_id: str) -> ar.AgentRuntime:
    """A runtime whose run of new session `session_id` (prompt "Q0") failed before its first
    step, its model down."""
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ConnectionError):
        session = runtime.create_session("a", session_id)
        await runtime.run_agent("a", "Q0", fails_after(), session=session)
    return runtime


async def test_a_run_under_way_with_no_step_saved_keeps_its_id(
    backend: ar.PersistenceBackend,
) -> None:
    # Its meta record alone read as a run that had failed: a second run under the id ran
    # too, and the two wrote over each other's steps.
    first = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    second = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    async with under_way(
        lambda model: first.run_agent("a", "Q1", model, session=first.create_session("a", "x"))
    ) as outcome:
        with pytest.raises(ar.PersistenceError, match="is being run by another run") as info:
            fresh = second.create_session("a", "x")
            await second.run_agent("a", "Q2", script(FINAL), session=fresh)
        assert "runtime.resume" in str(info.value)
        # A copy loaded from the store is refused as well.
        loaded = await ar.AgentSession.load_checkpoint(backend, "x")
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await second.run_turn(loaded, "Q2", script(FINAL))
    done = outcome[0]
    assert done.prompt == "Q1"
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done


async def test_a_run_whose_process_ended_before_its_first_step_is_resumed(
    backend: ar.PersistenceBackend,
) -> None:
    # A process that died in its first model call leaves a meta record alone: a new run is
    # refused (it cannot be told from a run under way), and resume runs the question.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "x")
    session.prompt = "Q1"
    await CheckpointStore(backend).save_meta(session, "react")  # and then the process ended
    with pytest.raises(ar.PersistenceError, match="is being run by another run"):
        await runtime.run_agent("a", "Q2", script(FINAL), session=runtime.create_session("a", "x"))
    resumed = await runtime.resume("x", script(add_step(1), FINAL))
    assert (resumed.prompt, resumed.final_answer, resumed.step_count) == ("Q1", "finished", 2)
    assert await ar.AgentSession.load_checkpoint(backend, "x") == resumed


async def test_a_failed_run_gives_up_its_claim_and_one_retry_runs(
    backend: ar.PersistenceBackend,
) -> None:
    # A run that failed before its first step gives up its claim: the id runs again, one
    # retry at a time.
    runtime = await failed_first_run(backend, "x")
    assert await backend.list_keys("session:x:run:") == []
    other = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    reached, go = asyncio.Event(), asyncio.Event()
    retry = runtime.run_agent(
        "a", "Q1", held(reached, go), session=runtime.create_session("a", "x")
    )
    running = asyncio.create_task(retry)
    await reached.wait()
    try:
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await other.run_agent("a", "Q2", script(FINAL), session=other.create_session("a", "x"))
    finally:
        go.set()
        done = await running
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert done.prompt == "Q1"
    assert await backend.list_keys("session:x:run:") == ["session:x:run:0"]
    # The finished session is swept whole.
    assert await CheckpointStore(backend).sweep(older_than=-1.0) == ["x"]
    assert await backend.list_keys("session:x") == []


async def test_a_resumed_run_with_no_step_keeps_its_id(backend: ar.PersistenceBackend) -> None:
    # A failed run gave up its claim; its resume ran with none, and a new run under the id ran
    # beside it.
    runtime = await failed_first_run(backend, "x")
    other = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    async with under_way(lambda model: runtime.resume("x", model)) as outcome:
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await other.run_agent("a", "Q2", script(FINAL), session=other.create_session("a", "x"))
    done = outcome[0]
    assert (done.prompt, done.final_answer) == ("Q0", "finished")
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    # A resume that fails before its first step gives up the claim it made.
    await failed_first_run(backend, "y")
    with pytest.raises(ConnectionError):
        await runtime.resume("y", fails_after())
    assert await runtime.run_agent(
        "a", "Q4", script(FINAL), session=runtime.create_session("a", "y")
    )


class SlowClaimReply(Delegating):
    """The backend, but the reply to a claim comes late (the claim itself has landed)."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.landed = asyncio.Event()

    async def save_new(self, key: str, value: bytes) -> bool:
        won: bool = await self.inner.save_new(key, value)
        if key.endswith(":run:0"):
            self.landed.set()
            await asyncio.sleep(0.05)
        return won


async def test_a_run_cancelled_while_it_claims_the_id_gives_the_claim_up(
    backend: ar.PersistenceBackend,
) -> None:
    slow = SlowClaimReply(backend)
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=slow)  # type: ignore[arg-type]
    session = runtime.create_session("a", "x")
    running = asyncio.create_task(runtime.run_agent("a", "Q1", script(FINAL), session=session))
    await slow.landed.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(100):  # deleted once the write's reply comes (not waited for by the run)
        if not await backend.list_keys("session:x:run:"):
            break
        await asyncio.sleep(0.01)
    assert await backend.list_keys("session:x:run:") == []
    again = runtime.create_session("a", "x")
    assert (await runtime.run_agent("a", "Q2", script(FINAL), session=again)).final_answer


async def test_two_turns_of_one_session_at_once_run_one(backend: ar.PersistenceBackend) -> None:
    # Two processes with a copy of a session each (two messages of one chat, handled by two
    # workers) both ran their turn and wrote over each other's steps.
    first = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    second = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    assert await first.run_turn(first.create_session("a", "chat"), "Q1", script(FINAL))
    mine = await ar.AgentSession.load_checkpoint(backend, "chat")
    theirs = await ar.AgentSession.load_checkpoint(backend, "chat")
    async with under_way(lambda model: first.run_turn(mine, "Q2", model)):
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await second.run_turn(theirs, "Q3", script(FINAL))
    # The refused copy is behind now; loaded again, its turn runs after the other's.
    with pytest.raises(ar.PersistenceError, match="2 steps saved, the session has 1"):
        await second.run_turn(theirs, "Q3", script(FINAL))
    again = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert await second.run_turn(again, "Q3", script(FINAL)) == "finished"
    saved = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert [m["content"] for m in saved.messages if m["role"] == "user"] == ["Q1", "Q2", "Q3"]
    # A claim is emptied once its run saved a step: it does not keep a copy of the chat.
    for key in await backend.list_keys("session:chat:run:"):
        assert len(await backend.load(key) or b"") < 200, key


class MetaWriteHangs(Delegating):
    """The backend, but a meta record's write never ends once `hang` is set: the process
    ended between a run's claim and its meta record."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.hang, self.reached = False, asyncio.Event()

    async def save(self, key: str, value: bytes) -> None:
        if self.hang and key.endswith(":meta"):
            self.reached.set()
            await asyncio.Event().wait()
        await self.inner.save(key, value)


async def second_turn_dying_after_its_claim(backend: ar.PersistenceBackend) -> asyncio.Task[Any]:
    """Session "chat" after turn "Q1", its turn "Q2" claimed: the task of that turn, whose
    process ended before it wrote its meta record (to be left behind)."""
    dying = MetaWriteHangs(backend)
    gone = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=dying)  # type: ignore[arg-type]
    assert await gone.run_turn(gone.create_session("a", "chat"), "Q1", script(FINAL))
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    dying.hang = True
    lost = asyncio.create_task(gone.run_turn(copy, "Q2", script(FINAL)))
    await dying.reached.wait()
    return lost


async def test_a_turn_whose_process_ended_after_its_claim_is_resumed(
    backend: ar.PersistenceBackend,
) -> None:
    lost = await second_turn_dying_after_its_claim(backend)
    try:
        runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
        stale = await ar.AgentSession.load_checkpoint(backend, "chat")
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await runtime.run_turn(stale, "Q3", script(FINAL))
        # The claim holds the turn: resume asks its question, after the chat before it.
        resumed = await runtime.resume("chat", script(add_step(1), FINAL))
        assert (resumed.step_count, resumed.final_answer) == (3, "finished")
        asked = [m["content"] for m in resumed.messages if m["role"] == "user"]
        assert asked == ["Q1", "Q2"]
        state = await CheckpointStore(backend).load("chat")
        assert not state.interrupted_turn  # the meta record went with the resumed steps
        assert await runtime.run_turn(resumed, "Q3", script(FINAL)) == "finished"
    finally:
        await left_behind(lost)


class HeldCopy(Delegating):
    """The backend, but a fork's copy of steps waits for `go`."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def batch_save(self, items: Any) -> None:
        if not self.go.is_set() and any(key.startswith("session:y:") for key in items):
            self.reached.set()
            await self.go.wait()
        await self.inner.batch_save(items)


@pytest.mark.parametrize("step", [0, 2])
async def test_a_run_under_an_id_a_fork_is_copying_into_is_refused(
    backend: ar.PersistenceBackend, step: int
) -> None:
    # The fork's meta record read as a failed run's: the run ran, then the fork's copy landed
    # over it, and the id held both.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    await runtime.run_agent(
        "a",
        "SRC",
        script(add_step(1), add_step(2), FINAL),
        session=runtime.create_session("a", "src"),
    )
    held_copy = HeldCopy(backend)
    forking_runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=held_copy)  # type: ignore[arg-type]
    forking = asyncio.create_task(forking_runtime.fork("src", step, "y"))
    await held_copy.reached.wait()
    try:
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await runtime.run_agent(
                "a", "NEW", script(FINAL), session=runtime.create_session("a", "y")
            )
    finally:
        held_copy.go.set()
        assert await forking == "y"
    assert await backend.list_keys("session:y:run:") == []
    resumed = await runtime.resume("y", script(FINAL))
    assert (resumed.prompt, resumed.step_count) == ("SRC", step + 1)


class SlowDelete(Delegating):
    """The backend, but a delete takes `seconds`."""

    def __init__(self, inner: ar.PersistenceBackend, seconds: float) -> None:
        super().__init__(inner)
        self.seconds = seconds
        self.deleting = asyncio.Event()

    async def delete(self, key: str) -> bool:
        self.deleting.set()
        await asyncio.sleep(self.seconds)
        return bool(await self.inner.delete(key))


async def test_a_claim_is_released_though_its_release_is_cut(
    backend: ar.PersistenceBackend,
) -> None:
    # Cancelled again while the claim was deleted, or out of time for it: the claim stayed,
    # and every later run under the id was refused.
    slow = SlowDelete(backend, 0.1)
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=slow)  # type: ignore[arg-type]
    reached, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        runtime.run_agent("a", "Q1", held(reached, go), session=runtime.create_session("a", "x"))
    )
    await reached.wait()
    running.cancel()
    await slow.deleting.wait()
    running.cancel()  # a second cancellation, while the claim is deleted
    with pytest.raises(asyncio.CancelledError):
        await running
    # The run's time (ample for its claim to be written, on a loaded machine too) runs out
    # while the claim is deleted.
    timed = ar.AgentRuntime(
        ar.AgentConfig(loop_timeout_ms=250),
        tools=Effects().tools(),
        checkpoint_backend=SlowDelete(backend, 2.0),  # type: ignore[arg-type]
    )
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await timed.run_agent("a", "Q2", fails_after(), session=timed.create_session("a", "z"))
    assert time.monotonic() - started < 2.0  # it did not wait for the deletion
    for prefix in ("session:x:run:", "session:z:run:"):  # the deletions finish on their own
        for _ in range(100):
            if not await backend.list_keys(prefix):
                break
            await asyncio.sleep(0.05)
        assert await backend.list_keys(prefix) == []
    for session_id in "xz":
        again = runtime.create_session("a", session_id)
        assert (await runtime.run_agent("a", "Q", script(FINAL), session=again)).final_answer


class FailingDelete(Delegating):
    """The backend, but every delete fails (a connection that broke after the run began)."""

    async def delete(self, key: str) -> bool:
        raise ar.PersistenceError("connection reset", key=key)


async def test_a_failed_runs_claim_whose_release_fails_is_logged(
    backend: ar.PersistenceBackend, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=FailingDelete(backend))  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):  # the run's own error, not the release's
        await runtime.run_agent("a", "Q", fails_after(), session=runtime.create_session("a", "x"))
    assert "a claim of session x was not deleted (later runs of the session" in caplog.text
    assert "connection reset" in caplog.text
    assert await backend.list_keys("session:x:run:") != []  # what the warning says


class NoSaveNew:
    """A backend with the six methods a runtime needs, and no `save_new`."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        self.inner = inner
        for name in ("save", "load", "delete", "batch_save", "batch_load", "list_keys"):
            setattr(self, name, getattr(inner, name))


async def test_without_save_new_a_run_under_way_still_keeps_its_id(
    backend: ar.PersistenceBackend,
) -> None:
    plain = NoSaveNew(backend)
    first = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=plain)  # type: ignore[arg-type]
    second = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=plain)  # type: ignore[arg-type]
    async with under_way(
        lambda model: first.run_agent("a", "Q1", model, session=first.create_session("a", "x"))
    ) as outcome:
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await second.run_agent(
                "a", "Q2", script(FINAL), session=second.create_session("a", "x")
            )
    done = outcome[0]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done


async def test_a_resume_is_refused_when_a_new_run_claimed_the_session_after_it_was_loaded(
    backend: ar.PersistenceBackend,
) -> None:
    await failed_first_run(backend, "x")
    state = await CheckpointStore(backend).load("x")  # what a resume read
    other = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    async with under_way(
        lambda model: other.run_agent("a", "Q1", model, session=other.create_session("a", "x"))
    ) as outcome:
        with pytest.raises(ar.PersistenceError, match="is being run by another run"):
            await CheckpointStore(backend).claim_resumed(state)
    done = outcome[0]
    assert done.prompt == "Q1"


async def test_a_resumed_run_keeps_a_new_run_of_a_copy_out(backend: ar.PersistenceBackend) -> None:
    # The resumed run claimed nothing once the run had a step: a worker that loaded the
    # session ran a new turn from the same step beside it, and they wrote over each other.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "x")
    with pytest.raises(ConnectionError):
        await runtime.run_agent("a", "Q0", fails_after(add_step(1)), session=session)
    other = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    copy = await ar.AgentSession.load_checkpoint(backend, "x")
    async with under_way(lambda model: runtime.resume("x", model)) as outcome:
        with pytest.raises(ar.PersistenceError, match="that run has not ended"):
            await other.run_agent("a", "Q1", script(FINAL), session=copy)
    done = outcome[0]
    assert [s.action for s in done.steps] == ["add", "FINAL_ANSWER"]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done


class Hangs(Delegating):
    """The backend, but the first call of `method` on a key matching `part` never ends (the
    process died there); the runtime using it is left behind."""

    def __init__(self, inner: ar.PersistenceBackend, method: str, part: str) -> None:
        super().__init__(inner)
        self.method, self.part = method, part
        self.on, self.reached = True, asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        inner = getattr(self.inner, name)
        if name != self.method:
            return inner

        async def call(key: Any, *args: Any) -> Any:
            keys = list(key) if isinstance(key, dict) else [key]
            if self.on and any(self.part in k for k in keys):
                self.reached.set()
                await asyncio.Event().wait()
            return await inner(key, *args)

        return call


async def left_behind(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def test_a_fork_whose_process_ended_after_the_copy_is_resumed(
    backend: ar.PersistenceBackend,
) -> None:
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    source = runtime.create_session("a", "src")
    await runtime.run_agent("a", "SRC", script(add_step(1), FINAL), session=source)
    dying = Hangs(backend, "delete", ":run:0")
    forking = asyncio.create_task(CheckpointStore(dying).fork("src", 0, "y"))  # type: ignore[arg-type]
    await dying.reached.wait()
    try:
        resumed = await runtime.resume("y", script(FINAL))
        assert (resumed.prompt, resumed.final_answer) == ("SRC", "finished")
    finally:
        await left_behind(forking)


async def test_a_later_turn_claimed_but_not_started_is_not_swept(
    backend: ar.PersistenceBackend,
) -> None:
    lost = await second_turn_dying_after_its_claim(backend)
    try:
        assert await CheckpointStore(backend).sweep(older_than=-1000) == []
        assert (await CheckpointStore(backend).load("chat")).interrupted_turn
    finally:
        await left_behind(lost)


async def test_a_restored_session_whose_run_died_while_claiming_runs_again(
    backend: ar.PersistenceBackend,
) -> None:
    # The claim came before the steps the store lacked: a run that died between them left a
    # claim no load could see, and the restored session was refused for good.
    offline = ar.AgentRuntime(tools=Effects().tools())
    session = offline.create_session("a", "x")
    assert await offline.run_turn(session, "T1", script(FINAL))
    assert await offline.run_turn(session, "T2", script(FINAL))
    dying = Hangs(backend, "save_new", ":run:")
    gone = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=dying)  # type: ignore[arg-type]
    restored = ar.AgentSession.from_json(session.to_json())
    lost = asyncio.create_task(gone.run_turn(restored, "T3", script(FINAL)))
    await dying.reached.wait()
    try:
        runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
        again = ar.AgentSession.from_json(session.to_json())
        assert await runtime.run_turn(again, "T3", script(FINAL)) == "finished"
        saved = await ar.AgentSession.load_checkpoint(backend, "x")
        assert [m["content"] for m in saved.messages if m["role"] == "user"] == ["T1", "T2", "T3"]
    finally:
        await left_behind(lost)


class FinalHangs(Delegating):
    """The backend, but the first write of the final checkpoint `key` never ends."""

    def __init__(self, inner: ar.PersistenceBackend, key: str) -> None:
        super().__init__(inner)
        self.key = key
        self.reached = asyncio.Event()

    async def batch_save(self, items: Any) -> None:
        if self.key in items and not self.reached.is_set():
            self.reached.set()
            await asyncio.Event().wait()
        await self.inner.batch_save(items)


async def test_a_resume_that_only_closes_a_turn_leaves_the_next_turn_free(
    backend: ar.PersistenceBackend,
) -> None:
    # The resume claimed the step the session was at and the final checkpoint kept the
    # claim: every later turn was refused.
    config = ar.AgentConfig(max_iterations=1)
    dying = FinalHangs(backend, "session:chat")
    gone = ar.AgentRuntime(config, tools=Effects().tools(), checkpoint_backend=dying)  # type: ignore[arg-type]
    lost = asyncio.create_task(
        gone.run_turn(gone.create_session("a", "chat"), "Q1", script(add_step(1)))
    )
    await dying.reached.wait()  # its step is saved; the process ends as it closes the turn
    try:
        runtime = ar.AgentRuntime(config, tools=Effects().tools(), checkpoint_backend=backend)
        resumed = await runtime.resume("chat", script())  # nothing left to do but close it
        assert resumed.step_count == 1
        copy = await ar.AgentSession.load_checkpoint(backend, "chat")
        assert await runtime.run_turn(copy, "Q2", script(FINAL)) == "finished"
    finally:
        await left_behind(lost)


async def test_a_resume_that_only_closes_a_run_reports_its_end(
    backend: ar.PersistenceBackend,
) -> None:
    # Its listeners, and the saved event log, got no RunFinished: the run never ended there.
    dying = FinalHangs(backend, "session:closing")
    gone = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=dying)  # type: ignore[arg-type]
    lost = asyncio.create_task(
        gone.run_agent(
            "a", "Q", script(add_step(1), FINAL), session=gone.create_session("a", "closing")
        )
    )
    await dying.reached.wait()  # its answer step is saved; it dies closing the run
    try:
        runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
        seen: list[ar.Event] = []
        runtime.events.on(seen.append)
        resumed = await runtime.resume("closing", script())  # nothing left to do but close it
        assert resumed.final_answer == "finished"
        assert seen[0] == ar.RunFinished("closing", "finished", 2, resumed.duration_ms)
        assert [type(e) for e in seen] == [ar.RunFinished, ar.CheckpointSaved]
        logged = await CheckpointStore(backend).events("closing")
        assert logged[-1]["type"] == "RunFinished" and logged[-1]["step_count"] == 2
        assert runtime._event_log == {}
        assert (await runtime.resume("closing", script())).final_answer == "finished"
        assert [type(e) for e in seen] == [ar.RunFinished, ar.CheckpointSaved]  # closed once
    finally:
        await left_behind(lost)


class HeldClaim(Delegating):
    """The backend, but a claim of `session:y` waits for `go` before it is written."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def save_new(self, key: str, value: bytes) -> bool:
        if key == "session:y:run:0":
            self.reached.set()
            await self.go.wait()
        return bool(await self.inner.save_new(key, value))


async def test_a_fork_refused_by_a_run_leaves_that_run_loadable(
    backend: ar.PersistenceBackend,
) -> None:
    # The refused fork deleted the meta record, which by then was the run's: the session
    # could no longer be loaded.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    source = runtime.create_session("a", "src")
    await runtime.run_agent("a", "SRC", script(add_step(1), FINAL), session=source)
    held_claim = HeldClaim(backend)
    forking = asyncio.create_task(CheckpointStore(held_claim).fork("src", 0, "y"))  # type: ignore[arg-type]
    await held_claim.reached.wait()  # the fork wrote its meta record, and waits to claim
    fresh = runtime.create_session("a", "y")
    with pytest.raises(ConnectionError):  # its step saved, then it stopped: to be resumed
        await runtime.run_agent("a", "NEW", fails_after(add_step(1)), session=fresh)
    held_claim.go.set()
    with pytest.raises(ar.PersistenceError, match="a run took it"):
        await forking
    resumed = await runtime.resume("y", script(FINAL))
    assert (resumed.prompt, resumed.step_count) == ("NEW", 2)


async def test_a_turn_on_a_copy_loaded_while_another_turn_runs_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # The copy held the running turn's first step, so the second turn claimed the step after
    # it: both turns ran, and wrote the same step and event keys.
    first = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    second = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = first.create_session("a", "chat")
    await first.run_turn(session, "Q1", script(FINAL))
    stepped, go = asyncio.Event(), asyncio.Event()
    replies = [add_step(1)]

    async def slow_after_one_step(prompt: str) -> str:
        if replies:
            return replies.pop(0)
        stepped.set()  # its step saved, the turn asks the model again
        await go.wait()
        return FINAL

    turn = asyncio.create_task(first.run_turn(session, "Q2", slow_after_one_step))
    await stepped.wait()
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert copy.step_count == 2  # the running turn's step with the first turn's
    as_loaded = copy.to_dict()
    with pytest.raises(ar.PersistenceError, match="that run has not ended") as info:
        await second.run_turn(copy, "Q3", script(FINAL))
    assert "runtime.resume" in str(info.value)
    assert copy.to_dict() == as_loaded  # refused before it started: its time included
    go.set()
    assert await turn == "finished"
    saved = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert saved == session
    assert [m["content"] for m in saved.messages if m["role"] == "user"] == ["Q1", "Q2"]
    # Once it ended, a copy loaded then runs its turn.
    later = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert await second.run_turn(later, "Q3", script(FINAL)) == "finished"


def slow_after(*replies: str) -> tuple[Any, asyncio.Event, asyncio.Event]:
    """A model giving `replies`, then FINAL once `go` is set (`stepped` set as it waits)."""
    stepped, go = asyncio.Event(), asyncio.Event()
    queue = list(replies)

    async def infer(prompt: str) -> str:
        if queue:
            return queue.pop(0)
        stepped.set()
        await go.wait()
        return FINAL

    return infer, stepped, go


async def test_a_turn_on_a_copy_loaded_while_a_failed_run_is_resumed_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # The failed run's end record named it, so its resume (under the same run id) was
    # taken for ended: the turn ran too, and both wrote step 4.
    first, second, third = (
        ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend) for _ in range(3)
    )
    session = first.create_session("a", "chat")
    await first.run_turn(session, "Q1", script(FINAL))
    with pytest.raises(ConnectionError):
        await first.run_turn(session, "Q2", fails_after(add_step(1)))
    model, stepped, go = slow_after(add_step(2))
    resuming = asyncio.create_task(second.resume("chat", model))
    await stepped.wait()
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert copy.step_count == 3  # the resume's step with the failed run's
    with pytest.raises(ar.PersistenceError, match="that run has not ended"):
        await third.run_turn(copy, "Q3", script(FINAL))
    go.set()
    resumed = await resuming
    assert await ar.AgentSession.load_checkpoint(backend, "chat") == resumed
    later = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert await third.run_turn(later, "Q3", script(FINAL)) == "finished"


async def test_a_turn_runs_on_a_loaded_fork(backend: ar.PersistenceBackend) -> None:
    # No worker runs a fork until it is resumed, but it wrote no end record: its turn was
    # refused as one on a copy of a run under way.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(add_step(1), FINAL))
    await runtime.run_turn(session, "Q2", script(FINAL))
    await runtime.fork("chat", 2, "forked")  # at the first turn's answer
    fork = await ar.AgentSession.load_checkpoint(backend, "forked")
    assert await runtime.run_turn(fork, "Q2b", script(FINAL)) == "finished"
    saved = await ar.AgentSession.load_checkpoint(backend, "forked")
    assert saved == fork and saved.step_count == 3


class PausedAtMeta(Delegating):
    """The backend, but the first `method` ("save" or "load") of `session:chat:meta` after
    `armed` is set waits for `go` (`reached` set as it waits)."""

    def __init__(self, inner: ar.PersistenceBackend, method: str) -> None:
        super().__init__(inner)
        self.method = method
        self.armed, self.go, self.reached = False, asyncio.Event(), asyncio.Event()

    async def _pause(self, method: str, key: str) -> None:
        if self.armed and method == self.method and key == "session:chat:meta":
            self.armed = False
            self.reached.set()
            await self.go.wait()

    async def save(self, key: str, value: bytes) -> None:
        await self._pause("save", key)
        await self.inner.save(key, value)

    async def load(self, key: str) -> bytes | None:
        await self._pause("load", key)
        return await self.inner.load(key)


async def test_a_restored_copy_is_refused_while_a_turn_claimed_the_stored_steps(
    backend: ar.PersistenceBackend,
) -> None:
    # A turn's claim lands before its meta record: a session restored from JSON with more
    # steps than the store saw the earlier run's meta record, wrote its base over the
    # claimed session and ran too.
    held = PausedAtMeta(backend, "save")
    runtime: Any = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=held)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(FINAL))
    moved = ar.AgentSession.from_json(session.to_json())  # run on without checkpoints
    await ar.AgentRuntime(tools=Effects().tools()).run_turn(moved, "Q", script(FINAL))
    held.armed = True
    turn = asyncio.create_task(runtime.run_turn(session, "Q2", script(FINAL)))
    await held.reached.wait()  # it holds the claim of step 1, its meta record not written
    other = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ar.PersistenceError, match="is being run by another run"):
        await other.run_turn(moved, "Q3", script(FINAL))
    held.go.set()
    assert await turn == "finished"
    assert await ar.AgentSession.load_checkpoint(backend, "chat") == session


async def test_a_corrupt_final_checkpoint_read_at_a_turn_start_is_a_persistence_error() -> None:
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(FINAL))
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    await backend.delete("session:chat:ended")  # as records of older versions
    await backend.save("session:chat", encode("session", None))
    with pytest.raises(ar.PersistenceError, match="final checkpoint holds no 'session'"):
        await CheckpointStore(backend).save_meta(copy, "react")


class SweepAtWrite(Delegating):
    """The backend, but the first `method` write of a key under `session:chat:<part>` (by
    default a run's claim; a prune's base record: `batch_save_if` of `base:`) first lets
    `sweep` run whole."""

    def __init__(
        self, inner: ar.PersistenceBackend, method: str = "save_new", part: str = "run:"
    ) -> None:
        super().__init__(inner)
        self.method, self.prefix = method, f"session:chat:{part}"
        self.sweep: Any = None

    async def _sweep_at(self, method: str, key: str) -> None:
        if self.sweep is not None and method == self.method and key.startswith(self.prefix):
            sweep, self.sweep = self.sweep, None
            assert await sweep() == ["chat"]

    async def save_new(self, key: str, value: bytes) -> bool:
        await self._sweep_at("save_new", key)
        return bool(await self.inner.save_new(key, value))

    async def save(self, key: str, value: bytes) -> None:
        await self._sweep_at("save", key)
        await self.inner.save(key, value)

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: dict[str, bytes]
    ) -> bool:
        for key in items:
            await self._sweep_at("batch_save_if", key)
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


async def test_a_turn_whose_session_a_sweep_deleted_before_its_claim_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # The sweep ran between the turn's count of the stored steps and its claim: the turn
    # wrote its steps over nothing, and the session no longer loaded.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(add_step(1), FINAL))
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    swept = SweepAtWrite(backend)
    swept.sweep = lambda: runtime.sweep(-1)
    other: Any = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=swept)
    with pytest.raises(ar.PersistenceError, match="is being deleted by a sweep"):
        await other.run_turn(copy, "Q2", script(FINAL))
    assert await backend.list_keys("session:chat:run:") == []  # its claim went
    # Run again, the turn saves the session anew: its earlier steps, then its own.
    assert await other.run_turn(copy, "Q2", script(FINAL)) == "finished"
    assert await ar.AgentSession.load_checkpoint(backend, "chat") == copy


async def test_a_turn_whose_session_was_swept_and_started_anew_before_its_claim_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # Between the turn's count and its claim, a sweep deleted the chat and another worker
    # started a new one under its id: the check after the claim saw that one's meta record
    # and passed, and both runs wrote the same step keys.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(add_step(1), FINAL))
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    anew = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    model, stepped, go = slow_after()
    started: list[asyncio.Task[str | None]] = []

    async def sweep_then_start_anew() -> list[str]:
        swept = await runtime.sweep(-1)
        fresh = anew.create_session("a", "chat")
        started.append(asyncio.create_task(anew.run_turn(fresh, "N1", model)))
        await stepped.wait()  # its meta record and claim written, it waits on its model
        return swept

    held = SweepAtWrite(backend)
    held.sweep = sweep_then_start_anew
    other: Any = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=held)
    with pytest.raises(ar.PersistenceError, match="is being deleted by a sweep"):
        await other.run_turn(copy, "Q2", script(FINAL))
    go.set()
    assert await started[0] == "finished"
    saved = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert [m["content"] for m in saved.messages if m["role"] == "user"] == ["N1"]
    assert [s.action for s in saved.steps] == ["FINAL_ANSWER"]


async def test_a_restored_copy_losing_to_another_writes_nothing_over_its_finished_turn(
    backend: ar.PersistenceBackend,
) -> None:
    # Two copies of a swept chat run their next turn: the slower one, refused at its claim,
    # had first written the earlier turns' final checkpoint over the finished turn's.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(add_step(1), FINAL))
    winner, loser = (ar.AgentSession.from_json(session.to_json()) for _ in range(2))
    assert await runtime.sweep(-1) == ["chat"]
    paused = PausedAtMeta(backend, "load")
    slow: Any = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=paused)
    paused.armed = True
    losing = asyncio.create_task(slow.run_turn(loser, "Q2-late", script(FINAL)))
    await paused.reached.wait()  # it read the store, and is about to write its earlier turns
    assert await runtime.run_turn(winner, "Q2", script(FINAL)) == "finished"
    paused.go.set()
    with pytest.raises(ar.PersistenceError, match="is being run by another run"):
        await losing
    assert await ar.AgentSession.load_checkpoint(backend, "chat") == winner


class PausedAtStepListing(Delegating):
    """The backend, but its first listing of a session's steps waits for `go` (`reached` set
    as it waits)."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.armed, self.go, self.reached = True, asyncio.Event(), asyncio.Event()

    async def list_keys(self, prefix: str = "") -> list[str]:
        if self.armed and prefix.endswith(":step:"):
            self.armed = False
            self.reached.set()
            await self.go.wait()
        return await self.inner.list_keys(prefix)


async def test_a_copy_loaded_while_turns_end_is_one_state_of_the_chat(
    backend: ar.PersistenceBackend,
) -> None:
    # The load read the final checkpoint, then the meta record, then the steps: turns that
    # ended between those reads gave a copy of one turn's history with later turns' steps,
    # and a turn on it was not refused: its final checkpoint dropped turns from the history.
    first = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = first.create_session("a", "chat")
    await first.run_turn(session, "Q1", script(FINAL))
    model, stepped, go = slow_after(add_step(1))
    turn = asyncio.create_task(first.run_turn(session, "Q2", model))
    await stepped.wait()
    paused = PausedAtStepListing(backend)
    loading = asyncio.create_task(ar.AgentSession.load_checkpoint(paused, "chat"))  # type: ignore[arg-type]
    await paused.reached.wait()  # the first turn's final checkpoint read, the second's meta
    go.set()
    await turn
    await first.run_turn(session, "Q3", script(FINAL))
    paused.go.set()
    copy = await loading
    assert copy == session
    second = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    assert await second.run_turn(copy, "Q4", script(FINAL)) == "finished"
    saved = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert [m["content"] for m in saved.messages if m["role"] == "user"] == ["Q1", "Q2", "Q3", "Q4"]


async def test_a_base_record_a_prune_wrote_as_its_session_was_swept_is_not_left(
    backend: ar.PersistenceBackend,
) -> None:
    # The prune wrote its base record over a session a sweep had just deleted: the base
    # stayed for good, and every later turn of a new chat under the id was refused.
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script(add_step(1), FINAL))
    held = SweepAtWrite(backend, "batch_save_if", "base:")
    held.sweep = lambda: runtime.sweep(-1)
    pruning: Any = ar.AgentRuntime(checkpoint_backend=held)
    # Its base is written only while the meta record it read is there: the prune starts
    # over, and finds nothing.
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved"):
        await pruning.prune("chat", 0)
    assert held.sweep is None  # the sweep ran
    assert await backend.list_keys("session:chat") == []
    # One written past that check (the sweep's deletes landing after it) goes at the next sweep.
    await backend.save("session:chat:base:2", b"left")
    assert await runtime.sweep(-1) == []
    assert await backend.list_keys("session:chat") == []
    fresh = runtime.create_session("a", "chat")
    await runtime.run_turn(fresh, "N1", script(FINAL))
    copy = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert await runtime.run_turn(copy, "N2", script(FINAL)) == "finished"


async def test_a_refused_run_logs_its_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    # A second warning said its end was not saved: "its run was refused at its start".
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=ar.InMemoryBackend())
    await runtime.run_agent("a", "old", script(FINAL), session=runtime.create_session("a", "u"))
    caplog.clear()
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.run_agent("a", "new", script(FINAL), session=runtime.create_session("a", "u"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("agent run u failed: PersistenceError")
    assert runtime.metrics.snapshot().checkpoint_errors == 0


async def test_an_id_whose_sweep_deleted_the_steps_first_says_what_it_has() -> None:
    # "already has checkpoints (0 steps saved, the session has 0)" read as a contradiction.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    await runtime.run_agent("a", "old", script(FINAL), session=runtime.create_session("a", "u"))
    for key in await backend.list_keys("session:u:"):  # a sweep deletes the steps first
        await backend.delete(key)
    with pytest.raises(ar.PersistenceError, match=r"\(a final checkpoint saved, the session has 0"):
        await runtime.run_agent("a", "new", script(FINAL), session=runtime.create_session("a", "u"))
