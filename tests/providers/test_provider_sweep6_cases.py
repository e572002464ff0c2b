"""Provider faults found in the sixth sweep, each checked over real HTTP on loopback.

The same reply, streamed or sent whole, must read the same, however the server writes and
cuts its event stream; and a provider's settings that are no numbers must be refused with
an error that names them.
"""

from __future__ import annotations

import asyncio
import decimal
import fractions
import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import Message, StreamEnd, TextDelta, ToolCallDelta

from .conftest import make_provider
from .fake_server import FakeLlmServer, RecordedRequest, Reply, Turn, render, sse

ONCE = ar.RetryPolicy(max_attempts=1)
EVENTS = {"content-type": "text/event-stream"}
ASK = [Message("user", "hi")]
KINDS = ["openai", "anthropic"]


async def _stream_and_whole(llm: Any) -> tuple[list[Any], Any]:
    events = [event async for event in llm.chat_stream(ASK)]
    whole = await llm.chat(ASK)
    return events, whole


# ------------------------------------------------------------------ OpenAI: `"error": {}`
def _chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }
    )


async def test_openai_stream_chunks_with_an_empty_error_member_are_read_as_chunks(
    server: FakeLlmServer,
) -> None:
    # Some compatible servers add `"error": {}` to every good chunk, as to a good whole
    # reply (which reads as a reply). The stream failed at its first chunk, quoting the
    # whole chunk as the server's "error".
    frames = [
        _chunk({"role": "assistant", "content": ""}, error={}),
        _chunk({"content": "Hello"}, error={}),
        _chunk({"content": " there"}, error=None),
        _chunk({}, "stop", error={}),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=EVENTS), Turn("Hello there"))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events, whole = await _stream_and_whole(llm)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", " there"]
    assert isinstance(events[-1], StreamEnd)
    streamed = events[-1].response
    assert (streamed.text, streamed.stop_reason) == (whole.text, whole.stop_reason)


async def test_openai_stream_chunk_with_a_real_error_still_fails(server: FakeLlmServer) -> None:
    frames = [
        _chunk({"content": "Hel"}),
        _chunk({}, error={"message": "the model crashed", "type": "server_error"}),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=EVENTS))
    async with make_provider("openai", server, retry=ONCE) as llm:
        with pytest.raises(ar.ProviderError, match="the model crashed") as caught:
            [event async for event in llm.chat_stream(ASK)]
    assert caught.value.retryable


# ------------------------------------------------------------------ streamed == whole
_TEXT = st.text(
    alphabet=st.sampled_from([*'ab \n\t"\\{}é中', "😀", "🎉", "\u2028", "\x85"]),
    max_size=6,
)
_ARGUMENTS = st.dictionaries(
    st.text(alphabet=st.sampled_from(list("kx😀é")), min_size=1, max_size=3),
    st.none() | st.integers(-5, 5) | _TEXT,
    max_size=3,
)


def _rewritten(frame: bytes, crlf: bool, extras: list[int], empty_error: bool) -> bytes:
    """One event of the fake server's rendering, as another server may write it.

    Raw UTF-8 in place of escapes (so that a cut may fall inside a character), CRLF line
    ends, keep-alive comments and the `id:` and `retry:` fields every client ignores, and
    OpenAI chunks that carry `"error": {}`.
    """
    event = None
    data = b""
    for line in frame.split(b"\n"):
        if line.startswith(b"event: "):
            event = line[len(b"event: ") :]
        elif line.startswith(b"data: "):
            data = line[len(b"data: ") :]
    if data != b"[DONE]":
        value = json.loads(data)
        if empty_error and "choices" in value:
            value["error"] = {}
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    end = b"\r\n" if crlf else b"\n"
    lines = []
    if 0 in extras:
        lines.append(b": ping")
    if event is not None:
        lines.append(b"event: " + event)
    if 1 in extras:
        lines.append(b"id: 42")
    if 2 in extras:
        lines.append(b"retry: 3000")
    lines.append(b"data: " + data)
    return end.join(lines) + end + end


def _cut(body: bytes, rng: random.Random) -> list[bytes]:
    """The body cut at random bytes (mid-character, mid-line, between CR and LF)."""
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 60))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(KINDS),
    pieces=st.lists(_TEXT, max_size=6),
    calls=st.lists(_ARGUMENTS, max_size=3),
    argument_chunk=st.integers(1, 9),
    tokens=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    crlf=st.booleans(),
    extras=st.lists(st.integers(0, 5), max_size=40),
    empty_error=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_streamed_and_whole_replies_agree_however_the_stream_is_written_and_cut(
    llm_server_session: FakeLlmServer,
    kind: str,
    pieces: list[str],
    calls: list[dict[str, Any]],
    argument_chunk: int,
    tokens: tuple[int, int],
    crlf: bool,
    extras: list[int],
    empty_error: bool,
    seed: int,
) -> None:
    server = llm_server_session
    server.reset()
    turn = Turn(
        text="".join(pieces),
        text_chunks=pieces,
        tool_calls=[(f"call_{n}", f"tool_{n}", arguments) for n, arguments in enumerate(calls)],
        argument_chunk=argument_chunk,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )

    def streamed(request: RecordedRequest) -> Reply:
        frames = render(turn, request).frames
        assert frames is not None
        body = b"".join(
            _rewritten(frame, crlf, extras[n * 3 : n * 3 + 3], empty_error)
            for n, frame in enumerate(frames)
        )
        # Cut in the server's thread: by a seeded generator of its own.
        return Reply(frames=_cut(body, random.Random(seed)), headers=EVENTS)

    server.script(streamed, turn)

    async def both() -> tuple[list[Any], Any]:
        async with make_provider(kind, server, retry=ONCE) as llm:
            return await _stream_and_whole(llm)

    events, whole = asyncio.run(both())
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].response == whole
    assert whole.text == turn.text
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == turn.text
    assert [(c.id, c.name, c.arguments) for c in whole.tool_calls] == turn.tool_calls
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == tokens
    for index, arguments in enumerate(calls):
        given = "".join(
            e.arguments_delta for e in events if isinstance(e, ToolCallDelta) and e.index == index
        )
        assert json.loads(given) == arguments


# ------------------------------------------------------------------ settings that are no numbers
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeout", None),  # httpx's "no timeout": a bare TypeError from arithmetic here
        ("connect_timeout", None),
        ("total_timeout", "30"),
        ("timeout", "30"),
        ("timeout", True),  # taken as 1 s
        ("input_cost_per_million", None),
        ("output_cost_per_million", "2.5"),
        ("cached_input_cost_per_million", True),
    ],
)
def test_a_timeout_or_price_that_is_no_number_is_refused_by_name(
    kind: str, name: str, value: object, server: FakeLlmServer
) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a number, got {value!r}"):
        make_provider(kind, server, **{name: value})
    assert server.requests == []


@pytest.mark.parametrize("kind", KINDS)
async def test_timeouts_and_prices_given_as_other_real_numbers_are_taken(
    kind: str, server: FakeLlmServer
) -> None:
    # A Decimal or a Fraction failed the constructor (Decimal + float) or the first call.
    server.script(Turn("ok", input_tokens=1_000_000, output_tokens=0))
    async with make_provider(
        kind,
        server,
        retry=ONCE,
        timeout=decimal.Decimal("30"),
        connect_timeout=fractions.Fraction(5, 2),
        input_cost_per_million=decimal.Decimal("1.5"),
        cached_input_cost_per_million=fractions.Fraction(1, 2),
    ) as llm:
        reply = await llm.chat(ASK)
        transport = llm._transport
    assert reply.text == "ok"
    assert reply.usage.cost_usd == pytest.approx(1.5)
    assert (transport.timeout, transport.connect_timeout, transport.total_timeout) == (
        30.0,
        2.5,
        62.5,
    )
    assert all(
        type(value) is float
        for value in (transport.timeout, transport.input_cost_per_million, transport.total_timeout)
    )
