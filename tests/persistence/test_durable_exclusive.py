"""Durable sessions: one worker resumes a session at once, a sweep never deletes a session
whose next turn starts, a fork cut half way is never resumed as if whole, a restored session
keeps its earlier turns as they were."""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence import checkpoints
from llm_agent_runtime.persistence.checkpoints import CheckpointStore, stored_form
from llm_agent_runtime.persistence.codec import decode, encode

from .test_durable import FINAL, Effects, add_step, fails_after, script
from .test_durable_concurrency import Delegating, backend, under_way

__all__ = ["backend"]  # the fixture, on every backend

CHARGE = 'Thought: pay\nAction: charge {"amount": 100}'
SEND = 'Thought: tell\nAction: send {"text": "hi"}'


async def interrupted(backend: ar.PersistenceBackend, session_id: str = "x") -> None:
    """Session `session_id`, its run interrupted after its first step (its model down)."""
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ConnectionError):
        session = runtime.create_session("a", session_id)
        await runtime.run_agent("a", "Q0", fails_after(add_step(1)), session=session)


async def test_two_workers_resuming_one_session_at_once_run_one(
    backend: ar.PersistenceBackend,
) -> None:
    # Every resumer took the run's claim for its own (all name the same run): both ran, and
    # their calls went out under one idempotency key.
    await interrupted(backend)
    first, second = (Effects(), Effects())
    workers = [
        ar.AgentRuntime(tools=e.tools(), checkpoint_backend=backend) for e in (first, second)
    ]
    async with under_way(lambda model: workers[0].resume("x", model)) as outcome:
        with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
            await workers[1].resume("x", script(CHARGE, FINAL))
    assert second.calls == []
    done = outcome[0]
    assert [s.action for s in done.steps] == ["add", "FINAL_ANSWER"]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    # The resume ended: its claim went with it, and a resume now returns the finished session.
    assert await backend.list_keys("session:x:resume:") == []
    assert await workers[1].resume("x", script()) == done


async def test_a_resume_loaded_before_another_resume_ended_is_refused(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    stale = await CheckpointStore(backend).load("x")  # read by a worker, which then paused
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    done = await runtime.resume("x", script(FINAL))
    with pytest.raises(ar.PersistenceError, match="resumed by another worker since it was"):
        await CheckpointStore(backend).claim_resumed(stale)
    assert await backend.list_keys("session:x:resume:") == []
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done


async def test_a_resume_whose_process_ended_is_released_then_resumed(
    backend: ar.PersistenceBackend,
) -> None:
    # A claim of this very process is taken for a resume under way: it stays until
    # release_resume.
    await interrupted(backend)
    dead = CheckpointStore(backend)  # a resumer's store: it claimed, then its process died
    await dead.claim_resumed(await dead.load("x"))
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ar.PersistenceError, match="release_resume"):
        await runtime.resume("x", script(FINAL))
    assert await backend.list_keys("session:x:fence:") == ["session:x:fence:0"]
    assert await runtime.release_resume("x")
    assert await backend.list_keys("session:x:fence:") == []  # the claim's fence goes too
    done = await runtime.resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)
    assert not await runtime.release_resume("x")


def ended_pid() -> int:
    """The process id of a process that ran and ended (reaped: no zombie)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def running_pid() -> Iterator[int]:
    """The process id of a process that runs until the test ends."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


async def resume_left(backend: ar.PersistenceBackend, session_id: str = "x", **holder: Any) -> None:
    """A resume claim of session `session_id` left behind, its record's `host`, `pid` and
    `started` set to `holder`'s (a field given None is left out, as older versions wrote no
    such field)."""
    store = CheckpointStore(backend)
    await store.claim_resumed(await store.load(session_id))
    [key] = await backend.list_keys(f"session:{session_id}:resume:")
    claim = {**decode(await backend.load(key) or b"", key), **holder}
    claim = {name: value for name, value in claim.items() if value is not None}
    await backend.save(key, encode("claim", claim))


async def test_a_resume_whose_process_ended_on_this_host_is_taken_over(
    backend: ar.PersistenceBackend,
) -> None:
    # Every later resume was refused until an operator called release_resume.
    await interrupted(backend)
    await resume_left(backend, host=socket.gethostname(), pid=ended_pid())
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    done = await runtime.resume("x", script(CHARGE, FINAL))
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert len(effects.calls) == 1
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []  # the takeover's key went too
    assert not await runtime.release_resume("x")


async def test_a_resume_that_took_over_and_failed_leaves_no_claim(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    await resume_left(backend, host=socket.gethostname(), pid=ended_pid())
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ConnectionError):
        await runtime.resume("x", fails_after())
    assert await backend.list_keys("session:x:resume") == []
    done = await runtime.resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)


async def test_a_resume_whose_process_runs_on_this_host_is_refused(
    backend: ar.PersistenceBackend, running_pid: int
) -> None:
    await interrupted(backend)
    started = checkpoints._process_start(running_pid)  # None (not written) off Linux
    await resume_left(backend, host=socket.gethostname(), pid=running_pid, started=started)
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await runtime.resume("x", script(CHARGE, FINAL))
    assert effects.calls == []
    assert len(await backend.list_keys("session:x:resume")) == 1


@pytest.mark.parametrize(
    "holder",
    [{"host": "another-host"}, {"host": None, "pid": None}],
    ids=["another-host", "older-version"],
)
async def test_a_resume_of_another_host_or_an_older_version_waits_for_release_resume(
    backend: ar.PersistenceBackend, holder: dict[str, Any]
) -> None:
    # Whether its process runs cannot be told from here.
    await interrupted(backend)
    await resume_left(backend, **{"pid": ended_pid(), **holder})
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ar.PersistenceError, match="release_resume"):
        await runtime.resume("x", script(FINAL))
    assert await backend.list_keys("session:x:fence:") == ["session:x:fence:0"]
    assert await runtime.release_resume("x")
    assert await backend.list_keys("session:x:fence:") == []  # the claim's fence goes too
    done = await runtime.resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)
    assert await backend.list_keys("session:x:resume") == []


class TakeOverTogether(Delegating):
    """The backend, but a takeover's key is written only once two workers are writing it:
    both found the same ended resumer's claim."""

    def __init__(self, inner: ar.PersistenceBackend) -> None:
        super().__init__(inner)
        self.writing, self.both = 0, asyncio.Event()

    async def save_new(self, key: str, value: bytes) -> bool:
        if key.startswith("session:x:resume:") and key.count(":") == 4:  # :<n>:<nonce>
            self.writing += 1
            if self.writing == 2:
                self.both.set()
            await asyncio.wait_for(self.both.wait(), 10)
        return bool(await self.inner.save_new(key, value))


async def test_two_workers_taking_over_one_ended_resume_at_once_run_one(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    await resume_left(backend, host=socket.gethostname(), pid=ended_pid())
    together = TakeOverTogether(backend)
    effects = [Effects(), Effects()]
    workers = [ar.AgentRuntime(tools=e.tools(), checkpoint_backend=together) for e in effects]
    outcomes = await asyncio.gather(
        *(w.resume("x", script(CHARGE, FINAL)) for w in workers), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, ar.PersistenceError)]
    [done] = [o for o in outcomes if isinstance(o, ar.AgentSession)]
    assert len(refused) == 1 and "is being resumed by another worker" in str(refused[0])
    assert sorted(len(e.calls) for e in effects) == [0, 1]
    assert [s.action for s in done.steps] == ["add", "charge", "FINAL_ANSWER"]
    assert await ar.AgentSession.load_checkpoint(backend, "x") == done
    assert await backend.list_keys("session:x:resume") == []


class RivalIntent(Delegating):
    """The backend, but another worker journals its own call (`text`) right before this
    one's intent of a tool call is written: it read the journal, then the other wrote."""

    def __init__(self, inner: ar.PersistenceBackend, text: str = "other") -> None:
        super().__init__(inner)
        self.text = text

    async def save_new(self, key: str, value: bytes) -> bool:
        if ":call:" in key:
            meta = await CheckpointStore(self.inner).current_run("x")
            rival = {"tool": "send", "arguments": {"text": self.text}, "state": "intent"}
            await self.inner.save(key, encode("call", {**rival, "key": "k", "run": meta}))
        return bool(await self.inner.save_new(key, value))


async def test_a_call_another_worker_journaled_differently_is_not_run() -> None:
    inner = ar.InMemoryBackend()
    await interrupted(inner)
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=RivalIntent(inner))
    with pytest.raises(ar.ToolError, match="journaled by another worker"):
        await runtime.resume("x", script(SEND, FINAL))
    assert effects.keys == []  # the other worker's call alone goes out under that key


async def test_a_call_another_worker_journaled_the_same_runs_under_its_key() -> None:
    inner = ar.InMemoryBackend()
    await interrupted(inner)
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=RivalIntent(inner, "hi"))
    done = await runtime.resume("x", script(SEND, FINAL))
    assert done.final_answer is not None and effects.keys == ["k"]  # its key, not another


def test_the_stored_form_is_what_a_record_gives_back() -> None:
    # A journaled call's arguments are compared in this form: a NaN is never equal to
    # itself, and a tuple or an int key comes back changed.
    moment = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    value = {"x": math.nan, "pair": (1, 2), 3: "three", "at": moment}
    assert stored_form(value) == {"x": "nan", "pair": [1, 2], "3": "three", "at": str(moment)}
    assert stored_form(value) == stored_form(dict(value))


class TurnAtFirstDelete(Delegating):
    """The backend, but the first deletion waits for `start()` (the user's next turn) to
    end: the sweep found the session finished, and the turn starts before it deletes. (Up
    to 10 s: waiting a number of loop turns instead, a turn on a server under load had not
    reached its first write yet.)"""

    def __init__(self, inner: ar.PersistenceBackend, start: Any) -> None:
        super().__init__(inner)
        self.start, self.turn = start, None

    async def delete(self, key: str) -> None:
        if self.turn is None:
            self.turn = asyncio.ensure_future(self.start())
            await asyncio.wait([self.turn], timeout=10)
        await self.inner.delete(key)


async def test_a_turn_starting_while_a_sweep_deletes_the_session_is_refused_not_lost(
    backend: ar.PersistenceBackend,
) -> None:
    # The sweep checked, then deleted: the next turn's meta record and turn 1's steps went,
    # and the session, finished by turn 2, no longer loaded.
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    session = worker.create_session("a", "s")
    await worker.run_turn(session, "Q1", script("Thought: t\nAction: FINAL_ANSWER one"))
    hooked = TurnAtFirstDelete(
        backend,
        lambda: worker.run_turn(session, "Q2", script("Thought: t\nAction: FINAL_ANSWER two")),
    )
    assert await CheckpointStore(hooked).sweep(older_than=-1.0) == ["s"]
    with pytest.raises(ar.PersistenceError, match="is being deleted by a sweep"):
        await hooked.turn
    assert await backend.list_keys("session:s") == []  # the sweep's claim went too
    # The session in memory runs its turn again, and is saved whole.
    done = await worker.run_turn(session, "Q2", script("Thought: t\nAction: FINAL_ANSWER two"))
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert loaded.final_answer == done == "two"
    assert [m["content"] for m in loaded.messages] == ["Q1", "one", "Q2", "two"]


async def test_a_sweep_leaves_a_session_whose_next_turn_claimed_it_first(
    backend: ar.PersistenceBackend,
) -> None:
    worker = ar.AgentRuntime(checkpoint_backend=backend)
    session = worker.create_session("a", "s")
    await worker.run_turn(session, "Q1", script("Thought: t\nAction: FINAL_ANSWER one"))
    async with under_way(lambda model: worker.run_turn(session, "Q2", model)) as outcome:
        assert await CheckpointStore(backend).sweep(older_than=-1.0) == []
    loaded = await ar.AgentSession.load_checkpoint(backend, "s")
    assert loaded.final_answer == outcome[0] == "finished"
    assert loaded.step_count == 2


class DiesAfter(Delegating):
    """The backend of a process that dies after `writes` writes: nothing it does after lands."""

    def __init__(self, inner: ar.PersistenceBackend, writes: int) -> None:
        super().__init__(inner)
        self.writes = writes

    def _write(self) -> None:
        if self.writes <= 0:
            raise RuntimeError("the process died")
        self.writes -= 1

    async def save_new(self, key: str, value: bytes) -> bool:
        self._write()
        return bool(await self.inner.save_new(key, value))

    async def save(self, key: str, value: bytes) -> None:
        self._write()
        await self.inner.save(key, value)

    async def batch_save(self, items: dict[str, bytes]) -> None:
        self._write()
        await self.inner.batch_save(items)

    async def delete(self, key: str) -> None:
        self._write()
        await self.inner.delete(key)

    async def batch_save_if(self, guard_key: str, guard_value: bytes, items: Any) -> bool:
        self._write()
        return bool(await self.inner.batch_save_if(guard_key, guard_value, items))  # type: ignore[attr-defined]

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
        self._write()
        return bool(await self.inner.batch_delete_if(guard_key, guard_value, keys))  # type: ignore[attr-defined]


@pytest.mark.parametrize("writes", [1, 2])
async def test_a_fork_cut_before_its_copy_is_refused_then_forked_again(
    backend: ar.PersistenceBackend, writes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its meta record alone read as a run from step 0: resume ran the copied steps again.
    effects = Effects()
    runtime = ar.AgentRuntime(tools=effects.tools(), checkpoint_backend=backend)
    source = runtime.create_session("a", "src")
    await runtime.run_agent("a", "Q", script(CHARGE, CHARGE, FINAL), session=source)
    with monkeypatch.context() as past, pytest.raises(ar.PersistenceError, match="died"):
        # Cut longer ago than a fork still copying could be: its id may be taken over.
        past.setattr(checkpoints, "time", SimpleNamespace(time=lambda: time.time() - 61))
        await CheckpointStore(DiesAfter(backend, writes)).fork("src", 2, "f")
    left = await backend.list_keys("session:f")
    assert left == ["session:f:meta", "session:f:run:0"][:writes]
    with pytest.raises(ar.PersistenceError, match="fork whose steps were never copied"):
        await ar.AgentSession.load_checkpoint(backend, "f")
    effects.calls.clear()
    with pytest.raises(ar.PersistenceError, match="fork whose steps were never copied"):
        await runtime.resume("f", script(FINAL))
    assert effects.calls == []
    # The id is the incomplete fork's alone: a fork takes it over.
    assert await runtime.fork("src", 2, "f") == "f"
    done = await runtime.resume("f", script(FINAL))
    assert [s.action for s in done.steps] == ["charge", "charge", "FINAL_ANSWER"]
    assert effects.calls == []


async def test_a_fork_never_takes_over_an_id_with_other_records(
    backend: ar.PersistenceBackend,
) -> None:
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    source = runtime.create_session("a", "src")
    await runtime.run_agent("a", "Q", script(CHARGE, FINAL), session=source)
    with pytest.raises(ar.PersistenceError, match="died"):
        await CheckpointStore(DiesAfter(backend, 1)).fork("src", 1, "f")
    await backend.save("session:f:step:1", await backend.load("session:src:step:1") or b"")
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.fork("src", 1, "f")


async def test_a_restored_session_dying_at_its_next_turn_keeps_its_earlier_turns_as_they_were(
    backend: ar.PersistenceBackend,
) -> None:
    # The earlier turns' final checkpoint held the new turn's question, and no answer.
    plain = ar.AgentRuntime()  # its first turn ran without checkpoints
    session = plain.create_session("a", "chat")
    await plain.run_turn(session, "Q1", script("Thought: t\nAction: FINAL_ANSWER one"))
    restored = ar.AgentSession.from_json(session.to_json())
    dying = ar.AgentRuntime(checkpoint_backend=DiesAfter(backend, 1))
    with pytest.raises(ar.PersistenceError, match="died"):
        await dying.run_turn(restored, "Q2", script("Thought: t\nAction: FINAL_ANSWER two"))
    loaded = await ar.AgentSession.load_checkpoint(backend, "chat")
    assert (loaded.prompt, loaded.final_answer) == ("Q1", "one")
    assert loaded == session


async def test_a_turn_its_start_checkpoint_refuses_leaves_the_session_as_it_was(
    backend: ar.PersistenceBackend,
) -> None:
    # Another copy of the session ran a turn on the same backend: this copy's next turn is
    # refused before it starts, and keeps its question and answer (as a hook's refusal does).
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script("Thought: t\nAction: FINAL_ANSWER one"))
    other = ar.AgentSession.from_json(session.to_json())
    await runtime.run_turn(other, "Q2", script("Thought: t\nAction: FINAL_ANSWER two"))
    kept = {**session.to_dict(), "duration_ms": None}  # the refused run's time is counted
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.run_turn(session, "Q3", script("Thought: t\nAction: FINAL_ANSWER three"))
    assert (session.prompt, session.final_answer) == ("Q1", "one")
    assert {**session.to_dict(), "duration_ms": None} == kept
    assert runtime.metrics.snapshot().checkpoint_errors == 0  # a refusal, no failed write


async def test_a_refused_turn_keeps_the_graph_size_the_session_had(
    backend: ar.PersistenceBackend,
) -> None:
    # The graph grew since the session's last turn: a refused turn did not run on it.
    graph = ar.GraphStore()
    graph.add_entity("x")
    runtime = ar.AgentRuntime(checkpoint_backend=backend, graph=graph)
    session = runtime.create_session("a", "chat")
    await runtime.run_turn(session, "Q1", script("Thought: t\nAction: FINAL_ANSWER one"))
    other = ar.AgentSession.from_json(session.to_json())
    await runtime.run_turn(other, "Q2", script("Thought: t\nAction: FINAL_ANSWER two"))
    graph.add_entity("y")
    with pytest.raises(ar.PersistenceError, match="already has checkpoints"):
        await runtime.run_turn(session, "Q3", script("Thought: t\nAction: FINAL_ANSWER three"))
    assert session.graph_entity_count == 1


class _Down(ar.InMemoryBackend):
    """Fails the writes of the keys `bad` names, with `error` (a backend's own error, or
    its `PersistenceError` with no cause, as a server that is down gets)."""

    def __init__(self, bad: Any, error: Exception) -> None:
        super().__init__()
        self.bad, self.error = bad, error

    async def save_new(self, key: str, value: bytes) -> bool:
        if self.bad(key):
            raise self.error
        return await super().save_new(key, value)

    async def batch_save(self, items: Any) -> None:
        if any(map(self.bad, items)):
            raise self.error
        await super().batch_save(items)


@pytest.mark.parametrize(
    "error", [OSError("disk full"), ar.PersistenceError("cannot connect: server down")]
)
@pytest.mark.parametrize(
    ("bad", "failed"),
    [
        # The start record's, and the failed run's end written after it.
        pytest.param(lambda key: True, 2, id="start"),
        pytest.param(lambda key: ":call:" in key, 1, id="journal intent"),
        pytest.param(lambda key: key.count(":") == 1, 1, id="final"),
    ],
)
async def test_every_failed_write_that_ends_a_run_is_counted(
    bad: Any, failed: int, error: Exception
) -> None:
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=_Down(bad, error))
    with pytest.raises(ar.PersistenceError):
        await runtime.run_agent("a", "Q", script(CHARGE, FINAL))
    assert runtime.metrics.snapshot().checkpoint_errors == failed


class DeletesFail(Delegating):
    """The backend, but its deletions fail while `down` (a database gone as a run ends)."""

    down = False

    async def delete(self, key: str) -> bool:
        if self.down:
            raise ConnectionError("database down")
        return await self.inner.delete(key)

    async def batch_delete_if(self, guard_key: str, guard_value: bytes, keys: Any) -> bool:
        if self.down:
            raise ConnectionError("database down")
        return await self.inner.batch_delete_if(guard_key, guard_value, keys)  # type: ignore[attr-defined,no-any-return]


async def test_a_resume_claim_this_process_could_not_delete_is_taken_over_here(
    backend: ar.PersistenceBackend,
) -> None:
    # It named this live process, so it was taken for a resume under way: every later
    # resume of the session was refused (its own worker's too) while the process lived.
    await interrupted(backend)
    failing = DeletesFail(backend)
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=failing)

    async def outage(prompt: str) -> str:
        failing.down = True
        raise ConnectionError("model down")

    with pytest.raises(ConnectionError):
        await runtime.resume("x", outage)
    await asyncio.sleep(0.05)  # the claims' deletion, in a task of its own, failed
    assert len(await backend.list_keys("session:x:resume:")) == 1
    failing.down = False
    again = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    done = await again.resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)
    assert await backend.list_keys("session:x:resume") == []


async def test_a_resume_claim_of_a_store_of_this_process_that_is_gone_is_taken_over(
    backend: ar.PersistenceBackend,
) -> None:
    await interrupted(backend)
    gone = CheckpointStore(backend)
    await gone.claim_resumed(await gone.load("x"))
    del gone
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    done = await runtime.resume("x", script(FINAL))
    assert (done.final_answer, done.step_count) == ("finished", 2)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times read from /proc")
async def test_a_resume_claim_of_a_process_whose_pid_was_reused_is_taken_over(
    backend: ar.PersistenceBackend, running_pid: int
) -> None:
    # A restarted container's entry point is pid 1 again, under the same host name: the
    # claim of the one that died named a pid that runs (this one), and was refused for ever.
    started = checkpoints._process_start(running_pid)
    assert started is not None
    host = socket.gethostname()
    for pid in (running_pid, os.getpid()):
        await interrupted(backend, f"x{pid}")
        await resume_left(backend, f"x{pid}", host=host, pid=pid, started=started - 1)
        runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
        done = await runtime.resume(f"x{pid}", script(FINAL))
        assert (done.final_answer, done.step_count) == ("finished", 2)
    # Its own start time: the process that claimed runs.
    await interrupted(backend)
    await resume_left(backend, host=host, pid=running_pid, started=started)
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await ar.AgentRuntime(checkpoint_backend=backend).resume("x", script(FINAL))


async def test_a_claim_of_this_process_stays_its_own_when_start_times_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no file descriptor left, this process's start time read as None: its own live
    # claim looked like a reused pid's, and a second resume ran beside the first.
    backend = ar.InMemoryBackend()
    await interrupted(backend)
    holder = CheckpointStore(backend)
    await holder.claim_resumed(await holder.load("x"))
    monkeypatch.setattr(checkpoints, "_process_start", lambda pid: None)
    runtime = ar.AgentRuntime(tools=Effects().tools(), checkpoint_backend=backend)
    with pytest.raises(ar.PersistenceError, match="is being resumed by another worker"):
        await runtime.resume("x", script(FINAL))
