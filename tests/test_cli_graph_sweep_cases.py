"""The demo's public `run`, and the command line with no stderr to write to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import demo

MODEL_SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "ANTHROPIC_API_KEY")
MODEL_SETTINGS += ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No model settings (the offline model runs); the working directory is `tmp_path`."""
    for name in MODEL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(demo.DB_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_refuses_a_memory_database_it_would_say_was_saved_in_a_file(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run(Path(":memory:"))` said the session was saved at `<cwd>/:memory:`, a file that
    was never made, and left `:memory:.lock` in the working directory."""
    status = asyncio.run(demo.run(Path(":memory:")))

    out, err = capsys.readouterr()
    assert status == 1
    assert "saved in SQLite" not in out
    assert err == (
        "error: db_path=':memory:' keeps nothing: the demo saves its session to a file "
        "(give its path)\n"
    )
    assert list(offline.iterdir()) == []


def test_run_refuses_a_directory_in_one_line(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory gave SQLite's bare "unable to open database file"."""
    status = asyncio.run(demo.run(offline))

    assert status == 1
    expected = str(offline / "demo.db")
    assert capsys.readouterr().err == (
        f"error: db_path={str(offline)!r} is a directory: give the path of the SQLite file "
        f"(e.g. {expected!r})\n"
    )


def test_run_takes_the_path_as_a_string(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A `str` path failed with AttributeError: 'str' object has no attribute 'resolve'."""
    db = offline / "runs" / "demo.db"

    status = asyncio.run(demo.run(str(db)))

    out = capsys.readouterr().out
    assert status == 0
    assert f"saved in SQLite at {db} under key session:" in out

    async def saved_agents() -> list[str]:
        with ar.SqliteBackend(db) as backend:
            keys = await backend.list_keys("session:")
            sessions = [key.split(":")[1] for key in keys if key.count(":") == 1]
            loaded = [await ar.AgentSession.load_checkpoint(backend, s) for s in sessions]
            return [session.agent_id for session in loaded]

    assert asyncio.run(saved_agents()) == [demo.AGENT]


def without_stderr(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m llm_agent_runtime ...` with its stderr closed (a daemon's, say)."""
    return subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime", *args],
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
        preexec_fn=lambda: os.close(2),
    )


@pytest.mark.parametrize("args", [["bogus"], ["version", "extra"], []])
def test_refused_arguments_exit_2_without_a_stderr(args: list[str]) -> None:
    """With no stderr, the usage went to stdout and writing the error raised: status 1."""
    run = without_stderr(*args)

    assert run.returncode == 2
    assert run.stdout == ""


def test_a_failed_demo_keeps_its_error_out_of_stdout_without_a_stderr(tmp_path: Path) -> None:
    """With no stderr, `error: ...` was printed to stdout, among the demo's output."""
    run = without_stderr(
        "demo", LLM_AGENT_RUNTIME_DEMO_DB=str(tmp_path / "d.db"), OPENAI_BASE_URL="localhost:1"
    )

    assert run.returncode == 1
    assert run.stdout.startswith("llm-agent-runtime ")
    assert "error" not in run.stdout


@pytest.mark.parametrize("args", [["bogus"], []])
def test_refused_arguments_exit_2_when_stderr_is_full(args: list[str]) -> None:
    """A failed write of the error to stderr (a full disk) raised: status 1, not 2."""
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime", *args],
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )

    assert run.returncode == 2
    assert run.stdout == ""


def test_a_failed_demo_exits_1_when_stderr_is_full(tmp_path: Path) -> None:
    """Its failed write of `error: ...` ended in a traceback, then status 120 at exit."""
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime", "demo"],
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "LLM_AGENT_RUNTIME_DEMO_DB": str(tmp_path / "d.db"),
                "OPENAI_BASE_URL": "localhost:1",
            },
        )

    assert run.returncode == 1
    assert "error" not in run.stdout
