"""HTTP plumbing shared by the HTTP providers: one pooled client, errors, retries, SSE.

Every provider talks to its API through an `HttpTransport`: it owns the pooled
`httpx.AsyncClient` (created on first use, closed by `aclose`), sends the auth headers, maps
transport failures and error statuses onto `ProviderError` in one place, retries through a
`RetryPolicy`, and reads server-sent events. The API key lives only in the request headers:
it is never part of a repr, a log line or an error message (error bodies are redacted). So
does a password in a base URL (`http://user:password@host/v1`): `move_user_info` takes it out
of the URL and into a basic-auth header, and messages show such a URL as `http://***@host/v1`.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import datetime
import email.utils
import functools
import json
import logging
import math
import os
import re
import ssl  # httpx imports it: no cost
import sys
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol, Self, TypeVar, cast, get_args
from urllib.parse import unquote, urlsplit

import httpx
import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from llm_agent_runtime._depth import MAX_ARGUMENT_DEPTH, TOO_DEEP, nested_deeper_than
from llm_agent_runtime._loops import close_now, close_with_loop
from llm_agent_runtime.errors import BudgetExceededError, ProviderError, is_retryable_status
from llm_agent_runtime.orchestration._checks import check_real
from llm_agent_runtime.orchestration.retry import RetryPolicy, note_attempts, policy_or_default
from llm_agent_runtime.providers.base import (
    SAFETY_STOP_REASONS,
    TRUNCATION_STOP_REASONS,
    ChatResponse,
    CutOffArgumentsError,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
    bill_caller,
    check_conversation,
    check_stop,  # openai and anthropic take it from here, with the rest of the wire helpers
    token_limit,
    usage_sum,
)

if TYPE_CHECKING:
    from llm_agent_runtime._core import RuntimeMetrics
    from llm_agent_runtime.orchestration.budget import CostBudget

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_ERROR_BODY",
    "MAX_EVENT_BYTES",
    "MAX_TOKEN_COUNT",
    "Driven",
    "HttpProvider",
    "HttpTransport",
    "PartialToolCall",
    "Redactor",
    "SseEvent",
    "StreamedText",
    "ToolCallIds",
    "check_api_key",
    "check_base_url",
    "check_conversation",
    "check_stop",
    "clean_json",
    "clean_text",
    "decode_arguments",
    "env_setting",
    "error_in_body",
    "error_message",
    "error_of_reply",
    "given_or_env",
    "iter_sse",
    "json_text",
    "move_user_info",
    "parse_json",
    "parse_retry_after",
    "parse_usage",
    "read_arguments",
    "redact_secret",
    "request_body",
    "should_retry",
    "transport_errors",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0
"""Seconds to wait for the next bytes of a response (long completions are slow to start)."""
DEFAULT_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP/TLS connection."""
DEFAULT_LIMITS_MAX_CONNECTIONS = 100
"""Most connections one provider's pool opens at once."""
_MAX_ERROR_MESSAGE = 500
"""Error bodies longer than this many characters are cut in messages."""
MAX_ERROR_BODY = 64 * 1024
"""Most bytes read of a body that is only quoted in an error (an error status's, or a reply
to a streamed request that is no stream): the message keeps `_MAX_ERROR_MESSAGE` characters
of it, and a proxy's error page may be huge. Reading stops once a byte past it arrives (to
tell a body cut there from one that ends there); the rest is never read."""
_TRUNCATED_QUOTE = 200
"""Characters quoted of an error body cut at `MAX_ERROR_BODY` that does not parse (JSON cut
short, or a huge page): its start, with a note that it was cut."""
MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Most bytes of a successful non-streamed reply's body (a chat reply of a whole context
window of text is a few MiB): a larger one fails, not retryable, rather than filling memory.
A streamed reply fails so once its content passes as many characters (`StreamProgress`)."""
MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Most bytes an event stream's line, or the data of one of its events, may hold: a stream
that never ends one fails (retryable) rather than filling memory."""
_REDACTED = "[redacted]"
MIN_REDACTED_SECRET = 8
"""Shortest API key that is redacted from messages. A shorter key is no secret worth
guarding (local servers take "x" or "ollama"), and removing every occurrence of one or two
characters would mangle the messages it is removed from ("chunked" with the key "k")."""
_END_GRACE = 0.1
"""Seconds a stream's body may take to end after its last event (then it is cut)."""
_KEY_CHARACTERS = re.compile(r"[!-~]*")
"""What an API key is made of: printable ASCII, no spaces (what an HTTP header can carry)."""
_LF = ord("\n")
_CR = ord("\r")
_BOM = b"\xef\xbb\xbf"
"""UTF-8 byte order mark: one may open an event stream, and is not part of its first line."""
MAX_TOKEN_COUNT = 2**63
"""Token counts from a server must be below this (the metrics take counts below 2**64, and
a reply's counts are added up): a count past it, or a negative one, is no count."""
_SURROGATE = re.compile("[\ud800-\udfff]")
"""Half of a UTF-16 surrogate pair, which no UTF-8 text can hold."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape of half a surrogate pair (`\\ud83d`): decoded, it may be one alone."""
_SCHEME = re.compile(r"^[^/?#@]*//")
"""A URL's `scheme://`, which messages show before its hidden user info."""
_STOPPING_POINTS = (
    ".connect_tcp.started",
    ".connect_unix_socket.started",
    ".send_request_headers.started",
)
"""httpcore's trace events where a request may fail without leaving its pool a slot taken:
as a connection opens (it is marked failed), and as the request starts on it (its
connection is closed)."""

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked to wait, from `retry-after-ms` or `Retry-After`.

    `Retry-After` may be a number of seconds or an HTTP date, in any of the three forms
    RFC 9110 has clients accept (IMF-fixdate, RFC 850 and asctime); a date without a zone
    (the asctime form) is GMT, as every HTTP date is. An unreadable `retry-after-ms` leaves
    the choice to `Retry-After`.

    Args:
        headers: Response headers (case-insensitive lookups, as `httpx.Headers`).
        now: Current Unix time, for HTTP dates (defaults to `time.time()`).

    Returns:
        The delay in seconds (never negative), or None when the server gave none or gave
        something unreadable (NaN and infinity included, and dates out of range).
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        with contextlib.suppress(ValueError):
            delay = _delay(millis, 1000.0)
            if delay is not None:  # NaN or infinity: unreadable, `Retry-After` decides
                return delay
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return _delay(value)  # a number, or NaN / infinity (None, not "at once")
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # the asctime form has no zone: an HTTP date is always GMT
            when = when.replace(tzinfo=datetime.UTC)
        # A zone or year out of range (`+999999999999999`) overflows: as unreadable as the rest.
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, stamp - (time.time() if now is None else now))


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an error status is worth another attempt, as the server says or its status does.

    The server's `x-should-retry` decides, else the status (`is_retryable_status`). Both
    APIs send `x-should-retry: true` or `false` with some errors, and their SDKs obey it
    before the status: a 500 the server knows another attempt cannot fix is not sent again,
    and a status not retried by itself is, when the server says so. Any other value of the
    header leaves the choice to the status, and so does any status outside 400-599: a 1xx
    or 3xx, or one past 599 (a broken proxy's), is answered the same way again.

    Args:
        status: The response's HTTP status.
        headers: Its headers (case-insensitive lookups, as `httpx.Headers`).
    """
    verdict = headers.get("x-should-retry") if 400 <= status <= 599 else None
    if verdict is not None:
        verdict = verdict.strip().lower()
        if verdict == "true":
            return True
        if verdict == "false":
            return False
    return is_retryable_status(status)


def _delay(text: str, per_second: float = 1.0) -> float | None:
    """A number of seconds (`text` in units of 1/`per_second` s), never negative.

    Returns:
        None for NaN and infinity: `max(0.0, nan)` would be 0, a retry at once.

    Raises:
        ValueError: `text` is no number.
    """
    delay = float(text) / per_second
    return max(0.0, delay) if math.isfinite(delay) else None


class SseEvent(NamedTuple):
    """One server-sent event."""

    event: str | None
    """The `event:` field, or None when the event had none."""
    data: bytes
    """The `data:` lines joined with newlines (JSON text for both APIs)."""


class StreamProgress:
    """What a stream's parser has received of its reply, for `HttpTransport.post_sse`.

    The parser counts each piece of content it reads (text, a tool call's name or arguments,
    reasoning, whether kept or not) by its length, and each event that moves the reply on
    without text (a block started, a finish reason, the usage) by its size. An event that adds
    nothing (a ping, an empty delta, a copy of an event the reply has once) keeps a
    connection open but no stream going, and a reply whose count passes `MAX_REPLY_BYTES` is
    refused rather than kept growing.
    """

    __slots__ = ("_steps", "received")

    def __init__(self) -> None:
        self.received = 0
        self._steps: set[bytes] = set()  # their bytes are counted in `received`: bounded

    def add(self, piece: str | None) -> None:
        """Counts a piece of content (nothing for None or an empty one)."""
        if piece:
            self.received += len(piece)

    def step(self, data: bytes) -> None:
        """Counts an event that moves the reply on without text, by its data's size."""
        self.received += max(len(data), 1)

    def step_once(self, data: bytes) -> None:
        """`step`, for an event a reply has once: a copy of one counted adds nothing.

        Such are its usage, its stop reason and a block's end.
        """
        if data not in self._steps:
            self._steps.add(data)
            self.step(data)


async def iter_sse(
    chunks: AsyncIterator[bytes], cut: Callable[[bytes], None] | None = None
) -> AsyncIterator[SseEvent]:
    """Reads server-sent events from a byte stream.

    Follows the HTML event-stream rules the two APIs use: `data:` lines accumulate, `event:`
    names the event, a blank line dispatches it, `:` starts a comment, other fields (`id`,
    `retry`) are ignored. Lines end in LF, CRLF or a bare CR, as the rules allow, however the
    chunks cut them: a CR that ends a chunk and an LF that starts the next are one line end
    (CRLF). An event whose data is empty (a bare `data:` line, which some servers send to
    keep a connection open) is not dispatched: it carries nothing either API could read. An
    unended last line when the stream ends is dropped: a body that ends by closing the
    connection may have been cut inside it, and the caller sees a stream that ended early.
    An event whose lines all ended still goes out without its closing blank line (some
    servers omit it). One byte order mark opening the stream is ignored, as the rules say,
    even when it arrives cut across chunks.

    Reading is linear in the body's size, however finely it is cut: a line that arrives in
    many chunks is kept in pieces and joined once, when it ends.

    Args:
        chunks: The response body, in chunks of any size.
        cut: Called with that unended last line (non-empty) when the stream ends inside
            it: a caller that takes a stream without its terminal event as whole (some
            servers end it so) learns that this one was cut.

    Yields:
        Events with their data, in order.

    Raises:
        ProviderError: A line grew past `MAX_EVENT_BYTES` without a line end, or an event's
            data past `MAX_EVENT_BYTES` without the blank line that ends it (retryable: the
            server, or a proxy, lost its way in this stream). The events that ended before
            that line are yielded first, even those in the chunk that brings it.
    """
    pieces: list[bytes] = []  # the line still open (it has no line end yet), in pieces
    open_bytes = 0  # the length of that line so far
    data_bytes = 0  # the length of the event's data so far
    after_cr = False  # the last chunk ended in a CR: an LF starting the next one belongs to it
    event: str | None = None
    data: list[bytes] = []
    head: bytes | None = b""  # the stream's first bytes, until they show whether a BOM opens it
    async for chunk in chunks:
        if head is not None:
            head += chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                continue  # maybe a BOM cut across chunks: wait for the rest of it
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
            head = None
        if not chunk:
            continue
        if after_cr and chunk[0] == _LF:
            chunk = chunk[1:]  # the LF of a CRLF cut between two chunks: no line of its own
            if not chunk:
                after_cr = False
                continue
        if b"\n" not in chunk and b"\r" not in chunk:
            pieces.append(chunk)  # no line end here: nothing to split yet
            open_bytes += len(chunk)
            if open_bytes > MAX_EVENT_BYTES:
                raise _too_long("a line", "without a line end")
            after_cr = False
            continue
        if pieces:
            pieces.append(chunk)
            chunk = b"".join(pieces)
            pieces = []
        lines = chunk.splitlines()  # splits at LF, CRLF and CR
        last = chunk[-1]
        after_cr = last == _CR
        open_bytes = 0
        if last != _LF and not after_cr:
            pieces.append(lines.pop())  # the last line has no end yet
            open_bytes = len(pieces[0])
        for line in lines:
            if not line:
                payload = b"\n".join(data)
                if payload:  # no data, or a bare `data:` line (a keep-alive): nothing to read
                    yield SseEvent(event, payload)
                data = []
                data_bytes = 0
                event = None
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
                # The joined data: each line, and a newline between two.
                data_bytes += len(data[-1]) + (len(data) > 1)
                if data_bytes > MAX_EVENT_BYTES:
                    raise _too_long("the data of an event", "without the blank line that ends it")
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", "replace")
        # Checked once the complete lines before it are read: the events that arrived whole
        # go out before the stream fails.
        if open_bytes > MAX_EVENT_BYTES:
            raise _too_long("a line", "without a line end")
    # The stream ended. A last line with no line end (`pieces`) may have been cut inside: it
    # is dropped. An event whose lines all ended still goes out without its closing blank
    # line, which some servers omit.
    payload = b"\n".join(data)
    if payload:
        yield SseEvent(event, payload)
    if pieces and cut is not None:
        line = b"".join(pieces)
        if line.strip():
            cut(line)


def _close_delimited(response: httpx.Response) -> bool:
    """Whether `response`'s body ends where its HTTP/1.x connection closes.

    With neither a length nor chunks, a body cut by a lost connection shows no protocol error.
    """
    headers = response.headers
    return (
        response.http_version.startswith("HTTP/1")
        and "content-length" not in headers
        and "chunked" not in headers.get("transfer-encoding", "").lower()
    )


def cut_short(response: httpx.Response, body: bytes) -> bool:
    """Whether the successful reply `body` of `response` is JSON its connection cut short.

    Only a body without its own end shows it so: one that ends where the connection closed
    (`_close_delimited`), or a compressed one (gzip says where its stream ends, but httpx
    does not check that it did: a proxy's broken gzip decodes to a part of the body).
    """
    encoding = response.headers.get("content-encoding", "").lower()
    compressed = any(name in encoding for name in _COMPRESSIONS)
    return (compressed or _close_delimited(response)) and _cut_json(body)


_COMPRESSIONS = ("gzip", "deflate", "br", "zstd")
"""The content codings httpx decodes (`identity` leaves the body as it is)."""


def cut_short_error(name: str) -> ProviderError:
    """The retryable error for a reply of `name` (the API) that is `cut_short`."""
    return ProviderError(
        f"{name} reply cut short: its JSON body ended early (the connection closed, or its "
        "compressed stream broke off)",
        retryable=True,
    )


def _cut_json(body: bytes) -> bool:
    """Whether `body` is empty, or a JSON object or array that does not parse: cut short.

    Parsed as `parse_json` parses it (an escape of half a surrogate pair is JSON). Another
    body (a proxy's page) is left to the parser that reads the reply, which says what it
    holds.
    """
    start = body.lstrip()[:1]
    if not start:
        return True
    if start != b"{" and start != b"[":
        return False
    try:
        pydantic_core.from_json(body)
    except ValueError:
        try:
            json.loads(body)
        except ValueError:
            return True
        except RecursionError:  # whole, nested too deeply: the reply's parser says so
            return False
    return False


def _too_long(what: str, without: str) -> ProviderError:
    return ProviderError(
        f"malformed event stream: {what} grew past {MAX_EVENT_BYTES} bytes {without}",
        retryable=True,
    )


def error_message(
    body: bytes, redact: Callable[[str], str] | None = None, *, truncated: bool = False
) -> str:
    """The human part of an error body: `error.message` of either API's JSON, else the text.

    The body may open with a byte order mark. The text is cleaned by `clean_text` (JSON can
    escape half a surrogate pair, which no log line could write), and cut to
    `_MAX_ERROR_MESSAGE` characters. A body that was cut (`truncated`) and does not parse,
    JSON cut short or a huge page, is quoted by its first `_TRUNCATED_QUOTE` characters,
    with a note that it was cut: the cut JSON's text says little, and the note says why no
    message was read.

    Args:
        body: The error response's body, or an error event's data.
        redact: Applied to the whole message before it is cut to length, so no part of a
            secret survives the cut.
        truncated: Whether the body went on after `body`: unread (only the first
            `MAX_ERROR_BODY` bytes of an error body are read), or cut off by the connection.
            Only the reader knows: a body of any length may be whole.
    """
    text = body.decode("utf-8-sig", "replace").strip()
    parsed = True
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):  # nested too deeply for the parser: text as well
        payload = None
        parsed = False
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type")
            message = error["message"]
            text = f"{kind}: {message}" if isinstance(kind, str) else message
        elif isinstance(error, str):
            text = error
    text = clean_text(text)
    if redact is not None:
        text = redact(text)
    if not parsed and truncated:
        return (
            f"{text[:_TRUNCATED_QUOTE]}... (only the first {len(body)} bytes of the error body "
            "were read, and they could not be parsed)"
        )
    return text[:_MAX_ERROR_MESSAGE] or "no error message"


def clean_text(text: str) -> str:
    r"""`text` with its surrogates made whole: what UTF-8 can write and a log line can show.

    JSON escapes text in UTF-16 (`\ud83d\ude00` for one emoji), and an escape of half a
    pair reads as a lone surrogate: a server that cuts text between the halves of a pair
    leaves one in each piece, and no UTF-8 stream can write one. Two halves side by side
    become the character they make; a half alone becomes U+FFFD, the replacement character.
    Text without surrogates (nearly all) is returned as it is.
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class ToolCallIds:
    """The ids given out for a reply's tool calls: cleaned, none alike unless received alike.

    A tool's result is matched to its call by id. Ids are cleaned by `clean_text`: two that
    differ only in a lone half of a surrogate pair clean to the same text (each half becomes
    U+FFFD). A call that arrives without an id (some compatible servers) is named
    `call_<position>`, which another call's own id may already be. An id taken by another is
    suffixed with its call's position (`_1`), as often as it takes; one id received twice is
    given out alike. Ids received are given out first, as they come (a stream gives each out
    in a delta at once), and the named ones last, once every received id is known
    (`fallback`): the same reply, streamed or not, always gives out the same ids.
    """

    __slots__ = ("_received",)

    def __init__(self) -> None:
        # Each id given out -> the id as received (None: the call arrived without one).
        self._received: dict[str, str | None] = {}

    def give(self, received: str, position: int) -> str:
        """The id to give out for the call at `position` whose id arrived as `received`."""
        given = clean_text(received)
        while self._received.setdefault(given, received) != received:
            given += f"_{position}"
        return given

    def fallback(self, position: int) -> str:
        """The id to give out for the call at `position` that arrived without one.

        Asked for once every received id of the reply was given out, so that none of them
        can turn out to be taken.
        """
        given = f"call_{position}"
        while given in self._received:
            given += f"_{position}"
        self._received[given] = None
        return given

    def give_all(self, received: Sequence[str | None]) -> list[str]:
        """The ids to give out for a whole reply's calls, whose ids arrived as `received`.

        Args:
            received: Each call's id as received, in order (None or "": it arrived without
                one). Those received are given out first, then those named by position.
        """
        given = {p: self.give(call_id, p) for p, call_id in enumerate(received) if call_id}
        return [given[p] if p in given else self.fallback(p) for p in range(len(received))]


def clean_json(value: T) -> T:
    """Decoded JSON with every str in it, dict keys included, cleaned by `clean_text`.

    Containers are cleaned in place (they are the caller's own, freshly decoded), however
    deeply nested: the walk keeps no stack of calls. Two keys that clean alike (two lone
    halves) keep the last value, as JSON's duplicate keys do.
    """
    if isinstance(value, str):
        return cast("T", clean_text(value))
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            entries = list(item.items())
            item.clear()
            for key, inner in entries:
                item[clean_text(key) if isinstance(key, str) else key] = (
                    clean_text(inner) if isinstance(inner, str) else inner
                )
                if isinstance(inner, (dict, list)):
                    todo.append(inner)
        elif isinstance(item, list):
            for position, inner in enumerate(item):
                if isinstance(inner, str):
                    item[position] = clean_text(inner)
                elif isinstance(inner, (dict, list)):
                    todo.append(inner)
    return value


class StreamedText:
    """The text of a streamed reply, cleaned (`clean_text`) piece by piece as it arrives.

    A piece that ends in the first half of a surrogate pair keeps that half back and puts it
    before the next piece, which a server that cuts text by UTF-16 units starts with the
    other half: the pieces given out, and the whole text, then hold the character whole.
    """

    __slots__ = ("_held", "_pieces", "length")

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._held = ""  # the first half of a pair, waiting for its other half
        self.length = 0
        """The length of `text`, known without joining the pieces."""

    def add(self, piece: str) -> str:
        """Adds a piece of the text; returns what of it to give out now (maybe nothing)."""
        if self._held:
            piece = self._held + piece
            self._held = ""
        if piece and "\ud800" <= piece[-1] <= "\udbff":
            piece, self._held = piece[:-1], piece[-1]
        return self._give(piece)

    def finish(self) -> str:
        """What was kept back, to give out last: a half pair alone, so U+FFFD (or nothing)."""
        held, self._held = self._held, ""
        return self._give(held)

    @property
    def text(self) -> str:
        """The text given out so far."""
        return "".join(self._pieces)

    @property
    def pieces(self) -> list[str]:
        """The pieces given out so far (none empty), in order."""
        return self._pieces

    def _give(self, piece: str) -> str:
        piece = clean_text(piece)
        if piece:
            self._pieces.append(piece)
            self.length += len(piece)
        return piece


def check_api_key(name: str, key: str | None) -> None:
    """Refuses an API key that no HTTP header can carry, without ever quoting it.

    Raises:
        ProviderError: The key has whitespace (a trailing newline read from a file, say),
            control characters or non-ASCII characters.
    """
    if key is None or _KEY_CHARACTERS.fullmatch(key):
        return
    position = next(i for i, c in enumerate(key) if not _KEY_CHARACTERS.fullmatch(c))
    char = key[position]
    what = (
        "whitespace"
        if char.isspace()
        else "a control character"
        if char.isascii()
        else "a non-ASCII character"
    )
    raise ProviderError(
        f"the {name} API key is not valid: it has {what} at position {position} of "
        f"{len(key)} (an API key is printable ASCII without spaces; strip the value you read)"
    )


def env_setting(name: str) -> str | None:
    """An environment variable's value; None when it is unset or blank (whitespace only).

    An `OPENAI_BASE_URL=` line in an env file sets nothing. A value is not stripped here: an
    API key with a stray newline is refused by `check_api_key` rather than repaired in
    silence, and `check_base_url` strips a base URL.
    """
    value = os.environ.get(name)
    return value if value and not value.isspace() else None


class SecretText(Protocol):
    """A secret holding text, such as pydantic's `SecretStr`: taken as an API key."""

    def get_secret_value(self) -> str:
        """The secret's text."""
        ...


class UrlObject(Protocol):
    """A URL object, such as `httpx.URL` or pydantic's `HttpUrl`: taken as its text."""

    @property
    def scheme(self) -> str:
        """The URL's scheme."""
        ...

    @property
    def host(self) -> str | None:
        """The URL's host."""
        ...


def text_setting(setting: str, value: object, *, url: bool = False) -> str | None:
    """`value` of the text `setting` of a provider or embedder, as a str (None stays None).

    A pydantic `SecretStr` gives its secret; with `url`, a URL object (`httpx.URL`,
    pydantic's `HttpUrl`: anything with a scheme and a host) gives its text.

    Raises:
        TypeError: `value` is neither (bytes, a number, a bool...), which would fail with a
            bare error inside, or be sent as it is.
    """
    if value is None or isinstance(value, str):
        return value
    reveal = getattr(value, "get_secret_value", None)
    if callable(reveal):
        value = reveal()
        if isinstance(value, str):
            return value
    elif url and hasattr(value, "scheme") and hasattr(value, "host"):
        return str(value)
    kinds = "a str or a URL object" if url else "a str"
    raise TypeError(f"{setting} must be {kinds}, got {type(value).__name__}")


def given_or_env(value: str | None, name: str) -> str | None:
    """A setting given as an argument, else the environment variable `name`'s (`env_setting`).

    A value that is empty or whitespace only counts as not given, as a blank variable does
    (an `api_key=os.environ.get(...)` of a blank line): the variable's value, or None.
    """
    return value if value and not value.isspace() else env_setting(name)


def model_setting(value: object, name: str, default: str) -> str:
    """A provider's default model: `value`, else environment variable `name`'s, else `default`.

    Stripped, as no model's name ends in a blank: an env file's `OPENAI_MODEL=gpt-4o-mini `
    was sent as it was, and the server knew no such model.

    Raises:
        TypeError: `value` is not text (see `text_setting`).
    """
    given = (text_setting("model", value) or "").strip()
    return given or (env_setting(name) or "").strip() or default


def check_base_url(name: str, url: str) -> str:
    """The API root as requests use it: no surrounding whitespace, no trailing slash.

    User info (`http://user:password@host/v1`) is kept: `move_user_info` takes it out. An
    error message shows the URL with its user info as `***`.

    Raises:
        ProviderError: The URL is not an `http://` or `https://` URL with a valid host name
            and port (a base URL written without its scheme, with `api..example.com` or
            with port 99999, say), which no request could reach; or it has a query or a
            fragment (`?api-version=...`, `#...`): request paths are appended to the base
            URL, so they would land inside the query and every request would go to the
            wrong endpoint. Or it holds a lone surrogate (how Python reads a byte of an
            environment variable that is not UTF-8), which no request line can carry.
    """
    url = url.strip()
    # Each error below is raised after its handler, not in it: the error handled holds the
    # URL, password included, and would be kept as the raised error's context.
    bad_at = None
    try:
        url.encode()
    except UnicodeEncodeError as error:  # else every request failed with a bare traceback
        bad_at = error.start
    if bad_at is not None:
        raise ProviderError(
            f"the {name} base URL holds a character that is not text (a lone surrogate at "
            f"index {bad_at}, as a byte that is not UTF-8 reads from the environment): "
            "set it again"
        )
    try:
        parts = urlsplit(url)
        # Reading the port checks it: one that is not a number in 0-65535 raises ValueError
        # here, where the first request would fail with a raw OverflowError from the socket.
        parts.port  # noqa: B018
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed URL, such as an unclosed IPv6 bracket or a bad port
        usable = False
    if not usable:
        raise ProviderError(
            f"the {name} base URL {_hide_user_info(url)[:200]!r} is not an http:// or https:// "
            "URL with a host "
            "and a valid port (write it in full, e.g. 'http://localhost:8000/v1')"
        )
    bad_host = None
    try:
        # An empty or too long DNS label (`api..example.com`), or a malformed punycode one
        # (`xn--.example.com`): else the first request failed with a bare UnicodeError.
        str(parts.hostname).encode("idna")
        httpx.URL(url).host  # noqa: B018
    except (UnicodeError, httpx.InvalidURL) as error:
        bad_host = str(error)
    if bad_host is not None:
        raise ProviderError(
            f"the {name} base URL's host {str(parts.hostname)[:100]!r} is not a valid host "
            f"name ({bad_host})"
        )
    if "?" in url or "#" in url:  # even an empty one: the path would be appended after it
        # The query may hold a key: not quoted.
        root = _hide_user_info(url.split("?", 1)[0].split("#", 1)[0])
        raise ProviderError(
            f"the {name} base URL {root[:200]!r} is followed by a query or a fragment ('?...' "
            "or '#...'): request paths appended to it would land there (pass query parameters "
            "through an httpx client of your own, made with params={...})"
        )
    return url.rstrip("/")


# What httpx reads from the environment as it makes a client (its `trust_env`).
_CLIENT_ENVIRONMENT = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")
_URL_USER_INFO = re.compile(r"(//)[^/@\s]*@")
ClientT = TypeVar("ClientT")


def client_from_environment(who: str, make: Callable[[], ClientT]) -> ClientT:
    """The httpx client `make` builds, or a `ProviderError` naming the settings it refused.

    httpx reads the proxy and TLS settings of the environment (`HTTPS_PROXY`, `ALL_PROXY`,
    `SSL_CERT_FILE`...) as it makes a client, and fails on one it cannot use (a SOCKS proxy
    without `httpx[socks]`, a proxy scheme it does not know, a proxy URL it cannot read, a
    missing certificate file) with an ImportError, a ValueError, `httpx.InvalidURL` or an
    OSError: the call fails with the reason, and the names of the settings that are set
    (not their values, which may hold a password).

    Raises:
        ProviderError: httpx refused the environment's settings (not retryable).
    """
    try:
        return make()
    except (ImportError, ValueError, OSError, httpx.InvalidURL) as error:
        # Named in any case, as httpx reads them (through `urllib.request.getproxies`).
        set_here = {name.upper() for name, value in os.environ.items() if value}
        named = [name for name in _CLIENT_ENVIRONMENT if name in set_here]
        settings = ", ".join(named) if named else "none of HTTP(S)_PROXY, ALL_PROXY, SSL_CERT_*"
        reason = _URL_USER_INFO.sub(r"\1[redacted]@", str(error)) or type(error).__name__
        # httpx may quote a piece of a URL it could not read, which can be a piece of a
        # password (`Invalid port: 'Zk3q9'` for `user:Zk3q9/Xb@host`): each piece is hidden.
        for piece in sorted(_user_info_pieces(), key=len, reverse=True):
            reason = reason.replace(piece, "[redacted]")
        raise ProviderError(
            f"{who} cannot make its HTTP client from this environment's proxy and TLS "
            f"settings (set: {settings}): {reason}"
        ) from None


def _user_info_pieces() -> set[str]:
    """The pieces (as URL delimiters split them) of the user info the proxy settings hold.

    Every `*_proxy` variable, in any case (the one httpx takes may be any of them). Pieces
    of fewer than 3 characters are left: hiding them would garble the message, and they give
    little of a password away.
    """
    pieces: set[str] = set()
    for name, value in os.environ.items():
        if not name.lower().endswith("_proxy"):
            continue
        # httpx reads a value without a scheme (`user:pw@host:3128`) as http://...
        scheme, found, rest = value.partition("://")
        user_info = (rest if found else scheme).rpartition("@")[0]
        for piece in re.split(r"[:/?#@\[\]]", user_info):
            pieces.update(p for p in (piece, unquote(piece)) if len(p) >= 3)
    return pieces


def move_user_info(name: str, url: str, headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Takes the user info out of a base URL, to send it as HTTP basic auth.

    `http://alice:pw@host/v1` becomes `http://host/v1` (what requests go to, and what reprs,
    log lines and error messages show) and an `Authorization: Basic ...` header for `alice`
    and `pw` (percent-escapes decoded, as httpx decodes them; no `:password` is an empty
    password). A URL without user info is returned as it is.

    Args:
        name: Names the service in the error, e.g. "OpenAI".
        url: A base URL `check_base_url` has accepted.
        headers: The headers every request sends.

    Returns:
        The URL without user info, and a copy of `headers` with the basic-auth header added
        when the URL had user info.

    Raises:
        ProviderError: The URL has user info and `headers` already send an `Authorization`
            header (an API key sent as `Bearer`): one header cannot carry both, and neither
            is dropped in silence.
    """
    headers = dict(headers)
    scheme, _, rest = url.partition("//")
    host, slash, path = rest.partition("/")
    user_info, at, host = host.rpartition("@")
    if not at:
        return url, headers
    if any(key.lower() == "authorization" for key in headers):
        raise ProviderError(
            f"the {name} base URL {_hide_user_info(url)[:200]!r} holds a user name and "
            "password, and an API key is set too (api_key=, or its environment variable): "
            "both would go in the one Authorization header; drop one of them"
        )
    user, _, password = user_info.partition(":")
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    headers["authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return f"{scheme}//{host}{slash}{path}", headers


def _refuse_credential_clash(
    name: str, headers: Mapping[str, str], client_headers: Mapping[str, str]
) -> None:
    """Refuses a credential header that both the provider and a caller's client would send.

    Each request's own header would replace the client's in silence: a gateway's token set
    on the client gave way to an `OPENAI_API_KEY` left in the shell, which went to the
    gateway instead.

    Raises:
        ProviderError: Naming the header (never its value).
    """
    ours = {key.lower() for key in headers}
    for key in client_headers:
        if key.lower() in ours and key.lower() in _CREDENTIAL_HEADERS:
            raise ProviderError(
                f"the http_client given to the {name} provider sends its own {key} header, "
                "and the provider would send one too (from api_key=, its environment "
                "variable, or a user name and password in the base URL), replacing it: "
                "drop one of them"
            )


_CREDENTIAL_HEADERS = frozenset(("authorization", "proxy-authorization", "x-api-key", "api-key"))
"""Headers that carry a credential, as clients and gateways send them."""


def credential_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials `headers` carry, for a `Redactor` (a server may echo them in an error).

    An `Authorization` (or `Proxy-Authorization`) value without its scheme, and for basic
    auth the password in it too; an `x-api-key` or `api-key` value. The headers are ours
    (`move_user_info` may add basic auth) or a caller's client's, which httpx sends too.
    """
    secrets: list[str] = []
    for key, value in headers.items():
        name = key.lower()
        if name not in _CREDENTIAL_HEADERS:
            continue
        scheme, _, credentials = value.partition(" ")
        if not name.endswith("authorization") or not credentials:
            secrets.append(value)
            continue
        secrets.append(credentials.strip())
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(credentials, validate=True).decode(
                    "utf-8", "surrogateescape"
                )
            except ValueError:  # not base64: the credentials are redacted as they are
                continue
            secrets.append(pair.partition(":")[2])
    return tuple(secrets)


def _hide_user_info(url: str) -> str:
    """`url` as a message shows it: `http://***@host/v1` for `http://user:password@host/v1`.

    Everything up to the last `@` goes: a password may hold a `/`, `?` or `#` not
    percent-escaped (the URL is then malformed, and quoted in the message saying so), and
    an `@` in the path hides a little more than it need, never less.
    """
    at = url.rfind("@")
    if at < 0:
        return url
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme is not None else 0
    return url[:start] + "***" + url[at:] if at >= start else url


def parse_json(model: type[ModelT], data: bytes, what: str) -> ModelT:
    r"""Validates a JSON body or event as a wire model.

    JSON is read as Python's `json` (and the official SDKs) read it: a byte order mark may
    open it, and a string may hold an escape of half a surrogate pair (`"\ud83d"`, a server
    that cut an emoji in two). pydantic's fast parser refuses such an escape: JSON it
    refuses is parsed again by `json`, and validated from there.

    Raises:
        ProviderError: The JSON is malformed or does not fit the model. The message names the
            first problem but never the input (which could echo a secret), and the pydantic
            error is not chained.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problem = _first_problem(exc, "body")
        errors = exc.errors(include_url=False, include_input=False)
        invalid = [error["type"] for error in errors] == ["json_invalid"]
    if invalid:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            pass  # malformed indeed: the fast parser said how
        else:
            try:
                return model.model_validate(value)
            except ValidationError as exc:
                problem = _first_problem(exc, "body")
    raise ProviderError(f"malformed {what}: {problem}")


def json_text(value: Any, what: str = "the request", *, ensure_ascii: bool = True) -> str:
    r"""`value` as JSON text, which has no NaN or infinity: such a number is refused.

    Python's `json` writes them as the bare words `NaN` and `Infinity`, which no JSON parser
    takes (a server would refuse the whole request, or read it wrong).

    Args:
        value: What to write: a request body, or a value sent as JSON text inside one (a
            tool call's arguments).
        what: Names `value` in the error, e.g. "the request".
        ensure_ascii: Write non-ASCII characters as `\u` escapes (as stored records are);
            False writes them as they are.

    Raises:
        ValueError: `value` holds a NaN or infinite float (the message says where, e.g.
            `max_tokens` or `messages[0].content`), or something else JSON cannot write.
    """
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=ensure_ascii)
    except ValueError:
        try:
            where = _non_finite(value, "")
        except RecursionError:  # a value that holds itself: JSON's own error says so
            where = None
        if where is None:
            raise
    path, number = where
    raise ValueError(
        f"{what} holds {number!r} at {path or 'its top'}: JSON has no NaN or infinity "
        "(pass a finite number)"
    ) from None


def request_body(body: Mapping[str, Any]) -> bytes:
    r"""A JSON request body as sent: `json_text`, in UTF-8, any lone surrogate as U+FFFD.

    Characters go as they are, not as `\u` escapes. A lone surrogate (half of a UTF-16
    pair: what `os.listdir` or `surrogateescape` make of a byte that is not UTF-8, in a
    prompt or a tool's result) has no UTF-8 form, and the APIs refuse its escape as not
    valid JSON ("no low surrogate in string"), so every later call of the session would
    fail alike: it is sent as U+FFFD, the replacement character, as `clean_text` reads it.

    Raises:
        ValueError: A value in `body` is NaN or infinite (the message names the field).
    """
    text = json_text(body, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return clean_text(text).encode()


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """Where the first NaN or infinite float in `value` is (its path, and the number)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Mapping):
        items: Iterator[tuple[str, Any]] = (
            (f"{path}.{key}" if path else str(key), item) for key, item in value.items()
        )
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _non_finite(item, where)
        if found is not None:
            return found
    return None


def _first_problem(exc: ValidationError, whole: str) -> str:
    """The first error pydantic found, as "where: what", never showing the input."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid"
    where = ".".join(str(part) for part in errors[0]["loc"])
    return f"{where or whole}: {errors[0]['msg']}"


def parse_usage(model: type[ModelT], raw: object, what: str) -> ModelT:
    """Validates a reply's token usage leniently: usage is bookkeeping, not the answer.

    Counts that are null or absent are the model's defaults (0). A usage object that does not
    fit the model at all counts as no tokens, with a warning, rather than failing a reply that
    has arrived whole. So does a count that is negative or not below `MAX_TOKEN_COUNT`
    (2**63): it is 0, the others are kept, and one warning names the counts dropped (a budget
    or the metrics would refuse it, and fail the reply).

    Args:
        model: The wire model of the usage object (every field has a default; its integer
            fields are the counts).
        raw: The `usage` value as decoded from JSON (None when absent).
        what: Names the reply in the warning, e.g. "OpenAI response".
    """
    if raw is None:
        return model()
    try:
        usage = model.model_validate(raw)
    except ValidationError as exc:
        problem = _first_problem(exc, "usage")
        logger.warning("unreadable token usage in %s (%s): counted as 0 tokens", what, problem)
        return model()
    dropped = [
        name
        for name, value in usage
        if type(value) is int and _is_count_field(model, name) and not 0 <= value < MAX_TOKEN_COUNT
    ]
    if dropped:
        for name in dropped:
            setattr(usage, name, 0)
        logger.warning(
            "unreadable token usage in %s (%s: not a count from 0 to 2**63 - 1): counted as 0 "
            "tokens",
            what,
            ", ".join(dropped),
        )
    return usage


def _is_count_field(model: type[BaseModel], name: str) -> bool:
    """Whether a field of a usage model is a token count (`int`, or `int | None`)."""
    annotation = model.model_fields[name].annotation
    return annotation is int or int in get_args(annotation)


def error_in_body(body: bytes, model: type[ModelT], *, known: bool = False) -> ModelT | None:
    """The error object of a JSON body or event that reports an error with a success status.

    Both APIs put an error in an `error` member (OpenAI's `{"error": {...}}`, Anthropic's
    `{"type": "error", "error": {...}}`); some compatible servers make it a bare string,
    read here as its `message`. vLLM's older form is the error itself, marked as one:
    `{"object": "error", "message": ..., "type": ..., "code": 400}`.

    Args:
        body: A response body, or the data of a stream event.
        model: The wire model of the error object.
        known: The body is known to report an error (an SSE event named `error`): a JSON
            object without an `error` member is then read as the error itself.

    Returns:
        The error validated as `model`, or None when the body holds no such error (or one
        whose fields do not fit `model`, or an empty one, `"error": {}`, which some
        compatible servers add to a good reply).
    """
    if not known and b'"error"' not in body:  # the usual reply: no second parse
        return None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # nested too deeply: no error object to read either
        return None
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if error is None and (known or payload.get("object") == "error"):
        error = payload
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict) or not (error or known):  # `"error": {}` says nothing
        return None
    try:
        return model.model_validate(error)
    except ValidationError:
        return None


class _AnyError(BaseModel):
    """An error object of any fields: read only to tell that a body reports an error."""

    model_config = ConfigDict(extra="allow")


def error_of_reply(
    body: bytes, model: type[ModelT], redact: Callable[[str], str] | None = None
) -> ModelT | None:
    """The error a reply body sent with a success status reports, as `model`; None for none.

    As `error_in_body` reads it; an error whose fields do not fit `model` (a message that is
    no string, a type of an odd type) is still the server's error, not a malformed reply
    that would lose its message: it is `model(message=...)`, its message read by
    `error_message` (redacted by `redact`).
    """
    error = error_in_body(body, model)
    if error is None and error_in_body(body, _AnyError) is not None:
        error = model(message=error_message(body, redact))
    return error


def decode_arguments(
    text: str,
    default: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    stop_reason: str | None = None,
    redact: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Decodes a tool call's JSON arguments; blank text gives `default` (or `{}`).

    The str values and keys of the arguments are cleaned by `clean_text` (`clean_json`):
    JSON may escape half a surrogate pair, and no UTF-8 text (a checkpoint) can hold one.

    Args:
        text: The arguments' JSON text.
        default: What blank text stands for.
        name: The tool's name, for the error message.
        stop_reason: Why the reply ended; a token-limit stop (`TRUNCATION_STOP_REASONS`)
            explains arguments that do not decode.
        redact: Applied to the quoted arguments and the tool's name before they are cut, as
            to any text from the server (`HttpTransport.redact`: they may echo the API key).

    Raises:
        ProviderError: The text is not a JSON object (`NaN` and `Infinity` are no JSON, and
            a number beyond the float range, `1e999`, is refused too: no tool should run on
            them, and no request could send them back), or one nested too
            deeply to decode (never retryable: the same request gives the same reply). When
            the reply was cut off by the token limit, the message says so rather than quoting
            the broken JSON; blank arguments then are cut off too (the call would run with
            every default).
    """
    if not text.strip():
        if stop_reason in TRUNCATION_STOP_REASONS:
            raise _bad_arguments("blank", text, name, stop_reason, redact)
        if default is None:
            return {}
        return clean_json(check_finite_arguments(default, name, redact))
    # Raised after the handler, not in it: the decode error holds the whole text (which
    # may echo the key), and would be kept as the error's context.
    problem = None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except OverflowError:  # `1e999`: JSON, but the tool would run with an infinity
        problem, stop_reason = "not valid JSON (a number beyond the float range)", None
    except ValueError:
        problem = "not valid JSON"
    except RecursionError:  # valid or not, no tool can be called with it
        problem = TOO_DEEP
    else:
        if nested_deeper_than(value, MAX_ARGUMENT_DEPTH):
            problem = TOO_DEEP
    if problem is not None:
        raise _bad_arguments(problem, text, name, stop_reason, redact)
    if not isinstance(value, dict):
        raise _bad_arguments("not a JSON object", text, name, stop_reason, redact)
    if _SURROGATE.search(text) or _SURROGATE_ESCAPE.search(text):
        return clean_json(value)  # half a pair, as text or escaped: no UTF-8 can write it
    return value


def _checked_error(check: Callable[[bytes], None], body: bytes) -> ProviderError | None:
    """The `ProviderError` a provider's `check` of `body` raises, or None when it finds none.

    That is the error the server sent with status 200.
    """
    try:
        check(body)
    except ProviderError as error:
        return error
    return None


def _finite_float(literal: str) -> float:
    """A JSON number as a float; one beyond the float range (`1e999`) is refused.

    Python's `json` reads it as an infinity, which no tool should run on and no request
    could send back.
    """
    value = float(literal)
    if math.isinf(value):
        raise OverflowError(literal)
    return value


def _refuse_constant(word: str) -> Any:
    """Refuses the `NaN`, `Infinity` and `-Infinity` Python's `json` would otherwise read."""
    raise ValueError(f"{word} is not JSON")


def read_arguments(
    decode: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments and None; or `{}` and why they are unreadable.

    `decode(*args, **kwargs)` reads them (`decode_arguments`). Arguments the model
    wrote wrong give their problem, for `ToolCall.arguments_error`: the agent loop answers
    the call with it, an error the model can correct.

    Raises:
        CutOffArgumentsError: The reply was cut off inside them: the model was stopped, it
            made no mistake to correct.
    """
    try:
        return decode(*args, **kwargs), None
    except CutOffArgumentsError:
        raise
    except ProviderError as error:
        return {}, str(error)


def check_finite_arguments(
    arguments: Any, name: str | None, redact: Callable[[str], str] | None
) -> dict[str, Any]:
    """Returns a tool call's arguments once checked to be an object with no NaN or infinity.

    For arguments a JSON parser that reads `NaN` and `Infinity` decoded (pydantic's): they
    are refused, as `decode_arguments` refuses them, and so is a value that is no object.

    Raises:
        ProviderError: They are no object, or hold such a number (never retryable).
    """
    if not isinstance(arguments, dict):  # quoted as JSON writes it: `null`, not `None`
        text = json.dumps(arguments, default=repr)
        raise _bad_arguments("not a JSON object", text, name, None, redact)
    if nested_deeper_than(arguments, MAX_ARGUMENT_DEPTH):  # not quoted: its repr is deep too
        raise _bad_arguments(TOO_DEEP, "", name, None, redact)
    found = _non_finite(arguments, "")
    if found is not None:
        where, number = found
        raise _bad_arguments(
            f"not valid JSON ({number} at {where})", repr(arguments), name, None, redact
        )
    return arguments


def _bad_arguments(
    problem: str,
    text: str,
    name: str | None,
    stop_reason: str | None,
    redact: Callable[[str], str] | None,
) -> ProviderError:
    if redact is not None and name is not None:
        name = redact(name)
    shown = None if name is None else name[:200]
    if stop_reason is not None and stop_reason in TRUNCATION_STOP_REASONS:
        limit, advice = token_limit(stop_reason)
        message = (
            f"the reply was cut off by {limit} (stop reason {stop_reason!r}) inside the "
            f"arguments of tool call {shown!r} ({len(text)} characters of JSON arrived): "
            f"{advice}"
        )
    elif stop_reason in SAFETY_STOP_REASONS:  # the refused text is not quoted
        message = (
            f"the provider's safety system stopped the reply (stop reason {stop_reason!r}) "
            f"inside the arguments of tool call {shown!r} ({len(text)} characters of JSON "
            "arrived)"
        )
    else:
        if redact is not None:  # redacted whole, then cut: no part of the key survives it
            text = redact(text)
        return ProviderError(f"tool call {shown!r} arguments are {problem}: {text[:200]!r}")
    error = CutOffArgumentsError(message)
    error.stop_reason = stop_reason
    return error


@dataclass(slots=True)
class PartialToolCall:
    """A tool call being assembled from streamed fragments of its JSON arguments.

    Its arguments, and the pieces of its name given out in deltas, are cleaned piece by
    piece as a reply's text is (`StreamedText`): an emoji a server cut between two pieces is
    put together, half a pair alone becomes U+FFFD. `build` cleans the whole name.
    """

    index: int
    """Position of the call among the response's tool calls."""
    id: str | None
    """The id given out for the call (`ToolCallIds.give`); None or "" while none arrived."""
    name: str | None
    """The name as received (pieces of one streamed in pieces joined), cleaned by `build`."""
    initial: dict[str, Any] | None = None
    """Arguments announced at the start, used when no fragment arrives."""
    arguments: StreamedText = field(default_factory=StreamedText)
    """The arguments' JSON text, cleaned piece by piece."""
    names: StreamedText = field(default_factory=StreamedText)
    """The pieces of the name given out in deltas, cleaned piece by piece."""

    @property
    def fragments(self) -> list[str]:
        """The arguments' JSON text, in pieces as they were given out."""
        return self.arguments.pieces

    def add_arguments(self, fragment: str) -> str:
        """Adds a fragment of the arguments; returns what of it to give out now."""
        return self.arguments.add(fragment)

    def add_name(self, piece: str | None) -> str | None:
        """Adds a piece of the name; returns what of it to give out now (None: nothing)."""
        if not piece:
            return piece
        return self.names.add(piece) or None

    def give_initial(self) -> str:
        """The arguments announced at the start, as JSON text to give out after the fragments.

        Called once the call's fragments are over: its block stopped, or the stream ended.
        Some compatible servers send a call's whole input with its start and no fragment of
        it: the start's arguments are then added as the call's text, so that the pieces given
        out decode to the call's arguments (a fragment that still came would be added after
        them). "" when a fragment arrived (it wins, see `decode_arguments`), when the start
        announced no arguments, or when they were given out already.
        """
        if not self.initial or self.arguments.text.strip():
            return ""
        return self.add_arguments(json.dumps(self.initial, ensure_ascii=False))

    def finish(self) -> ToolCallDelta | None:
        """The call's last delta, once its stream ended, if it has anything to give out.

        That is what was kept back (U+FFFD), and the arguments announced at the start when no
        fragment came and they were not given out yet (`give_initial`).
        """
        name, arguments = self.names.finish(), self.arguments.finish()
        arguments += self.give_initial()
        if not name and not arguments:
            return None
        return ToolCallDelta(self.index, None, name or None, arguments)

    def build(
        self,
        ids: ToolCallIds,
        stop_reason: str | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> ToolCall:
        """The finished call.

        Args:
            ids: The reply's ids, which name a call that arrived without one
                (`ToolCallIds.fallback`): build the calls once the stream ended, so that
                every received id is known.
            stop_reason: Why the reply ended (a token-limit stop explains broken arguments).
            redact: Removes the API key from an error's quotes (see `decode_arguments`).

        Assembled arguments that are not a JSON object make a call with its
        `arguments_error` set (see `read_arguments`).

        Raises:
            CutOffArgumentsError: The reply was cut off inside the arguments.
        """
        name = clean_text(self.name or "")
        self.arguments.finish()  # a half pair kept back, if `finish` gave out none
        arguments, problem = read_arguments(
            decode_arguments,
            self.arguments.text,
            self.initial,
            name=name,
            stop_reason=stop_reason,
            redact=redact,
        )
        call_id = self.id or ids.fallback(self.index)
        return ToolCall(call_id, name, arguments, problem)


class Redactor:
    """Keeps credentials out of error text and out of the exceptions errors are chained to.

    Each secret is also found where a repr or JSON escaped it (a backslash before a quote or
    a backslash). A secret shorter than `MIN_REDACTED_SECRET` characters is not redacted.

    Args:
        *secrets: The API key, and the other credentials sent (`credential_secrets`); None
            is nothing to redact.
    """

    __slots__ = ("_forms",)

    def __init__(self, *secrets: str | None) -> None:
        forms = [
            form
            for secret in secrets
            if secret is not None and len(secret) >= MIN_REDACTED_SECRET
            for form in _escaped_forms(secret)
        ]
        # The longest first: a secret holding another is replaced whole.
        self._forms = tuple(sorted(dict.fromkeys(forms), key=len, reverse=True))

    def __repr__(self) -> str:
        return "Redactor(...)"  # never the key

    def __reduce__(self) -> Any:
        raise TypeError("a Redactor holds an API key and cannot be pickled")

    def redact(self, text: str) -> str:
        """The text with every form of the key replaced by `[redacted]`."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, _REDACTED)
        return text

    def reveals(self, exc: BaseException) -> bool:
        """Whether the exception, or one it was raised from, shows the key in its text."""
        return any(form in f"{link!s} {link!r}" for link in _chain(exc) for form in self._forms)

    def cause(self, exc: BaseException) -> BaseException | None:
        """What to chain an error to: `exc`, redacted if it shows the key.

        The string arguments of `exc` and of the exceptions it was raised from are redacted;
        None when that does not hide the key (chain nothing rather than the key). An httpx
        error's request, which holds the key in a header, keeps its method, URL and headers
        redacted, not its body.
        """
        if not self._forms:
            return exc
        for link in _chain(exc):
            if isinstance(link, httpx.RequestError):
                self._redact_request(link)
        if not self.reveals(exc):
            return exc
        for link in _chain(exc):
            link.args = tuple(self.redact(a) if isinstance(a, str) else a for a in link.args)
        return None if self.reveals(exc) else exc

    def _redact_request(self, error: httpx.RequestError) -> None:
        try:
            request = error.request
        except RuntimeError:  # an error raised without its request
            return
        error.request = httpx.Request(
            request.method,
            self.redact(str(request.url)),
            headers=[(name, self.redact(value)) for name, value in request.headers.multi_items()],
        )


def _described(error: BaseException) -> str:
    """`error`'s type and message; its type alone when its message is blank.

    httpx raises a `ReadError` with no message when the server drops the connection
    mid-read: the message read "ReadError: " then.
    """
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _certificate_refused(error: BaseException) -> bool:
    """Whether `error` came of a server certificate that did not verify (a CA missing).

    httpx wraps the `ssl.SSLCertVerificationError` in its `ConnectError` (through
    httpcore's, as a cause or a context): each is followed. Another attempt fails the same
    way, unlike a TLS connection cut mid-handshake (an `SSLEOFError`), which may not.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _bound_tunnel(event: str, info: dict[str, Any], saved: list[Any], seconds: Any) -> None:
    """Bounds the wait for a proxy's reply to the CONNECT of a tunnel by `seconds`.

    httpcore waits for it under the read timeout (`timeout`, minutes): a proxy that takes
    the connection and never answers held each attempt that long. The tunnel is part of the
    connection, so `connect_timeout` bounds it: the CONNECT request shares the request's
    timeouts, whose read timeout is lowered while its reply is awaited (kept in `saved`)
    and given back once it came. Left lowered when it failed: `saved` tells the caller.
    """
    if event.endswith(".started"):
        connect: Any = info.get("request")
        if seconds is not None and getattr(connect, "method", None) == b"CONNECT":
            timeouts = connect.extensions.get("timeout")
            if isinstance(timeouts, dict):
                read = timeouts.get("read")
                saved[:] = [timeouts, read]
                timeouts["read"] = seconds if read is None else min(read, seconds)
    elif saved and event.endswith(".complete"):
        timeouts, read = saved
        timeouts["read"] = read
        saved.clear()


@contextlib.contextmanager
def transport_errors(name: str, redactor: Redactor) -> Iterator[None]:
    """Turns httpx transport failures into `ProviderError`, for async and sync clients alike.

    Timeouts, network errors, connections the server dropped and bodies that do not decode
    (a proxy's broken gzip) are retryable; other transport failures (a URL scheme httpx
    cannot speak, a header it refuses, a server certificate that does not verify) are not,
    as another attempt fails the same way. The httpx error is the cause, redacted by
    `redactor` (or not chained at all when redacting cannot hide the key).

    Args:
        name: Names the service in messages, e.g. "OpenAI".
        redactor: Removes the API key from messages and causes.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        error = ProviderError(f"{name} request timed out ({type(exc).__name__})", retryable=True)
        raise error from redactor.cause(exc)
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        error = ProviderError(
            redactor.redact(f"{name} connection failed: {_described(exc)}"),
            retryable=not _certificate_refused(exc),
        )
        raise error from redactor.cause(exc)
    except httpx.DecodingError as exc:
        error = ProviderError(
            redactor.redact(f"{name} response body could not be decoded: {exc}"),
            retryable=True,
        )
        raise error from redactor.cause(exc)
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        error = ProviderError(redactor.redact(f"{name} request failed: {_described(exc)}"))
        raise error from redactor.cause(exc)


def _check_methods(name: str, value: object, kind: str, methods: Sequence[str]) -> None:
    """Refuses a setting that is neither None nor an instance with the methods it is called by.

    Raises:
        TypeError: Naming the setting.
    """
    if value is None:
        return
    if isinstance(value, type) or not all(callable(getattr(value, m, None)) for m in methods):
        needs = ", ".join(f"{m}()" for m in methods)
        raise TypeError(f"{name} must be {kind} (or have {needs}), or None, got {value!r:.80}")


class _LoopClient(NamedTuple):
    """The pooled client of one event loop, and what closes it when that loop ends."""

    client: httpx.AsyncClient
    closer: AsyncGenerator[None, None]


class HttpTransport:
    """The HTTP side of one provider: pooled client, headers, timeouts, retries, accounting.

    Connections belong to the event loop that opened them, so the transport keeps one pooled
    client per event loop it is used from, and each is closed within its own loop: by
    `aclose`, or as the loop ends under `asyncio.run` (or `asyncio.Runner`, or any loop's
    `shutdown_asyncgens`). A provider can thus be reused across `asyncio.run` calls without
    leaving a connection open behind each, and by loops running in several threads at once.
    A stream left open as its loop ends is closed with it, within the loop: only its
    outermost layer is the loop's to close, and it closes the layers inside (`Driven`). A
    loop closed without `shutdown_asyncgens` leaves its connections to the garbage
    collector.

    Args:
        name: Provider name used in error messages (e.g. "OpenAI").
        base_url: API root; request paths are appended to it. User info in it
            (`http://user:password@host/v1`) is sent as basic auth, and kept out of
            `base_url`; with an `Authorization` header in `headers` too, it is refused
            (`ProviderError`, see `move_user_info`).
        headers: Headers sent with every request (auth included).
        secret: The API key, removed from any error text the server echoes.
        timeout: Seconds to wait for the next bytes of a response; also how long a stream
            may go on without an event that carries content (keep-alive comments and `ping`
            events do not count).
        connect_timeout: Seconds to wait for a connection.
        total_timeout: Seconds one attempt of a non-streamed call may take in all, from its
            start (a wait for a free pooled connection included) to the last byte of the
            reply (`timeout` bounds each wait for bytes, so a server sending a byte now and
            then would never be cut). None:
            `connect_timeout + 2 * timeout` (20 minutes by default): room for a reply that
            takes up to `timeout` to start (a whole non-streamed reply is written at its end)
            and as long again to arrive, or for a gateway that sends keep-alive whitespace
            while the model works. `math.inf`: no bound. Streams are bounded otherwise (see
            `timeout`), but for a body a streamed request reads whole (an error status's, or
            a reply that is no event stream), which `total_timeout` bounds too.
        retry: Retry policy for failed calls (None: `RetryPolicy()`, 3 attempts).
        http_client: An `httpx.AsyncClient` to use instead of creating one (`timeout` and
            `connect_timeout` still apply to each request, and redirects are not followed
            whatever its `follow_redirects`); it is not closed by `aclose`. Once its owner
            has closed it, calls fail with a `ProviderError` (not retryable). It is bound to
            the event loop it is first used on, as its connections are: once that loop has
            closed (a second `asyncio.run`), calls from another loop fail with a
            `ProviderError` (not retryable). Pass a client made for each loop, or none.
        budget: Cost budget checked before each call and charged with its usage.
        metrics: Runtime metrics that receive each call's token counts.
        input_cost_per_million: US dollars per million input tokens (charged to `budget`).
        output_cost_per_million: US dollars per million output tokens (charged to `budget`).
        cached_input_cost_per_million: US dollars per million input tokens read from the
            prompt cache (`Usage.cached_input_tokens`); None: `input_cost_per_million`.
        cache_write_cost_per_million: US dollars per million input tokens written to the
            prompt cache (`Usage.cache_write_tokens`); None: `input_cost_per_million`.
        cache_write_1h_cost_per_million: The same for those written to the 1-hour cache
            (`Usage.cache_write_1h_tokens`); None: `cache_write_cost_per_million`.
    """

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        secret: str | None,
        timeout: float,
        connect_timeout: float,
        retry: RetryPolicy | None,
        http_client: httpx.AsyncClient | None,
        budget: CostBudget | None,
        metrics: RuntimeMetrics | None,
        input_cost_per_million: float,
        output_cost_per_million: float,
        cached_input_cost_per_million: float | None = None,
        cache_write_cost_per_million: float | None = None,
        cache_write_1h_cost_per_million: float | None = None,
        total_timeout: float | None = None,
    ) -> None:
        # Numbers first, each by name: `timeout=None` (httpx's "no timeout") or a str failed
        # with a bare TypeError from the sums below, and `True` passed for 1 s.
        timeout = check_real("timeout", timeout)
        connect_timeout = check_real("connect_timeout", connect_timeout)
        if total_timeout is None:
            total_timeout = connect_timeout + 2 * timeout
        total_timeout = check_real("total_timeout", total_timeout)
        # Each checked itself (NaN fails `> 0`): a NaN timeout beside a given total_timeout
        # would fail every call with a raw ValueError.
        if not (timeout > 0 and connect_timeout > 0 and total_timeout > 0):
            raise ValueError("timeouts must be > 0 seconds")
        input_cost_per_million = check_real("input_cost_per_million", input_cost_per_million)
        output_cost_per_million = check_real("output_cost_per_million", output_cost_per_million)
        cached_input_cost_per_million = (
            input_cost_per_million
            if cached_input_cost_per_million is None
            else check_real("cached_input_cost_per_million", cached_input_cost_per_million)
        )
        cache_write_cost_per_million = (
            input_cost_per_million
            if cache_write_cost_per_million is None
            else check_real("cache_write_cost_per_million", cache_write_cost_per_million)
        )
        cache_write_1h_cost_per_million = (
            cache_write_cost_per_million
            if cache_write_1h_cost_per_million is None
            else check_real("cache_write_1h_cost_per_million", cache_write_1h_cost_per_million)
        )
        prices = (
            input_cost_per_million,
            output_cost_per_million,
            cached_input_cost_per_million,
            cache_write_cost_per_million,
            cache_write_1h_cost_per_million,
        )
        if not all(0 <= price < float("inf") for price in prices):  # NaN fails too
            raise ValueError("token prices must be finite and >= 0")
        # Else found out at the first call, as an AttributeError: after a request the
        # server billed, for `metrics`.
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise TypeError(
                f"http_client must be an httpx.AsyncClient (or None), got {http_client!r:.80}"
            )
        _check_methods("budget", budget, "a CostBudget", ("check", "record"))
        _check_methods("metrics", metrics, "a RuntimeMetrics", ("record_tokens",))
        check_api_key(name, secret)
        self.name = name
        self.base_url, self._headers = move_user_info(name, check_base_url(name, base_url), headers)
        client_headers = {} if http_client is None else http_client.headers
        _refuse_credential_clash(name, self._headers, client_headers)
        self._redactor = Redactor(
            secret, *credential_secrets(self._headers), *credential_secrets(client_headers)
        )
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        # Sent with every request: a client passed in has timeouts of its own (5 s default).
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        self.retry = policy_or_default(retry)
        self._given_client = http_client
        # Whether the client traces requests (httpx's own transport does): see `_send`.
        self._traces = http_client is None
        self._stopping: set[asyncio.Task[httpx.Response]] = set()
        # The loop the given client was first used on: its connections are that loop's.
        self._given_loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._clients_lock = threading.Lock()  # loops of several threads may share the provider
        # The TLS context of this transport's clients, made with the first: making one reads
        # the CA bundle (~25 ms of CPU, the loop blocked), which each loop's client repeated.
        self._tls: ssl.SSLContext | None = None
        self._closed = False
        self.budget = budget
        self.metrics = metrics
        self.input_cost_per_million = input_cost_per_million
        self.output_cost_per_million = output_cost_per_million
        self.cached_input_cost_per_million = cached_input_cost_per_million
        self.cache_write_cost_per_million = cache_write_cost_per_million
        self.cache_write_1h_cost_per_million = cache_write_1h_cost_per_million

    def __reduce__(self) -> Any:
        # The headers hold the API key: never let it reach a pickle (or a checkpoint).
        raise TypeError(f"a {self.name} provider holds an API key and cannot be pickled")

    # ------------------------------------------------------------------ client lifecycle
    def _http(self) -> httpx.AsyncClient:
        """The client of the running loop: the one passed in, or this loop's own.

        Raises:
            ProviderError: The provider is closed, or the client passed in is, or that client
                was first used on another loop, which is closed now (none is retryable).
        """
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            if self._closed:
                raise ProviderError(f"{self.name} provider is closed")
            if self._given_client is not None:
                if self._given_client.is_closed:
                    raise ProviderError(
                        f"the http_client given to the {self.name} provider is closed (by its "
                        "owner, or by the `async with` block it came from): pass an open one"
                    )
                # Its pooled connections belong to the loop that opened them: on another
                # loop httpx fails with a raw asyncio error ("Event loop is closed", or an
                # event "bound to a different event loop" while that one still runs).
                if self._given_loop is None:
                    self._given_loop = loop
                elif self._given_loop is not loop:
                    state = (
                        "is closed (a former asyncio.run)"
                        if (self._given_loop.is_closed())
                        else "is another one (another thread's)"
                    )
                    raise ProviderError(
                        f"the http_client given to the {self.name} provider belongs to the "
                        f"event loop it was first used on, which {state}: pass a client made "
                        "for each loop, or none (the provider then keeps a pool per loop)"
                    )
                return self._given_client
            entry = self._clients.get(loop)
            if entry is None or entry.client.is_closed:  # closed: the loop is ending
                # A closed loop's client was closed as the loop ended (or is past closing).
                for stale in [old for old in self._clients if old.is_closed()]:
                    del self._clients[stale]
                client = client_from_environment(f"the {self.name} provider", self._new_client)
                entry = _LoopClient(
                    client, close_with_loop(client.aclose, ignore=(httpx.HTTPError,))
                )
                self._clients[loop] = entry
            return entry.client

    def _new_client(self) -> httpx.AsyncClient:
        """A client for one loop: the environment's proxies, this transport's TLS context.

        The context's CA bundle (`SSL_CERT_FILE` or `SSL_CERT_DIR` if set) is read once.
        """
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return httpx.AsyncClient(
            timeout=self._timeouts,
            limits=httpx.Limits(max_connections=DEFAULT_LIMITS_MAX_CONNECTIONS),
            verify=self._tls,
        )

    async def aclose(self) -> None:
        """Closes the pooled clients this transport created; later calls fail.

        The running loop's client is closed before this returns. A client of another loop
        that is still running (in another thread) is closed there, without waiting for it;
        one of an idle loop is closed when that loop next runs. A client passed in is left
        open.
        """
        with self._clients_lock:
            self._closed = True
            entries, self._clients = self._clients, {}
        current = asyncio.get_running_loop()
        for loop, entry in entries.items():
            if loop is current:
                await entry.closer.aclose()  # its `finally` closes the client
            elif loop.is_running():  # in another thread
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    asyncio.run_coroutine_threadsafe(close_now(entry.closer), loop)
            # A closed loop closed its client as it ended. The closer of an idle loop, no
            # longer referenced here, is handed by the loop's finalizer hook to that loop,
            # which closes it when it runs again (or at its `shutdown_asyncgens`).

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    # ------------------------------------------------------------------ errors
    def redact(self, text: str) -> str:
        """Removes the API key from text that came from the server or the network layer.

        The key is also found where a repr or JSON escaped it (a backslash before `'`).
        """
        return self._redactor.redact(text)

    def translate_errors(self) -> contextlib.AbstractContextManager[None]:
        """Turns httpx transport failures into `ProviderError` (see `transport_errors`)."""
        return transport_errors(self.name, self._redactor)

    def status_error(
        self, response: httpx.Response, body: bytes, *, truncated: bool = False
    ) -> ProviderError:
        """The `ProviderError` for a response whose status is not a success (not 2xx).

        A redirect (3xx) is not followed, even by a caller's client made to follow them: the
        request would take the API key to wherever it points. Its error names the `Location`
        and is not retryable (nor is any 1xx or 3xx status: another attempt is answered the
        same way).

        Args:
            response: The response.
            body: Its body, or the start of it.
            truncated: Whether more of the body was left unread (see `error_message`).
        """
        status = response.status_code
        message = error_message(body, self.redact, truncated=truncated)  # redacted, then cut
        location = response.headers.get("location") if status < 400 else None
        if location:
            message = (
                f"redirected to {self.redact(location)[:200]!r} (HTTP {status}; redirects are "
                f"not followed: set the base URL to where the API is): {message}"
            )
        elif status < 400:
            message = f"HTTP {status}, not a reply: {message}"
        return ProviderError(
            f"{self.name} API error: {message}",
            status=status,
            retryable=should_retry(status, response.headers),
            retry_after=parse_retry_after(response.headers),
        )

    async def check_status(self, response: httpx.Response) -> None:
        """Refuses a response that brings no reply to read; a success's body is left unread.

        Raises:
            ProviderError: The status is not a success (`status_error`; an error body that
                does not decode does not hide the status), or it is a success without a body
                (204, 205, or `content-length: 0`): a malformed response, not retryable, as
                the server said on purpose that there is nothing (a stream cut before its
                first event is retried, as a connection dropped early may be).
        """
        status = response.status_code
        if not 200 <= status < 300:
            body, truncated = await _error_body(response)
            raise self.status_error(response, body, truncated=truncated)
        if status in (204, 205) or response.headers.get("content-length") == "0":
            raise ProviderError(
                f"malformed {self.name} response: HTTP {status} without a body, where a "
                "reply was expected",
                status=status,
            )

    def not_a_stream_error(
        self,
        response: httpx.Response,
        body: bytes,
        *,
        truncated: bool = False,
        check: Callable[[bytes], None] | None = None,
    ) -> ProviderError:
        """The `ProviderError` for a successful reply to a streamed request that is no stream.

        A server that cannot stream (or not this model) may answer with a JSON error, or a
        whole reply, under status 200. Another attempt gets the same answer (not retryable),
        unless `check` reads the error as one another attempt may not get (a rate limit).

        Args:
            response: The reply.
            body: The start of its body (`post_sse` reads `MAX_ERROR_BODY` bytes of it).
            truncated: Whether more of the body was left unread (see `error_message`).
            check: The provider's reader of an error sent with status 200 (see `post_sse`).
        """
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if check is not None and not truncated:
            error = _checked_error(check, body)
            if error is not None:
                return ProviderError(
                    f"{error.args[0]} (the streamed request was answered with {kind!r}, not "
                    "an event stream)",
                    error.status,
                    error.retryable,
                    error.retry_after,
                )
        message = error_message(body, self.redact, truncated=truncated)
        return ProviderError(
            f"{self.name} API error: {message} (the streamed request was answered with "
            f"{kind!r}, not an event stream)"
        )

    # ------------------------------------------------------------------ requests
    async def post_json(
        self,
        path: str,
        body: dict[str, Any],
        check: Callable[[bytes], None] | None = None,
        retried: list[Usage] | None = None,
    ) -> bytes:
        """POSTs a JSON body and returns the response body, retrying per the policy.

        Args:
            path: Appended to the base URL.
            body: The JSON request body.
            check: Called with each successful attempt's body; a `ProviderError` it raises
                (an error reported with status 200, say) fails that attempt, and is retried
                when retryable.
            retried: Given the usage of each failed attempt that was billed and then tried
                again (see `_with_retries`): the reply's usage leaves them out.

        Raises:
            ProviderError: The call failed on its last attempt (the message then says how
                many attempts were made, over how long), or with a status that another
                attempt cannot fix (one outside 2xx, a redirect included, or a success
                without a body: see `check_status`), or a reply body past
                `MAX_REPLY_BYTES`. An attempt that takes longer than `total_timeout` in all
                fails as a timeout (retryable).
            BudgetExceededError: The budget is spent, before any attempt (a failed attempt
                may have spent it: see `_with_retries`).
            ValueError: A value in `body` is NaN or infinite (`request_body`).
        """
        content = request_body(body)
        result: bytes = await self._with_retries(
            self._post_once, path, content, check, retried=retried
        )
        return result

    async def _post_once(
        self, path: str, content: bytes, check: Callable[[bytes], None] | None
    ) -> bytes:
        payload = await self._in_total_time(self._exchange(path, content))
        if check is not None:
            check(payload)
        return payload

    async def _in_total_time(self, work: Awaitable[T]) -> T:
        """Awaits `work`, cut after `total_timeout` seconds.

        `timeout` bounds each wait for bytes; this bounds a reply read whole (a non-streamed
        reply, or the body of a streamed request's error status) that is trickled a byte at
        a time.

        Raises:
            ProviderError: `work` took longer than `total_timeout` (retryable).
        """
        try:
            async with asyncio.timeout(self.total_timeout):
                return await work
        except TimeoutError:
            raise ProviderError(
                f"{self.name} request timed out: the reply took longer than "
                f"{self.total_timeout:g} s in all (total_timeout)",
                retryable=True,
            ) from None

    async def _send(
        self,
        client: httpx.AsyncClient,
        path: str,
        content: bytes,
        sent: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """POSTs `content` to `path`; the reply's body is left to stream (the caller closes it).

        `sent` is called when the transport reports the request sent whole (httpx's own
        does): the wait for the reply's headers begins.

        The request runs in a task of its own, which a cancelled caller leaves at once. One
        cancelled before it starts on a connection (while queued for one, or as a new one
        opens) leaves httpcore's pool (1.0.9) a slot taken for good: once `max_connections`
        cancelled calls (runs stopped, timeouts) have taken them all, every call fails with
        `PoolTimeout`. So a request that has not started is not cancelled: it goes on alone
        and stops at its next stopping point (`_STOPPING_POINTS`), where httpcore cleans up
        after it. One that has started is cancelled, as is one over a transport that traces
        nothing (not httpcore's).
        """
        started = False  # the request has started on its connection: it may be cancelled
        stop = False  # its caller has left before that: it stops at its next stopping point
        stopped = False  # it did
        tunnel_read: list[Any] = []  # the read timeout, while a proxy's CONNECT reply is awaited

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal started, stopped
            self._traces = True
            if event.startswith("http11.receive_response_headers."):
                _bound_tunnel(event, info, tunnel_read, self.connect_timeout)
            if event.endswith(_STOPPING_POINTS):
                # Its caller left, or the provider was closed as it set out: a connection
                # opened for it would be one the closed pool no longer knows, left open.
                if (stop or self._closed) and not stopped:
                    stopped = True  # once: httpcore's cleanup, which follows, is traced too
                    raise asyncio.CancelledError
                started = started or event.endswith(".send_request_headers.started")
            if sent is not None and event.endswith("send_request_body.complete"):
                sent()

        request = client.build_request(
            "POST",
            self.base_url + path,
            content=content,
            headers=self._headers,
            timeout=self._timeouts,
            extensions={"trace": trace},
        )

        async def send() -> httpx.Response:
            # Never followed, even by a caller's client made with follow_redirects=True: httpx
            # drops `authorization` on the way to another host, but not Anthropic's `x-api-key`.
            try:
                response = await client.send(request, stream=True, follow_redirects=False)
            except httpx.ReadTimeout as error:
                if not tunnel_read:
                    raise
                raise httpx.ConnectTimeout(
                    f"the proxy did not answer the CONNECT of its tunnel within "
                    f"{self.connect_timeout:g} s (connect_timeout)",
                    request=request,
                ) from error
            except RuntimeError:
                if client.is_closed:  # closed as the request set out (httpx's bare error)
                    raise self._closed_in_flight() from None
                raise
            if stop:  # its caller has left, and no stopping point was traced on the way
                await response.aclose()
            return response

        task = asyncio.create_task(send())
        task.add_done_callback(_outcome_seen)
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done():
                if not task.cancelled() and task.exception() is None:
                    await task.result().aclose()  # it came as the caller left
                elif task.cancelled() and stopped and not stop:  # stopped by `aclose`
                    raise self._closed_in_flight() from None
            elif started or not self._traces:
                task.cancel()
                # Unwinds at once: httpcore closes what the request opened, shielded.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            else:
                stop = True
                self._stopping.add(task)  # kept until it stops: the loop holds tasks weakly
                task.add_done_callback(self._stopping.discard)
            raise

    async def _exchange(self, path: str, content: bytes) -> bytes:
        """POSTs once and returns the body of a successful reply.

        Raises:
            ProviderError: As `post_json` says; and, retryable, for a body that ends where
                the connection closed (no length, not chunked) before its JSON did.
        """
        client = self._http()
        with self.translate_errors():
            response = await self._send(client, path, content)
            try:
                await self.check_status(response)
                limit = MAX_REPLY_BYTES
                body, larger = await _read_start(response, limit)
            finally:
                await response.aclose()
        if larger:
            raise ProviderError(
                f"{self.name} reply is larger than {limit} bytes: refused, not read whole "
                "(a misbehaving server or proxy)"
            )
        if cut_short(response, body):
            raise cut_short_error(self.name)
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if kind and "json" not in kind.lower() and body.removeprefix(_BOM).lstrip()[:1] != b"{":
            # A page in place of a reply (a proxy's login page, say), quoted as a stream's is:
            # read as JSON, it said only "Invalid JSON", naming nothing that answered.
            raise ProviderError(
                f"{self.name} API error: {error_message(body, self.redact)} (the request was "
                f"answered with {kind!r}, not JSON)"
            )
        return body

    async def _with_retries(
        self,
        attempt: Callable[..., Awaitable[T]],
        *args: Any,
        retried: list[Usage] | None = None,
    ) -> T:
        """Runs `attempt` through the retry policy; a final error says how often it was tried.

        The budget is checked before each attempt: a failed attempt may have charged the
        usage it reported, and a spent budget allows no further request. A failed attempt
        whose error holds the usage the server billed (`ProviderError.usage`) is paid for
        whether or not it is tried again: when it is, its usage goes into `retried`, which
        the caller adds to the usage of the reply that follows; when every attempt failed,
        the error raised holds all of them.
        """
        attempts = 0
        started = time.monotonic()
        billed: list[Usage] = []  # of the failed attempts so far

        async def counted() -> T:
            nonlocal attempts
            self.check_budget()
            attempts += 1
            try:
                return await attempt(*args)
            except ProviderError as exc:
                if type(exc.usage) is Usage:
                    billed.append(exc.usage)
                closed = self._closed_error(exc)
                if closed is None:
                    raise
                raise closed from exc

        try:
            result: T = await self.retry.run(counted)
        except ProviderError as exc:
            note_attempts(exc, attempts, started)
            if billed:  # the last attempt's own included (the error raised may be another)
                exc.usage = usage_sum(billed)
            raise
        except BaseException:
            if billed:  # cancelled (while waiting to try again, say): no error carries them
                bill_caller(usage_sum(billed))
            raise
        if retried is not None:
            retried.extend(billed)
        return result

    def post_sse(
        self,
        path: str,
        content: bytes,
        ended: Callable[[], bool] | None = None,
        check: Callable[[bytes], None] | None = None,
        cut: Callable[[bytes], None] | None = None,
        progress: StreamProgress | None = None,
    ) -> Driven[SseEvent]:
        """POSTs a JSON body and yields the server-sent events of the response (one attempt).

        The caller closes the iterator (`aclose`), always: it is one layer of a stream, which
        the event loop leaves to the layer around it (see `Driven`).

        Args:
            path: Appended to the base URL.
            content: The JSON request body, encoded (`request_body`: the caller encodes it
                once, when the call is made, for all of its attempts).
            ended: Tells whether the caller has seen the stream's last event (`[DONE]`,
                `message_stop`). The caller then stops reading, or closes this iterator:
                the rest of the body is read only briefly (so the connection can go back to
                the pool) and the response is closed, even if the server keeps it open.
            check: Reads an error sent with status 200 in place of the stream, as
                `post_json`'s `check` does: in the body of a reply that is no event stream,
                or in that of an event stream that ended without a single event (a gateway
                that sends a JSON error as `text/event-stream`). A `ProviderError` it raises
                is raised, with the server's status and whether it is retryable.
            cut: Called with the body's last line when the body ends inside it (see
                `iter_sse`).
            progress: Counted by the caller as it reads each event (`StreamProgress`): an
                event that leaves it unchanged is no content. Without it, every event but a
                `ping` is taken for content.

        Raises:
            ProviderError: A status outside 2xx (retryable for 408, 409, 429 and 5xx, or
                as the server's `x-should-retry` says: `should_retry`), or
                a success without a body (see `check_status`); a successful reply that is
                not an event stream (its `content-type` is another and its body does not
                open with an event's line; a reply without one is read as a stream), or
                whose body holds no event and is JSON (a whole reply labelled a stream; not
                retryable); timeout, or a body read whole (an error
                status's, or that of a reply that is no stream) that takes longer than
                `total_timeout` (as a non-streamed reply does; retryable); no reply's headers
                within `timeout` of
                the request, or `timeout` seconds after them (or after the caller's return
                from an event with content) without an event that carries content, however
                many comments, `ping` events or empty events came meanwhile (they keep a
                connection open, not a stream going; retryable); a connection lost
                mid-stream; a line or an event past `MAX_EVENT_BYTES` (see `iter_sse`); or
                content past `MAX_REPLY_BYTES` characters, each event without content counted by its
                size (`progress`; not retryable).
        """
        return Driven(self._post_sse(path, content, ended, check, cut, progress))

    async def _post_sse(
        self,
        path: str,
        content: bytes,
        ended: Callable[[], bool] | None,
        check: Callable[[bytes], None] | None,
        cut: Callable[[bytes], None] | None,
        progress: StreamProgress | None,
    ) -> AsyncGenerator[SseEvent, None]:
        client = self._http()
        clock = asyncio.get_running_loop().time
        # Since when the stream has gone without content: its headers' arrival, then the
        # caller's return from the last event with content. Neither slow reads nor a flood
        # of events without content may outlast `timeout` (reads alone once did not count).
        quiet_since = clock()
        received = 0  # `progress.received` after the last event with content
        # The body's start, kept until the first event: an error may stand in for the stream.
        start = bytearray()
        no_event = True
        # Off while the start of a reply of another type is read whole, to tell whether it
        # is a stream: that read is bounded as a whole reply is (`total_timeout`).
        sniffing = False

        def check_quiet() -> None:
            # A silent server trips the read timeout; this catches one that only pings, or
            # sends bytes that decode to nothing (empty flushes of a compressed body).
            if not sniffing and clock() - quiet_since > self.timeout:
                raise ProviderError(
                    f"{self.name} stream sent no content for {self.timeout:g} s "
                    "(only keep-alive pings or events without any)",
                    retryable=True,
                )

        async def timed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                check_quiet()
                if no_event and len(start) < MAX_ERROR_BODY:
                    start.extend(chunk[: MAX_ERROR_BODY - len(start)])
                yield chunk

        with self.translate_errors():
            # The wait for the reply's headers, once the request is sent, is bounded as a
            # whole: the timeout of each read alone never cuts a server (or a proxy) that
            # sends an interim `1xx` reply, or a byte, now and then and never its answer.
            # Until the transport says the request is sent (httpx's own does; another may
            # never), the whole exchange is bounded as a whole reply is (`total_timeout`).
            loop = asyncio.get_running_loop()
            sent: list[bool] = []

            def request_sent() -> None:
                if not sent:  # once: the wait starts when the request is first sent whole
                    sent.append(True)
                    headers_due.reschedule(loop.time() + self.timeout)

            try:
                async with asyncio.timeout(self.total_timeout) as headers_due:
                    response = await self._send(client, path, content, request_sent)
            except TimeoutError:
                if sent:
                    message = f"no reply within {self.timeout:g} s of the request (timeout)"
                else:
                    message = f"no reply within {self.total_timeout:g} s in all (total_timeout)"
                raise ProviderError(
                    f"{self.name} request timed out: {message}", retryable=True
                ) from None
            chunks = response.aiter_bytes()
            quiet_since = clock()
            try:
                # A body read whole (an error status's, or a reply that is no stream) is
                # bounded as a whole reply is: `timeout` alone never cuts one that trickles.
                await self._in_total_time(self.check_status(response))
                # Checked as raw bytes arrive too: httpx hands on no chunk that decodes to
                # nothing, and those bytes keep its read timeout from firing. (Set before the
                # body's first read, which takes the stream as it is then.)
                response.stream = _CheckedStream(response.stream, check_quiet)
                kind = response.headers.get("content-type")
                if kind is not None and not _is_event_stream(kind):
                    # Events all the same (a proxy that labels them `text/plain`, a server
                    # that says `application/json`) are read as such, as the APIs' own SDKs
                    # read them; anything else is an error in place of the stream.
                    sniffing = True
                    opening, read = await self._in_total_time(_opening_or_body(chunks))
                    if read is not None:
                        raise self.not_a_stream_error(
                            response, read[0], truncated=read[1], check=check
                        )
                    chunks = _chained(opening, chunks)
                    sniffing = False
                timed_chunks = Driven(timed(chunks))
                events = Driven(iter_sse(timed_chunks, cut))
                try:
                    async for event in events:
                        no_event = False
                        if progress is None:
                            yield event
                            if event.event != "ping":
                                quiet_since = clock()
                        else:
                            yield event  # read by the caller, which counts what it holds
                            if progress.received != received:
                                received = progress.received
                                quiet_since = clock()
                                if received > MAX_REPLY_BYTES:
                                    raise ProviderError(
                                        f"{self.name} streamed reply is larger than "
                                        f"{MAX_REPLY_BYTES} characters (of content, and bytes "
                                        "of the events without): cut, not read on (a "
                                        "misbehaving server or proxy)"
                                    )
                        if ended is not None and ended():
                            break
                    if no_event:
                        body = bytes(start)
                        if check is not None:
                            error = _checked_error(check, body)
                            if error is not None:
                                raise error
                        if body.lstrip()[:1] in (b"{", b"["):
                            # A whole reply (a server that ignores `"stream": true`): each
                            # attempt would get one, billed, and fail the same way.
                            truncated = len(body) >= MAX_ERROR_BODY
                            message = error_message(body, self.redact, truncated=truncated)
                            raise ProviderError(
                                f"{self.name} API error: {message} (the streamed request was "
                                "answered with a JSON body, not the events of a stream)"
                            )
                finally:
                    # Closed here, as the loop leaves them to this layer (`Driven`).
                    await events.aclose()
                    await timed_chunks.aclose()
            finally:
                try:
                    if ended is not None and ended():  # left after the last event
                        await _finish_body(chunks, min(_END_GRACE, self.timeout))
                finally:
                    await response.aclose()

    async def retry_stream(
        self, open_stream: Callable[[], AsyncIterator[StreamEvent]]
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yields a stream's events, retrying the whole stream until its first event arrives.

        Once an event has been yielded, a failure is raised as is: the caller has already
        seen part of the answer, so the call cannot be replayed behind its back. The usage
        of the attempts that were billed, failed and tried again is added to the usage of
        the `StreamEnd` response, or of the error that ends the stream (see `_with_retries`).

        Args:
            open_stream: Starts one attempt of the stream (an async generator not started
                yet: this closes it, and the event loop does not, see `Driven`).

        Raises:
            ProviderError: The stream failed (before its first item: on the last attempt,
                and the message then says how many attempts were made, over how long).
            BudgetExceededError: The budget is already spent, or the usage a failed attempt
                reported spent it: no further attempt is sent.
        """

        async def first_item() -> tuple[StreamEvent, AsyncIterator[StreamEvent]]:
            # Closed below, always: the loop finalizes only the layer around it (`Driven`).
            stream = Driven(open_stream())
            try:
                return await stream.__anext__(), stream
            except StopAsyncIteration:
                raise ProviderError(
                    f"{self.name} stream ended without any event", retryable=True
                ) from None
            except BaseException:
                await _aclose(stream)
                raise

        retried: list[Usage] = []
        first, stream = await self._with_retries(first_item, retried=retried)
        try:
            item = first
            try:
                while True:
                    if retried and type(item) is StreamEnd:  # its usage counts them
                        item = _with_retried(item, retried)
                        retried = []  # paid for: the reply carries them
                    yield item
                    item = await stream.__anext__()
            except StopAsyncIteration:
                return
            except ProviderError as exc:
                closed = self._closed_error(exc)
                if retried or closed is not None:  # the error raised holds what was billed
                    _with_billed(exc if closed is None else closed, exc, retried)
                if closed is None:
                    raise
                raise closed from exc
            except BaseException:
                if retried:  # closed or cancelled before its end: no reply carries them
                    bill_caller(usage_sum(retried))
                raise
        finally:
            await _aclose(stream)

    def _closed_error(self, error: ProviderError) -> ProviderError | None:
        """The error to raise in place of `error` when `aclose` may have cut the call.

        Closing the pool cuts the calls in flight, which fail as lost connections do:
        retryable, so they were tried again after a backoff (only to find the provider
        closed), and a breaker around them counted the provider's own shutdown as the
        service failing. A retryable error raised once the provider is closed is replaced
        by one that says so (not retryable); None: `error` stands.
        """
        if not (self._closed and error.retryable):
            return None
        return self._closed_in_flight()

    def _closed_in_flight(self) -> ProviderError:
        """The error of a call that `aclose` (or the owner of the client passed in) cut."""
        if self._closed or self._given_client is None:
            return ProviderError(f"{self.name} provider was closed while the call was in flight")
        return ProviderError(
            f"the http_client given to the {self.name} provider was closed (by its owner) "
            "while the call was in flight"
        )

    # ------------------------------------------------------------------ accounting
    def check_budget(self) -> None:
        """Refuses a call once the budget is spent (`BudgetExceededError`)."""
        if self.budget is not None:
            self.budget.check()

    def charge(self, usage: Usage) -> None:
        """Prices one call's usage, then feeds it to the metrics and the budget (may raise).

        The price is set in `usage.cost_usd`.
        The metrics and the budget count every input token (`usage.input_tokens`); the cost
        prices the input read from the prompt cache and the input written to it (to the
        1-hour cache apart) at their own prices, and the rest at the input price.
        """
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        cached, written = usage.cached_input_tokens, usage.cache_write_tokens
        written_1h = min(written, usage.cache_write_1h_tokens)
        usage.cost_usd = (
            max(0, input_tokens - cached - written) * self.input_cost_per_million
            + cached * self.cached_input_cost_per_million
            + (written - written_1h) * self.cache_write_cost_per_million
            + written_1h * self.cache_write_1h_cost_per_million
            + output_tokens * self.output_cost_per_million
        ) / 1_000_000
        if self.metrics is not None:
            self.metrics.record_tokens(input_tokens, output_tokens)
        if self.budget is not None:
            self.budget.record(input_tokens, output_tokens, usage.cost_usd)

    def charge_reply(self, usage: Usage, retried: Sequence[Usage] = ()) -> None:
        """Charges a reply's usage (`charge`), as the reply's own attempt is over.

        When that spends the budget, the `BudgetExceededError` raised in the reply's place
        carries no usage: the usage goes to the caller's run (`bill_caller`), with that of
        the billed attempts `retried` before it.
        """
        try:
            self.charge(usage)
        except BudgetExceededError:
            bill_caller(usage_sum([*retried, usage]) if retried else usage)
            raise

    def charge_unfinished(self, usage: Usage) -> None:
        """Charges the usage a call reported before it failed (a stream cut, say).

        The server bills what it reported, so the budget and the metrics count it. A
        `BudgetExceededError` is not raised here: the call's own failure is what its caller
        must see (the usage is recorded all the same, and the next call is refused).
        """
        with contextlib.suppress(BudgetExceededError):
            self.charge(usage)


class _CheckedStream(httpx.AsyncByteStream):
    """A response's raw byte stream, whose `check` runs at each chunk received."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, check: Callable[[], None]
    ) -> None:
        if not isinstance(stream, httpx.AsyncByteStream):  # an async client's never is
            raise TypeError("an async client's response has an async byte stream")
        self._stream = stream
        self._check = check

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._check()
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def _with_billed(raised: ProviderError, failed: ProviderError, retried: list[Usage]) -> None:
    """Sets the usage of `raised`, the error that ends a call in place of (or as) `failed`.

    It counts the attempts `retried` and what `failed` was billed. A reply it holds (that
    of `UnreadableArgumentsError`, which a runtime reads) counts them too.
    """
    own = [failed.usage] if type(failed.usage) is Usage else []
    if not retried and not own:
        return
    raised.usage = usage = usage_sum([*retried, *own])
    response = getattr(raised, "response", None)
    if isinstance(response, ChatResponse):
        raised.response = replace(response, usage=usage)  # type: ignore[attr-defined]


def _with_retried(end: StreamEnd, retried: list[Usage]) -> StreamEnd:
    """`end`, whose response counts the usage of the attempts `retried`."""
    return StreamEnd(replace(end.response, usage=usage_sum([*retried, end.response.usage])))


def _is_event_stream(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or during, as a traceback shows them."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def redact_secret(text: str, secret: str | None) -> str:
    """Removes a secret from text, also where a repr or JSON escaped it.

    What `Redactor(secret).redact` does; keys shorter than `MIN_REDACTED_SECRET` are left.
    """
    return Redactor(secret).redact(text)


def _escaped_forms(secret: str) -> tuple[str, ...]:
    """The secret as written, and as a repr or JSON string escapes it."""
    backslashed = secret.replace("\\", "\\\\")
    forms = (
        secret,
        backslashed,
        backslashed.replace("'", "\\'"),
        backslashed.replace('"', '\\"'),
    )
    return tuple(dict.fromkeys(forms))


async def _finish_body(chunks: AsyncIterator[bytes], grace: float) -> None:
    """Reads the rest of a body for at most `grace` seconds, ignoring any failure.

    A body read to its end lets its connection go back to the pool; one that does not end
    in time is cut when the response is closed.
    """

    async def rest() -> None:
        async for _ in chunks:
            pass

    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(grace):
            await rest()


def _outcome_seen(task: asyncio.Task[Any]) -> None:
    """Marks a request task's failure seen: the caller it was raised for may have left."""
    if not task.cancelled():
        task.exception()


async def _error_body(response: httpx.Response) -> tuple[bytes, bool]:
    """The start of the body of a response with an error status, as `_read_start` reads it.

    A body that fails to decode (a `Content-Encoding: gzip` header on a plain body), or that
    the connection cuts short (dropped, or stalled past the read timeout), must not turn the
    status error into a retryable transport error: the status says what failed (a 401 is
    not sent again; a 429 keeps its `Retry-After`). A note stands in for an undecodable
    body; a cut one is what arrived, marked as cut.
    """
    try:
        return await _read_start(response, MAX_ERROR_BODY, cut_ok=True)
    except httpx.DecodingError:
        return b"no error message (the error body did not decode)", False


async def _read_start(
    response: httpx.Response, limit: int, *, cut_ok: bool = False
) -> tuple[bytes, bool]:
    """The first `limit` bytes of a body (all of a shorter one), and whether more was left.

    Reading stops once a byte past `limit` arrived (a body of exactly `limit` bytes is
    whole); the rest is left unread. Closing the response then drops its connection, rather
    than reading a body of any size. `cut_ok`: a transport error while reading ends the body
    where it was cut (more was left), rather than being raised.
    """
    return await _read_chunks(response.aiter_bytes(), limit, cut_ok=cut_ok)


async def _read_chunks(
    stream: AsyncIterator[bytes], limit: int, read: bytes = b"", *, cut_ok: bool = False
) -> tuple[bytes, bool]:
    """`_read_start` of a body's chunks `stream`, whose first bytes `read` were read already.

    Closes `stream`.
    """
    chunks = [read]
    size = len(read)
    cut = False
    try:
        if size <= limit:
            async for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
    except httpx.TransportError:
        if not cut_ok:
            raise
        cut = True
    finally:
        await _aclose(stream)
    return b"".join(chunks)[:limit], cut or size > limit


_EVENT_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
"""How a line of server-sent events opens (a field's name, or `:` for a comment)."""


def _from_first_line(body_start: bytes) -> bytes:
    """`body_start` from its first character that is no byte order mark or blank."""
    return body_start.removeprefix(b"\xef\xbb\xbf").lstrip()


async def _opening(chunks: AsyncIterator[bytes]) -> bytes:
    """The body's first chunks: enough to tell whether it opens with an event stream's line.

    Read until its first line (past blanks) has the longest field's name, or has ended, or
    the body has, or `_SNIFFED` bytes have come (all blank: no stream of events).
    """
    read = bytearray()
    async for chunk in chunks:
        read += chunk
        first = _from_first_line(bytes(read[:_SNIFFED]))
        if len(first) >= len(b"retry:") or b"\n" in first or b"\r" in first:
            break
        if len(read) >= _SNIFFED:
            break
    return bytes(read)


_SNIFFED = 256
"""Bytes of a body's start that may tell whether it holds server-sent events."""


async def _opening_or_body(chunks: AsyncIterator[bytes]) -> tuple[bytes, tuple[bytes, bool] | None]:
    """A body's `_opening`, and its start as `_read_chunks` reads it when it is no stream.

    One read, bounded as a whole reply is (`total_timeout`), not two.
    """
    opening = await _opening(chunks)
    if _opens_events(opening):
        return opening, None
    return opening, await _read_chunks(chunks, MAX_ERROR_BODY, opening)


def _opens_events(body_start: bytes) -> bool:
    """Whether a body opening with `body_start` reads as server-sent events."""
    return _from_first_line(body_start).startswith(_EVENT_FIELDS)


async def _chained(first: bytes, rest: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """`first`, then the chunks of `rest` (closed when this is)."""
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await _aclose(rest)


async def _aclose(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


class Driven(AsyncIterator[T]):
    """An async generator that the one iterating it closes, and the event loop never does.

    An event loop finalizes the async generators started on it: as `asyncio.run` ends, its
    `shutdown_asyncgens` closes every one left open, all at once. A stream is generators
    nested in one another (one attempt, its events, their bytes), each closing the one it
    reads in its `finally`. Closed all at once, an inner one is still being closed by the
    one around it (its `finally` awaits) when the loop closes it too, which fails and is
    logged ("aclose(): asynchronous generator is already running"). Started without the
    loop's first-iteration hook, an inner layer is not among those the loop closes as it
    ends: the outermost one is, and it closes the rest in turn, each within the loop.

    So the one iterating it closes it (`aclose`, as `contextlib.aclosing` does). One left
    unclosed to the garbage collector is still closed through the loop (the loop's
    finalizer hook stays), and closing one that is being closed already does nothing.

    Args:
        stream: The generator, not started yet (one already started keeps its hooks).
    """

    __slots__ = ("_started", "_stream")

    def __init__(self, stream: AsyncIterator[T]) -> None:
        self._stream = stream
        self._started = False

    def __anext__(self) -> Awaitable[T]:
        if self._started:
            return self._stream.__anext__()
        # A generator takes the hooks at its first `__anext__` (or `aclose`), when it is
        # called: its body, and what it starts, run later, under the loop's hooks.
        self._started = True
        return _unhooked(self._stream.__anext__)

    async def aclose(self) -> None:
        """Closes the generator (its `finally` runs here, within the running loop).

        Nothing happens when it is being closed already (by its finalizer, collected with
        the layer around it).
        """
        if getattr(self._stream, "ag_running", False):
            return
        close: Callable[[], Awaitable[object]] | None = getattr(self._stream, "aclose", None)
        if close is not None:
            await _unhooked(close)  # one never started is not made the loop's here either


def _unhooked(call: Callable[[], T]) -> T:
    """`call()`, made with the async generator hooks of a `Driven` layer.

    No first-iteration hook (the loop does not close it as it ends), and `_finalize` for one
    the garbage collector finds unclosed.
    """
    hooks = sys.get_asyncgen_hooks()
    finalize = functools.partial(_finalize, asyncio.get_running_loop())
    sys.set_asyncgen_hooks(firstiter=None, finalizer=finalize)
    try:
        return call()
    finally:
        sys.set_asyncgen_hooks(hooks.firstiter, hooks.finalizer)


def _finalize(loop: asyncio.AbstractEventLoop, stream: AsyncGenerator[Any, None]) -> None:
    """Closes a `Driven` layer the garbage collector found unclosed, through its loop.

    As the loop's own finalizer does, but a layer collected with the one around it (in a
    reference cycle) may be closed by that one first: it is then left to it.
    """
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.create_task, _close_unless_closing(stream))


async def _close_unless_closing(stream: AsyncGenerator[Any, None]) -> None:
    if not getattr(stream, "ag_running", False):  # else the layer around it is closing it
        await stream.aclose()


class HttpProvider(abc.ABC):
    """What the HTTP providers share: the transport's lifecycle and the one-prompt helpers.

    Subclasses set `model` and `_transport`, and implement `chat` and `chat_stream`.
    """

    model: str
    _transport: HttpTransport

    @property
    def base_url(self) -> str:
        """The API root requests go to, without user info (that is sent as basic auth)."""
        return self._transport.base_url

    def __repr__(self) -> str:
        # Never the key: only where requests go and which model answers.
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    def __copy__(self) -> NoReturn:
        # A copy would share the connection pool: closing it would close this one's.
        raise TypeError(
            f"{type(self).__name__} objects cannot be copied or pickled: they hold a "
            "connection pool and an API key; make a new one instead"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool; the provider cannot be used afterwards."""
        await self._transport.aclose()

    async def complete(self, prompt: str, model: str | None = None) -> str:
        """Returns the model's text reply to a single user prompt.

        Raises:
            ProviderError: The call failed (after retries when retryable).
            BudgetExceededError: The budget is spent.
        """
        return (await self.chat([Message("user", prompt)], model=model)).text

    async def stream(self, prompt: str, model: str | None = None) -> AsyncIterator[str]:
        """Yields the model's text reply to a single user prompt as it arrives.

        Raises:
            ProviderError: The stream failed; raised from the iterator, never a hang.
        """
        # Closed here, always: the loop finalizes this generator alone (see `Driven`).
        events = Driven(self.chat_stream([Message("user", prompt)], model=model))
        async with contextlib.aclosing(events):
            async for event in events:
                if type(event) is TextDelta:
                    yield event.text

    @abc.abstractmethod
    async def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> ChatResponse:
        """Sends a conversation and returns the whole response (each wire format's own)."""

    @abc.abstractmethod
    def chat_stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams a conversation's response as typed events (each wire format's own)."""
