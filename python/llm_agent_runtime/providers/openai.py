"""`OpenAIProvider`: the Chat Completions API, and any server that speaks it.

Works with OpenAI itself and with OpenAI-compatible servers (vLLM, Ollama, llama.cpp,
LM Studio) through `base_url`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from llm_agent_runtime.errors import ProviderError
from llm_agent_runtime.providers._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    HttpProvider,
    HttpTransport,
    PartialToolCall,
    decode_arguments,
    is_retryable_status,
    parse_json,
)
from llm_agent_runtime.providers.base import (
    ChatResponse,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
)

if TYPE_CHECKING:
    import httpx

    from llm_agent_runtime._core import RuntimeMetrics
    from llm_agent_runtime.orchestration.budget import CostBudget
    from llm_agent_runtime.orchestration.retry import RetryPolicy

__all__ = ["DEFAULT_OPENAI_BASE_URL", "DEFAULT_OPENAI_MODEL", "OpenAIProvider"]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
"""The OpenAI API root (`OPENAI_BASE_URL` overrides it)."""
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
"""Model used when neither the call nor the provider names one (`OPENAI_MODEL` overrides it)."""

_RESERVED_PARAMS = frozenset(("messages", "model", "stream", "stream_options", "tools"))
_DONE = b"[DONE]"
_REFUSAL = "refusal"
"""Stop reason of a reply that carries a refusal (the Anthropic API's own name for it)."""


# ---------------------------------------------------------------------- wire types
class _FunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(BaseModel):
    id: str
    function: _FunctionCall


class _AssistantMessage(BaseModel):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(BaseModel):
    message: _AssistantMessage
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(BaseModel):
    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None


class _ToolCallChunk(BaseModel):
    index: int | None = None  # some OpenAI-compatible servers leave it out
    id: str | None = None
    function: _FunctionCall | None = None


class _Delta(BaseModel):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCallChunk] | None = None


class _ChunkChoice(BaseModel):
    index: int = 0
    delta: _Delta | None = None  # absent from Azure's content-filter annotation chunks
    finish_reason: str | None = None


class _Error(BaseModel):
    message: str = "unknown error"
    type: str | None = None
    code: int | str | None = None


class _Chunk(BaseModel):
    model: str | None = None
    choices: list[_ChunkChoice] = []
    usage: _Usage | None = None
    error: _Error | None = None


# ---------------------------------------------------------------------- provider
class OpenAIProvider(HttpProvider):
    """An `LlmProvider` over the Chat Completions API (`POST {base_url}/chat/completions`).

    One pooled `httpx.AsyncClient` per provider; use `async with OpenAIProvider() as llm:` or
    call `aclose()`. Failed calls are retried through `retry` on 408/409/429/5xx statuses,
    timeouts and dropped connections, honouring `Retry-After` and `retry-after-ms`. A stream is
    retried only until its first event has been yielded.

    A refusal (`message.refusal`, streamed as `delta.refusal`) is the response's text, and its
    `stop_reason` is `"refusal"` (as the Anthropic API says it) in place of the finish reason:
    the reply does not pass for an empty answer, and a stream yields it as `TextDelta`s.
    Chunks whose choice has no `delta` (Azure's content-filter annotations) are skipped.

    Args:
        api_key: API key (default: `OPENAI_API_KEY`). Optional for a custom `base_url`, as
            local servers (Ollama, llama.cpp) need none.
        base_url: API root including `/v1` (default: `OPENAI_BASE_URL`, else OpenAI's).
        model: Model used when a call names none (default: `OPENAI_MODEL`, else
            `DEFAULT_OPENAI_MODEL`).
        timeout: Seconds to wait for the next bytes of a response.
        connect_timeout: Seconds to wait for a connection.
        retry: Retry policy (None: `RetryPolicy()`, 3 attempts; `RetryPolicy(max_attempts=1)`
            turns retries off).
        stop: Stop sequences sent with every call (a call's `stop=` overrides them).
        http_client: An `httpx.AsyncClient` to use instead of creating one (not closed here;
            `timeout` and `connect_timeout` apply to its requests all the same).
        budget: Cost budget checked before each call and charged with its usage. Leave it
            unset inside an `AgentRuntime` that has a budget: the runtime charges each call.
        metrics: Runtime metrics that receive each call's token counts (the same caveat).
        input_cost_per_million: US dollars per million input tokens, charged to `budget`.
        output_cost_per_million: US dollars per million output tokens, charged to `budget`.

    Raises:
        ProviderError: No API key for OpenAI's own API, or a key no HTTP header can carry
            (whitespace such as a trailing newline, control or non-ASCII characters).
        ValueError: A timeout or price is out of range.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry: RetryPolicy | None = None,
        stop: Sequence[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        budget: CostBudget | None = None,
        metrics: RuntimeMetrics | None = None,
        input_cost_per_million: float = 0.0,
        output_cost_per_million: float = 0.0,
    ) -> None:
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL
        if api_key is None and base_url.rstrip("/") == DEFAULT_OPENAI_BASE_URL:
            raise ProviderError(
                "no OpenAI API key: pass api_key= or set OPENAI_API_KEY "
                "(or point base_url / OPENAI_BASE_URL at a local OpenAI-compatible server)"
            )
        self.model = model or os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL
        """Model used when a call names none."""
        self.stop = list(stop) if stop else None
        """Stop sequences sent with every call."""
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
            retry=retry,
            http_client=http_client,
            budget=budget,
            metrics=metrics,
            input_cost_per_million=input_cost_per_million,
            output_cost_per_million=output_cost_per_million,
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
                `max_tokens`, `stop`, `response_format` for JSON-schema output, ...).

        Raises:
            ProviderError: The call failed, the response is not a chat completion, or a tool
                call's arguments are not a JSON object (when the reply was cut off by the
                token limit, finish reason `length`, the message says so).
            BudgetExceededError: The budget is spent.
            ValueError: `params` overrides a field the provider sets itself.
        """
        body = self._body(messages, tools, model, params, stream=False)
        raw = await self._transport.post_json("/chat/completions", body)
        completion = parse_json(_Completion, raw, "OpenAI response")
        if not completion.choices:
            raise ProviderError("malformed OpenAI response: no choices")
        choice = completion.choices[0]
        message = choice.message
        calls = [
            ToolCall(
                id=call.id,
                name=call.function.name or "",
                arguments=decode_arguments(
                    call.function.arguments or "",
                    name=call.function.name,
                    stop_reason=choice.finish_reason,
                ),
            )
            for call in message.tool_calls or ()
        ]
        usage = completion.usage or _Usage()
        text = message.content or ""
        stop_reason = choice.finish_reason
        if message.refusal:
            text += message.refusal
            stop_reason = _REFUSAL
        response = ChatResponse(
            text=text,
            tool_calls=calls,
            usage=Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
            stop_reason=stop_reason,
            model=completion.model,
        )
        self._transport.charge(usage.prompt_tokens, usage.completion_tokens)
        return response

    def chat_stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams a response as `TextDelta` / `ToolCallDelta` events, ending with `StreamEnd`.

        Usage comes from `stream_options.include_usage`. Arguments are as for `chat`.

        Raises:
            ProviderError: From the iterator: the stream failed (error status, error event,
                malformed event, timeout, connection lost, or no `[DONE]`), or a tool call's
                arguments are not a JSON object (as for `chat`).
            BudgetExceededError: The budget is spent.
            ValueError: `params` overrides a field the provider sets itself.
        """
        body = self._body(messages, tools, model, params, stream=True)
        return self._transport.retry_stream(lambda: self._stream_once(body))

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
        body: dict[str, Any] = {
            "model": model or self.model,
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
        if self.stop:
            body["stop"] = self.stop
        body.update(params)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def _stream_once(self, body: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        text: list[str] = []
        calls = _ToolCallAssembly()
        finish_reason: str | None = None
        refused = False
        model: str | None = None
        usage = _Usage()
        done = False
        events = self._transport.post_sse("/chat/completions", body, ended=lambda: done)
        async with contextlib.aclosing(events):  # closing it cuts a body kept open after [DONE]
            async for sse in events:
                data = sse.data
                if data == _DONE:
                    done = True
                    break
                chunk = parse_json(_Chunk, data, "OpenAI stream event")
                if chunk.error is not None:
                    raise _stream_error(chunk.error, self._transport)
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.model:
                    model = chunk.model
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue  # only the first choice is assembled (n > 1 is not supported)
                    delta = choice.delta
                    if delta is None:  # an annotation (Azure's content filter), no output
                        if choice.finish_reason is not None:
                            finish_reason = choice.finish_reason
                        continue
                    if delta.content:
                        text.append(delta.content)
                        yield TextDelta(delta.content)
                    if delta.refusal:
                        refused = True
                        text.append(delta.refusal)
                        yield TextDelta(delta.refusal)
                    for piece in delta.tool_calls or ():
                        function = piece.function
                        name = function.name if function is not None else None
                        fragment = (function.arguments if function is not None else None) or ""
                        call = calls.call_of(piece.index, piece.id, name)
                        call.fragments.append(fragment)
                        yield ToolCallDelta(call.index, piece.id, name, fragment)
                    if choice.finish_reason is not None:
                        finish_reason = choice.finish_reason
            if not done:
                raise ProviderError("OpenAI stream ended before [DONE]", retryable=True)
            response = ChatResponse(
                text="".join(text),
                tool_calls=[call.build(finish_reason) for call in calls.calls],
                usage=Usage(
                    input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
                ),
                stop_reason=_REFUSAL if refused else finish_reason,
                model=model,
            )
            self._transport.charge(usage.prompt_tokens, usage.completion_tokens)
            yield StreamEnd(response)  # at once: the body is finished (or cut) after this


class _ToolCallAssembly:
    """The tool calls of a stream, told apart as OpenAI and compatible servers send them.

    OpenAI gives each call an `index` (and its `id` in the first piece). Some compatible
    servers send every call whole at index 0 with its own id, or leave the index out (a
    piece without index or id continues the last call). A call's position is the order in
    which calls first appear.
    """

    def __init__(self) -> None:
        self.calls: list[PartialToolCall] = []
        self._by_index: dict[int, PartialToolCall] = {}
        self._by_id: dict[str, PartialToolCall] = {}

    def call_of(self, index: int | None, call_id: str | None, name: str | None) -> PartialToolCall:
        """The call a piece belongs to, started if the piece is its first."""
        call: PartialToolCall | None = None
        if index is not None:
            current = self._by_index.get(index)
            if current is not None and (call_id is None or current.id in (None, call_id)):
                call = current  # the same call continued (OpenAI's own form)
        elif call_id:
            call = self._by_id.get(call_id)
        elif self.calls:
            call = self.calls[-1]
        if call is None:
            call = PartialToolCall(len(self.calls), call_id, name)
            self.calls.append(call)
        else:
            call.id = call.id or call_id
            call.name = call.name or name
        if index is not None:
            self._by_index[index] = call
        if call_id:
            self._by_id[call_id] = call
        return call


def _wire_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content,
        }
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
    return wire


def _stream_error(error: _Error, transport: HttpTransport) -> ProviderError:
    """The error for an `{"error": ...}` event sent in place of a chunk."""
    status = error.code if isinstance(error.code, int) else None
    retryable = (
        is_retryable_status(status)
        if status is not None
        else error.type
        in (
            "server_error",
            "rate_limit_exceeded",
            "overloaded_error",
        )
    )
    kind = f"{error.type}: " if error.type else ""
    return ProviderError(
        transport.redact(f"OpenAI stream error: {kind}{error.message}"),
        status=status,
        retryable=retryable,
    )
