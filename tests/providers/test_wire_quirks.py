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


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_reply_with_one_call_cut_off_runs_none_of_its_calls(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    ran: list[str] = []

    @ar.tool
    def note(text: str) -> str:
        """Notes text."""
        ran.append(text)
        return "noted"

    # The first call's arguments (13 characters) arrived whole, the second's were cut; a whole
    # Anthropic reply closes the cut one's input itself, and it ends the reply.
    calls = [("c1", "note", {"text": "a"}), ("c2", "note", {"text": "a longer note"})]
    limit = "length" if kind == "openai" else "max_tokens"
    server.script(Turn(tool_calls=calls, stop_reason=limit, arguments_cut=16))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[note])
    if stream:
        runtime.events.on(lambda event: None)
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ar.AgentLoopError, match=r"token limit.*a tool call's input"):
            await runtime.run_agent_with_provider("a", "note two things", llm)
    assert ran == []  # the whole call did not run either
    assert runtime.metrics.snapshot().input_tokens == 11  # the reply was paid for


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


# ---------------------------------------------------------------------- compatible servers
@ar.tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _whole(message: dict[str, Any], finish: str, **extra: Any) -> Reply:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if message:
        choice["message"] = message
    body = {"id": "c", "model": "m", "choices": [choice], **extra}
    return Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_arguments_sent_as_a_json_object_are_read(
    stream: bool, server: FakeLlmServer
) -> None:
    # llama.cpp (`--tool-args-object`) and TGI: `"arguments": {...}` failed the whole reply
    # as malformed, a non-retryable ProviderError, on the model's first tool call.
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather"}}
    call["function"]["arguments"] = {"city": "Paris"}  # type: ignore[index]
    if stream:
        first = Reply(
            frames=[
                chunk({"role": "assistant", "tool_calls": [{"index": 0, **call}]}),
                chunk({}, "tool_calls"),
                b"data: [DONE]\n\n",
            ],
            headers={"content-type": "text/event-stream"},
        )
    else:
        first = _whole({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
    server.script(first, Turn("Sunny."))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_weather])
    if stream:
        runtime.events.on(lambda event: None)  # a listener: the runtime streams
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "weather?", llm)
    assert [(s.action_input, s.observation) for s in session.steps[:1]] == [
        ({"city": "Paris"}, "sunny in Paris")
    ]
    assert session.final_answer == "Sunny."


async def test_arguments_sent_as_a_json_list_fail_the_call_not_the_run(
    server: FakeLlmServer,
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": [1]}}
    server.script(_whole({"role": "assistant", "tool_calls": [call]}, "tool_calls"), Turn("ok"))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_weather])
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "weather?", llm)
    assert session.steps[0].error_kind == "permanent"
    assert "not a JSON object" in session.steps[0].observation
    assert session.final_answer == "ok"


@pytest.mark.parametrize("index", [0, None], ids=["index 0", "no index"])
async def test_parallel_calls_streamed_under_one_id_are_two_calls(
    index: int | None, server: FakeLlmServer
) -> None:
    # DeepSeek, GLM and some OpenRouter engines: the second call's piece, under the first's
    # id, was joined to its arguments (`{"city": "Paris"}{"city": "Rome"}`): neither ran.
    def piece(city: str) -> dict[str, Any]:
        arguments = json.dumps({"city": city})
        call = {"id": "call_same", "type": "function", "function": {"name": "get_weather"}}
        call["function"]["arguments"] = arguments  # type: ignore[index]
        return {"tool_calls": [call if index is None else {"index": index, **call}]}

    frames = [chunk(piece("Paris")), chunk(piece("Rome")), chunk({}, "tool_calls")]
    server.script(
        Reply(frames=[*frames, b"data: [DONE]\n\n"], headers={"content-type": "text/event-stream"}),
        Turn("Sunny both."),
    )
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_weather])
    runtime.events.on(lambda event: None)  # a listener: the runtime streams
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "weather?", llm)
    assert [s.observation for s in session.steps[:2]] == ["sunny in Paris", "sunny in Rome"]
    sent = server.requests[1].json["messages"]
    ids = [c["id"] for c in sent[-3]["tool_calls"]]
    assert len(set(ids)) == 2 and [m["tool_call_id"] for m in sent[-2:]] == ids


@ar.tool
def get_time() -> str:
    """The time."""
    return "noon"


@ar.tool
def get_date() -> str:
    """The date."""
    return "today"


@pytest.mark.parametrize("announced", [False, True], ids=["named with", "named before"])
async def test_calls_under_one_id_with_equal_arguments_are_two_calls(
    announced: bool, server: FakeLlmServer
) -> None:
    # `get_date({})` after `get_time({})` under the same id read as the first call's
    # arguments sent again (a gateway's ending): dropped, and never run.
    def piece(name: str | None, arguments: str) -> bytes:
        function = (
            {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
        )
        return chunk({"tool_calls": [{"index": 0, "id": "call_same", "function": function}]})

    second = [piece("get_date", ""), piece(None, "{}")] if announced else [piece("get_date", "{}")]
    frames = [piece("get_time", "{}"), *second, chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
    server.script(
        Reply(frames=frames, headers={"content-type": "text/event-stream"}), Turn("Noon, today.")
    )
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_time, get_date])
    runtime.events.on(lambda event: None)  # a listener: the runtime streams
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "when?", llm)
    assert [(s.action, s.observation) for s in session.steps[:2]] == [
        ("get_time", "noon"),
        ("get_date", "today"),
    ]


async def test_a_call_ended_by_its_whole_arguments_again_under_its_id_is_one_call(
    server: FakeLlmServer,
) -> None:
    # A gateway ending a call streamed in pieces with a chunk holding it whole: no second call.
    def piece(arguments: str) -> bytes:
        call = {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": arguments}}
        return chunk({"tool_calls": [call]})

    frames = [piece('{"city": '), piece('"Paris"}'), piece('{"city": "Paris"}')]
    server.script(
        Reply(
            frames=[*frames, chunk({}, "tool_calls"), b"data: [DONE]\n\n"],
            headers={"content-type": "text/event-stream"},
        ),
        Turn("Sunny."),
    )
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_weather])
    runtime.events.on(lambda event: None)
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "weather?", llm)
    assert [s.observation for s in session.steps] == ["sunny in Paris", ""]


async def test_mistral_model_length_is_a_cut_off_reply(server: FakeLlmServer) -> None:
    # Mistral's finish reason when the model's context is full: half a sentence was the
    # run's final answer.
    server.script(
        _whole({"role": "assistant", "content": "Sunny, with a high of 2"}, "model_length")
    )
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_weather])
    async with make_provider("openai", server, retry=ONCE) as llm:
        with pytest.raises(ar.AgentLoopError, match="cut off by the token limit"):
            await runtime.run_agent_with_provider("a", "weather?", llm)


async def test_a_choice_without_its_message_is_an_empty_reply(server: FakeLlmServer) -> None:
    # Gemini's endpoint at times leaves `message` out: a non-retryable "malformed" error,
    # where an empty reply gets the corrective re-prompt.
    server.script(_whole({}, "stop"), Turn("42"))
    config = ar.AgentConfig(mode="tools", corrective_reprompt=True)
    runtime = ar.AgentRuntime(config, tools=[get_weather])
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "answer?", llm)
    assert session.final_answer == "42" and len(server.requests) == 2


async def test_tokens_in_the_total_only_are_counted_as_output(server: FakeLlmServer) -> None:
    # Gemini's endpoint counts thinking in `total_tokens` only: a budget was under-charged.
    usage = {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 1022}
    server.script(_whole({"role": "assistant", "content": "ok"}, "stop", usage=usage))
    async with make_provider("openai", server, retry=ONCE) as llm:
        reply = await llm.chat(USER)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (20, 1002)
    assert reply.usage.reasoning_tokens == 1000


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # xAI: the reasoning is in the total and the details, not in completion_tokens.
        (
            {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135}
            | {"completion_tokens_details": {"reasoning_tokens": 94}},
            (32, 103, 94),
        ),
        # OpenAI's: the total is the sum, the reasoning part of the completion.
        (
            {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60}
            | {"completion_tokens_details": {"reasoning_tokens": 30}},
            (10, 50, 30),
        ),
        # A total of another type costs no other count (it zeroed the whole usage).
        ({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140.5}, (100, 40, 0)),
        ({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": "n/a"}, (100, 40, 0)),
    ],
)
async def test_reasoning_in_the_total_is_counted_once(
    usage: dict[str, Any], expected: tuple[int, int, int], server: FakeLlmServer
) -> None:
    server.script(_whole({"role": "assistant", "content": "ok"}, "stop", usage=usage))
    async with make_provider("openai", server, retry=ONCE) as llm:
        got = (await llm.chat(USER)).usage
    assert (got.input_tokens, got.output_tokens, got.reasoning_tokens) == expected


async def test_a_blank_finish_reason_is_none(server: FakeLlmServer) -> None:
    # Some compatible servers send "" where OpenAI sends null, in every chunk: taken as a
    # reason, a stream cut before [DONE] was a whole reply, half an answer the run's final.
    headers = {"content-type": "text/event-stream"}
    cut = [
        chunk({"role": "assistant", "content": "The answer is"}, ""),
        chunk({"content": " 4"}, ""),
    ]
    server.script(
        Reply(frames=cut, headers=headers, close_delimited=True),
        Reply(frames=[*cut, chunk({}, "stop"), sse("[DONE]")], headers=headers),
        _whole({"role": "assistant", "content": "42"}, ""),
    )
    async with make_provider("openai", server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match=r"ended before \[DONE\]") as raised:
            [event async for event in llm.chat_stream(USER)]
        assert raised.value.retryable
        events = [event async for event in llm.chat_stream(USER)]
        whole = await llm.chat(USER)
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.response.text == "The answer is 4"
    assert end.response.stop_reason == "stop"
    assert whole.text == "42" and whole.stop_reason is None


@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("blank", ["", "  \n"])
async def test_anthropic_blank_system_argument_is_left_out(
    streamed: bool, blank: str, server: FakeLlmServer
) -> None:
    # It went out as a blank text block before the system messages', which the API refuses.
    server.fallback = Turn("ok")
    async with make_provider("anthropic", server) as llm:
        for messages in ([Message("system", "Be brief."), *USER], USER):
            if streamed:
                [event async for event in llm.chat_stream(messages, system=blank)]
            else:
                await llm.chat(messages, system=blank)
    with_messages, alone = (r.json for r in server.requests)
    assert with_messages["system"] == "Be brief."
    assert "system" not in alone
