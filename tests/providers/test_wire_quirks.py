"""What compatible servers and proxies really send: broken compressed bodies, calls cut off
before their arguments (or inside them, billed all the same), empty or missing call ids,
keep-alive events with empty data. Over loopback HTTP, against the fake server speaking
each wire format."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import CostBudget, ProviderError, RetryPolicy, RuntimeMetrics
from llm_agent_runtime.providers.base import Message, StreamEnd

from .conftest import PROVIDERS, make_provider
from .fake_server import (
    FakeLlmServer,
    Reply,
    Turn,
    anthropic_event,
    render_anthropic,
    render_openai,
    sse,
)

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One OpenAI chat.completion.chunk frame."""
    return sse({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_body_that_does_not_decompress_is_a_retryable_provider_error(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    # A proxy's broken gzip escaped as httpx.DecodingError, which is no ProviderError.
    headers = {
        "content-type": "text/event-stream" if stream else "application/json",
        "content-encoding": "gzip",
    }
    body = b"this is not gzip data" * 3
    server.script(
        Reply(frames=[body], headers=headers) if stream else Reply(body=body, headers=headers)
    )
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match="could not be decoded") as raised:
            if stream:
                [event async for event in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
    assert raised.value.retryable


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_bad_gateway_with_a_broken_body_is_retried(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    broken = Reply(
        status=502,
        body=b"<html>Bad Gateway</html>",
        headers={"content-type": "text/html", "content-encoding": "gzip"},
    )
    server.script(broken, Turn("recovered"))
    async with make_provider(kind, server, retry=retry) as llm:
        assert (await llm.chat(USER)).text == "recovered"
    assert len(server.requests) == 2


def _cut_before_arguments(kind: str) -> Reply:
    """A tool call whose arguments never came: the token limit struck right after its name."""
    if kind == "openai":
        call = {"index": 0, "id": "c1", "type": "function"}
        call["function"] = {"name": "cleanup", "arguments": ""}
        frames = [chunk({"role": "assistant"}), chunk({"tool_calls": [call]}), chunk({}, "length")]
        frames.append(sse("[DONE]"))
    else:
        block = {"type": "tool_use", "id": "toolu_1", "name": "cleanup", "input": {}}
        frames = [
            anthropic_event("message_start", message={"model": "m", "usage": {"input_tokens": 5}}),
            anthropic_event("content_block_start", index=0, content_block=block),
            anthropic_event("content_block_stop", index=0),
            anthropic_event("message_delta", delta={"stop_reason": "max_tokens"}, usage={}),
            anthropic_event("message_stop"),
        ]
    return Reply(frames=frames, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_call_cut_off_before_its_arguments_never_runs(
    kind: str, server: FakeLlmServer
) -> None:
    ran: list[Any] = []

    @ar.tool
    def cleanup(path: str = "/", recursive: bool = True) -> str:
        """Deletes files under path."""
        ran.append((path, recursive))
        return "deleted"

    server.script(_cut_before_arguments(kind))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[cleanup])
    runtime.events.on(lambda event: None)  # streamed
    async with make_provider(kind, server, retry=ONCE) as llm:
        # The run's error, as for any reply cut off where it counts (it was the provider's).
        with pytest.raises(ar.AgentLoopError, match=r"token limit.*a tool call's input") as cut:
            await runtime.run_agent_with_provider("a", "clean /tmp/x", llm)
    assert isinstance(cut.value.__cause__, ProviderError)
    assert "cut off by the token limit" in str(cut.value.__cause__)
    assert ran == []  # it used to run with every default: cleanup("/", recursive=True)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_refusal_inside_a_tool_calls_arguments_is_the_runs_refusal_error(
    stream: bool, server: FakeLlmServer
) -> None:
    # Anthropic's safety stop in the middle of a call's JSON: the provider's error quoted
    # the refused arguments as "not valid JSON", where a whole call gave the refusal error.
    ran: list[Any] = []

    @ar.tool
    def add(a: int, b: int) -> int:
        """Adds."""
        ran.append((a, b))
        return a + b

    call = ("c1", "add", {"a": 2, "b": 3})
    turn = Turn("Let me", tool_calls=[call], stop_reason="refusal", arguments_cut=9)
    server.script(turn, Turn("done"))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    if stream:
        runtime.events.on(lambda event: None)
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(ar.AgentLoopError, match="refusal") as refused:
            await runtime.run_agent_with_provider("a", "q", llm)
    assert '{"a": 2' not in str(refused.value.__cause__)  # the refused text is not quoted
    assert ran == []


@pytest.mark.parametrize(
    ("kind", "stream"),
    [("openai", False), ("openai", True), ("anthropic", True)],
    ids=["openai", "openai-stream", "anthropic-stream"],  # Anthropic's own `input` is an object
)
@pytest.mark.parametrize("cut_by", ["token-limit", "nothing"])
async def test_a_reply_whose_tool_calls_cannot_be_built_is_charged_all_the_same(
    kind: str, stream: bool, cut_by: str, server: FakeLlmServer
) -> None:
    # The reply arrived and was billed; the error for its broken arguments was raised before
    # its usage reached the budget and the metrics, so a loop of such calls cost nothing.
    limit = "length" if kind == "openai" else "max_tokens"
    turn = Turn(
        tool_calls=[("c1", "write", {"text": "a" * 40})],
        stop_reason=limit if cut_by == "token-limit" else None,
        arguments_cut=12,
        input_tokens=1000,
        output_tokens=4096,
    )
    server.script(turn)
    budget, metrics = CostBudget(max_cost_usd=1.0), RuntimeMetrics()
    options: dict[str, Any] = {"budget": budget, "metrics": metrics, "retry": ONCE}
    prices = {"input_cost_per_million": 10.0, "output_cost_per_million": 30.0}
    said = "cut off by the token limit" if cut_by == "token-limit" else "not valid JSON"
    async with make_provider(kind, server, **options, **prices) as llm:
        with pytest.raises(ProviderError, match=said):
            if stream:
                [event async for event in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 4096)
    assert budget.used_tokens == 5096
    assert budget.used_cost_usd == pytest.approx((1000 * 10.0 + 4096 * 30.0) / 1e6)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_an_event_with_empty_data_is_skipped_as_a_keep_alive(
    kind: str, server: FakeLlmServer
) -> None:
    # A bare `data:` line then a blank line (some servers keep a connection open so) was
    # dispatched with empty data, and failed the stream as a malformed event.
    turn = Turn("Hello there", text_chunks=["Hello", " there"])
    reply = render_openai(turn, True) if kind == "openai" else render_anthropic(turn, True)
    assert reply.frames is not None
    reply.frames[1:1] = [b"data:\n\n", b"data: \r\n\r\n"]  # before any output
    reply.frames.insert(-2, b"data:\n\n")  # after it
    server.script(reply)
    async with make_provider(kind, server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].response.text == "Hello there"
    assert len(server.requests) == 1


async def test_continuation_chunks_with_an_empty_id_continue_their_call(
    server: FakeLlmServer,
) -> None:
    # DashScope (Qwen, GLM) sends "id": "" and "name": "" on every continuation.
    first = {"index": 0, "id": "call_1", "type": "function"}
    first["function"] = {"name": "bash", "arguments": ""}
    pieces = ['{"comm', 'and": "ls"}']
    frames = [chunk({"role": "assistant", "tool_calls": [first]})]
    for piece in pieces:
        more = {
            "index": 0,
            "id": "",
            "type": "function",
            "function": {"name": "", "arguments": piece},
        }
        frames.append(chunk({"tool_calls": [more]}))
    frames += [chunk({}, "tool_calls"), sse("[DONE]")]
    server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    (call,) = events[-1].response.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "bash", {"command": "ls"})


@pytest.mark.parametrize("call_id", [None, ""], ids=["null", "empty"])
async def test_an_unstreamed_call_without_an_id_gets_one_as_a_streamed_call_does(
    call_id: str | None, server: FakeLlmServer
) -> None:
    # NVIDIA NIM and StepFun leave ids out: the whole reply was refused as malformed.
    call = {"id": call_id, "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    body = {
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
    }
    server.script(
        Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    )
    async with make_provider("openai", server, retry=ONCE) as llm:
        (parsed,) = (await llm.chat(USER)).tool_calls
    assert (parsed.id, parsed.name, parsed.arguments) == ("call_0", "add", {"a": 1})
