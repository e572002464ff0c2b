"""`AnthropicProvider`: the Anthropic Messages API (`POST {base_url}/v1/messages`)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from llm_agent_runtime.errors import ProviderError, is_retryable_status
from llm_agent_runtime.orchestration._checks import check_count, check_real
from llm_agent_runtime.providers._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_TOKEN_COUNT,
    HttpProvider,
    HttpTransport,
    PartialToolCall,
    StreamedText,
    StreamProgress,
    ToolCallIds,
    check_base_url,
    check_conversation,
    check_finite_arguments,
    check_stop,
    clean_json,
    clean_text,
    env_setting,
    error_in_body,
    error_message,
    error_of_reply,
    given_or_env,
    model_setting,
    parse_json,
    parse_usage,
    read_arguments,
    request_body,
    text_setting,
)
from llm_agent_runtime.providers.base import (
    OPENAI_COMPATIBLE_REASONING,
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
    checked_arguments,
    token_limit,
    usage_sum,
)

if TYPE_CHECKING:
    import httpx

    from llm_agent_runtime._core import RuntimeMetrics
    from llm_agent_runtime.orchestration.budget import CostBudget
    from llm_agent_runtime.orchestration.retry import RetryPolicy
    from llm_agent_runtime.providers._http import SecretText, UrlObject

__all__ = [
    "ANTHROPIC_VERSION",
    "CACHE_READ_PRICE_FACTOR",
    "CACHE_WRITE_1H_PRICE_FACTOR",
    "CACHE_WRITE_PRICE_FACTOR",
    "DEFAULT_ANTHROPIC_BASE_URL",
    "DEFAULT_ANTHROPIC_MODEL",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
]

logger = logging.getLogger(__name__)

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
"""The Anthropic API root (`ANTHROPIC_BASE_URL` overrides it)."""
_ANTHROPIC_API_HOST = "api.anthropic.com"
"""The host of Anthropic's own API, which is never called without a key."""
DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-5"
"""Model used when neither the call nor the provider names one (`ANTHROPIC_MODEL` overrides)."""
DEFAULT_MAX_TOKENS = 4096
"""Most tokens a reply may have unless the call says otherwise (the API requires a limit)."""
ANTHROPIC_VERSION = "2023-06-01"
"""Value of the `anthropic-version` header."""
CACHE_READ_PRICE_FACTOR = 0.1
"""Price of an input token read from the prompt cache, as a multiple of the input price."""
CACHE_WRITE_PRICE_FACTOR = 1.25
"""Price of an input token written to the prompt cache (the default, 5-minute cache), as a
multiple of the input price."""
CACHE_WRITE_1H_PRICE_FACTOR = 2.0
"""Price of an input token written to the 1-hour prompt cache (`"ttl": "1h"`), as a multiple
of the input price."""

_RESERVED_PARAMS = frozenset(("messages", "model", "stream", "tools"))
_REASONING_BLOCKS = frozenset(("thinking", "redacted_thinking"))
"""Content blocks of the model's reasoning: kept as received, to be sent back with the reply."""
BLOCK_ORDER = "block_order"
"""The `type` of the entry of `ChatResponse.reasoning` that keeps where a reply's reasoning
blocks came among its text and tool_use blocks, when one came after them (interleaved
thinking): `{"type": "block_order", "blocks": ["thinking", "tool_use", "thinking",
"text", "tool_use"], "text_lengths": [n]}`, the length of each text block in
`ChatResponse.text`. The reply is sent back in that order: the API refuses its latest
assistant message with the thinking blocks moved."""
_READ_DELTAS = frozenset(("text_delta", "input_json_delta", "thinking_delta", "signature_delta"))
"""Kinds of `content_block_delta` read here: one whose content is empty is no progress."""
_TOOL_FAILED = "the tool failed"
"""Content of a failed tool's result that has no text (the API refuses an empty one)."""
CONVERSATION_START = "(conversation start)"
"""The user message sent before a conversation that opens with the assistant's (a greeting,
or a first user message of blank text, left out): the API refuses any other first role."""

# Error types of the Messages API and the HTTP status each stands for.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# ---------------------------------------------------------------------- wire types
class _Block(BaseModel):
    # Other fields are kept: a reasoning block goes back exactly as it came (`model_dump`).
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None  # an object; anything else is a `tool_use` the model wrote wrong
    # A thinking block's: text, as its streamed pieces are (a reply is malformed otherwise).
    thinking: str | None = None
    signature: str | None = None

    def as_received(self) -> dict[str, Any]:
        """The block's fields as the API sent them, no more (none of the defaults)."""
        return self.model_dump(exclude_unset=True)


class _Usage(BaseModel):
    # Null or missing counts are 0 tokens, and so is a count out of range (negative, or past
    # 2**63: `parse_usage` drops it); a whole usage that is null or does not fit is read by
    # `parse_usage` as no tokens.
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: Any = None
    """The cache writes by lifetime (those to the 1-hour cache are billed apart); read
    leniently: an odd breakdown loses only itself, not the counts."""

    def usage(self, earlier: Usage | None = None) -> Usage:
        """The counts as a `Usage`; those not given are `earlier`'s (0 without it).

        `input_tokens` is the whole input: the uncached part and the cache reads and writes.
        A stream's `message_delta` repeats the input counts of its `message_start` (they are
        cumulative): an input count of 0 there is one the server left unset, and is
        `earlier`'s too (SGLang sends `"input_tokens": 0`, which wiped out the input
        `message_start` gave). Its `output_tokens` replaces the placeholder of the start.
        """
        if earlier is None:
            earlier = Usage()
        uncached = (
            self.input_tokens
            or earlier.input_tokens - earlier.cached_input_tokens - earlier.cache_write_tokens
        )
        read = self.cache_read_input_tokens or earlier.cached_input_tokens
        written = self.cache_creation_input_tokens or earlier.cache_write_tokens
        breakdown = self.cache_creation
        hour = breakdown.get("ephemeral_1h_input_tokens") if isinstance(breakdown, dict) else None
        if type(hour) is not int or not hour:  # absent, null, 0 or not a count: as said before
            hour = earlier.cache_write_1h_tokens
        output = self.output_tokens if self.output_tokens is not None else earlier.output_tokens
        if uncached + read + written >= MAX_TOKEN_COUNT:  # each count is in range, not the sum
            logger.warning(
                "unreadable token usage in Anthropic reply (input_tokens and the cache counts "
                "add up past 2**63 - 1): input counted as 0 tokens"
            )
            return Usage(0, output)
        return Usage(uncached + read + written, output, read, written, max(0, min(hour, written)))


class _Message(BaseModel):
    model: str | None = None
    content: list[_Block]
    stop_reason: str | None = None
    usage: Any = None  # read by `parse_usage`


class _StreamedMessage(BaseModel):
    model: str | None = None
    usage: Any = None  # read by `parse_usage`


class _Delta(BaseModel):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None


class _Error(BaseModel):
    type: str = "api_error"  # an error that does not say its type is the API's own
    message: str | None = None  # null from some servers (with its type, still worth reading)


class _Event(BaseModel):
    type: str
    message: _StreamedMessage | None = None
    index: int = 0
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: Any = None  # read by `parse_usage`
    error: Any = None  # read by `_error_event`: an error of any shape is still reported


# ---------------------------------------------------------------------- provider
class AnthropicProvider(HttpProvider):
    """An `LlmProvider` over the Anthropic Messages API.

    System messages are sent as the `system` parameter; tool calls and results travel as
    `tool_use` / `tool_result` content blocks (a failed tool's result, `Message.is_error`,
    with `is_error`). Messages without content (an empty answer kept in a conversation's
    history) are left out, as the API refuses them, and a conversation that ends on an
    assistant message (a prefill) has the trailing whitespace of its text cut, as the API
    refuses that too. Blocks of server-side tools (`server_tool_use`, `mcp_tool_use` and
    their results) are skipped: the API runs those tools itself, so they are no tool calls
    for the caller.

    With extended thinking (`thinking={"type": "enabled", ...}`), the reply's `thinking` and
    `redacted_thinking` blocks are `ChatResponse.reasoning`, as received (streamed ones
    assembled, signature included); an assistant `Message` that carries them back
    (`Message.reasoning`) sends them first in its content, as the API requires of the turn
    whose tool calls a conversation answers (an assistant `Message` of reasoning alone, no
    text and no tool calls, is left out: the API refuses a message that ends in thinking).
    A reply that interleaved them (interleaved thinking: a thinking block after its text or
    a tool call) keeps where each came (`BLOCK_ORDER`), and is sent back in that order.

    One pooled `httpx.AsyncClient` per provider; use `async with AnthropicProvider() as llm:`
    or call `aclose()`. Failed calls are retried through `retry` on 408/409/429/5xx/529
    statuses, overloaded or API error events that arrive before any output, timeouts and
    dropped connections, honouring `Retry-After` and `retry-after-ms`, and the server's
    `x-should-retry` over the status (as the official SDKs do).

    A provider is not bound to one event loop: it keeps a pool per loop it is used from, and
    closes each as its loop ends under `asyncio.run` (see `HttpTransport`).

    A stream that sends only `ping` events or empty deltas for `timeout` seconds fails
    (retryable, so it is tried again when it had yielded nothing yet); thinking counts as
    content. A reply past 64 MiB (a streamed one: 64 Mi characters of content, each event
    without content counted by its size) fails, not retryable. A 200 reply with an error in
    its body (JSON, or in place of the event stream that was asked for) raises the server's
    message, and so does an `error` event, whether its message is null or its data plain
    text (a proxy's; read as an `api_error`); its type says whether it is retried
    (`overloaded_error` is). Null or missing token counts are 0 tokens, a count that is
    negative or not below 2**63 is 0, and usage that does not fit the format is counted as
    none (each with a warning) rather than failing the reply. A `tool_use` block without an
    id (some compatible servers) gets `call_{n}`, its place among the reply's tool calls,
    streamed or not (made unique when another call's own id is that already, see
    `ToolCallIds`).

    Args:
        api_key: API key (default: `ANTHROPIC_API_KEY`; a blank value, argument or
            variable, counts as unset). Optional for a custom `base_url`.
        base_url: API root (default: `ANTHROPIC_BASE_URL`, else Anthropic's), with its
            `http://` or `https://` scheme. Surrounding whitespace is ignored, and a blank
            value (argument or variable) counts as unset. A user name and password in it
            (`http://user:password@host`, for a proxy that asks for them) are sent as basic
            auth, beside the API key's `x-api-key` header, and shown nowhere: `base_url` and
            the repr leave them out.
        model: Model used when a call names none (default: `ANTHROPIC_MODEL`, else
            `DEFAULT_ANTHROPIC_MODEL`).
        max_tokens: Most tokens per reply unless a call passes `max_tokens=`: an int of at
            least 1 (not a bool, a float or a string). None: `DEFAULT_MAX_TOKENS`, beyond
            the `budget_tokens` of a call's extended thinking (the API counts thinking in
            `max_tokens`, and refuses a budget that is not below it).
        timeout: Seconds to wait for the next bytes of a response (its headers too), and
            the longest a stream may go on without content once its headers came (`ping`
            events and empty deltas do not count).
        connect_timeout: Seconds to wait for a connection.
        total_timeout: Seconds one attempt of a non-streamed call (`chat`, `complete`) may
            take in all, however its reply trickles in, and a streamed call may take to read
            a reply that is no stream, such as an error status's body (None:
            `connect_timeout + 2 * timeout`, 20 minutes by default; see `HttpTransport`).
        retry: Retry policy (None: `RetryPolicy()`, 3 attempts; `RetryPolicy(max_attempts=1)`
            turns retries off).
        stop: Stop sequences sent with every call, or one as a str (a call's `stop=`
            overrides them). Those that are only whitespace (a newline, say) are not sent,
            as the API refuses them: the reply goes on past them (an `AgentRuntime` cuts
            each reply at every one of its `stop_sequences` itself).
        http_client: An `httpx.AsyncClient` to use instead of creating one (not closed here;
            `timeout` and `connect_timeout` apply to its requests all the same). It is bound
            to the event loop it is first used on: once that loop has closed (a second
            `asyncio.run`), calls fail with a `ProviderError`. Pass one made for each loop,
            or none.
        budget: Cost budget checked before each call and charged with its usage. Leave it
            unset inside an `AgentRuntime` that has a budget: the runtime charges each call.
        metrics: Runtime metrics that receive each call's token counts (the same caveat).
        input_cost_per_million: US dollars per million input tokens, charged to `budget`.
        output_cost_per_million: US dollars per million output tokens, charged to `budget`.
        cached_input_cost_per_million: US dollars per million input tokens read from the
            prompt cache (`cache_read_input_tokens`). None: `CACHE_READ_PRICE_FACTOR` (0.1)
            times the input price, as Anthropic bills them.
        cache_write_cost_per_million: US dollars per million input tokens written to the
            5-minute prompt cache (`cache_creation_input_tokens`, but for the 1-hour cache's
            share). None: `CACHE_WRITE_PRICE_FACTOR` (1.25) times the input price.
        cache_write_1h_cost_per_million: US dollars per million input tokens written to the
            1-hour prompt cache (`cache_creation.ephemeral_1h_input_tokens`). None:
            `CACHE_WRITE_1H_PRICE_FACTOR` (2) times the input price.

    Raises:
        ProviderError: No API key for Anthropic's own API (its host `api.anthropic.com`,
            whatever the port, path or letter case), a key no HTTP header can carry
            (whitespace such as a trailing newline, control or non-ASCII characters; a key
            of whitespace only is no key), or a base URL that is not an http(s) URL (one
            written without its scheme, say).
        ValueError: A timeout, price or `max_tokens` is out of range, a timeout or price is
            no number (None, a str or a bool), or `max_tokens` is no int.
        TypeError: `stop` is neither a str nor an iterable of str, or `retry`, `budget`,
            `metrics` or `http_client` is neither None nor what it must be (a
            `RetryPolicy`, a `CostBudget`, a `RuntimeMetrics`, an `httpx.AsyncClient`).
    """

    def __init__(
        self,
        api_key: str | SecretText | None = None,
        base_url: str | UrlObject | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        stop: str | Sequence[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        budget: CostBudget | None = None,
        metrics: RuntimeMetrics | None = None,
        input_cost_per_million: float = 0.0,
        output_cost_per_million: float = 0.0,
        cached_input_cost_per_million: float | None = None,
        cache_write_cost_per_million: float | None = None,
        cache_write_1h_cost_per_million: float | None = None,
    ) -> None:
        max_tokens = None if max_tokens is None else check_count("max_tokens", max_tokens, 1)
        # A number before the cache prices are made of it (`1.25 * None` is a bare TypeError).
        input_cost_per_million = check_real("input_cost_per_million", input_cost_per_million)
        api_key = given_or_env(text_setting("api_key", api_key), "ANTHROPIC_API_KEY")
        base_url = text_setting("base_url", base_url, url=True)
        base_url = check_base_url(
            "Anthropic",
            (base_url or "").strip()
            or env_setting("ANTHROPIC_BASE_URL")
            or DEFAULT_ANTHROPIC_BASE_URL,
        )
        # By host, as `openai_endpoint` does: `https://API.anthropic.com:443/v1` is the API too.
        # A trailing dot names the same host (a fully qualified name).
        host = (urlsplit(base_url).hostname or "").rstrip(".")
        if api_key is None and host == _ANTHROPIC_API_HOST:
            raise ProviderError(
                "no Anthropic API key: pass api_key= or set ANTHROPIC_API_KEY "
                "(or point base_url at a proxy that adds it)"
            )
        self.model = model_setting(model, "ANTHROPIC_MODEL", DEFAULT_ANTHROPIC_MODEL)
        """Model used when a call names none."""
        self._max_tokens = max_tokens  # None: none set (see `max_tokens`)
        self.stop = check_stop(stop)
        """Stop sequences sent with every call."""
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key is not None:
            headers["x-api-key"] = api_key
        self._transport = HttpTransport(
            name="Anthropic",
            base_url=base_url,
            headers=headers,
            secret=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            retry=retry,
            http_client=http_client,
            budget=budget,
            metrics=metrics,
            input_cost_per_million=input_cost_per_million,
            output_cost_per_million=output_cost_per_million,
            cached_input_cost_per_million=(
                CACHE_READ_PRICE_FACTOR * input_cost_per_million
                if cached_input_cost_per_million is None
                else cached_input_cost_per_million
            ),
            cache_write_cost_per_million=(
                CACHE_WRITE_PRICE_FACTOR * input_cost_per_million
                if cache_write_cost_per_million is None
                else cache_write_cost_per_million
            ),
            cache_write_1h_cost_per_million=(
                CACHE_WRITE_1H_PRICE_FACTOR * input_cost_per_million
                if cache_write_1h_cost_per_million is None
                else cache_write_1h_cost_per_million
            ),
        )

    # ------------------------------------------------------------------ LlmProvider
    async def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> ChatResponse:
        """Sends a conversation (and optional tools) and returns the whole response.

        Args:
            messages: The conversation so far; system messages become the `system` prompt
                (after a `system=` passed, as a text block of their own).
            tools: Tools the model may call.
            model: Model for this call (default: the provider's).
            **params: Other Messages API parameters, sent as given (`max_tokens`,
                `temperature`, `tool_choice`, `thinking`, ...); `stop=` is sent as
                `stop_sequences`, but for those that are only whitespace. `system=` (a str
                or a list of blocks, such as those marked with `cache_control` to cache
                the prompt) is sent as the `system` prompt, followed by the system
                messages' text.

        Raises:
            ProviderError: The call failed, the response is an error (under any status) or
                not a message, or the last
                user message is empty (the API accepts no empty message; other empty
                messages are left out). `CutOffArgumentsError` when the reply was cut off by
                the token limit (stop reason `max_tokens`) in its last block, a tool call:
                the API sends such a call with the input it had, which may lack arguments
                still to come (the reply's usage is charged all the same).
                `UnreadableArgumentsError`, which holds the reply, when a tool call's input
                holds a number JSON has none for (a NaN, an infinity).
            BudgetExceededError: The budget is spent.
            ValueError: `params` overrides a field the provider sets itself, its
                `max_tokens` is no int of at least 1, or a value of the request is NaN or
                infinite (JSON has no such numbers).
            TypeError: `messages` or `tools` is not an iterable of `Message` /
                `ToolDefinition`, a tool call in a message is not a `ToolCall` with a dict
                of arguments, a message's content is no str or its reasoning no list of
                blocks, `stop` is neither a str nor an iterable of str, or `system` is
                neither a str nor a list of blocks: nothing is sent.
        """
        body = self._body(messages, tools, model, params, stream=False)
        retried: list[Usage] = []  # failed attempts the server billed
        raw = await self._transport.post_json("/v1/messages", body, self._check_reply, retried)
        message = parse_json(_Message, raw, "Anthropic response")
        usage = parse_usage(_Usage, message.usage, "Anthropic response").usage()
        self._transport.charge_reply(usage, retried)  # first, as a streamed reply is charged
        if retried:  # the call paid for them too
            usage = usage_sum([*retried, usage])
        stop_reason = message.stop_reason
        last = message.content[-1] if message.content else None
        if stop_reason in TRUNCATION_STOP_REASONS and last is not None and last.type == "tool_use":
            # The API closes the tool_use block the token limit cut with the input it had:
            # an object, whole to look at, that lacks the arguments still to come (a file
            # write without its content, or optional ones its tool would fill in with their
            # defaults: `dry_run=False`). A tool would run on it; as a streamed reply's cut
            # call is, it is refused.
            error = _cut_off_call(last, stop_reason, self._transport)
            error.usage = usage
            raise error
        text: list[str] = []
        tool_uses: list[_Block] = []
        reasoning: list[dict[str, Any]] = []
        order = _BlockOrder()
        for block in message.content:
            if block.type == "text":
                text.append(block.text or "")
                order.add("text", len(clean_text(block.text or "")))
            elif block.type == "tool_use":
                tool_uses.append(block)
                order.add("tool_use")
            elif block.type in _REASONING_BLOCKS:
                reasoning.append(block.as_received())
                order.add(block.type)
        # Ids given out as a streamed reply's are (`ToolCallIds`), and the fields cleaned as a
        # streamed call's are (JSON may escape half a pair).
        call_ids = ToolCallIds().give_all([block.id for block in tool_uses])
        redact = self._transport.redact
        calls = [
            ToolCall(
                call_id,
                clean_text(block.name or ""),
                *read_arguments(
                    # A `null` input is no object, as the text `null` streamed is not; none
                    # sent is no arguments.
                    _finite_input,
                    block.input if "input" in block.model_fields_set else {},
                    block.name,
                    redact,
                ),
            )
            for call_id, block in zip(call_ids, tool_uses, strict=True)
        ]
        response = ChatResponse(
            text=clean_text("".join(text)),
            tool_calls=calls,
            usage=usage,
            stop_reason=stop_reason,
            model=message.model,
            reasoning=order.kept(reasoning),
        )
        return checked_arguments(response, self._transport.redact)

    @property
    def max_tokens(self) -> int:
        """Most tokens per reply unless a call says otherwise.

        `DEFAULT_MAX_TOKENS` when none was set, then raised beyond a call's thinking budget.

        Raises:
            ValueError: Set to no int of at least 1.
        """
        return DEFAULT_MAX_TOKENS if self._max_tokens is None else self._max_tokens

    @max_tokens.setter
    def max_tokens(self, value: int) -> None:
        self._max_tokens = check_count("max_tokens", value, 1)

    def _check_reply(self, raw: bytes) -> None:
        error = error_of_reply(raw, _Error, self._transport.redact)
        if error is not None:  # an error sent with status 200
            raise _stream_error(error, self._transport)

    def chat_stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams a response as `TextDelta` / `ToolCallDelta` events, ending with `StreamEnd`.

        Usage the stream reported before it failed (or was closed) is charged all the same
        (and, when closed or cancelled, handed to the runtime's run that made the call).
        Half a surrogate pair that ends a piece of text (an emoji a server cut in two) waits
        for its other half in the next one; a half alone becomes U+FFFD (see `clean_text`).
        So it does in the pieces of a tool call's arguments, and a call's id and name are
        cleaned as they come: no delta holds half a pair (two ids that clean alike are told
        apart, see `ToolCallIds`). Arguments are as for `chat`.

        Raises:
            ProviderError: From the iterator: the stream failed (error status, a reply that
                is no event stream, `error` event, malformed event, timeout, no content for
                `timeout` seconds, connection lost, or no `message_stop`), or a tool
                call's arguments are not a JSON object (`CutOffArgumentsError` when the
                reply was cut off by the token limit, stop reason `max_tokens`, else
                `UnreadableArgumentsError` in place of the `StreamEnd`, holding the reply;
                the reply's usage is charged all the same). Raised at once, not from the
                iterator, when the last user message is empty.
            BudgetExceededError: The budget is spent.
            ValueError: As for `chat`, raised at once.
            TypeError: As for `chat`, raised at once.
        """
        content = request_body(self._body(messages, tools, model, params, stream=True))
        return self._transport.retry_stream(lambda: self._stream_once(content))

    # ------------------------------------------------------------------ wire format
    def _body(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None,
        model: str | None,
        params: dict[str, Any],
        *,
        stream: bool,
    ) -> dict[str, Any]:
        reserved = _RESERVED_PARAMS.intersection(params)
        if reserved:
            raise ValueError(f"parameters set by the provider cannot be passed: {sorted(reserved)}")
        messages, tools = check_conversation(messages, tools)
        system, wire_messages = _wire_messages(messages)
        body: dict[str, Any] = {
            # Stripped as the provider's own is (`model_setting`): blank is none given.
            "model": (model.strip() if isinstance(model, str) else model) or self.model,
            "max_tokens": self.max_tokens,
            "messages": wire_messages,
        }
        given_system = params.pop("system", None)
        if isinstance(given_system, str) and not given_system.strip():
            given_system = None  # a blank text block, which the API refuses
        if given_system is not None:  # blocks, to mark some with `cache_control`
            body["system"] = _system_prompt(given_system, system)
        elif system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        stops = check_stop(params.pop("stop") if "stop" in params else self.stop)  # a call's wins
        if stops:
            # The API refuses a sequence of whitespace only ("\n"): such a one is not sent.
            stops = [s for s in stops if s.strip()]
            if stops:
                body["stop_sequences"] = stops
        body.update(params)
        if "max_tokens" in params:  # checked as the constructor's: the API needs a count
            body["max_tokens"] = check_count("max_tokens", params["max_tokens"], 1)
        elif self._max_tokens is None:  # none set: room beyond a thinking budget
            budget = _thinking_budget(params.get("thinking"))
            if budget is not None and budget >= self.max_tokens:  # else a 400: the reply beyond
                body["max_tokens"] = budget + self.max_tokens
        if stream:
            body["stream"] = True
        return body

    async def _stream_once(self, content: bytes) -> AsyncIterator[StreamEvent]:
        text = StreamedText()
        tool_blocks: dict[int, PartialToolCall] = {}  # by content block index
        ids = ToolCallIds()
        server_blocks: set[int] = set()  # server-side tool calls (web search, MCP): skipped
        reasoning: dict[int, dict[str, Any]] = {}  # thinking blocks, by content block index
        thoughts: dict[int, list[str]] = {}  # the pieces of each thinking block's text
        kinds: dict[int, str] = {}  # the kind of each text, tool_use or reasoning block
        text_starts: dict[int, int] = {}  # where each text block starts in the text
        stop_reason: str | None = None
        model: str | None = None
        usage = Usage()
        owed = False  # usage reported and not charged yet
        reported = False  # an event reported the usage
        done = False
        began = False  # message_start came (a bare message_stop holds no message)
        progress = StreamProgress()
        events = self._transport.post_sse(
            "/v1/messages", content, ended=lambda: done, check=self._check_reply, progress=progress
        )
        try:
            # Closing the events cuts a body kept open at the end.
            async with contextlib.aclosing(events):
                async for sse in events:
                    # A proxy's error event (its data may be no event), or an error object
                    # with no event type, as a gateway may send one.
                    if sse.event == "error" or error_in_body(sse.data, _Error) is not None:
                        raise _error_event(sse.data, self._transport)
                    event = parse_json(_Event, sse.data, "Anthropic stream event")
                    kind = event.type
                    if kind == "content_block_delta":
                        delta = event.delta
                        if delta is None:
                            raise ProviderError("malformed Anthropic stream event: delta missing")
                        for piece in (
                            delta.text,
                            delta.partial_json,
                            delta.thinking,
                            delta.signature,
                        ):
                            progress.add(piece)
                        if delta.type not in _READ_DELTAS:  # one not read here (citations)
                            progress.step(sse.data)
                        if delta.type == "text_delta" and delta.text:
                            piece = text.add(delta.text)
                            if piece:
                                yield TextDelta(piece)
                        elif delta.type == "input_json_delta" and delta.partial_json:
                            block = tool_blocks.get(event.index)
                            if block is None:
                                if event.index in server_blocks:
                                    continue
                                raise ProviderError(
                                    f"Anthropic stream sent input JSON for block {event.index}, "
                                    "which is not a tool_use block"
                                )
                            piece = block.add_arguments(delta.partial_json)
                            if piece:
                                yield ToolCallDelta(block.index, None, None, piece)
                        elif delta.type == "thinking_delta" and delta.thinking:
                            pieces = thoughts.get(event.index)
                            if pieces is not None:
                                pieces.append(delta.thinking)
                        elif delta.type == "signature_delta" and delta.signature is not None:
                            thinking = reasoning.get(event.index)
                            if thinking is not None:
                                thinking["signature"] = delta.signature  # sent whole, once
                    elif kind == "content_block_start":
                        progress.step(sse.data)
                        start = event.content_block
                        if event.index in tool_blocks:
                            # Read on, the call given out would be missing from the reply, or
                            # take the next block's input as its own.
                            raise ProviderError(
                                "malformed Anthropic stream event: content block "
                                f"{event.index}, a tool call's, started twice"
                            )
                        if start is not None and start.type in _ORDERED_BLOCKS:
                            kinds[event.index] = start.type
                            if start.type == "text":  # measured as cleaned (`StreamedText`)
                                text_starts[event.index] = text.length
                        if start is not None and start.type == "tool_use":
                            ordinal = len(tool_blocks)
                            # Sent whole: cleaned as they are (JSON may escape half a pair).
                            call_id = start.id and ids.give(start.id, ordinal)
                            name = start.name and clean_text(start.name)
                            tool_blocks[event.index] = PartialToolCall(
                                ordinal, call_id, name, initial=start.input
                            )
                            # An input sent whole here is given out once the block stops,
                            # unless input_json_delta pieces came (`give_initial`).
                            yield ToolCallDelta(ordinal, call_id, name, "")
                        elif start is not None and start.type == "text" and start.text:
                            progress.add(start.text)
                            piece = text.add(start.text)
                            if piece:
                                yield TextDelta(piece)
                        elif start is not None and start.type.endswith("tool_use"):
                            # server_tool_use, mcp_tool_use: their input streams as JSON too.
                            server_blocks.add(event.index)
                        elif start is not None and start.type in _REASONING_BLOCKS:
                            received = start.as_received()
                            reasoning[event.index] = received
                            if start.type == "thinking":
                                thoughts[event.index] = [received.get("thinking") or ""]
                    elif kind == "message_start":
                        began = True
                        progress.step_once(sse.data)
                        if event.message is not None:
                            model = event.message.model
                            if event.message.usage is not None:
                                started = parse_usage(
                                    _Usage, event.message.usage, "Anthropic stream"
                                )
                                usage = started.usage()
                                owed = reported = True
                    elif kind == "message_delta":
                        progress.step_once(sse.data)
                        if event.delta is not None and event.delta.stop_reason is not None:
                            stop_reason = event.delta.stop_reason
                        if event.usage is not None:
                            # Counts in message_delta are cumulative for the whole message;
                            # those it leaves out (or null) stay as message_start gave them.
                            delta_usage = parse_usage(_Usage, event.usage, "Anthropic stream")
                            usage = delta_usage.usage(usage)
                            owed = reported = True
                    elif kind == "content_block_stop":
                        progress.step_once(sse.data)
                        block = tool_blocks.get(event.index)
                        if block is not None:
                            piece = block.give_initial()
                            if piece:
                                yield ToolCallDelta(block.index, None, None, piece)
                    elif kind == "message_stop":
                        done = True
                        break
                    elif kind == "error":
                        raise _error_event(sse.data, self._transport)
                    # ping and later event types carry nothing we need.
            # The events are closed here: the body was finished at message_stop (briefly, or
            # cut, see `post_sse`) before the last events go out. A consumer that stops at
            # StreamEnd leaves nothing to read as its loop ends, where the loop would close
            # httpx's generators while that read runs them (each failure logged).
            if not done:
                raise ProviderError("Anthropic stream ended before message_stop", retryable=True)
            if not began:  # a proxy's or a server's failure, not the model's empty reply
                raise ProviderError(
                    "Anthropic stream held no message: it ended with no message_start",
                    retryable=True,
                )
            rest = text.finish()
            if rest:
                yield TextDelta(rest)
            for block in tool_blocks.values():
                last = block.finish()
                if last is not None:
                    yield last
            # Charged first: the reply arrived whole and was billed, even if its tool calls
            # fail.
            owed = False
            self._transport.charge_reply(usage)
            for index, pieces in thoughts.items():
                reasoning[index]["thinking"] = clean_text("".join(pieces))
            response = ChatResponse(
                text=text.text,
                # Built once the stream ended: every id received is known (`ToolCallIds`).
                tool_calls=[
                    call.build(ids, stop_reason, self._transport.redact)
                    for call in tool_blocks.values()
                ],
                usage=usage,
                stop_reason=stop_reason,
                model=model,
                reasoning=_BlockOrder.of(kinds, text_starts, text.length).kept(
                    list(reasoning.values())
                ),
            )
            yield StreamEnd(checked_arguments(response, self._transport.redact))
        except BaseException as error:
            # Failed, cancelled or closed after the usage arrived: it was billed all the same
            # (charged here, or above before its tool calls failed).
            if owed:
                self._transport.charge_unfinished(usage)
                if not isinstance(error, ProviderError):  # closed or cancelled: no error holds it
                    bill_caller(usage)
            if reported and isinstance(error, ProviderError):
                error.usage = usage
            raise


def _wire_messages(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Splits out the system prompt and builds alternating user / assistant messages.

    Tool results become `tool_result` blocks of a user message, with `is_error` for a failed
    tool (and text, as the API refuses an empty error). An assistant message's reasoning
    blocks come first in its content, as received. Content None is empty text (a tool result
    of none is sent as ""). A message with no content block (empty or blank text, no tool
    calls, no reasoning) is left out, and so is a blank system message: the API refuses
    empty messages and blank text blocks. That includes an empty last assistant message,
    which would only prefill nothing. An assistant message of reasoning alone is left out
    too: the API refuses one whose last block is a thinking block. A last assistant message
    (a prefill) that ends in text has that text's trailing whitespace cut: the API refuses a
    prefill that ends in whitespace. Consecutive messages of one role, those left out or
    not, are merged, as the API requires the roles to alternate: in a merged user message
    the tool results come before any text, and in a merged assistant message the reasoning
    blocks come first, as the API requires of both. A conversation that would open with an
    assistant message opens with `CONVERSATION_START` from the user, and a tool call id an
    earlier message already sent is suffixed (`_2`), its results with it: the API refuses
    any other first role, and a request that repeats a `tool_use` id. So is an id with a
    character the API refuses in one (another provider's, in a history begun there) sent
    with `_` in its place.

    Raises:
        ProviderError: The last user message is empty, so that leaving it out would send
            nothing, or make the assistant message before it a prefill to continue.
    """
    system: list[str] = []
    wire: list[dict[str, Any]] = []
    last_role = ""
    used_ids: set[str] = set()  # tool_use ids sent so far
    sent_as: dict[str, str] = {}  # the last assistant message's call ids, as sent
    for n, message in enumerate(messages):
        # None is no content (`check_conversation` takes it): it failed below as a bare
        # TypeError or AttributeError, or went out as a tool result of `"content": null`.
        said = _checked_text(n, message)
        role = message.role
        blocks: list[dict[str, Any]]
        if role == "system":
            if said.strip():  # a blank one went out as a blank text block the API refuses
                system.append(said)
            continue
        last_role = role
        if role == "tool":
            role = "user"
            call_id = message.tool_call_id or ""
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": sent_as.get(call_id) or _wire_id(call_id),
                "content": said,
            }
            if message.is_error:
                result["is_error"] = True
                if not said.strip():
                    result["content"] = _TOOL_FAILED
            blocks = [result]
        else:
            blocks = [{"type": "text", "text": said}] if said.strip() else []
            if message.tool_calls:
                sent_as = _unique_ids(message.tool_calls, used_ids)
                blocks.extend(
                    {
                        "type": "tool_use",
                        "id": sent_as[call.id],
                        "name": call.name,
                        "input": call.arguments,
                    }
                    for call in message.tool_calls
                )
            if not blocks:
                # Reasoning alone is left out too: the API refuses an assistant message
                # whose last block is a thinking block.
                continue
            # An OpenAI-compatible reply's reasoning (`OPENAI_COMPATIBLE_REASONING`) is no
            # block of this API's: a history begun with another provider sends it.
            reasoning = [
                b for b in message.reasoning if b.get("type") not in OPENAI_COMPATIBLE_REASONING
            ]
            order = next((b for b in reasoning if b.get("type") == BLOCK_ORDER), None)
            if order is not None:
                reasoning = [b for b in reasoning if b.get("type") != BLOCK_ORDER]
            if reasoning and role == "assistant":
                if wire and wire[-1]["role"] == "assistant":
                    _merge_reasoning(wire[-1]["content"], reasoning, blocks)
                    continue
                if order is None:
                    blocks[:0] = reasoning
                else:  # interleaved thinking: as the reply had its blocks
                    blocks = _in_received_order(order, reasoning, said, blocks)
        if wire and wire[-1]["role"] == role:
            merged = wire[-1]["content"]
            if last_role == "tool" and merged[-1]["type"] != "tool_result":
                # Tool results go before any text of their message: the API takes text
                # before them as the turn after the tool calls, which then lack results.
                at = next(n for n, block in enumerate(merged) if block["type"] != "tool_result")
                merged[at:at] = blocks
            else:
                merged.extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    if last_role == "user" and (not wire or wire[-1]["role"] != "user"):
        raise ProviderError(
            "the last user message is empty, and the Anthropic API accepts no empty message: "
            "send some text"
        )
    if wire and wire[0]["role"] == "assistant":  # a greeting first, or a blank turn left out
        wire.insert(0, {"role": "user", "content": [{"type": "text", "text": CONVERSATION_START}]})
    if wire and wire[-1]["role"] == "assistant":  # a prefill: it must not end in whitespace
        content = wire[-1]["content"]
        last = content[-1]
        text = last.get("text") if last.get("type") == "text" else None
        if isinstance(text, str) and text != text.rstrip():
            content[-1] = {**last, "text": text.rstrip()}  # a copy: never the caller's block
    return "\n\n".join(system), wire


_NOT_IN_ID = re.compile(r"[^a-zA-Z0-9_-]")
"""What a `tool_use` id may not hold: the API takes `^[a-zA-Z0-9_-]+$` only."""


def _wire_id(call_id: str) -> str:
    """`call_id` as the API takes one, each character it refuses as `_`.

    Another provider's ids hold such (vLLM's Kimi writes `functions.lookup:0`), in a
    history begun there.
    """
    return _NOT_IN_ID.sub("_", call_id) or "call"


def _unique_ids(calls: Sequence[ToolCall], used: set[str]) -> dict[str, str]:
    """The id each of an assistant message's calls is sent under, by the call's own id.

    Its own (as `_wire_id` writes it), unless an earlier message of the conversation sent
    it (then suffixed `_2`, `_3`...), so that the request repeats no `tool_use` id. The ids
    sent join `used`.
    """
    sent_as: dict[str, str] = {}
    for call in calls:
        if call.id in sent_as:  # twice in one message: the runtime never sends that
            continue
        base = _wire_id(call.id)
        given, n = base, 1
        while given in used:
            n += 1
            given = f"{base}_{n}"
        used.add(given)
        sent_as[call.id] = given
    return sent_as


def _system_prompt(given: object, from_messages: str) -> str | list[dict[str, Any]]:
    """The `system` parameter: the one a call passed, then its system messages' text.

    Args:
        given: A call's `system=`: a str, or a list of text blocks (those of a prompt to
            cache carry `cache_control`), sent as given.
        from_messages: The text of the conversation's system messages ("" for none), sent
            as a text block after `given`'s.

    Raises:
        TypeError: `given` is neither a str nor a list of blocks (dicts).
    """
    if isinstance(given, str):
        if not from_messages:
            return given
        blocks = [{"type": "text", "text": given}]
    elif isinstance(given, list) and all(isinstance(block, dict) for block in given):
        blocks = list(given)  # a copy: the caller's list is not extended
    else:
        raise TypeError(
            "system must be a str or a list of system prompt blocks (dicts such as "
            f'{{"type": "text", "text": ...}}), got {type(given).__name__}'
        )
    if from_messages:
        blocks.append({"type": "text", "text": from_messages})
    return blocks


def _thinking_budget(thinking: Any) -> int | None:
    """The `budget_tokens` of a `thinking` parameter of extended thinking (None: none)."""
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if type(budget) is int:
            return budget
    return None


_ORDERED_BLOCKS = frozenset(("text", "tool_use")) | _REASONING_BLOCKS
"""The blocks whose order `BLOCK_ORDER` keeps (server tools' are not sent back)."""


class _BlockOrder:
    """The order of a reply's text, tool_use and reasoning blocks (see `BLOCK_ORDER`)."""

    __slots__ = ("blocks", "text_lengths")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.text_lengths: list[int] = []

    @classmethod
    def of(cls, kinds: dict[int, str], text_starts: dict[int, int], length: int) -> _BlockOrder:
        """A streamed reply's order, from its blocks' kinds by content block index.

        `text_starts` says where each text block started in the reply's text (`length`
        long). Only text blocks add to the text: each one runs to the next one's start.
        """
        order = cls()
        starts = sorted(text_starts.items())
        ends = {index: end for (index, _), (_, end) in itertools.pairwise(starts)}
        for index in sorted(kinds):
            start = text_starts.get(index, 0)
            order.add(kinds[index], ends.get(index, length) - start)
        return order

    def add(self, kind: str, text_length: int = 0) -> None:
        """Adds the next block: its kind, and for a text block its length."""
        self.blocks.append(kind)
        if kind == "text":
            self.text_lengths.append(text_length)

    def kept(self, reasoning: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`reasoning`, with the order entry when a reasoning block came after another one."""
        seen_other = False
        for kind in self.blocks:
            if kind not in _REASONING_BLOCKS:
                seen_other = True
            elif seen_other:
                entry = {"type": BLOCK_ORDER, "blocks": self.blocks}
                return [*reasoning, {**entry, "text_lengths": self.text_lengths}]
        return reasoning


def _in_received_order(
    order: dict[str, Any],
    reasoning: list[dict[str, Any]],
    said: str,
    blocks: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """An assistant message's `reasoning` and `blocks` in the order its reply had them.

    `blocks` are its text block, then its tool_use blocks; `order` is a `BLOCK_ORDER` entry.
    Its text is split as the reply's text blocks were, when it is still that text (their
    lengths add up to it); else it goes whole where the first was. What the order has no
    place for (an entry from elsewhere, or calls a hook added) goes after the rest; an
    entry that is no order (a record tampered with) leaves the reasoning first.
    """
    kinds, lengths = order.get("blocks"), order.get("text_lengths")
    if not (
        isinstance(kinds, list)
        and all(isinstance(kind, str) for kind in kinds)
        and isinstance(lengths, list)
        and all(type(n) is int and n >= 0 for n in lengths)
    ):
        return [*reasoning, *blocks]
    uses = iter(b for b in blocks if b["type"] == "tool_use")
    thoughts = iter(reasoning)
    texts: list[str] | None = None
    if sum(lengths) == len(said) and lengths.count(0) < len(lengths):
        texts, start = [], 0
        for n in lengths:
            texts.append(said[start : start + n])
            start += n
    pieces = iter(texts or ())
    ordered: list[dict[str, Any]] = []
    text_placed = not said.strip()
    for kind in kinds:
        if kind in _REASONING_BLOCKS:
            ordered.extend(itertools.islice(thoughts, 1))
        elif kind == "tool_use":
            ordered.extend(itertools.islice(uses, 1))
        elif kind == "text" and texts is not None:
            piece = next(pieces, "")
            if piece.strip():  # the API refuses a blank text block
                ordered.append({"type": "text", "text": piece})
            text_placed = True
        elif kind == "text" and not text_placed:
            ordered.append({"type": "text", "text": said})
            text_placed = True
    if not text_placed:  # text the reply had not: before its calls
        at = next((n for n, b in enumerate(ordered) if b["type"] == "tool_use"), len(ordered))
        ordered.insert(at, {"type": "text", "text": said})
    ordered.extend(thoughts)
    ordered.extend(uses)
    return ordered


def _merge_reasoning(
    merged: list[dict[str, Any]],
    reasoning: Sequence[dict[str, Any]],
    blocks: list[dict[str, Any]],
) -> None:
    """Adds an assistant message's reasoning and blocks to the assistant message before it.

    The reasoning goes after that message's own reasoning, before its other blocks: the API
    refuses an assistant message with thinking blocks that does not start with them.
    """
    at = 0
    while at < len(merged) and merged[at].get("type") in _REASONING_BLOCKS:
        at += 1
    merged[at:at] = reasoning
    merged.extend(blocks)


def _checked_text(n: int, message: Message) -> str:
    """A message's text ("" for None content), refusing what `_wire_messages` cannot send.

    Content that is no text (content parts are OpenAI's) failed as a bare `AttributeError`;
    reasoning that is no list of blocks (a str) was spread into the turn a character a
    block, a request the API refuses.

    Raises:
        TypeError: Naming the message (`messages[n]`) and the field.
    """
    content = message.content
    if content is not None and not isinstance(content, str):
        raise TypeError(f"messages[{n}].content must be a str, got {type(content).__name__}")
    reasoning = message.reasoning
    if (
        not isinstance(reasoning, Sequence)
        or isinstance(reasoning, (str, bytes))
        or not all(isinstance(block, dict) for block in reasoning)
    ):
        raise TypeError(
            f"messages[{n}].reasoning must be a list of the reply's reasoning blocks (dicts, "
            "as ChatResponse.reasoning holds them)"
        )
    return content or ""


def _cut_off_call(
    block: _Block, stop_reason: str, transport: HttpTransport
) -> CutOffArgumentsError:
    """The error for a whole reply whose last block, a tool call, the token limit cut off."""
    name = transport.redact(clean_text(block.name or ""))[:200]
    limit, advice = token_limit(stop_reason)
    error = CutOffArgumentsError(
        f"the reply was cut off by {limit} (stop reason {stop_reason!r}) inside the "
        f"arguments of tool call {name!r} (its input may lack arguments still to come): "
        f"{advice}"
    )
    error.stop_reason = stop_reason
    return error


def _error_event(data: bytes, transport: HttpTransport) -> ProviderError:
    """The error for an `error` event, read as OpenAI's are (`openai._reported_error`).

    `{"type": "error", "error": {...}}` as the API sends it, with a null message or none;
    what does not read as an error object (plain text from a proxy, fields of unexpected
    types) is still the server's message, an `api_error`, never a malformed-event error.
    """
    error = error_in_body(data, _Error, known=True)  # a bare error object is one too
    if error is None:
        # An event's data is never cut short.
        error = _Error(message=error_message(data, transport.redact, truncated=False))
    return _stream_error(error, transport)


def _stream_error(error: _Error, transport: HttpTransport) -> ProviderError:
    """The error for an `error` event (e.g. `overloaded_error` mid-stream).

    Also for an error body sent with status 200. Retryable when its type stands for a
    retryable status (`overloaded_error`, `api_error`, `rate_limit_error`, ...). The message
    is redacted and cleaned (`clean_text`).
    """
    status = _ERROR_STATUS.get(error.type)
    message = error.message or "no error message"
    return ProviderError(
        transport.redact(clean_text(f"Anthropic API error: {error.type}: {message}")),
        status=status,
        retryable=status is not None and is_retryable_status(status),
    )


def _finite_input(arguments: Any, name: str | None, redact: Callable[[str], str]) -> dict[str, Any]:
    """A `tool_use` block's input, cleaned (`clean_json`) once checked to be a finite object.

    Raises:
        ProviderError: It is not an object, or holds a NaN or an infinity
            (`check_finite_arguments`).
    """
    return clean_json(check_finite_arguments(arguments, name, redact))
