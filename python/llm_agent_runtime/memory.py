"""Agent memory: working memory, episodic memory and prompt token budgeting."""

from __future__ import annotations

from collections.abc import Iterable

from llm_agent_runtime._core import (
    DecayPolicy,
    Episode,
    EpisodicStore,
    RecallPolicy,
    WorkingMemory,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "DecayPolicy",
    "Episode",
    "EpisodicStore",
    "RecallPolicy",
    "WorkingMemory",
    "estimate_tokens",
    "fit_to_token_budget",
]

CHARS_PER_TOKEN = 4
"""The runtime's token estimate: about four characters a token."""


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text` (about four characters a token, rounded up)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def fit_to_token_budget(texts: Iterable[str], max_tokens: int) -> list[str]:
    """Keeps texts, in order, while their estimated tokens fit in `max_tokens`.

    Stops at the first text that does not fit, so a higher-ranked memory is never dropped
    in favour of a lower-ranked one that happens to be shorter.

    Raises:
        ValueError: `max_tokens` is negative.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    kept: list[str] = []
    used = 0
    for text in texts:
        cost = estimate_tokens(text)
        if used + cost > max_tokens:
            break
        kept.append(text)
        used += cost
    return kept
