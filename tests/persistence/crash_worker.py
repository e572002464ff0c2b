"""A worker process for the crash test: runs (or resumes) one agent, printing `ready` first.

Usage: crash_worker.py STORE EFFECTS INVOCATIONS SESSION_ID run|resume, where STORE is a
SQLite file path, a `postgresql://` DSN, or `file:` and the directory of a `FileBackend`.

The side-effecting tool takes the idempotency key: it logs every invocation, and appends its
key to the effects file only if the key is not there yet (as an API with idempotency keys
would), so a key can appear twice only if the runtime handed it out twice.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import llm_agent_runtime as ar

TOOL_CALLS = 6


def append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


async def main(db: str, effects: Path, invocations: Path, session_id: str, action: str) -> None:
    @ar.tool
    async def side_effect(n: int, idempotency_key: str) -> int:
        """Performs effect n once per key."""
        append(invocations, idempotency_key)
        await asyncio.sleep(0.004)
        if idempotency_key not in effects.read_text().split():
            append(effects, idempotency_key)
        return n * n

    async def model(prompt: str) -> str:
        # Deterministic in the transcript, so a re-asked step gets the same reply.
        done = prompt.count("Observation:")
        if done < TOOL_CALLS:
            return f'Thought: effect {done}\nAction: side_effect {{"n": {done}}}'
        return f"Thought: done\nAction: FINAL_ANSWER {sum(i * i for i in range(TOOL_CALLS))}"

    backend: ar.PersistenceBackend
    if db.startswith("postgresql://"):
        backend = ar.PostgresBackend(db, table="crash_test")
    elif db.startswith("file:"):
        backend = ar.FileBackend(db[len("file:") :])  # finishes a batch the kill cut short
    else:
        backend = ar.SqliteBackend(db)
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=TOOL_CALLS + 1),
        tools=[side_effect],
        checkpoint_backend=backend,
    )
    if isinstance(backend, ar.PostgresBackend):
        await backend.open()  # connected before the parent may kill us
    print("ready", flush=True)
    if action == "run":
        session = runtime.create_session("crash", session_id)
        result = await runtime.run_agent("crash", "go", model, session=session)
    else:
        try:
            result = await runtime.resume(session_id, model)
        except ar.PersistenceError as error:  # killed before its first record: start over
            if "no checkpoint saved" not in str(error):
                raise
            session = runtime.create_session("crash", session_id)
            result = await runtime.run_agent("crash", "go", model, session=session)
    print(f"answer {result.final_answer} steps {result.step_count}", flush=True)
    if isinstance(backend, ar.PostgresBackend):
        await backend.close()
    elif isinstance(backend, ar.SqliteBackend):
        backend.close()


if __name__ == "__main__":
    db, effects, invocations, session_id, action = sys.argv[1:]
    asyncio.run(main(db, Path(effects), Path(invocations), session_id, action))
