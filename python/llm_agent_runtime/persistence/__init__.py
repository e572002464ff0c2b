"""Persistence backends for checkpoints, sessions and event logs."""

from llm_agent_runtime.persistence.base import PersistenceBackend, session_key, step_key
from llm_agent_runtime.persistence.file import FileBackend
from llm_agent_runtime.persistence.memory import InMemoryBackend
from llm_agent_runtime.persistence.sqlite import SqliteBackend

__all__ = [
    "FileBackend",
    "InMemoryBackend",
    "PersistenceBackend",
    "SqliteBackend",
    "session_key",
    "step_key",
]
