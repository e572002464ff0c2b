"""`OpenAIProvider`: the Chat Completions API, and any server that speaks it.

Works with OpenAI itself and with OpenAI-compatible servers (vLLM, Ollama, llama.cpp,
LM Studio) through `base_url`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from llm_agent_runtime.errors import ProviderError, is_retryable_status
from llm_agent_runtime.orchestration._checks import check_flag
from llm_agent_runtime.providers import _is_openai_api
from llm_agent_runtime.providers._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    Driven,
    HttpProvider,
    HttpTransport,
    PartialToolCall,
    StreamedText,
    StreamProgress,
    ToolCallIds,
    check_base_url,
    check_conversation,
    check_stop,
    clean_text,
    decode_arguments,
    env_setting,
    error_in_body,
    error_message,
    error_of_reply,
    given_or_env,
    json_text,
    model_setting,
    parse_json,
    parse_usage,
    read_arguments,
    request_body,
    text_setting,
)
from llm_agent_runtime.providers.base import (
    EXTRA_CONTENT,
    REASONING,
    REASONING_CONTENT,
    REASONING_DETAILS,
    ChatResponse,
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
    usage_sum,
)

if TYPE_CHECKING:
    import httpx

    from llm_agent_runtime._core import RuntimeMetrics
    from llm_agent_runtime.orchestration.budget import CostBudget
    from llm_agent_runtime.orchestration.retry import RetryPolicy
    from llm_agent_runtime.providers._http import SecretText, UrlObject

__all__ = [
    "DEFAULT_OPENAI_BASE_URL",
    "DEFAULT_OPENAI_MODEL",
    "MAX_STOP_SEQUENCES",
    "OpenAIProvider",
    "openai_endpoint",
]

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
"""The OpenAI API root (`OPENAI_BASE_URL` overrides it)."""
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
"""Model used when neither the call nor the provider names one (`OPENAI_MODEL` overrides it)."""

MAX_STOP_SEQUENCES = 4
"""Most stop sequences the Chat Completions API takes; only the first ones are sent."""

_RESERVED_PARAMS = frozenset(("messages", "model", "stream", "stream_options", "tools"))
_DONE = b"[DONE]"
_DONE_LINES = (b"data: [DONE]", b"data:[DONE]")  # [DONE] as its `data:` line
_REFUSAL = "refusal"
"""Stop reason of a reply that carries a refusal (the Anthropic API's own name for it)."""
_BUSY = frozenset(("server_error", "rate_limit_exceeded", "overloaded_error"))
"""Error types and codes that say the server is busy or rate-limited: worth another attempt."""


def openai_endpoint(
    name: str, api_key: str | SecretText | None, base_url: str | UrlObject | None
) -> tuple[str | None, str]:
    """The API key and base URL a client of an OpenAI-compatible API uses.

    The one place both are resolved, for `OpenAIProvider` and `OpenAIEmbedder` alike: the
    key is `api_key`, else `OPENAI_API_KEY`; the base URL is `base_url`, else
    `OPENAI_BASE_URL`, else `DEFAULT_OPENAI_BASE_URL` (blank values count as unset), so a
    key meant for the server `OPENAI_BASE_URL` names is never sent to OpenAI's own API.

    Args:
        name: Names the client in errors, e.g. "OpenAI".
        api_key: The key given to the client (None or blank: the environment's).
        base_url: The base URL given to the client (None or blank: the environment's).

    Returns:
        The key (None when there is none: a local server may need none) and the base URL,
        stripped, without a trailing slash, its user info (if any) still in it: the client
        sends that as basic auth (`move_user_info`).

    Raises:
        ProviderError: The base URL is not an http(s) URL, or it is OpenAI's own API (its
            host `api.openai.com`) and there is no key.
    """
    api_key = given_or_env(text_setting("api_key", api_key), "OPENAI_API_KEY")
    base_url = text_setting("base_url", base_url, url=True)
    base_url = check_base_url(
        name,
        (base_url or "").strip() or env_setting("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL,
    )
    if api_key is None and _is_openai_api(base_url):
        raise ProviderError(
            f"no {name} API key: pass api_key= or set OPENAI_API_KEY "
            "(or point base_url / OPENAI_BASE_URL at a local OpenAI-compatible server)"
        )
    return api_key, base_url


# ---------------------------------------------------------------------- wire types
class _FunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @field_validator("arguments", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # llama.cpp (`--tool-args-object`) and TGI send the arguments as a JSON object, not
        # its text: written back as text, they are read as any call's (a list then fails
        # the call as arguments that are no object, not the whole reply).
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return value


class _ToolCall(BaseModel):
    id: str | None = None  # some compatible servers (NVIDIA NIM, StepFun) leave it out
    function: _FunctionCall
    extra_content: Any = None  # Gemini's thought signature: kept (see `_kept_reasoning`)


class _AssistantMessage(BaseModel):
    content: str | list[Any] | None = None  # parts: see `_text_of`
    refusal: str | None = None
    reasoning_content: Any = None  # DeepSeek's, older vLLM's: kept (see `_kept_reasoning`)
    reasoning: Any = None  # vLLM's, Ollama's: kept too
    extra_content: Any = None  # Gemini's: kept too
    reasoning_details: Any = None  # OpenRouter's: kept too
    tool_calls: list[_ToolCall] | None = None
    function_call: _FunctionCall | None = None  # the legacy `functions` form of a call


def _no_blank_reason(reason: object) -> object:
    return reason if reason != "" else None


# Some compatible servers send "" where OpenAI sends null, in every chunk: taken as a
# reason, a stream cut before `[DONE]` passed for a whole reply.
_FinishReason = Annotated[str | None, BeforeValidator(_no_blank_reason)]


class _Choice(BaseModel):
    # Gemini's endpoint at times leaves the message out: an empty one, which the loop
    # reads by its finish reason (cut off, or no answer: re-prompted if so configured).
    message: _AssistantMessage = Field(default_factory=_AssistantMessage)
    finish_reason: _FinishReason = None


class _Usage(BaseModel):
    # Some compatible servers send null counts (or no usage at all): 0 tokens then. A count
    # out of range (negative, or past 2**63) is 0 too: `parse_usage` drops it.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: Any = None  # only read: one of another type loses no other count
    # Read by `usage`: details of an unexpected shape (compatible servers) lose no counts.
    prompt_tokens_details: Any = None
    completion_tokens_details: Any = None

    def usage(self) -> Usage:
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens or 0
        # Tokens in the total only: the model's thinking (Gemini's endpoint, xAI's), billed
        # as output, and output here too (a budget is never under-charged). They are its
        # reasoning, unless the details say how much that is (xAI's do).
        total = self.total_tokens if type(self.total_tokens) is int else 0
        unlisted = max(0, total - prompt - completion)
        details = self.completion_tokens_details
        reasoning = _part_of(completion + unlisted, details, "reasoning_tokens")
        if unlisted and not (isinstance(details, dict) and "reasoning_tokens" in details):
            reasoning = unlisted
        return Usage(
            prompt,
            completion + unlisted,
            cached_input_tokens=_part_of(prompt, self.prompt_tokens_details, "cached_tokens"),
            reasoning_tokens=reasoning,
        )


def _part_of(total: int, details: Any, name: str) -> int:
    """The count `name` of a usage details object, 0 when missing or not an int.

    It is part of `total`: never more (nor less than none), whatever a server says.
    """
    part = details.get(name) if isinstance(details, dict) else None
    return max(0, min(part, total)) if type(part) is int else 0


def _text_of(content: str | list[Any] | None) -> str:
    """The text of a reply's `content`: a str, or the text of a list of parts.

    Mistral's reasoning models (and some compatible servers) send a list of parts, the
    model's thinking (`{"type": "thinking", ...}`) apart from its answer (`{"type": "text",
    "text": ...}`): the answer is the text parts, in order; other parts are not text.
    """
    if content is None:
        return ""
    if type(content) is str:
        return content
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict) and part.get("type") == "text" and type(part.get("text")) is str
    )


class _Completion(BaseModel):
    model: str | None = None
    choices: list[_Choice]
    usage: Any = None  # read by `parse_usage`: a usage that does not fit fails no reply


class _ToolCallChunk(BaseModel):
    index: int | None = None  # some OpenAI-compatible servers leave it out
    id: str | None = None
    function: _FunctionCall | None = None
    extra_content: Any = None  # Gemini's thought signature, in any piece of the call


class _Delta(BaseModel):
    content: str | list[Any] | None = None  # parts: see `_text_of`
    refusal: str | None = None
    tool_calls: list[_ToolCallChunk] | None = None
    function_call: _FunctionCall | None = None  # the legacy `functions` form of a call
    # Compatible servers' reasoning (vLLM, DeepSeek, OpenRouter): progress; the
    # `reasoning_content` is kept too (see `_kept_reasoning`).
    reasoning_content: Any = None
    reasoning: Any = None
    reasoning_details: Any = None
    extra_content: Any = None  # Gemini's, kept (see `_kept_reasoning`)


class _ChunkChoice(BaseModel):
    index: int = 0
    delta: _Delta | None = None  # absent from Azure's content-filter annotation chunks
    finish_reason: _FinishReason = None
    error: Any = None  # a generation that failed part way (OpenRouter): see `_choice_error`


class _Error(BaseModel):
    message: str | None = None
    type: str | None = None
    code: int | str | None = None


class _Chunk(BaseModel):
    object: Any = None  # "error" marks vLLM's older error form
    model: str | None = None
    choices: list[_ChunkChoice] | None = None  # null in some servers' usage chunk
    usage: Any = None  # read by `parse_usage`: a usage that does not fit fails no reply
    error: Any = None  # read by `error_of_reply`: an error of any shape (but `{}`) is reported


# ---------------------------------------------------------------------- provider
class OpenAIProvider(HttpProvider):
    """An `LlmProvider` over the Chat Completions API (`POST {base_url}/chat/completions`).

    One pooled `httpx.AsyncClient` per provider; use `async with OpenAIProvider() as llm:` or
    call `aclose()`. Failed calls are retried through `retry` on 408/409/429/5xx statuses,
    timeouts and dropped connections, honouring `Retry-After` and `retry-after-ms`, and the
    server's `x-should-retry` over the status (as the official SDKs do). A stream is
    retried only until its first event has been yielded.

    A provider is not bound to one event loop: it keeps a pool per loop it is used from, and
    closes each as its loop ends under `asyncio.run` (see `HttpTransport`).

    A stream that sends only keep-alive comments, pings or empty deltas for `timeout` seconds
    fails (retryable, so it is tried again when it had yielded nothing yet); reasoning that
    compatible servers stream (`reasoning_content`, `reasoning`) counts as content. A reply's
    `reasoning_content` (DeepSeek's, older vLLM's), or its `reasoning` when it has neither that
    nor `reasoning_details` (vLLM's, Ollama's: see `REASONING`), is its `ChatResponse.reasoning`
    (see `REASONING_CONTENT`), sent back with the message's tool calls: DeepSeek's thinking mode
    refuses a tool-call turn without it. So is the `extra_content` of the reply and of each of
    its tool calls (Gemini's thought signatures, see `EXTRA_CONTENT`), each sent back where it
    came: Gemini 3 refuses a tool-call turn without them; and OpenRouter's `reasoning_details`
    (see `REASONING_DETAILS`), sent back with the message. A reply past 64 MiB (a streamed one:
    64 Mi characters of content, each event without content counted by its size) fails, not
    retryable. A 200 reply with an error in its body (JSON, or in place of the event stream that
    was asked for) raises the server's message, and so does an error reported in the middle of a
    stream: a chunk `{"error": {...}}`, vLLM's older `{"object": "error", "message": ...}`, or
    an event named `error` (JSON or plain text, as some gateways send). Such an error's `status`
    is its code when that is an HTTP status. An `error` member that reports nothing (`null`, or
    `{}` as some compatible servers add to every good reply and chunk) is no error, streamed or
    not. Null or missing token counts are 0 tokens, a count that is negative or not below 2**63
    is 0, and usage that does not fit the format is counted as none (each with a warning) rather
    than failing the reply.

    A refusal (`message.refusal`, streamed as `delta.refusal`) is the response's text, and its
    `stop_reason` is `"refusal"` (as the Anthropic API says it) in place of the finish reason:
    the reply does not pass for an empty answer, and a stream yields it as `TextDelta`s.
    Chunks whose choice has no `delta` (Azure's content-filter annotations) are skipped.
    Content sent as a list of parts (Mistral's reasoning models: their thinking apart from
    their answer) is read as its text parts; the thinking is not part of the text. A call in
    the legacy `functions` form (`message.function_call`, streamed as `delta.function_call`,
    finish reason `function_call`) is a tool call like the others, named `call_0` as it
    comes without an id.

    Args:
        api_key: API key (default: `OPENAI_API_KEY`; a blank value, argument or variable,
            counts as unset). Optional for a custom `base_url`, as local servers (Ollama,
            llama.cpp) need none.
        base_url: API root including `/v1` (default: `OPENAI_BASE_URL`, else OpenAI's), with
            its `http://` or `https://` scheme. Surrounding whitespace is ignored, and a blank
            value (argument or variable) counts as unset. A user name and password in it
            (`http://user:password@host/v1`, for a proxy that asks for them) are sent as
            basic auth, when there is no API key (both would go in the `Authorization`
            header), and shown nowhere: `base_url` and the repr leave them out.
        model: Model used when a call names none (default: `OPENAI_MODEL`, else
            `DEFAULT_OPENAI_MODEL`).
        timeout: Seconds to wait for the next bytes of a response (its headers too), and
            the longest a stream may go on without content once its headers came
            (keep-alive comments, pings and empty deltas do not count).
        connect_timeout: Seconds to wait for a connection.
        total_timeout: Seconds one attempt of a non-streamed call (`chat`, `complete`) may
            take in all, however its reply trickles in, and a streamed call may take to read
            a reply that is no stream, such as an error status's body (None:
            `connect_timeout + 2 * timeout`, 20 minutes by default; see `HttpTransport`).
        retry: Retry policy (None: `RetryPolicy()`, 3 attempts; `RetryPolicy(max_attempts=1)`
            turns retries off).
        stop: Stop sequences sent with every call, or one as a str (a call's `stop=`
            overrides them). The API takes at most `MAX_STOP_SEQUENCES` (4): only the
            first 4 are sent. (An `AgentRuntime` still cuts each reply at every one of its
            `stop_sequences`.)
        send_stop: Whether to send stop sequences at all. False sends no `stop`, neither
            these nor a call's `stop=`: OpenAI's reasoning models (o3, o4-mini, gpt-5)
            refuse the parameter. An `AgentRuntime` still cuts replies at its own.
        stream_usage: Whether a streamed call asks for its usage (`stream_options:
            {"include_usage": true}`). False sends no `stream_options`, for servers that
            refuse the field (Mistral's API, some gateways): a stream's usage is then what
            the server reports unasked, if anything (none counts as 0 tokens).
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
            prompt cache (`usage.prompt_tokens_details.cached_tokens`, reported as
            `Usage.cached_input_tokens`). None charges them the full input price: the
            discount differs by model, and the budget should never be under-charged.

    Raises:
        ProviderError: No API key for OpenAI's own API, a key no HTTP header can carry
            (whitespace such as a trailing newline, control or non-ASCII characters; a key
            of whitespace only is no key), a base URL that is not an http(s) URL (one
            written without its scheme, say), or one with a user name and password when
            there is an API key too.
        ValueError: A timeout or price is out of range, or no number (None, a str or a
            bool).
        TypeError: `stop` is neither a str nor an iterable of str, `send_stop` or
            `stream_usage` is no bool (any str, "false" too, would read as true), or
            `retry`, `budget`, `metrics` or `http_client` is neither None nor what it must
            be (a `RetryPolicy`, a `CostBudget`, a `RuntimeMetrics`, an
            `httpx.AsyncClient`).
    """

    def __init__(
        self,
        api_key: str | SecretText | None = None,
        base_url: str | UrlObject | None = None,
        model: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        stop: str | Sequence[str] | None = None,
        send_stop: bool = True,
        stream_usage: bool = True,
        http_client: httpx.AsyncClient | None = None,
        budget: CostBudget | None = None,
        metrics: RuntimeMetrics | None = None,
        input_cost_per_million: float = 0.0,
        output_cost_per_million: float = 0.0,
        cached_input_cost_per_million: float | None = None,
    ) -> None:
        api_key, base_url = openai_endpoint("OpenAI", api_key, base_url)
        self.model = model_setting(model, "OPENAI_MODEL", DEFAULT_OPENAI_MODEL)
        """Model used when a call names none."""
        self.stop = check_stop(stop)
        """Stop sequences sent with every call (the first `MAX_STOP_SEQUENCES` of them)."""
        self.send_stop = check_flag("send_stop", send_stop)
        """Whether stop sequences are sent (False for models that refuse `stop`)."""
        # Models whose API refused `stop` (OpenAI's reasoning models): asked again without
        # it, and sent none from then on.
        self._refuse_stop: set[str] = set()
        self.stream_usage = check_flag("stream_usage", stream_usage)
        """Whether streamed calls send `stream_options` (False for servers that refuse it)."""
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        self._transport = HttpTransport(
            name="OpenAI",
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
            cached_input_cost_per_million=cached_input_cost_per_million,
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
            messages: The conversation so far.
            tools: Tools the model may call.
            model: Model for this call (default: the provider's).
            **params: Other Chat Completions parameters, sent as given (`temperature`,
                `max_completion_tokens`, `response_format` for JSON-schema output, ...).
                `stop` (a string or a list) replaces the provider's stop sequences; only
                the first `MAX_STOP_SEQUENCES` of a list are sent, and none without
                `send_stop`.

        Raises:
            ProviderError: The call failed, the response is an error (under any status) or
                not a chat completion, or a tool call's arguments are not a JSON object:
                `CutOffArgumentsError` when the reply was cut off by the token limit (finish
                reason `length`), else `UnreadableArgumentsError`, which holds the reply (the
                reply's usage is charged all the same).
            BudgetExceededError: The budget is spent.
            ValueError: `params` overrides a field the provider sets itself, or a value of
                the request is NaN or infinite (JSON has no such numbers).
            TypeError: `messages` or `tools` is not an iterable of `Message` /
                `ToolDefinition`, a tool call in a message is not a `ToolCall` with a dict
                of arguments, or `stop` is neither a str nor an iterable of str (also with
                `send_stop=False`): nothing is sent.
        """
        body = self._body(messages, tools, model, params, stream=False)
        retried: list[Usage] = []  # failed attempts the server billed
        try:
            raw = await self._transport.post_json(
                "/chat/completions", body, self._check_reply, retried
            )
        except ProviderError as refused:
            if not self._dropped_refused_stop(body, refused):
                raise
            raw = await self._transport.post_json(
                "/chat/completions", body, self._check_reply, retried
            )
        completion = parse_json(_Completion, raw, "OpenAI response")
        usage = parse_usage(_Usage, completion.usage, "OpenAI response").usage()
        # Charged first: the reply arrived and was billed, even if it has no choice or its
        # tool calls fail below (the error then holds the usage).
        self._transport.charge_reply(usage, retried)
        if retried:  # the call paid for them too
            usage = usage_sum([*retried, usage])
        if not completion.choices:
            error = ProviderError("malformed OpenAI response: no choices")
            error.usage = usage
            raise error
        choice = completion.choices[0]
        message = choice.message
        wire_calls = message.tool_calls or []
        if not wire_calls and message.function_call is not None:
            # The legacy `functions` form: one call, without an id (named `call_0`).
            wire_calls = [_ToolCall(function=message.function_call)]
        # Given out as a streamed reply's are: cleaned, those missing named (`ToolCallIds`).
        call_ids = ToolCallIds().give_all([call.id for call in wire_calls])
        redact = self._transport.redact
        try:
            calls = [
                ToolCall(
                    call_ids[index],
                    clean_text(call.function.name or ""),
                    *read_arguments(
                        decode_arguments,
                        call.function.arguments or "",
                        name=call.function.name,
                        stop_reason=choice.finish_reason,
                        redact=redact,
                    ),
                )
                for index, call in enumerate(wire_calls)
            ]
        except ProviderError as error:  # cut off inside a call's arguments
            error.usage = usage
            raise
        text = _text_of(message.content)
        stop_reason = choice.finish_reason
        if message.refusal:
            text += message.refusal
            stop_reason = _REFUSAL
        response = ChatResponse(
            text=clean_text(text),
            tool_calls=calls,
            usage=usage,
            stop_reason=stop_reason,
            model=completion.model,
            reasoning=_kept_reasoning(
                message.reasoning_content,
                message.reasoning,
                message.extra_content,
                {index: call.extra_content for index, call in enumerate(wire_calls)},
                _whole_details(message.reasoning_details),
            ),
        )
        return checked_arguments(response, self._transport.redact)

    def _check_reply(self, raw: bytes) -> None:
        error = error_of_reply(raw, _Error, self._transport.redact)
        if error is not None:  # an error sent with status 200
            raise _api_error(error, self._transport.redact, "OpenAI API error")
        # A choice whose generation failed part way (see `_choice_error`): checked here, so
        # that a retryable one is retried as an error body is. Only read when it may be one.
        if b'"error"' in raw or b"insufficient_system_resource" in raw:
            failed = _failed_choice(raw, self._transport.redact)
            if failed is not None:
                self._transport.charge_reply(failed.usage or Usage())  # billed all the same
                raise failed

    def chat_stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams a response as `TextDelta` / `ToolCallDelta` events, ending with `StreamEnd`.

        Usage comes from `stream_options.include_usage` (unless `stream_usage` is off); usage
        the stream reported before it failed (or was closed) is charged all the same (and,
        when closed or cancelled, handed to the runtime's run that made the call). Half a
        surrogate pair that ends a piece of text (an emoji a server cut in two) waits for its
        other half in the next one; a half alone becomes U+FFFD (see `clean_text`). So it does
        in the pieces of a tool call's name and arguments, and a call's id is cleaned as it
        comes: no delta holds half a pair (two ids that clean alike are told apart, see
        `ToolCallIds`). A tool's name streamed in pieces before its arguments is put together.
        Arguments are as for `chat`.

        Raises:
            ProviderError: From the iterator: the stream failed (error status, a reply that
                is no event stream, error event, malformed event, timeout, no content for
                `timeout` seconds, connection lost, or a body that ended with neither
                `[DONE]` nor a finish reason), or a tool call's arguments are not a JSON
                object (as for `chat`, raised in place of the `StreamEnd`).
            BudgetExceededError: The budget is spent.
            ValueError: As for `chat`, raised at once.
            TypeError: As for `chat`, raised at once.
        """
        body = self._body(messages, tools, model, params, stream=True)
        content = request_body(body)  # a value JSON cannot hold is refused at once
        if "stop" in body:  # one the model may refuse
            return self._stream_unless_stop_refused(body, content)
        return self._transport.retry_stream(lambda: self._stream_once(content))

    async def _stream_unless_stop_refused(
        self, body: dict[str, Any], content: bytes
    ) -> AsyncIterator[StreamEvent]:
        """`chat_stream` of `body` (encoded: `content`), which has `stop`.

        Asked again without it if the model refuses it (`_dropped_refused_stop`).
        """
        # Closed here, not by the loop as it ends (see `Driven`).
        stream = Driven(self._transport.retry_stream(lambda: self._stream_once(content)))
        try:
            try:
                first = await anext(stream)
            except ProviderError as refused:
                if not self._dropped_refused_stop(body, refused):
                    raise
                await stream.aclose()
                content = request_body(body)
                stream = Driven(self._transport.retry_stream(lambda: self._stream_once(content)))
                first = await anext(stream)
            yield first
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    def _dropped_refused_stop(self, body: dict[str, Any], error: ProviderError) -> bool:
        """Whether `error` is the API refusing `body`'s `stop`, which is then taken out.

        The model is then sent no `stop` again (a runtime still cuts replies at its own stop
        sequences). OpenAI's reasoning models refuse the parameter with a 400.
        """
        text = str(error)
        if error.status != 400 or "stop" not in body:
            return False
        # OpenAI's: "Unsupported parameter: 'stop' is not supported with this model."
        if "parameter: 'stop'" not in text and "'stop' is not supported" not in text:
            return False
        self._refuse_stop.add(body["model"])
        del body["stop"]
        logger.info("model %r refuses 'stop': it is sent none from now on", body["model"])
        return True

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
        body: dict[str, Any] = {
            # Stripped as the provider's own is (`model_setting`): blank is none given.
            "model": (model.strip() if isinstance(model, str) else model) or self.model,
            "messages": [_wire_message(m) for m in messages],
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        stop = params.pop("stop") if "stop" in params else self.stop  # a call's own wins
        stops = check_stop(stop)  # checked even when not sent: a wrong one is a mistake
        if stops and self.send_stop and body["model"] not in self._refuse_stop:
            body["stop"] = stop if isinstance(stop, str) else stops[:MAX_STOP_SEQUENCES]
        body.update(params)
        if stream:
            body["stream"] = True
            if self.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    async def _stream_once(self, content: bytes) -> AsyncIterator[StreamEvent]:
        text = StreamedText()
        calls = _ToolCallAssembly()
        finish_reason: str | None = None
        failed: ProviderError | None = None  # the choice's own error (see `_choice_error`)
        refused = False
        model: str | None = None
        usage = Usage()
        owed = False  # usage reported and not charged yet
        reported = False  # a chunk reported the usage
        done = False
        answered = False  # a choice came (a bare [DONE] holds no reply)
        cut_inside: list[bytes] = []  # the line the body ended inside, if it did
        progress = StreamProgress()
        thoughts: list[str] = []  # the pieces of the reply's `reasoning_content`
        reasoned: list[str] = []  # the pieces of its `reasoning`
        extra: Any = None  # the reply's `extra_content` (the last one sent)
        call_extras: dict[int, Any] = {}  # each call's, by position (the last one sent)
        details = _ReasoningDetails()  # the reply's `reasoning_details`

        events = self._transport.post_sse(
            "/chat/completions",
            content,
            ended=lambda: done,
            check=self._check_reply,
            cut=cut_inside.append,
            progress=progress,
        )
        try:
            # Closing the events cuts a body kept open after [DONE].
            async with contextlib.aclosing(events):
                async for sse in events:
                    data = sse.data
                    if data.startswith(_DONE):  # as the SDKs read it: spaces may follow
                        done = True
                        break
                    if sse.event == "error":  # a gateway's: its data may be no chunk
                        raise _reported_error(data, self._transport)
                    chunk = parse_json(_Chunk, data, "OpenAI stream event")
                    if chunk.error is not None or chunk.object == "error":
                        # Read as a whole reply's error is (`_check_reply`): `"error": {}`,
                        # which some servers add to every good chunk, reports nothing.
                        error = error_of_reply(data, _Error, self._transport.redact)
                        if error is not None:
                            raise _api_error(error, self._transport.redact, "OpenAI stream error")
                    if chunk.usage is not None:
                        usage = parse_usage(_Usage, chunk.usage, "OpenAI stream").usage()
                        owed = reported = True
                        progress.step_once(data)
                    if chunk.model:
                        model = chunk.model
                    for choice in chunk.choices or ():
                        if choice.index != 0:
                            continue  # only the first choice is assembled (n > 1 unsupported)
                        answered = True
                        delta = choice.delta
                        if choice.finish_reason is not None:
                            finish_reason = choice.finish_reason
                            progress.step_once(data)
                        if failed is None:  # raised once the usage that follows is read
                            failed = _choice_error(
                                choice.error, choice.finish_reason, self._transport.redact
                            )
                        if delta is None:  # an annotation (Azure's content filter), no output
                            continue
                        said = delta.content
                        if said:
                            if type(said) is str:
                                progress.add(said)
                            else:  # parts: Mistral's thinking ones too, which are no text
                                progress.step(data)
                                said = _text_of(said)
                            piece = text.add(said)
                            if piece:
                                yield TextDelta(piece)
                        elif delta.function_call is not None:
                            # The legacy `functions` form (its content is null): one call,
                            # without an id, read as a tool call's pieces at index 0.
                            legacy = delta.function_call
                            progress.add(legacy.name)
                            progress.add(legacy.arguments)
                            yield calls.add(0, None, legacy.name, legacy.arguments or "")
                        if delta.refusal:
                            refused = True
                            progress.add(delta.refusal)
                            piece = text.add(delta.refusal)
                            if piece:
                                yield TextDelta(piece)
                        for part in delta.tool_calls or ():
                            function = part.function
                            name = function.name if function is not None else None
                            fragment = (function and function.arguments) or ""
                            progress.add(name)
                            progress.add(fragment)
                            call_piece = calls.add(part.index, part.id, name, fragment)
                            if part.extra_content is not None:
                                call_extras[call_piece.index] = part.extra_content
                            yield call_piece
                        for thought in (delta.reasoning_content, delta.reasoning):
                            if isinstance(thought, str):
                                progress.add(thought)
                        if isinstance(delta.reasoning_content, str):
                            thoughts.append(delta.reasoning_content)
                        if isinstance(delta.reasoning, str):
                            reasoned.append(delta.reasoning)
                        if delta.reasoning_details:  # OpenRouter's, which may come alone
                            progress.step(data)
                            details.add(delta.reasoning_details)
                        if delta.extra_content is not None:
                            extra = delta.extra_content
                            progress.step(data)
            # The events are closed here: the body was finished at [DONE] (briefly, or cut,
            # see `post_sse`) before the last events go out. A consumer that stops at
            # StreamEnd leaves nothing to read as its loop ends, where the loop would close
            # httpx's generators while that read runs them (each failure logged).
            # A body that ends with no [DONE] was cut, unless the reply's finish reason came:
            # some compatible servers end it so (the official SDK reads to the end, too). Not
            # when it ended inside a line before the usage (asked for: it comes last, then
            # [DONE]) was reported: inside the usage chunk, say. A [DONE] line without its
            # line end is whole.
            if cut_inside and cut_inside[0].strip() in _DONE_LINES:
                done = True
            if failed is not None:
                raise failed
            if not done and (finish_reason is None or (cut_inside and not reported)):
                raise ProviderError("OpenAI stream ended before [DONE]", retryable=True)
            if not answered:  # a proxy's or a server's failure, not the model's empty reply
                raise ProviderError(
                    "OpenAI stream held no reply: it ended with no choice", retryable=True
                )
            rest = text.finish()
            if rest:
                yield TextDelta(rest)
            for call in calls.calls:
                last = call.finish()
                if last is not None:
                    yield last
            # Charged first: the reply arrived whole and was billed, even if its tool calls
            # fail.
            owed = False
            self._transport.charge_reply(usage)
            response = ChatResponse(
                text=text.text,
                tool_calls=calls.build(finish_reason, self._transport.redact),
                usage=usage,
                stop_reason=_REFUSAL if refused else finish_reason,
                model=model,
                reasoning=_kept_reasoning(
                    "".join(thoughts), "".join(reasoned), extra, call_extras, details.build()
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


class _ToolCallAssembly:
    """The tool calls of a stream, told apart as OpenAI and compatible servers send them.

    OpenAI gives each call an `index` (and its `id` in the first piece). Some compatible
    servers send every call whole at index 0 with its own id, or leave the index out (a
    piece without index or id continues the last call). A name that comes in pieces before
    the call's arguments start ("get_" then "weather") is put together, as OpenAI's own SDK
    does; a piece that repeats the whole name (some servers send it in every piece) is no
    new part of it. Without ids, once the call a piece
    would continue has whole JSON arguments, a tool named with arguments, or named in one
    piece with its arguments in the next (OpenAI names a call in its first piece only),
    starts a new call. A server that names the tool in every piece does so before the
    arguments are whole; a named piece after them with no arguments following starts
    nothing. A call's position is the order in which calls first appear.

    Calls are told apart by their ids as received; the ids given out are cleaned and unique
    (`ToolCallIds`): two that differ only in half a surrogate pair are still two calls. A
    call that never gets an id is named when the calls are built, after every other id.
    """

    def __init__(self) -> None:
        self.calls: list[PartialToolCall] = []
        self._by_index: dict[int, PartialToolCall] = {}
        self._by_id: dict[str, PartialToolCall] = {}  # by id as received
        self._received_ids: dict[int, str] = {}  # by call position
        self._ids = ToolCallIds()
        self._depths: dict[int, _JsonDepth] = {}  # by call position
        self._pending_name: str | None = None  # named after a whole call, arguments to come

    def add(
        self, index: int | None, call_id: str | None, name: str | None, fragment: str
    ) -> ToolCallDelta:
        """Adds a piece (`fragment` of a call's arguments) to its call; returns its delta.

        An empty id or name is none (DashScope sends `"id": ""` on every continuation). The
        delta gives out the id, the piece of the name and the fragment cleaned, as the text
        is (see `PartialToolCall`): an id as `ToolCallIds` gives it out, the name and
        arguments with half a pair that ends a piece kept back for the next one. A name that
        arrives for the next call, its arguments to come, is given out with them, on it. A
        name piece is given out only when it adds to the call's name: the pieces given out
        join up to the name (`ToolCallDelta.name`), however often a server repeats it.
        """
        given_name = name
        received_id = call_id
        call_id = call_id or None
        name = name or None
        call: PartialToolCall | None = None
        if index is not None:
            current = self._by_index.get(index)
            known_id = self._received_ids.get(current.index) if current is not None else None
            if current is not None and (
                call_id is None
                or known_id in (None, call_id)
                # Another id while the call's arguments are still open (or, unnamed, not
                # begun): the same call, from a server that mints an id per chunk (Poolside,
                # mlx-openai-server). A call sent whole (Ollama's) is done: a new id after
                # it, or a named one before its arguments, is the next call.
                or self._depths[current.index].open(named=bool(name))
            ):
                call = current  # the same call continued (OpenAI's own form)
        elif call_id:
            call = self._by_id.get(call_id)
        elif self.calls:
            call = self.calls[-1]
        # DeepSeek, GLM and some OpenRouter engines give parallel calls one id (and index):
        # after a whole call, its id again starts the next one as no id does, unless the
        # piece repeats the call's arguments (a gateway ending it with them whole).
        repeated_id = call is not None and self._received_ids.get(call.index, "") == call_id
        if (
            call is not None
            and (call_id is None or repeated_id)
            and call.name is not None
            and self._depths[call.index].whole
        ):
            if name and not fragment.strip():
                self._pending_name = name  # the next call's first piece: arguments to come
                given_name = None  # not this call's: given out on the next call
            elif (
                fragment.strip()
                and (name or self._pending_name)
                and (
                    call_id is None
                    # Under the same id: another tool, one named apart, or other arguments.
                    or self._pending_name
                    or (name and name != call.name)
                    or _new_part(call, self._depths[call.index], fragment)
                )
            ):
                name = given_name = name or self._pending_name
                call = None  # the next call, sent after this one without an id
        # What of the name to give out: only what extends the call's name, so that the
        # pieces given out join up to it (a name repeated in every piece is given out once).
        name_piece = given_name
        if call is None:
            call = PartialToolCall(len(self.calls), None, name)
            self.calls.append(call)
            self._depths[call.index] = _JsonDepth()
            self._pending_name = None
        elif call.name is None:
            call.name = name
        elif name and name != call.name and not self._depths[call.index].started:
            call.name += name  # the next piece of a name streamed in pieces
        else:
            name_piece = None  # the whole name again, or a name after the arguments started
        if call_id is not None:
            if call.index not in self._received_ids:  # its first piece with an id
                self._received_ids[call.index] = call_id
                call.id = self._ids.give(call_id, call.index)
            self._by_id[call_id] = call
        if index is not None:
            self._by_index[index] = call
        piece = call.add_arguments(_new_part(call, self._depths[call.index], fragment))
        self._depths[call.index].feed(piece)
        given_id = call.id if call_id is not None else received_id  # "" stays ""
        return ToolCallDelta(call.index, given_id, call.add_name(name_piece), piece)

    def build(self, stop_reason: str | None, redact: Callable[[str], str] | None) -> list[ToolCall]:
        """The finished calls, once the stream ended (see `PartialToolCall.build`).

        A call that never got an id is named only now, when every id received is known and
        given out: its name cannot be one another call's delta has given out already.
        """
        return [call.build(self._ids, stop_reason, redact) for call in self.calls]


def _new_part(call: PartialToolCall, depth: _JsonDepth, fragment: str) -> str:
    """What of `fragment` adds to the arguments of `call` (`depth` follows them).

    Some compatible servers send a call's arguments again: a gateway ends a call streamed in
    pieces with a chunk holding it whole, and DeepSeek or Qianfan in cumulative mode send
    the arguments so far in every chunk. Joined, they are broken JSON (`{"a": 1}{"a": 1}`)
    where the reply sent whole has the call right. A fragment that starts with the whole
    text so far is read as the arguments so far: only its new end is added, unless that
    end closes more than is open where the fragment whole continues them (`{"a": ` then
    `{"a": 1}}`: a nested object that repeats its parent's text so far). (Such an object
    whose end is still to come, `{"a": ` then `{"a": 1`, reads as the arguments so far: its
    braces then never balance, so the call fails, never passing for other arguments.) One
    that is the same object as the whole arguments, written otherwise (re-serialized), adds
    nothing. Other fragments, `{` of a nested object included, are added as they are
    (checked only when one starts with `{`: nothing is done per plain piece).
    """
    if not depth.started or fragment.lstrip()[:1] != "{":
        return fragment
    # Shorter than the text so far, it cannot repeat it: a nested object's opening piece is
    # added without joining the pieces (that join at each one made long arguments quadratic).
    if len(fragment) < call.arguments.length and not depth.whole:
        return fragment
    so_far = call.arguments.text
    if fragment.startswith(so_far):
        new_end = fragment[len(so_far) :]
        if not depth.whole and depth.fed(new_end).broken and not depth.fed(fragment).broken:
            return fragment  # a nested object: the arguments so far, repeated, break
        return new_end
    if depth.whole:
        with contextlib.suppress(ValueError, RecursionError):
            if json.loads(fragment) == json.loads(so_far):
                return ""
    return fragment


class _JsonDepth:
    """Whether the JSON text fed so far is one whole object, followed in one pass over it.

    Tracks the nesting depth outside strings, so deciding costs nothing per piece (parsing
    the arguments at each piece is quadratic). Whole means its brackets are closed; its
    literals are not checked (a call with broken arguments fails when it is built).
    """

    __slots__ = ("broken", "depth", "escaped", "in_string", "started", "whole")

    def __init__(self) -> None:
        self.started = False
        """Some text other than whitespace arrived."""
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.broken = False  # no object can come of it (a second value, a bare array)
        self.whole = False
        """An object opened and closed, and nothing but whitespace after it."""

    def open(self, *, named: bool) -> bool:
        """Whether more of the call is to come.

        Its object begun and not closed, or, for a piece that names no tool, not begun yet.
        """
        return not self.whole and not self.broken and (self.started or not named)

    def fed(self, text: str) -> _JsonDepth:
        """A copy of this, fed `text` (this one unchanged)."""
        copy = _JsonDepth()
        for name in self.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.feed(text)
        return copy

    def feed(self, text: str) -> None:
        if not self.started and text and not text.isspace():
            self.started = True
        for char in text:
            if self.broken:
                return
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char.isspace():
                continue
            elif self.depth == 0 and (self.whole or char != "{"):
                self.broken, self.whole = True, False  # not one object
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                self.whole = self.depth == 0


def _wire_message(message: Message) -> dict[str, Any]:
    # Content None (no content) is sent as "": the API refuses null but for tool calls.
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content or "",
        }
    wire: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    thought = said = ""
    call_extras: dict[int, Any] = {}
    for block in message.reasoning if message.role == "assistant" else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == REASONING_CONTENT and type(block.get(REASONING_CONTENT)) is str:
            thought += block[REASONING_CONTENT]
        elif kind == REASONING and type(block.get(REASONING)) is str:
            said += block[REASONING]
        elif kind == REASONING_DETAILS and isinstance(block.get(REASONING_DETAILS), list):
            # OpenRouter asks for it back with the message (a tool-calling turn needs it).
            wire[REASONING_DETAILS] = block[REASONING_DETAILS]
        elif kind == EXTRA_CONTENT and EXTRA_CONTENT in block:
            index = block.get("index")
            if index is None:
                wire[EXTRA_CONTENT] = block[EXTRA_CONTENT]
            elif type(index) is int:
                call_extras[index] = block[EXTRA_CONTENT]
    if message.tool_calls:
        wire["content"] = message.content or None
        # DeepSeek refuses a tool-call turn of its thinking mode without it (with no call,
        # it ignores it: not sent then). vLLM and Ollama read theirs back under its own name.
        if thought:
            wire[REASONING_CONTENT] = thought
        if said:
            wire[REASONING] = said
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    # Characters as they are, not `\\u` escapes: the model reads this string
                    # as written (6 characters a CJK one, else), and history trimming counts
                    # characters. The body's encoding sends a lone surrogate as U+FFFD.
                    "arguments": json_text(
                        call.arguments,
                        f"the arguments object of tool call {call.id!r}",
                        ensure_ascii=False,
                    ),
                },
            }
            for call in message.tool_calls
        ]
        # Gemini 3 refuses a tool-call turn whose calls lost their thought signatures.
        for index, extra in call_extras.items():
            if 0 <= index < len(wire["tool_calls"]):
                wire["tool_calls"][index][EXTRA_CONTENT] = extra
    return wire


def _kept_reasoning(
    thought: Any,
    said: Any = None,
    extra: Any = None,
    call_extras: dict[int, Any] | None = None,
    details: list[Any] | None = None,
) -> tuple[dict[str, Any], ...]:
    """A reply's reasoning fields as its `ChatResponse.reasoning`, sent back as received.

    Its `reasoning_content` (`thought`) or `reasoning` (`said`), `reasoning_details` and
    `extra_content` (see `REASONING_CONTENT`, `REASONING`, `REASONING_DETAILS`,
    `EXTRA_CONTENT`): not cleaned, the model reads them as it wrote them. A text of None,
    "" or no str (a compatible server's other shape) is no reasoning, and so are no
    `details`. The `reasoning` text is kept only alone: older vLLM sends it beside the same
    `reasoning_content`, and OpenRouter beside the `reasoning_details` it sums up (sent
    back twice, the model would read it twice). `extra` is the message's `extra_content`,
    `call_extras` each tool call's by position; None is none.
    """
    kept: list[dict[str, Any]] = []
    if type(thought) is str and thought:
        kept.append({"type": REASONING_CONTENT, REASONING_CONTENT: thought})
    elif type(said) is str and said and not details:
        kept.append({"type": REASONING, REASONING: said})
    if details:
        kept.append({"type": REASONING_DETAILS, REASONING_DETAILS: details})
    if extra is not None:
        kept.append({"type": EXTRA_CONTENT, EXTRA_CONTENT: extra})
    for index, value in sorted((call_extras or {}).items()):
        if value is not None:
            kept.append({"type": EXTRA_CONTENT, "index": index, EXTRA_CONTENT: value})
    return tuple(kept)


_JOINED_DETAIL_FIELDS = ("text", "summary", "data")
"""The fields of a `reasoning_details` entry that a stream sends in pieces."""


def _same_id(piece_id: Any, entry_id: Any) -> bool:
    """Whether a streamed piece's `id` may be its entry's: the same, or one of them none."""
    return piece_id is None or entry_id is None or piece_id == entry_id


def _whole_details(received: Any) -> list[Any] | None:
    """A whole reply's `reasoning_details` entries, as received (no list: none).

    Each entry is whole: two alike (OpenRouter signs each of Gemini's calls with an entry
    of one type and index) are two.
    """
    return received if isinstance(received, list) else None


class _ReasoningDetails:
    """A reply's `reasoning_details` entries (OpenRouter's), streamed pieces joined.

    A streamed entry comes in pieces, each with the entry's `type` and `index`: a piece of
    the last entry has its text (`text`, `summary`, `data`) joined to it and its other
    fields (a `signature`, say) set on it, so that the entry goes back whole, as OpenRouter
    sent it. A piece with another `id` than the last entry's is another entry (OpenRouter
    signs each of Gemini's calls with an entry of one type and index, and the call's id).
    Entries without an index, and what is no list of objects, are kept as they are (no
    list: nothing). Pieces are joined once, by `build` (not at each piece: long
    reasoning would be quadratic).
    """

    def __init__(self) -> None:
        self._entries: list[Any] = []
        self._pieces: dict[str, list[str]] = {}  # the last entry's text fields, in pieces

    def add(self, received: Any) -> None:
        """Adds a reply's or a delta's `reasoning_details`."""
        if not isinstance(received, list):
            return
        for entry in received:
            last = self._entries[-1] if self._entries else None
            if (
                isinstance(entry, dict)
                and isinstance(last, dict)
                and entry.get("index") is not None
                and entry.get("index") == last.get("index")
                and entry.get("type") == last.get("type")
                and _same_id(entry.get("id"), last.get("id"))
            ):
                for key, value in entry.items():
                    if key in self._pieces and type(value) is str:
                        self._pieces[key].append(value)
                    elif value is not None:
                        last[key] = value
                        if key in _JOINED_DETAIL_FIELDS and type(value) is str:
                            self._pieces[key] = [value]
                continue
            self._finish_last()
            if isinstance(entry, dict):
                entry = dict(entry)
                for key in _JOINED_DETAIL_FIELDS:
                    if type(entry.get(key)) is str:
                        self._pieces[key] = [entry[key]]
            self._entries.append(entry)

    def _finish_last(self) -> None:
        """Joins the last entry's pieces into it."""
        if self._pieces:
            last = self._entries[-1]
            for key, pieces in self._pieces.items():
                last[key] = "".join(pieces)
            self._pieces = {}

    def build(self) -> list[Any]:
        """The entries, each whole."""
        self._finish_last()
        return self._entries


def _reported_error(data: bytes, transport: HttpTransport) -> ProviderError:
    """The error for a stream event named `error`, sent in place of a chunk.

    The event is read by `error_in_body`; what does not read as an error object (plain text,
    fields of unexpected types) is still the server's message, never a malformed-event error.
    One that names no type and no code (a gateway's "upstream timed out") is the server's
    own failure, as a status 500 is: retryable (as the Anthropic API's `api_error`). A chunk
    carrying an `error` member is judged by `error_of_reply` instead (`{}` is none).
    """
    error = error_in_body(data, _Error, known=True)
    if error is None:
        # An event's data is never cut short.
        error = _Error(message=error_message(data, transport.redact, truncated=False))
    failure = _api_error(error, transport.redact, "OpenAI stream error")
    if not error.type and error.code in (None, ""):
        return ProviderError(failure.args[0], retryable=True)
    return failure


_FAILED_GENERATION = frozenset(("error", "insufficient_system_resource"))
"""Finish reasons of a generation that failed part way: OpenRouter's `error`, DeepSeek's
`insufficient_system_resource` (it ran short of capacity: worth another attempt)."""


def _choice_error(
    reported: Any, finish_reason: str | None, redact: Callable[[str], str]
) -> ProviderError | None:
    """The error of a choice whose generation failed part way; None for any other choice.

    OpenRouter reports it in the choice itself: finish reason `error`, and an error object
    (`reported`, or its message alone) beside what was generated until then, which is no
    whole reply: taken as one, a half answer ended the run as its final answer. An error
    object of no field (`{}`) reports nothing, as a top-level one does not (see
    `_check_reply`).
    """
    if isinstance(reported, str):
        reported = {"message": reported} if reported.strip() else None
    given = isinstance(reported, dict) and any(v is not None for v in reported.values())
    if not given and finish_reason not in _FAILED_GENERATION:
        return None
    try:
        error = _Error.model_validate(reported) if given else _Error()
    except ValueError:  # fields of odd types: still the server's error
        error = _Error(message=redact(clean_text(str(reported)))[:500])
    if not error.message:
        error.message = f"the reply's generation failed part way (finish reason {finish_reason!r})"
    if finish_reason == "insufficient_system_resource" and error.type is error.code is None:
        error.type = "server_error"  # the server was short of capacity: busy
    return _api_error(error, redact, "OpenAI API error")


def _failed_choice(raw: bytes, redact: Callable[[str], str]) -> ProviderError | None:
    """The error of a whole reply whose first choice failed part way, with the reply's usage.

    Read leniently (before the reply is checked as one): such a choice may have no message.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # as no reply: the reply's own reading says so
        return None
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        return None
    finish_reason = choice.get("finish_reason")
    failed = _choice_error(
        choice.get("error"), finish_reason if isinstance(finish_reason, str) else None, redact
    )
    if failed is not None:
        failed.usage = parse_usage(_Usage, data.get("usage"), "OpenAI response").usage()
    return failed


def _api_error(error: _Error, redact: Callable[[str], str], what: str) -> ProviderError:
    """The error for an error body or event sent in place of a reply or chunk.

    Its `status` is its code when that is an HTTP status (vLLM sends `400`, LiteLLM `"400"`).
    Retryable when that status is, or, without one, when its type or code says the server
    is busy or rate-limited. `redact` removes the API key from the message (`OpenAIEmbedder`
    reads its replies' errors here too), cleaned by `clean_text`.
    """
    status = _http_status(error.code)
    retryable = (
        is_retryable_status(status)
        if status is not None
        else error.type in _BUSY or error.code in _BUSY
    )
    kind = f"{error.type}: " if error.type else ""
    return ProviderError(
        redact(clean_text(f"{what}: {kind}{error.message or 'no error message'}")),
        status=status,
        retryable=retryable,
    )


def _http_status(code: int | str | None) -> int | None:
    """The HTTP status an error's code stands for, if it is one (OpenAI's codes are names)."""
    if isinstance(code, str) and code.isascii() and code.isdigit():
        code = int(code)
    return code if isinstance(code, int) and 100 <= code <= 599 else None
