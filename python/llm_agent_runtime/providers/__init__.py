"""LLM providers: the `LlmProvider` protocol and its implementations.

`OpenAIProvider` and `AnthropicProvider` are imported on first use, so that importing the
package does not load httpx.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llm_agent_runtime.providers.base import (
    ChatProvider,
    ChatResponse,
    CompletionProvider,
    LlmProvider,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    UnreadableArgumentsError,
    Usage,
)

if TYPE_CHECKING:
    from llm_agent_runtime.providers.anthropic import AnthropicProvider
    from llm_agent_runtime.providers.openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "ChatProvider",
    "ChatResponse",
    "CompletionProvider",
    "LlmProvider",
    "Message",
    "OpenAIProvider",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "UnreadableArgumentsError",
    "Usage",
    "provider_from_env",
]

_OPENAI_API_HOST = "api.openai.com"
"""Host of `DEFAULT_OPENAI_BASE_URL` (kept here: importing the provider module loads httpx)."""

_LAZY = {
    "AnthropicProvider": "llm_agent_runtime.providers.anthropic",
    "OpenAIProvider": "llm_agent_runtime.providers.openai",
}


if not TYPE_CHECKING:  # type checkers read the names above (see the package's)

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def provider_from_env(
    *,
    openai: Mapping[str, Any] | None = None,
    anthropic: Mapping[str, Any] | None = None,
    **options: Any,
) -> OpenAIProvider | AnthropicProvider | None:
    """Returns a real provider chosen from the environment, or None when none is configured.

    `OpenAIProvider` when `OPENAI_API_KEY` is set, or when `OPENAI_BASE_URL` points at an
    OpenAI-compatible server other than OpenAI's own API (a base URL alone suits a local,
    keyless server such as Ollama or vLLM); otherwise `AnthropicProvider` when
    `ANTHROPIC_API_KEY` is set. An `OPENAI_BASE_URL` naming OpenAI's API without a key
    chooses nothing by itself (one without its http:// or https:// scheme is refused, as
    any such URL is). The model comes from `OPENAI_MODEL` / `ANTHROPIC_MODEL` when set. A
    variable set to a blank value counts as unset, as the providers read it (an empty
    `OPENAI_BASE_URL=` line does not win over `ANTHROPIC_API_KEY`).

    Args:
        openai: Options for `OpenAIProvider` only, when it is chosen (e.g. `{"send_stop":
            False}` for a model that refuses `stop`, or `{"stream_usage": False}`).
        anthropic: Options for `AnthropicProvider` only, when it is chosen (e.g.
            `{"max_tokens": 16000}`).
        **options: Passed to the chosen provider's constructor (e.g. `retry=`, `budget=`),
            with the chosen provider's own options, which win.

    Returns:
        The provider (use it as an `async with` block, or `await provider.aclose()` when
        done), or None when neither provider is configured.

    Raises:
        ProviderError: The chosen provider refuses its settings (a key no HTTP header can
            carry, or a base URL without its http:// or https:// scheme, for instance).
        TypeError: `openai` or `anthropic` is no mapping of option names, or the chosen
            provider takes no such option.
    """
    base_url = _setting("OPENAI_BASE_URL")
    if _setting("OPENAI_API_KEY") or (base_url and not _is_openai_api(base_url)):
        from llm_agent_runtime.providers.openai import OpenAIProvider

        return OpenAIProvider(**_with_own(options, openai, "openai"))
    if _setting("ANTHROPIC_API_KEY"):
        from llm_agent_runtime.providers.anthropic import AnthropicProvider

        return AnthropicProvider(**_with_own(options, anthropic, "anthropic"))
    return None


def _with_own(options: dict[str, Any], own: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """`options` with the chosen provider's `own`, which win.

    Raises:
        TypeError: `own` is neither None nor a mapping of option names.
    """
    if own is None:
        return options
    if not isinstance(own, Mapping) or not all(isinstance(key, str) for key in own):
        raise TypeError(f"{name} must be a mapping of option names to values, got {own!r:.80}")
    return {**options, **own}


def _setting(name: str) -> str | None:
    """A variable as the providers read it (`_http.env_setting`): blank is unset.

    Repeated here so that choosing a provider does not import httpx.
    """
    value = os.environ.get(name)
    return value if value and not value.isspace() else None


def _is_openai_api(url: str) -> bool:
    """Whether a base URL is OpenAI's own API (which needs a key), whatever its path.

    Also what `openai.openai_endpoint` refuses to call without a key.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:  # a malformed URL: OpenAIProvider will say what is wrong with it
        return False
    # Without its http(s) scheme (`//api.openai.com/v1`, `htps://...`) it is a URL the
    # provider refuses, and says so, not OpenAI's API quietly set aside for the offline model.
    if parts.scheme.lower() not in ("http", "https"):
        return False
    return (host or "").rstrip(".") == _OPENAI_API_HOST  # a trailing dot: the same host
