"""More provider cases a demanding user meets, over loopback HTTP against the fake server:
the server's `x-should-retry` verdict, message content of the wrong type, and the scripted
provider's argument checks and streamed tool calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import ProviderError, RetryPolicy
from llm_agent_runtime.providers.base import (
    Message,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
)

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, sse
from .test_api_rules import reply

USER = [Message("user", "hi")]
JSON = {"content-type": "application/json"}


def error_reply(status: int, should_retry: str | None, kind: str = "openai") -> Reply:
    headers = dict(JSON)
    if should_retry is not None:
        headers["x-should-retry"] = should_retry
    if kind == "anthropic":
        body = {"type": "error", "error": {"type": "api_error", "message": "scripted"}}
    else:
        body = {"error": {"message": "scripted", "type": "server_error"}}
    return Reply(status=status, headers=headers, body=json.dumps(body).encode())


async def collect(stream: Any) -> list[Any]:
    return [event async for event in stream]


# ---------------------------------------------------------------------- x-should-retry
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_x_should_retry_false_is_not_retried(
    server: FakeLlmServer, retry: RetryPolicy, kind: str, streamed: bool
) -> None:
    # Both APIs send `x-should-retry` (their SDKs obey it before the status): a 500 the
    # server says is not worth another attempt was sent again, and again.
    server.script(error_reply(500, "false", kind), Turn(text="second"))
    provider = make_provider(kind, server, retry=retry)
    async with provider:
        with pytest.raises(ProviderError) as caught:
            await reply(provider, USER, streamed)
    assert caught.value.status == 500
    assert caught.value.retryable is False
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_x_should_retry_true_is_retried(
    server: FakeLlmServer, retry: RetryPolicy, kind: str, streamed: bool
) -> None:
    # The other way round: a status not retried by itself (409 aside, a 4xx) that the
    # server says to try again.
    server.script(error_reply(400, "true", kind), Turn(text="second"))
    provider = make_provider(kind, server, retry=retry)
    async with provider:
        response = await reply(provider, USER, streamed)
    assert response.text == "second"
    assert len(server.requests) == 2


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("status", [302, 600])
async def test_x_should_retry_true_on_a_redirect_or_a_status_past_599_is_not_retried(
    server: FakeLlmServer, retry: RetryPolicy, kind: str, streamed: bool, status: int
) -> None:
    # It was retried (3 requests): another attempt is answered the same way.
    error = error_reply(status, "true", kind)
    error.headers["location"] = "http://elsewhere.example/"
    server.script(error, Turn(text="second"))
    provider = make_provider(kind, server, retry=retry)
    async with provider:
        with pytest.raises(ProviderError) as caught:
            await reply(provider, USER, streamed)
    assert (caught.value.status, caught.value.retryable) == (status, False)
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_x_should_retry_absent_or_unreadable_leaves_the_status_to_decide(
    server: FakeLlmServer, retry: RetryPolicy, kind: str
) -> None:
    server.script(error_reply(503, None, kind), error_reply(503, "maybe", kind), Turn(text="ok"))
    provider = make_provider(kind, server, retry=retry)
    async with provider:
        assert (await provider.chat(USER)).text == "ok"
    assert len(server.requests) == 3
    server.reset()
    server.script(error_reply(400, "no", kind))
    provider = make_provider(kind, server, retry=retry)
    async with provider:
        with pytest.raises(ProviderError) as caught:
            await provider.chat(USER)
    assert caught.value.retryable is False
    assert len(server.requests) == 1


# ---------------------------------------------------------------------- message content
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("content", [42, {"text": "hi"}, ["hi"], b"hi"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_message_content_that_is_no_str_is_a_type_error_before_sending(
    server: FakeLlmServer, kind: str, content: Any, streamed: bool
) -> None:
    # OpenAIProvider sent `"content": 42` (or an object) for the server to refuse with a
    # 400, and bytes failed as a bare "not JSON serializable".
    server.fallback = Turn(text="ok")
    provider = make_provider(kind, server)
    messages = [Message("system", "be brief"), Message("user", content)]
    async with provider:
        with pytest.raises(TypeError, match=r"messages\[1\]\.content must be a str"):
            if streamed:
                await collect(provider.chat_stream(messages))
            else:
                await provider.chat(messages)
        with pytest.raises(TypeError, match=r"messages\[0\]\.content must be a str"):
            await provider.complete(content)
    assert server.requests == []


async def test_openai_sends_no_null_content(server: FakeLlmServer) -> None:
    # A message without content (None, as the wire says it) went out as `"content": null`,
    # which the API refuses for a user or tool message.
    server.fallback = Turn(text="ok")
    provider = make_provider("openai", server)
    messages = [
        Message("user", None),  # type: ignore[arg-type]
        Message("assistant", None, [ar.ToolCall("c1", "f", {})]),  # type: ignore[arg-type]
        Message("tool", None, tool_call_id="c1"),  # type: ignore[arg-type]
    ]
    async with provider:
        assert (await provider.chat(messages)).text == "ok"
    sent = server.requests[0].json["messages"]
    assert sent[0]["content"] == ""
    assert sent[1]["content"] is None  # the API's own form for tool calls alone
    assert sent[2]["content"] == ""


# ---------------------------------------------------------------------- ScriptedProvider
@pytest.mark.parametrize("bad", ["hello", None, [{"role": "user", "content": "hi"}], 5])
@pytest.mark.parametrize("scripted", ["rule", "replies"])
async def test_scripted_provider_refuses_messages_of_the_wrong_type(
    bad: Any, scripted: str
) -> None:
    # A str failed as a bare AttributeError ("'str' object has no attribute 'content'"),
    # dicts in the OpenAI SDK's shape too, and None was answered as if it were a request.
    provider = (
        ar.ScriptedProvider(rule=lambda prompt: "x")
        if scripted == "rule"
        else ar.ScriptedProvider(["x"])
    )
    with pytest.raises(TypeError, match="messages"):
        await provider.chat(bad)
    with pytest.raises(TypeError, match="messages"):
        await collect(provider.chat_stream(bad))
    assert provider.calls == 0


async def test_scripted_provider_takes_any_iterable_of_messages() -> None:
    # A generator (which the HTTP providers take) failed: "not subscriptable".
    seen: list[str] = []
    provider = ar.ScriptedProvider(rule=lambda prompt: seen.append(prompt) or "x")
    response = await provider.chat(m for m in [Message("user", "a"), Message("user", "b")])
    assert response.text == "x"
    assert seen == ["b"]
    # Two characters in, one out, at 4 a token, rounded up: a real API bills a short reply
    # (its output was 0 tokens, which a token budget never counted).
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1, 1)


async def test_scripted_provider_rule_reads_the_text_of_content_parts() -> None:
    # The rule got the list of parts, where it is given a str.
    seen: list[str] = []
    provider = ar.ScriptedProvider(rule=lambda prompt: seen.append(prompt) or "x")
    parts = [
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "text", "text": "in this picture?"},
    ]
    await provider.chat([Message("user", parts)])
    await provider.chat([Message("user", None)])
    assert seen == ["what is\nin this picture?", ""]


async def test_scripted_provider_refuses_tools_of_the_wrong_type() -> None:
    provider = ar.ScriptedProvider(rule=lambda prompt: "x")
    with pytest.raises(TypeError, match="tools"):
        await provider.chat(USER, tools="get_weather")  # type: ignore[arg-type]


async def test_scripted_provider_streams_its_tool_calls_as_deltas() -> None:
    # A real provider streams each tool call as `ToolCallDelta`s: the scripted one yielded
    # none, so a consumer assembling calls from the deltas saw no call in a scripted test.
    reply = ar.ScriptedProvider.tool_call_reply(
        [("get_weather", {"city": "Paris"}), ("clock", {})], text="checking"
    )
    provider = ar.ScriptedProvider([reply])
    events = await collect(provider.chat_stream(USER))
    assert events[0] == TextDelta("checking")
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(d.index, d.id, d.name) for d in deltas] == [
        (0, "call_0", "get_weather"),
        (1, "call_1", "clock"),
    ]
    assert [json.loads(d.arguments_delta) for d in deltas] == [{"city": "Paris"}, {}]
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].response.tool_calls == reply.tool_calls
    assert len(events) == 4


# ---------------------------------------------------------------------- content as parts
THINKING_PART = {"type": "thinking", "thinking": [{"type": "text", "text": "Let me think."}]}


async def test_openai_reads_a_reply_whose_content_is_a_list_of_parts(
    server: FakeLlmServer,
) -> None:
    # Mistral's reasoning models (and some compatible servers) send `content` as a list of
    # parts, their thinking apart from the answer: it failed as a malformed response.
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": [THINKING_PART, {"type": "text", "text": "Paris"}],
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    server.script(Reply(body=json.dumps(body).encode(), headers=JSON))
    provider = make_provider("openai", server)
    async with provider:
        response = await provider.chat(USER)
    assert response.text == "Paris"  # the answer's text; the thinking is not the answer
    assert response.stop_reason == "stop"


async def test_openai_streams_deltas_whose_content_is_a_list_of_parts(
    server: FakeLlmServer,
) -> None:
    def chunk(content: Any, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        return sse({"choices": [choice]})

    frames = [
        chunk([THINKING_PART]),
        chunk([{"type": "text", "text": "Par"}]),
        chunk("is"),  # a plain string after parts: both forms may come in one stream
        chunk([{"type": "text", "text": "!"}, {"type": "image_url", "image_url": {}}], "stop"),
        b"data: [DONE]\n\n",
    ]
    server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    provider = make_provider("openai", server)
    async with provider:
        events = await collect(provider.chat_stream(USER))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Paris!"
    assert events[-1].response.text == "Paris!"


@pytest.mark.parametrize("bad", [None, "100", 0, 2.0, True])
async def test_anthropic_refuses_a_calls_max_tokens_that_is_no_count(
    server: FakeLlmServer, bad: Any
) -> None:
    # The constructor's was checked, a call's was sent as given: a 400 from the server
    # (`max_tokens: Input should be a valid integer`), not retried, after a round trip.
    provider = make_provider("anthropic", server)
    async with provider:
        with pytest.raises(ValueError, match="max_tokens must be"):
            await provider.chat(USER, max_tokens=bad)
        with pytest.raises(ValueError, match="max_tokens must be"):
            await collect(provider.chat_stream(USER, max_tokens=bad))
    assert server.requests == []


async def test_openai_stream_that_ends_cleanly_after_its_finish_reason_is_whole(
    server: FakeLlmServer,
) -> None:
    # Some compatible servers end the body after the last chunk without `data: [DONE]`; the
    # official SDK reads such a stream to its end. With the finish reason in, the reply is
    # whole: it failed as "ended before [DONE]" (and, retried, was paid for twice).
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    frames = [
        chunk({"role": "assistant", "content": "Par"}),
        chunk({"content": "is"}, "stop"),
        sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
    ]
    server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    provider = make_provider("openai", server)
    async with provider:
        events = await collect(provider.chat_stream(USER))
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.response.text, end.response.stop_reason) == ("Paris", "stop")
    assert (end.response.usage.input_tokens, end.response.usage.output_tokens) == (7, 2)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("calls", "text", "message"),
    [
        ([("echo", '{"text": "hi"}')], "", r"call 0 must be .* got \('echo', '\{\"text\""),
        ([("echo", None)], "", r"call 0 must be a \(name, arguments\) pair"),
        ([("echo", {}), ("echo", [1])], "", r"call 1 must be"),
        (("echo", {}), "", r"call 0 must be .* got 'echo'"),  # one pair, not a list of them
        ([(1, {})], "", "call 0 must be"),
        ([("echo", {})], None, "text must be a str, got NoneType"),
    ],
)
def test_scripted_tool_calls_are_checked_as_a_provider_hands_them_over(
    calls: Any, text: Any, message: str
) -> None:
    # JSON text, None or a list were taken as arguments, which no provider hands over (the
    # runtime then decoded a str, and the stream encoded it twice); one pair built nonsense.
    with pytest.raises(TypeError, match=f"tool_call_reply: {message}"):
        ar.ScriptedProvider.tool_call_reply(calls, text=text)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"replies": {"hello": "hi there"}}, ValueError, "must be a list of replies, got a dict"),
        ({"replies": b"hi"}, ValueError, "must be a list of replies, got a bytes"),
        ({"rule": "hello"}, TypeError, "rule must be a function .*, got str"),
    ],
)
def test_a_script_of_the_wrong_shape_is_refused_when_made(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    # A dict replayed its keys; bytes failed at the first call, as a rule that is no function.
    with pytest.raises(error, match=message):
        ar.ScriptedProvider(**arguments)
