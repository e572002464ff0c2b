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
from llm_agent_runtime.orchestration._checks import check_count

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


def tokens_of_chars(chars: int) -> int:
    """Estimated tokens of `chars` characters, rounded up.

    Any text is at least one token (a real API bills a one-character reply); none is none.
    """
    return -(-chars // CHARS_PER_TOKEN)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text`: about four characters a token, rounded up, and at least 1.

    Any text costs at least one token (a blank memory still takes a line of the prompt), so
    a budget of `n` tokens holds at most `n` texts.

    Raises:
        ValueError: `text` is not a str (bytes, a list, None), as `fit_to_token_budget`
            refuses such items: `len()` would count bytes or items, not characters.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}: {text!r:.80}")
    return _tokens(text)


def _tokens(text: str) -> int:
    """`estimate_tokens` of a text already known to be a str."""
    return max(1, tokens_of_chars(len(text)))


def fit_to_token_budget(texts: Iterable[str], max_tokens: int) -> list[str]:
    """Keeps texts, in order, whose estimated tokens fit together in `max_tokens`.

    A text that does not fit in what is left of the budget is skipped, and the next ones are
    still tried: one oversized top-ranked memory does not shut out the smaller ones after it.
    The kept texts stay in their given (rank) order.

    Raises:
        ValueError: `max_tokens` is negative or not an int (a float, NaN included, or a bool),
            `texts` is one str or bytes (it would be read a character, or a byte, a text), is
            not iterable (None, a number), or holds something other than a str (bytes, a
            list, None), wherever it stands.
    """
    max_tokens = check_count("max_tokens", max_tokens, 0)
    if isinstance(texts, (str, bytes, bytearray)):
        raise ValueError(
            f"texts must be an iterable of str, got one {type(texts).__name__} (wrap it in a list)"
        )
    try:
        items = iter(texts)
    except TypeError:  # only the iter() call: an error raised by a generator passes through
        raise ValueError(f"texts must be an iterable of str, got {type(texts).__name__}") from None
    texts = list(items)
    # Every item is checked, not only those reached before the budget runs out: a list or
    # bytes would otherwise be costed by its len() and kept, and None fail inside len().
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"texts must hold only str, got {type(text).__name__} at index {i}: {text!r:.80}"
            )
    kept: list[str] = []
    used = 0
    for text in texts:
        if used >= max_tokens:
            break  # every text costs at least 1 token: nothing more can fit
        cost = _tokens(text)  # each text was checked above
        if used + cost > max_tokens:
            continue
        kept.append(text)
        used += cost
    return kept
