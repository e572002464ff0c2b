"""LLM providers: the `LlmProvider` protocol and its implementations.

`OpenAIProvider` and `AnthropicProvider` are imported on first use, so that importing the
package does not load httpx.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from llm_agent_runtime.providers.base import LlmProvider

if TYPE_CHECKING:
    from llm_agent_runtime.providers.anthropic import AnthropicProvider
    from llm_agent_runtime.providers.openai import OpenAIProvider

__all__ = ["AnthropicProvider", "OpenAIProvider", "provider_from_env"]

_LAZY = {
    "AnthropicProvider": "llm_agent_runtime.providers.anthropic",
    "OpenAIProvider": "llm_agent_runtime.providers.openai",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def provider_from_env(**options: Any) -> LlmProvider | None:
    """Returns a real provider chosen from the environment, or None when none is configured.

    `OPENAI_API_KEY` or `OPENAI_BASE_URL` selects `OpenAIProvider` (a base URL alone suits a
    local OpenAI-compatible server such as Ollama or vLLM); otherwise `ANTHROPIC_API_KEY`
    selects `AnthropicProvider`. The model comes from `OPENAI_MODEL` / `ANTHROPIC_MODEL` when
    set.

    Args:
        **options: Passed to the chosen provider's constructor (e.g. `retry=`, `budget=`).

    Returns:
        The provider, or None when none of those variables is set.
    """
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        from llm_agent_runtime.providers.openai import OpenAIProvider

        return OpenAIProvider(**options)
    if os.environ.get("ANTHROPIC_API_KEY"):
        from llm_agent_runtime.providers.anthropic import AnthropicProvider

        return AnthropicProvider(**options)
    return None
