"""Checkpoint cost per agent step: ours vs LangGraph's SqliteSaver and PostgresSaver.

Method (the same for both sides): each framework runs a real agent (50 `add` tool calls and a
final answer, zero-latency model) once, and the calls it makes to its checkpoint API are
recorded with their arguments: our `CheckpointStore` (meta, per-step records with their
events, tool-call journal, final session) and LangGraph's checkpointer (`put`,
`put_writes`). Those calls are then replayed, timed, on that same API over a fresh database,
so each round pays what a run pays per step: encoding the records, then the database write.
SQLite files in WAL mode with synchronous=FULL on both sides (a saved step survives a power
cut), and PostgreSQL with autocommit. Every round saves a new session on both sides (a new
session id for ours, a new thread for LangGraph's), so each write inserts rows as a real run
does; rewriting the same rows would be cheaper than any real run's writes. After the rounds,
every saved session is read back through each side's own API and compared with what the
recorded run saved (`correct`). Reported per agent step, with the bytes stored for the whole
session.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import sqlite3
import uuid
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore

TOOL_CALLS = 50
STEPS = TOOL_CALLS + 1
OURS = "llm_agent_runtime"
# A round replays a whole 51-step session; 21 of them keep a hiccup of the database server (a
# loopback round trip is ~100 µs) out of the median.
ROUNDS = 21
# The same run with `add` treated as a side effect: its intent is journaled before each call.
OURS_AT_MOST_ONCE = "llm_agent_runtime, at-most-once tool (intent + result per step)"


# The `CheckpointStore` methods a run writes through (read back from `runtime.py`).
STORE_WRITES = ("save_meta", "save_steps", "journal", "write_final", "append_events")

Call = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclasses.dataclass
class OurRun:
    """One recorded session: the store calls in order, and what they left in memory."""

    session_id: str
    calls: list[Call]
    backend: ar.InMemoryBackend


@cache
def our_run(idempotent: bool = True) -> OurRun:
    """One session's checkpoint calls: `add` is pure, so it is declared idempotent; with
    `idempotent` false it is treated as a side effect that must run at most once (an intent is
    journaled before each call).
    """

    @ar.tool(idempotent=idempotent)
    async def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    replies = [
        f'Thought: step {i}, adding the next number to the total\nAction: add {{"a": {i}, "b": 1}}'
        for i in range(TOOL_CALLS)
    ] + ["Thought: done\nAction: FINAL_ANSWER finished"]
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=STEPS), tools=[add], checkpoint_backend=backend
    )
    calls: list[Call] = []

    def recording(name: str, method: Any) -> Any:
        async def record(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
            # A copy as of the call: the runtime goes on changing its session afterwards.
            calls.append((name, copy.deepcopy(args), copy.deepcopy(kwargs)))
            return await method(self, *args, **kwargs)

        return record

    async def run() -> str:
        queue = list(replies)

        async def infer(prompt: str) -> str:
            return queue.pop(0)

        session = await runtime.run_agent("bench", "sum", infer)
        return str(session.session_id)

    originals = {name: getattr(CheckpointStore, name) for name in STORE_WRITES}
    try:
        for name, method in originals.items():
            setattr(CheckpointStore, name, recording(name, method))
        session_id = asyncio.run(run())
    finally:
        for name, method in originals.items():
            setattr(CheckpointStore, name, method)
    return OurRun(session_id, calls, backend)


def renamed(calls: list[Call], old: str, new: str) -> list[Call]:
    """The calls of session `old` made for session `new` (ids are what names the keys)."""

    def arg(value: Any) -> Any:
        if isinstance(value, str) and value == old:
            return new
        if isinstance(value, ar.AgentSession):
            return dataclasses.replace(value, session_id=new)
        return value

    return [
        (name, tuple(arg(a) for a in args), {k: arg(v) for k, v in kwargs.items()})
        for name, args, kwargs in calls
    ]


async def replay_ours(store: CheckpointStore, calls: list[Call]) -> None:
    for name, args, kwargs in calls:
        done = await getattr(store, name)(*args, **kwargs)
        if name == "write_final" and done[1] is not None:  # as the run, awaits its claims' deletion
            await done[1]


async def our_summary(backend: Any, session_id: str) -> dict[str, Any]:
    """What a session's checkpoints hold, read back through `CheckpointStore`."""
    store = CheckpointStore(backend)
    state = await store.load(session_id)
    session = state.session().to_dict()
    session["session_id"] = None  # each round's own
    journal = [await store.load_journal(session_id, n) for n in range(1, len(state.records) + 1)]
    return {
        "records": [r.to_dict() for r in state.records],
        "final": state.final is not None,
        "session": session,
        "events": await store.events(session_id),
        "journal": journal,
    }


def langgraph_sqlite_bytes(path: Path) -> int:
    """Bytes LangGraph's SqliteSaver stores for the session (one replay, into a fresh file)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    replay_langgraph(saver, langgraph_thread(langgraph_writes(), "size"))
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


def langgraph_thread(
    calls: list[tuple[str, tuple[Any, ...]]], thread: str
) -> list[tuple[str, tuple[Any, ...]]]:
    """The calls made for thread `thread` (the config's thread id is what names the rows)."""
    renamed = []
    for method, args in calls:
        config = copy.copy(args[0])
        config["configurable"] = {**config["configurable"], "thread_id": thread}
        renamed.append((method, (config, *args[1:])))
    return renamed


def replay_langgraph(saver: Any, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
    for method, args in calls:
        getattr(saver, method)(*args)


def langgraph_summary(saver: Any, thread: str) -> dict[str, Any]:
    """What a thread's checkpoints hold, read back through the checkpointer."""
    config = {"configurable": {"thread_id": thread}}
    tuples = list(saver.list(config))
    latest = saver.get_tuple(config)
    messages = latest.checkpoint["channel_values"]["messages"] if latest else []
    return {
        "checkpoints": len(tuples),
        "writes": sum(len(t.pending_writes or ()) for t in tuples),
        "messages": [(type(m).__name__, m.content) for m in messages],
    }


@cache
def langgraph_expected() -> dict[str, Any]:
    """The recorded run's calls replayed into LangGraph's in-memory saver: the reference."""
    from langgraph.checkpoint.memory import InMemorySaver

    saver = InMemorySaver()
    replay_langgraph(saver, langgraph_thread(langgraph_writes(), "reference"))
    return langgraph_summary(saver, "reference")


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
        run = our_run(idempotent=lib == OURS)
        if db.startswith("sqlite"):
            backend: Any = ar.SqliteBackend(tmp_path / "ours.db", synchronous=synchronous)
        else:
            backend = ar.PostgresBackend(dsn, table=f"bench_{uuid.uuid4().hex}")
        store = CheckpointStore(backend)
        loop = asyncio.new_event_loop()  # one loop: the connection pool lives in it
        sessions: list[str] = []

        def fresh_session() -> tuple[tuple[list[Call]], dict[str, Any]]:
            # Each round saves a new session (as LangGraph's rounds use a new thread): inserts,
            # not updates of the previous round's rows.
            sessions.append(uuid.uuid4().hex)
            return (renamed(run.calls, run.session_id, sessions[-1]),), {}

        benchmark.pedantic(
            lambda calls: loop.run_until_complete(replay_ours(store, calls)),
            setup=fresh_session,
            rounds=ROUNDS,
            warmup_rounds=1,
        )
        expected = loop.run_until_complete(our_summary(run.backend, run.session_id))
        correct = bool(sessions) and all(
            loop.run_until_complete(our_summary(backend, sid)) == expected for sid in sessions
        )
        if db == "postgres":
            loop.run_until_complete(backend.close())
        else:
            backend.close()
        loop.close()
        stored = sum(len(k) + len(v) for k, v in run.backend.data.items())
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
        threads: list[str] = []

        def new_thread() -> tuple[tuple[list[tuple[str, tuple[Any, ...]]]], dict[str, Any]]:
            threads.append(uuid.uuid4().hex)
            return (langgraph_thread(calls, threads[-1]),), {}

        benchmark.pedantic(
            lambda thread_calls: replay_langgraph(saver, thread_calls),
            setup=new_thread,
            rounds=ROUNDS,
            warmup_rounds=1,
        )
        expected = langgraph_expected()
        correct = bool(threads) and all(langgraph_summary(saver, t) == expected for t in threads)
        (conn if db.startswith("sqlite") else conn_pg).close()
        stored = langgraph_sqlite_bytes(tmp_path / "size.db")
        benchmark.extra_info["durability"] = synchronous if db.startswith("sqlite") else "commit"
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = correct
    benchmark.extra_info["units"] = STEPS  # compared per agent step
    benchmark.extra_info["bytes_per_session"] = stored


def test_storage_grows_linearly_with_steps(benchmark: Any) -> None:
    """Ours: bytes of a 50-step session's step records vs the first half's (2.0 = linear)."""
    data = our_run().backend.data
    steps = sorted((k for k in data if ":step:" in k), key=lambda k: int(k.rsplit(":", 1)[1]))
    sizes = [len(data[k]) for k in steps]
    half = sum(sizes[: len(sizes) // 2])
    benchmark.group = "checkpoint: storage growth (bytes of all steps / bytes of the first half)"
    ratio = benchmark.pedantic(lambda: sum(sizes) / half, rounds=1, iterations=1)
    benchmark.extra_info["lib"] = OURS
    benchmark.extra_info["correct"] = 1.8 < ratio < 2.2
    benchmark.extra_info["growth"] = round(ratio, 2)
