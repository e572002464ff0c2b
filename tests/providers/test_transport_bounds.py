"""What the transport holds to whatever a stream or a caller does: usage a stream reported is
charged when it then fails, loops of several threads share one provider, a closed client of
the caller's is a provider error, and a body is read only as far as it is used. Over
loopback HTTP, against the fake server speaking each wire format."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import ssl
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from llm_agent_runtime import (
    AnthropicProvider,
    BudgetExceededError,
    CostBudget,
    FakeClock,
    OpenAIProvider,
    ProviderError,
    RetryPolicy,
    RuntimeMetrics,
)
from llm_agent_runtime.providers import _http
from llm_agent_runtime.providers._http import MAX_ERROR_BODY
from llm_agent_runtime.providers.base import Message, TextDelta

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, render_anthropic, render_openai, sse

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)
MB = 1024 * 1024
PRICES = {"input_cost_per_million": 3.0, "output_cost_per_million": 15.0}
STREAM = {"content-type": "text/event-stream"}
REPORTED = {"anthropic": (100_000, 1), "openai": (100_000, 9)}
"""The usage each stream below reports before it fails: Anthropic's `message_start` counts
one output token so far."""


def usage_first(kind: str) -> list[bytes]:
    """A stream's frames, its usage reported before its text: the 5th frame is text.

    Anthropic reports the input tokens in `message_start`, its first event. OpenAI reports
    usage in a chunk before `[DONE]`; servers that report it as the stream goes (vLLM's
    continuous usage stats) send such a chunk early too, as here.
    """
    turn = Turn("word " * 20, input_tokens=100_000, output_tokens=9, text_chunks=["word "] * 20)
    if kind == "anthropic":
        reply = render_anthropic(turn, True)
        assert reply.frames is not None
        return reply.frames  # message_start, ping, content_block_start, text...
    reply = render_openai(turn, True)
    assert reply.frames is not None
    frames = reply.frames
    frames.insert(1, frames[-2])  # role chunk, usage chunk, text...
    return frames


def charged(metrics: RuntimeMetrics, budget: CostBudget) -> tuple[int, int]:
    """The tokens the metrics and the budget were charged (both the same)."""
    snapshot = metrics.snapshot()
    tokens = (snapshot.input_tokens, snapshot.output_tokens)
    assert budget.used_tokens == sum(tokens)
    assert budget.used_cost_usd == pytest.approx((tokens[0] * 3.0 + tokens[1] * 15.0) / 1e6)
    return tokens


# ---------------------------------------------------------------------- usage of failed streams
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("how", ["dropped", "malformed", "closed", "cancelled"])
async def test_usage_a_stream_reported_is_charged_when_it_then_fails(kind: str, how: str) -> None:
    # The server bills what it reported (Anthropic's input tokens, in `message_start`); a
    # stream that failed after that, or that its caller left, charged nothing: a loop of
    # such calls cost $0 to the budget.
    frames = usage_first(kind)
    if how == "dropped":
        reply = Reply(frames=frames, headers=STREAM, drop_after=6)
    elif how == "malformed":
        frames.insert(6, b"data: {not json\n\n")
        reply = Reply(frames=frames, headers=STREAM)
    else:  # the caller stops reading while the server pauses
        reply = Reply(frames=frames, headers=STREAM, pause_after=6, pause=30)
    budget, metrics = CostBudget(max_cost_usd=10.0), RuntimeMetrics()
    options: dict[str, Any] = {"budget": budget, "metrics": metrics, "retry": ONCE}
    with FakeLlmServer() as server:  # its own: a paused reply ends with it
        server.script(reply)
        async with make_provider(kind, server, **options, **PRICES) as llm:
            stream = llm.chat_stream(USER)
            if how in ("dropped", "malformed"):
                with pytest.raises(ProviderError):
                    [event async for event in stream]
            elif how == "closed":
                assert isinstance(await stream.__anext__(), TextDelta)
                await stream.aclose()
            else:
                seen: list[Any] = []
                task = asyncio.create_task(_read_into(seen, stream))
                while not seen:
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    assert charged(metrics, budget) == REPORTED[kind]


async def _read_into(seen: list[Any], stream: Any) -> None:
    async for event in stream:
        seen.append(event)


async def test_openai_usage_sent_before_a_stream_is_cut_short_of_done_is_charged(
    server: FakeLlmServer,
) -> None:
    # OpenAI's own order: the usage chunk, then `[DONE]`, which never came.
    reply = render_openai(Turn("hello", input_tokens=100_000, output_tokens=9), True)
    assert reply.frames is not None
    reply.drop_after = len(reply.frames) - 1
    server.script(reply)
    budget, metrics = CostBudget(max_cost_usd=10.0), RuntimeMetrics()
    options: dict[str, Any] = {"budget": budget, "metrics": metrics, "retry": ONCE}
    async with make_provider("openai", server, **options, **PRICES) as llm:
        with pytest.raises(ProviderError, match="connection failed"):
            [event async for event in llm.chat_stream(USER)]
    assert charged(metrics, budget) == (100_000, 9)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_charge_past_the_budget_does_not_hide_why_the_stream_failed(
    kind: str, server: FakeLlmServer
) -> None:
    server.script(Reply(frames=usage_first(kind), headers=STREAM, drop_after=6))
    budget = CostBudget(max_cost_usd=0.01)  # the 100,000 input tokens cost $0.30
    async with make_provider(kind, server, budget=budget, retry=ONCE, **PRICES) as llm:
        with pytest.raises(ProviderError, match="connection failed"):
            [event async for event in llm.chat_stream(USER)]
        assert budget.used_cost_usd > 0.3
        with pytest.raises(BudgetExceededError):  # the next call is refused
            [event async for event in llm.chat_stream(USER)]
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_each_attempt_of_a_retried_stream_is_charged_what_it_reported(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    # Cut after its usage and before any text: retried, and billed twice by the server.
    server.script(
        Reply(frames=usage_first(kind), headers=STREAM, drop_after=2),
        Turn("ok", input_tokens=100_000, output_tokens=9),
    )
    budget, metrics = CostBudget(max_cost_usd=10.0), RuntimeMetrics()
    options: dict[str, Any] = {"budget": budget, "metrics": metrics, "retry": retry}
    async with make_provider(kind, server, **options, **PRICES) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert events[-1].response.text == "ok"
    assert len(server.requests) == 2
    first_input, first_output = REPORTED[kind]
    assert charged(metrics, budget) == (first_input + 100_000, first_output + 9)


# ---------------------------------------------------------------------- threads
class _PausingLoop(asyncio.SelectorEventLoop):
    """An event loop whose `is_closed`, once armed, pauses the first other thread to ask.

    The transport asks each loop it keeps a client for whether it is closed when it makes a
    client for a new loop: the pause holds one thread there while another makes its own.
    """

    def __init__(self, asked: threading.Event, go_on: threading.Event) -> None:
        super().__init__()
        self.owner = threading.get_ident()
        self.armed = False
        self.asked, self.go_on = asked, go_on

    def is_closed(self) -> bool:
        if self.armed and threading.get_ident() != self.owner:
            self.armed = False
            self.asked.set()
            self.go_on.wait(1.0)  # the other thread's call, or a second at most
        return super().is_closed()


@pytest.mark.parametrize("kind", PROVIDERS)
def test_threads_each_running_its_own_loop_share_one_provider(
    kind: str, server: FakeLlmServer
) -> None:
    # A sync app calls `asyncio.run(llm.chat(...))` from several threads. Two threads making
    # clients for their loops at once failed: "dictionary changed size during iteration"
    # (or a KeyError), a raw RuntimeError from the call.
    server.fallback = Turn("ok")
    llm = make_provider(kind, server, retry=ONCE)
    asked, go_on = threading.Event(), threading.Event()
    idle = _PausingLoop(asked, go_on)
    results: dict[str, Any] = {}

    def call(name: str) -> None:
        try:
            results[name] = asyncio.run(llm.chat(USER)).text
        except Exception as error:
            results[name] = error
        finally:
            if name == "second":
                go_on.set()

    try:
        assert idle.run_until_complete(llm.chat(USER)).text == "ok"  # a client kept for it
        idle.armed = True
        first = threading.Thread(target=call, args=("first",))
        first.start()
        assert asked.wait(10)  # the first thread is looking over the loops' clients
        second = threading.Thread(target=call, args=("second",))
        second.start()
        second.join(10)
        first.join(10)
        assert results == {"first": "ok", "second": "ok"}
    finally:
        go_on.set()
        idle.run_until_complete(llm.aclose())
        idle.run_until_complete(idle.shutdown_asyncgens())
        idle.close()


# ---------------------------------------------------------------------- closed clients
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_closed_client_of_the_callers_is_a_provider_error(
    kind: str, stream: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # httpx raised a raw RuntimeError ("Cannot send a request, as the client has been
    # closed"), which no caller handling ProviderError expects.
    async with httpx.AsyncClient() as client:
        pass
    llm = make_provider(kind, server, http_client=client, retry=retry)
    with pytest.raises(ProviderError, match=r"http_client given to the .* provider is closed") as e:
        if stream:
            [event async for event in llm.chat_stream(USER)]
        else:
            await llm.chat(USER)
    assert e.value.retryable is False
    assert server.requests == []


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_a_callers_client_used_again_after_its_loop_closed_is_a_provider_error(
    kind: str, stream: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # Its pooled connection belongs to the first `asyncio.run`'s loop: a call from a second
    # one raised httpx's raw RuntimeError ("Event loop is closed").
    server.fallback = Turn("ok")
    client = httpx.AsyncClient()
    llm = make_provider(kind, server, http_client=client, retry=retry)

    async def call(llm: Any) -> str:
        if stream:
            return "".join([piece async for piece in llm.stream("x")])
        return str(await llm.complete("x"))

    assert asyncio.run(call(llm)) == "ok"
    with pytest.raises(ProviderError, match=r"first used on, which is closed") as caught:
        asyncio.run(call(llm))
    assert caught.value.retryable is False
    assert len(server.requests) == 1
    # The connection the closed loop left open cannot be closed from another loop: it is
    # left to the garbage collector, here, with its ResourceWarning ignored.
    del caught, llm, client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_call_its_provider_closes_as_it_sets_out_fails_and_leaves_no_socket(
    kind: str, server: FakeLlmServer
) -> None:
    # Closed as the call opened its connection, it got httpx's raw RuntimeError ("Cannot
    # send a request, as the client has been closed"), or went on to answer over a
    # connection the closed pool no longer knew, left open (a ResourceWarning).
    server.fallback = Turn("ok")
    outcomes = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for turns in range(16):  # each close a turn of the loop later into the call
            llm = make_provider(kind, server)
            call = asyncio.ensure_future(llm.complete("x"))
            for _ in range(turns):
                await asyncio.sleep(0)
            await llm.aclose()
            try:
                outcomes.add(str(await call))
            except ProviderError as error:
                assert error.retryable is False
                outcomes.add(str(error).split(" provider ", 1)[1])
            del call, llm
            gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert "was closed while the call was in flight" in outcomes


# ---------------------------------------------------------------------- bodies read in part
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    ("stream", "status", "kind_of_body"),
    [(False, 502, "text/html"), (True, 502, "text/html"), (True, 200, "application/json")],
    ids=["chat-error", "stream-error", "stream-not-a-stream"],
)
async def test_a_body_only_quoted_in_an_error_is_read_only_as_far_as_it_is_quoted(
    kind: str, stream: bool, status: int, kind_of_body: str
) -> None:
    # A proxy's error page of hundreds of MB was read whole (and held twice over) for the
    # 500 characters of it the message keeps. Here the body stops after 1 MB for longer
    # than `total_timeout`: it used to be waited for, and the call failed as a timeout.
    page = b"<html>" + b"x" * (MB - 6)
    reply = Reply(
        status=status,
        frames=[page, page],
        headers={"content-type": kind_of_body},
        pause_after=1,
        pause=30,
    )
    with FakeLlmServer() as server:  # its own: the paused reply ends with it
        server.script(reply)
        async with make_provider(kind, server, retry=ONCE, total_timeout=3) as llm:
            with pytest.raises(ProviderError) as caught:
                if stream:
                    [event async for event in llm.chat_stream(USER)]
                else:
                    await llm.chat(USER)
    error = caught.value
    assert "timed out" not in str(error)
    assert error.status == (status if status != 200 else None)
    assert "<html>xxx" in str(error)
    assert len(str(error)) < 1000


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_json_error_body_past_the_read_limit_is_quoted_short_with_a_note(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    # Only the first 64 KiB of an error body are read: JSON longer than that does not parse,
    # and its cut text was quoted as the message, with nothing to say it was cut.
    error = {"type": "invalid_request_error", "message": "m" * 100_000}
    body = json.dumps({"type": "error", "error": error}).encode()
    server.script(Reply(status=400, body=body, headers={"content-type": "application/json"}))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            if stream:
                [event async for event in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
    message = str(caught.value)
    assert caught.value.status == 400
    assert 'API error: {"type": "error", "error": {"type": "invalid_request_error"' in message
    assert (
        "(only the first 65536 bytes of the error body were read, and they could not be parsed)"
        in message
    )
    assert len(message) < 400


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    ("stream", "status", "kind_of_body"),
    [(False, 502, "text/html"), (True, 502, "text/html"), (True, 200, "text/html")],
    ids=["chat-error", "stream-error", "stream-not-a-stream"],
)
async def test_an_error_body_of_exactly_the_read_limit_is_not_said_to_be_cut(
    kind: str, stream: bool, status: int, kind_of_body: str, server: FakeLlmServer
) -> None:
    # Read whole, a page of exactly `MAX_ERROR_BODY` bytes was said to be truncated there.
    page = b"<html>" + b"x" * (MAX_ERROR_BODY - 13) + b"</html>"
    assert len(page) == MAX_ERROR_BODY
    server.script(Reply(status=status, body=page, headers={"content-type": kind_of_body}))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            if stream:
                [event async for event in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
    message = str(caught.value)
    assert "<html>" + "x" * 400 in message
    assert "truncated" not in message


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_an_error_events_long_text_is_not_said_to_be_cut(
    kind: str, server: FakeLlmServer
) -> None:
    # An `error` event's data is read whole; a plain-text one past 64 KiB was quoted short,
    # with a note that it was truncated and could not be parsed.
    data = "upstream model crashed: " + "frame " * 12_000
    server.script(Reply(frames=[sse(data, "error")], headers=STREAM))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            [event async for event in llm.chat_stream(USER)]
    message = str(caught.value)
    assert "upstream model crashed: frame frame" in message
    assert "truncated" not in message
    assert len(message) < 700


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("what", ["line", "event"])
async def test_a_line_or_an_event_that_never_ends_fails_the_stream(
    kind: str, what: str, server: FakeLlmServer
) -> None:
    # One line without a line end (or one event without its blank line) was kept whole,
    # however long: a broken proxy could fill the memory.
    if what == "line":
        frames = [b'data: {"type": "x", "text": "'] + [b"x" * MB] * 17
    else:
        frames = [b"data: " + b"x" * MB + b"\n"] * 17
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match="grew past 16777216 bytes") as caught:
            [event async for event in llm.chat_stream(USER)]
    assert caught.value.retryable is True
    said = "a line" if what == "line" else "the data of an event"
    assert f"malformed event stream: {said}" in str(caught.value)


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_callers_client_used_from_another_running_loop_is_a_provider_error(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The first loop still runs (another thread's): the second picked up its pooled
    # connection, and failed with asyncio's raw "bound to a different event loop".
    import threading

    server.fallback = Turn("ok")
    client = httpx.AsyncClient()
    llm = make_provider(kind, server, http_client=client, retry=retry)
    first_done, release = threading.Event(), threading.Event()

    def first_loop() -> None:
        async def run() -> None:
            assert await llm.complete("x") == "ok"
            first_done.set()
            await asyncio.to_thread(release.wait, 10)
            await client.aclose()

        asyncio.run(run())

    thread = threading.Thread(target=first_loop)
    thread.start()
    try:
        assert first_done.wait(10)
        with pytest.raises(ProviderError, match="another thread's") as caught:
            asyncio.run(llm.complete("x"))
        assert caught.value.retryable is False
    finally:
        release.set()
        thread.join()
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_reply_body_past_the_limit_is_refused_not_read_whole(
    kind: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A non-streamed reply was read whole, however large (a 1 GB body: 2.3 GB of memory).
    monkeypatch.setattr(_http, "MAX_REPLY_BYTES", 4096)
    padding = json.dumps({"padding": "x" * 8192})[1:-1]
    big = (render_openai if kind == "openai" else render_anthropic)(Turn(text="hi"), False)
    body = big.body[:-1] + b", " + padding.encode() + b"}"
    server.script(Reply(body=body, headers={"content-type": "application/json"}))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match="larger than 4096 bytes") as caught:
            await llm.chat([Message("user", "hi")])
    assert caught.value.retryable is False
    # One within the limit is read as ever.
    monkeypatch.setattr(_http, "MAX_REPLY_BYTES", len(body))
    server.script(Reply(body=body, headers={"content-type": "application/json"}))
    async with make_provider(kind, server, retry=ONCE) as llm:
        assert (await llm.chat([Message("user", "hi")])).text == "hi"


ENVIRONMENTS = [
    ({"ALL_PROXY": "socks5://user:hunter2@127.0.0.1:1080"}, "socksio"),  # httpx[socks] absent
    ({"HTTP_PROXY": "ftp://user:hunter2@proxy:21"}, "Unknown scheme"),
    ({"SSL_CERT_FILE": "/nonexistent/bundle.pem"}, "No such file"),
    ({"HTTPS_PROXY": "http://user:hunter2@proxy.corp:80a80"}, "Invalid port"),  # httpx.InvalidURL
    # A password with a '/' not percent-encoded: httpx reads its start as the port, and quoted
    # it ("Invalid port: 'hunter2'").
    ({"HTTPS_PROXY": "http://user:hunter2/Xb7pL@proxy.corp:3128"}, "Invalid port"),
    ({"HTTPS_PROXY": "http://user:hunter2#Xb7pL@proxy.corp:3128"}, "Invalid port"),
]


@pytest.mark.parametrize(("environment", "why"), ENVIRONMENTS)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_proxy_or_tls_settings_httpx_cannot_use_fail_the_call_typed(
    kind: str,
    environment: dict[str, str],
    why: str,
    server: FakeLlmServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx reads them as the provider makes its client: it raised ImportError, ValueError
    # or a bare FileNotFoundError out of `chat`, which the runtime and the demo let through.
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    async with make_provider(kind, server) as llm:
        with pytest.raises(ProviderError, match=why) as caught:
            await llm.chat([Message("user", "hi")])
    message = str(caught.value)
    assert next(iter(environment)) in message  # names the setting, never its value
    assert "hunter2" not in message
    assert not caught.value.retryable
    assert server.requests == []


@pytest.mark.parametrize("kind", PROVIDERS)
def test_the_clients_of_successive_loops_share_one_tls_context(
    kind: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each loop's client read the CA bundle again (~25 ms of CPU, the loop blocked): a
    # provider reused across `asyncio.run` calls paid it at every one.
    made: list[ssl.SSLContext] = []
    create = httpx.create_ssl_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    llm = make_provider(kind, server)
    for n in range(3):
        server.script(Turn(f"hi {n}"))

        async def ask() -> str:
            return (await llm.chat([Message("user", "hi")])).text

        assert asyncio.run(ask()) == f"hi {n}"
    assert len(made) == 1
    asyncio.run(llm.aclose())


TLS = Path(__file__).parent / "tls"


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_server_certificate_that_does_not_verify_is_not_retried(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was retryable: each RetryPolicy tried again (with its backoff) what fails the same
    # way every time, a CA the client does not trust (a corporate one not configured).
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS / "self_signed.pem", TLS / "self_signed.key")

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    base_url = f"https://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    provider = OpenAIProvider if kind == "openai" else AnthropicProvider
    try:
        async with provider(api_key="sk-test", base_url=base_url, retry=RetryPolicy(3)) as llm:
            with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                await llm.chat(USER)
    finally:
        server.close()
    assert not caught.value.retryable
    assert "after" not in str(caught.value)  # one attempt: "(after 3 attempts ...)" before


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_proxy_that_never_answers_connect_fails_at_connect_timeout(
    kind: str, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # httpcore waits for the CONNECT reply under the read timeout: each attempt took
    # `timeout` (10 minutes by default) through a stalled corporate proxy.
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # takes the connection, reads the CONNECT, never answers

    proxy = await asyncio.start_server(silent, "127.0.0.1", 0)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
    provider = OpenAIProvider if kind == "openai" else AnthropicProvider
    started = asyncio.get_running_loop().time()
    try:
        async with provider(
            api_key="sk-test",
            base_url="https://api.example.test/v1",
            timeout=30,
            connect_timeout=0.3,
            retry=ONCE,
        ) as llm:
            with pytest.raises(ProviderError, match=r"timed out \(ConnectTimeout\)") as caught:
                if stream:
                    async for _ in llm.chat_stream(USER):
                        pass
                else:
                    await llm.chat(USER)
    finally:
        for writer in held:
            writer.close()
        proxy.close()
    assert asyncio.get_running_loop().time() - started < 10
    assert caught.value.retryable
    assert "proxy did not answer" in str(caught.value.__cause__)


def test_the_tunnel_bound_is_lifted_once_the_connect_reply_came() -> None:
    timeouts: dict[str, float | None] = {"read": 600.0, "connect": 5.0}
    connect = SimpleNamespace(method=b"CONNECT", extensions={"timeout": timeouts})
    post = SimpleNamespace(method=b"POST", extensions={"timeout": timeouts})
    saved: list[Any] = []
    event = "http11.receive_response_headers."
    _http._bound_tunnel(event + "started", {"request": connect}, saved, 5.0)
    assert timeouts["read"] == 5.0
    _http._bound_tunnel(event + "complete", {"return_value": None}, saved, 5.0)
    assert timeouts["read"] == 600.0 and saved == []
    # The request's own reply waits under the read timeout, as ever.
    _http._bound_tunnel(event + "started", {"request": post}, saved, 5.0)
    assert timeouts["read"] == 600.0 and saved == []


@pytest.mark.parametrize(
    "environment",
    [
        {"https_proxy": "http://user:hunter2/Xb7pL@proxy.corp:3128"},
        # httpx takes the lower-case one: the upper-case one holds no password to hide.
        {"HTTPS_PROXY": "http://proxy.corp:3128", "https_proxy": "http://u:hunter2/X@p:3128"},
        {"Https_Proxy": "http://user:hunter2/Xb7pL@proxy.corp:3128"},
        {"HTTPS_PROXY": "user:hunter2/Xb7pL@proxy.corp:3128"},  # read as http://
    ],
    ids=["lower-case", "both", "mixed-case", "no-scheme"],
)
async def test_a_proxy_password_is_hidden_whatever_the_case_of_its_setting(
    environment: dict[str, str], server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    async with make_provider("openai", server) as llm:
        with pytest.raises(ProviderError, match="Invalid port") as caught:
            await llm.chat(USER)
    assert "HTTPS_PROXY" in str(caught.value)
    assert "hunter2" not in str(caught.value)
