"""ScriptedProvider answers every conversation the HTTP providers send, and refuses the others
as they do, with a TypeError that uses up no reply."""

from __future__ import annotations

import asyncio
import gc
import math
import pickle
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.memory import CHARS_PER_TOKEN
from llm_agent_runtime.providers.base import Message, StreamEnd, ToolCall, ToolDefinition

TOOL = ToolDefinition(name="f", description="does f", parameters={"type": "object"})


async def _ask(llm: ar.ScriptedProvider, streamed: bool, messages: Any, tools: Any = None) -> Any:
    if not streamed:
        return await llm.chat(messages, tools)
    events = [e async for e in llm.chat_stream(messages, tools)]
    assert isinstance(events[-1], StreamEnd)
    return events[-1].response


@pytest.mark.parametrize("streamed", [False, True])
async def test_messages_without_content_count_as_no_characters(streamed: bool) -> None:
    # An assistant turn of tool calls only, in the OpenAI form: content None.
    history = [
        Message("user", "a" * 40),
        Message("assistant", None, tool_calls=[ToolCall("c", "f", {})]),  # type: ignore[arg-type]
        Message("tool", "r" * 20, tool_call_id="c"),
    ]
    llm = ar.ScriptedProvider(["first"])
    response = await _ask(llm, streamed, history)
    assert response.text == "first" and llm.calls == 1
    assert response.usage.input_tokens == 60 // CHARS_PER_TOKEN


@pytest.mark.parametrize("streamed", [False, True])
async def test_content_parts_count_their_text(streamed: bool) -> None:
    parts = [
        {"type": "text", "text": "b" * 40},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "c" * 20},
    ]
    llm = ar.ScriptedProvider(["ok"])
    response = await _ask(llm, streamed, [Message("user", parts), Message("user", "d" * 20)])  # type: ignore[arg-type]
    assert response.usage.input_tokens == 80 // CHARS_PER_TOKEN


BAD_EARLIER = [
    (
        [{"role": "user", "content": "x"}, Message("user", "y")],
        None,
        r"messages\[0\] must be a Message",
    ),
    ([Message("user", 42), Message("user", "y")], None, r"messages\[0\]\.content must be a str"),  # type: ignore[arg-type]
    ([Message("user", "y")], [{"name": "f"}, TOOL], r"tools\[0\]"),
]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("messages", "tools", "match"), BAD_EARLIER)
async def test_a_bad_earlier_item_is_the_checks_type_error_and_uses_up_no_reply(
    streamed: bool, messages: Any, tools: Any, match: str
) -> None:
    for llm in (
        ar.ScriptedProvider(["first", "second"]),
        ar.ScriptedProvider(rule=lambda p: "ruled"),
    ):
        with pytest.raises(TypeError, match=match):
            await _ask(llm, streamed, messages, tools)
        assert llm.calls == 0
        # The next good call gets the first reply.
        response = await _ask(llm, streamed, [Message("user", "y")])
        assert response.text in ("first", "ruled") and llm.calls == 1


def test_runs_on_several_threads_take_each_reply_once() -> None:
    # A thread writing back its own stale index put the script back: replies went out twice
    # (another run's answer) and others never.
    llm = ar.ScriptedProvider([f"reply {n}" for n in range(4 * 400)])

    def asks() -> list[str]:
        async def ask() -> list[str]:
            return [(await llm.chat([Message("user", "x" * 2000)])).text for _ in range(400)]

        return asyncio.run(ask())

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can
    try:
        with ThreadPoolExecutor(4) as pool:
            got = [text for texts in pool.map(lambda _: asks(), range(4)) for text in texts]
    finally:
        sys.setswitchinterval(previous)
    assert sorted(got) == sorted(f"reply {n}" for n in range(4 * 400))
    assert llm.calls == 4 * 400
    copied = pickle.loads(pickle.dumps(llm))  # its lock is its own
    assert copied.calls == llm.calls and copied._lock is not llm._lock


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_reply_ends_before_a_stop_sequence_and_counts_no_more(streamed: bool) -> None:
    # The usage was estimated on the whole scripted text: a budget paid for what a model
    # stops before writing.
    made_up = "Thought: add\nAction: FINAL_ANSWER 5\nObservation: " + "made up " * 500
    llm = ar.ScriptedProvider([made_up, ar.ChatResponse(text=made_up)])
    for _ in range(2):
        if streamed:
            events = [
                e async for e in llm.chat_stream([Message("user", "q")], stop=["Observation:"])
            ]
            reply = events[-1].response
        else:
            reply = await llm.chat([Message("user", "q")], stop="Observation:")
        assert reply.text == "Thought: add\nAction: FINAL_ANSWER 5\n"
        assert reply.usage.output_tokens == math.ceil(len(reply.text) / CHARS_PER_TOKEN)
        assert reply.stop_reason == "stop"
    with pytest.raises(TypeError, match="stop must be a str or a list of str, got int"):
        await ar.ScriptedProvider(["a"]).chat([Message("user", "q")], stop=123)


async def test_a_run_with_stop_sequences_is_charged_what_the_model_would_write() -> None:
    made_up = "Thought: add\nAction: FINAL_ANSWER 5\nObservation: " + "made up " * 500
    budget = ar.CostBudget(max_tokens=200)
    config = ar.AgentConfig(stop_sequences=["Observation:"])
    runtime = ar.AgentRuntime(config, budget=budget)
    session = await runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider([made_up]))
    assert session.final_answer == "5"
    assert session.steps[0].output_tokens == math.ceil(36 / CHARS_PER_TOKEN)
    assert budget.used_tokens < 200


async def test_content_parts_that_are_no_dicts_are_the_checks_type_error() -> None:
    # A part that is a str was an AttributeError.
    for llm in (ar.ScriptedProvider(["a"]), ar.ScriptedProvider(rule=lambda prompt: "a")):
        with pytest.raises(TypeError, match=r"messages\[0\]\.content must be a str"):
            await llm.chat([Message("user", ["what is 2 + 3?"])])  # type: ignore[arg-type]
        assert llm.calls == 0


async def test_an_async_rule_is_refused_and_its_coroutine_closed() -> None:
    async def rule(prompt: str) -> str:
        return "a"

    llm = ar.ScriptedProvider(rule=rule)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        with pytest.raises(ar.ProviderError, match="must be a plain function"):
            await llm.chat([Message("user", "q")])
        gc.collect()


async def test_the_cut_is_where_a_model_writing_the_reply_stops() -> None:
    # Cut at the stop found first, not the one completed first: with `b` and `abc`, `abcd`
    # gave "" (no answer, the run failed) where a model stops at "a".
    llm = ar.ScriptedProvider(["abcd"])
    assert (await llm.chat([Message("user", "q")], stop=["abc", "b"])).text == "a"
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools", stop_sequences=["abc", "b"]))
    session = await runtime.run_agent_with_provider("a", "q", ar.ScriptedProvider(["abcd"]))
    assert session.final_answer == "a"


async def test_a_tool_call_reply_cut_at_a_stop_counts_what_is_left() -> None:
    # Its output count, estimated from the whole text when made, was kept.
    reply = ar.ScriptedProvider.tool_call_reply(
        [("add", {"a": 1, "b": 2})], text="I will add.\nObservation: " + "made up " * 500
    )
    whole = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})], "I will add.\n")
    got = await ar.ScriptedProvider([reply]).chat([Message("user", "q")], stop="Observation:")
    assert got.text == "I will add.\n"
    assert got.usage.output_tokens == whole.usage.output_tokens
    scripted = ar.ChatResponse(text="a STOP b", usage=ar.Usage(10, 99))  # the script's own
    kept = await ar.ScriptedProvider([scripted]).chat([Message("user", "q")], stop="STOP")
    assert (kept.text, kept.usage.output_tokens) == ("a ", 99)
