"""Checkpoint cost per agent step: ours vs LangGraph's SqliteSaver and PostgresSaver.

Method (the same for both sides): each framework runs a real agent (50 `add` tool calls and a
final answer, zero-latency model) once with an in-memory recorder, which captures exactly the
checkpoint writes the framework makes. Those writes are then replayed, timed, into a fresh
database: SQLite files in WAL mode with synchronous=FULL on both sides (a saved step survives
a power cut), and PostgreSQL with autocommit. Every round saves a new session on both sides
(new keys for ours, a new thread for LangGraph's), so each write inserts rows as a real run
does; rewriting the same rows would be cheaper than any real run's writes. Reported per agent
step, with the bytes stored for the whole session.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sqlite3
import uuid
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar

TOOL_CALLS = 50
STEPS = TOOL_CALLS + 1
OURS = "llm_agent_runtime"
# A round replays a whole 51-step session; 21 of them keep a hiccup of the database server (a
# loopback round trip is ~100 µs) out of the median.
ROUNDS = 21
# The same run with `add` treated as a side effect: its intent is journaled before each call.
OURS_AT_MOST_ONCE = "llm_agent_runtime, at-most-once tool (intent + result per step)"


class Recorder(ar.InMemoryBackend):
    """Keeps every write the runtime makes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[dict[str, bytes]] = []

    async def save(self, key: str, value: bytes) -> None:
        self.writes.append({key: value})
        await super().save(key, value)

    async def batch_save(self, items: Any) -> None:
        self.writes.append(dict(items))
        await super().batch_save(items)


@cache
def our_run(idempotent: bool = True) -> Recorder:
    """One session's writes: `add` is pure, so it is declared idempotent; with `idempotent`
    false it is treated as a side effect that must run at most once (an intent before each call).
    """

    @ar.tool(idempotent=idempotent)
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    replies = [
        f'Thought: step {i}, adding the next number to the total\nAction: add {{"a": {i}, "b": 1}}'
        for i in range(TOOL_CALLS)
    ] + ["Thought: done\nAction: FINAL_ANSWER finished"]
    recorder = Recorder()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=STEPS), tools=[add], checkpoint_backend=recorder
    )

    async def run() -> None:
        queue = list(replies)

        async def infer(prompt: str) -> str:
            return queue.pop(0)

        await runtime.run_agent("bench", "sum", infer)

    asyncio.run(run())
    return recorder


def langgraph_sqlite_bytes(path: Path) -> int:
    """Bytes LangGraph's SqliteSaver stores for the session (one replay, into a fresh file)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    replay_langgraph(saver, langgraph_writes(), "size")
    size = conn.execute(
        "SELECT (SELECT sum(length(checkpoint) + length(metadata)) FROM checkpoints)"
        " + (SELECT sum(length(value)) FROM writes)"
    ).fetchone()[0]
    conn.close()
    return int(size)


@cache
def langgraph_writes() -> list[tuple[str, tuple[Any, ...]]]:
    pytest.importorskip("langgraph")
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool as lc_tool
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.prebuilt import create_react_agent

    calls: list[tuple[str, tuple[Any, ...]]] = []

    class RecordingSaver(InMemorySaver):
        def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            calls.append(("put", copy.deepcopy((config, checkpoint, metadata, new_versions))))
            return super().put(config, checkpoint, metadata, new_versions)

        def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
            calls.append(("put_writes", copy.deepcopy((config, writes, task_id, task_path))))
            super().put_writes(config, writes, task_id, task_path)

    class FakeToolModel(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "scripted"

        def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
            done = sum(1 for m in messages if isinstance(m, ToolMessage))
            if done < TOOL_CALLS:
                thought = f"step {done}, adding the next number to the total"
                call = {"name": "add", "args": {"a": done, "b": 1}, "id": f"c{done}"}
                reply = AIMessage(content=thought, tool_calls=[call])
            else:
                reply = AIMessage(content="finished")
            return ChatResult(generations=[ChatGeneration(message=reply)])

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    @lc_tool
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(FakeToolModel(), [add], checkpointer=RecordingSaver())
    config = {"configurable": {"thread_id": "bench"}, "recursion_limit": 4 * STEPS}
    agent.invoke({"messages": [("user", "sum")]}, config)
    return calls


def replay_langgraph(saver: Any, calls: list[tuple[str, tuple[Any, ...]]], thread: str) -> None:
    for method, args in calls:
        config = copy.copy(args[0])
        config["configurable"] = {**config["configurable"], "thread_id": thread}
        getattr(saver, method)(config, *args[1:])


def postgres_dsn() -> str:
    dsn = os.environ.get("LLM_AGENT_RUNTIME_TEST_POSTGRES_DSN")
    if dsn is None:
        pytest.skip("no PostgreSQL: `make bench` starts one (scripts/services.sh)")
    return dsn


DATABASES = {
    "sqlite": "SQLite file (WAL, synchronous=FULL: a saved step survives a power cut)",
    "sqlite-normal": "SQLite file (WAL, synchronous=NORMAL: survives a process crash)",
    "postgres": "PostgreSQL (autocommit, server fsync off in the test cluster)",
}
CASES = [(db, lib) for db in DATABASES for lib in (OURS, OURS_AT_MOST_ONCE, "langgraph")]


@pytest.mark.parametrize(("db", "lib"), CASES)
def test_checkpoint_cost_per_step(benchmark: Any, tmp_path: Path, db: str, lib: str) -> None:
    benchmark.group = f"checkpoint: one agent step's writes, {DATABASES[db]}"
    synchronous = "NORMAL" if db == "sqlite-normal" else "FULL"
    dsn = postgres_dsn() if db == "postgres" else ""
    if lib in (OURS, OURS_AT_MOST_ONCE):
        run_writes = our_run(idempotent=lib == OURS)
        writes = run_writes.writes
        if db.startswith("sqlite"):
            backend: Any = ar.SqliteBackend(tmp_path / "ours.db", synchronous=synchronous)
        else:
            backend = ar.PostgresBackend(dsn, table=f"bench_{uuid.uuid4().hex}")

        loop = asyncio.new_event_loop()  # one loop: the connection pool lives in it
        session_id = next(iter(writes[0])).split(":")[1]

        def fresh_session() -> tuple[tuple[list[dict[str, bytes]]], dict[str, Any]]:
            # Each round saves a new session (as LangGraph's rounds use a new thread): inserts,
            # not updates of the previous round's rows.
            new_id = uuid.uuid4().hex
            renamed = [{k.replace(session_id, new_id): v for k, v in w.items()} for w in writes]
            return (renamed,), {}

        async def replay(session_writes: list[dict[str, bytes]]) -> None:
            for items in session_writes:
                await backend.batch_save(items)

        benchmark.pedantic(
            lambda session_writes: loop.run_until_complete(replay(session_writes)),
            setup=fresh_session,
            rounds=ROUNDS,
            warmup_rounds=1,
        )
        if db == "postgres":
            loop.run_until_complete(backend.close())
        else:
            backend.close()
        loop.close()
        stored = sum(len(k) + len(v) for k, v in run_writes.data.items())
        benchmark.extra_info["durability"] = synchronous if db.startswith("sqlite") else "commit"
    else:
        calls = langgraph_writes()
        if db.startswith("sqlite"):
            from langgraph.checkpoint.sqlite import SqliteSaver

            conn = sqlite3.connect(tmp_path / "langgraph.db", check_same_thread=False)
            saver: Any = SqliteSaver(conn)
            saver.setup()
            conn.execute(f"PRAGMA synchronous={synchronous}")
        else:
            import psycopg
            from langgraph.checkpoint.postgres import PostgresSaver

            conn_pg = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
            saver = PostgresSaver(conn_pg)
            saver.setup()

        def run() -> None:
            replay_langgraph(saver, calls, uuid.uuid4().hex)

        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        (conn if db.startswith("sqlite") else conn_pg).close()
        stored = langgraph_sqlite_bytes(tmp_path / "size.db")
        benchmark.extra_info["durability"] = synchronous if db.startswith("sqlite") else "commit"
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = True
    benchmark.extra_info["units"] = STEPS  # compared per agent step
    benchmark.extra_info["bytes_per_session"] = stored


def test_storage_grows_linearly_with_steps(benchmark: Any) -> None:
    """Ours: bytes of a 50-step session's step records vs the first half's (2.0 = linear)."""
    data = our_run().data
    steps = sorted((k for k in data if ":step:" in k), key=lambda k: int(k.rsplit(":", 1)[1]))
    sizes = [len(data[k]) for k in steps]
    half = sum(sizes[: len(sizes) // 2])
    benchmark.group = "checkpoint: storage growth (bytes of all steps / bytes of the first half)"
    ratio = benchmark.pedantic(lambda: sum(sizes) / half, rounds=1, iterations=1)
    benchmark.extra_info["lib"] = OURS
    benchmark.extra_info["correct"] = 1.8 < ratio < 2.2
    benchmark.extra_info["growth"] = round(ratio, 2)
