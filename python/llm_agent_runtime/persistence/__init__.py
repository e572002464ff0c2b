"""Persistence backends for checkpoints, sessions and event logs.

Each backend's module loads on first use: `PostgresBackend` and `RedisBackend` import their
drivers then, and a program that checkpoints to memory never loads SQLite.
"""

from typing import TYPE_CHECKING

from llm_agent_runtime._lazy import lazy_exports

if TYPE_CHECKING:
    from llm_agent_runtime.persistence.base import (
        FencedPersistenceBackend,
        PersistenceBackend,
        session_key,
        step_key,
    )
    from llm_agent_runtime.persistence.file import FileBackend
    from llm_agent_runtime.persistence.memory import InMemoryBackend
    from llm_agent_runtime.persistence.postgres import PostgresBackend
    from llm_agent_runtime.persistence.redis import RedisBackend
    from llm_agent_runtime.persistence.sqlite import SqliteBackend

_EXPORTS = {
    "FencedPersistenceBackend": "llm_agent_runtime.persistence.base",
    "FileBackend": "llm_agent_runtime.persistence.file",
    "InMemoryBackend": "llm_agent_runtime.persistence.memory",
    "PersistenceBackend": "llm_agent_runtime.persistence.base",
    "PostgresBackend": "llm_agent_runtime.persistence.postgres",
    "RedisBackend": "llm_agent_runtime.persistence.redis",
    "SqliteBackend": "llm_agent_runtime.persistence.sqlite",
    "session_key": "llm_agent_runtime.persistence.base",
    "step_key": "llm_agent_runtime.persistence.base",
}

__all__ = [
    "FencedPersistenceBackend",
    "FileBackend",
    "InMemoryBackend",
    "PersistenceBackend",
    "PostgresBackend",
    "RedisBackend",
    "SqliteBackend",
    "session_key",
    "step_key",
]

if not TYPE_CHECKING:  # type checkers read the names above (see the package's)
    __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
