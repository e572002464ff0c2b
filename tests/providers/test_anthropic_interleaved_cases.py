"""Interleaved thinking over the Anthropic wire, over loopback HTTP: a reply whose thinking
blocks come between its text and tool calls goes back with every block where it came."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.providers.anthropic import BLOCK_ORDER, _in_received_order

from .conftest import make_provider
from .fake_server import FakeLlmServer, Reply, anthropic_blocks_reply, anthropic_event

ONCE = ar.RetryPolicy(max_attempts=1)
T1 = {"type": "thinking", "thinking": "First the weather.", "signature": "sig-one"}
T2 = {"type": "thinking", "thinking": "Now the time.", "signature": "sig-two"}
R2 = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
U1 = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
U2 = {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}}
CHECKING = {"type": "text", "text": "Checking the weather. "}
THEN = {"type": "text", "text": "And the time."}

REPLIES = {
    "thinking between calls": [T1, U1, T2, U2],
    "text and redacted thinking between": [T1, CHECKING, U1, R2, THEN, U2],
    "text first": [CHECKING, T1, U1],
}


@ar.tool
def weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@ar.tool
def clock() -> str:
    """The time."""
    return "noon"


async def _loop(
    server: FakeLlmServer, blocks: list[dict[str, Any]], stream: bool
) -> list[dict[str, Any]]:
    """Runs a tool loop whose first reply is `blocks`; returns what its second request sent
    back of that reply."""
    return await _loop_with(server, anthropic_blocks_reply(blocks, stream))


async def _loop_with(server: FakeLlmServer, first: Reply) -> list[dict[str, Any]]:
    """`_loop`, its first reply `first` (streamed when it has frames)."""
    stream = first.frames is not None
    server.script(
        first, anthropic_blocks_reply([{"type": "text", "text": "Sunny at noon."}], stream)
    )
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[weather, clock])
    if stream:
        rt.events.on(lambda event: None)  # a listener: the runtime streams the reply
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        session = await rt.run_agent_with_provider("a", "Weather and time?", llm)
    assert session.final_answer == "Sunny at noon."
    sent = [m for m in server.requests[1].json["messages"] if m["role"] == "assistant"]
    assert len(sent) == 1
    content: list[dict[str, Any]] = sent[0]["content"]
    return content


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("blocks", REPLIES.values(), ids=REPLIES.keys())
async def test_interleaved_thinking_goes_back_where_it_came(
    server: FakeLlmServer, stream: bool, blocks: list[dict[str, Any]]
) -> None:
    # The reply's thinking blocks were all sent first: the API refuses a latest assistant
    # message whose thinking blocks moved ("cannot be modified"), so with interleaved
    # thinking (on by itself with adaptive thinking) the loop failed at its second call.
    assert await _loop(server, blocks, stream) == blocks


async def test_a_resumed_round_goes_back_in_its_order(server: FakeLlmServer) -> None:
    # The order is saved with the round's reasoning: a run resumed from its journal and
    # records sends the reply as the model wrote it.
    blocks = REPLIES["text and redacted thinking between"]
    overloaded = b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}'
    failed = Reply(status=529, body=overloaded, headers={"content-type": "application/json"})
    server.script(anthropic_blocks_reply(blocks, False), failed)
    backend = ar.InMemoryBackend()
    config = ar.AgentConfig(mode="tools")
    rt = ar.AgentRuntime(config, tools=[weather, clock], checkpoint_backend=backend)
    session = rt.create_session("a")
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(ar.ProviderError):
            await rt.run_agent_with_provider("a", "Weather and time?", llm, session=session)
        server.script(anthropic_blocks_reply([{"type": "text", "text": "Sunny."}], False))
        resumed = ar.AgentRuntime(config, tools=[weather, clock], checkpoint_backend=backend)
        done = await resumed.resume(session.session_id, llm)
    assert done.final_answer == "Sunny."
    sent = [m for m in server.requests[2].json["messages"] if m["role"] == "assistant"]
    assert [m["content"] for m in sent] == [blocks]


async def test_a_reply_without_interleaving_keeps_no_order(server: FakeLlmServer) -> None:
    server.script(anthropic_blocks_reply([T1, CHECKING, U1], False))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        reply = await llm.chat([ar.providers.base.Message("user", "q")])
    assert list(reply.reasoning) == [T1]


def test_a_changed_reply_keeps_its_reasoning_where_it_can() -> None:
    order = {
        "type": BLOCK_ORDER,
        "blocks": ["thinking", "text", "tool_use", "thinking", "text", "tool_use"],
        "text_lengths": [3, 4],
    }
    text = {"type": "text", "text": "abcdefg"}
    uses = [{"type": "tool_use", "id": "1"}, {"type": "tool_use", "id": "2"}]
    # The text as the reply had it: split as its blocks were.
    assert _in_received_order(order, [T1, T2], "abcdefg", [text, *uses]) == [
        T1,
        {"type": "text", "text": "abc"},
        uses[0],
        T2,
        {"type": "text", "text": "defg"},
        uses[1],
    ]
    # Text a hook changed goes whole where the first block was; a call added goes last.
    more = [*uses, {"type": "tool_use", "id": "3"}]
    changed = {"type": "text", "text": "other"}
    assert _in_received_order(order, [T1, T2], "other", [changed, *more]) == [
        T1,
        changed,
        uses[0],
        T2,
        uses[1],
        more[2],
    ]
    # No text now, or text the reply had not: none placed, or before the first call.
    no_text = {**order, "blocks": ["thinking", "tool_use", "thinking"], "text_lengths": []}
    assert _in_received_order(no_text, [T1, T2], "", uses) == [T1, uses[0], T2, uses[1]]
    assert _in_received_order(no_text, [T1, T2], "hi", [changed, *uses]) == [
        T1,
        {"type": "text", "text": "hi"},
        uses[0],
        T2,
        uses[1],
    ]
    # An entry that is no order (a record tampered with): the reasoning first, as before.
    broken = {"type": BLOCK_ORDER, "blocks": "thinking", "text_lengths": [1]}
    assert _in_received_order(broken, [T1], "abc", [text]) == [T1, text]


async def test_text_split_inside_a_character_keeps_its_blocks_apart(
    server: FakeLlmServer,
) -> None:
    # An emoji sent as two halves in two deltas counted two characters in its block's
    # length and one in the reply's text: the lengths no longer added up, and the two text
    # blocks went back as one, before the thinking block between them.
    greeting = {"type": "text", "text": "Checking 😀 weather."}
    blocks = [T1, greeting, U1, T2, THEN, U2]
    reply = anthropic_blocks_reply(blocks, True)
    assert reply.frames is not None
    one_delta = anthropic_event(
        "content_block_delta", index=1, delta={"type": "text_delta", "text": greeting["text"]}
    )
    halves = [
        anthropic_event("content_block_delta", index=1, delta={"type": "text_delta", "text": t})
        for t in ("Checking \ud83d", "\ude00 weather.")
    ]
    at = reply.frames.index(one_delta)
    reply.frames[at : at + 1] = halves
    assert await _loop_with(server, reply) == blocks


_KINDS = st.lists(
    st.sampled_from(["thinking", "redacted_thinking", "text", "tool_use"]), min_size=1, max_size=7
).filter(lambda kinds: "tool_use" in kinds)


def _blocks_of(kinds: list[str]) -> list[dict[str, Any]]:
    """A reply of blocks of `kinds`, in that order, each its own."""
    blocks: list[dict[str, Any]] = []
    for n, kind in enumerate(kinds):
        if kind == "thinking":
            blocks.append({"type": "thinking", "thinking": f"step {n}", "signature": f"s{n}"})
        elif kind == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": f"opaque {n}"})
        elif kind == "text":
            blocks.append({"type": "text", "text": f"Part {n}. "})
        else:
            blocks.append({"type": "tool_use", "id": f"toolu_{n}", "name": "clock", "input": {}})
    return blocks


@settings(max_examples=40, deadline=None)
@given(kinds=_KINDS, stream=st.booleans())
def test_any_reply_with_calls_goes_back_as_it_came(
    llm_server_session: FakeLlmServer, kinds: list[str], stream: bool
) -> None:
    # Every reasoning block goes back where it came among the others; a reply whose
    # reasoning all came first may have its text put before its calls (the API checks
    # where the thinking is), one that interleaved them goes back exactly.
    llm_server_session.reset()
    blocks = _blocks_of(kinds)
    sent = asyncio.run(_loop(llm_server_session, blocks, stream))
    assert _calls_before_each_thought(sent) == _calls_before_each_thought(blocks)
    assert [b for b in sent if b["type"] == "tool_use"] == [
        b for b in blocks if b["type"] == "tool_use"
    ]
    assert _text_of(sent) == _text_of(blocks)
    first_other = next(n for n, b in enumerate(blocks) if b["type"] in ("text", "tool_use"))
    if any(b["type"] not in ("text", "tool_use") for b in blocks[first_other:]):
        assert sent == blocks


def _calls_before_each_thought(blocks: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """Each reasoning block, with how many calls came before it."""
    calls, seen = 0, []
    for block in blocks:
        if block["type"] == "tool_use":
            calls += 1
        elif block["type"] != "text":
            seen.append((calls, block))
    return seen


def _text_of(blocks: list[dict[str, Any]]) -> str:
    return "".join(b["text"] for b in blocks if b["type"] == "text")


@pytest.mark.parametrize(
    ("given", "params", "sent"),
    [
        (None, {"thinking": {"type": "enabled", "budget_tokens": 8000}}, 12096),
        (None, {"thinking": {"type": "enabled", "budget_tokens": 2048}}, 4096),
        (None, {"thinking": {"type": "adaptive"}}, 4096),
        (None, {"thinking": {"type": "enabled", "budget_tokens": 8000}, "max_tokens": 9000}, 9000),
        (4096, {"thinking": {"type": "enabled", "budget_tokens": 8000}}, 4096),  # the user's
    ],
)
async def test_the_default_token_limit_leaves_room_beyond_a_thinking_budget(
    server: FakeLlmServer, given: int | None, params: dict[str, Any], sent: int
) -> None:
    # The API refuses a `budget_tokens` not below `max_tokens`: a thinking budget of 8,000
    # with the provider's default limit (4,096, never set by the user) was a 400.
    server.script(anthropic_blocks_reply([{"type": "text", "text": "ok"}], False))
    async with make_provider("anthropic", server, retry=ONCE, max_tokens=given) as llm:
        assert llm.max_tokens == (given or 4096)
        await llm.chat([ar.providers.base.Message("user", "q")], **params)
        assert server.requests[0].json["max_tokens"] == sent
        server.script(anthropic_blocks_reply([{"type": "text", "text": "ok"}], False))
        llm.max_tokens = 2000  # set since: the user's, sent as set
        await llm.chat([ar.providers.base.Message("user", "q")], **params)
        assert server.requests[1].json["max_tokens"] == params.get("max_tokens", 2000)
        with pytest.raises(ValueError, match="max_tokens"):
            llm.max_tokens = 0


async def test_text_blocks_without_their_stop_events_keep_their_places(
    server: FakeLlmServer,
) -> None:
    # A proxy that leaves out a text block's `content_block_stop` left its length unknown:
    # the reply's text went back whole in its first block, the second block's place lost.
    blocks = REPLIES["text and redacted thinking between"]
    reply = anthropic_blocks_reply(blocks, True)
    assert reply.frames is not None
    text_stops = {
        anthropic_event("content_block_stop", index=n)
        for n, block in enumerate(blocks)
        if block["type"] == "text"
    }
    reply.frames[:] = [frame for frame in reply.frames if frame not in text_stops]
    sent = await _loop_with(server, reply)
    assert sent == blocks
