"""`delete_session`, on every backend: a session whose latest run ended (finished, failed,
timed out, cancelled) is deleted whole; one under way, or whose process ended before its
run's end was saved, is refused; a turn or resume starting while it is deleted is refused."""

from __future__ import annotations

import asyncio
import copy
import math
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import llm_agent_runtime as ar
import llm_agent_runtime.persistence.checkpoints as checkpoints
from llm_agent_runtime.persistence.checkpoints import CheckpointStore
from llm_agent_runtime.persistence.codec import decode, encode

from .test_backends import backend_fixture
from .test_durable import FINAL, Effects, add_step, fails_after, script
from .test_durable_concurrency import Delegating, failed_first_run, under_way
from .test_durable_exclusive import DiesAfter, interrupted
from .test_sweep_fork_edges import DiesAtDelete, PausedDelete

backend = backend_fixture()

ONE = "Thought: t\nAction: FINAL_ANSWER one"
TWO = "Thought: t\nAction: FINAL_ANSWER two"


def runtime_on(backend: ar.PersistenceBackend | None, **config: object) -> ar.AgentRuntime:
    return ar.AgentRuntime(
        ar.AgentConfig(**config),  # type: ignore[arg-type]
        tools=Effects().tools(),
        checkpoint_backend=backend,
    )


async def finished(backend: ar.PersistenceBackend) -> tuple[ar.AgentRuntime, ar.AgentSession]:
    """A runtime on `backend`, and its finished session `s`: two `add` steps and an answer."""
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    await runtime.run_agent("a", "Q", script(add_step(1), add_step(2), FINAL), session=session)
    return runtime, session


def an_hour_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint store's clock an hour on: claims and markers made before are old."""
    later = time.time() + 3600
    monkeypatch.setattr(checkpoints, "time", types.SimpleNamespace(time=lambda: later))


async def test_a_finished_session_is_deleted_whole_and_no_other(
    backend: ar.PersistenceBackend,
) -> None:
    runtime = runtime_on(backend)
    done = runtime.create_session("a", "s")
    await runtime.run_agent("a", "Q", script(add_step(1), add_step(2), FINAL), session=done)
    await runtime.prune("s", keep_last=1)  # a base record too
    other = runtime.create_session("a", "s:x")  # its keys start with `session:s`
    await runtime.run_agent("a", "Q", script(add_step(1), FINAL), session=other)
    kept = await backend.list_keys("session:s%3Ax")
    assert kept and await backend.list_keys("session:s:")

    assert await runtime.delete_session("s") is True

    assert await backend.list_keys("session:s:") == []
    assert await backend.load("session:s") is None
    assert await backend.list_keys("session:s%3Ax") == kept
    assert (await ar.AgentSession.load_checkpoint(backend, "s:x")).final_answer == "finished"
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved"):
        await ar.AgentSession.load_checkpoint(backend, "s")
    assert await runtime.delete_session("s") is False  # nothing left
    # The id is free: a new session runs under it.
    again = runtime.create_session("a", "s")
    await runtime.run_agent("a", "Q", script(ONE), session=again)
    assert (await ar.AgentSession.load_checkpoint(backend, "s")).final_answer == "one"


async def test_a_failed_run_ends_its_session_so_it_can_be_deleted(
    backend: ar.PersistenceBackend,
) -> None:
    # No API deleted a failed run's session: a sweep takes finished ones only.
    await interrupted(backend, "x")  # a step saved, then the model went down
    runtime = runtime_on(backend)
    assert await runtime.sweep(older_than=-1.0) == []
    assert await runtime.delete_session("x") is True
    assert await backend.list_keys("session:x") == []
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved"):
        await runtime.resume("x", script(FINAL))


async def test_a_run_failed_before_its_first_step_is_deleted(
    backend: ar.PersistenceBackend,
) -> None:
    runtime = await failed_first_run(backend, "x")
    assert await backend.list_keys("session:x")
    assert await runtime.delete_session("x") is True
    assert await backend.list_keys("session:x") == []


async def test_a_failed_turn_after_a_finished_one_is_deleted(
    backend: ar.PersistenceBackend,
) -> None:
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "Q1", script(ONE))
    with pytest.raises(ConnectionError):
        await runtime.run_turn(session, "Q2", fails_after(add_step(1)))
    assert await runtime.sweep(older_than=-1.0) == []  # its latest turn did not finish
    assert await runtime.delete_session("s") is True
    assert await backend.list_keys("session:s") == []


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_timed_out_or_cancelled_run_is_deleted(
    backend: ar.PersistenceBackend, how: str
) -> None:
    runtime = runtime_on(backend, loop_timeout_ms=50 if how == "timeout" else None)
    reached = asyncio.Event()

    async def stuck(prompt: str) -> str:
        if reached.is_set():
            await asyncio.sleep(3600)
        reached.set()
        return add_step(1)

    session = runtime.create_session("a", "s")
    running = asyncio.ensure_future(runtime.run_agent("a", "Q", stuck, session=session))
    if how == "cancel":
        await asyncio.wait_for(reached.wait(), 10)
        await asyncio.sleep(0.05)  # into the second model call
        running.cancel()
    with pytest.raises((asyncio.CancelledError, ar.AgentLoopError)):
        await running
    assert await runtime.delete_session("s") is True
    assert await backend.list_keys("session:s") == []


async def test_a_run_under_way_is_not_deleted(backend: ar.PersistenceBackend) -> None:
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    async with under_way(lambda model: runtime.run_agent("a", "Q", model, session=session)) as done:
        before = await backend.list_keys("session:s")
        with pytest.raises(ar.PersistenceError, match="its latest run has not ended"):
            await runtime.delete_session("s")
        assert await backend.list_keys("session:s") == before
    assert done[0].final_answer == "finished"
    assert await runtime.delete_session("s") is True


async def test_a_run_whose_process_ended_is_not_deleted_until_resumed(
    backend: ar.PersistenceBackend,
) -> None:
    # Its process died after a step: no end was saved, and `resume` finishes it.
    store = CheckpointStore(backend)
    session = ar.AgentSession(session_id="s", agent_id="a", prompt="Q")
    await store.save_meta(session, "react")
    await store.save_steps(
        "s", 1, [checkpoints.StepRecord(ar.Step(thought="t", action="add", observation="2"))]
    )
    runtime = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match=r"runtime\.resume finishes it"):
        await runtime.delete_session("s")
    assert (await runtime.resume("s", script(FINAL))).final_answer == "finished"
    assert await runtime.delete_session("s") is True


class PausedBatch(Delegating):
    """The backend, but its `at`-th batch deletion waits until `go` is set."""

    def __init__(self, inner: ar.PersistenceBackend, at: int = 1) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()
        self.at, self.batches = at, 0

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: list[str]) -> bool:
        self.batches += 1
        if self.batches == self.at:
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), 10)
        return bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))


@pytest.mark.parametrize("finished", [True, False])
async def test_a_turn_or_resume_starting_while_a_session_is_deleted_is_refused(
    backend: ar.PersistenceBackend, finished: bool
) -> None:
    # A failed session has no final checkpoint: the deletion's claim was taken for one a
    # sweep cut short left (its anchor gone), deleted, and the turn ran over what the
    # deletion went on deleting.
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    if finished:
        await runtime.run_turn(session, "Q1", script(add_step(1), ONE))
    else:
        with pytest.raises(ConnectionError):
            await runtime.run_turn(session, "Q1", fails_after(add_step(1)))
    paused = PausedBatch(backend)
    deleting = asyncio.ensure_future(CheckpointStore(paused).delete_session("s"))
    await asyncio.wait_for(paused.reached.wait(), 10)
    other = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match="is being deleted by a sweep or delete_sess"):
        await other.run_turn(copy.deepcopy(session), "Q2", script(TWO))
    if not finished:
        with pytest.raises(ar.PersistenceError, match="is being deleted, or was in part"):
            await other.resume("s", script(FINAL))
    paused.go.set()
    assert await deleting is True
    assert await backend.list_keys("session:s") == []
    # Once deleted, a turn of the copy in memory saves the session anew, whole.
    assert await other.run_turn(copy.deepcopy(session), "Q2", script(TWO)) == "two"
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert loaded.messages[-1]["content"] == "two"


async def test_a_deletion_cut_short_is_finished_by_the_next_one(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await interrupted(backend, "x")
    # Its process died once it had claimed the session.
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAfter(backend, 1)).delete_session("x")
    assert await backend.list_keys("session:x:run:")
    runtime = runtime_on(backend)
    # Its claim is young: the deletion may be going on.
    with pytest.raises(ar.PersistenceError, match="a run, resume or sweep took it"):
        await runtime.delete_session("x")
    # Once its claim is old, the next deletion takes it over.
    an_hour_later(monkeypatch)
    assert await runtime.delete_session("x") is True
    assert await backend.list_keys("session:x") == []


class DiesAtItsClaimsTakeover(Delegating):
    """The backend of a deletion whose process dies once it wrote the takeover key of its own
    claim (`<claim>:<digest>`), its last step: nothing it writes after lands."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.dead = False

    def _write(self) -> None:
        if self.dead:
            raise RuntimeError("the process died")

    async def save_new(self, key: str, value: bytes) -> bool:
        self._write()
        written = bool(await self.inner.save_new(key, value))
        self.dead = ":run:" in key and key.count(":") > 3
        return written

    async def delete(self, key: str) -> bool:
        self._write()
        return bool(await self.inner.delete(key))


async def test_a_deletion_that_died_taking_its_claim_back_is_finished_by_one_more(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next deletion deleted the dead one's takeover key only, and said nothing was
    # saved: the claim stayed until a call after it.
    await finished(backend)
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAtItsClaimsTakeover(backend)).delete_session("s")
    left = await backend.list_keys("session:s")
    assert len(left) == 2 and all(":run:" in key for key in left)  # the claim, its takeover
    an_hour_later(monkeypatch)
    assert await runtime_on(backend).delete_session("s") is False  # no record of it left
    assert await backend.list_keys("session:s") == []


class PausedAt(Delegating):
    """The backend, but the first delete or guarded write of each key of `keys` waits for
    its `go[key]` (after setting its `reached[key]`)."""

    def __init__(self, inner: ar.PersistenceBackend, *keys: str) -> None:
        super().__init__(inner)
        self.reached = {key: asyncio.Event() for key in keys}
        self.go = {key: asyncio.Event() for key in keys}
        self._waiting = set(keys)

    async def _pause(self, key: str) -> None:
        if key in self._waiting:
            self._waiting.discard(key)
            self.reached[key].set()
            await asyncio.wait_for(self.go[key].wait(), 10)

    async def delete(self, key: str) -> bool:
        await self._pause(key)
        return bool(await self.inner.delete(key))

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: dict[str, bytes]
    ) -> bool:
        await self._pause(guard_key)
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


async def test_two_calls_meeting_an_outlived_takeover_key_take_the_claim_over_once(
    backend: ar.PersistenceBackend,
) -> None:
    # Each deleted the outlived key, then wrote its own: the second's delete, of the key it
    # had read, deleted the first's. Both took the claim over, and the second deleted the
    # claim a run made once the first had deleted the stranded one.
    claim = "session:s:run:3"
    raw = checkpoints._encode("claim", {"sweep": "gone", "at": time.time() - 3600})
    takeover = f"{claim}:{checkpoints._digest(raw)}"
    await backend.save(claim, raw)
    await backend.save(takeover, checkpoints._encode("claim", {"at": time.time() - 3600}))
    first, second = PausedAt(backend, claim), PausedAt(backend, takeover, claim)
    second_call = asyncio.ensure_future(CheckpointStore(second)._drop_claim(claim, raw))
    await second.reached[takeover].wait()  # it read the outlived key
    first_call = asyncio.ensure_future(CheckpointStore(first)._drop_claim(claim, raw))
    await first.reached[claim].wait()  # it took the claim over
    second.go[takeover].set()
    reached_claim = asyncio.ensure_future(second.reached[claim].wait())
    await asyncio.wait([second_call, reached_claim], return_when=asyncio.FIRST_COMPLETED)
    reached_claim.cancel()
    first.go[claim].set()
    assert await first_call is True
    fresh = checkpoints._encode("claim", {"run": "fresh", "at": time.time()})
    assert await backend.save_new(claim, fresh) is True  # a run claims the step
    second.go[claim].set()
    assert await second_call is False
    assert await backend.load(claim) == fresh
    assert await backend.list_keys(f"{claim}:") == []


async def test_an_incomplete_fork_is_deleted_once_old(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await interrupted(backend, "src")
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAfter(backend, 2)).fork("src", 1, "f")  # marker and claim
    runtime = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match="a fork is being copied into it"):
        await runtime.delete_session("f")
    an_hour_later(monkeypatch)
    assert await runtime.delete_session("f") is True
    assert await backend.list_keys("session:f") == []
    assert await backend.list_keys("session:src")  # the source is kept


async def test_remembered_approvals_go_with_the_session_and_bad_calls() -> None:
    backend = ar.InMemoryBackend()
    asked: list[str] = []

    async def approve(
        session: ar.AgentSession, tool: str, arguments: object
    ) -> ar.ApprovalDecision:
        asked.append(tool)
        return ar.ApprovalDecision("approve", remember=True)

    runtime = ar.AgentRuntime(
        tools=Effects().tools(), checkpoint_backend=backend, approval_handler=approve
    )
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "Q1", script(add_step(1), ONE))
    await runtime.run_turn(session, "Q2", script(add_step(2), ONE))
    assert asked == ["add"]  # remembered for the session
    assert await runtime.delete_session("s") is True
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "Q1", script(add_step(1), ONE))
    assert asked == ["add", "add"]  # forgotten with it

    with pytest.raises(TypeError, match="session_id must be a str"):
        await runtime.delete_session(session)  # type: ignore[arg-type]
    with pytest.raises(ar.AgentRuntimeError, match="delete_session needs a checkpoint_backend"):
        await ar.AgentRuntime().delete_session("s")


async def test_sweep_with_failed_deletes_old_unfinished_sessions_too(
    backend: ar.PersistenceBackend,
) -> None:
    runtime = runtime_on(backend)
    await interrupted(backend, "failed")
    turns = runtime.create_session("a", "turns")
    await runtime.run_turn(turns, "Q1", script(ONE))
    with pytest.raises(ConnectionError):
        await runtime.run_turn(turns, "Q2", fails_after(add_step(1)))
    done = runtime.create_session("a", "done")
    await runtime.run_agent("a", "Q", script(add_step(1), FINAL), session=done)
    fork = await runtime.fork("done", 1)  # not resumed: ended as a failed run is
    # A run whose process ended before it saved its end: `resume` finishes it.
    store = CheckpointStore(backend)
    await store.save_meta(ar.AgentSession(session_id="died", agent_id="a", prompt="Q"), "react")
    store = CheckpointStore(backend)
    async with under_way(
        lambda model: runtime.run_agent("a", "Q", model, session=runtime.create_session("a", "on"))
    ):
        now = time.time()
        assert await store.sweep(3600.0, now=now, failed=True) == []  # none old enough
        assert await store.sweep(3600.0, now=now + 3601) == ["done"]  # finished ones only
        swept = await store.sweep(3600.0, now=now + 3601, failed=True)
        assert sorted(swept) == sorted(["failed", "turns", fork])
        for gone in ("failed", "turns", "done", fork):
            assert await backend.list_keys(f"session:{gone}") == []
        assert await backend.list_keys("session:died:")
        assert await backend.list_keys("session:on:")
    with pytest.raises(ar.PersistenceError, match="failed must be True or False"):
        await runtime.sweep(0.0, failed="yes")  # type: ignore[arg-type]


async def test_an_end_record_without_a_time_is_swept_as_old(
    backend: ar.PersistenceBackend,
) -> None:
    # Older versions wrote a failed run's end without the time it ended.
    await interrupted(backend, "x")
    raw = await backend.load("session:x:ended")
    assert raw is not None
    record = decode(raw, "session:x:ended", "ended")
    assert record["ended_at"] <= time.time()
    del record["ended_at"]
    await backend.save("session:x:ended", encode("ended", record))
    assert await CheckpointStore(backend).sweep(3600.0, failed=True) == ["x"]


async def test_what_a_failed_sessions_deletion_cut_short_left_is_swept_with_failed(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend, "x")
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAtDelete(backend, "session:x:ended")).delete_session("x")
    assert await backend.list_keys("session:x") == ["session:x:ended"]  # its anchor, last
    store = CheckpointStore(backend)
    assert await store.sweep(0.0) == []  # not a finished session's
    assert await store.sweep(0.0, failed=True) == ["x"]
    assert await backend.list_keys("session:x") == []


async def test_a_new_session_under_the_id_waits_for_a_long_deletion_to_end(
    backend: ar.PersistenceBackend,
) -> None:
    # The meta record went with the first batch: a failed session's id read as fresh while
    # steps were left, and a new session ran over them (the deletion then deleted its steps).
    store = CheckpointStore(backend)
    session = ar.AgentSession(session_id="s", agent_id="a", prompt="Q")
    run = await store.save_meta(session, "react")
    steps = checkpoints._SWEEP_BATCH + 20
    records = [
        checkpoints.StepRecord(ar.Step(thought="t", action="add", observation=str(n)))
        for n in range(steps)
    ]
    await store.save_steps("s", 1, records)
    await store.save_run_end(session, run)
    paused = PausedBatch(backend, at=2)
    deleting = asyncio.ensure_future(CheckpointStore(paused).delete_session("s"))
    await asyncio.wait_for(paused.reached.wait(), 10)
    runtime = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.run_agent("a", "Q", script(ONE), session=runtime.create_session("a", "s"))
    paused.go.set()
    assert await deleting is True
    assert await backend.list_keys("session:s") == []
    fresh = await runtime.run_agent("a", "Q", script(ONE), session=runtime.create_session("a", "s"))
    assert (await ar.AgentSession.load_checkpoint(backend, "s")) == fresh


async def test_a_prune_as_the_session_is_deleted_leaves_no_base_behind(
    backend: ar.PersistenceBackend,
) -> None:
    # The prune's base landed after the deletion listed the keys: it was left, and a new
    # session under the id loaded its steps as its own, every later turn refused.
    runtime, _ = await finished(backend)
    paused = PausedBatch(backend)
    deleting = asyncio.ensure_future(CheckpointStore(paused).delete_session("s"))
    await asyncio.wait_for(paused.reached.wait(), 10)
    with pytest.raises(
        ar.PersistenceError, match=r"is being deleted \(a sweep or delete_session\): not pruned"
    ):
        await runtime.prune("s", keep_last=1)
    paused.go.set()
    assert await deleting is True
    assert await backend.list_keys("session:s") == []


@pytest.mark.parametrize("finished", [True, False])
async def test_a_damaged_meta_record_stops_no_sweep(
    backend: ar.PersistenceBackend, finished: bool
) -> None:
    # A finished session's made the whole sweep fail at the deletion's mark, and a failed
    # one's at the check of its end: the sessions after it stayed.
    for session_id in ("a", "bad", "z"):
        if finished:
            await runtime_on(backend).run_agent(
                "a", "Q", script(ONE), session=ar.AgentRuntime().create_session("a", session_id)
            )
        else:
            await interrupted(backend, session_id)
    await backend.save("session:bad:meta", encode("meta", ["not", "a", "meta", "record"]))
    store = CheckpointStore(backend)
    if finished:  # its final checkpoint is whole: it is deleted, as before the mark
        assert sorted(await store.sweep(0.0, now=time.time() + 1)) == ["a", "bad", "z"]
        return
    with pytest.raises(ar.PersistenceError, match=r"sweep deleted 2 session\(s\) and left 1"):
        await store.sweep(0.0, now=time.time() + 1, failed=True)
    assert await backend.list_keys("session:a") == []
    assert await backend.list_keys("session:z") == []
    with pytest.raises(ar.PersistenceError, match="meta record needs") as info:
        await store.delete_session("bad")
    assert info.value.key == "session:bad:meta"


async def test_a_session_with_damaged_records_is_deleted_by_force_and_no_other(
    backend: ar.PersistenceBackend,
) -> None:
    # It could be neither deleted nor swept: its keys had to be deleted by hand, where a
    # listing of "session:bad" takes "session:bad2"'s too.
    async def finished(session_id: str) -> None:
        session = ar.AgentRuntime().create_session("a", session_id)
        await runtime_on(backend).run_agent("a", "Q", script(add_step(1), FINAL), session=session)

    await finished("bad")
    await backend.save("session:bad:meta", b"garbage")
    await backend.save("session:bad:notes", b"the application's own")  # no record of ours
    runtime = runtime_on(backend)
    advice = r"delete_session\(session_id, force=True\) deletes such a session unread"
    with pytest.raises(ar.PersistenceError, match=rf"records are damaged.*\({advice}\)") as info:
        await runtime.delete_session("bad")
    assert info.value.key == "session:bad:meta"
    with pytest.raises(ar.PersistenceError, match=rf"each logged \({advice}\)"):
        await runtime.sweep(0.0)
    await finished("bad2")  # once swept: a neighbour by its key's prefix
    with pytest.raises(ar.PersistenceError, match="force must be True or False, got 1"):
        await runtime.delete_session("bad", force=1)  # type: ignore[arg-type]
    assert await runtime.delete_session("bad", force=True) is True
    assert await backend.list_keys("session:bad:") == ["session:bad:notes"]
    assert await backend.load("session:bad") is None
    assert await runtime.delete_session("bad", force=True) is False  # nothing left of it
    assert (await ar.AgentSession.load_checkpoint(backend, "bad2")).final_answer == "finished"
    assert await runtime.delete_session("bad2") is True  # still whole


async def test_a_record_of_a_newer_version_is_not_called_damaged(
    backend: ar.PersistenceBackend,
) -> None:
    # Its deletion and the sweep advised deleting it unread, as a damaged one.
    session = ar.AgentRuntime().create_session("a", "new")
    await runtime_on(backend).run_agent("a", "Q", script(FINAL), session=session)
    raw = await backend.load("session:new:meta")
    written = b"llm-agent-runtime/1 "
    assert raw is not None and raw.startswith(written)
    await backend.save("session:new:meta", b"llm-agent-runtime/2 " + raw[len(written) :])
    runtime = runtime_on(backend)
    for delete in (lambda: runtime.delete_session("new"), lambda: runtime.sweep(0.0)):
        with pytest.raises(ar.PersistenceError, match="newer than this library") as info:
            await delete()
        assert "force=True" not in str(info.value)
    assert await backend.load("session:new") is not None


async def test_a_forced_deletion_does_not_read_the_final_checkpoint(tmp_path: Path) -> None:
    # A file backend checks a record file's header as it loads it: a final checkpoint's
    # file cut short failed the forced deletion, which deleted nothing.
    backend = ar.FileBackend(tmp_path)
    session = ar.AgentRuntime().create_session("a", "x")
    await runtime_on(backend).run_agent("a", "Q", script(add_step(1), FINAL), session=session)
    (final,) = [path for path in tmp_path.rglob("*") if path.name.startswith("session_x-")]
    final.write_bytes(final.read_bytes()[:10])
    with pytest.raises(ar.PersistenceError, match="truncated record file"):
        await backend.load("session:x")
    assert await runtime_on(backend).delete_session("x", force=True) is True
    assert await backend.list_keys("session:x") == []


async def test_a_damaged_claim_of_a_finished_session_stops_no_sweep(
    backend: ar.PersistenceBackend,
) -> None:
    # A later turn's claim that does not decode made the whole sweep fail there, at every
    # sweep: the sessions after it stayed.
    for session_id in ("a", "bad", "z"):
        session = ar.AgentRuntime().create_session("a", session_id)
        await runtime_on(backend).run_agent("a", "Q", script(ONE), session=session)
    claim = encode("meta", {"agent_id": "a", "prompt": "Q", "mode": "react", "run": "r"})
    await backend.save("session:bad:run:1", claim[:-2] + b"XX")  # its checksum fails
    store = CheckpointStore(backend)
    with pytest.raises(ar.PersistenceError, match=r"sweep deleted 2 session\(s\) and left 1"):
        await store.sweep(0.0, now=time.time() + 1)
    assert await backend.list_keys("session:a") == []
    assert await backend.list_keys("session:z") == []


async def test_a_final_checkpoint_whose_time_is_nan_is_never_old(
    backend: ar.PersistenceBackend,
) -> None:
    session = ar.AgentRuntime().create_session("a", "s")
    await runtime_on(backend).run_agent("a", "Q", script(ONE), session=session)
    final = decode(await backend.load("session:s"), "session:s", "session")
    final["finished_at"] = math.nan  # a record another writer made
    await backend.save("session:s", encode("session", final))
    store = CheckpointStore(backend)
    assert await store.sweep(math.inf) == []
    assert await store.sweep(0.0, now=time.time() + 1) == []
    assert (await ar.AgentSession.load_checkpoint(backend, "s")).final_answer == "one"


class PausedGuardedWrite(Delegating):
    """The backend, but the first `batch_save_if` whose items `waits` picks waits until `go`
    is set: a write in flight (a slow link, a paused process)."""

    def __init__(
        self, inner: ar.PersistenceBackend, waits: Callable[[dict[str, bytes]], bool]
    ) -> None:
        super().__init__(inner)
        self.waits = waits
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: dict[str, bytes]
    ) -> bool:
        if self.waits(items) and not self.reached.is_set():
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), 10)
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))


def a_base(items: dict[str, bytes]) -> bool:
    """A prune's write of its base record."""
    return any(":base:" in key for key in items)


def a_mark(items: dict[str, bytes]) -> bool:
    """A deletion's write of its mark on the meta record."""
    return any(key.endswith(":meta") and b'"deleting"' in value for key, value in items.items())


async def test_a_prune_in_flight_never_lands_in_a_new_session_under_the_id(
    backend: ar.PersistenceBackend,
) -> None:
    # The old session's base landed once a new session ran under the id: the new session
    # then loaded the old steps as its own, and the prune deleted its deltas.
    runtime = runtime_on(backend)
    old = runtime.create_session("a", "s")
    await runtime.run_agent("a", "Q", script(add_step(1), add_step(2), FINAL), session=old)
    paused = PausedGuardedWrite(backend, a_base)
    pruning = asyncio.ensure_future(CheckpointStore(paused).prune("s", keep_last=1))
    await asyncio.wait_for(paused.reached.wait(), 10)
    assert await runtime.delete_session("s") is True
    steps = (add_step(7), add_step(8), add_step(9), FINAL)
    new = await runtime.run_agent(
        "a", "Q", script(*steps), session=runtime.create_session("a", "s")
    )
    paused.go.set()
    assert await pruning == 3  # started over, on the new session
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert loaded == new
    assert [s.observation for s in loaded.steps[:3]] == ["8", "9", "10"]


async def test_a_prune_that_loaded_before_the_last_turn_does_not_outlive_a_deletion(
    backend: ar.PersistenceBackend,
) -> None:
    # Its base landed once the deletion had listed the keys: the deletion's claim was on
    # the step after the last turn, not the one the prune checked, and the base was left.
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "Q1", script(add_step(1), ONE))
    paused = PausedGuardedWrite(backend, a_base)
    pruning = asyncio.ensure_future(CheckpointStore(paused).prune("s", keep_last=0))
    await asyncio.wait_for(paused.reached.wait(), 10)
    await runtime.run_turn(session, "Q2", script(add_step(2), TWO))
    deleting_paused = PausedBatch(backend)
    deleting = asyncio.ensure_future(CheckpointStore(deleting_paused).delete_session("s"))
    await asyncio.wait_for(deleting_paused.reached.wait(), 10)  # claimed, marked, listed
    paused.go.set()
    with pytest.raises(ar.PersistenceError, match="is being deleted"):
        await pruning
    deleting_paused.go.set()
    assert await deleting is True
    assert await backend.list_keys("session:s") == []


async def test_a_run_refused_while_its_id_is_deleted_leaves_no_meta_record(
    backend: ar.PersistenceBackend,
) -> None:
    # A session whose run failed before its first step: once the deletion had deleted its
    # meta record, a new run under the id wrote its own, was refused, and left it; then
    # `delete_session` refused the id for good and `resume` ran the refused run.
    runtime = await failed_first_run(backend, "s")
    paused = PausedDelete(backend, "session:s:ended")
    deleting = asyncio.ensure_future(CheckpointStore(paused).delete_session("s"))
    await asyncio.wait_for(paused.reached.wait(), 10)  # all but its anchor and claim gone
    with pytest.raises(ar.PersistenceError, match="is being deleted"):
        await runtime.run_agent("a", "Q1", script(ONE), session=runtime.create_session("a", "s"))
    paused.go.set()
    assert await deleting is True
    assert await backend.list_keys("session:s") == []


class WithoutConditionalWrites(Delegating):
    """The backend without `batch_save_if` (a backend written before it): its base record's
    first `save` waits until `go` is set."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> object:
        if name == "batch_save_if":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def save(self, key: str, value: bytes) -> None:
        if ":base:" in key and not self.reached.is_set():
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), 10)
        await self.inner.save(key, value)


async def test_a_prune_without_conditional_writes_takes_a_late_base_back(
    backend: ar.PersistenceBackend,
) -> None:
    runtime, _ = await finished(backend)
    slow = WithoutConditionalWrites(backend)
    pruning = asyncio.ensure_future(CheckpointStore(slow).prune("s", keep_last=0))
    await asyncio.wait_for(slow.reached.wait(), 10)
    assert await runtime.delete_session("s") is True
    slow.go.set()
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved"):
        await pruning
    assert await backend.list_keys("session:s") == []


async def test_a_deletion_never_marks_a_later_runs_meta_record(
    backend: ar.PersistenceBackend,
) -> None:
    # The mark, the meta record found with `deleting` added, landed over the record of a
    # turn run meanwhile from a copy saved anew (under a claim of its own): the session read
    # as the old run's, unfinished, and no turn, prune, sweep or deletion took it again.
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    await runtime.run_agent("a", "Q-old", script(add_step(1), FINAL), session=session)
    copy = await ar.AgentSession.load_checkpoint(backend, "s")
    await runtime_on(None).run_turn(copy, "Q-mem", script(ONE))  # in memory only
    paused = PausedGuardedWrite(backend, a_mark)
    deleting = asyncio.ensure_future(CheckpointStore(paused).delete_session("s"))
    await asyncio.wait_for(paused.reached.wait(), 10)
    assert await runtime.run_turn(copy, "Q-copy", script(TWO)) == "two"
    paused.go.set()
    with pytest.raises(ar.PersistenceError, match="a run, resume or sweep took it"):
        await deleting
    state = await CheckpointStore(backend).load("s")
    assert not state.interrupted_turn and state.prompt == "Q-copy"
    assert await runtime.run_turn(copy, "Q-next", script(ONE)) == "one"
    assert await runtime.delete_session("s") is True


class ListingFails(Delegating):
    """The backend, but its second listing of a session's keys (a deletion's, once it has
    marked the meta record) fails."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.listings = 0

    async def list_keys(self, prefix: str = "") -> list[str]:
        if prefix == "session:s:":
            self.listings += 1
            if self.listings == 2:
                raise OSError("the listing failed")
        return list(await self.inner.list_keys(prefix))


async def test_a_deletion_that_gives_up_before_deleting_takes_its_mark_back(
    backend: ar.PersistenceBackend,
) -> None:
    runtime, session = await finished(backend)
    failing = ListingFails(backend)
    with pytest.raises(ar.PersistenceError, match="the listing failed"):
        await CheckpointStore(failing).delete_session("s")
    meta = decode(await backend.load("session:s:meta") or b"", "session:s:meta", "meta")
    assert "deleting" not in meta
    assert await runtime.prune("s", keep_last=1) == 2
    assert await ar.AgentSession.load_checkpoint(backend, "s") == session
    assert await runtime.delete_session("s") is True
    assert await backend.list_keys("session:s") == []


@pytest.mark.parametrize("conditional", [True, False])
async def test_the_mark_of_a_dead_deletion_stops_no_prune(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch, conditional: bool
) -> None:
    # Without `batch_save_if`, the prune took the mark for a deletion's and its base back
    # at each attempt, then said the session "changed each time".
    runtime, session = await finished(backend)
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAfter(backend, 2)).delete_session("s")  # claimed, marked
    with pytest.raises(ar.PersistenceError, match="is being deleted"):
        await runtime.prune("s", keep_last=1)  # its claim is young: it may be deleting
    an_hour_later(monkeypatch)
    pruning = backend
    if not conditional:
        pruning = WithoutConditionalWrites(backend)  # type: ignore[assignment]
        pruning.go.set()  # type: ignore[attr-defined]
    assert await CheckpointStore(pruning).prune("s", keep_last=1) == 2
    assert await ar.AgentSession.load_checkpoint(backend, "s") == session


async def test_a_resume_takes_over_the_claim_of_a_deletion_cut_short(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It took the claim for another run's and was refused for good ("being run by another
    # run"), though that deletion's process had ended.
    await interrupted(backend, "x")
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAfter(backend, 1)).delete_session("x")  # claimed, then died
    runtime = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match="is being deleted"):
        await runtime.resume("x", script(FINAL))
    an_hour_later(monkeypatch)
    assert (await runtime.resume("x", script(FINAL))).final_answer == "finished"


class DiesAfterBatch(Delegating):
    """The backend of a process that dies once its first guarded batch deletion landed:
    nothing it writes or deletes after lands."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.dead = False

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)
        if name not in ("delete", "save", "save_new", "batch_save", "batch_save_if"):
            return method

        async def refused(*args: object) -> object:
            if self.dead:
                raise RuntimeError("the process died")
            return await method(*args)

        return refused

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: list[str]) -> bool:
        if self.dead:
            raise RuntimeError("the process died")
        await self.inner.batch_delete_if(guard_key, guard_value, keys)
        self.dead = True
        raise RuntimeError("the process died")


async def cut_after_first_batch(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch, session_id: str
) -> None:
    """`delete_session` of `session_id`, its process dead once it deleted 4 keys (a batch
    of 4: its journal and events go first); then its claim is left a minute behind."""
    with monkeypatch.context() as small:
        small.setattr(checkpoints, "_SWEEP_BATCH", 4)
        with pytest.raises(ar.PersistenceError, match="died"):
            await CheckpointStore(DiesAfterBatch(backend)).delete_session(session_id)
    an_hour_later(monkeypatch)


async def test_a_session_a_deletion_began_to_delete_is_not_resumed(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resume took over the claim of the deletion, whose process had died, and ran on
    # what was left: without the journal, an at-most-once call ran again.
    await interrupted(backend, "x")
    await cut_after_first_batch(backend, monkeypatch, "x")
    runtime = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match="it is not resumed"):
        await runtime.resume("x", script(FINAL))
    assert await runtime.delete_session("x") is True  # the next deletion finishes it
    assert await backend.list_keys("session:x") == []


async def test_a_failed_turns_session_a_deletion_began_to_delete_is_deleted_later(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end record went with the first batch, before the meta record: what was left read
    # as a turn that never ended, which no deletion or sweep took, and a resume ran it.
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "Q1", script(add_step(1), ONE))
    with pytest.raises(ConnectionError):
        await runtime.run_turn(session, "Q2", fails_after(add_step(2)))
    await cut_after_first_batch(backend, monkeypatch, "s")
    assert await runtime.delete_session("s") is True
    assert await backend.list_keys("session:s") == []


class SlowPrune(Delegating):
    """The backend without `batch_save_if`, whose prune's base write waits for `write`, and
    whose read of the meta record after it waits for `check`."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.write, self.check = asyncio.Event(), asyncio.Event()
        self.writing, self.checking = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> object:
        if name == "batch_save_if":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def save(self, key: str, value: bytes) -> None:
        if ":base:" in key:
            self.writing.set()
            await asyncio.wait_for(self.write.wait(), 10)
        await self.inner.save(key, value)

    async def load(self, key: str) -> bytes | None:
        if key.endswith(":meta") and self.write.is_set():
            self.checking.set()
            await asyncio.wait_for(self.check.wait(), 10)
        return await self.inner.load(key)


async def test_a_prune_without_conditional_writes_keeps_a_base_a_turn_did_not_change(
    backend: ar.PersistenceBackend,
) -> None:
    # It took its base back once a turn had rewritten the meta record: the same bytes as
    # the base of another prune, which had deleted the deltas it held. Steps were lost.
    runtime = runtime_on(backend)
    session = runtime.create_session("a", "s")
    await runtime.run_turn(session, "Q1", script(add_step(1), add_step(2), ONE))
    slow = SlowPrune(backend)
    late = asyncio.ensure_future(CheckpointStore(slow).prune("s", keep_last=0))
    await asyncio.wait_for(slow.writing.wait(), 10)
    assert await runtime.prune("s", keep_last=0) == 3  # the same base, its deltas deleted
    slow.write.set()
    await asyncio.wait_for(slow.checking.wait(), 10)
    assert await runtime.run_turn(session, "Q2", script(TWO)) == "two"  # rewrites the meta
    slow.check.set()
    assert await late == 3
    assert await ar.AgentSession.load_checkpoint(backend, "s") == session


class SlowClaim(Delegating):
    """The backend, but a resume's claim of its step (`:run:<n>`) waits for `go`."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()

    async def save_new(self, key: str, value: bytes) -> bool:
        if ":run:" in key and not self.reached.is_set():
            self.reached.set()
            await asyncio.wait_for(self.go.wait(), 10)
        return bool(await self.inner.save_new(key, value))


async def test_a_resume_whose_session_was_deleted_before_its_claim_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    # It counted the steps, the deletion ran whole, then it claimed the free step and ran
    # over nothing: the records it wrote did not load.
    await interrupted(backend, "x")
    slow = SlowClaim(backend)
    resuming = asyncio.ensure_future(
        ar.AgentRuntime(checkpoint_backend=slow).resume("x", script(FINAL))
    )
    await asyncio.wait_for(slow.reached.wait(), 10)
    assert await runtime_on(backend).delete_session("x") is True
    slow.go.set()
    with pytest.raises(ar.PersistenceError, match="was deleted as it was resumed"):
        await resuming
    assert await backend.list_keys("session:x") == []


async def test_a_failed_run_whose_steps_a_deletion_deleted_is_not_resumed(
    backend: ar.PersistenceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut short before its last batch (the meta record alone), the deletion left the meta
    # record and the end record: the resume loaded no step, claimed the free first step,
    # and ran the whole run again, its journal gone.
    await interrupted(backend, "x")
    keys = await backend.list_keys("session:x:")
    monkeypatch.setattr(checkpoints, "_SWEEP_BATCH", len(keys) - 2)
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAfterBatch(backend)).delete_session("x")
    left = await backend.list_keys("session:x:")
    assert "session:x:meta" in left and not any(":step:" in k for k in left)
    an_hour_later(monkeypatch)
    runtime = runtime_on(backend)
    with pytest.raises(ar.PersistenceError, match="it is not resumed"):
        await runtime.resume("x", script(FINAL))
    assert await runtime.delete_session("x") is True
    assert await backend.list_keys("session:x") == []


class PausedSecondListing(Delegating):
    """The backend, but its second listing of session `x`'s keys (a deletion's, once it has
    marked the meta record) waits until `go` is set."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.go, self.reached = asyncio.Event(), asyncio.Event()
        self.listings = 0

    async def list_keys(self, prefix: str = "") -> list[str]:
        if prefix == "session:x:":
            self.listings += 1
            if self.listings == 2:
                self.reached.set()
                await asyncio.wait_for(self.go.wait(), 10)
        return list(await self.inner.list_keys(prefix))


async def test_a_prune_without_conditional_writes_keeps_another_prunes_base(
    backend: ar.PersistenceBackend,
) -> None:
    # A deletion marked the meta record as it wrote the same base as another prune, which
    # had deleted the step it held: it took the base back, and the session lost that step.
    await interrupted(backend, "x")
    slow = SlowPrune(backend)
    late = asyncio.ensure_future(CheckpointStore(slow).prune("x", keep_last=0))
    await asyncio.wait_for(slow.writing.wait(), 10)
    assert await CheckpointStore(backend).prune("x", keep_last=0) == 1  # the same base
    paused = PausedSecondListing(backend)
    deleting = asyncio.ensure_future(CheckpointStore(paused).delete_session("x"))
    await asyncio.wait_for(paused.reached.wait(), 10)  # claimed and marked
    slow.write.set()
    await asyncio.wait_for(slow.checking.wait(), 10)
    slow.check.set()
    assert await late == 1  # kept: the deletion lists it, and deletes it with the rest
    paused.go.set()
    assert await deleting is True
    assert await backend.list_keys("session:x") == []
