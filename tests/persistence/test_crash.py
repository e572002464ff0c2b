"""Crash test: agents killed with SIGKILL at random moments, then resumed.

Every run must end with the right answer, with no completed step re-run and no idempotency
key handed out twice (the tool records each key once, so a duplicate key in its effects file
would mean the runtime re-ran a call under a new key).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .crash_worker import TOOL_CALLS

WORKER = Path(__file__).with_name("crash_worker.py")
TRIALS = 50
EXPECTED = sum(i * i for i in range(TOOL_CALLS))


@contextmanager
def started(tmp: Path, store: str, session_id: str, action: str) -> Iterator[subprocess.Popen[str]]:
    """A worker that printed `ready`; killed, reaped and its pipes closed on the way out."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            store,
            str(tmp / f"{session_id}.effects"),
            str(tmp / f"{session_id}.invocations"),
            session_id,
            action,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        if process.stdout.readline().strip() != "ready":  # it died starting: say why
            process.wait(timeout=60)
            pytest.fail(f"the worker did not start: {process.stderr.read()}")
        yield process
    finally:  # also when a trial fails or times out: no process or pipe left to a later test
        process.kill()
        process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def store_for(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return str(tmp / "checkpoints.db")
    if kind == "file":
        return f"file:{tmp / 'checkpoints'}"
    dsn = os.environ.get("LLM_AGENT_RUNTIME_TEST_POSTGRES_DSN")
    if dsn is None:
        if os.environ.get("LLM_AGENT_RUNTIME_REQUIRE_SERVICES"):
            pytest.fail("make test must provide PostgreSQL")
        pytest.skip("no PostgreSQL server: run `make test`")
    return dsn


# 100 worker processes: ~30 s on a quiet 2-core machine, several times that on a loaded one.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["sqlite", "file", "postgres"])
def test_sigkill_at_random_moments_then_resume(tmp_path: Path, kind: str) -> None:
    store = store_for(kind, tmp_path)
    rng = random.Random(20261122)
    killed_mid_run = 0
    # A server outlives a test run, and tmp_path's name repeats in the next: ids of this run.
    run = uuid.uuid4().hex[:8]
    for trial in range(TRIALS):
        session_id = f"{tmp_path.name}-{kind}-{run}-{trial}"
        (tmp_path / f"{session_id}.effects").touch()
        with started(tmp_path, store, session_id, "run") as worker:
            time.sleep(rng.uniform(0.0, 0.08))  # the run takes ~50 ms
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        killed_mid_run += worker.returncode == -signal.SIGKILL
        with started(tmp_path, store, session_id, "resume") as resumed:
            # Read through the same buffered pipes `started` read "ready" from (communicate()
            # would bypass their buffers and could miss output read ahead with that line).
            assert resumed.stdout is not None and resumed.stderr is not None
            out, err = resumed.stdout.read(), resumed.stderr.read()
            assert resumed.wait(timeout=60) == 0, err
        assert out.strip() == f"answer {EXPECTED} steps {TOOL_CALLS + 1}", (trial, out, err)
        effects = (tmp_path / f"{session_id}.effects").read_text().split()
        invocations = Counter((tmp_path / f"{session_id}.invocations").read_text().split())
        # The keys name the run, which the resume kept: one run id in all of them.
        run_ids = {key.rsplit(":", 3)[-3] for key in effects}
        assert len(run_ids) == 1, (trial, effects)
        keys = [f"{session_id}:{min(run_ids)}:{step}:0" for step in range(1, TOOL_CALLS + 1)]
        assert sorted(effects) == sorted(keys), trial  # each effect once, under its own key
        # Only a call interrupted by the kill may run again (one call is in flight at most).
        assert sum(invocations.values()) <= TOOL_CALLS + 1, (trial, invocations)
        assert set(invocations) == set(keys)
    assert killed_mid_run >= TRIALS // 2  # most kills really interrupted a run


# ---------------------------------------------------------------- FileBackend: a batch all or none

# A child process that dies (as with SIGKILL: no cleanup, no flush) at a chosen moment of a
# FileBackend batch: `install` once the batch is committed, while the second key's file is
# written; `commit` while the batch's own file is renamed to commit it.
BATCH_CHILD = """
import asyncio, os, sys
import llm_agent_runtime as ar
from llm_agent_runtime.persistence.file import FileBackend

directory, moment = sys.argv[1:]
if moment == "install":
    write = FileBackend._write
    written = []

    def dying_write(self, key, value):
        written.append(key)
        if len(written) == 2:
            os._exit(9)
        write(self, key, value)

    FileBackend._write = dying_write
else:
    replace = os.replace

    def dying_replace(src, dst):
        if str(dst).endswith(".batch"):
            os._exit(9)
        replace(src, dst)

    os.replace = dying_replace
items = {f"session:s:step:{n}": b"step %d" % n for n in range(1, 5)}
asyncio.run(FileBackend(directory).batch_save(items))
"""
BATCH_ITEMS = {f"session:s:step:{n}": b"step %d" % n for n in range(1, 5)}


def die_in_a_batch(directory: Path, moment: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", BATCH_CHILD, str(directory), moment],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr


async def test_a_file_batch_cut_by_a_crash_once_committed_is_finished_whole(
    tmp_path: Path,
) -> None:
    import llm_agent_runtime as ar

    directory = tmp_path / "store"
    opened_before = ar.FileBackend(directory)
    await opened_before.save("session:other", b"unrelated")
    die_in_a_batch(directory, "install")
    # Only the first key's file was written: the batch's redo log holds the rest.
    assert len(list(directory.glob("session_s_step_*.bin"))) == 1
    # A backend opened before the crash finishes it before it reads...
    assert await opened_before.list_keys("session:s:") == sorted(BATCH_ITEMS)
    assert await opened_before.batch_load(list(BATCH_ITEMS)) == BATCH_ITEMS
    assert list((directory / ".batches").iterdir()) == []
    # ...and one opened after it finishes it when it opens.
    for key in BATCH_ITEMS:
        await opened_before.delete(key)
    die_in_a_batch(directory, "install")
    assert len(list(directory.glob("session_s_step_*.bin"))) == 1
    reopened = ar.FileBackend(directory)
    assert list((directory / ".batches").iterdir()) == []
    assert await reopened.batch_load(list(BATCH_ITEMS)) == BATCH_ITEMS
    assert await reopened.load("session:other") == b"unrelated"
    assert [p.name for p in directory.glob(".*.tmp")] == []


async def test_a_file_batch_cut_by_a_crash_before_its_commit_leaves_nothing(
    tmp_path: Path,
) -> None:
    import llm_agent_runtime as ar

    directory = tmp_path / "store"
    die_in_a_batch(directory, "commit")
    assert [p.suffix for p in (directory / ".batches").iterdir()] == [".tmp"]  # uncommitted
    store = ar.FileBackend(directory)  # drops what the crash left
    assert list((directory / ".batches").iterdir()) == []
    assert await store.list_keys() == []
    assert await store.batch_load(list(BATCH_ITEMS)) == {}


ROUND_CHILD = """
import asyncio, os, sys
import llm_agent_runtime as ar
from llm_agent_runtime.persistence.file import FileBackend

directory, effects = sys.argv[1:]
write = FileBackend._write

def dying_write(self, key, value):
    if key.endswith(":step:3"):
        os._exit(9)  # the process dies between two files of the round's checkpoint
    write(self, key, value)

FileBackend._write = dying_write

@ar.tool
async def charge(amount: int) -> str:
    \"\"\"Charges a card (not idempotent).\"\"\"
    with open(effects, "a") as f:
        f.write(f"{amount}\\n")
    return f"charged {amount}"

async def main():
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[charge], checkpoint_backend=FileBackend(directory)
    )
    session = rt.create_session("a", "sess")
    round_ = ar.ScriptedProvider.tool_call_reply([("charge", {"amount": n}) for n in (1, 2, 3)])
    await rt.run_agent_with_provider("a", "q", ar.ScriptedProvider([round_]), session=session)

asyncio.run(main())
"""


async def test_a_round_whose_file_checkpoint_a_crash_cut_resumes_with_every_step(
    tmp_path: Path,
) -> None:
    import llm_agent_runtime as ar

    directory, effects = tmp_path / "cp", tmp_path / "effects"
    child = subprocess.run(
        [sys.executable, "-c", ROUND_CHILD, str(directory), str(effects)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr
    assert sorted(effects.read_text().split()) == ["1", "2", "3"]

    @ar.tool
    async def charge(amount: int) -> str:
        """Charges a card (not idempotent)."""
        raise AssertionError("no charge runs again")

    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[charge], checkpoint_backend=ar.FileBackend(directory)
    )
    resumed = await runtime.resume("sess", ar.ScriptedProvider(["done"]))
    assert [(s.action, s.action_input, s.observation) for s in resumed.steps] == [
        ("charge", {"amount": 1}, "charged 1"),
        ("charge", {"amount": 2}, "charged 2"),
        ("charge", {"amount": 3}, "charged 3"),
        ("FINAL_ANSWER", "done", ""),
    ]
