"""Resuming a checkpointed run that was cancelled, or cut off by its `loop_timeout_ms`.

A run that fails so has not ended: it saved its completed steps, its journal and the end
record of its time (`session:<id>:ended`), but no final checkpoint. `resume` continues it:
completed steps (and a round's finished calls) are not run again nor asked of the model, the
interrupted step's journaled model reply is reused, and a call that may have run is repeated
only for a tool that is idempotent or takes the key. A lone call of an idempotent tool is not
journaled before it runs, so its step is run again, model reply included. All on SQLite, by
the same runtime or by a new one on the same database.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.base import session_key
from llm_agent_runtime.persistence.codec import decode

from .conftest import cut_off

TIMEOUT_MS = 150
"""The loop timeout that cuts off a run in the "timeout" cases. Only the run being cut off
has it: a resume that is to finish has none, so a busy machine cannot time it out too."""
DONE_REACT = "Thought: done\nAction: FINAL_ANSWER done"


class Tools:
    """Tools that count their calls; `lookup`, `charge` and `send` hold until released."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"add": 0, "lookup": 0, "charge": 0, "send": 0, "price": 0}
        self.keys: list[str] = []
        self.holding = True
        self.started = asyncio.Event()

    async def _hold(self) -> None:
        self.started.set()
        if self.holding:
            await asyncio.Event().wait()

    def specs(self) -> list[ar.ToolSpec]:
        @ar.tool
        async def add(a: int, b: int) -> int:
            """Adds (not idempotent)."""
            self.calls["add"] += 1
            return a + b

        @ar.tool(idempotent=True)
        async def lookup(item: str) -> str:
            """Reads a price (safe to repeat)."""
            self.calls["lookup"] += 1
            await self._hold()
            return f"{item}: 3"

        @ar.tool
        async def charge(amount: int) -> str:
            """Charges a card (not idempotent)."""
            self.calls["charge"] += 1
            await self._hold()
            return "charged"

        @ar.tool
        async def send(text: str, idempotency_key: str) -> str:
            """Sends a message once per key."""
            self.calls["send"] += 1
            self.keys.append(idempotency_key)
            await self._hold()
            return "sent"

        @ar.tool(idempotent=True)
        async def price(item: str) -> str:
            """Reads a price at once (safe to repeat)."""
            self.calls["price"] += 1
            return f"{item}: 3"

        return [add, lookup, charge, send, price]


class Model:
    """A ReAct model (`infer`) giving `replies` in order, counting the prompts it is asked."""

    def __init__(self, *replies: str, hold_at: int | None = None) -> None:
        self.replies = list(replies)
        self.asked = 0
        self.hold_at = hold_at  # the call (0-based) that never returns
        self.waiting = asyncio.Event()

    async def __call__(self, prompt: str) -> str:
        self.asked += 1
        if self.asked - 1 == self.hold_at:
            self.waiting.set()
            await asyncio.Event().wait()
        return self.replies.pop(0)


class HeldProvider(ar.ScriptedProvider):
    """A `ScriptedProvider` whose call number `hold_at` (0-based) never returns."""

    def __init__(self, replies: list[Any], hold_at: int) -> None:
        super().__init__(replies)
        self.hold_at = hold_at
        self.entered = 0
        self.waiting = asyncio.Event()

    async def chat(self, *args: Any, **kwargs: Any) -> ar.ChatResponse:
        self.entered += 1
        if self.entered - 1 == self.hold_at:
            self.waiting.set()
            await asyncio.Event().wait()
        return await super().chat(*args, **kwargs)


def react_step(name: str, arguments: dict[str, Any]) -> str:
    return f"Thought: call {name}\nAction: {name} {json.dumps(arguments)}"


def first_model(mode: str, *calls: tuple[str, dict[str, Any]]) -> Any:
    """A model that adds 1 + 2 (a completed step), then makes `calls` (one step or round)."""
    if mode == "tools":
        return ar.ScriptedProvider(
            [
                ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})]),
                ar.ScriptedProvider.tool_call_reply(list(calls)),
            ]
        )
    [(name, arguments)] = calls
    return Model(react_step("add", {"a": 1, "b": 2}), react_step(name, arguments))


def closing_model(mode: str) -> Any:
    """A model that answers at once: the resume's one model call, when it makes only one."""
    return ar.ScriptedProvider(["done"]) if mode == "tools" else Model(DONE_REACT)


def charge_again_model(mode: str, guarded: bool, charge: tuple[str, dict[str, Any]]) -> Any:
    """The model of a resume of step 2, whose `charge` call never ran: in a guarded run, the
    step's reply is reused and the model asked for the answer alone; else the step is asked
    of the model again (cut off before its call was journaled)."""
    if guarded:
        return closing_model(mode)
    if mode == "tools":
        return ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply([charge]), "done"])
    return Model(react_step(*charge), DONE_REACT)


def model_calls(model: Any) -> int:
    return model.calls if isinstance(model, ar.ScriptedProvider) else model.asked


class Setup:
    def __init__(self, mode: str, how: str, open_backend: Callable[[], ar.SqliteBackend]) -> None:
        self.mode, self.how, self.open_backend = mode, how, open_backend
        self.tools = Tools()
        self.runtime = self.make_runtime()

    @property
    def cut_timeout(self) -> int | None:
        """The loop timeout of a run to be cut off: None when it is cancelled instead."""
        return TIMEOUT_MS if self.how == "timeout" else None

    def make_runtime(self, timeout_ms: int | None = None) -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode=self.mode, loop_timeout_ms=timeout_ms),
            tools=self.tools.specs(),
            checkpoint_backend=self.open_backend(),
        )

    def resumer(self, fresh: bool) -> ar.AgentRuntime:
        return self.make_runtime() if fresh else self.runtime

    async def round_call_done(self, session_id: str) -> None:
        """Until a tool holds and call 0 of the round (step 2) is journaled as done.

        The calls of a round start as their intents are written, in whatever order those
        writes land: the held call may start before call 0 has run.
        """
        await self.tools.started.wait()
        backend = self.open_backend()
        key = f"{session_key(session_id)}:call:2:0"
        while (raw := await backend.load(key)) is None or (
            decode(raw, key, "call").get("state") != "done"
        ):
            await asyncio.sleep(0.001)

    async def interrupt(
        self, run: Awaitable[Any], reached: Callable[[], Awaitable[Any]] | None = None
    ) -> None:
        """Cancels `run` once `reached()` ends (a tool started, by default), or lets it time
        out: a run of `self.runtime` (or of a runtime made with `cut_timeout`)."""
        if self.how == "timeout":
            self.runtime.config = ar.AgentConfig(mode=self.mode, loop_timeout_ms=TIMEOUT_MS)
            try:
                with pytest.raises(ar.AgentLoopError, match=f"timed out after {TIMEOUT_MS} ms"):
                    await run
            finally:
                self.runtime.config = ar.AgentConfig(mode=self.mode)
        else:
            task = asyncio.ensure_future(run)
            await (reached or self.tools.started.wait)()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        self.tools.holding = False
        self.tools.started.clear()


def kept(session: ar.AgentSession) -> list[tuple[str, str, str | None]]:
    return [(s.action, s.observation, s.error_kind) for s in session.steps]


MODES = pytest.mark.parametrize("mode", ["react", "tools"])
HOW = pytest.mark.parametrize("how", ["cancel", "timeout"])
FRESH = pytest.mark.parametrize("fresh", [False, True], ids=["same runtime", "new runtime"])
ADDED = ("add", "3", None)
ANSWERED = ("FINAL_ANSWER", "", None)


# --- the run has not ended: it is saved as interrupted --------------------------------------


@MODES
@HOW
async def test_an_interrupted_run_is_saved_unfinished_with_its_completed_steps(
    mode: str, how: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, how, open_backend)
    session = setup.runtime.create_session("a")
    model = first_model(mode, ("charge", {"amount": 5}))
    await setup.interrupt(setup.runtime.run_turn(session, "q", model))
    saved = await ar.AgentSession.load_checkpoint(open_backend(), session.session_id)
    assert kept(saved) == [ADDED]  # the cut-off step is in the journal, not a step
    assert saved.final_answer is None and saved.messages == []
    assert saved.duration_ms == session.duration_ms > 0  # the `ended` record: its time
    events = [e["type"] for e in await setup.runtime.session_events(session.session_id)]
    assert events[0] == "RunStarted" and events[-1] == "ErrorEvent"
    assert "RunFinished" not in events


# --- resumed: nothing done is done again ----------------------------------------------------


@MODES
@HOW
@FRESH
async def test_a_call_that_may_have_run_reuses_the_reply_and_repeats_only_a_keyed_tool(
    mode: str, how: str, fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, how, open_backend)
    session = setup.runtime.create_session("a")
    model = first_model(mode, ("send", {"text": "hi"}))
    await setup.interrupt(setup.runtime.run_turn(session, "q", model))
    assert model_calls(model) == 2
    closing = closing_model(mode)
    resumed = await setup.resumer(fresh).resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ("send", "sent", None), ANSWERED]
    assert resumed.final_answer == "done"
    assert resumed.messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "done"},
    ]
    # The journaled reply of step 2 is reused: the model is asked for step 3 alone.
    assert model_calls(closing) == 1
    # The completed add is not run again; the send is repeated under the same key.
    assert setup.tools.calls["add"] == 1
    assert setup.tools.calls["send"] == 2 and len(set(setup.tools.keys)) == 1
    assert await ar.AgentSession.load_checkpoint(open_backend(), session.session_id) == resumed
    events = [e["type"] for e in await setup.runtime.session_events(session.session_id)]
    resumed_events = events[events.index("ErrorEvent") + 1 :]
    assert resumed_events == [
        "RunStarted",
        "ToolCallStarted",  # the repeated send, with no LlmResponse before it
        "ToolCallFinished",
        "LlmResponse",
        "RunFinished",
    ]


@MODES
@HOW
@FRESH
async def test_a_call_that_may_have_run_of_an_unsafe_tool_is_refused_then_settled(
    mode: str, how: str, fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, how, open_backend)
    session = setup.runtime.create_session("a")
    model = first_model(mode, ("charge", {"amount": 5}))
    await setup.interrupt(setup.runtime.run_turn(session, "q", model))
    resumer = setup.resumer(fresh)
    refused = closing_model(mode)
    with pytest.raises(ar.ToolError, match=r"'charge' \(step 2, call 0"):
        await resumer.resume(session.session_id, refused)
    assert model_calls(refused) == 0 and setup.tools.calls["charge"] == 1
    await resumer.settle_call(session.session_id, 2, 0, "charged (checked)")
    closing = closing_model(mode)
    resumed = await resumer.resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ("charge", "charged (checked)", None), ANSWERED]
    assert model_calls(closing) == 1
    assert setup.tools.calls == {"add": 1, "lookup": 0, "charge": 1, "send": 0, "price": 0}


@MODES
@HOW
@FRESH
async def test_a_lone_idempotent_call_is_run_again_with_its_step_model_reply_included(
    mode: str, how: str, fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # Such a call is not journaled before it runs (see `ToolSpec`'s `idempotent`): its step
    # is asked of the model again, and the tool runs again if the model calls it again.
    setup = Setup(mode, how, open_backend)
    session = setup.runtime.create_session("a")
    model = first_model(mode, ("lookup", {"item": "x"}))
    await setup.interrupt(setup.runtime.run_turn(session, "q", model))
    if mode == "tools":
        again = ar.ScriptedProvider(
            [ar.ScriptedProvider.tool_call_reply([("lookup", {"item": "x"})]), "done"]
        )
    else:
        again = Model(react_step("lookup", {"item": "x"}), DONE_REACT)
    resumed = await setup.resumer(fresh).resume(session.session_id, again)
    assert kept(resumed) == [ADDED, ("lookup", "x: 3", None), ANSWERED]
    assert model_calls(again) == 2  # step 2 (never saved), then the answer
    assert setup.tools.calls["add"] == 1 and setup.tools.calls["lookup"] == 2


@HOW
@FRESH
async def test_a_round_keeps_its_finished_calls_and_repeats_the_cut_off_idempotent_one(
    how: str, fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup("tools", how, open_backend)
    session = setup.runtime.create_session("a")
    model = first_model("tools", ("add", {"a": 2, "b": 2}), ("lookup", {"item": "x"}))
    run = setup.runtime.run_turn(session, "q", model)
    await setup.interrupt(run, lambda: setup.round_call_done(session.session_id))
    closing = closing_model("tools")
    resumed = await setup.resumer(fresh).resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ("add", "4", None), ("lookup", "x: 3", None), ANSWERED]
    assert model_calls(closing) == 1  # the round's reply is reused
    assert setup.tools.calls["add"] == 2  # step 1's and the round's, each once
    assert setup.tools.calls["lookup"] == 2


@HOW
async def test_a_round_with_a_cut_off_unsafe_call_refuses_without_running_the_finished_one(
    how: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup("tools", how, open_backend)
    session = setup.runtime.create_session("a")
    model = first_model("tools", ("add", {"a": 2, "b": 2}), ("charge", {"amount": 5}))
    run = setup.runtime.run_turn(session, "q", model)
    await setup.interrupt(run, lambda: setup.round_call_done(session.session_id))
    with pytest.raises(ar.ToolError, match=r"'charge' \(step 2, call 1"):
        await setup.make_runtime().resume(session.session_id, closing_model("tools"))
    assert setup.tools.calls == {"add": 2, "lookup": 0, "charge": 1, "send": 0, "price": 0}


# --- cut off while the model is asked --------------------------------------------------------


@MODES
@FRESH
async def test_cancelled_while_the_model_is_asked_resume_asks_for_that_step_alone(
    mode: str, fresh: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, "cancel", open_backend)
    session = setup.runtime.create_session("a")
    model: HeldProvider | Model
    if mode == "tools":
        add = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
        model = HeldProvider([add], hold_at=1)
    else:
        model = Model(react_step("add", {"a": 1, "b": 2}), hold_at=1)
    await setup.interrupt(setup.runtime.run_turn(session, "q", model), model.waiting.wait)
    saved = await ar.AgentSession.load_checkpoint(open_backend(), session.session_id)
    assert kept(saved) == [ADDED] and saved.final_answer is None
    closing = closing_model(mode)
    resumed = await setup.resumer(fresh).resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ANSWERED] and resumed.final_answer == "done"
    assert model_calls(closing) == 1 and setup.tools.calls["add"] == 1


@MODES
async def test_cancelled_before_its_first_step_the_run_is_resumed_from_its_start(
    mode: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, "cancel", open_backend)
    session = setup.runtime.create_session("a")
    model = HeldProvider([], hold_at=0) if mode == "tools" else Model(hold_at=0)
    await setup.interrupt(setup.runtime.run_turn(session, "q", model), model.waiting.wait)
    closing = closing_model(mode)
    resumed = await setup.make_runtime().resume(session.session_id, closing)
    assert kept(resumed) == [ANSWERED] and resumed.final_answer == "done"
    assert model_calls(closing) == 1


@MODES
async def test_timed_out_while_the_model_is_asked_resume_asks_for_that_step_alone(
    mode: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, "timeout", open_backend)
    session = setup.runtime.create_session("a")
    model: HeldProvider | Model
    if mode == "tools":
        add = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
        model = HeldProvider([add], hold_at=1)
    else:
        model = Model(react_step("add", {"a": 1, "b": 2}), hold_at=1)
    await setup.interrupt(setup.runtime.run_turn(session, "q", model))
    closing = closing_model(mode)
    resumed = await setup.make_runtime().resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ANSWERED]
    assert model_calls(closing) == 1 and setup.tools.calls["add"] == 1


# --- a later turn; a resume cut off in turn; a finished run ---------------------------------


@MODES
@HOW
async def test_an_interrupted_later_turn_is_resumed_as_that_turn_even_when_cut_off_twice(
    mode: str, how: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    setup = Setup(mode, how, open_backend)
    session = setup.runtime.create_session("a")
    if mode == "tools":
        first_turn = ar.ScriptedProvider(
            [ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})]), "one"]
        )
    else:
        first_turn = Model(react_step("add", {"a": 1, "b": 2}), DONE_REACT.replace("done", "one"))
    assert await setup.runtime.run_turn(session, "q1", first_turn) == "one"
    setup.tools.holding = True
    model = first_model(mode, ("send", {"text": "hi"}))
    await setup.interrupt(setup.runtime.run_turn(session, "q2", model))
    saved = await ar.AgentSession.load_checkpoint(open_backend(), session.session_id)
    assert kept(saved) == [ADDED, ANSWERED, ADDED] and saved.final_answer is None
    assert saved.messages == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "one"},
    ]
    # The resume is cut off as well, in the same call: the run is still resumable.
    setup.tools.holding = True
    unused = closing_model(mode)
    cut_again = setup.make_runtime(setup.cut_timeout)
    await setup.interrupt(cut_again.resume(session.session_id, unused))
    assert model_calls(unused) == 0
    closing = closing_model(mode)
    resumed = await setup.make_runtime().resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ANSWERED, ADDED, ("send", "sent", None), ANSWERED]
    assert resumed.final_answer == "done"
    assert resumed.messages == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "done"},
    ]
    assert model_calls(closing) == 1
    assert setup.tools.calls["add"] == 2  # once a turn
    assert setup.tools.calls["send"] == 3 and len(set(setup.tools.keys)) == 1
    # Ended now: a resume returns it as saved, asking nothing of the model.
    untouched = closing_model(mode)
    again = await setup.make_runtime().resume(session.session_id, untouched)
    assert again == resumed and model_calls(untouched) == 0
    events = [e["type"] for e in await setup.runtime.session_events(session.session_id)]
    assert events.count("RunStarted") == 4 and events.count("RunFinished") == 2
    assert events.count("ErrorEvent") == 2 and events[-1] == "RunFinished"


SLOW_WRITE_TIMEOUT_MS = 600
"""The loop timeout of a run cut off while `SlowResultWrites` holds a write: the run must
reach that write first, which a busy machine may take more than `TIMEOUT_MS` to do (the test
then waited for it forever)."""


class SlowResultWrites(ar.SqliteBackend):
    """SQLite on which the first write of a tool call's result takes `HOLD` seconds to start
    (a database another process keeps locked, say)."""

    HOLD = (SLOW_WRITE_TIMEOUT_MS + 60) / 1000

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reached = asyncio.Event()

    async def save(self, key: str, value: bytes) -> None:
        done = ":call:" in key and decode(value, key, "call").get("state") == "done"
        if done and not self.reached.is_set():
            self.reached.set()
            await asyncio.sleep(self.HOLD)
        await super().save(key, value)


@HOW
@pytest.mark.parametrize("finished", ["add", "price"])
async def test_a_round_cut_off_while_a_finished_call_is_journaled_keeps_its_result(
    how: str, finished: str, tmp_path: Path, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # The round's first call has run; its result is being written when the run is cancelled
    # (or times out) while the second call runs. The result still lands: a resume neither
    # refuses the call (`add`, not idempotent) nor runs it again (`price`, idempotent).
    setup = Setup("tools", how, open_backend)
    backend = SlowResultWrites(tmp_path / "store.db")
    timeout = SLOW_WRITE_TIMEOUT_MS if how == "timeout" else None
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", loop_timeout_ms=timeout),
        tools=setup.tools.specs(),
        checkpoint_backend=backend,
    )
    try:
        session = runtime.create_session("a")
        arguments = {"a": 2, "b": 2} if finished == "add" else {"item": "x"}
        model = first_model("tools", (finished, arguments), ("send", {"text": "hi"}))
        task = asyncio.ensure_future(runtime.run_turn(session, "q", model))
        await backend.reached.wait()
        await setup.tools.started.wait()  # both: the result is on its way, the send runs
        await cut_off(task, how)
    finally:
        backend.close()
    setup.tools.holding = False
    closing = closing_model("tools")
    resumed = await setup.make_runtime().resume(session.session_id, closing)
    observation = "4" if finished == "add" else "x: 3"
    assert kept(resumed) == [ADDED, (finished, observation, None), ("send", "sent", None), ANSWERED]
    assert model_calls(closing) == 1
    assert setup.tools.calls[finished] == (2 if finished == "add" else 1)  # step 1 adds too
    assert setup.tools.calls["send"] == 2 and len(set(setup.tools.keys)) == 1


class IntentLandsThenHangs(ar.SqliteBackend):
    """SQLite on which the intent of a tool call of step 2 lands, and then its write never
    returns (its reply lost on the way, say): the run is cut off there, the call not run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reached = asyncio.Event()

    async def _hang_once_an_intent_landed(self, items: Mapping[str, bytes]) -> None:
        if not self.reached.is_set() and any(
            ":call:2:" in key and decode(value, key, "call").get("state") == "intent"
            for key, value in items.items()
        ):
            self.reached.set()
            await asyncio.Event().wait()

    async def save_new(self, key: str, value: bytes) -> bool:
        written = await super().save_new(key, value)
        await self._hang_once_an_intent_landed({key: value})
        return written

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:  # the intent that replaces the step's reply entry (a guarded run)
        written = await super().batch_save_if(guard_key, guard_value, items)
        await self._hang_once_an_intent_landed(items)
        return written


@MODES
@HOW
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "approved"])
async def test_a_call_cut_off_as_its_intent_lands_is_not_refused_as_one_that_may_have_run(
    mode: str, how: str, guarded: bool, tmp_path: Path, open_backend: Callable[[], Any]
) -> None:
    # The call had not run: its intent is taken back, so a resume neither refuses it (`charge`
    # is not idempotent) nor needs it settled by hand. The key gets back what it held: in a
    # guarded run, the step's reply (reused, its guards asked again); else nothing (the step
    # is asked of the model again, as one cut off before its call was journaled).
    setup = Setup(mode, how, open_backend)
    asked: list[Any] = []

    def approve(session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(arguments)
        return ar.ApprovalDecision("approve")

    def runtime(backend: ar.SqliteBackend, timeout: int | None = None) -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode=mode, loop_timeout_ms=timeout),
            tools=setup.tools.specs(),
            checkpoint_backend=backend,
            approval_handler=approve if guarded else None,
        )

    backend = IntentLandsThenHangs(tmp_path / "store.db")
    try:
        first = runtime(backend, TIMEOUT_MS if how == "timeout" else None)
        session = first.create_session("a")
        charge = ("charge", {"amount": 5})
        task = asyncio.ensure_future(first.run_turn(session, "q", first_model(mode, charge)))
        await cut_off(task, how, backend.reached)
    finally:
        backend.close()
    assert setup.tools.calls["charge"] == 0
    setup.tools.holding = False
    closing = charge_again_model(mode, guarded, charge)
    resumed = await runtime(open_backend()).resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ("charge", "charged", None), ANSWERED]
    assert model_calls(closing) == (1 if guarded else 2)
    assert setup.tools.calls == {"add": 1, "lookup": 0, "charge": 1, "send": 0, "price": 0}
    # The charge is approved again on resume: the entry given back is the step's reply, as
    # journaled before its guards decided (a run cut off while they decide is resumed so).
    assert asked == ([{"a": 1, "b": 2}, {"amount": 5}, {"amount": 5}] if guarded else [])


class ListenerFailed(Exception):
    """What a listener of `stopped_at_start` raises."""


async def stopped_at_start(
    runtime: ar.AgentRuntime, run: Awaitable[Any], stop: str, tool: str | None = None
) -> None:
    """Runs `run`, a run of `runtime`, stopped at the `ToolCallStarted` of `tool` (of any tool
    but `add`, by default): cancelled there (a Ctrl-C at that moment), or failed by the
    listener (`stop`)."""
    task = asyncio.ensure_future(run)

    def stop_there(event: Any) -> None:
        if not isinstance(event, ar.ToolCallStarted):
            return
        if event.tool != "add" if tool is None else event.tool == tool:
            if stop == "cancel":
                task.cancel()
            else:
                raise ListenerFailed

    runtime.events.on(stop_there)
    with pytest.raises(asyncio.CancelledError if stop == "cancel" else ListenerFailed):
        await task


@MODES
@pytest.mark.parametrize("stop", ["cancel", "listener error"])
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "approved"])
async def test_a_call_stopped_at_its_start_event_is_not_refused_as_one_that_may_have_run(
    mode: str, stop: str, guarded: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # The call's `ToolCallStarted` listener cancels the run (a Ctrl-C at that moment: the
    # cancellation is delivered before the tool starts) or fails: the call never ran, so its
    # intent is taken back, as that of a call cut off as it was journaled. A resume refused
    # the call (`charge` is not idempotent), to be settled by hand.
    setup = Setup(mode, "cancel", open_backend)
    asked: list[Any] = []

    def approve(session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        asked.append(arguments)
        return ar.ApprovalDecision("approve")

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode=mode),
            tools=setup.tools.specs(),
            checkpoint_backend=open_backend(),
            approval_handler=approve if guarded else None,
        )

    first = runtime()
    session = first.create_session("a")
    charge = ("charge", {"amount": 5})
    await stopped_at_start(first, first.run_turn(session, "q", first_model(mode, charge)), stop)
    assert setup.tools.calls["charge"] == 0
    setup.tools.holding = False
    closing = charge_again_model(mode, guarded, charge)
    resumed = await runtime().resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ("charge", "charged", None), ANSWERED]
    assert setup.tools.calls == {"add": 1, "lookup": 0, "charge": 1, "send": 0, "price": 0}
    assert asked == ([{"a": 1, "b": 2}, {"amount": 5}, {"amount": 5}] if guarded else [])


@pytest.mark.parametrize("failing", ["charge", "price"])
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "approved"])
async def test_a_round_call_whose_start_event_failed_is_run_by_the_resume(
    failing: str, guarded: bool, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # A round of two calls (each journaled as it starts and as it ends), one of whose
    # `ToolCallStarted` listeners fails: that call never ran, its intent is taken back, and
    # the resume runs it, reusing the other's result (run once, whichever it is).
    setup = Setup("tools", "cancel", open_backend)
    setup.tools.holding = False

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode="tools"),
            tools=setup.tools.specs(),
            checkpoint_backend=open_backend(),
            approval_handler=(lambda *_: ar.ApprovalDecision("approve")) if guarded else None,
        )

    first = runtime()
    session = first.create_session("a")
    calls = [("charge", {"amount": 5}), ("price", {"item": "tea"})]

    run = first.run_turn(session, "q", first_model("tools", *calls))
    await stopped_at_start(first, run, "listener error", failing)
    assert setup.tools.calls[failing] == 0
    closing = closing_model("tools")  # the round's reply is journaled: only the answer is asked
    resumed = await runtime().resume(session.session_id, closing)
    assert kept(resumed) == [
        ADDED,
        ("charge", "charged", None),
        ("price", "tea: 3", None),
        ANSWERED,
    ]
    assert model_calls(closing) == 1
    assert setup.tools.calls == {"add": 1, "lookup": 0, "charge": 1, "send": 0, "price": 1}


@MODES
@pytest.mark.parametrize("stop", ["cancel", "listener error"])
async def test_a_resume_stopped_at_the_start_of_a_call_found_journaled_keeps_its_intent(
    mode: str, stop: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # The intent is the interrupted run's (`send` ran): a resume that repeats the call (it
    # takes the key) and is stopped before the tool starts must leave it, else the next
    # resume would ask the model for the step again, and lose the send that ran.
    setup = Setup(mode, "cancel", open_backend)
    session = setup.runtime.create_session("a")
    await setup.interrupt(
        setup.runtime.run_turn(session, "q", first_model(mode, ("send", {"text": "hi"})))
    )
    assert setup.tools.calls["send"] == 1
    key = f"{session_key(session.session_id)}:call:2:0"
    journaled = await open_backend().load(key)
    assert journaled is not None and decode(journaled, key, "call")["state"] == "intent"
    second = setup.make_runtime()
    await stopped_at_start(second, second.resume(session.session_id, closing_model(mode)), stop)
    assert await open_backend().load(key) == journaled
    closing = closing_model(mode)
    resumed = await setup.make_runtime().resume(session.session_id, closing)
    assert kept(resumed) == [ADDED, ("send", "sent", None), ANSWERED]
    assert model_calls(closing) == 1  # the step's reply, journaled, is reused
    assert setup.tools.calls["send"] == 2 and len(set(setup.tools.keys)) == 1


async def _own_call(
    registry: ar.ToolRegistry, name: str, arguments: Any, max_chars: int = 4000, *_: Any, **__: Any
) -> ar.Observation:
    """A registry's `call` running calls its own way (it takes keywords it does not know): it
    does not tell when its tool starts."""
    spec = registry.get(name)
    assert spec is not None
    return ar.Observation(str(await spec.invoke(spec.check_arguments(arguments))), None)


class _OwnCallRegistry(ar.ToolRegistry):
    call = _own_call  # type: ignore[assignment]


class _PlainRegistry(ar.ToolRegistry):
    """A subclass with no `__slots__`: its instances take attributes (a `call` too)."""


def _registry(specs: list[ar.ToolSpec], own: str) -> ar.ToolRegistry:
    """A registry whose `call` is `_own_call`: its class's, or set on the instance."""
    if own == "class":
        return _OwnCallRegistry(specs)
    registry = _PlainRegistry(specs)
    registry.call = functools.partial(_own_call, registry)  # type: ignore[method-assign]
    return registry


@pytest.mark.parametrize("own", ["class", "instance"])
async def test_a_registry_with_its_own_call_keeps_the_intent_of_a_call_cut_off(
    own: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # Its `call` never reports the tool's start: a call cut off as it ran must not be taken
    # for one that never started (the charge would run twice).
    setup = Setup("tools", "cancel", open_backend)

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode="tools"),
            tools=_registry(setup.tools.specs(), own),
            checkpoint_backend=open_backend(),
        )

    first = runtime()
    session = first.create_session("a")
    task = asyncio.ensure_future(
        first.run_turn(session, "q", first_model("tools", ("charge", {"amount": 5})))
    )
    await setup.tools.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    setup.tools.holding = False
    with pytest.raises(ar.ToolError, match="may have run"):
        await runtime().resume(session.session_id, closing_model("tools"))
    assert setup.tools.calls["charge"] == 1


AUDITED: list[str] = []


async def _older_call(
    registry: ar.ToolRegistry,
    name: str,
    arguments: Any,
    max_chars: int = 4000,
    idempotency_key: str | None = None,
    *,
    task: Any = False,
) -> ar.Observation:
    """A registry's `call` with the signature before `on_start`, auditing its calls."""
    AUDITED.append(name)
    return await ar.ToolRegistry.call(
        registry, name, arguments, max_chars, idempotency_key, task=task
    )


class _OlderCallRegistry(ar.ToolRegistry):
    call = _older_call  # type: ignore[assignment]


@MODES
@pytest.mark.parametrize("own", ["class", "instance"])
async def test_a_registry_whose_call_takes_no_on_start_still_runs_tools(
    mode: str, own: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # With checkpoints, so that `add` (not idempotent) is journaled before it runs.
    if own == "class":
        registry: ar.ToolRegistry = _OlderCallRegistry(Tools().specs())
    else:
        registry = _PlainRegistry(Tools().specs())
        registry.call = functools.partial(_older_call, registry)  # type: ignore[method-assign]
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode=mode), tools=registry, checkpoint_backend=open_backend()
    )
    model = first_model(mode, ("price", {"item": "tea"}))
    if mode == "tools":
        model = ar.ScriptedProvider([*model._replies, "done"])
    else:
        model.replies.append(DONE_REACT)
    AUDITED.clear()
    session = runtime.create_session("a")
    assert await runtime.run_turn(session, "q", model) == "done"
    assert AUDITED == ["add", "price"]


async def test_a_call_of_a_tool_registered_after_its_intent_is_answered_as_unknown(
    open_backend: Callable[[], ar.SqliteBackend],
) -> None:
    # Journaled as a call that ran no tool (none had its name), it ran all the same when the
    # tool was registered meanwhile (a listener here): a resume then answered it as unknown
    # though it had charged. It is answered as unknown now, as the resume would.
    tools = Tools()
    charge = next(spec for spec in tools.specs() if spec.name == "charge")
    tools.holding = False
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"),
        tools=[spec for spec in tools.specs() if spec.name != "charge"],
        checkpoint_backend=open_backend(),
    )
    runtime.events.on(
        lambda event: (
            runtime.tools.register(charge)
            if isinstance(event, ar.ToolCallStarted) and event.tool == "charge"
            else None
        )
    )
    session = runtime.create_session("a")
    model = first_model("tools", ("charge", {"amount": 5}))
    assert (
        await runtime.run_turn(session, "q", ar.ScriptedProvider([*model._replies, "done"]))
        == "done"
    )
    assert tools.calls["charge"] == 0
    assert session.steps[1].error_kind == "not_found"


class _ServesEcho(ar.ToolRegistry):
    """A registry whose own `call` serves a tool its `get` does not know (`echo`), holding
    while `holding` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.echoed = 0
        self.holding = False
        self.started = asyncio.Event()

    async def call(  # type: ignore[override]
        self, name: str, arguments: Any, max_chars: int = 4000, *args: Any, **kwargs: Any
    ) -> ar.Observation:
        if name != "echo":
            return await super().call(name, arguments, max_chars, *args, **kwargs)
        self.echoed += 1
        self.started.set()
        if self.holding:
            await asyncio.Event().wait()
        return ar.Observation(f"echo {arguments}", None)


def _echo_model() -> ar.ScriptedProvider:
    return ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply([("echo", {"t": 1})]), "done"])


async def test_a_registry_serving_a_tool_its_get_does_not_know_serves_it_with_checkpoints(
    open_backend: Callable[[], ar.SqliteBackend],
) -> None:
    registry = _ServesEcho()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=registry, checkpoint_backend=open_backend()
    )
    session = runtime.create_session("a")
    assert await runtime.run_turn(session, "q", _echo_model()) == "done"
    assert (session.steps[0].observation, session.steps[0].error_kind) == ("echo {'t': 1}", None)
    assert registry.echoed == 1


async def test_a_call_such_a_registry_served_as_it_was_cut_off_is_refused_by_resume(
    open_backend: Callable[[], ar.SqliteBackend],
) -> None:
    # Journaled as a call of no tool (its `get` knows none), the resume answered it as
    # unknown though it had run: it is a call that may have run, to be settled.
    registry = _ServesEcho()
    registry.holding = True

    def runtime() -> ar.AgentRuntime:
        return ar.AgentRuntime(
            ar.AgentConfig(mode="tools"), tools=registry, checkpoint_backend=open_backend()
        )

    first = runtime()
    session = first.create_session("a")
    task = asyncio.ensure_future(first.run_turn(session, "q", _echo_model()))
    await registry.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    registry.holding = False
    with pytest.raises(ar.ToolError, match="settle_call"):
        await runtime().resume(session.session_id, closing_model("tools"))
    assert registry.echoed == 1
