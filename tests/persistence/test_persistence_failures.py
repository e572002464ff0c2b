"""Failures a checkpoint must survive: records that would not load back, bad paths."""

import os
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore

from .test_backends import backend_fixture

backend = backend_fixture(["sqlite", "file", "postgres", "redis"])

# OpenAI-style content parts: a chat message of the wrong shape for a session.
PARTS_MESSAGE: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": "hi"}]}


@pytest.mark.parametrize("path", ["", None, 123, b"store.db"])
def test_sqlite_backend_refuses_a_path_that_names_no_database_file(
    path: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "" would be a private temporary database, gone at close; None a file named "None".
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ar.PersistenceError, match="path"):
        ar.SqliteBackend(path)
    assert os.listdir(tmp_path) == []


async def test_sqlite_backend_still_takes_a_str_or_a_path(tmp_path: Path) -> None:
    for path in (str(tmp_path / "a.db"), tmp_path / "b.db"):
        with ar.SqliteBackend(path) as store:
            await store.save("k", b"v")
        with ar.SqliteBackend(path) as store:
            assert await store.load("k") == b"v"


async def test_save_final_refuses_a_session_that_would_not_load_back(
    backend: ar.PersistenceBackend,
) -> None:
    store = CheckpointStore(backend)
    session = ar.AgentSession(session_id="s", agent_id="a", prompt="first")
    session.final_answer = "one"
    await store.save_final(session, {})
    session.messages.append(PARTS_MESSAGE)
    with pytest.raises(ar.PersistenceError, match="content") as caught:
        await store.save_final(session, {})
    assert caught.value.key == "session:s"
    # The checkpoint before it is still there, whole.
    loaded = (await store.load("s")).session()
    assert loaded.final_answer == "one"
    assert loaded.messages == []


async def test_save_meta_refuses_a_history_that_would_not_load_back(
    backend: ar.PersistenceBackend,
) -> None:
    store = CheckpointStore(backend)
    session = ar.AgentSession(session_id="t", agent_id="a", prompt="p")
    with pytest.raises(ar.PersistenceError, match="history"):
        await store.save_meta(session, "react", turn=True, history=[PARTS_MESSAGE])
    assert await backend.list_keys() == []  # nothing written that no load takes back
    with pytest.raises(ar.PersistenceError, match="no checkpoint saved"):
        await store.load("t")
    # The refused run writes nothing after either.
    with pytest.raises(ar.PersistenceError, match="refused"):
        await store.append_events("t", [ar.RunStarted("t", "a", "p")])
    assert await backend.list_keys() == []


async def test_save_meta_refuses_fields_of_the_wrong_type(
    backend: ar.PersistenceBackend,
) -> None:
    store = CheckpointStore(backend)
    session = ar.AgentSession(session_id="u", agent_id="a", prompt="p")
    with pytest.raises(ar.PersistenceError, match="meta record"):
        await store.save_meta(session, 3, turn=True)  # type: ignore[arg-type]
    with pytest.raises(ar.PersistenceError, match="meta record"):
        await store.save_meta(session, "react", turn=1)  # type: ignore[arg-type]
    assert await backend.list_keys() == []


async def test_save_meta_refuses_to_store_earlier_turns_that_would_not_load_back(
    backend: ar.PersistenceBackend,
) -> None:
    # Steps the store lacks (a session restored from JSON) are saved as the final checkpoint
    # of its earlier turns: one that no load takes back is refused before it is written.
    store = CheckpointStore(backend)
    session = ar.AgentSession(session_id="r", agent_id="a", prompt="p")
    session.steps.append(ar.Step("t", "add", {"a": 1}, "2"))
    session.messages.append(PARTS_MESSAGE)
    with pytest.raises(ar.PersistenceError, match="content"):
        await store.save_meta(session, "react")
    assert await backend.list_keys() == []


@pytest.mark.parametrize("directory", ["", None, 123, b"files"])
def test_file_backend_refuses_a_directory_that_names_no_place(
    directory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "" would turn the current directory into the store, None raised a bare TypeError.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ar.PersistenceError, match="path"):
        ar.FileBackend(directory)
    assert os.listdir(tmp_path) == []


class _TextStore(ar.InMemoryBackend):
    """A custom backend breaking the protocol: it loads text, not bytes (a JSON store, say)."""

    async def load(self, key: str) -> Any:
        raw = await super().load(key)
        return None if raw is None else raw.decode("latin-1")

    async def batch_load(self, keys: Any) -> Any:
        return {
            key: value.decode("latin-1") for key, value in (await super().batch_load(keys)).items()
        }


class _ListingStore(ar.InMemoryBackend):
    """Another: its batch_load gives a list of the values."""

    async def batch_load(self, keys: Any) -> Any:
        return list((await super().batch_load(keys)).values())


async def test_a_backend_loading_other_than_bytes_is_a_persistence_error() -> None:
    # Bare TypeErrors and AttributeErrors from the codec ("string argument without an
    # encoding") before: the error now says what the backend gave.
    async def answer(prompt: str) -> str:
        return "Final Answer: ok"

    backend = _TextStore()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    session = await runtime.run_agent("a", "p", answer)
    with pytest.raises(ar.PersistenceError, match="loaded a str for a record, not bytes"):
        await ar.AgentSession.load_checkpoint(backend, session.session_id)
    with pytest.raises(ar.PersistenceError, match="loaded a str for a record, not bytes"):
        await runtime.fork(session.session_id, 1)
    listing = ar.AgentRuntime(checkpoint_backend=_ListingStore())
    with pytest.raises(ar.PersistenceError, match="batch_load returned a list, not a dict"):
        await listing.run_agent("a", "p", answer)
