"""Configuration of the agent loop."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["MAX_COUNT", "RUNTIME_PARAMS", "AgentConfig", "check_model_params", "check_unicode"]

MAX_COUNT = 2**63 - 1
"""Largest value of every integer setting (the largest signed 64-bit int the Rust core takes)."""
RUNTIME_PARAMS = frozenset(
    ("messages", "tools", "model", "stop", "stop_sequences", "stream", "stream_options", "system")
)
"""Model call parameters the runtime sets itself, which `AgentConfig.model_params` refuses
(`model`, `stop_sequences`, `system_prompt` and `mode` set them)."""


class AgentConfig(BaseModel, frozen=True):
    """Settings of one `AgentRuntime`, validated once at construction.

    Integer settings are strict: a bool (`True`), a float or a numeric string (`"7"`) is
    refused rather than converted, as are values above `MAX_COUNT`; bool settings take only
    bools.

    Attributes:
        max_iterations: Thought-Action-Observation cycles before the loop gives up.
        model: Model name passed to the provider (None lets the provider choose); surrounding
            whitespace is stripped, and a blank name is refused.
        system_prompt: Instruction put first in every prompt.
        max_memory_recalls: Episodes recalled into the prompt at most.
        max_memory_tokens: Token budget of recalled episodes (about 4 characters a token, at
            least 1 each); 0 injects no memory, None sets no budget.
        stop_sequences: Sent with every model call; a reply is also cut before the first
            one it contains, so an `infer` function or a provider that ignores them ends
            there too (e.g. `["Observation:"]` keeps a ReAct model from inventing results).
        loop_timeout_ms: Wall-clock limit of one run (a `run_agent` / `run_turn` call, or a
            resumed run), all of it: the `on_user_message` hooks, the start and final
            checkpoints, and every model and tool call. When it passes, the run raises
            `AgentLoopError` ("agent loop timed out after N ms (k steps done)", k counting this
            turn's steps); saving what the failed run left unsaved then gets at most as long
            again, and so does the cleanup of a run cancelled from outside (1 s without a
            limit). None for no limit.
        mode: `react` (text parsed by the ReAct parser) or `tools` (native tool calls).
        max_parallel_tool_calls: Native tool calls of one response run concurrently up to this.
        max_observation_chars: Observations longer than this are truncated.
        corrective_reprompt: On unparseable output (in `tools` mode, a reply with neither a
            tool call nor text), re-prompt once before failing: the bad reply and a nudge
            are sent with the rest of the run's requests, the re-prompt takes an iteration,
            and the step that answers it counts the wasted call's tokens and model time.
        error_recovery: `stop` ends the run on a failed tool round; `retry` goes on.
        context_window_tokens: Token budget of a multi-turn session's requests: the chat
            history kept is what fits beside the rest of the request (context, tools and
            question), estimated at about 4 characters a token, as `max_memory_tokens` is
            (text in CJK scripts or emoji takes about a token a character: set it lower).
            The history is trimmed once a turn, for its first request; the turn's later
            requests add its tool calls and observations on top (each one at most
            `max_observation_chars`), so leave room for them below the model's window.
        model_params: Other parameters of every model call the runtime makes through a
            provider (`chat` and `chat_stream`, in both modes; not an `infer` function),
            passed to it as keyword arguments: e.g. `{"temperature": 0}`, or
            `{"max_completion_tokens": 2048}` for OpenAI's reasoning models, `{"thinking":
            {"type": "adaptive"}}` for Anthropic's from Claude 4.6 on (`{"type": "enabled",
            "budget_tokens": 2048}` before). Read when a run
            starts. Keys the runtime sets itself (`RUNTIME_PARAMS`: messages, tools, model,
            stop, stop_sequences, stream, stream_options, system) are refused: set `model`,
            `stop_sequences`, `system_prompt` and `mode` instead. Values are JSON data, as
            the request bodies carry them (no NaN or infinity, no sets, string keys).
    """

    # `frozen` is a class argument, which type checkers see (they do not read model_config).
    # `protected_namespaces=()`: `model_params` is a setting, not pydantic's (before 2.10,
    # pydantic warns of any field named `model_...`). `defer_build`: the validator is built at
    # the first validation, not at import, which then skips pydantic's plugin loading.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), defer_build=True)

    max_iterations: int = Field(default=10, strict=True, ge=1, le=MAX_COUNT)
    model: str | None = None
    system_prompt: str = "You are a helpful AI agent."
    max_memory_recalls: int = Field(default=3, strict=True, ge=0, le=MAX_COUNT)
    max_memory_tokens: int | None = Field(default=None, strict=True, ge=0, le=MAX_COUNT)
    stop_sequences: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    loop_timeout_ms: int | None = Field(default=None, strict=True, ge=1, le=MAX_COUNT)
    mode: Literal["react", "tools"] = "react"
    max_parallel_tool_calls: int = Field(default=4, strict=True, ge=1, le=MAX_COUNT)
    max_observation_chars: int = Field(default=4000, strict=True, ge=16, le=MAX_COUNT)
    corrective_reprompt: bool = Field(default=False, strict=True)
    error_recovery: Literal["stop", "retry"] = "retry"
    context_window_tokens: int = Field(default=8000, strict=True, ge=16, le=MAX_COUNT)
    model_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, model: str | None) -> str | None:
        if model is None:
            return None
        model = model.strip()
        if not model:
            raise ValueError("model must not be blank (None lets the provider choose)")
        return check_unicode("model", model)

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt_is_text(cls, prompt: str) -> str:
        return check_unicode("system_prompt", prompt)

    @field_validator("model_params")
    @classmethod
    def _no_runtime_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_model_params(params)
        return params


def check_model_params(params: dict[str, Any]) -> None:
    """Refuses `model_params` that request bodies cannot carry as they are.

    That is a key the runtime sets itself, a key not a str, or a value that is not JSON data.

    Raises:
        ValueError: Saying which key.
    """
    odd = [key for key in params if not isinstance(key, str)]
    if odd:
        raise ValueError(f"model_params keys must be strings, got {odd[0]!r}")
    taken = sorted(RUNTIME_PARAMS.intersection(params))
    if taken:
        raise ValueError(
            f"model_params cannot set {taken}: the runtime sets them itself (use the "
            "AgentConfig settings model, stop_sequences, system_prompt and mode)"
        )
    for key, value in params.items():
        check_unicode("model_params key", key)
        try:
            # Encoded too: a lone surrogate has no UTF-8 form (json.dumps escapes it).
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError(
                f"model_params[{key!r}] holds a string that is not valid Unicode (a lone "
                "surrogate, half a pair), which no request body can carry"
            ) from None
        except (TypeError, ValueError, RecursionError) as error:
            raise ValueError(
                f"model_params[{key!r}] is not JSON data, which a request body carries: {error}"
            ) from None
        inner = _non_str_keys(value)
        if inner:  # json writes 1 as "1": a body would hold a key twice, or a number as a name
            raise ValueError(
                f"model_params[{key!r}] holds a key that is not a str: {inner[0]!r} (JSON "
                "object keys are strings: write it as one)"
            )


def _non_str_keys(value: Any) -> list[object]:
    """The dict keys in `value` (JSON data, so a finite tree) that are not a str."""
    odd: list[object] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            odd += [key for key in item if not isinstance(key, str)]
            pending += item.values()
        elif isinstance(item, (list, tuple)):
            pending += item
    return odd


def check_unicode(what: str, text: str) -> str:
    """`text`, refused when it is not valid Unicode.

    No request, nor the config's JSON, can carry a lone surrogate.

    Raises:
        ValueError: `text` holds a lone surrogate; the message names `what` and where.
    """
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{what} is not valid Unicode: it holds a lone surrogate at index {error.start}"
            ) from None
    return text
