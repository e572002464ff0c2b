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
from pathlib import Path

import pytest

from .crash_worker import TOOL_CALLS

WORKER = Path(__file__).with_name("crash_worker.py")
TRIALS = 50
EXPECTED = sum(i * i for i in range(TOOL_CALLS))


def start(tmp: Path, store: str, session_id: str, action: str) -> subprocess.Popen[str]:
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
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", process.stderr
    return process


def store_for(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return str(tmp / "checkpoints.db")
    dsn = os.environ.get("LLM_AGENT_RUNTIME_TEST_POSTGRES_DSN")
    if dsn is None:
        if os.environ.get("LLM_AGENT_RUNTIME_REQUIRE_SERVICES"):
            pytest.fail("make test must provide PostgreSQL")
        pytest.skip("no PostgreSQL server: run `make test`")
    return dsn


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_at_random_moments_then_resume(tmp_path: Path, kind: str) -> None:
    store = store_for(kind, tmp_path)
    rng = random.Random(20261122)
    killed_mid_run = 0
    # A server outlives a test run, and tmp_path's name repeats in the next: ids of this run.
    run = uuid.uuid4().hex[:8]
    for trial in range(TRIALS):
        session_id = f"{tmp_path.name}-{kind}-{run}-{trial}"
        (tmp_path / f"{session_id}.effects").touch()
        worker = start(tmp_path, store, session_id, "run")
        time.sleep(rng.uniform(0.0, 0.08))  # the run takes ~50 ms
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)  # reaps it and closes its pipes
        killed_mid_run += worker.returncode == -signal.SIGKILL
        resumed = start(tmp_path, store, session_id, "resume")
        # Read through the same buffered pipes `start` read "ready" from (communicate() would
        # bypass their buffers and could miss output read ahead with that line).
        assert resumed.stdout is not None and resumed.stderr is not None
        out, err = resumed.stdout.read(), resumed.stderr.read()
        resumed.stdout.close()
        resumed.stderr.close()
        assert resumed.wait(timeout=60) == 0, err
        assert out.strip() == f"answer {EXPECTED} steps {TOOL_CALLS + 1}", (trial, out, err)
        effects = (tmp_path / f"{session_id}.effects").read_text().split()
        invocations = Counter((tmp_path / f"{session_id}.invocations").read_text().split())
        keys = [f"{session_id}:{step}:0" for step in range(1, TOOL_CALLS + 1)]
        assert sorted(effects) == sorted(keys), trial  # each effect once, under its own key
        # Only a call interrupted by the kill may run again (one call is in flight at most).
        assert sum(invocations.values()) <= TOOL_CALLS + 1, (trial, invocations)
        assert set(invocations) == set(keys)
    assert killed_mid_run >= TRIALS // 2  # most kills really interrupted a run
