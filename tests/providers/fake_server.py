"""A scripted LLM API server on 127.0.0.1: real HTTP/1.1, both wire formats, faults on demand.

The server runs an asyncio loop in a background thread, so tests (and the SDKs in the
benchmarks) talk to it over a real socket. Each request takes the next scripted entry:

- a `Turn` (text, tool calls, usage) is rendered in the request's wire format, OpenAI Chat
  Completions or Anthropic Messages, as JSON or as server-sent events when the body asks
  for `"stream": true`;
- a `Reply` is sent as it is and carries the faults: any status and headers, a raw body or
  raw SSE frames, a delay before the first byte, a pause mid-stream, frames trickled at an
  interval (keep-alive pings), a connection dropped after some frames (or at any byte of
  the body), a body that ends where the connection closes.

Streams use chunked transfer encoding, so a dropped connection is visible to the client as an
incomplete body; a close-delimited body (`Reply.close_delimited`) shows no such thing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FakeLlmServer",
    "RecordedRequest",
    "Reply",
    "Turn",
    "anthropic_error_event",
    "anthropic_event",
    "openai_error_event",
    "sse",
    "vllm_error_event",
]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def wire(self) -> str:
        return "anthropic" if self.path.endswith("/messages") else "openai"

    @property
    def streamed(self) -> bool:
        return bool(self.body) and bool(self.json.get("stream"))


@dataclass
class Turn:
    """One model answer, rendered in whichever wire format the request uses."""

    text: str = ""
    tool_calls: list[tuple[str, str, dict[str, Any] | str]] = field(default_factory=list)
    """(id, name, arguments) of each call: arguments as a dict, written as JSON, or as the
    text to send (not for Anthropic's non-streamed form, whose `input` is an object)."""
    input_tokens: int = 11
    output_tokens: int = 7
    stop_reason: str | None = None
    """Wire-specific reason; defaults to stop/tool_calls or end_turn/tool_use."""
    text_chunks: list[str] | None = None
    """How the text is split into streamed deltas (default: about 8 characters each)."""
    model: str = "fake-model"
    argument_chunk: int = 5
    """Characters of tool-call argument JSON per streamed delta."""
    refusal: str | None = None
    """OpenAI only: a refusal, sent as `message.refusal` (streamed: `delta.refusal` pieces,
    about 8 characters each) with no content."""
    arguments_cut: int | None = None
    """Cut each call's argument JSON after this many characters, as a reply stopped by the
    token limit leaves it (pair with `stop_reason="length"` / `"max_tokens"`). Not applied to
    Anthropic's non-streamed form, whose `input` is an object."""
    cache_read_tokens: int = 0
    """Input tokens read from the prompt cache, on top of `input_tokens`: Anthropic's
    `cache_read_input_tokens`; OpenAI's `prompt_tokens_details.cached_tokens`, included in
    its `prompt_tokens`."""
    cache_write_tokens: int = 0
    """Anthropic only: input tokens written to the prompt cache, on top of `input_tokens`
    (`cache_creation_input_tokens`)."""
    cache_write_1h_tokens: int = 0
    """Anthropic only: of `cache_write_tokens`, those written to the 1-hour cache (the
    `cache_creation` breakdown by lifetime)."""
    reasoning_tokens: int = 0
    """OpenAI only: of `output_tokens`, those spent reasoning
    (`completion_tokens_details.reasoning_tokens`)."""
    reasoning: list[dict[str, Any]] = field(default_factory=list)
    """Anthropic only: `thinking` / `redacted_thinking` blocks put before the text, as the
    API sends them (streamed: a thinking block's text in `thinking_delta` pieces of about 8
    characters, then its signature in one `signature_delta`)."""


@dataclass
class Reply:
    """A raw reply: the way to script faults."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    """Sent with Content-Length when `frames` is None."""
    frames: list[bytes] | None = None
    """SSE frames, each sent as one chunk of a chunked body."""
    first_byte_delay: float = 0.0
    """Seconds to wait before sending anything."""
    pause_after: int | None = None
    """Pause for `pause` seconds after this many frames."""
    pause: float = 0.0
    drop_after: int | None = None
    """Close the connection after this many frames, without ending the body."""
    frame_interval: float = 0.0
    """Seconds to wait before each frame (a server that pings while the model thinks)."""
    interim_replies: int = 0
    """Interim `102 Processing` replies sent first, `frame_interval` apart (a proxy keeping a
    request it has no answer for alive)."""
    close_delimited: bool = False
    """Send `frames` as they are, without content-length or chunked encoding, then close the
    connection: the body is whatever came before the close (HTTP/1.1 allows it), so a cut
    anywhere in it, mid-line included, is no protocol error to the client."""
    cut_at: int | None = None
    """Close the connection after this many bytes of the body as sent (under its
    content-length, chunked, or close-delimited), without ending it: a cut at any byte,
    mid-chunk-header included."""


Script = Turn | Reply | Callable[[RecordedRequest], "Turn | Reply"]


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame; `data` is JSON-encoded unless it is already str or bytes."""
    if isinstance(data, bytes):
        payload = data
    elif isinstance(data, str):
        payload = data.encode()
    else:
        payload = json.dumps(data, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


def openai_error_event(
    message: str, kind: str | None = "server_error", code: int | str | None = None
) -> bytes:
    """`data: {"error": {...}}`, as OpenAI (code a name or null) and recent vLLM (an int)."""
    return sse({"error": {"message": message, "type": kind, "code": code}})


def vllm_error_event(message: str, kind: str = "BadRequestError", code: int = 400) -> bytes:
    """vLLM's older error chunk: the error object itself, marked `"object": "error"`."""
    return sse({"object": "error", "message": message, "type": kind, "param": None, "code": code})


def anthropic_error_event(message: str, kind: str = "overloaded_error") -> bytes:
    return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")


def anthropic_event(name: str, **data: Any) -> bytes:
    """One Messages API stream event: `event: name` with `{"type": name, **data}`."""
    return sse({"type": name, **data}, name)


# ---------------------------------------------------------------------- rendering
def _chunks(turn: Turn) -> list[str]:
    if turn.text_chunks is not None:
        return turn.text_chunks
    return [turn.text[i : i + 8] for i in range(0, len(turn.text), 8)]


def _arguments(turn: Turn, args: dict[str, Any] | str) -> str:
    text = args if isinstance(args, str) else json.dumps(args)
    return text if turn.arguments_cut is None else text[: turn.arguments_cut]


def render_openai(turn: Turn, stream: bool) -> Reply:
    finish = turn.stop_reason or ("tool_calls" if turn.tool_calls else "stop")
    prompt_tokens = turn.input_tokens + turn.cache_read_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": turn.output_tokens,
        "total_tokens": prompt_tokens + turn.output_tokens,
    }
    if turn.cache_read_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": turn.cache_read_tokens}
    if turn.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": turn.reasoning_tokens}
    head = {"id": "chatcmpl-1", "created": 1700000000, "model": turn.model}
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
        if turn.refusal is not None:
            message["refusal"] = turn.refusal
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments(turn, args)},
                }
                for call_id, name, args in turn.tool_calls
            ]
        body = {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse(
            {
                **head,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": piece}) for piece in _chunks(turn)]
    if turn.refusal is not None:
        frames[0] = chunk({"role": "assistant", "content": None, "refusal": ""})
        refusal = turn.refusal
        frames += [chunk({"refusal": refusal[i : i + 8]}) for i in range(0, len(refusal), 8)]
    for index, (call_id, name, args) in enumerate(turn.tool_calls):
        frames.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        text = _arguments(turn, args)
        for start in range(0, len(text), turn.argument_chunk):
            frames.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "function": {
                                    "arguments": text[start : start + turn.argument_chunk]
                                },
                            }
                        ]
                    }
                )
            )
    frames.append(chunk({}, finish))
    frames.append(sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    frames.append(sse("[DONE]"))
    return Reply(frames=frames, headers={"content-type": "text/event-stream"})


def render_anthropic(turn: Turn, stream: bool) -> Reply:
    stop = turn.stop_reason or ("tool_use" if turn.tool_calls else "end_turn")
    usage = {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens}
    if turn.cache_read_tokens or turn.cache_write_tokens:
        usage["cache_read_input_tokens"] = turn.cache_read_tokens
        usage["cache_creation_input_tokens"] = turn.cache_write_tokens
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": turn.cache_write_tokens - turn.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": turn.cache_write_1h_tokens,
        }
    blocks: list[dict[str, Any]] = list(turn.reasoning)
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    blocks += [
        {"type": "tool_use", "id": call_id, "name": name, "input": args}
        for call_id, name, args in turn.tool_calls
    ]
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "stop_sequence": None,
    }
    if not stream:
        body = {
            **message,
            "content": blocks,
            "stop_reason": stop,
            "usage": usage,
        }
        return Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    frames = [
        sse(
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {**usage, "output_tokens": 1},
                },
            },
            "message_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    index = 0
    for block in turn.reasoning:
        frames += _streamed_reasoning(block, index)
        index += 1
    if turn.text:
        frames.append(
            sse(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
        )
        frames += [
            sse(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                },
                "content_block_delta",
            )
            for piece in _chunks(turn)
        ]
        frames.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    for call_id, name, args in turn.tool_calls:
        frames.append(
            sse(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
                },
                "content_block_start",
            )
        )
        text = _arguments(turn, args)
        frames += [
            sse(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": text[i : i + turn.argument_chunk],
                    },
                },
                "content_block_delta",
            )
            for i in range(0, len(text), turn.argument_chunk)
        ]
        frames.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    frames.append(
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": turn.output_tokens},
            },
            "message_delta",
        )
    )
    frames.append(sse({"type": "message_stop"}, "message_stop"))
    return Reply(frames=frames, headers={"content-type": "text/event-stream"})


def anthropic_blocks_reply(blocks: list[dict[str, Any]], stream: bool) -> Reply:
    """A Messages API reply of `blocks` in their order (thinking between tool calls, say),
    whole or streamed: a text block's text in one delta, a tool call's input in one."""
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude"}
    usage = {"input_tokens": 10, "output_tokens": 5}
    if not stream:
        body = {**message, "content": blocks, "stop_reason": stop, "usage": usage}
        return Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    start = {**message, "content": [], "stop_reason": None, "usage": usage}
    frames = [sse({"type": "message_start", "message": start}, "message_start")]
    for index, block in enumerate(blocks):
        if block["type"] in ("thinking", "redacted_thinking"):
            frames += _streamed_reasoning(block, index)
            continue
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        frames += [
            anthropic_event("content_block_start", index=index, content_block=opening),
            anthropic_event("content_block_delta", index=index, delta=delta),
            anthropic_event("content_block_stop", index=index),
        ]
    end = {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 5}}
    frames += [sse(end, "message_delta"), sse({"type": "message_stop"}, "message_stop")]
    return Reply(frames=frames, headers={"content-type": "text/event-stream"})


def _streamed_reasoning(block: dict[str, Any], index: int) -> list[bytes]:
    """The stream events of one reasoning block, as the Messages API streams it."""

    def event(name: str, **data: Any) -> bytes:
        return sse({"type": name, "index": index, **data}, name)

    if block["type"] != "thinking":  # redacted_thinking arrives whole
        return [event("content_block_start", content_block=block), event("content_block_stop")]
    thinking = block["thinking"]
    frames = [
        event("content_block_start", content_block={"type": "thinking", "thinking": ""}),
    ]
    frames += [
        event("content_block_delta", delta={"type": "thinking_delta", "thinking": piece})
        for piece in (thinking[i : i + 8] for i in range(0, len(thinking), 8))
    ]
    signature = {"type": "signature_delta", "signature": block["signature"]}
    frames += [event("content_block_delta", delta=signature), event("content_block_stop")]
    return frames


def render(turn: Turn, request: RecordedRequest) -> Reply:
    if request.wire == "anthropic":
        return render_anthropic(turn, request.streamed)
    return render_openai(turn, request.streamed)


def _encode_chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


# ---------------------------------------------------------------------- server
class FakeLlmServer:
    """A scripted OpenAI / Anthropic API on 127.0.0.1, in a background thread.

    Use as a context manager; `url` is the server root (`url + "/v1"` for OpenAI clients).
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        """Connections accepted since the last `reset`."""
        self.open_connections = 0
        """Connections open now (the server closes its side once the client has closed)."""
        self._script: collections.deque[Script] = collections.deque()
        self.fallback: Script | None = None
        """Answers every request once the script is used up."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *entries: Script) -> None:
        self._script.extend(entries)

    def reset(self) -> None:
        self._script.clear()
        self.requests.clear()
        self.connections = 0
        self.fallback = None

    def __enter__(self) -> FakeLlmServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _next(self, request: RecordedRequest) -> Reply:
        refusal = _invalid_json_refusal(request)
        if refusal is not None:
            return refusal  # as the APIs do, before the request takes a scripted answer
        entry = self._script.popleft() if self._script else self.fallback
        if entry is None:
            return Reply(status=599, body=b'{"error": {"message": "no scripted reply"}}')
        if callable(entry) and not isinstance(entry, Turn | Reply):
            entry = entry(request)
        return render(entry, request) if isinstance(entry, Turn) else entry

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancellation (at shutdown) ends the handler normally: asyncio would log it otherwise.
        quiet = (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError)
        self.connections += 1
        self.open_connections += 1
        try:
            with contextlib.suppress(*quiet):
                while True:
                    request = await _read_request(reader)
                    if request is None:
                        break
                    self.requests.append(request)
                    reply = self._next(request)
                    if not await self._send(writer, reply):
                        break
            writer.close()
        finally:
            self.open_connections -= 1

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        """Writes the reply; False when the connection must close."""
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        for _ in range(reply.interim_replies):
            writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(reply.frame_interval)
        head = [f"HTTP/1.1 {reply.status} Scripted".encode()]
        headers = dict(reply.headers)
        if reply.frames is None:
            headers["content-length"] = str(len(reply.body))
        elif reply.close_delimited:
            headers["connection"] = "close"
        else:
            headers["transfer-encoding"] = "chunked"
        head += [f"{name}: {value}".encode() for name, value in headers.items()]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        if reply.cut_at is not None:
            if reply.frames is None:
                sent = reply.body
            elif reply.close_delimited:
                sent = b"".join(reply.frames)
            else:
                sent = b"".join(_encode_chunk(f) for f in reply.frames) + b"0\r\n\r\n"
            writer.write(sent[: reply.cut_at])
            await writer.drain()
            writer.transport.abort()
            return False
        if reply.frames is None:
            writer.write(reply.body)
            await writer.drain()
            return True
        frames = reply.frames
        if reply.close_delimited:
            writer.write(b"".join(frames))
            await writer.drain()
            return False  # the close ends the body
        if reply.frame_interval:
            for frame in frames:
                await asyncio.sleep(reply.frame_interval)
                writer.write(_encode_chunk(frame))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if reply.drop_after is not None:
            writer.write(b"".join(_encode_chunk(f) for f in frames[: reply.drop_after]))
            await writer.drain()
            writer.transport.abort()
            return False
        if reply.pause_after is not None:
            writer.write(b"".join(_encode_chunk(f) for f in frames[: reply.pause_after]))
            await writer.drain()
            await asyncio.sleep(reply.pause)
            frames = frames[reply.pause_after :]
        writer.write(_encoded(frames) + b"0\r\n\r\n")
        await writer.drain()
        return True


def _invalid_json_refusal(request: RecordedRequest) -> Reply | None:
    """The 400 the APIs answer a JSON body that is not UTF-8 text or holds the escape of a
    lone surrogate (which Python's json reads, and their parsers refuse); else None."""
    if request.method != "POST" or not request.body:
        return None
    try:
        json.dumps(json.loads(request.body.decode()), ensure_ascii=False).encode()
    except (UnicodeError, ValueError):
        message = "The request body is not valid JSON: no low surrogate in string"
        kind = "invalid_request_error"
        if request.wire == "anthropic":
            error = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            error = {"error": {"message": message, "type": kind, "code": None}}
        return Reply(status=400, body=json.dumps(error).encode())
    return None


_ENCODED_CACHE: dict[int, tuple[list[bytes], bytes]] = {}


def _encoded(frames: list[bytes]) -> bytes:
    """The chunked encoding of frames, cached so that replaying a long stream costs nothing."""
    cached = _ENCODED_CACHE.get(id(frames))
    if cached is not None and cached[0] is frames:
        return cached[1]
    encoded = b"".join(_encode_chunk(f) for f in frames)
    if len(frames) > 1000:
        _ENCODED_CACHE[id(frames)] = (frames, encoded)
    return encoded


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RecordedRequest(method, path, headers, body)
