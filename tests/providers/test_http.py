from __future__ import annotations

import email.utils
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_agent_runtime import AnthropicProvider, OpenAIEmbedder, OpenAIProvider
from llm_agent_runtime.errors import ProviderError, is_retryable_status
from llm_agent_runtime.providers import _http as http_module
from llm_agent_runtime.providers._http import (
    Redactor,
    SseEvent,
    check_base_url,
    decode_arguments,
    error_message,
    iter_sse,
    parse_retry_after,
    redact_secret,
    transport_errors,
)

from .fake_server import FakeLlmServer, Turn


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (422, False),
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (529, True),
        (599, True),
        (600, False),  # not a 5xx: a broken proxy's
        (999, False),
    ],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


def test_retry_after_seconds_ms_and_http_date() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "7"})) == 7.0
    assert parse_retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    # retry-after-ms is the more precise of the two and wins.
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == 30.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=now) == 0.0


@pytest.mark.parametrize("value", ["soon", "", "Mon, 99 Foo 2020", "-"])
def test_unreadable_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": value})) is None


def test_retry_after_in_the_asctime_form_is_read_as_gmt() -> None:
    # RFC 9110 (5.6.7) has clients accept all three date forms; asctime has no zone.
    now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
    for date in (
        "Sun, 06 Nov 1994 08:49:47 GMT",
        "Sunday, 06-Nov-94 08:49:47 GMT",
        "Sun Nov  6 08:49:47 1994",
    ):
        assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == 10.0


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_a_retry_after_of_nan_or_infinity_is_unreadable(value: str) -> None:
    # max(0.0, nan) is 0: read as a number it would mean "retry at once".
    assert parse_retry_after(httpx.Headers({"Retry-After": value})) is None
    assert parse_retry_after(httpx.Headers({"retry-after-ms": value})) is None
    # An unreadable retry-after-ms leaves it to Retry-After, as a non-number does.
    both = httpx.Headers({"retry-after-ms": value, "retry-after": "7"})
    assert parse_retry_after(both) == 7.0


def test_no_retry_after() -> None:
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "x"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "-5"})) == 0.0


def test_error_message_reads_both_apis() -> None:
    assert error_message(b'{"error": {"message": "bad model", "type": "invalid"}}') == (
        "invalid: bad model"
    )
    anthropic_body = b'{"type":"error","error":{"type":"overloaded_error","message":"Busy"}}'
    assert error_message(anthropic_body) == "overloaded_error: Busy"
    assert error_message(b'{"error": "plain"}') == "plain"
    assert error_message(b"<html>gateway</html>") == "<html>gateway</html>"
    assert error_message(b"") == "no error message"
    assert len(error_message(b"x" * 10_000)) == 500


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"type": "invalid_request_error", "message": "' + b"m" * 100_000 + b'"}}',
        b"<html>" + b"x" * 100_000,
    ],
    ids=["json", "page"],
)
def test_an_error_body_cut_at_the_read_limit_is_quoted_short_with_a_note(body: bytes) -> None:
    # Only `MAX_ERROR_BODY` bytes of an error body are read: JSON cut there does not parse,
    # and its raw text was quoted as if it were the message.
    start = body[: http_module.MAX_ERROR_BODY]
    message = error_message(start, truncated=True)
    assert message.startswith(start[:50].decode())
    assert message.endswith(
        "... (only the first 65536 bytes of the error body were read, and they could not be parsed)"
    )
    assert len(message) < 300
    # A body shorter than the limit was read whole: quoted as it is, as before.
    assert error_message(start[:60_000]) == start[:500].decode()


def test_only_a_body_said_to_be_cut_is_quoted_with_the_note() -> None:
    # The note went with any body of `MAX_ERROR_BODY` bytes or more that did not parse: a
    # page of exactly that size read whole, and an error event's data, which is never cut.
    page = b"<html>" + b"x" * (http_module.MAX_ERROR_BODY - 13) + b"</html>"
    assert len(page) == http_module.MAX_ERROR_BODY
    assert error_message(page) == page[:500].decode()
    event_data = b"upstream failure: " + b"detail " * 10_000
    assert error_message(event_data, truncated=False) == event_data[:500].decode()
    assert error_message(page, truncated=True).endswith("could not be parsed)")
    # A body that parses says its message, cut or not.
    assert error_message(b'{"error": {"message": "m"}}', truncated=True) == "m"


def test_decode_arguments() -> None:
    assert decode_arguments('{"a": 1}') == {"a": 1}
    assert decode_arguments("  ") == {}
    assert decode_arguments("", {"given": True}) == {"given": True}
    with pytest.raises(ProviderError, match="not valid JSON"):
        decode_arguments('{"a": ')
    with pytest.raises(ProviderError, match="not a JSON object"):
        decode_arguments("[1, 2]")


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _events(parts: list[bytes]) -> list[SseEvent]:
    return [event async for event in iter_sse(_chunks(parts))]


async def test_sse_fields_comments_and_line_endings() -> None:
    stream = (
        b": keep-alive comment\n"
        b"event: message_start\n"
        b'data: {"a": 1}\n'
        b"\n"
        b"id: 7\r\n"
        b"retry: 100\r\n"
        b"data:no-space\r\n"
        b"data:  two spaces\r\n"
        b"\r\n"
        b"event: lonely\n"
        b"\n"
        b"data: [DONE]\n"
        b"\n"
    )
    assert await _events([stream]) == [
        SseEvent("message_start", b'{"a": 1}'),
        SseEvent(None, b"no-space\n two spaces"),
        SseEvent(None, b"[DONE]"),
    ]


async def test_sse_last_event_without_blank_line_is_dispatched() -> None:
    assert await _events([b"data: 1\n\ndata: 2\n"]) == [
        SseEvent(None, b"1"),
        SseEvent(None, b"2"),
    ]
    assert await _events([]) == []


async def test_sse_a_line_cut_by_the_end_of_the_stream_is_discarded() -> None:
    # A close-delimited body cut inside a line gave its half as an event (then "malformed",
    # not retried); an event whose lines all ended still goes out.
    assert await _events([b'data: 1\n\ndata: {"a": "hel']) == [SseEvent(None, b"1")]
    assert await _events([b"data: 1\n\nevent: e\ndata: 2\n"]) == [
        SseEvent(None, b"1"),
        SseEvent("e", b"2"),
    ]
    assert await _events([b"data: 1\r\r", b"data: 2\r"]) == [
        SseEvent(None, b"1"),
        SseEvent(None, b"2"),
    ]
    assert await _events([b"data: 1\n\n", b"data: 2", b"\n\n"]) == [
        SseEvent(None, b"1"),
        SseEvent(None, b"2"),
    ]


async def test_sse_an_event_with_empty_data_is_not_dispatched() -> None:
    # A bare `data:` line then a blank line (a keep-alive) carries nothing to read: it was
    # dispatched with empty data, which both providers failed as a malformed event.
    stream = b"data: 1\n\ndata:\n\ndata: \r\n\r\nevent: ping\ndata:\n\ndata: 2\n\n"
    expected = [SseEvent(None, b"1"), SseEvent(None, b"2")]
    assert await _events([stream]) == expected
    assert await _events([bytes([byte]) for byte in stream]) == expected


_line = st.text(alphabet='abc{}": ', max_size=12)
_event = st.tuples(st.none() | st.sampled_from(["ping", "delta"]), st.lists(_line, min_size=1))


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(_event, max_size=8),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
async def test_sse_chunking_never_changes_events(
    events: list[tuple[str | None, list[str]]], crlf: bool, cuts: list[int]
) -> None:
    newline = "\r\n" if crlf else "\n"
    text = ""
    for name, lines in events:
        if name is not None:
            text += f"event: {name}{newline}"
        text += "".join(f"data: {line}{newline}" for line in lines) + newline
    raw = text.encode()
    bounds = sorted({min(c, len(raw)) for c in cuts})
    parts = [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=True)]
    expected = [
        SseEvent(name, "\n".join(lines).encode())
        for name, lines in events
        if "\n".join(lines)  # an event with empty data is not dispatched
    ]
    assert await _events(parts) == expected


async def test_sse_bare_cr_ends_a_line_and_cr_lf_across_chunks_is_one_line_end() -> None:
    stream = b'event: a\rdata: {"x": 1}\r\r: comment\rdata: b\r\r'
    expected = [SseEvent("a", b'{"x": 1}'), SseEvent(None, b"b")]
    assert await _events([stream]) == expected
    assert await _events([bytes([byte]) for byte in stream]) == expected
    # A CR that ends a chunk and the LF that starts the next are one line end (CRLF), not a
    # line end and a blank line (which would dispatch "1" alone).
    assert await _events([b"data: 1\r", b"\ndata: 2\r", b"\n\r", b"\n"]) == [
        SseEvent(None, b"1\n2")
    ]
    assert await _events([b"data: last\r"]) == [SseEvent(None, b"last")]


@pytest.mark.timeout(10)  # read in ~0.2 s; gathering the line by copying took ~20 s
async def test_sse_one_huge_event_in_thousands_of_chunks_is_read_whole() -> None:
    # A 16 MiB `data:` line (a big tool call's arguments, say) in 32,769 chunks of 512 bytes
    # without a line end: a reader that copies what it has gathered for every chunk is
    # quadratic in the line's length.
    payload = bytes(range(32, 127)) * (16 * 2**20 // 95)
    body = b"event: big\r\ndata: " + payload + b"\r\n\r\ndata: after\n\n"
    parts = [body[i : i + 512] for i in range(0, len(body), 512)]
    events = await _events(parts)
    assert [(e.event, len(e.data)) for e in events] == [("big", len(payload)), (None, 5)]
    assert events[0].data == payload  # compared apart: a failure would print megabytes
    assert events[1].data == b"after"


async def test_sse_events_complete_before_a_line_too_long_go_out_before_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The open line's length was checked before the chunk's complete lines were read: the
    # events that had arrived whole in that chunk were lost with the stream.
    monkeypatch.setattr(http_module, "MAX_EVENT_BYTES", 16)
    whole = b"event: a\ndata: 1\n\ndata: 2\n\n"
    long_line = b"data: " + b"x" * 40  # no line end, past the limit
    seen: list[SseEvent] = []
    with pytest.raises(ProviderError, match="a line grew past 16 bytes without a line end"):
        async for event in iter_sse(_chunks([whole + long_line])):  # all in one chunk
            seen.append(event)
    assert seen == [SseEvent("a", b"1"), SseEvent(None, b"2")]


async def test_sse_event_data_of_exactly_the_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # A newline was counted after every data line, the first too: data of exactly
    # `MAX_EVENT_BYTES` was refused as past it. Joined lines count their joining newline.
    monkeypatch.setattr(http_module, "MAX_EVENT_BYTES", 16)
    one_line = b"data: " + b"x" * 16 + b"\n\n"
    assert await _events([one_line]) == [SseEvent(None, b"x" * 16)]
    two_lines = b"data: " + b"x" * 8 + b"\ndata: " + b"y" * 7 + b"\n\n"  # 8 + 1 + 7
    assert await _events([two_lines]) == [SseEvent(None, b"x" * 8 + b"\n" + b"y" * 7)]
    for past in (b"data: " + b"x" * 17 + b"\n\n", b"data: " + b"x" * 8 + b"\ndata: " + b"y" * 8):
        with pytest.raises(ProviderError, match="the data of an event grew past 16 bytes"):
            await _events([past + b"\n\n"])


def _reference_events(raw: bytes) -> list[SseEvent]:
    """The event-stream rules read the plain way: the whole body, split at every line end.

    An event with empty data is not dispatched; one still open when the body ends is, from
    its lines that ended.
    """
    events: list[SseEvent] = []
    event: str | None = None
    data: list[bytes] = []
    # What follows the last line end is no line (nothing, or a line the body cut short).
    for line in re.split(rb"\r\n|\r|\n", raw)[:-1]:
        if not line:
            if b"\n".join(data):
                events.append(SseEvent(event, b"\n".join(data)))
            event, data = None, []
        elif line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    if b"\n".join(data):
        events.append(SseEvent(event, b"\n".join(data)))
    return events


_field = st.one_of(
    st.just(b""),  # a blank line: dispatches the event
    st.text(alphabet='ab{}": ', max_size=8).map(lambda text: b"data: " + text.encode()),
    st.text(alphabet="ab", max_size=3).map(lambda text: b"data:" + text.encode()),
    st.sampled_from([b"event: ping", b"event: delta", b": keep-alive", b"id: 1"]),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(_field, st.integers(min_value=0, max_value=2)), max_size=30),
    endings=st.permutations([b"\n", b"\r", b"\r\n"]),
    kinds=st.integers(min_value=1, max_value=3),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
async def test_sse_mixed_line_endings_under_any_chunking_read_as_the_whole_body(
    lines: list[tuple[bytes, int]], endings: list[bytes], kinds: int, cuts: list[int]
) -> None:
    # `kinds` line endings in use: one throughout (LF, CR or CRLF), or a mix of two or three.
    raw = b"".join(field + endings[choice % kinds] for field, choice in lines)
    bounds = sorted({min(c, len(raw)) for c in cuts})
    parts = [raw[a:b] for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=True)]
    assert await _events(parts) == _reference_events(raw)


def test_only_keys_long_enough_to_be_secrets_are_redacted() -> None:
    # Removing a one-letter key from messages would mangle them ("chun[redacted]ed").
    assert redact_secret("chunked read failed", "k") == "chunked read failed"
    assert redact_secret("ollama said no", "ollama") == "ollama said no"
    assert redact_secret("bad key sk-12345!", "sk-12345") == "bad key [redacted]!"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999/v1", "http://127.0.0.1:65536/v1", "http://h:-1/v1", "http://h:x"],
)
def test_a_base_url_with_an_unusable_port_is_refused(url: str) -> None:
    # The socket would refuse it on the first request, with a raw OverflowError.
    with pytest.raises(ProviderError, match="is not an http:// or https:// URL") as caught:
        check_base_url("OpenAI", url)
    assert "valid port" in str(caught.value)
    with pytest.raises(ProviderError, match="valid port"):  # when the provider is made
        OpenAIProvider(api_key="sk-x", base_url=url)
    for port in ("", ":0", ":65535"):
        assert check_base_url("OpenAI", f" http://127.0.0.1{port}/v1/ ") == (
            f"http://127.0.0.1{port}/v1"
        )


@pytest.mark.parametrize(
    "tail", ["/v1?api-version=2024-06-01", "/v1/?", "/v1#frag", "/v1?key=sk-QUERY-SECRET#x"]
)
async def test_a_base_url_with_a_query_or_fragment_is_refused(
    tail: str, server: FakeLlmServer
) -> None:
    # Paths were appended after it: "/v1?api-version=..." + "/chat/completions" went to /v1.
    url = server.url + tail
    for make in (
        lambda: OpenAIProvider(api_key="sk-x", base_url=url),
        lambda: AnthropicProvider(api_key="sk-x", base_url=url),
        lambda: OpenAIEmbedder(api_key="sk-x", base_url=url),
    ):
        with pytest.raises(ProviderError, match="query or a fragment") as caught:
            make()
        assert "SECRET" not in str(caught.value)  # a query may carry a key: not quoted
    assert server.requests == []
    # What the message advises: query parameters on a client of one's own.
    server.script(Turn("ok"))
    async with httpx.AsyncClient(params={"api-version": "2024-06-01"}) as client:
        llm = OpenAIProvider(api_key="sk-x", base_url=server.url + "/v1", http_client=client)
        assert await llm.complete("hi") == "ok"
    assert server.requests[0].path == "/v1/chat/completions?api-version=2024-06-01"


def test_importing_the_package_does_not_load_httpx() -> None:
    code = (
        "import sys, llm_agent_runtime as ar\n"
        "assert 'httpx' not in sys.modules, 'httpx loaded by the package import'\n"
        "assert 'OpenAIProvider' in ar.__all__ and 'AnthropicProvider' in ar.__all__\n"
        "assert ar.OpenAIProvider.__name__ == 'OpenAIProvider'\n"
        "assert 'httpx' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (httpx.ReadError(""), "OpenAI connection failed: ReadError"),
        (httpx.ConnectError("refused"), "OpenAI connection failed: ConnectError: refused"),
        (httpx.UnsupportedProtocol(" "), "OpenAI request failed: UnsupportedProtocol"),
    ],
)
def test_a_transport_error_without_a_message_is_named_alone(
    raised: Exception, message: str
) -> None:
    # An empty message read "connection failed: ReadError: " (a colon before nothing).
    with pytest.raises(ProviderError) as caught, transport_errors("OpenAI", Redactor(None)):
        raise raised
    assert str(caught.value) == message
