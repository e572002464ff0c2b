"""API keys that must never leak, streams that end at their last event, timeouts that hold
with a caller's client, and per-call stop sequences: on the wire, against the fake server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import traceback
from typing import Any

import httpx
import pytest

from llm_agent_runtime import (
    AgentConfig,
    AgentRuntime,
    AnthropicProvider,
    LlmTextDelta,
    OpenAIProvider,
    ProviderError,
    RetryPolicy,
    ScriptedProvider,
)
from llm_agent_runtime.providers._http import error_message
from llm_agent_runtime.providers.base import Message, StreamEnd, TextDelta

from .conftest import API_KEY, PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, render_anthropic, render_openai

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)


def shown(error: BaseException) -> str:
    """Everything a traceback of the error prints, plus the reprs of its whole chain.

    A suppressed context (`raise ... from None`) is walked too, with what its links keep
    beyond their message (a decode error's `doc`, an encode error's `object`): any code
    holding the error can read them.
    """
    texts = ["".join(traceback.format_exception(error))]
    link: BaseException | None = error
    while link is not None:
        texts += [str(link), repr(link), repr(getattr(link, "__dict__", {}))]
        texts += [str(getattr(link, name, "")) for name in ("doc", "object")]
        link = link.__cause__ or link.__context__
    return "\n".join(texts)


# ---------------------------------------------------------------------- API keys
BAD_KEYS = {
    "trailing newline": API_KEY + "\n",
    "trailing CRLF": API_KEY + "\r\n",
    "trailing space": API_KEY + " ",
    "inner tab": API_KEY[:10] + "\t" + API_KEY[10:],
    "NUL": API_KEY + "\x00",
    "DEL": API_KEY + "\x7f",
    "non-ASCII": "é" + API_KEY,
    "non-ASCII inside": API_KEY[:8] + "ключ" + API_KEY[8:],
}


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("what", BAD_KEYS)
def test_a_key_no_header_can_carry_is_refused_up_front_without_quoting_it(
    kind: str, what: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = BAD_KEYS[what]
    with pytest.raises(ProviderError, match="API key is not valid") as caught:
        make_provider(kind, server, api_key=key)
    assert "SECRET" not in shown(caught.value)
    if "\x00" in key:
        return  # no environment variable can hold it
    # The same from the environment (an env file or a secret mount often ends in a newline).
    env = "OPENAI_API_KEY" if kind == "openai" else "ANTHROPIC_API_KEY"
    monkeypatch.setenv(env, key)
    cls: Any = OpenAIProvider if kind == "openai" else AnthropicProvider
    with pytest.raises(ProviderError, match="API key is not valid") as caught:
        cls()
    assert "SECRET" not in shown(caught.value)
    assert server.requests == []


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("blank", ["", "   ", "\n", "\t\r\n"], ids=repr)
async def test_a_blank_key_argument_is_unset_as_a_blank_variable_is(
    kind: str, blank: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `api_key="   "` (a blank line read from a file) was refused as a key with whitespace,
    # where a blank base URL, or a blank variable, counts as unset.
    env = "OPENAI_API_KEY" if kind == "openai" else "ANTHROPIC_API_KEY"
    header = "authorization" if kind == "openai" else "x-api-key"
    monkeypatch.setenv(env, API_KEY)
    server.script(Turn("ok"))
    async with make_provider(kind, server, api_key=blank, retry=ONCE) as llm:
        assert await llm.complete("x") == "ok"
    assert API_KEY in server.requests[0].headers[header]  # the environment's key
    monkeypatch.delenv(env)
    cls: Any = OpenAIProvider if kind == "openai" else AnthropicProvider
    with pytest.raises(ProviderError, match=r"no \w+ API key"):
        cls(api_key=blank)  # the provider's own API, and no key at all


@pytest.mark.parametrize(
    "url",
    [
        "https://API.anthropic.com",
        "https://api.anthropic.com:443",
        "https://api.anthropic.com/v1",
        " https://Api.Anthropic.com/ ",
        "https://api.anthropic.com./v1",  # a fully qualified name: the same host
    ],
)
def test_anthropics_own_api_is_never_called_without_a_key_however_its_url_is_written(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the default spelling used to be refused: the others sent requests with no key.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(ProviderError, match="no Anthropic API key"):
        AnthropicProvider(base_url=url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)  # from the variable too
    with pytest.raises(ProviderError, match="no Anthropic API key"):
        AnthropicProvider()


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_an_echoed_key_is_redacted_before_a_long_message_is_cut(
    kind: str, server: FakeLlmServer
) -> None:
    # The cut at 500 characters falls inside the key: no part of it may survive.
    message = "x" * 480 + f" key {API_KEY}"
    server.script(Reply(401, body=json.dumps({"error": {"message": message}}).encode()))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert "SECRET" not in shown(caught.value) and API_KEY[:8] not in str(caught.value)
    assert caught.value.status == 401


def test_error_message_redacts_then_cuts() -> None:
    body = json.dumps({"error": {"message": "y" * 495 + "sk-abcdefgh"}}).encode()
    assert error_message(body).endswith("sk-ab")  # cut first: a part of the key is left
    redacted = error_message(body, lambda text: text.replace("sk-abcdefgh", "[redacted]"))
    assert redacted == "y" * 495 + "[reda" and "sk-" not in redacted


ODD_KEY = "sk-odd'key\\with\"quotes-SECRET"


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    "echo",
    [
        json.dumps({"auth": ODD_KEY}),  # JSON-escaped, inside a body that is not JSON
        repr(f"Bearer {ODD_KEY}"),
        repr(f"Bearer {ODD_KEY}".encode()),
    ],
)
async def test_an_echoed_key_is_redacted_in_its_escaped_forms(
    kind: str, echo: str, server: FakeLlmServer
) -> None:
    server.script(Reply(502, body=f"<html>proxy error: {echo}</html>".encode()))
    async with make_provider(kind, server, api_key=ODD_KEY, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert "SECRET" not in shown(caught.value)
    assert "[redacted]" in str(caught.value)


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("key", ["k", "x", "ollama"])
async def test_a_short_key_is_left_in_messages(kind: str, key: str, server: FakeLlmServer) -> None:
    # A key of a few characters is no secret (local servers take any), and redacting it
    # would mangle every word it occurs in.
    message = "chunked body broken: keep-alive lost, ask ollama or x again"
    server.script(Reply(400, body=json.dumps({"error": {"message": message}}).encode()))
    async with make_provider(kind, server, api_key=key, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert message in str(caught.value)
    assert "[redacted]" not in str(caught.value)


class EchoingTransport(httpx.AsyncBaseTransport):
    """A transport that fails quoting the request's auth header (as some proxies do)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization") or request.headers["x-api-key"]
        try:
            raise ValueError(f"upstream rejected {header.encode()!r}")
        except ValueError as error:
            raise httpx.ConnectError(f"proxy refused header {header!r}") from error


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_transport_error_quoting_the_key_is_not_chained_raw(
    kind: str, server: FakeLlmServer
) -> None:
    async with httpx.AsyncClient(transport=EchoingTransport()) as client:
        llm = make_provider(kind, server, http_client=client, retry=ONCE)
        with pytest.raises(ProviderError, match="connection failed") as caught:
            await llm.chat(USER)
        with pytest.raises(ProviderError, match="connection failed") as streamed:
            [e async for e in llm.chat_stream(USER)]
    for error in (caught.value, streamed.value):
        assert "SECRET" not in shown(error)
        assert "[redacted]" in shown(error)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_transport_error_without_the_key_keeps_its_cause(kind: str) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_refuse)) as client:
        llm = make_provider(kind, _Nowhere(), http_client=client, retry=ONCE)
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_the_request_of_a_chained_transport_error_keeps_no_key(kind: str) -> None:
    # The message was redacted, but `__cause__.request.headers` sent the key along to
    # whatever records an exception's attributes.
    async with httpx.AsyncClient(transport=httpx.MockTransport(_refuse)) as client:
        llm = make_provider(kind, _Nowhere(), http_client=client, retry=ONCE)
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    cause = caught.value.__cause__
    assert isinstance(cause, httpx.ConnectError)
    assert cause.request.method == "POST" and cause.request.url.host == "127.0.0.1"
    headers = dict(cause.request.headers)
    assert API_KEY not in str(headers) and "[redacted]" in str(headers)
    assert headers["content-type"] == "application/json"


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


class _Nowhere:
    url = "http://127.0.0.1:9"


# ---------------------------------------------------------------------- stream end
def kept_open(kind: str, turn: Turn, pause: float) -> Reply:
    """A stream whose body stays open `pause` seconds after its last event."""
    reply = render_openai(turn, True) if kind == "openai" else render_anthropic(turn, True)
    assert reply.frames is not None
    reply.pause_after, reply.pause = len(reply.frames), pause
    return reply


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_stream_end_comes_at_the_last_event_though_the_body_stays_open(
    kind: str, server: FakeLlmServer
) -> None:
    server.script(kept_open(kind, Turn("hello world"), pause=5.0), Turn("next"))
    async with make_provider(kind, server, timeout=1.0, retry=ONCE) as llm:
        started = time.perf_counter()
        events: list[Any] = []
        end_after = None
        async for event in llm.chat_stream(USER):
            events.append(event)
            if isinstance(event, StreamEnd):
                end_after = time.perf_counter() - started
        finished_after = time.perf_counter() - started
        assert isinstance(events[-1], StreamEnd)
        assert events[-1].response.text == "hello world"
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello world"
        assert end_after is not None and end_after < 0.5  # not after the 1 s read timeout
        assert finished_after < 0.8
        assert await llm.complete("again") == "next"  # the cut connection is not reused
    assert server.connections == 2


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stream_read_to_its_end_keeps_its_connection(
    kind: str, server: FakeLlmServer
) -> None:
    server.fallback = Turn("one two three")
    async with make_provider(kind, server) as llm:
        for _ in range(3):
            events = [e async for e in llm.chat_stream(USER)]
            assert events[-1].response.text == "one two three"
        # Closed right after StreamEnd, without reading on: the body is finished all the same.
        async with contextlib.aclosing(llm.chat_stream(USER)) as stream:
            async for event in stream:
                if isinstance(event, StreamEnd):
                    break
        assert await llm.complete("x") == "one two three"
    assert server.connections == 1


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("kept", [True, False], ids=["kept", "dropped"])
@pytest.mark.parametrize("how", ["stream", "chat_stream", "at_stream_end"])
def test_a_stream_left_open_closes_without_error_as_its_loop_ends(
    kind: str, kept: bool, how: str
) -> None:
    # `asyncio.run` closes every async generator left open, all at once: the layers of a
    # stream (one attempt, its events, their bytes, httpx's) were closed by the loop while
    # the layer around them was closing them, each failure logged ("aclose(): asynchronous
    # generator is already running").
    wire = render_openai if kind == "openai" else render_anthropic
    reply = wire(Turn("one two", text_chunks=["one ", "two"]), True)
    assert reply.frames is not None
    if how != "at_stream_end":  # left in the middle of its body
        reply.pause_after, reply.pause = len(reply.frames) - 1, 5.0
    left_open: list[Any] = []
    errors: list[dict[str, Any]] = []
    with FakeLlmServer() as server:  # its own: the paused reply ends with it
        server.script(reply)
        llm = make_provider(kind, server, retry=ONCE)

        async def leave_open() -> Any:
            asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
            stream = llm.stream("x") if how == "stream" else llm.chat_stream(USER)
            if kept:
                left_open.append(stream)
            async for event in stream:
                if how != "at_stream_end" or isinstance(event, StreamEnd):
                    return event
            return None

        last = asyncio.run(leave_open())
    if how == "stream":
        assert last == "one "
    else:
        assert isinstance(last, StreamEnd if how == "at_stream_end" else TextDelta)
    assert [context["message"] for context in errors] == []


def test_a_stream_with_stop_sequences_left_open_closes_without_error_as_its_loop_ends() -> None:
    # OpenAI's stream of a call with stop sequences has a layer of its own (the model may
    # refuse them): started under the loop's hooks, the loop closed it with the layers it
    # reads while they were being closed, now and then (about one run in ten).
    errors: list[dict[str, Any]] = []
    left_open: list[Any] = []  # kept: the loop closes them as it ends

    async def leave_open(llm: Any) -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
        stream = llm.chat_stream(USER)
        left_open.append(stream)
        async for event in stream:
            return event
        return None

    for _ in range(30):
        reply = render_openai(Turn("one two", text_chunks=["one ", "two"]), True)
        assert reply.frames is not None
        reply.pause_after, reply.pause = len(reply.frames) - 1, 5.0
        with FakeLlmServer() as server:
            server.script(reply)
            llm = make_provider("openai", server, retry=ONCE, stop=["Observation:"])

            assert isinstance(asyncio.run(leave_open(llm)), TextDelta)
    assert [context["message"] for context in errors] == []


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_stream_dropped_in_a_reference_cycle_gives_its_connection_back(kind: str) -> None:
    # Collected unclosed while the loop runs, every layer of the stream is closed through
    # the loop, each once: the connection was left busy, or a layer closed twice (an error).
    wire = render_openai if kind == "openai" else render_anthropic
    reply = wire(Turn("one two", text_chunks=["one ", "two"]), True)
    assert reply.frames is not None
    reply.pause_after, reply.pause = len(reply.frames) - 1, 5.0
    errors: list[dict[str, Any]] = []
    with FakeLlmServer() as server:
        server.script(reply)
        llm = make_provider(kind, server, retry=ONCE)

        async def drop_in_a_cycle() -> int:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, context: errors.append(context))
            holder: dict[str, Any] = {}
            holder["self"] = holder
            holder["stream"] = stream = llm.chat_stream(USER)
            async for _ in stream:
                break
            del stream, holder
            gc.collect()
            for _ in range(50):  # the closes run as tasks of the loop
                await asyncio.sleep(0.01)
            pool = llm._transport._clients[loop].client._transport._pool
            busy = sum(not connection.is_idle() for connection in pool.connections)
            await llm.aclose()
            return busy

        assert asyncio.run(drop_in_a_cycle()) == 0
    assert [context["message"] for context in errors] == []


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_run_that_fails_mid_stream_closes_the_stream_at_once(kind: str) -> None:
    # A listener failing on a text delta fails the run: the stream it read was left to the
    # garbage collector, its connection busy until then.
    wire = render_openai if kind == "openai" else render_anthropic
    reply = wire(Turn("one two", text_chunks=["one ", "two"]), True)
    assert reply.frames is not None
    reply.pause_after, reply.pause = len(reply.frames) - 1, 5.0
    with FakeLlmServer() as server:
        server.script(reply)
        llm = make_provider(kind, server, retry=ONCE)
        runtime = AgentRuntime(AgentConfig(mode="tools"))

        def fail_on_text(event: Any) -> None:
            if isinstance(event, LlmTextDelta):
                raise ValueError("listener bug")

        runtime.events.on(fail_on_text)

        async def run() -> int:
            gc.disable()  # the stream is closed by the run, not by a collection
            try:
                with pytest.raises(ValueError, match="listener bug"):
                    await runtime.run_agent_with_provider("a", "hi", llm)
                loop = asyncio.get_running_loop()
                pool = llm._transport._clients[loop].client._transport._pool
                busy = sum(not connection.is_idle() for connection in pool.connections)
            finally:
                gc.enable()
            await llm.aclose()
            return busy

        assert asyncio.run(run()) == 0


# ---------------------------------------------------------------------- timeouts
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_the_provider_timeout_holds_with_a_callers_client(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    server.script(Reply(first_byte_delay=2.0, body=b"{}"))
    async with httpx.AsyncClient() as client:  # httpx's own default: 5 s
        llm = make_provider(kind, server, http_client=client, timeout=0.3, retry=ONCE)
        started = time.perf_counter()
        with pytest.raises(ProviderError, match="timed out") as caught:
            if stream:
                [e async for e in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
        assert time.perf_counter() - started < 1.5
        assert caught.value.retryable


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_callers_short_client_timeout_does_not_cut_a_longer_provider_timeout(
    kind: str, server: FakeLlmServer
) -> None:
    wire = render_openai if kind == "openai" else render_anthropic
    slow = wire(Turn("late"), False)
    slow.first_byte_delay = 0.6
    server.script(slow)
    async with httpx.AsyncClient(timeout=0.2) as client:
        llm = make_provider(kind, server, http_client=client, timeout=5.0, retry=ONCE)
        assert await llm.complete("x") == "late"


# ---------------------------------------------------------------------- stop sequences
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_calls_stop_overrides_the_providers_even_when_empty(
    kind: str, server: FakeLlmServer
) -> None:
    server.fallback = Turn("ok")
    field = "stop" if kind == "openai" else "stop_sequences"
    async with make_provider(kind, server, stop=["END"]) as llm:
        await llm.chat(USER)
        await llm.chat(USER, stop=[])
        [e async for e in llm.chat_stream(USER, stop=[])]
        await llm.chat(USER, stop=["HALT"])
    sent = [r.json.get(field) for r in server.requests]
    assert sent[0] == ["END"]
    assert not sent[1] and not sent[2]  # nothing, or an empty list: no stop sequence
    assert sent[3] == ["HALT"]


async def test_scripted_stream_pieces_join_to_the_reply() -> None:
    replies = ["hello world", "a  b ", "", " x", "one"]
    llm = ScriptedProvider(replies)
    for reply in replies:
        pieces = [piece async for piece in llm.stream("q")]
        assert "".join(pieces) == reply
        assert all(pieces)


async def test_streams_do_not_leak_tasks(server: FakeLlmServer) -> None:
    server.script(kept_open("openai", Turn("bye"), pause=5.0))
    async with make_provider("openai", server, timeout=1.0) as llm:
        before = len(asyncio.all_tasks())
        async for _ in llm.chat_stream(USER):
            pass
        assert len(asyncio.all_tasks()) == before


def test_openais_own_api_is_never_called_without_a_key_under_its_fully_qualified_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ProviderError, match="API key"):
        OpenAIProvider(base_url="https://api.openai.com./v1")
