"""Edge cases of a run: bad arguments, concurrent turns, deadlines, cancellation, failure
paths, per-session state, and what the prompt shows (memories, tools)."""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import itertools
import json
import re
import time
import warnings
from collections.abc import Mapping
from typing import Any

import pydantic
import pytest
from test_runtime import add, react

import llm_agent_runtime as ar

FINAL = "Thought: done\nAction: FINAL_ANSWER ok"
ADD = 'Thought: add\nAction: add {"a": 2, "b": 3}'


async def final(prompt: str) -> str:
    return FINAL


def assert_nothing_leaked(rt: ar.AgentRuntime, guard: ar.BackpressureGuard) -> None:
    assert guard.depth == 0
    assert rt.metrics.snapshot().active_sessions == 0
    assert not rt._running


# ------------------------------------------------------------------ bad arguments (A, E)
def sync_infer(prompt: str) -> str:
    return FINAL


async def none_infer(prompt: str) -> Any:
    return None


async def bytes_infer(prompt: str) -> Any:
    return FINAL.encode()


BAD_CALLS = {
    "session is a string": (
        lambda rt: rt.run_agent("a", "q", final, session="my-session-id"),
        ar.AgentRuntimeError,
        "session must be an AgentSession.*got str",
    ),
    "session is a dict": (
        lambda rt: rt.run_agent("a", "q", final, session={}),
        ar.AgentRuntimeError,
        "session must be an AgentSession.*got dict",
    ),
    "prompt is None": (
        lambda rt: rt.run_agent("a", None, final),
        ar.AgentRuntimeError,
        "prompt must be a string, got None",
    ),
    "prompt is an int": (
        lambda rt: rt.run_agent("a", 42, final),
        ar.AgentRuntimeError,
        "prompt must be a string, got int",
    ),
    "infer is not callable": (
        lambda rt: rt.run_agent("a", "q", "model"),
        ar.AgentRuntimeError,
        "infer must be an async callable.*got str",
    ),
    "infer is synchronous": (
        lambda rt: rt.run_agent("a", "q", sync_infer),
        ar.AgentRuntimeError,
        "infer must be async .*sync_infer is a synchronous callable and returned str",
    ),
    "the reply is None": (
        lambda rt: rt.run_agent("a", "q", none_infer),
        ar.AgentLoopError,
        "reply must be a str, got None",
    ),
    "the reply is bytes": (
        lambda rt: rt.run_agent("a", "q", bytes_infer),
        ar.AgentLoopError,
        "reply must be a str, got bytes",
    ),
    "run_turn without a session": (
        lambda rt: rt.run_turn(None, "q", final),
        ar.AgentRuntimeError,
        "session must be an AgentSession.*got None",
    ),
    "run_turn without a message": (
        lambda rt: rt.run_turn(rt.create_session("a"), None, final),
        ar.AgentRuntimeError,
        "message must be a string, got None",  # named as run_turn names it
    ),
    "a provider without methods": (
        lambda rt: rt.run_agent_with_provider("a", "q", object()),
        ar.AgentRuntimeError,
        "provider must provide complete; object lacks complete",
    ),
    "run_turn with a provider without methods": (
        lambda rt: rt.run_turn(rt.create_session("a"), "q", object()),
        ar.AgentRuntimeError,
        "provider must provide complete",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
async def test_bad_arguments_are_typed_errors_and_leak_nothing(case: str) -> None:
    call, error, message = BAD_CALLS[case]
    guard = ar.BackpressureGuard(capacity=1)
    rt = ar.AgentRuntime(backpressure=guard)
    with pytest.raises(error, match=message):
        await call(rt)
    assert_nothing_leaked(rt, guard)
    assert (await rt.run_agent("a", "q", final)).final_answer == "ok"  # the slot is free


async def test_a_tools_mode_provider_needs_chat() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    with pytest.raises(ar.AgentRuntimeError, match="provider must provide chat"):
        await rt.run_agent_with_provider("a", "q", object())  # type: ignore[arg-type]


class SyncChat:
    """A provider whose `chat` was written without `async`."""

    def chat(self, messages: Any, **params: Any) -> ar.providers.base.ChatResponse:
        return ar.providers.base.ChatResponse(text="hi")


class ChatReturningACoroutine:
    """A provider whose plain `chat` returns a coroutine (a wrapper, say): it works."""

    def __init__(self, reply: str) -> None:
        self.scripted = ar.ScriptedProvider([reply])

    def chat(self, messages: Any, **params: Any) -> Any:
        return self.scripted.chat(messages, **params)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_provider_with_a_synchronous_chat_is_a_typed_error(mode: str) -> None:
    guard = ar.BackpressureGuard(capacity=1)
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), backpressure=guard)  # type: ignore[arg-type]
    # Before: TypeError("object ChatResponse can't be used in 'await' expression").
    with pytest.raises(
        ar.AgentRuntimeError,
        match=r"chat must be async .*SyncChat\.chat is synchronous and returned ChatResponse",
    ):
        await rt.run_agent_with_provider("a", "q", SyncChat())  # type: ignore[arg-type]
    assert_nothing_leaked(rt, guard)
    wrapper = ChatReturningACoroutine("hi" if mode == "tools" else FINAL)
    session = await rt.run_agent_with_provider("a", "q", wrapper)  # type: ignore[arg-type]
    assert session.final_answer == ("hi" if mode == "tools" else "ok")


async def test_a_reply_that_is_no_text_is_typed_with_stop_sequences_and_hooks_too() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(stop_sequences=["Observation:"]))
    with pytest.raises(ar.AgentLoopError, match="reply must be a str, got None"):
        await rt.run_agent("a", "q", none_infer)

    class Breaks(ar.Middleware):
        def on_post_llm(self, session: ar.AgentSession, text: str) -> Any:
            return 42

    # A hook's wrong return is the hook's fault, and said so.
    with pytest.raises(ar.AgentRuntimeError, match="on_post_llm must return a string or None"):
        await ar.AgentRuntime(middlewares=[Breaks()]).run_agent("a", "q", final)


async def test_a_models_own_type_error_propagates_as_it_is() -> None:
    async def buggy(prompt: str) -> str:
        raise TypeError("bug in the model client")

    with pytest.raises(TypeError, match="bug in the model client"):
        await ar.AgentRuntime().run_agent("a", "q", buggy)


async def test_callables_returning_awaitables_are_models_too() -> None:
    class Model:
        async def __call__(self, prompt: str) -> str:
            return FINAL

    async def answer(prompt: str, text: str) -> str:
        return text

    rt = ar.AgentRuntime()
    for model in (
        Model(),
        lambda prompt: final(prompt),  # a sync callable returning a coroutine
        functools.partial(answer, text=FINAL),
    ):
        assert (await rt.run_agent("a", "q", model)).final_answer == "ok"


async def test_a_user_message_hook_must_return_text() -> None:
    class Breaks(ar.Middleware):
        def on_user_message(self, session: ar.AgentSession, text: str) -> Any:
            return 7

    with pytest.raises(ar.AgentRuntimeError, match="on_user_message must return a string"):
        await ar.AgentRuntime(middlewares=[Breaks()]).run_agent("a", "q", final)


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user"}],
        [{"content": "hi"}],
        [{"role": "user", "content": None}],
        [3],
        # Accepted before, each in one mode or both: a raw ValueError mid-run, or a turn that
        # "succeeded" and left a session `from_json` then refused.
        [{"role": "wizard", "content": "hi"}],
        [{"role": 5, "content": "hi"}],
        [{"role": "user", "content": ["hi"]}],
        [{"role": "user", "content": b"hi"}],
    ],
)
async def test_malformed_history_of_a_session_is_a_typed_error(
    messages: list[Any], mode: str
) -> None:
    session = ar.AgentSession("s", "a", messages=messages)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    provider = ar.ScriptedProvider([FINAL])
    with pytest.raises(ar.AgentRuntimeError, match="session message 1: "):
        await runtime.run_turn(session, "q", provider)
    assert session.messages == messages and not session.steps


# ------------------------------------------------------------------ one turn at a time (B)
async def test_concurrent_turns_of_one_session_are_refused() -> None:
    rt = ar.AgentRuntime()
    session = rt.create_session("a")

    async def slow(prompt: str) -> str:
        await asyncio.sleep(0.05)
        return "Thought: t\nAction: FINAL_ANSWER slow"

    first, second = await asyncio.gather(
        rt.run_turn(session, "first", slow),
        rt.run_turn(session, "second", final),
        return_exceptions=True,
    )
    assert first == "slow"
    assert isinstance(second, ar.AgentRuntimeError)
    assert "is already running a turn" in str(second)
    assert session.messages == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "slow"},
    ]
    done, refused = await asyncio.gather(
        rt.run_agent("a", "q", slow, session=session),
        rt.run_agent("a", "q", final, session=session),
        return_exceptions=True,
    )
    assert done is session and isinstance(refused, ar.AgentRuntimeError)
    assert await rt.run_turn(session, "third", final) == "ok"  # the mark is cleared
    assert rt.metrics.snapshot().active_sessions == 0 and not rt._running


async def test_a_turn_asked_for_during_anothers_final_checkpoint_waits_for_it() -> None:
    class SlowBackend(ar.InMemoryBackend):
        async def batch_save(self, items: Mapping[str, bytes]) -> None:
            await asyncio.sleep(0.05)
            await super().batch_save(items)

    backend = SlowBackend()
    rt = ar.AgentRuntime(checkpoint_backend=backend)
    session = rt.create_session("a")
    over = asyncio.Event()
    rt.events.on(lambda event: over.set() if isinstance(event, ar.RunFinished) else None)
    turn_a = asyncio.create_task(rt.run_turn(session, "qa", final))
    await over.wait()  # turn A is over, writing its final checkpoint
    assert await rt.run_turn(session, "qb", final) == "ok"
    assert turn_a.done() and turn_a.result() == "ok"
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert [m["content"] for m in saved.messages] == ["qa", "ok", "qb", "ok"]
    # On another loop (another thread's), it is refused: the run wakes its waiters on its own.
    over.clear()
    turn_a = asyncio.create_task(rt.run_turn(session, "qc", final))
    await over.wait()

    def other_loop() -> str:
        async def turn() -> str | None:
            return await rt.run_turn(session, "qd", final)

        try:
            asyncio.run(turn())
        except ar.AgentRuntimeError as error:
            return str(error)
        return "ran"

    assert "already running a turn" in await asyncio.to_thread(other_loop)
    assert await turn_a == "ok"
    assert [m["content"] for m in session.messages][4:] == ["qc", "ok"]


class _SlowFinal(ar.InMemoryBackend):
    """A backend whose writes suspend: a run's callbacks start while it saves its end."""

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        await asyncio.sleep(0.01)
        await super().batch_save(items)


@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("wait_for", [False, True], ids=["awaited", "wait_for"])
async def test_a_run_finished_callback_runs_the_sessions_next_turn(
    durable: bool, wait_for: bool
) -> None:
    # With a backend whose writes suspend, the callback started as the final checkpoint was
    # written, and found the session still running: its turn was refused, though the run
    # waits for its callbacks after it lets go of the session precisely so they may. Through
    # `asyncio.wait_for` (a task of its own before Python 3.12) it was refused too.
    rt = ar.AgentRuntime(checkpoint_backend=_SlowFinal() if durable else None)
    session = rt.create_session("a")
    answers = iter(["first", "second"])

    async def model(prompt: str) -> str:
        return f"Thought: t\nAction: FINAL_ANSWER {next(answers)}"

    chained: list[str | None] = []

    @rt.events.on
    async def next_turn(event: ar.AgentEvent) -> None:
        if isinstance(event, ar.RunFinished) and not chained:
            turn = rt.run_turn(session, "again", model)
            chained.append(await (asyncio.wait_for(turn, 5) if wait_for else turn))

    assert await rt.run_turn(session, "go", model) == "first"
    assert chained == ["second"]
    assert [m["content"] for m in session.messages] == ["go", "first", "again", "second"]
    if durable:
        saved = await ar.AgentSession.load_checkpoint(rt.checkpoint_backend, session.session_id)
        assert saved.messages == session.messages


@pytest.mark.parametrize("reading", ["in the loop", "in a task", "read by wait_for"])
async def test_a_subscriber_runs_the_sessions_next_turn_on_run_finished(reading: str) -> None:
    # A consumer of `events.subscribe()` that ran the next turn on `RunFinished` got the
    # event while the final checkpoint was written, and its turn was refused: only the
    # run's callbacks waited for the run to let go of the session.
    rt = ar.AgentRuntime(checkpoint_backend=_SlowFinal())
    session = rt.create_session("a")
    answers = iter(["first", "second"])

    async def model(prompt: str) -> str:
        return f"Thought: t\nAction: FINAL_ANSWER {next(answers)}"

    chained: list[str | None] = []
    subscription = rt.events.subscribe()

    async def consume() -> None:
        async with subscription as events:
            while True:
                if reading == "read by wait_for":  # a task of its own before Python 3.12
                    event = await asyncio.wait_for(anext(events), 5)
                else:
                    event = await anext(events)
                if isinstance(event, ar.RunFinished):
                    turn = rt.run_turn(session, "again", model)
                    own_task = reading == "in a task"
                    chained.append(await (asyncio.create_task(turn) if own_task else turn))
                    return

    consumer = asyncio.create_task(consume())
    assert await rt.run_turn(session, "go", model) == "first"
    await asyncio.wait_for(consumer, 5)
    assert chained == ["second"]
    assert [m["content"] for m in session.messages] == ["go", "first", "again", "second"]
    saved = await ar.AgentSession.load_checkpoint(rt.checkpoint_backend, session.session_id)
    assert saved.messages == session.messages


async def test_a_callback_of_a_run_still_going_cannot_run_its_sessions_turn() -> None:
    # Only a finished run's callbacks wait for it to let go of the session: one started
    # mid-run is refused at once, as any other caller is.

    @ar.tool
    async def pause() -> str:
        """Lets the loop run the callbacks."""
        await asyncio.sleep(0.01)
        return "done"

    rt = ar.AgentRuntime(tools=[pause], checkpoint_backend=ar.InMemoryBackend())
    session = rt.create_session("a")
    refused: list[str] = []

    @rt.events.on
    async def on_tool(event: ar.AgentEvent) -> None:
        if isinstance(event, ar.ToolCallStarted):
            try:
                await rt.run_turn(session, "again", final)
            except ar.AgentRuntimeError as error:
                refused.append(str(error))

    model = react("Thought: a\nAction: pause {}", FINAL)
    assert await rt.run_turn(session, "go", model) == "ok"
    assert len(refused) == 1 and "already running a turn" in refused[0]
    assert len(session.messages) == 2


async def test_a_running_session_cannot_be_resumed() -> None:
    gate, started = asyncio.Event(), asyncio.Event()

    @ar.tool
    async def wait() -> str:
        """Waits for the gate."""
        started.set()
        await gate.wait()
        return "done"

    rt = ar.AgentRuntime(tools=[wait], checkpoint_backend=ar.InMemoryBackend())
    session = rt.create_session("a")
    run = asyncio.create_task(
        rt.run_agent("a", "q", react("Thought: w\nAction: wait {}", FINAL), session=session)
    )
    await started.wait()
    with pytest.raises(ar.AgentRuntimeError, match="already running a turn"):
        await rt.resume(session.session_id, final)
    gate.set()
    assert (await run).final_answer == "ok"


# ------------------------------------------------------------------ deadlines (D, F, G, H)
@pytest.mark.parametrize("hops", range(6))
async def test_a_cancel_landing_as_the_run_ends_is_never_swallowed(hops: int) -> None:
    # The cancel is sent `hops` loop iterations after the model answered, so that for some
    # `hops` it lands just as the run's deadline scope ends (asyncio.wait_for lost it there).
    loop = asyncio.get_running_loop()
    outcome: list[bool] = []

    def cancel_later(n: int) -> None:
        if n:
            loop.call_soon(cancel_later, n - 1)
        else:
            outcome.append(task.cancel())

    async def infer(prompt: str) -> str:
        loop.call_soon(cancel_later, hops)
        return FINAL

    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=60_000))
    task = asyncio.create_task(rt.run_agent("a", "q", infer))
    try:
        await task
    except asyncio.CancelledError:
        assert outcome == [True]
        return
    for _ in range(hops + 2):
        await asyncio.sleep(0)
    assert outcome == [False]  # returned normally: the cancel came after the run ended
    assert task.cancelling() == 0


class SlowHook(ar.Middleware):
    async def on_user_message(self, session: ar.AgentSession, text: str) -> None:
        await asyncio.sleep(10)


class FinalSaveHangsOnce(ar.InMemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.hung = False

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        final = any(key.count(":") == 1 for key in items)  # `session:<id>`
        if final and not self.hung:
            self.hung = True
            await asyncio.sleep(10)
        await super().batch_save(items)


class Hangs(ar.InMemoryBackend):
    async def save(self, key: str, value: bytes) -> None:
        await asyncio.sleep(10)

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        await asyncio.sleep(10)


async def test_the_loop_timeout_covers_hooks_and_checkpoints() -> None:
    config = ar.AgentConfig(loop_timeout_ms=50)
    start = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match=r"timed out after 50 ms \(0 steps done\)"):
        await ar.AgentRuntime(config, middlewares=[SlowHook()]).run_agent("a", "q", final)
    assert time.perf_counter() - start < 2

    backend = FinalSaveHangsOnce()
    rt = ar.AgentRuntime(config, checkpoint_backend=backend)
    session = rt.create_session("a")
    with pytest.raises(ar.AgentLoopError, match=r"\(1 steps done\)"):
        await rt.run_agent("a", "q", final, session=session)
    # The step was saved: the run is resumable, and resume just closes it.
    resumed = await rt.resume(session.session_id, final)
    assert resumed.final_answer == "ok"
    assert await backend.load(f"session:{session.session_id}") is not None


class FinalSaveGate(ar.InMemoryBackend):
    """A backend whose final checkpoints (`session:<id>`) wait for `gate` while it is shut."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        if not self.gate.is_set() and any(key.count(":") == 1 for key in items):
            self.entered.set()
            await self.gate.wait()
        await super().batch_save(items)


async def test_a_resume_asked_for_while_a_run_closes_waits_for_it() -> None:
    # A run whose turn is over holds the session only for its final checkpoint: a resume
    # asked for meanwhile, on its loop, waits for it and finds the session finished (it was
    # refused at once), and so does one asked for while `resume` itself closes a run.
    backend = FinalSaveGate()
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=50), checkpoint_backend=backend)
    session = rt.create_session("a")
    with pytest.raises(ar.AgentLoopError, match=r"\(1 steps done\)"):
        await rt.run_agent("a", "q", final, session=session)
    backend.entered.clear()
    closer = ar.AgentRuntime(checkpoint_backend=backend)
    closing = asyncio.create_task(closer.resume(session.session_id, final))
    await backend.entered.wait()  # the close writes the final checkpoint
    waiting = asyncio.create_task(closer.resume(session.session_id, final))
    await asyncio.sleep(0.02)
    assert not waiting.done()  # not refused: waiting for the close
    backend.gate.set()
    assert (await closing).final_answer == "ok"
    assert (await asyncio.wait_for(waiting, 5)).final_answer == "ok"
    # A turn of this runtime that writes its final checkpoint is waited for alike.
    backend.gate.clear()
    backend.entered.clear()
    other = closer.create_session("a")
    turn = asyncio.create_task(closer.run_turn(other, "q", final))
    await backend.entered.wait()
    waiting = asyncio.create_task(closer.resume(other.session_id, final))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    backend.gate.set()
    assert (await waiting).final_answer == "ok" and await turn == "ok"


async def test_two_resumes_of_a_run_to_close_both_find_it_closed() -> None:
    # The second, started with the first, loaded the session as the first did, then found
    # it running (the first's close) and was refused, or waited: as the loads went.
    class SlowLoads(FinalSaveGate):
        async def load(self, key: str) -> bytes | None:
            await asyncio.sleep(0.01)
            return await super().load(key)

    backend = SlowLoads()
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=50), checkpoint_backend=backend)
    session = rt.create_session("a")
    with pytest.raises(ar.AgentLoopError):
        await rt.run_agent("a", "q", final, session=session)
    backend.gate.set()
    closer = ar.AgentRuntime(checkpoint_backend=backend)
    both = await asyncio.gather(*(closer.resume(session.session_id, final) for _ in range(2)))
    assert [s.final_answer for s in both] == ["ok", "ok"]
    assert not closer._running and not closer._finishing


async def test_the_failure_path_save_is_bounded_too() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=50), checkpoint_backend=Hangs())
    start = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await rt.run_agent("a", "q", final)
    assert time.perf_counter() - start < 2  # the deadline, then as long again to save
    assert not rt._event_log and not rt._unsaved_steps


async def test_a_listener_failing_on_the_error_event_hides_nothing() -> None:
    @ar.tool
    async def hang() -> int:
        """Hangs."""
        await asyncio.sleep(10)
        return 0

    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(
        ar.AgentConfig(loop_timeout_ms=50), tools=[hang], checkpoint_backend=backend
    )

    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.ErrorEvent):
            raise RuntimeError("listener broke")

    rt.events.on(listener)
    session = rt.create_session("a")
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await rt.run_agent("a", "q", react("Thought: t\nAction: hang {}"), session=session)
    types = [e["type"] for e in await rt.session_events(session.session_id)]
    assert types[0] == "RunStarted" and types[-1] == "ErrorEvent"
    assert not rt._event_log


async def test_the_timeout_message_counts_the_failed_turns_steps() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=100), tools=[add])
    session = rt.create_session("a")
    assert await rt.run_turn(session, "one", react(ADD, ADD, FINAL)) == "ok"
    replies = iter([ADD])

    async def then_slow(prompt: str) -> str:
        reply = next(replies, None)
        if reply is None:
            await asyncio.sleep(10)
        return reply or FINAL

    with pytest.raises(ar.AgentLoopError, match=r"\(1 steps done\)"):
        await rt.run_turn(session, "two", then_slow)
    assert session.step_count == 4


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_the_loop_timeout_ends_a_run_that_never_suspends(mode: str) -> None:
    # An offline model and a plain async tool never give the event loop a turn, so the
    # timer alone could not fire: the loop checks the deadline before each step.
    config = ar.AgentConfig(mode=mode, max_iterations=1_000_000, loop_timeout_ms=50)  # type: ignore[arg-type]

    @ar.tool(name="add")
    async def add_async(a: int, b: int) -> int:
        """Adds two integers, never suspending."""
        return a + b

    rt = ar.AgentRuntime(config, tools=[add_async])
    if mode == "react":
        reply: Any = 'Thought: t\nAction: add {"a": 1, "b": 2}'
    else:
        reply = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
    events: list[ar.Event] = []
    rt.events.on(events.append)
    session = rt.create_session("a")
    start = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match=r"timed out after 50 ms \((\d+) steps done\)"):
        await rt.run_agent_with_provider(
            "a", "q", ar.ScriptedProvider([reply], loop=True), session=session
        )
    assert time.perf_counter() - start < 5
    assert 0 < session.step_count < 1_000_000
    assert all(step.observation == "3" for step in session.steps)  # no step cut halfway
    assert isinstance(events[-1], ar.ErrorEvent)
    assert rt.metrics.snapshot().active_sessions == 0
    # The session is free again: it runs its next turn.
    final_reply = "Thought: t\nAction: FINAL_ANSWER ok" if mode == "react" else "ok"
    again = await rt.run_agent_with_provider(
        "a", "q", ar.ScriptedProvider([final_reply]), session=session
    )
    assert again.final_answer == "ok"


class SlowStepSaveOnce(ar.InMemoryBackend):
    """A loaded database: the first step checkpoint takes a while to write."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = True

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        if self.slow and any(":step:" in key for key in items):
            self.slow = False
            await asyncio.sleep(0.5)
        await super().batch_save(items)


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize("ending", ["timeout", "cancel"])
async def test_a_turn_ended_while_its_answer_is_saved_is_in_the_history(
    mode: str, ending: str
) -> None:
    # The answer and its step were in the session, the turn not in its history: the next
    # turn was sent a history without the question the session had answered.
    timeout = 100 if ending == "timeout" else None
    config = ar.AgentConfig(mode=mode, loop_timeout_ms=timeout)  # type: ignore[arg-type]
    rt = ar.AgentRuntime(config, checkpoint_backend=SlowStepSaveOnce())
    session = rt.create_session("a")
    reply = FINAL if mode == "react" else "ok"
    turn = asyncio.create_task(rt.run_turn(session, "2+3?", ar.ScriptedProvider([reply])))
    if ending == "timeout":
        with pytest.raises(ar.AgentLoopError, match="timed out"):
            await turn
    else:
        await asyncio.sleep(0.1)  # the final step's checkpoint is being written
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
    assert session.final_answer == "ok" and session.step_count == 1
    asked = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "ok"}]
    assert session.messages == asked
    assert await rt.run_turn(session, "again", ar.ScriptedProvider([reply])) == "ok"
    assert session.messages[:2] == asked and len(session.messages) == 4


# ------------------------------------------------------------------ per-session state (I)
async def test_approval_state_is_dropped_unless_a_decision_is_remembered() -> None:
    def approve(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("approve")

    rt = ar.AgentRuntime(tools=[add], approval_handler=approve)
    await asyncio.gather(*(rt.run_agent("a", "q", react(ADD, FINAL)) for _ in range(50)))
    assert rt._approvals == {} and rt._approval_locks == {}

    def remember(session: ar.AgentSession, tool: str, args: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("approve", remember=True)

    rt = ar.AgentRuntime(tools=[add], approval_handler=remember)
    session = rt.create_session("a")
    await rt.run_agent("a", "q", react(ADD, FINAL), session=session)
    assert list(rt._approvals) == [session.session_id]
    rt.forget_approvals(session.session_id)
    assert rt._approvals == {} and rt._approval_locks == {}


# ------------------------------------------------------------------ memory (J, K, L)
async def test_a_session_checkpoint_holds_no_other_agents_memories() -> None:
    memory = ar.EpisodicStore()
    memory.add_episode("alice", "alice's note", 0.5)
    memory.add_episode("bob", "bob's password is hunter2", 0.9)
    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(memory=memory, checkpoint_backend=backend)
    session = await rt.run_agent("alice", "hi", final)
    assert session.memory_hits == 1
    assert backend.data and not any(b"hunter2" in value for value in backend.data.values())


async def test_the_prompt_shows_working_memory_once() -> None:
    working = ar.WorkingMemory(4)
    working.set("user", "alice")
    memory = ar.EpisodicStore()
    memory.add_episode("a", "alpha fact", 0.9)
    memory.add_episode("b", "SECRET of b", 1.0)
    rt = ar.AgentRuntime(memory=memory, working_memory=working)
    infer = react(FINAL)
    await rt.run_agent("a", "hi", infer)
    assert infer.prompts[0] == (
        "You are a helpful AI agent.\n\n"
        "Relevant memories:\n- alpha fact\n\n"
        "Working memory:\n- user: alice\n\n"
        "Answer with:\nThought: ...\nAction: FINAL_ANSWER your answer\n\n"
        "Question: hi"
    )


async def test_blank_memories_are_neither_shown_nor_counted() -> None:
    memory = ar.EpisodicStore(clock=lambda: 1000.0)
    for content, importance in [("", 0.9), ("   ", 0.8), ("\n", 0.7), ("real", 0.1)]:
        memory.add_episode("a", content, importance)
    rt = ar.AgentRuntime(ar.AgentConfig(max_memory_recalls=4, max_memory_tokens=1), memory=memory)
    infer = react(FINAL)
    session = await rt.run_agent("a", "q", infer)
    assert "Relevant memories:\n- real\n\n" in infer.prompts[0]
    assert "- \n" not in infer.prompts[0]
    assert session.memory_hits == 1 and rt.metrics.snapshot().memory_recall_count == 1


# ------------------------------------------------------------------ tools shown (M, N)
class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Place(pydantic.BaseModel):
    city: str
    country: str


@ar.tool
def weather(place: Place, unit: Unit = Unit.C) -> str:
    """Gets the weather."""
    return "sunny"


class Node(pydantic.BaseModel):
    name: str
    children: list[Node] = []


@ar.tool
def tree(root: Node) -> str:
    """Walks a tree."""
    return root.name


async def test_the_tool_catalog_shows_whole_schemas() -> None:
    infer = react(FINAL)
    await ar.AgentRuntime(tools=[weather, tree]).run_agent("a", "q", infer)
    line = next(x for x in infer.prompts[0].splitlines() if x.startswith("- weather:"))
    assert line.startswith("- weather: Gets the weather. Arguments: {")
    assert '"enum": ["celsius", "fahrenheit"]' in line
    assert '"required": ["city", "country"]' in line and '"required": ["place"]' in line
    assert "$ref" not in line and "$defs" not in line and '"title"' not in line
    # A recursive model keeps its reference, and the definition it names.
    line = next(x for x in infer.prompts[0].splitlines() if x.startswith("- tree:"))
    assert '"$ref": "#/$defs/Node"' in line and '"$defs": {"Node"' in line


def _doubling_models(depth: int) -> type[pydantic.BaseModel]:
    """M0(v: int) and, for each level, a model of two fields of the level below: a schema of
    `depth` + 1 definitions whose inlined form has 2**depth copies of M0."""
    model: type[pydantic.BaseModel] = pydantic.create_model("M0", v=(int, ...))
    for level in range(1, depth + 1):
        model = pydantic.create_model(f"M{level}", a=(model, ...), b=(model, ...))
    return model


async def test_a_definition_used_many_times_is_shown_once_when_inlining_it_would_multiply_it() -> (
    None
):
    top = _doubling_models(20)

    def deep(x: Any) -> str:
        """Takes a deep model."""
        return "ok"

    deep.__annotations__["x"] = top  # a class made at run time
    spec = ar.tool(deep)
    infer = react(FINAL)
    await ar.AgentRuntime(tools=[spec]).run_agent("a", "q", infer)
    line = next(x for x in infer.prompts[0].splitlines() if x.startswith("- deep:"))
    schema = json.loads(line.partition(" Arguments: ")[2])
    # Linear in the tool's own schema (2**20 copies of M0 would be megabytes)...
    assert len(line) < 3 * len(json.dumps(spec.parameters))
    # ...and whole: every reference left names a definition the line carries.
    refs = set(re.findall(r'"\$ref": "#/\$defs/(\w+)"', line))
    assert refs and refs <= set(schema["$defs"])
    # Small definitions are still inlined where they are used.
    assert '"M0"' not in line and '"required": ["v"]' in line


class Trip(pydantic.BaseModel):
    start: Place
    end: Place


async def test_a_small_definition_used_twice_is_inlined_at_both_uses() -> None:
    @ar.tool
    def route(trip: Trip) -> str:
        """Plans a route."""
        return "ok"

    infer = react(FINAL)
    await ar.AgentRuntime(tools=[route]).run_agent("a", "q", infer)
    line = next(x for x in infer.prompts[0].splitlines() if x.startswith("- route:"))
    assert "$ref" not in line and "$defs" not in line
    assert line.count('"required": ["city", "country"]') == 2


async def test_a_tool_registered_after_the_runtime_was_built_is_shown() -> None:
    @ar.tool
    def second(x: str) -> str:
        """The late tool."""
        return "second ran"

    rt = ar.AgentRuntime(tools=[add])
    rt.tools.register(second)
    infer = react('Thought: t\nAction: second {"x": "y"}', FINAL)
    session = await rt.run_agent("a", "q", infer)
    assert "- second: The late tool." in infer.prompts[0]
    assert session.steps[0].observation == "second ran"

    seen: list[list[str]] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            seen.append([t.name for t in tools or []])
            return await super().chat(messages, tools, **params)

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    await rt.run_agent_with_provider("a", "q", Recording(["done"]))
    rt.tools.register(second)
    await rt.run_agent_with_provider("a", "q", Recording(["done"]))
    assert seen == [["add"], ["add", "second"]]


# ------------------------------------------------------------------ ReAct prompt and re-prompts
def _example_steps(prompt: str) -> list[str]:
    """The example steps a prompt shows: each 'Thought: ...' line with the Action line after."""
    lines = prompt.split("\n")
    return [f"{a}\n{b}" for a, b in itertools.pairwise(lines) if a == "Thought: ..."]


async def test_the_answer_format_is_shown_on_real_lines_and_parses() -> None:
    for tools in ([add], []):
        infer = react(FINAL)
        await ar.AgentRuntime(tools=tools).run_agent("a", "hi", infer)
        examples = _example_steps(infer.prompts[0])
        assert len(examples) == (2 if tools else 1)  # with no tool, the final answer alone
        parsed = [ar.parse_react_step(text) for text in examples]
        assert parsed[-1].final_answer == "your answer"
        if tools:
            assert parsed[0].action == "tool_name"
            assert parsed[0].action_input == {"argument": "value"}


async def test_each_unparseable_reply_gets_its_own_corrective_reprompt() -> None:
    config = ar.AgentConfig(corrective_reprompt=True)
    infer = react("garbage", ADD, "more garbage", FINAL)
    session = await ar.AgentRuntime(config, tools=[add]).run_agent("a", "hi", infer)
    assert session.final_answer == "ok"
    assert [s.action for s in session.steps] == ["add", "FINAL_ANSWER"]
    # Two unparseable replies in a row still fail: one re-prompt per bad reply.
    infer = react("garbage", "more garbage", FINAL)
    with pytest.raises(ar.AgentLoopError):
        await ar.AgentRuntime(config, tools=[add]).run_agent("a", "hi", infer)


async def test_a_denied_call_is_a_failed_call_in_the_metrics_as_in_the_session() -> None:
    async def deny(session: ar.AgentSession, name: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny", reason="no")

    rt = ar.AgentRuntime(tools=[add], approval_handler=deny)
    session = await rt.run_agent("a", "hi", react(ADD, FINAL))
    snapshot = rt.metrics.snapshot()
    assert session.failed_tool_call_count() == 1
    assert (snapshot.total_tool_calls, snapshot.failed_tool_calls) == (1, 1)


async def test_an_observation_the_model_invents_is_not_kept_in_the_transcript() -> None:
    invented = 'Thought: add\nAction: add {"a": 2, "b": 3}\nObservation: 999\nThought: so'
    infer = react(invented, FINAL)
    session = await ar.AgentRuntime(tools=[add]).run_agent("a", "hi", infer)
    assert session.steps[0].observation == "5"
    assert "999" not in infer.prompts[1]
    assert infer.prompts[1].endswith('Action: add {"a": 2, "b": 3}\nObservation: 5')


async def test_a_second_action_in_a_reply_is_not_kept_in_the_transcript() -> None:
    # Only the first action runs: its observation must follow it, not an action never run.
    two = 'Thought: sums\nAction: add {"a": 1, "b": 2}\nThought: and\nAction: add {"a": 5, "b": 5}'
    infer = react(two, FINAL)
    session = await ar.AgentRuntime(tools=[add]).run_agent("a", "hi", infer)
    assert (session.steps[0].action, session.steps[0].observation) == ("add", "3")
    assert '"a": 5' not in infer.prompts[1]
    assert infer.prompts[1].endswith('Action: add {"a": 1, "b": 2}\nObservation: 3')


# ------------------------------------------------------------------ replies cut off early
def cut(text: str, reason: str = "length", **fields: Any) -> ar.providers.base.ChatResponse:
    return ar.providers.base.ChatResponse(text=text, stop_reason=reason, **fields)


@pytest.mark.parametrize("reason", ["length", "max_tokens", "model_context_window_exceeded"])
async def test_a_final_answer_cut_at_the_token_limit_is_an_error_not_an_answer(
    reason: str,
) -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    provider = ar.ScriptedProvider([cut("The capital of France is Pa", reason)])
    limit = "context window" if reason == "model_context_window_exceeded" else "token limit"
    with pytest.raises(ar.AgentLoopError, match=f"{limit}.*{reason}.*final answer"):
        await rt.run_agent_with_provider("a", "capital?", provider)
    assert rt.metrics.snapshot().active_sessions == 0


async def test_a_final_answer_cut_by_the_content_filter_is_an_error() -> None:
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    provider = ar.ScriptedProvider([cut("Here is how", "content_filter")])
    with pytest.raises(
        ar.AgentLoopError, match=r"content filter.*\) in its final answer, so the run stops"
    ):
        await rt.run_agent_with_provider("a", "q", provider)


@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_turn_the_api_paused_is_an_error_not_an_answer(mode: str) -> None:
    # Anthropic pauses a long turn of server-side tools (`mcp_servers`): its text so far is
    # no answer, and the turn cannot go on without the server tools' blocks.
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    provider = ar.ScriptedProvider([cut("Final Answer: Let me look that up", "pause_turn")])
    with pytest.raises(ar.AgentLoopError, match=r"paused.*'pause_turn'.*final answer"):
        await rt.run_agent_with_provider("a", "q", provider)


async def test_a_reply_that_ended_at_a_stop_sequence_before_the_limit_is_whole() -> None:
    config = ar.AgentConfig(mode="tools", stop_sequences=["END"])
    provider = ar.ScriptedProvider([cut("Paris END and more the limit cut")])
    session = await ar.AgentRuntime(config).run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "Paris "


async def test_tool_calls_whose_arguments_arrived_whole_run_despite_the_limit() -> None:
    call = ar.providers.base.ToolCall(id="c1", name="add", arguments={"a": 2, "b": 3})
    provider = ar.ScriptedProvider([cut("", tool_calls=[call]), "done"])
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    session = await rt.run_agent_with_provider("a", "q", provider)
    assert [(s.action, s.observation) for s in session.steps] == [
        ("add", "5"),
        ("FINAL_ANSWER", ""),
    ]
    assert session.final_answer == "done"


async def test_tool_calls_in_a_reply_the_content_filter_stopped_do_not_run() -> None:
    # Whole arguments or not, a reply the provider's safety filter stopped runs nothing.
    ran: list[int] = []

    @ar.tool
    async def record(n: int) -> int:
        """Records n."""
        ran.append(n)
        return n

    call = ar.providers.base.ToolCall(id="c1", name="record", arguments={"n": 1})
    provider = ar.ScriptedProvider([cut("", "content_filter", tool_calls=[call]), "done"])
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[record])
    with pytest.raises(
        ar.AgentLoopError, match=r"content filter.*\) in its tool calls, so the run stops"
    ):
        await rt.run_agent_with_provider("a", "q", provider)
    assert ran == []


async def test_a_react_step_the_content_filter_stopped_is_not_acted_on_even_if_whole() -> None:
    # The step ended before the cut (the model went on past its action): with a token limit
    # it runs, but not in a reply the safety filter stopped.
    reply = 'Thought: t\nAction: add {"a": 2, "b": 3}\nObservation: 5\nThought: then'
    for reason, runs in (("length", True), ("content_filter", False)):
        provider = ar.ScriptedProvider([cut(reply, reason), FINAL])
        rt = ar.AgentRuntime(tools=[add])
        if runs:
            session = await rt.run_agent_with_provider("a", "q", provider)
            assert [s.observation for s in session.steps][:1] == ["5"]
        else:
            with pytest.raises(ar.AgentLoopError, match=r"content filter.*the input of 'add'"):
                await rt.run_agent_with_provider("a", "q", provider)
            assert rt.metrics.snapshot().tool_calls == {}


@pytest.mark.parametrize("reason", ["content_filter", "refusal"])
@pytest.mark.parametrize("stops", [[], ["Observation:"]], ids=["no-stops", "stops"])
async def test_nothing_in_a_reply_a_safety_stop_ended_runs_even_past_a_stop_sequence(
    reason: str, stops: list[str]
) -> None:
    # A stop sequence in the text made the reply pass for whole, and its step ran; a
    # refusal (Anthropic's safety stop) was not looked at at all.
    ran: list[int] = []

    @ar.tool
    async def record(n: int) -> int:
        """Records n."""
        ran.append(n)
        return n

    react_reply = 'Thought: t\nAction: record {"n": 1}\nObservation: 1\nThought: then'
    config = ar.AgentConfig(stop_sequences=stops)
    provider = ar.ScriptedProvider([cut(react_reply, reason), FINAL])
    with pytest.raises(ar.AgentLoopError, match=reason):
        await ar.AgentRuntime(config, tools=[record]).run_agent_with_provider("a", "q", provider)
    call = ar.providers.base.ToolCall(id="c1", name="record", arguments={"n": 2})
    text = "Observation: calling" if stops else ""
    tools_config = ar.AgentConfig(mode="tools", stop_sequences=stops)
    provider = ar.ScriptedProvider([cut(text, reason, tool_calls=[call]), "done"])
    with pytest.raises(ar.AgentLoopError, match="its tool calls"):
        rt = ar.AgentRuntime(tools_config, tools=[record])
        await rt.run_agent_with_provider("a", "q", provider)
    assert ran == []


async def test_a_refusal_is_no_final_answer_and_the_error_quotes_it() -> None:
    refusal = "I'm sorry, I can't help with that."
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    with pytest.raises(ar.AgentLoopError, match=r"declined to answer.*can't help") as raised:
        await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([cut(refusal, "refusal")]))
    assert "its final answer" in str(raised.value)


@pytest.mark.parametrize(
    ("reply", "what"),
    [
        ("Thought: t\nAction: FINAL_ANSWER The capital is Pa", "its final answer"),
        ('Thought: t\nAction: add {"a": 2, "b": 3', "the input of 'add'"),
        ("Thought: I will first", "its ReAct step"),
    ],
)
async def test_a_react_reply_cut_at_the_token_limit_is_not_acted_on(reply: str, what: str) -> None:
    # Even with a corrective re-prompt on: the next reply would be cut off too.
    config = ar.AgentConfig(corrective_reprompt=True)
    provider = ar.ScriptedProvider([cut(reply, "max_tokens"), FINAL])
    rt = ar.AgentRuntime(config, tools=[add])
    with pytest.raises(ar.AgentLoopError, match=f"token limit.*{what}"):
        await rt.run_agent_with_provider("a", "q", provider)
    assert provider.calls == 1


async def test_a_react_step_that_ends_before_the_cut_is_acted_on() -> None:
    # The model went on inventing an Observation until the limit: its step is whole.
    invented = 'Thought: add\nAction: add {"a": 2, "b": 3}\nObservation: 999\nThought: so I'
    provider = ar.ScriptedProvider([cut(invented), FINAL])
    session = await ar.AgentRuntime(tools=[add]).run_agent_with_provider("a", "q", provider)
    assert [s.observation for s in session.steps] == ["5", ""]
    assert session.final_answer == "ok"


async def test_a_text_provider_with_complete_alone_still_runs_react() -> None:
    class CompleteOnly:
        async def complete(self, prompt: str, model: str | None = None) -> str:
            return FINAL

    session = await ar.AgentRuntime().run_agent_with_provider("a", "q", CompleteOnly())  # type: ignore[arg-type]
    assert session.final_answer == "ok"


# ------------------------------------------------------------------ what a provider is sent
class Recording:
    """A provider that answers from a script and keeps what each call was sent."""

    def __init__(
        self, *replies: ar.providers.base.ChatResponse | str, fail_at: int | None = None
    ) -> None:
        self.replies = list(replies)
        self.fail_at = fail_at
        """The call (0, 1, ...) that fails (once)."""
        self.calls: list[tuple[str, list[ar.providers.base.Message], dict[str, Any]]] = []

    def _next(self, how: str, messages: Any, params: dict[str, Any]) -> Any:
        self.calls.append((how, list(messages), params))
        if len(self.calls) - 1 == self.fail_at:
            raise ar.ProviderError("down", status=500)
        reply = self.replies.pop(0)
        return ar.providers.base.ChatResponse(text=reply) if isinstance(reply, str) else reply

    async def complete(self, prompt: str, model: str | None = None) -> str:
        raise AssertionError("chat is used")

    async def stream(self, prompt: str, model: str | None = None) -> Any:
        raise AssertionError("chat_stream is used")
        yield ""

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        return self._next("chat", messages, params)

    async def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        response = self._next("chat_stream", messages, params)
        if response.text:
            yield ar.providers.base.TextDelta(response.text)
        yield ar.providers.base.StreamEnd(response)


PARAMS = {"temperature": 0, "max_completion_tokens": 2048}


@pytest.mark.parametrize(
    ("mode", "streaming"), [("react", False), ("tools", False), ("tools", True)]
)
async def test_model_params_reach_every_provider_call(mode: str, streaming: bool) -> None:
    config = ar.AgentConfig(
        mode=mode,  # type: ignore[arg-type]
        model="m",
        stop_sequences=["END"],
        model_params=PARAMS,
    )
    provider = Recording(
        ADD if mode == "react" else tool_reply(("c1", "add", {"a": 2, "b": 3})), FINAL
    )
    runtime = ar.AgentRuntime(config, tools=[add])
    if streaming:
        runtime.events.on(lambda event: None)
    session = await runtime.run_agent_with_provider("a", "q", provider)  # type: ignore[arg-type]
    assert session.step_count == 2
    expected = {"model": "m", "stop": ["END"], **PARAMS}
    how = "chat_stream" if streaming else "chat"
    assert [(c[0], c[2]) for c in provider.calls] == [(how, expected)] * 2
    # The same in a multi-turn session's turn.
    provider = Recording(FINAL)
    await runtime.run_turn(runtime.create_session("a"), "again", provider)  # type: ignore[arg-type]
    assert provider.calls[0][2] == expected


async def test_model_params_without_them_the_call_is_as_before() -> None:
    provider = Recording(FINAL)
    await ar.AgentRuntime(ar.AgentConfig(mode="tools")).run_agent_with_provider("a", "q", provider)  # type: ignore[arg-type]
    assert provider.calls[0][2] == {"model": None}


async def test_model_params_need_a_provider_with_chat() -> None:
    class CompleteOnly:
        async def complete(self, prompt: str, model: str | None = None) -> str:
            return FINAL

    runtime = ar.AgentRuntime(ar.AgentConfig(model_params={"temperature": 0}))
    with pytest.raises(ar.AgentRuntimeError, match="model_params need a provider with a chat"):
        await runtime.run_agent_with_provider("a", "q", CompleteOnly())  # type: ignore[arg-type]


def tool_reply(*calls: tuple[str, str, dict[str, Any]], **fields: Any) -> Any:
    tool_calls = [ar.providers.base.ToolCall(id=i, name=n, arguments=a) for i, n, a in calls]
    return ar.providers.base.ChatResponse(tool_calls=tool_calls, stop_reason="tool_calls", **fields)


@ar.tool
def fails(x: str) -> str:
    """Fails."""
    raise RuntimeError("kaput")


THINKING = {"type": "thinking", "thinking": "add them", "signature": "sig"}


@pytest.mark.parametrize("streaming", [False, True])
async def test_the_tool_loop_sends_reasoning_and_failures_back(streaming: bool) -> None:
    provider = Recording(
        tool_reply(
            ("c1", "add", {"a": 2, "b": 3}), ("c2", "fails", {"x": "y"}), reasoning=[THINKING]
        ),
        tool_reply(("c3", "add", {"a": 1, "b": 1})),
        "done",
    )
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add, fails])
    if streaming:
        runtime.events.on(lambda event: None)
    session = await runtime.run_agent_with_provider("a", "q", provider)  # type: ignore[arg-type]
    assert session.final_answer == "done"
    sent = provider.calls[-1][1]
    assistants = [m for m in sent if m.role == "assistant"]
    assert [list(m.reasoning) for m in assistants] == [[THINKING], []]
    results = [(m.tool_call_id, m.is_error) for m in sent if m.role == "tool"]
    assert results == [("c1", False), ("c2", True), ("c3", False)]


def conversation(messages: list[ar.providers.base.Message]) -> list[tuple[Any, ...]]:
    return [
        (
            m.role,
            m.content,
            [(c.id, c.name, c.arguments) for c in m.tool_calls],
            m.tool_call_id,
            list(m.reasoning),
            m.is_error,
        )
        for m in messages
    ]


hung: list[int] = []


@ar.tool(idempotent=True)
async def hangs_once(a: int, b: int) -> int:
    """Adds, the first time only after a long while."""
    if not hung:
        hung.append(1)
        await asyncio.sleep(30)
    return a + b


@pytest.mark.parametrize("where", ["after the round", "during the round"])
async def test_a_resumed_tool_loop_sends_what_the_run_would_have(where: str) -> None:
    hung.clear()
    first_tool = "hangs_once" if where == "during the round" else "add"
    first = tool_reply(
        ("c1", first_tool, {"a": 2, "b": 3}), ("c2", "fails", {"x": "y"}), reasoning=[THINKING]
    )
    config = ar.AgentConfig(
        mode="tools",
        loop_timeout_ms=300 if where == "during the round" else None,
        model_params=PARAMS,
    )
    backend = ar.InMemoryBackend()
    tools = [add, fails, hangs_once]
    provider = Recording(first, "done", fail_at=1 if where == "after the round" else None)
    runtime = ar.AgentRuntime(config, tools=tools, checkpoint_backend=backend)
    session = runtime.create_session("a")
    with pytest.raises((ar.ProviderError, ar.AgentLoopError)):
        await runtime.run_agent_with_provider("a", "q", provider, session=session)  # type: ignore[arg-type]
    resumed = ar.AgentRuntime(config, tools=tools, checkpoint_backend=backend)
    done = await resumed.resume(session.session_id, provider)  # type: ignore[arg-type]
    assert done.final_answer == "done"
    assert provider.calls[-1][2] == {"model": None, **PARAMS}
    sent = conversation(provider.calls[-1][1])
    assert sent[2] == (
        "assistant",
        "",
        [("c1", first_tool, {"a": 2, "b": 3}), ("c2", "fails", {"x": "y"})],
        None,
        [THINKING],
        False,
    )
    assert [(s[3], s[5]) for s in sent[3:]] == [("c1", False), ("c2", True)]
    if where == "after the round":  # the failed call's request, sent again as it was
        assert sent == conversation(provider.calls[1][1])


# ------------------------------------------------------------------ rounds and usage
@pytest.mark.parametrize("durable", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize(
    "capabilities",
    [ar.CapabilitySet(allowed_tools=["transfer"]), ar.CapabilitySet(max_actions=1)],
    ids=["tool not allowed", "max_actions"],
)
async def test_a_round_a_capability_refuses_starts_no_call(
    capabilities: ar.CapabilitySet, durable: bool
) -> None:
    log: list[str] = []

    @ar.tool
    async def transfer(account: str) -> str:
        """Transfers."""
        log.append("debit " + account)
        await asyncio.sleep(0.01)
        log.append("credit " + account)
        return "ok"

    @ar.tool
    async def delete() -> str:
        """Deletes."""
        return "deleted"

    backend = ar.InMemoryBackend() if durable else None
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[transfer, delete],
        capabilities=capabilities,
        checkpoint_backend=backend,
    )
    events: list[ar.Event] = []
    rt.events.on(events.append)
    second = ("delete", {}) if capabilities.max_actions is None else ("transfer", {"account": "B"})
    round_ = ar.ScriptedProvider.tool_call_reply([("transfer", {"account": "A"}), second])
    with pytest.raises(ar.PolicyDeniedError):
        await rt.run_agent_with_provider("a", "go", ar.ScriptedProvider([round_, "done"]))
    assert log == []  # no call started, so none was cut off half done
    assert not [e for e in events if isinstance(e, ar.ToolCallStarted)]
    assert rt.metrics.snapshot().total_tool_calls == 0
    assert capabilities.actions_taken == 0  # the refused round used none of the limit
    if backend is not None:  # and none was journaled: only the round's reply (for a resume)
        from llm_agent_runtime.persistence.codec import decode

        keys = [k for k in await backend.list_keys() if ":call:" in k]
        assert len(keys) == 1 and keys[0].endswith(":call:1:0")
        assert decode(await backend.load(keys[0]), keys[0], "call")["state"] == "received"


async def test_a_denied_call_of_a_parallel_round_leaves_the_others_to_run() -> None:
    ran: list[int] = []

    @ar.tool
    async def pay(amount: int) -> str:
        """Pays."""
        ran.append(amount)
        return "paid"

    def handler(session: ar.AgentSession, tool: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("deny" if arguments["amount"] > 10 else "approve")

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[pay], approval_handler=handler)
    round_ = ar.ScriptedProvider.tool_call_reply([("pay", {"amount": 5}), ("pay", {"amount": 50})])
    session = await rt.run_agent_with_provider("a", "go", ar.ScriptedProvider([round_, "done"]))
    assert ran == [5]
    assert [s.error_kind for s in session.steps] == [None, "permanent", None]
    snapshot = rt.metrics.snapshot()
    assert snapshot.total_tool_calls == 2 and snapshot.failed_tool_calls == 1


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_providers_usage_is_charged_in_both_modes(mode: str) -> None:
    text = "Thought: t\nAction: FINAL_ANSWER 42" if mode == "react" else "42"
    usage = ar.providers.base.Usage(input_tokens=5000, output_tokens=700)
    reply = ar.providers.base.ChatResponse(text=text, usage=usage, stop_reason="stop")
    budget = ar.CostBudget(max_tokens=100_000)
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode), budget=budget)  # type: ignore[arg-type]
    session = await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([reply]))
    step = session.steps[0]
    assert (step.input_tokens, step.output_tokens) == (5000, 700)
    snapshot = rt.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (5000, 700)
    assert budget.used_tokens == 5700


async def test_react_tokens_are_estimated_without_a_providers_usage() -> None:
    reply = "Thought: t\nAction: FINAL_ANSWER 42"
    silent = ar.providers.base.ChatResponse(text=reply)  # a provider that reports no usage
    for model in (react(reply), ar.ScriptedProvider([silent])):
        rt = ar.AgentRuntime()
        if isinstance(model, ar.ScriptedProvider):
            session = await rt.run_agent_with_provider("a", "q", model)
        else:
            session = await rt.run_agent("a", "q", model)
        step = session.steps[0]
        assert step.output_tokens == -(-len(reply) // 4) and step.input_tokens > 0  # rounded up
        assert rt.metrics.snapshot().output_tokens == -(-len(reply) // 4)


# ------------------------------------------------------------------ providers of few methods
class ChatOnly:
    """A provider with `chat` alone: native tool calls need no more."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        return self.replies.pop(0)


async def test_a_provider_without_chat_stream_runs_with_listeners_and_checkpoints() -> None:
    # A listener (or a checkpoint backend's event log) used to ask it for a stream: a raw
    # AttributeError. Its text is now one delta, as for a provider whose text exists whole.
    calls = [ar.providers.base.ToolCall(id="c1", name="add", arguments={"a": 2, "b": 3})]
    provider = ChatOnly(
        ar.providers.base.ChatResponse(tool_calls=calls),
        ar.providers.base.ChatResponse(text="five"),
    )
    config = ar.AgentConfig(mode="tools")
    rt = ar.AgentRuntime(config, tools=[add], checkpoint_backend=ar.InMemoryBackend())
    events: list[ar.Event] = []
    rt.events.on(events.append)
    session = await rt.run_agent_with_provider("a", "2 + 3?", provider)
    assert session.final_answer == "five"
    deltas = [e.text for e in events if isinstance(e, ar.LlmTextDelta)]
    assert deltas == ["five"]


class ListenerFailed(Exception):
    pass


@pytest.mark.parametrize("stops", [[], ["END"]])
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_listener_failing_on_a_delta_leaves_the_call_charged(
    streaming: bool, stops: list[str]
) -> None:
    # Streamed, the deltas went out before the call was charged: a listener that raised on
    # one left metrics and budget as if the call had not been made. With stop sequences, the
    # last delta (the held-back tail) goes out after the stream has ended.
    usage = ar.providers.base.Usage(1000, 500)
    reply = ar.providers.base.ChatResponse(text="The answer is 42.", usage=usage)
    provider = Recording(reply) if streaming else ChatOnly(reply)
    budget = ar.CostBudget(max_tokens=10_000)
    config = ar.AgentConfig(mode="tools", stop_sequences=stops)
    rt = ar.AgentRuntime(config, budget=budget)
    deltas: list[str] = []

    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.LlmTextDelta):
            deltas.append(event.text)
            if event.text.endswith("."):  # the reply's last piece
                raise ListenerFailed

    rt.events.on(listener)
    with pytest.raises(ListenerFailed):
        await rt.run_agent_with_provider("a", "q", provider)  # type: ignore[arg-type]
    snapshot = rt.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 500)
    assert budget.remaining_tokens == 10_000 - 1500
    assert "".join(deltas) == "The answer is 42."
    if streaming:
        assert provider.calls[0][0] == "chat_stream"  # type: ignore[union-attr]


async def test_a_listener_failing_mid_stream_gets_no_further_delta() -> None:
    class Chunked(Recording):
        async def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            response = self._next("chat_stream", messages, params)
            for word in response.text.split(" "):
                yield ar.providers.base.TextDelta(word + " ")
            yield ar.providers.base.StreamEnd(response)

    usage = ar.providers.base.Usage(10, 5)
    provider = Chunked(ar.providers.base.ChatResponse(text="a b c d", usage=usage))
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    deltas: list[str] = []

    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.LlmTextDelta):
            deltas.append(event.text)
            raise ListenerFailed

    rt.events.on(listener)
    with pytest.raises(ListenerFailed):
        await rt.run_agent_with_provider("a", "q", provider)  # type: ignore[arg-type]
    assert deltas == ["a "]  # the stream was read on, to charge the call, quietly
    assert rt.metrics.snapshot().output_tokens == 5
    assert rt.metrics.snapshot().active_sessions == 0


class BrokenStream(ChatOnly):
    """Its `chat` is fine; its `chat_stream` breaks the protocol as `how` says."""

    def __init__(self, how: str) -> None:
        super().__init__(ar.providers.base.ChatResponse(text="ok"))
        self.how = how

    def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        if self.how == "no end":
            return self._events(ar.providers.base.TextDelta("partial"))
        if self.how == "end without response":
            return self._events(ar.providers.base.StreamEnd(None))  # type: ignore[arg-type]
        if self.how == "coroutine":
            return self._coroutine()
        return iter([ar.providers.base.StreamEnd(ar.providers.base.ChatResponse(text="ok"))])

    async def _events(self, *events: Any) -> Any:
        for event in events:
            yield event

    async def _coroutine(self) -> Any:
        return self._events(ar.providers.base.StreamEnd(ar.providers.base.ChatResponse("ok")))


@pytest.mark.parametrize(
    ("how", "error", "message"),
    [
        ("no end", ar.AgentLoopError, "stream ended without a StreamEnd event"),
        ("end without response", ar.AgentLoopError, "StreamEnd must hold a ChatResponse, got None"),
        ("coroutine", ar.AgentRuntimeError, "chat_stream must return an async iterator"),
        ("sync iterator", ar.AgentRuntimeError, "returned list_iterator"),
    ],
)
async def test_a_stream_that_breaks_the_protocol_is_a_clear_error(
    how: str, error: type[Exception], message: str
) -> None:
    # They were a bare TypeError (and a "never awaited" warning), or the base error saying
    # no StreamEnd came when one had: a provider that ran unheard failed once listened to.
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    rt.events.on(lambda event: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(error, match=message):
            await rt.run_agent_with_provider("a", "q", BrokenStream(how))
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert rt.metrics.snapshot().active_sessions == 0


@pytest.mark.parametrize("text", [None, 42, ["x"]])
async def test_tools_mode_refuses_a_reply_text_that_is_not_a_string(text: Any) -> None:
    # It used to be a raw TypeError, or a "final answer" that is a list, saved in a session
    # that could then not be loaded back.
    usage = ar.providers.base.Usage(5, 2)
    with pytest.raises(TypeError, match=r"ChatResponse\.text must be a str"):
        ar.providers.base.ChatResponse(text=text, usage=usage)
    # One changed after its check (as a provider's own subclass or code may): the run checks.
    response = ar.providers.base.ChatResponse(text="", usage=usage)
    object.__setattr__(response, "text", text)
    provider = ChatOnly(response)
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    with pytest.raises(ar.AgentLoopError, match="reply must be a str"):
        await rt.run_agent_with_provider("a", "q", provider)
    assert rt.metrics.snapshot().active_sessions == 0


@pytest.mark.parametrize("mode", ["react", "tools"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stop_reason", ["stop"], "stop_reason must be None or a str, got list"),
        ("usage", None, "usage must be a Usage, got None"),
    ],
)
async def test_a_reply_field_set_wrong_after_its_check_is_refused(
    mode: str, field: str, value: Any, message: str
) -> None:
    # Both were bare errors deep in the loop (an unhashable stop reason looked up in a set,
    # `None.cost_usd`); a stop reason of the wrong type was not refused when built either.
    with pytest.raises(TypeError, match=r"ChatResponse\.stop_reason must be None or a str"):
        ar.providers.base.ChatResponse(text="x", stop_reason=["stop"])  # type: ignore[arg-type]
    text = "Final Answer: done" if mode == "react" else "done"
    response = ar.providers.base.ChatResponse(text=text, stop_reason="stop")
    object.__setattr__(response, field, value)  # as a provider's own code may set it
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    with pytest.raises(ar.AgentLoopError, match=message):
        await rt.run_agent_with_provider("a", "q", ChatOnly(response))
    assert rt.metrics.snapshot().active_sessions == 0


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_chat_that_returns_no_chat_response_is_refused(mode: str) -> None:
    # In ReAct mode it was a raw AttributeError (`dict` has no `text`).
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))  # type: ignore[arg-type]
    with pytest.raises(ar.AgentLoopError, match="must return a ChatResponse, got dict"):
        await rt.run_agent_with_provider("a", "q", ChatOnly({"text": "hi"}))
    assert rt.metrics.snapshot().active_sessions == 0


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_resume_takes_a_provider_with_chat_alone(mode: str) -> None:
    # `run_agent_with_provider` and `run_turn` take it; `resume` wanted every method of
    # `LlmProvider` and called it an `infer` that is not async.
    chat = ar.providers.base.ChatResponse
    if mode == "react":  # a tool step, then a reply the run fails on
        script: Any = ChatOnly(chat(text=ADD), chat(text="gibberish"))
    else:
        script = ChatOnly(tool_reply(("c1", "add", {"a": 2, "b": 3})), {})
    config = ar.AgentConfig(mode=mode)  # type: ignore[arg-type]
    backend = ar.InMemoryBackend()
    rt = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    session = rt.create_session("a")
    with pytest.raises(ar.AgentLoopError):
        await rt.run_agent_with_provider("a", "q", script, session=session)
    resumed = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    reply = FINAL if mode == "react" else "ok"
    done = await resumed.resume(session.session_id, ChatOnly(chat(text=reply)))  # type: ignore[arg-type]
    assert done.final_answer == "ok" and done.steps[0].observation == "5"


async def test_resume_refuses_a_provider_without_the_method_its_mode_calls() -> None:
    class CompleteOnly:
        async def complete(self, prompt: str, model: str | None = None) -> str:
            return "ok"

    backend = ar.InMemoryBackend()
    config = ar.AgentConfig(mode="tools")
    rt = ar.AgentRuntime(config, tools=[add], checkpoint_backend=backend)
    session = rt.create_session("a")
    first = tool_reply(("c1", "add", {"a": 2, "b": 3}))
    with pytest.raises(ar.AgentLoopError):
        await rt.run_agent_with_provider("a", "q", ChatOnly(first, {}), session=session)  # type: ignore[arg-type]
    with pytest.raises(ar.AgentRuntimeError, match="provider must provide chat"):
        await rt.resume(session.session_id, CompleteOnly())  # type: ignore[arg-type]


# ------------------------------------------------------------------ tool exchanges in history
WEATHER = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "weather", "arguments": {"city": "Oslo"}}],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "weather"},
    {"role": "assistant", "content": "It is sunny."},
]


async def test_a_tool_exchange_of_the_history_is_sent_with_its_ids() -> None:
    # Only role and content went: the tool result answered no call, which providers refuse.
    session = ar.AgentSession.from_dict({"session_id": "s", "agent_id": "a", "messages": WEATHER})
    provider = Recording("ok")
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    assert await rt.run_turn(session, "and tomorrow?", provider) == "ok"  # type: ignore[arg-type]
    sent = conversation(provider.calls[0][1])
    assert sent[1:] == [
        ("user", "weather?", [], None, [], False),
        ("assistant", "", [("c1", "weather", {"city": "Oslo"})], None, [], False),
        ("tool", "sunny", [], "c1", [], False),
        ("assistant", "It is sunny.", [], None, [], False),
        ("user", "and tomorrow?", [], None, [], False),
    ]
    assert provider.calls[0][1][3].name == "weather"
    assert session.messages[:4] == WEATHER


async def test_a_tool_exchange_of_the_history_is_shown_to_a_react_model() -> None:
    session = ar.AgentSession("s", "a", messages=[dict(m) for m in WEATHER])
    infer = react(FINAL)
    await ar.AgentRuntime().run_turn(session, "and tomorrow?", infer)
    shown = 'user: weather?\nassistant: Action: weather {"city": "Oslo"}\ntool: sunny\n'
    assert shown + "assistant: It is sunny." in infer.prompts[0]


@pytest.mark.parametrize(
    ("history", "message"),
    [
        (
            [{"role": "user", "content": "weather?"}, {"role": "tool", "content": "sunny"}],
            "session message 2: a tool message needs the 'tool_call_id' of the call it answers",
        ),
        (
            [*WEATHER[:2], {"role": "tool", "content": "sunny", "tool_call_id": "c9"}],
            "session message 3: tool message answers call 'c9', which the assistant message",
        ),
        (
            [*WEATHER[:3], {"role": "tool", "content": "again", "tool_call_id": "c1"}],
            "session message 4: tool message answers call 'c1'",
        ),
        (WEATHER[:2], r"session message 2: its tool call\(s\) 'c1' have no tool message"),
        (
            [*WEATHER[:2], {"role": "user", "content": "hm?"}, WEATHER[2]],
            r"session message 2: its tool call\(s\) 'c1' have no tool message",
        ),
        # Two calls with one id, one answer: it passed, and the provider refused the turn.
        (
            [
                WEATHER[0],
                {**WEATHER[1], "tool_calls": WEATHER[1]["tool_calls"] * 2},
                *WEATHER[2:],
            ],
            "session message 2: two of its tool calls have the id 'c1'",
        ),
        # Arguments a request cannot carry: they passed, and failed in the provider with a
        # bare TypeError or ValueError once the turn had started.
        *(
            (
                [
                    WEATHER[0],
                    {
                        **WEATHER[1],
                        "tool_calls": [{"id": "c1", "name": "weather", "arguments": bad}],
                    },
                    *WEATHER[2:],
                ],
                "session message 2: the arguments of tool call 'c1' are not JSON data",
            )
            for bad in ({"city": {"Oslo"}}, {"t": float("nan")}, {"b": b"x"})
        ),
    ],
)
async def test_a_tool_exchange_a_provider_would_refuse_is_refused_before_the_turn(
    history: list[dict[str, Any]], message: str
) -> None:
    session = ar.AgentSession("s", "a", messages=[dict(m) for m in history])
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    provider = Recording("ok")
    with pytest.raises(ar.AgentRuntimeError, match=message):
        await rt.run_turn(session, "q", provider)  # type: ignore[arg-type]
    assert not provider.calls and not session.steps and len(session.messages) == len(history)
    # A ReAct model is shown such a history as text: a tool message is what it says.
    assert await ar.AgentRuntime().run_turn(session, "q", react(FINAL)) == "ok"


async def test_a_checkpoint_backend_that_is_falsy_while_empty_still_checkpoints() -> None:
    # A backend with `__len__` is falsy while it holds nothing: the runtime took it for no
    # backend at all, saved nothing, and `resume` said there was no backend.
    class CountingBackend(ar.InMemoryBackend):
        def __len__(self) -> int:
            return len(self.data)

    backend = CountingBackend()
    assert not backend
    rt = ar.AgentRuntime(checkpoint_backend=backend)

    async def infer(prompt: str) -> str:
        return "Thought: t\nAction: FINAL_ANSWER 42"

    session = await rt.run_agent("a", "q", infer)
    assert len(backend) > 0
    resumed = await rt.resume(session.session_id, infer)
    assert resumed.final_answer == "42"


def test_the_loops_messages_are_whole_messages() -> None:
    """The loop's fast-built messages (`_loop_message`) equal `Message(...)` field for field:
    a field added to `Message` and not set there fails here, rather than on a provider."""
    from llm_agent_runtime.providers.base import Message, ToolCall, _loop_message

    calls = [ToolCall("c1", "add", {"a": 1})]
    reasoning = ({"type": "thinking", "thinking": "hm", "signature": "s"},)
    assert _loop_message("assistant", "t", calls, None, reasoning) == Message(
        "assistant", "t", calls, None, None, reasoning
    )
    assert _loop_message("tool", "3", [], "c1", (), "add") == Message(
        "tool", "3", None, "c1", "add"
    )
    with pytest.raises(ValueError, match="message role"):
        Message("robot", "x")  # type: ignore[arg-type]


async def test_a_listener_error_is_kept_when_the_stream_then_fails() -> None:
    # The stream read on after a listener failed; when it then failed too, the listener's
    # error vanished (neither raised nor the context of what was).
    class FailsMidStream(Recording):
        async def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            yield ar.providers.base.TextDelta("a ")
            raise ar.ProviderError("connection reset mid-stream", status=502)

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"))

    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.LlmTextDelta):
            raise ListenerFailed

    rt.events.on(listener)
    with pytest.raises(ListenerFailed) as raised:
        await rt.run_agent_with_provider("a", "q", FailsMidStream())  # type: ignore[arg-type]
    assert isinstance(raised.value.__context__, ar.ProviderError)
    assert rt.metrics.snapshot().active_sessions == 0


class _Memory:
    """A memory store of an application's own, telling whether it embeds by a method."""

    def __init__(self, embeds: bool) -> None:
        self.embeds = embeds
        self.calls: list[tuple[Any, ...]] = []

    def has_embedder(self) -> bool:
        return self.embeds

    def recall(self, agent_id: str, limit: int, query: str | None = None) -> list[Any]:
        self.calls.append((agent_id, limit, query))
        return []


@pytest.mark.parametrize("embeds", [False, True])
async def test_a_stores_has_embedder_method_is_asked_not_taken_as_true(embeds: bool) -> None:
    # `has_embedder` as a method (a bound method is always true) was read as "it embeds":
    # a store saying it does not was asked for a recall by similarity it cannot make.
    memory = _Memory(embeds)
    await ar.AgentRuntime(memory=memory).run_agent("a", "q", react(FINAL))
    assert memory.calls == [("a", 3, "q" if embeds else None)]


@pytest.mark.timeout(20)
async def test_a_callbacks_turn_on_another_threads_loop_is_refused_not_left_hanging() -> None:
    # Its waiter was made on the thread's loop and woken from the run's thread, which no
    # loop noticed: both turns hung for good.
    rt = ar.AgentRuntime(checkpoint_backend=_SlowFinal())
    session = rt.create_session("a")
    outcome: list[str] = []

    async def model(prompt: str) -> str:
        return "Thought: t\nAction: FINAL_ANSWER done"

    def on_a_thread() -> str | None:
        return asyncio.run(rt.run_turn(session, "again", model))

    @rt.events.on
    async def next_turn(event: ar.AgentEvent) -> None:
        if isinstance(event, ar.RunFinished) and not outcome:
            try:
                outcome.append(str(await asyncio.to_thread(on_a_thread)))
            except ar.AgentRuntimeError as error:
                outcome.append(str(error))

    assert await rt.run_turn(session, "go", model) == "done"
    assert len(outcome) == 1 and "already running a turn" in outcome[0]


async def test_a_tools_background_task_runs_its_turn_once_the_run_let_go() -> None:
    # A task the run's own code started (here a tool's) that asks for a turn once the run
    # is over waits for it to let go of the session, as any caller on its loop.
    outcome: list[str] = []
    rt = ar.AgentRuntime(checkpoint_backend=_SlowFinal())
    session = rt.create_session("a")

    async def later() -> None:
        while not any(isinstance(e, ar.RunFinished) for e in seen):
            await asyncio.sleep(0.001)
        try:
            outcome.append(str(await rt.run_turn(session, "again", final)))
        except ar.AgentRuntimeError as error:
            outcome.append(str(error))

    @ar.tool
    async def start() -> str:
        """Starts background work."""
        background.append(asyncio.ensure_future(later()))
        return "started"

    background: list[asyncio.Future[None]] = []
    seen: list[ar.AgentEvent] = []
    rt.events.on(seen.append)
    rt.tools.register(start)
    await rt.run_turn(session, "go", react("Thought: s\nAction: start {}", FINAL))
    await asyncio.wait(background)
    assert outcome == ["ok"]
    assert [m["content"] for m in session.messages] == ["go", "ok", "again", "ok"]


async def test_a_reply_that_is_not_text_is_refused_before_it_is_charged_or_shown() -> None:
    # bytes went to listeners as the reply's text, into the metrics as tokens, and into a
    # checkpointed run's event log as "b'...'", a text the model never wrote.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(ar.AgentConfig(), checkpoint_backend=backend)
    seen: list[str] = []
    runtime.events.on(lambda event: seen.append(type(event).__name__))

    async def bytes_reply(prompt: str) -> Any:
        return b"Thought: x\nAction: FINAL_ANSWER 1"

    with pytest.raises(ar.AgentLoopError, match="reply must be a str, got bytes"):
        await runtime.run_agent("a", "q", bytes_reply)
    assert seen == ["RunStarted", "ErrorEvent"]
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (0, 0)
    assert not any(b"LlmResponse" in value for value in backend.data.values())
