"""Persistence backends for checkpoints, sessions and event logs.

`PostgresBackend` and `RedisBackend` load their drivers only when first used.
"""

from typing import TYPE_CHECKING, Any

from llm_agent_runtime.persistence.base import PersistenceBackend, session_key, step_key
from llm_agent_runtime.persistence.file import FileBackend
from llm_agent_runtime.persistence.memory import InMemoryBackend
from llm_agent_runtime.persistence.sqlite import SqliteBackend

if TYPE_CHECKING:
    from llm_agent_runtime.persistence.postgres import PostgresBackend
    from llm_agent_runtime.persistence.redis import RedisBackend

__all__ = [
    "FileBackend",
    "InMemoryBackend",
    "PersistenceBackend",
    "PostgresBackend",
    "RedisBackend",
    "SqliteBackend",
    "session_key",
    "step_key",
]


def __getattr__(name: str) -> Any:
    # The server backends import their drivers: load them on first use only.
    if name == "PostgresBackend":
        from llm_agent_runtime.persistence.postgres import PostgresBackend

        return PostgresBackend
    if name == "RedisBackend":
        from llm_agent_runtime.persistence.redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
