"""Wire faults found by a ninth sweep, each checked over real HTTP on loopback."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import CutOffArgumentsError, Message, ToolDefinition

from .conftest import API_KEY, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, render_openai

ONCE = ar.RetryPolicy(max_attempts=1)
TWICE = ar.RetryPolicy(max_attempts=2, base_delay=0.001, jitter=False)
USER = [Message("user", "hi")]
JSON = {"content-type": "application/json"}
AUTH_ERROR = b'{"error": {"type": "authentication_error", "message": "invalid x-api-key"}}'


async def _call(kind: str, server: FakeLlmServer, stream: bool, **options: Any) -> Any:
    async with make_provider(kind, server, **options) as llm:
        if stream:
            return [event async for event in llm.chat_stream(USER)]
        return await llm.chat(USER)


@pytest.mark.parametrize("given", [5, True, "abc", [1]], ids=["int", "bool", "str", "list"])
async def test_anthropic_whole_reply_cut_inside_a_call_whose_input_is_no_object(
    server: FakeLlmServer, given: Any
) -> None:
    # The token limit's check looked for required arguments in the input as it came: a
    # number or a bool raised a bare TypeError past every handler of the run, and a string
    # was searched for them as a substring.
    whole = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get", "input": given}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    server.script(Reply(body=json.dumps(whole).encode(), headers=JSON))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(CutOffArgumentsError, match="'get'"):
            await llm.chat(USER, tools=[ToolDefinition(name="get", parameters=schema)])


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_an_error_status_whose_body_the_connection_cuts_keeps_its_status(
    server: FakeLlmServer, kind: str, stream: bool
) -> None:
    # Reading the error body failed with the dropped connection, and that transport error
    # stood for the reply: a retryable "connection failed" with no status, so a 401 was
    # sent again and again, and a 429 lost the delay its Retry-After asked for.
    server.script(Reply(status=401, headers=JSON, body=AUTH_ERROR, cut_at=30))
    with pytest.raises(ar.ProviderError) as refused:
        await _call(kind, server, stream, retry=TWICE)
    assert (refused.value.status, refused.value.retryable) == (401, False)
    assert "only the first 30 bytes of the error body were read" in str(refused.value)
    assert len(server.requests) == 1

    server.reset()
    limited = Reply(status=429, headers={**JSON, "retry-after": "7"}, body=AUTH_ERROR, cut_at=30)
    server.script(limited)
    with pytest.raises(ar.ProviderError) as later:
        await _call(kind, server, stream, retry=ONCE)
    assert (later.value.status, later.value.retryable, later.value.retry_after) == (429, True, 7.0)

    # A body shorter than its content-length says: what came is read, and it is whole JSON.
    server.reset()
    short = Reply(status=401, headers={**JSON, "content-length": "500"}, body=AUTH_ERROR)
    server.script(short)
    with pytest.raises(ar.ProviderError, match="invalid x-api-key") as whole:
        await _call(kind, server, stream, retry=TWICE)
    assert (whole.value.status, whole.value.retryable) == (401, False)
    assert len(server.requests) == 1


def test_the_embedder_keeps_the_status_of_an_error_body_the_connection_cuts(
    server: FakeLlmServer,
) -> None:
    server.script(Reply(status=401, headers=JSON, body=AUTH_ERROR, cut_at=30))
    embedder = ar.OpenAIEmbedder(api_key=API_KEY, base_url=server.url + "/v1")
    with pytest.raises(ar.ProviderError) as refused:
        embedder.embed(["hello"])
    assert (refused.value.status, refused.value.retryable) == (401, False)


def test_the_embedder_retries_a_reply_the_connection_closed_inside(
    server: FakeLlmServer,
) -> None:
    # A body that ends where the connection closes, cut inside its JSON: "malformed", not
    # retried, where the chat providers take the same cut for the dropped connection it is.
    body = json.dumps({"data": [{"index": 0, "embedding": [0.5, 0.5]}], "model": "m"}).encode()
    server.script(Reply(frames=[body[:25]], headers=JSON, close_delimited=True))
    server.script(Reply(body=body, headers=JSON))
    embedder = ar.OpenAIEmbedder(api_key=API_KEY, base_url=server.url + "/v1")
    assert embedder.embed(["hello"]).tolist() == [[0.5, 0.5]]
    assert len(server.requests) == 2


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut"])
async def test_a_gzip_reply_whose_stream_breaks_off_is_retried(
    server: FakeLlmServer, cut: bool
) -> None:
    # httpx does not check that a gzip stream ended: a proxy's broken gzip decoded to part
    # of the JSON, a "malformed" reply that was not retried (the same cut streamed was).
    packed = gzip.compress(render_openai(Turn(text="fine"), stream=False).body)
    body = packed[: len(packed) // 2] if cut else packed
    server.script(Reply(body=body, headers={**JSON, "content-encoding": "gzip"}))
    server.script(Reply(body=packed, headers={**JSON, "content-encoding": "gzip"}))
    reply = await _call("openai", server, False, retry=TWICE)
    assert reply.text == "fine"
    assert len(server.requests) == (2 if cut else 1)


@pytest.mark.parametrize("done", [b"data: [DONE] \n\n", b"data: [DONE]\t\n\n"])
async def test_an_openai_done_line_with_trailing_blanks_ends_the_stream(
    server: FakeLlmServer, done: bytes
) -> None:
    # It was read as a chunk that is no JSON: the whole reply failed after its text was out.
    frames = render_openai(Turn(text="Hello"), stream=True).frames
    assert frames is not None and frames[-1] == b"data: [DONE]\n\n"
    server.script(Reply(frames=[*frames[:-1], done], headers={"content-type": "text/event-stream"}))
    events = await _call("openai", server, True, retry=ONCE)
    assert events[-1].response.text == "Hello"


async def test_a_compressed_reply_with_half_a_surrogate_pair_is_read_not_retried(
    server: FakeLlmServer,
) -> None:
    # The check for a cut read the body with pydantic's parser, which refuses the escape of
    # half a surrogate pair that the reply's own parser takes: each compressed such reply
    # was "cut short", retried, and billed again.
    body = render_openai(Turn(text="hi"), stream=False).body.replace(b'"hi"', b'"hi \\ud83d"')
    server.script(
        *[Reply(body=gzip.compress(body), headers={**JSON, "content-encoding": "gzip"})] * 2
    )
    reply = await _call("openai", server, False, retry=TWICE)
    assert reply.text == "hi \ufffd" and len(server.requests) == 1


async def test_an_identity_encoded_reply_that_is_no_json_is_not_taken_for_cut(
    server: FakeLlmServer,
) -> None:
    # `identity` is no compression: the body is whole, and malformed, not cut short.
    body = b'{"id": "c1", "choices": [}'
    server.script(*[Reply(body=body, headers={**JSON, "content-encoding": "identity"})] * 2)
    with pytest.raises(ar.ProviderError, match="malformed") as malformed:
        await _call("openai", server, False, retry=TWICE)
    assert not malformed.value.retryable and len(server.requests) == 1


@ar.tool
def write_file(path: str, content: str) -> str:
    """Writes a file."""
    return path


def _cut_call_reply(kind: str, stream: bool) -> Turn | Reply:
    """A billed reply (1000 tokens in, 50 out) cut off inside its tool call's arguments."""
    stop = "length" if kind == "openai" else "max_tokens"
    if kind == "anthropic" and not stream:  # whole: the call's input lacks what is required
        whole = {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [{"type": "tool_use", "id": "t1", "name": "write_file", "input": {}}],
            "stop_reason": stop,
            "usage": {"input_tokens": 1000, "output_tokens": 50},
        }
        return Reply(body=json.dumps(whole).encode(), headers=JSON)
    return Turn(
        tool_calls=[("t1", "write_file", {"path": "a", "content": "a long text"})],
        stop_reason=stop,
        arguments_cut=12,
        input_tokens=1000,
        output_tokens=50,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_billed_reply_cut_inside_a_call_is_charged_to_the_run(
    server: FakeLlmServer, kind: str, stream: bool
) -> None:
    # The provider charged it to its own metrics, then raised: the run's metrics and budget
    # never saw it, where a reply cut inside its final answer is charged.
    server.script(_cut_call_reply(kind, stream))
    metrics, budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10_000)
    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(config, tools=[write_file], metrics=metrics, budget=budget)
    if stream:  # a listener of text deltas: the runtime streams the reply
        runtime.events.on(lambda event: None)
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ar.AgentLoopError, match="cut off"):
            await runtime.run_agent_with_provider("a", "write it", llm)
    assert server.requests[0].json.get("stream", False) is stream
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 50)
    assert budget.used_tokens == 1050


@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_billed_reply_with_no_choices_is_charged_to_the_run(
    server: FakeLlmServer, mode: str
) -> None:
    no_choices = {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050},
    }
    server.script(Reply(body=json.dumps(no_choices).encode(), headers=JSON))
    metrics, budget = ar.RuntimeMetrics(), ar.CostBudget(max_tokens=10_000)
    config = ar.AgentConfig(mode=mode)  # type: ignore[arg-type]
    runtime = ar.AgentRuntime(config, tools=[write_file], metrics=metrics, budget=budget)
    async with make_provider("openai", server, retry=ONCE) as llm:
        with pytest.raises(ar.ProviderError, match="no choices") as refused:
            await runtime.run_agent_with_provider("a", "write it", llm)
    assert refused.value.usage == ar.Usage(input_tokens=1000, output_tokens=50)
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 50)
    assert budget.used_tokens == 1050
