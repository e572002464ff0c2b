"""A reply cut at any byte, over real loopback HTTP: never a wrong answer, never a hang.

Each example renders a Turn (text in pieces, tool calls, usage, Anthropic thinking blocks)
as the fake server does, in plain ASCII JSON or with raw UTF-8, and sends it cut:

- `close`: a close-delimited body that ends at byte i (mid-line, mid-character, between a
  frame's line end and its blank line, in or around the terminal frames), which shows the
  client no protocol error;
- `frames`: a chunked stream whose connection drops after k frames (`drop_after`);
- `bytes`: the body under its own framing (content-length, or chunked) dropped at byte i,
  chunk headers included (`cut_at`).

The uncut reply must read as the Turn. A cut one either fails with a retryable
`ProviderError` that says the body ended early, or, where the provider documents a reply
as whole without the rest, reads exactly as the uncut one. A stream yields a prefix of the
uncut stream's events and no `StreamEnd` before failing; with retries on, an attempt that
yielded nothing is replayed whole, one that yielded something is never replayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llm_agent_runtime import FakeClock, ProviderError, RetryPolicy
from llm_agent_runtime.providers.base import (
    ChatResponse,
    Message,
    StreamEnd,
    TextDelta,
    Usage,
    usage_sum,
)

from .conftest import make_provider
from .fake_server import FakeLlmServer, Reply, Turn, render_anthropic, render_openai

USER = [Message("user", "hi")]
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NAME = {"openai": "OpenAI", "anthropic": "Anthropic"}
TERMINAL = {"openai": "[DONE]", "anthropic": "message_stop"}
# A connection dropped inside a framed body, as h11 words it (the second: inside a chunk
# header, its bytes left unparsed).
LOST = re.compile(
    r"(OpenAI|Anthropic) connection failed: RemoteProtocolError: peer (closed connection "
    r"without sending complete message body|unexpectedly closed connection)"
)


@pytest.fixture(scope="module")
def cut_server() -> Iterator[FakeLlmServer]:
    # A server of its own: its open-connection count is this file's alone.
    with FakeLlmServer() as server:
        yield server


# ---------------------------------------------------------------------- the Turn
# Multi-byte characters are drawn often, so that raw UTF-8 bodies can be cut inside one.
_CHAR = st.sampled_from(list('aZ 7é€☃中😀"\\\n')) | st.characters(codec="utf-8")
_TEXT = st.text(_CHAR, min_size=1, max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(_CHAR, max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(_CHAR, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_THINKING = st.builds(
    lambda text, signature: {"type": "thinking", "thinking": text, "signature": signature},
    _TEXT,
    st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True),
)
_REDACTED = st.builds(
    lambda data: {"type": "redacted_thinking", "data": data},
    st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True),
)


def _reads_as_a_repeat(text: str, chunk: int) -> bool:
    """Whether a fragment repeats the arguments so far: OpenAIProvider's documented limit.

    It takes such a fragment for a server resending the arguments (`_new_part`), so a
    nested object that repeats its parent's text so far cannot be streamed; not a cut.
    """
    so_far = ""
    for start in range(0, len(text), chunk):
        fragment = text[start : start + chunk]
        if so_far.strip() and fragment.lstrip()[:1] == "{" and fragment.startswith(so_far):
            return True
        so_far += fragment
    return False


@st.composite
def turns(draw: st.DrawFn, kind: str) -> Turn:
    pieces = draw(st.lists(_TEXT, max_size=5))
    chunk = draw(st.integers(3, 12))
    arguments = st.dictionaries(st.text(_CHAR, min_size=1, max_size=6), _JSON, max_size=3)
    arguments = arguments.filter(lambda a: not _reads_as_a_repeat(json.dumps(a), chunk))
    calls = draw(st.lists(arguments, max_size=3))
    names = draw(st.lists(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), min_size=3, max_size=3))
    reasoning = draw(st.lists(_THINKING | _REDACTED, max_size=2)) if kind == "anthropic" else []
    return Turn(
        text="".join(pieces),
        text_chunks=pieces,
        tool_calls=[(f"call_{n}", names[n], a) for n, a in enumerate(calls)],
        argument_chunk=chunk,
        input_tokens=draw(st.integers(1, 10**6)),  # never 0: a lost count shows
        output_tokens=draw(st.integers(1, 10**6)),
        reasoning=reasoning,
    )


def _expected(turn: Turn, kind: str) -> dict[str, Any]:
    if kind == "openai":
        stop = "tool_calls" if turn.tool_calls else "stop"
    else:
        stop = "tool_use" if turn.tool_calls else "end_turn"
    return {
        "text": turn.text,
        "calls": [list(call) for call in turn.tool_calls],
        "usage": (turn.input_tokens, turn.output_tokens, 0, 0, 0),
        "stop": stop,
        "model": turn.model,
        "reasoning": list(turn.reasoning),
    }


def _summary(response: ChatResponse) -> dict[str, Any]:
    usage = response.usage
    return {
        "text": response.text,
        "calls": [[c.id, c.name, c.arguments] for c in response.tool_calls],
        "usage": (
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        ),
        "stop": response.stop_reason,
        "model": response.model,
        "reasoning": list(response.reasoning),
    }


# ---------------------------------------------------------------------- rendering
def _raw_json(payload: bytes) -> bytes:
    """The same JSON with its non-ASCII characters as raw UTF-8, as real servers send it."""
    return json.dumps(json.loads(payload), ensure_ascii=False, separators=(",", ":")).encode()


def _raw_frame(frame: bytes) -> bytes:
    head, data, payload = frame.rpartition(b"data: ")
    if payload == b"[DONE]\n\n":
        return frame
    return head + data + _raw_json(payload[:-2]) + b"\n\n"


def _rendered(turn: Turn, kind: str, stream: bool, raw: bool) -> Reply:
    reply = (render_openai if kind == "openai" else render_anthropic)(turn, stream)
    if raw and reply.frames is not None:
        reply.frames = [_raw_frame(f) for f in reply.frames]
    elif raw:
        reply.body = _raw_json(reply.body)
    return reply


def _starts(frames: list[bytes]) -> list[int]:
    """Each frame's offset in the body, then the body's length."""
    starts = [0]
    for frame in frames:
        starts.append(starts[-1] + len(frame))
    return starts


def _chunk_head(frame: bytes) -> int:
    return len(b"%x\r\n" % len(frame))


def _encoded_offset(frames: list[bytes], i: int) -> int:
    """Where byte `i` of the event stream sits in its chunked encoding."""
    position = 0
    for frame in frames:
        if i < len(frame):
            return position + _chunk_head(frame) + i
        i -= len(frame)
        position += _chunk_head(frame) + len(frame) + 2
    return position + i


def _received(frames: list[bytes], cut: int) -> tuple[int, str]:
    """Event-stream bytes inside the first `cut` bytes of the chunked encoding, and where
    the cut fell in the framing."""
    position = got = 0
    for frame in frames:
        data = position + _chunk_head(frame)
        if cut < data:
            return got, "at a chunk's start" if cut == position else "in a chunk header"
        if cut <= data + len(frame):
            return got + cut - data, "in a chunk's data"
        got += len(frame)
        position = data + len(frame) + 2
        if cut < position:
            return got, "in a chunk's CRLF"
    return got, "in the last chunk" if cut > position else "at the last chunk"


def _place(body: bytes, starts: list[int], i: int) -> str:
    if i >= len(body):
        return "uncut"
    if i in starts:
        return "at a frame boundary"
    if i + 1 in starts[1:]:
        return "between a line end and the blank line"
    if 0x80 <= body[i] < 0xC0:
        return "inside a UTF-8 character"
    return "inside a line"


def _region(kind: str, starts: list[int], i: int) -> str:
    """Where `i` falls against the terminal frames."""
    n = len(starts) - 1
    names = (
        ["finish chunk", "usage chunk", "data: [DONE]"]
        if kind == "openai"
        else ["message_delta", "message_stop"]
    )
    first = n - len(names)
    if i < starts[first]:
        return f"{kind}: before the {names[0]}"
    for offset, name in enumerate(names):
        start, end = starts[first + offset], starts[first + offset + 1]
        if i == start:
            return f"{kind}: right before the {name}"
        if i < end:
            return f"{kind}: inside the {name}"
    return f"{kind}: after the {names[-1]}"


def _cut_points(body: bytes, terminal: list[int]) -> st.SearchStrategy[int]:
    """Cut offsets into `body`: anywhere, or aimed at the places a reader may get wrong.

    `terminal` holds the offsets of the terminal frames (then the body's length): cuts land
    in and around them, and right before or after each one's last newline.
    """

    def near(marks: list[int], spread: int) -> st.SearchStrategy[int]:
        return st.builds(
            lambda m, d: max(0, min(len(body), m + d)),
            st.sampled_from(marks),
            st.integers(-spread, spread),
        )

    ends = [p + 1 for p, b in enumerate(body) if b == 0x0A]  # just after each newline
    inside_characters = [p for p, b in enumerate(body) if 0x80 <= b < 0xC0]
    # The last terminal frame's start first: generation favours a strategy's first values.
    marks = terminal[-2::-1] + [t - 1 for t in terminal[1:]] + terminal[-1:]
    choices = [near(marks, 2), st.integers(max(0, terminal[0] - 2), len(body))]
    if inside_characters:
        choices.append(st.sampled_from(inside_characters))
    if ends:
        choices.append(near(ends, 1))
    choices.append(st.integers(0, len(body)))
    return st.one_of(choices)


def _text_of(kind: str, frames: list[bytes]) -> str:
    """The text the frames carry, read straight from their JSON."""
    text = ""
    for frame in frames:
        payload = frame.rpartition(b"data: ")[2][:-2]
        if payload == b"[DONE]":
            continue
        data = json.loads(payload)
        if kind == "openai":
            for choice in data.get("choices") or []:
                text += choice["delta"].get("content") or ""
        elif data["type"] == "content_block_delta" and data["delta"]["type"] == "text_delta":
            text += data["delta"]["text"]
    return text


# ---------------------------------------------------------------------- calls
async def _collect(stream: Any) -> tuple[list[Any], ProviderError | None]:
    events: list[Any] = []

    async def read() -> None:
        async for item in stream:
            events.append(item)

    try:
        await asyncio.wait_for(read(), timeout=10)
    except ProviderError as error:
        return events, error
    return events, None


async def _chat(llm: Any) -> tuple[ChatResponse | None, ProviderError | None]:
    try:
        return await asyncio.wait_for(llm.chat(USER), timeout=10), None
    except ProviderError as error:
        return None, error


def _check_cut_error(error: ProviderError | None, kind: str, stream: bool, mode: str) -> None:
    """The typed error of a body that ended early: retryable, and saying so."""
    assert type(error) is ProviderError, error
    assert (error.status, error.retryable, error.retry_after) == (None, True, None)
    if stream and mode == "close":  # a clean end: only the missing terminal frame tells
        assert str(error) == f"{NAME[kind]} stream ended before {TERMINAL[kind]}"
    elif mode == "close":  # only the JSON cut short tells
        assert str(error) == (
            f"{NAME[kind]} reply cut short: its JSON body ended early (the connection closed, "
            "or its compressed stream broke off)"
        )
    else:
        lost = LOST.match(str(error))
        assert lost is not None and lost[1] == NAME[kind], str(error)


def _no_connection_left(server: FakeLlmServer) -> None:
    deadline = time.monotonic() + 2.0
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.open_connections == 0


def _retrying(kind: str, server: FakeLlmServer, clock: FakeClock) -> Any:
    retry = RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock)
    return make_provider(kind, server, retry=retry)


def _calls_on_cut(
    server: FakeLlmServer,
    kind: str,
    whole: Reply,
    cut: Reply,
    clock: FakeClock,
    call: Callable[[Any], Awaitable[tuple[Any, ProviderError | None]]],
) -> tuple[Any, ...]:
    """`call` on the whole reply, then on the cut one, retries off; then, retries on, on the
    cut reply followed by the whole one.

    Returns (full, its error, once, its error, the requests of the first two calls, again,
    its error); the server's requests are then the third call's, and no connection is
    left open.
    """
    server.reset()

    async def scenario() -> tuple[Any, ...]:
        async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1)) as plain:
            server.script(whole)
            full, full_error = await call(plain)
            server.script(cut)
            once, once_error = await call(plain)
        requests_once = len(server.requests)
        server.reset()
        server.script(cut, whole)
        async with _retrying(kind, server, clock) as retrying:
            again, again_error = await call(retrying)
        return full, full_error, once, once_error, requests_once, again, again_error

    results = asyncio.run(scenario())
    _no_connection_left(server)
    return results


# ---------------------------------------------------------------------- streams
@SETTINGS
@given(
    kind=st.sampled_from(["openai", "anthropic"]),
    raw=st.booleans(),
    mode=st.sampled_from(["close", "frames", "bytes"]),
    data=st.data(),
)
def test_a_stream_cut_anywhere_fails_typed_or_reads_whole(
    cut_server: FakeLlmServer, kind: str, raw: bool, mode: str, data: st.DataObject
) -> None:
    server = cut_server
    turn = data.draw(turns(kind), label="turn")
    reply = _rendered(turn, kind, True, raw)
    frames = reply.frames
    assert frames is not None
    body = b"".join(frames)
    starts = _starts(frames)
    n = len(frames)
    last = 3 if kind == "openai" else 2  # the terminal frames
    if mode == "frames":
        k = data.draw(st.integers(0, n) | st.integers(max(0, n - last - 1), n), label="k")
        i = starts[k]
        cut = Reply(frames=frames, headers=reply.headers, drop_after=k)
    else:
        i = data.draw(_cut_points(body, starts[n - last :]), label="i")
        if mode == "close":
            cut = Reply(frames=[body[:i]], headers=reply.headers, close_delimited=True)
        else:
            encoded = len(b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames)) + 5
            at = _encoded_offset(frames, i)
            c = data.draw(
                st.just(at)
                | st.integers(0, encoded)
                | st.integers(at - 3, at + 3).map(lambda c: max(0, c)),
                label="cut_at",
            )
            i, framing = _received(frames, c)
            event(f"bytes cut: {framing}")
            cut = Reply(frames=frames, headers=reply.headers, cut_at=c)
    # Frames the client reads whole: a close-delimited body's last event needs no blank line.
    slack = 1 if mode == "close" else 0
    delivered = sum(1 for end in starts[1:] if i >= end - slack)
    accepted = kind == "openai" and mode == "close" and delivered >= n - 1
    must_complete = delivered == n or accepted
    event(f"{kind} stream, {mode}")
    event(f"place: {_place(body, starts, i) if mode != 'frames' else 'at a frame boundary'}")
    event(_region(kind, starts, i))
    # An OpenAI body that ends cleanly after the finish chunk, before the usage chunk, is
    # what a compatible server that sends neither usage nor [DONE] sends: read whole, with
    # no usage. Ended inside the usage chunk's line, it was cut.
    no_usage = (
        kind == "openai"
        and mode == "close"
        and delivered == n - 2
        and body[:i].endswith((b"\n", b"\r"))
    )
    if no_usage:
        event("openai: ended cleanly before the usage chunk")

    clock = FakeClock()
    whole = Reply(frames=frames, headers=reply.headers)
    full, full_error, once, once_error, requests_once, again, again_error = _calls_on_cut(
        server, kind, whole, cut, clock, lambda llm: _collect(llm.chat_stream(USER))
    )

    # The uncut stream is the Turn.
    assert full_error is None
    assert isinstance(full[-1], StreamEnd)
    assert not any(isinstance(e, StreamEnd) for e in full[:-1])
    assert _summary(full[-1].response) == _expected(turn, kind)
    assert requests_once == 2

    # Retries off: whole, or the typed error after a prefix of the stream.
    if no_usage:
        end = full[-1].response
        whole = [*full[:-1], StreamEnd(dataclasses.replace(end, usage=Usage()))]
        assert (once_error, once) == (None, whole)
    elif must_complete:
        assert once_error is None
        assert once == full
    else:
        _check_cut_error(once_error, kind, True, mode)
        assert once == full[: len(once)]
        assert not any(isinstance(e, StreamEnd) for e in once)
        # Nor is text lost: each text delta the client read whole went out before the error.
        said = "".join(e.text for e in once if isinstance(e, TextDelta))
        assert said == _text_of(kind, frames[:delivered])

    # Retries on: replayed only when nothing had been yielded.
    requests = len(server.requests)
    if no_usage:
        assert (again_error, again, requests) == (None, once, 1)
    elif must_complete:
        event("outcome: read whole")
        assert (again_error, again, requests) == (None, full, 1)
    elif once:
        event("outcome: cut after output, raised, not replayed")
        _check_cut_error(again_error, kind, True, mode)
        assert (again, requests, clock.sleeps) == (once, 1, [])
    else:
        event("outcome: cut before output, replayed")
        assert again_error is None
        # The cut attempt is paid for in the answer's usage when it was billed (its error,
        # retries off, says for what).
        replayed = full
        if once_error is not None and once_error.usage is not None:
            paid = usage_sum([once_error.usage, full[-1].response.usage])
            replayed = [*full[:-1], StreamEnd(dataclasses.replace(full[-1].response, usage=paid))]
        assert (again, requests, clock.sleeps) == (replayed, 2, [1.0])
        assert server.requests[0].body == server.requests[1].body


# ---------------------------------------------------------------------- whole replies
@SETTINGS
@given(
    kind=st.sampled_from(["openai", "anthropic"]),
    raw=st.booleans(),
    mode=st.sampled_from(["close", "bytes"]),
    data=st.data(),
)
def test_a_whole_reply_cut_anywhere_fails_typed_and_is_retried(
    cut_server: FakeLlmServer, kind: str, raw: bool, mode: str, data: st.DataObject
) -> None:
    server = cut_server
    turn = data.draw(turns(kind), label="turn")
    reply = _rendered(turn, kind, False, raw)
    body = reply.body
    i = data.draw(_cut_points(body, [len(body) - 1, len(body)]), label="i")
    if mode == "close":
        cut = Reply(frames=[body[:i]], headers=reply.headers, close_delimited=True)
    else:
        cut = Reply(body=body, headers=reply.headers, cut_at=i)
    must_complete = i >= len(body)
    event(f"{kind} whole, {mode}")
    event(f"place: {_place(body, [0], i)}")

    clock = FakeClock()
    whole = Reply(body=body, headers=reply.headers)
    full, full_error, once, once_error, requests_once, again, again_error = _calls_on_cut(
        server, kind, whole, cut, clock, _chat
    )

    assert full_error is None and full is not None
    assert _summary(full) == _expected(turn, kind)
    assert requests_once == 2
    if must_complete:
        event("outcome: read whole")
        assert (once_error, once) == (None, full)
        assert (again_error, again, len(server.requests)) == (None, full, 1)
        return
    event("outcome: raised, then replayed")
    assert once is None
    _check_cut_error(once_error, kind, False, mode)
    assert (again_error, again) == (None, full)  # the second attempt was whole
    assert (len(server.requests), clock.sleeps) == (2, [1.0])
    assert server.requests[0].body == server.requests[1].body  # the same request again


# ---------------------------------------------------------------------- faults it found
HELLO = Turn("Hello there", text_chunks=["Hello", " there"], input_tokens=11, output_tokens=7)


async def test_openai_stream_cut_inside_its_usage_chunk_is_not_whole(
    cut_server: FakeLlmServer,
) -> None:
    cut_server.reset()
    frames = render_openai(HELLO, True).frames
    assert frames is not None
    body = b"".join(frames[:-2]) + frames[-2][: len(frames[-2]) // 2]  # inside the usage chunk
    headers = {"content-type": "text/event-stream"}
    cut_server.script(Reply(frames=[body], headers=headers, close_delimited=True))
    async with make_provider("openai", cut_server, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await _collect(llm.chat_stream(USER))
    # Read as whole, its usage (11 in, 7 out) would be lost: the call charged 0 tokens.
    assert not any(isinstance(e, StreamEnd) for e in events), "a cut reply passed as whole"
    assert error is not None and str(error) == "OpenAI stream ended before [DONE]"
    assert error.retryable


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_whole_reply_cut_by_the_connections_close_is_retried(
    cut_server: FakeLlmServer, kind: str
) -> None:
    cut_server.reset()
    body = (render_openai if kind == "openai" else render_anthropic)(HELLO, False).body
    headers = {"content-type": "application/json"}
    cut = Reply(frames=[body[: len(body) // 2]], headers=headers, close_delimited=True)
    cut_server.script(cut, Reply(body=body, headers=headers))
    clock = FakeClock()
    async with _retrying(kind, cut_server, clock) as llm:
        response, error = await _chat(llm)
    assert error is None, str(error)
    assert response is not None and response.text == "Hello there"
    assert (len(cut_server.requests), clock.sleeps) == (2, [1.0])


@pytest.mark.parametrize("done", [b"data: [DONE]", b"data:[DONE]"])
async def test_an_openai_stream_whose_done_line_has_no_line_end_is_whole(
    cut_server: FakeLlmServer, done: bytes
) -> None:
    # The body ends inside a line, but that line is the whole [DONE]: nothing was cut.
    cut_server.reset()
    frames = render_openai(HELLO, True).frames
    assert frames is not None and frames[-1] == b"data: [DONE]\n\n"
    body = b"".join(frames[:-1]) + done
    headers = {"content-type": "text/event-stream"}
    cut_server.script(Reply(frames=[body], headers=headers, close_delimited=True))
    async with make_provider("openai", cut_server, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await _collect(llm.chat_stream(USER))
    assert error is None
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.text == "Hello there"
    assert (end.response.usage.input_tokens, end.response.usage.output_tokens) == (11, 7)


async def test_an_openai_stream_cut_inside_its_done_line_after_the_usage_is_whole(
    cut_server: FakeLlmServer,
) -> None:
    # All the reply said, its usage included, had come: only [DONE] was cut.
    cut_server.reset()
    frames = render_openai(HELLO, True).frames
    assert frames is not None
    body = b"".join(frames[:-1]) + frames[-1][:1]
    headers = {"content-type": "text/event-stream"}
    cut_server.script(Reply(frames=[body], headers=headers, close_delimited=True))
    async with make_provider("openai", cut_server, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await _collect(llm.chat_stream(USER))
    assert error is None
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.response.text == "Hello there"
    assert (end.response.usage.input_tokens, end.response.usage.output_tokens) == (11, 7)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_whole_reply_closed_before_its_first_byte_is_retried(
    cut_server: FakeLlmServer, kind: str
) -> None:
    cut_server.reset()
    body = (render_openai if kind == "openai" else render_anthropic)(HELLO, False).body
    headers = {"content-type": "application/json"}
    cut = Reply(frames=[b""], headers=headers, close_delimited=True)
    cut_server.script(cut, Reply(body=body, headers=headers))
    clock = FakeClock()
    async with _retrying(kind, cut_server, clock) as llm:
        response, error = await _chat(llm)
    assert error is None, str(error)
    assert response is not None and response.text == "Hello there"
    assert (len(cut_server.requests), clock.sleeps) == (2, [1.0])
