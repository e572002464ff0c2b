"""Resuming a checkpointed run that made a corrective re-prompt (`corrective_reprompt`).

An unparseable ReAct reply, or an empty native one, is answered with a nudge, and the model
is asked once more: the bad reply and the nudge stay in what the run sends after that. A run
interrupted after the re-prompt (in a later step, or while the re-prompted call was still
out) and resumed sends the model exactly what the uninterrupted run would have, counts the
re-prompt as the iteration it took, and the step that answers it keeps the wasted call's
tokens and model time, charged once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.codec import decode, encode

from .conftest import cancel_once_reached

REACT_REPLIES = [
    "I would rather chat about the weather.",  # not a ReAct step: re-prompted
    'Thought: look\nAction: look {"x": 1}',
    'Thought: look again\nAction: look {"x": 2}',
    "Thought: seen\nAction: FINAL_ANSWER done",
]


def calls_reply(x: int) -> ar.ChatResponse:
    call = ar.ToolCall(f"call_{x}", "look", {"x": x})
    return ar.ChatResponse("", [call], usage=ar.Usage(100 + x, 10 + x), stop_reason="tool_calls")


TOOLS_REPLIES = [
    ar.ChatResponse(" ", usage=ar.Usage(50, 1), stop_reason="stop"),  # empty: re-prompted
    calls_reply(1),
    calls_reply(2),
    ar.ChatResponse("done", usage=ar.Usage(200, 2), stop_reason="stop"),
]


class Model:
    """The script's replies from `start` on, keeping what each call was sent.

    The call numbered `hold` (of the whole script) never answers.
    """

    def __init__(self, mode: str, start: int = 0, hold: int | None = None) -> None:
        self.replies = REACT_REPLIES if mode == "react" else TOOLS_REPLIES
        self.next = start
        self.hold = hold
        self.reached = asyncio.Event()
        self.sent: list[Any] = []

    async def _answer(self, sent: Any) -> Any:
        self.sent.append(sent)
        n, self.next = self.next, self.next + 1
        if n == self.hold:
            self.reached.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0.001)  # a model call takes some time
        return self.replies[n]

    async def __call__(self, prompt: str) -> str:
        reply = await self._answer(prompt)
        assert isinstance(reply, str)
        return reply

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
        shown = [
            (m.role, m.content, [(c.name, c.arguments) for c in m.tool_calls], m.tool_call_id)
            for m in messages
        ]
        return await self._answer(shown)


MODES = pytest.mark.parametrize("mode", ["react", "tools"])
# Where the run is cut off: in step 2's tool call (after the re-prompted step was saved),
# while the re-prompted model call is out (its answer not received), or while an approval
# handler decides the call of the re-prompted step's reply.
CUTS = pytest.mark.parametrize("cut", ["later-step", "reprompted-call", "approval"])


def runtime(
    mode: str,
    backend: ar.SqliteBackend | None,
    tool: ar.ToolSpec,
    metrics: ar.RuntimeMetrics,
    approval: Any = None,
) -> ar.AgentRuntime:
    config = ar.AgentConfig(mode=mode, corrective_reprompt=True, max_iterations=4)
    return ar.AgentRuntime(
        config,
        tools=[tool],
        checkpoint_backend=backend,
        metrics=metrics,
        approval_handler=approval,
    )


def held_look(holding: list[bool], reached: asyncio.Event) -> ar.ToolSpec:
    """The `look` tool; its call for x=2 sets `reached` and never returns while `holding[0]`
    is true (a run cut off in step 2's tool call)."""

    @ar.tool
    async def look(x: int, idempotency_key: str) -> str:
        """Looks a number up (once per key)."""
        if x == 2 and holding[0]:
            reached.set()
            await asyncio.Event().wait()
        return f"seen {x}"

    return look


def shape(session: ar.AgentSession) -> list[tuple[Any, ...]]:
    return [
        (s.action, s.action_input, s.observation, s.input_tokens, s.output_tokens)
        for s in session.steps
    ]


@MODES
@CUTS
async def test_a_resumed_run_sends_what_the_uninterrupted_run_sent_after_a_reprompt(
    mode: str, cut: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    holding = [False]
    reached = asyncio.Event()
    look = held_look(holding, reached)

    deciding = [False]

    async def approve(session: Any, tool: str, arguments: Any) -> ar.ApprovalDecision:
        if deciding[0]:
            reached.set()
            await asyncio.Event().wait()
        return ar.ApprovalDecision("approve")

    # The run as it goes uninterrupted (max_iterations=4: the re-prompt takes one).
    whole_metrics = ar.RuntimeMetrics()
    whole = Model(mode)
    whole_runtime = runtime(mode, None, look, whole_metrics)
    if mode == "tools":
        uninterrupted = await whole_runtime.run_agent_with_provider("a", "q", whole)
    else:
        uninterrupted = await whole_runtime.run_agent("a", "q", whole)
    assert uninterrupted.final_answer == "done" and len(whole.sent) == 4
    assert [s.action for s in uninterrupted.steps] == ["look", "look", "FINAL_ANSWER"]

    metrics = ar.RuntimeMetrics()
    first = runtime(mode, open_backend(), look, metrics, approve)
    session = first.create_session("a")
    if cut == "later-step":
        holding[0] = True
        model, start, signal = Model(mode), 3, reached
    elif cut == "approval":
        deciding[0] = True
        model, start, signal = Model(mode), 2, reached
    else:
        model = Model(mode, hold=1)
        start, signal = 1, model.reached
    task = asyncio.ensure_future(
        first.run_turn(session, "q", model if mode == "tools" else model.__call__)
    )
    await signal.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holding[0] = deciding[0] = False

    again = Model(mode, start=start)
    second = runtime(mode, open_backend(), look, metrics, approve)
    resumed = await second.resume(session.session_id, again if mode == "tools" else again.__call__)
    # The model is sent what the uninterrupted run sent it from there on.
    assert again.sent == whole.sent[start:]
    assert resumed.final_answer == "done"
    assert shape(resumed) == shape(uninterrupted)
    # The wasted call's tokens are charged once, and the step that answers it holds them.
    taken, whole_taken = metrics.snapshot(), whole_metrics.snapshot()
    assert (taken.input_tokens, taken.output_tokens) == (
        whole_taken.input_tokens,
        whole_taken.output_tokens,
    )
    assert resumed.steps[0].model_ms >= 2.0  # the wasted call's and its answer's
    saved = await ar.AgentSession.load_checkpoint(open_backend(), session.session_id)
    assert saved == resumed


@MODES
async def test_a_resumed_run_counts_the_reprompt_as_the_iteration_it_took(
    mode: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    # max_iterations=3: the re-prompt, step 1, step 2; the run then ends with no answer.
    holding = [True]
    reached = asyncio.Event()
    look = held_look(holding, reached)

    def limited(backend: ar.SqliteBackend | None) -> ar.AgentRuntime:
        config = ar.AgentConfig(mode=mode, corrective_reprompt=True, max_iterations=3)
        return ar.AgentRuntime(config, tools=[look], checkpoint_backend=backend)

    def as_model(model: Model) -> Any:
        return model if mode == "tools" else model.__call__

    holding[0] = False
    alone = limited(None)
    whole = alone.create_session("a")
    await alone.run_turn(whole, "q", as_model(Model(mode)))
    holding[0] = True
    first = limited(open_backend())
    session = first.create_session("a")
    task = asyncio.ensure_future(first.run_turn(session, "q", as_model(Model(mode))))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holding[0] = False
    again = Model(mode, start=3)
    resumed = await limited(open_backend()).resume(session.session_id, as_model(again))
    assert again.sent == []  # no iteration left after step 2, as in the uninterrupted run
    assert whole.final_answer is None and resumed.final_answer is None
    assert shape(resumed) == shape(whole)


def quick_runtime(backend: ar.SqliteBackend) -> ar.AgentRuntime:
    """A ReAct runtime (see `runtime`) whose `look` answers at once."""
    look = held_look([False], asyncio.Event())  # never held
    return runtime("react", backend, look, ar.RuntimeMetrics())


async def cut_off_while_reprompted(
    open_backend: Callable[[], ar.SqliteBackend],
) -> tuple[str, str, dict[str, Any]]:
    """Cancels a ReAct run while its re-prompted model call is out.

    Returns the session id, the key of the step's journal entry, and that entry (decoded).
    """
    model = Model("react", hold=1)
    first = quick_runtime(open_backend())
    session = first.create_session("a")
    await cancel_once_reached(first.run_turn(session, "q", model.__call__), model.reached)
    key = f"session:{session.session_id}:call:1:0"
    entry = decode(await open_backend().load(key), key, "call")
    assert entry["state"] == "reprompted"
    return session.session_id, key, entry


@pytest.mark.parametrize(
    ("reprompt", "message"),
    [
        ("no", "must be an object with a 'reply' and a 'nudge' string"),
        ({"reply": "x"}, "must be an object with a 'reply' and a 'nudge' string"),
        ({"reply": "x", "nudge": "n", "tokens": [1]}, "field 'tokens' must be a list of two"),
        ({"reply": "x", "nudge": "n", "model_ms": -1}, "field 'model_ms' must be a number"),
        ({"reply": "x", "nudge": "n", "reasoning": ["r"]}, "field 'reasoning' must be a list"),
        ({"reply": "x", "nudge": "n", "extra": 1}, "unknown field"),
    ],
    ids=["not-an-object", "no-nudge", "tokens", "model-ms", "reasoning", "unknown-field"],
)
async def test_a_malformed_journaled_reprompt_is_a_persistence_error_naming_it(
    reprompt: Any, message: str, open_backend: Callable[[], ar.SqliteBackend]
) -> None:
    session_id, key, entry = await cut_off_while_reprompted(open_backend)
    backend = open_backend()
    entry["reprompt"] = reprompt
    await backend.save(key, encode("call", entry))
    again = Model("react", start=1)
    with pytest.raises(ar.PersistenceError, match=message) as caught:
        await quick_runtime(open_backend()).resume(session_id, again.__call__)
    assert caught.value.key == key and again.sent == []


async def test_a_malformed_saved_reprompt_of_a_step_record_is_a_persistence_error() -> None:
    from llm_agent_runtime.persistence.checkpoints import StepRecord

    step = ar.Step("t", "look", {"x": 1}, "seen 1")
    record = StepRecord(step, "r", reprompt={"reply": "x", "nudge": "n"}).to_dict()
    assert StepRecord.from_dict(record).reprompt == {"reply": "x", "nudge": "n"}
    record["reprompt"] = {"reply": 3, "nudge": "n"}
    with pytest.raises(ar.PersistenceError, match="field 'reprompt' must be an object"):
        StepRecord.from_dict(record)


async def test_a_journal_entry_of_an_unknown_state_is_a_persistence_error(
    open_backend: Callable[[], ar.SqliteBackend],
) -> None:
    session_id, key, entry = await cut_off_while_reprompted(open_backend)
    backend = open_backend()
    del entry["reprompt"]
    await backend.save(key, encode("call", entry))
    with pytest.raises(ar.PersistenceError, match="holds no 'reprompt'"):
        await quick_runtime(open_backend()).resume(session_id, Model("react", start=1).__call__)
    entry["state"] = "thinking"
    await backend.save(key, encode("call", entry))
    with pytest.raises(ar.PersistenceError, match="state 'thinking' is unknown"):
        await quick_runtime(open_backend()).resume(session_id, Model("react", start=1).__call__)
    for state in (["intent"], {"x": 1}, 3):  # a list or an object raised a bare TypeError
        entry["state"] = state
        await backend.save(key, encode("call", entry))
        with pytest.raises(ar.PersistenceError, match="'state' must be a str") as caught:
            await quick_runtime(open_backend()).resume(session_id, Model("react", start=1).__call__)
        assert caught.value.key == key


def test_the_runtime_and_the_store_agree_on_the_reply_states() -> None:
    from llm_agent_runtime import runtime
    from llm_agent_runtime.persistence import checkpoints

    assert runtime._REPLY_STATES == checkpoints.REPLY_STATES
