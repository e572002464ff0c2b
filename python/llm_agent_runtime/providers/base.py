"""The provider contract: wire-neutral message types and the `LlmProvider` protocol.

Every provider (OpenAI-compatible, Anthropic, the offline scripted model) speaks these types,
so the agent loop never sees a wire format. Messages, tool calls and responses are slotted
dataclasses, not pydantic models: a provider builds them from wire data its own pydantic
models have already validated, and the agent loop reads their fields on every step. What a
run keeps of them (a tool call's id and name, token counts) is checked when they are built,
so that a custom provider's mistake is a `TypeError` where it is made, not a session that
cannot be saved.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from llm_agent_runtime.errors import ProviderError
from llm_agent_runtime.memory import tokens_of_chars
from llm_agent_runtime.orchestration._calls import current_task
from llm_agent_runtime.orchestration._checks import as_index

__all__ = [
    "INCOMPLETE_STOP_REASONS",
    "PAUSE_STOP_REASONS",
    "SAFETY_STOP_REASONS",
    "TRUNCATION_STOP_REASONS",
    "ChatProvider",
    "ChatResponse",
    "CompletionProvider",
    "CutOffArgumentsError",
    "LlmProvider",
    "Message",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "UnreadableArgumentsError",
    "Usage",
    "check_conversation",
    "check_stop",
    "cut_at_stop",
    "estimated_output_tokens",
]

T = TypeVar("T")

TRUNCATION_STOP_REASONS = frozenset(
    ("length", "max_tokens", "model_context_window_exceeded", "model_length")
)
"""Stop reasons that say the reply was cut off by a token limit: OpenAI's `length`,
Anthropic's `max_tokens` and `model_context_window_exceeded`, Mistral's `model_length` (the
model's context was full)."""
SAFETY_STOP_REASONS = frozenset(("content_filter", "refusal"))
"""Stop reasons of a reply a provider's safety system stopped: its content filter, or a
refusal (Anthropic's, and an OpenAI refusal). An `AgentRuntime` acts on nothing in one."""
PAUSE_STOP_REASONS = frozenset(("pause_turn",))
"""Stop reasons of a turn the API paused before its end: Anthropic's `pause_turn`, after a
long run of server-side tools (its `mcp_servers`, say)."""
INCOMPLETE_STOP_REASONS = TRUNCATION_STOP_REASONS | SAFETY_STOP_REASONS | PAUSE_STOP_REASONS
"""Stop reasons that say the reply was cut off: by a token limit, by a safety stop, or by a
pause of the API."""


REASONING_CONTENT = "reasoning_content"
"""The `type` of the reasoning block an OpenAI-compatible reply's `reasoning_content` (DeepSeek,
vLLM) is kept as in `ChatResponse.reasoning`: `{"type": "reasoning_content",
"reasoning_content": text}`. `OpenAIProvider` sends it back with the message's tool calls
(DeepSeek refuses a tool-call turn without it); other providers leave it out."""
REASONING = "reasoning"
"""The `type` of the reasoning block an OpenAI-compatible reply's `reasoning` text is kept as in
`ChatResponse.reasoning` when it has no `reasoning_content` or `reasoning_details`: vLLM's
(which renamed its `reasoning_content` so) and Ollama's, `{"type": "reasoning", "reasoning":
text}`. `OpenAIProvider` sends it back with the message's tool calls, under that name (vLLM
reads no other); other providers leave it out."""
EXTRA_CONTENT = "extra_content"
"""The `type` of the reasoning block an OpenAI-compatible reply's `extra_content` is kept as in
`ChatResponse.reasoning`: Gemini's, which holds its thought signature. A tool call's is
`{"type": "extra_content", "index": n, "extra_content": value}`, `n` the call's position
among the reply's calls; the message's own has no `index`. `OpenAIProvider` sends each
back where it came (Gemini 3 refuses a tool-call turn whose calls lost their signatures);
other providers leave it out."""
REASONING_DETAILS = "reasoning_details"
"""The `type` of the reasoning block an OpenAI-compatible reply's `reasoning_details` (OpenRouter's
list of reasoning entries, signed or encrypted ones included) is kept as in
`ChatResponse.reasoning`: `{"type": "reasoning_details", "reasoning_details": [...]}`, a
streamed entry's pieces joined. `OpenAIProvider` sends it back with the assistant message,
as OpenRouter asks for a tool-calling turn of a reasoning model; other providers leave it
out."""
OPENAI_COMPATIBLE_REASONING = frozenset(
    (REASONING_CONTENT, REASONING, EXTRA_CONTENT, REASONING_DETAILS)
)
"""The `type`s of the reasoning blocks kept from an OpenAI-compatible reply."""


def token_limit(stop_reason: str) -> tuple[str, str]:
    """Which token limit cut a reply off (`TRUNCATION_STOP_REASONS`), and what to do about it.

    The context window is filled by the prompt and the reply together: a larger
    `max_tokens` cannot help there, a shorter prompt can.
    """
    if stop_reason == "model_context_window_exceeded":
        return "the model's context window", "shorten the prompt or the history"
    return "the token limit", "raise max_tokens for this call, or ask for less output"


class UnreadableArgumentsError(ProviderError):
    """A reply asked for tool calls whose arguments are not a JSON object.

    They are not JSON, or JSON of another type, in a reply that was not cut off (see
    `CutOffArgumentsError`). A `ProviderError` to a caller of the provider, whose message is
    the first such call's problem. `response` is the whole reply (text, every call, usage),
    those calls with their `ToolCall.arguments_error` set: an `AgentRuntime` answers each of
    them with a `permanent` error for the model to correct, as ReAct mode answers an input
    that is not JSON, and runs the others.
    """

    def __init__(self, response: ChatResponse) -> None:
        """Raises `TypeError` when `response` is not a `ChatResponse`."""
        if not isinstance(response, ChatResponse):
            raise TypeError(
                "UnreadableArgumentsError takes the ChatResponse whose calls are marked "
                f"(ToolCall.arguments_error), got {_kind(response)}"
            )
        problems = [c.arguments_error for c in response.tool_calls if c.arguments_error]
        super().__init__(problems[0] if problems else "a tool call's arguments are unreadable")
        self.response = response
        """The reply, its unreadable calls marked (`ToolCall.arguments_error`)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # With its state: the billed `usage` the stream set, notes, a `retry_after`.
        return (type(self), (self.response,), self.__dict__)


def checked_arguments(
    response: ChatResponse, redact: Callable[[str], str] | None = None
) -> ChatResponse:
    """`response`, once none of its tool calls has unreadable arguments.

    Raises:
        UnreadableArgumentsError: When one has, holding `response` with its text and its
            calls' ids and names passed through `redact`, as the error's message is: an
            error is shown and logged, and a server may echo the API key.
    """
    calls = response.tool_calls
    if all(call.arguments_error is None for call in calls):
        return response
    if redact is not None:
        calls = [
            ToolCall(redact(c.id), redact(c.name), c.arguments, c.arguments_error) for c in calls
        ]
        response = replace(response, text=redact(response.text), tool_calls=calls)
    raise UnreadableArgumentsError(response)


class CutOffArgumentsError(ProviderError):
    """A reply was cut off (see `INCOMPLETE_STOP_REASONS`) inside a tool call's arguments.

    A `ProviderError` to a caller of the provider; the agent loop raises `AgentLoopError`
    for it instead, as for any reply cut off where it counts.
    """

    stop_reason: str = "length"
    """The reply's stop reason."""


@dataclass(slots=True)
class ToolCall:
    """A tool call requested by the model."""

    id: str
    """Provider-assigned id, echoed back with the tool's result."""
    name: str
    """Name of the tool to call."""
    arguments: dict[str, Any] = field(default_factory=dict)
    """Arguments, already decoded from JSON."""
    arguments_error: str | None = None
    """Why the model's arguments could not be read (not JSON, or JSON but not an object),
    the text it sent quoted; `arguments` is then empty. The built-in providers set it only
    on the calls of an `UnreadableArgumentsError`'s `response`; an `AgentRuntime` never
    runs such a call, whoever set it."""

    def __post_init__(self) -> None:
        """Checks the fields.

        Raises:
            TypeError: `id` or `name` is not a str, or `arguments_error` neither a str nor None.
        """
        for name in ("id", "name"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"ToolCall.{name} must be a str, got {_kind(value)}")
        if self.arguments_error is not None and not isinstance(self.arguments_error, str):
            raise TypeError(
                f"ToolCall.arguments_error must be None or a str, got {_kind(self.arguments_error)}"
            )


Role = Literal["system", "user", "assistant", "tool"]
"""Who wrote a message; `tool` carries a tool's result."""
MessageContent = str | list[dict[str, Any]] | None
"""A message's content: its text; or, for `OpenAIProvider`, a list of content parts (dicts,
as OpenAI's API reads them: text and images); None stands for no content."""

_ROLES = frozenset(("system", "user", "assistant", "tool"))


@dataclass(slots=True, init=False)
class Message:
    """One chat message, in a provider-neutral form.

    A plain dataclass, not a pydantic model: the agent loop builds two per tool call, and
    only the role needs checking (tool calls come validated from the provider).

    Raises:
        ValueError: When `role` is not one of system, user, assistant, tool.
    """

    role: Role
    """Who wrote the message; `tool` carries a tool's result."""
    content: MessageContent
    """The text of the message (OpenAI's content parts, or None: see `MessageContent`)."""
    tool_calls: list[ToolCall]
    """Tool calls an assistant message requested."""
    tool_call_id: str | None
    """For a `tool` message: the id of the call it answers."""
    name: str | None
    """For a `tool` message: the tool's name."""
    reasoning: Sequence[dict[str, Any]]
    """For an `assistant` message: the provider's reasoning blocks of the reply it repeats
    (`ChatResponse.reasoning`), opaque and sent back as received. Anthropic needs the
    thinking blocks of the reply whose tool calls a conversation answers; other providers
    ignore them."""
    is_error: bool
    """For a `tool` message: the tool failed, and `content` says how (Anthropic's
    `is_error`; other providers ignore it)."""

    # Written out rather than generated with a __post_init__: one frame per message, not two.
    def __init__(
        self,
        role: Role,
        content: MessageContent = "",
        tool_calls: list[ToolCall] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        reasoning: Sequence[dict[str, Any]] = (),
        is_error: bool = False,
    ) -> None:
        if role not in _ROLES:
            raise ValueError(f"message role must be one of {sorted(_ROLES)}, got {role!r}")
        self.role = role
        self.content = content
        self.tool_calls = [] if tool_calls is None else tool_calls
        self.tool_call_id = tool_call_id
        self.name = name
        self.reasoning = reasoning
        self.is_error = is_error


def _loop_message(
    role: Role,
    content: str,
    tool_calls: list[ToolCall],
    tool_call_id: str | None,
    reasoning: Sequence[dict[str, Any]],
    name: str | None = None,
) -> Message:
    """A message the agent loop builds, its fields known good.

    `Message(...)` less its cost: calling a class with a Python `__init__` costs about
    100 ns more than a plain function, and the loop builds two messages a step (and two a
    run: the system and the user message).
    """
    message = _new_object(Message)
    message.role = role
    message.content = content
    message.tool_calls = tool_calls
    message.tool_call_id = tool_call_id
    message.name = name
    message.reasoning = reasoning
    message.is_error = False
    return message


_new_object = object.__new__


class ToolDefinition(BaseModel, frozen=True):  # frozen a class argument: type checkers see it
    """A tool offered to the model: its name, description and JSON schema of arguments."""

    model_config = ConfigDict(defer_build=True)  # built at first use (import time)

    name: str
    """Tool name the model calls it by."""
    description: str = ""
    """What the tool does, shown to the model."""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON schema of the arguments object."""


@dataclass(slots=True)
class Usage:
    """Token usage of one model call.

    The HTTP providers give whole counts from 0 to 2**63 - 1: a count a server reports out
    of that range (negative, say) is taken as 0, with a warning, as is usage that does not
    fit its format, rather than failing a reply that arrived whole.
    """

    input_tokens: int = 0
    """Prompt tokens billed, all of them: cache reads and cache writes included."""
    output_tokens: int = 0
    """Completion tokens billed."""
    cached_input_tokens: int = 0
    """Of `input_tokens`, those read from the provider's prompt cache (Anthropic's
    `cache_read_input_tokens`, OpenAI's `prompt_tokens_details.cached_tokens`), which are
    billed at a lower price."""
    cache_write_tokens: int = 0
    """Of `input_tokens`, those written to the prompt cache (Anthropic's
    `cache_creation_input_tokens`), which are billed at a higher price."""
    cache_write_1h_tokens: int = 0
    """Of `cache_write_tokens`, those written to the 1-hour prompt cache (Anthropic's
    `cache_creation.ephemeral_1h_input_tokens`), which are billed higher still."""
    reasoning_tokens: int = 0
    """Of `output_tokens`, those the model spent reasoning before it answered (OpenAI's
    `completion_tokens_details.reasoning_tokens`). 0 when the provider does not report them
    apart: Anthropic counts its thinking in `output_tokens` only."""
    cost_usd: float = 0.0
    """What the call cost in US dollars, at the token prices the provider was given (0 when
    it was given none). An `AgentRuntime` charges it to its `CostBudget`, and fails the run
    with `AgentRuntimeError` when it is NaN, infinite or below 0, with a budget or without."""

    def __post_init__(self) -> None:
        """Takes integer counts of any integer type as ints (numpy's, say).

        Raises:
            TypeError: A count is not an integer (a float or a bool, say).
        """
        for name in _USAGE_COUNTS:
            value = getattr(self, name)
            if type(value) is not int:
                count = as_index(value)
                if count is None:
                    raise TypeError(f"Usage.{name} must be an int, got {value!r:.40}")
                setattr(self, name, count)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


_USAGE_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)


_OPEN_CALLS: dict[Any, Callable[[Usage], None] | None] = {}
"""The sink of `bill_caller`, by the task whose model call is in progress: a runtime's run
sets its own around each of its calls (its task is the key, so a task started during the
call, which copies its context, is not it)."""


def bill_caller(usage: Usage) -> None:
    """Hands the caller of a model call usage billed that no reply or error will carry back.

    That is usage of a call closed or cancelled after it came (a stream cut by a run's
    deadline, a cancel while waiting to try a failed attempt again), or of a reply the
    provider's own budget refused (its `BudgetExceededError` holds no usage; a
    `ProviderError` carries its own, in `usage`).

    A runtime's run charges it to its own budget and metrics, as it charges a reply, when it
    comes from the task of the run's model call in progress; otherwise the provider's own
    accounting is all there is.
    """
    sink = _OPEN_CALLS.get(current_task())
    if sink is not None:
        sink(usage)


def usage_sum(usages: Iterable[Usage]) -> Usage:
    """The usage of several billed replies (a call's attempts), counted and priced together."""
    total = Usage()
    for usage in usages:
        for name in _USAGE_COUNTS:
            setattr(total, name, getattr(total, name) + getattr(usage, name))
        total.cost_usd += usage.cost_usd
    return total


def _kind(value: Any) -> str:
    """How an error message names the type of `value`."""
    return "None" if value is None else type(value).__name__


def check_stop(stop: object) -> list[str] | None:
    """A call's (or a provider's) `stop=`, once checked to be stop sequences: their list.

    A caller's mistake fails here, before anything is sent: not as a bare "'int' object is
    not iterable", nor as a request whose stop sequences are no strings (`stop=[1]`).

    Args:
        stop: One stop sequence as a str, or any iterable of str but bytes or a mapping (a
            generator too; it is read once, here).

    Returns:
        The stop sequences as a list; None for none (None, `""` or an empty iterable).

    Raises:
        TypeError: `stop` is neither a str nor an iterable of str (an int, bytes, a dict),
            or one of its items is not a str.
    """
    if stop is None or isinstance(stop, str):
        return [stop] if stop else None  # one sequence, not its letters
    if isinstance(stop, (bytes, bytearray, Mapping, BaseModel)) or not isinstance(stop, Iterable):
        raise TypeError(f"stop must be a str or a list of str, got {type(stop).__name__}")
    stops = list(stop)
    for n, item in enumerate(stops):
        if not isinstance(item, str):
            raise TypeError(f"stop[{n}] must be a str, got {type(item).__name__}")
    return stops or None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` before the stop sequence that a model writing it would end at (all of it if none).

    That is the one whose end comes first, as generation stops once a stop sequence is
    complete: with stops `b` and `abc`, `abcd` is cut to `a`.
    """
    cut, first_end = len(text), len(text) + 1
    for stop in stops:
        found = text.find(stop)
        if found >= 0 and (found + len(stop), found) < (first_end, cut):
            cut, first_end = found, found + len(stop)
    return text[:cut]


def estimated_output_tokens(text: str, calls: Sequence[ToolCall] = ()) -> int:
    """Output tokens of a reply whose provider reported none, estimated from characters.

    The reply's text and each tool call's name and JSON arguments count (as characters, not
    as JSON escapes), at `memory.CHARS_PER_TOKEN` characters a token (rounded up).
    """
    written = len(text) + sum(len(c.name) + json_chars(c.arguments) for c in calls)
    return tokens_of_chars(written)


def json_chars(value: Any) -> int:
    """Characters of `value` as JSON (not as JSON escapes), else of its repr.

    The repr when JSON cannot hold the value: a key that is no str, a container that holds
    itself, an int past Python's digit limit (a provider's own objects, which its tools may
    well take).
    """
    try:
        return len(json.dumps(value, ensure_ascii=False, default=str))
    except Exception:  # also a `__str__` that fails, which `default=str` calls
        try:
            return len(repr(value))
        except Exception:  # an estimate is no reason to fail the run
            return 0


def tool_definitions_chars(tools: Sequence[ToolDefinition]) -> int:
    """Characters the tool definitions take of a request: names, descriptions, JSON schemas."""
    return sum(len(d.name) + len(d.description) + json_chars(d.parameters) for d in tools)


def estimated_input_tokens(messages: Sequence[Message], tools_chars: int = 0) -> int:
    """Input tokens of a request whose provider reported none, estimated from characters.

    Every message's content counts (None as none, content parts by their text), and
    `tools_chars` (`tool_definitions_chars`), at `memory.CHARS_PER_TOKEN` characters a token
    (rounded up).
    """
    return tokens_of_chars(tools_chars + messages_chars(messages))


def messages_chars(messages: Iterable[Message]) -> int:
    """Characters of the messages' content (None as none, content parts by their text)."""
    return sum(
        len(content) if type(content := m.content) is str else _content_chars(content)
        for m in messages
    )


def _content_chars(content: object) -> int:
    """Characters of message content that is no str: None's none, content parts' text."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(text)
            for part in content
            if isinstance(part, dict) and isinstance(text := part.get("text"), str)
        )
    if content is None:
        return 0
    raise TypeError(f"message content must be a str, got {_kind(content)}")


@dataclass(slots=True)
class ChatResponse:
    """The complete answer of one chat call."""

    text: str = ""
    """Text the model produced (may be empty when it only calls tools)."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Tool calls the model requested, in order."""
    usage: Usage = field(default_factory=Usage)
    """Tokens used by the call: the built-in providers count in it the attempts the server
    billed that failed and were tried again (a stream cut after its usage came, say)."""
    stop_reason: str | None = None
    """Why generation stopped, as the provider reported it (e.g. `stop`, `tool_calls`,
    `end_turn`). `refusal` when the model declined to answer: `OpenAIProvider` reports an
    OpenAI refusal so too, with the refusal as `text` (an Anthropic refusal may stop a
    reply part way: its text is what came before). An `AgentRuntime` acts on nothing in a
    refusal."""
    model: str | None = None
    """Model that answered, as the provider reported it."""
    reasoning: Sequence[dict[str, Any]] = ()
    """The provider's reasoning blocks, opaque, in the order received: Anthropic's `thinking`
    and `redacted_thinking` blocks (with their signatures), or an OpenAI-compatible reply's
    `reasoning_content` or `reasoning`, `extra_content` and `reasoning_details` (see
    `REASONING_CONTENT`, `REASONING`, `EXTRA_CONTENT`, `REASONING_DETAILS`). Copy
    them into the `assistant` `Message` that repeats this reply (`Message.reasoning`): with
    extended thinking, Anthropic's API refuses a tool-use turn whose reply lost them,
    DeepSeek's a tool-call turn, and Gemini 3's a tool-call turn without its signatures."""

    def __post_init__(self) -> None:
        """Checks the parts a run keeps.

        Raises:
            TypeError: `text` is not a str, `tool_calls` is not a list (or tuple) of
                `ToolCall`, `usage` is not a `Usage`, or `stop_reason` is neither None nor a
                str.
        """
        if not isinstance(self.text, str):  # None is the wire's "no content": that is ""
            raise TypeError(
                'ChatResponse.text must be a str ("" for a reply of tool calls alone), got '
                f"{_kind(self.text)}"
            )
        calls = self.tool_calls
        if not isinstance(calls, (list, tuple)):
            raise TypeError(
                f"ChatResponse.tool_calls must be a list of ToolCall, got {_kind(calls)}"
            )
        for n, call in enumerate(calls):
            if not isinstance(call, ToolCall):
                raise TypeError(
                    f"ChatResponse.tool_calls[{n}] must be a ToolCall, got {_kind(call)}"
                )
        if not isinstance(self.usage, Usage):
            raise TypeError(f"ChatResponse.usage must be a Usage, got {_kind(self.usage)}")
        if self.stop_reason is not None and not isinstance(self.stop_reason, str):
            raise TypeError(
                f"ChatResponse.stop_reason must be None or a str, got {_kind(self.stop_reason)}"
            )


def check_conversation(
    messages: Iterable[Message], tools: Iterable[ToolDefinition] | None
) -> tuple[list[Message], list[ToolDefinition]]:
    """The messages and tools of a call, once checked to be of the types a request is made of.

    A caller's mistake fails here, naming what is wrong and where, before anything is sent:
    not deep in the request's making as a bare `AttributeError` (dicts in the OpenAI SDK's
    shape for messages, one `ToolDefinition` where a list belongs, which iterates as its
    fields), nor as a request that goes out wrong (a tool call's arguments given as JSON
    text would be encoded twice, a string where the API reads an object, content that is
    no text).

    Args:
        messages: The conversation: any iterable of `Message` but a str (a generator too;
            it is read once, here).
        tools: The tools, any iterable of `ToolDefinition` (None: none).

    Returns:
        The messages and the tools, as lists.

    Raises:
        TypeError: `messages` or `tools` is no iterable of them (a str, one message or one
            tool, None for messages), or one of them is not a `Message` / `ToolDefinition`,
            or a message's content is no str (None stands for none; a list of dicts is
            content parts, which `OpenAIProvider` sends as they are), or a message's tool
            call is not a `ToolCall` whose arguments are a dict.
    """
    # One pass, cheap for the usual message (the agent loop calls this every step).
    listed = messages if type(messages) is list else _listed("messages", messages, Message)
    for n, message in enumerate(listed):
        if type(message) is not Message and not isinstance(message, Message):
            raise TypeError(f"messages[{n}] must be a Message, got {type(message).__name__}")
        content = message.content
        # Else sent as given (`"content": 42`) for the server to refuse, or not JSON at all.
        if type(content) is not str and content is not None and not _is_parts(content):
            raise TypeError(
                f"messages[{n}].content must be a str (or, for OpenAI, a list of content "
                f"parts as dicts), got {_kind(content)}"
            )
        if not message.tool_calls:
            continue
        for c, call in enumerate(message.tool_calls):
            where = f"messages[{n}].tool_calls[{c}]"
            if not isinstance(call, ToolCall):
                raise TypeError(f"{where} must be a ToolCall, got {type(call).__name__}")
            if not isinstance(call.arguments, dict):
                raise TypeError(
                    f"{where}.arguments must be a dict (the decoded arguments, not JSON "
                    f"text), got {type(call.arguments).__name__}"
                )
    return listed, [] if tools is None else _listed("tools", tools, ToolDefinition)


def _is_parts(content: object) -> bool:
    """Whether message content is a list of content parts (dicts, such as an image's)."""
    return isinstance(content, list) and all(isinstance(part, dict) for part in content)


def _listed(name: str, items: Iterable[T], kind: type[T]) -> list[T]:
    """`items` as a list, each checked to be a `kind` (see `check_conversation`)."""
    if isinstance(items, (str, bytes, Mapping, BaseModel)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{name} must be a list of {kind.__name__}, got {type(items).__name__} "
            "(wrap a single one in a list)"
        )
    listed = list(items)
    for n, item in enumerate(listed):
        if not isinstance(item, kind):
            raise TypeError(f"{name}[{n}] must be a {kind.__name__}, got {type(item).__name__}")
    return listed


# Stream events are named tuples, not pydantic models: a provider builds one per streamed
# chunk, and they carry values already checked by the provider's parser.


class TextDelta(NamedTuple):
    """Streamed event: a piece of the model's text."""

    text: str
    """The new text."""


@dataclass(frozen=True, slots=True)  # not a NamedTuple: `index` would shadow tuple.index
class ToolCallDelta:
    """Streamed event: a piece of a tool call (arguments arrive as JSON fragments)."""

    index: int
    """Position of the call among this response's tool calls."""
    id: str | None = None
    """The call's id, on the first delta of the call."""
    name: str | None = None
    """The tool's name, or a piece of it: pieces sent before the arguments join up (OpenAI
    may stream a name in pieces)."""
    arguments_delta: str = ""
    """A fragment of the arguments' JSON text."""


class StreamEnd(NamedTuple):
    """Streamed event: the stream finished; carries the assembled response."""

    response: ChatResponse
    """The whole response, with tool calls assembled and usage filled in."""


StreamEvent = TextDelta | ToolCallDelta | StreamEnd
"""Events yielded by `LlmProvider.chat_stream`, ending with exactly one `StreamEnd`."""


class ChatProvider(Protocol):
    """The least a provider needs for `AgentRuntime.run_agent_with_provider` in every mode.

    A `chat` method (`LlmProvider.chat`); a `chat_stream` one, when it has it, streams the
    text of a run whose events are listened to, in either mode (`AgentConfig.mode`), unless
    the provider's `streams_text` attribute is false (its replies exist whole, as
    `ScriptedProvider`'s: `chat` is asked, and each reply is one `LlmTextDelta`).
    """

    async def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> ChatResponse:
        """Sends a conversation (and optional tools) and returns the whole response."""
        ...


class CompletionProvider(Protocol):
    """A text model with `complete` alone.

    Enough for the ReAct mode without stop sequences or `model_params` (see
    `AgentRuntime.run_agent_with_provider`).
    """

    async def complete(self, prompt: str, model: str | None = None) -> str:
        """Returns the model's text reply to a single user prompt."""
        ...


@runtime_checkable
class LlmProvider(ChatProvider, CompletionProvider, Protocol):
    """What the agent loop needs from a model provider.

    `chat` and `complete` (`ChatProvider`, `CompletionProvider`), and their streaming forms.
    Failures raise `ProviderError` (with `status` and `retryable`); a failing stream raises it
    from the iterator, it never hangs.
    """

    def stream(self, prompt: str, model: str | None = None) -> AsyncIterator[str]:
        """Yields the model's text reply to a single user prompt as it arrives."""
        ...

    def chat_stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams a conversation's response as typed events, ending with `StreamEnd`."""
        ...
