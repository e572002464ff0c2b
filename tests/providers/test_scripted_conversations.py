"""ScriptedProvider answers every conversation the HTTP providers send, and refuses the others
as they do, with a TypeError that uses up no reply."""

from __future__ import annotations

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
