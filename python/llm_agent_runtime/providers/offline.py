"""`ScriptedProvider`: an offline model that replays scripted replies (tests, demo)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from llm_agent_runtime.errors import ProviderError
from llm_agent_runtime.memory import tokens_of_chars
from llm_agent_runtime.orchestration._checks import check_flag, safe_repr, short_repr
from llm_agent_runtime.providers.base import (
    TRUNCATION_STOP_REASONS,
    ChatResponse,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
    check_conversation,
    check_stop,
    cut_at_stop,
    estimated_input_tokens,
    estimated_output_tokens,
    tool_definitions_chars,
)

__all__ = ["ScriptedProvider", "ScriptedReply"]

ScriptedReply = str | ChatResponse
"""A text reply, or a whole response (e.g. with native tool calls)."""


class ScriptedProvider:
    """Replays a list of replies in order, or answers through a rule `prompt -> reply`.

    Each response reports its usage as a provider bills it: a response whose usage does not
    count its input (a text reply, `tool_call_reply`'s) or its output counts them estimated
    from characters (`memory.CHARS_PER_TOKEN` a token, rounded up: any text is at least one);
    the input is the whole request, every message and tool definition. Budgets and token
    metrics then count scripted runs as they would count real ones.

    Args:
        replies: Replies to return one per call, in order.
        rule: Maps the latest prompt text to a reply (used when `replies` is None).
        loop: Start the list again when it runs out, instead of raising.

    A reply that is neither a str nor a `ChatResponse` is a `ProviderError` naming its type:
    at construction for `replies`, at the call for what `rule` returns. A copy (`copy.copy`,
    `copy.deepcopy`) or a pickled one replays the rest of the script on its own.

    Raises:
        ValueError: When neither or both of `replies` and `rule` are given, or `replies` is
            a str, bytes or a mapping (a list of replies is expected: a str would be
            replayed a character a call, a dict its keys).
        ProviderError: When a reply of `replies` is neither a str nor a `ChatResponse`.
        TypeError: When `loop` is no bool (any str, "false" too, would read as true), or
            `rule` is not callable.
    """

    streams_text = False
    """Its replies exist whole: the runtime needs no stream to report their text."""

    def __init__(
        self,
        replies: Sequence[ScriptedReply] | None = None,
        rule: Callable[[str], ScriptedReply] | None = None,
        loop: bool = False,
    ) -> None:
        if (replies is None) == (rule is None):
            raise ValueError("give exactly one of replies or rule")
        if isinstance(replies, str):
            raise ValueError("replies must be a list of replies, got one str (wrap it in a list)")
        if isinstance(replies, (bytes, bytearray, Mapping)):
            kind = type(replies).__name__
            raise ValueError(f"replies must be a list of replies, got a {kind}")
        if rule is not None and not callable(rule):
            raise TypeError(
                f"rule must be a function mapping the prompt to a reply, got {type(rule).__name__}"
            )
        self._rule = rule
        self._replies = list(replies or [])
        for n, reply in enumerate(self._replies, 1):
            if not isinstance(reply, (str, ChatResponse)):
                raise ProviderError(_not_a_reply(f"scripted reply {n}", reply))
        self._loop = check_flag("loop", loop)
        self._index = 0
        """Of the next listed reply (a copy or a pickled one goes on from it on its own)."""
        self.calls = 0
        """Number of calls answered."""
        # Runs on several threads may share the provider: each reply is taken once.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # a copy takes its replies under a lock of its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @safe_repr
    def __repr__(self) -> str:
        # The replies' count, not their text: a script may be long.
        if self._rule is not None:
            rule = getattr(self._rule, "__name__", None) or type(self._rule).__name__
            return f"ScriptedProvider(rule={short_repr(rule)}, calls={self.calls})"
        return (
            f"ScriptedProvider(replies={len(self._replies)}, loop={self._loop}, calls={self.calls})"
        )

    def _next(
        self,
        prompt: str,
        messages: Sequence[Message] | None = None,
        tools: Sequence[ToolDefinition] | None = None,
        stop: tuple[str, ...] = (),
    ) -> ChatResponse:
        """The next reply as a response, its usage completed (see the class); counts the call.

        `prompt` is what the rule sees; the request is `messages` and `tools` (without
        `messages`: the prompt alone). Its size is estimated only for a usage that lacks it.
        Its text ends before the first of the `stop` sequences in it, as a model stops there.
        """
        if self._rule is not None:
            reply = self._rule(prompt)
            if not isinstance(reply, (str, ChatResponse)):
                if inspect.iscoroutine(reply):  # an async rule: never awaited, so closed
                    reply.close()
                    raise ProviderError(
                        "the scripted rule must be a plain function returning a str or a "
                        "ChatResponse, not an async one"
                    )
                raise ProviderError(_not_a_reply("the scripted rule's reply", reply))
            response = self._completed(_cut(reply, stop), prompt, messages, tools)
            with self._lock:
                self.calls += 1
            return response
        with self._lock:
            index, reply = self._listed()
            response = self._completed(_cut(reply, stop), prompt, messages, tools)
            self._index = index + 1  # taken only once answered: a refused request uses up none
            self.calls += 1
        return response

    def _listed(self) -> tuple[int, ScriptedReply]:
        """The next listed reply and its index, not yet taken.

        After the last, the first again when the script loops, else raises.
        """
        index = self._index
        if index == len(self._replies):
            if not (self._loop and self._replies):
                raise ProviderError(_RAN_OUT)
            index = 0
        return index, self._replies[index]

    @staticmethod
    def _completed(
        reply: ScriptedReply,
        prompt: str,
        messages: Sequence[Message] | None,
        tools: Sequence[ToolDefinition] | None,
    ) -> ChatResponse:
        """`reply` as a response, its usage completed from the request (see the class)."""
        if not isinstance(reply, ChatResponse):
            return ChatResponse(
                text=reply,
                usage=Usage(_sent_tokens(prompt, messages, tools), estimated_output_tokens(reply)),
                stop_reason="stop",
                model="scripted",
            )
        usage = reply.usage
        if usage.input_tokens and usage.output_tokens:  # a scripted usage, as it is
            return reply
        written = usage.output_tokens or estimated_output_tokens(reply.text, reply.tool_calls)
        sent = usage.input_tokens or _sent_tokens(prompt, messages, tools)
        usage = dataclasses.replace(usage, input_tokens=sent, output_tokens=written)
        return dataclasses.replace(reply, usage=usage)

    @staticmethod
    def tool_call_reply(
        calls: Sequence[tuple[str, dict[str, Any]]], text: str = ""
    ) -> ChatResponse:
        """Builds a response requesting native tool calls `(name, arguments)`, ids `call_<i>`.

        Its usage counts the output (estimated from its characters, as `complete` does); its
        input is not known until it is sent. The arguments are a dict, as a provider hands
        them over decoded (JSON text is a provider's wire form, not a reply's).

        Raises:
            TypeError: A call is not a `(name, arguments)` pair of a str and a dict, or
                `text` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(f"tool_call_reply: text must be a str, got {type(text).__name__}")
        tool_calls = []
        for i, call in enumerate(calls):
            if not (
                isinstance(call, (tuple, list))
                and len(call) == 2
                and isinstance(call[0], str)
                and isinstance(call[1], dict)
            ):
                raise TypeError(
                    f"tool_call_reply: call {i} must be a (name, arguments) pair of a str and "
                    f"a dict, got {short_repr(call)}"
                )
            tool_calls.append(ToolCall(id=f"call_{i}", name=call[0], arguments=call[1]))
        return ChatResponse(
            text=text,
            tool_calls=tool_calls,
            usage=Usage(output_tokens=max(1, estimated_output_tokens(text, tool_calls))),
            stop_reason="tool_calls",
            model="scripted",
        )

    async def complete(self, prompt: str, model: str | None = None) -> str:
        """Returns the next scripted text reply."""
        return self._next(prompt).text

    async def stream(self, prompt: str, model: str | None = None) -> AsyncIterator[str]:
        """Yields the next scripted reply word by word (each word with the space after it).

        The pieces join back to exactly the reply's text.
        """
        text = self._next(prompt).text
        start = 0
        while start < len(text):
            end = text.find(" ", start) + 1 or len(text)
            yield text[start:end]
            start = end

    async def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> ChatResponse:
        """Returns the next scripted response; the rule sees the last message's content.

        Raises:
            ProviderError: The replies ran out, or the rule's reply is no reply.
            TypeError: `messages` or `tools` is not an iterable of `Message` /
                `ToolDefinition` (as the HTTP providers refuse them): no reply is used up.
        """
        if not _loop_shaped(messages, tools):
            messages, tools = check_conversation(messages, tools)
        stop = _stop_sequences(params.get("stop")) if params else ()
        if self._rule is not None:
            return self._next(_last_content(messages), messages, tools, stop)
        # A listed reply, taken here (one call less a step: this is the loop's model call),
        # under the lock by hand (a `with` block costs half as much again): this is every step.
        lock = self._lock
        lock.acquire()
        try:
            index = self._index
            replies = self._replies
            if index == len(replies):
                index = self._listed()[0]  # the first again when the script loops, else raises
            reply = replies[index]
            if stop:
                reply = _cut(reply, stop)
            if type(reply) is not ChatResponse or not (
                reply.usage.input_tokens and reply.usage.output_tokens
            ):  # else a scripted usage, as it is
                reply = self._completed(reply, _last_content(messages), messages, tools)
            self._index = index + 1
            self.calls += 1
        finally:
            lock.release()
        return reply

    async def chat_stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Streams the next scripted response as a real provider would, with whole pieces.

        Its text as one `TextDelta`, then each tool call as one `ToolCallDelta` (its id, its
        name and its arguments as JSON text), then `StreamEnd`.

        Raises:
            ProviderError: From the iterator: the replies ran out, or the rule's reply is no
                reply.
            TypeError: From the iterator, as for `chat`.
        """
        if not _loop_shaped(messages, tools):
            messages, tools = check_conversation(messages, tools)
        stop = _stop_sequences(params.get("stop")) if params else ()
        response = self._next(_last_content(messages), messages, tools, stop)
        if response.text:
            yield TextDelta(text=response.text)
        for index, call in enumerate(response.tool_calls):
            arguments = json.dumps(call.arguments, ensure_ascii=False, default=str)
            yield ToolCallDelta(index, call.id, call.name, arguments)
        yield StreamEnd(response=response)


_RAN_OUT = "scripted provider ran out of replies"


def _stop_sequences(stop: object) -> tuple[str, ...]:
    """A call's `stop=`, checked as the HTTP providers check it (`check_stop`).

    Its empty sequences are left out: an empty one would cut every reply to nothing.

    Raises:
        TypeError: `stop` is neither a str nor an iterable of str.
    """
    return tuple(sequence for sequence in check_stop(stop) or () if sequence)


def _cut(reply: ScriptedReply, stop: tuple[str, ...]) -> ScriptedReply:
    """`reply` with its text ended where a model writing it stops (`cut_at_stop`).

    What it would have written after is neither sent nor counted: an output count estimated
    from the whole text (`tool_call_reply`'s) is estimated again; a usage scripted whole (both
    counts) is the script's, as it is.
    """
    if not stop:
        return reply
    text = reply if isinstance(reply, str) else reply.text
    cut = cut_at_stop(text, stop)
    if len(cut) == len(text):
        return reply
    if isinstance(reply, str):
        return cut
    usage = reply.usage
    if not usage.input_tokens:
        usage = dataclasses.replace(usage, output_tokens=0)  # estimated from what is left
    # It stopped before any token limit; a safety stop or a tool call's end is the script's.
    ended = reply.stop_reason
    stop_reason = "stop" if ended is None or ended in TRUNCATION_STOP_REASONS else ended
    return dataclasses.replace(reply, text=cut, usage=usage, stop_reason=stop_reason)


def _loop_shaped(messages: object, tools: object) -> bool:
    """Whether a request has the agent loop's shape: lists ending in a `Message` and a tool.

    The last message is the one a rule reads. Anything else gets the HTTP providers' full
    check (`check_conversation`), so a test's mistake (a str, None, OpenAI-style dicts, one
    tool) fails alike here. The loop's requests skip it: its messages grow by two a step,
    and checking each of them at every call would cost the zero-latency model more than the
    step itself.
    """
    return (
        type(messages) is list
        and (not messages or (type(messages[-1]) is Message and type(messages[-1].content) is str))
        and (
            tools is None
            or (type(tools) is list and (not tools or type(tools[-1]) is ToolDefinition))
        )
    )


def _last_content(messages: Sequence[Message]) -> str:
    """What the rule sees of a request: the last message's text ("" for none).

    Of content parts, the text parts', one a line.
    """
    content = messages[-1].content if messages else None
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return content or ""


def _not_a_reply(what: str, reply: object) -> str:
    """The message of a `ProviderError` for a scripted reply of the wrong type."""
    kind = "None" if reply is None else type(reply).__name__
    return f"{what} must be a str or a ChatResponse, got {kind}"


def _sent_tokens(
    prompt: str, messages: Sequence[Message] | None, tools: Sequence[ToolDefinition] | None
) -> int:
    """Input tokens of a request: every message and tool definition, or the prompt alone."""
    if messages is None:
        return tokens_of_chars(len(prompt))
    try:
        return estimated_input_tokens(messages, tool_definitions_chars(tools or ()))
    except (AttributeError, TypeError):
        # An item the agent loop's shape check did not look at (only the last) is no
        # Message / ToolDefinition: the full check names it.
        check_conversation(messages, tools)
        raise
