"""The demo's command line on settings it must refuse before it touches its database."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers import provider_from_env

ENVIRONMENT = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "ANTHROPIC_API_KEY")
ENVIRONMENT += ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL")


def run_demo(db: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    """`llm-agent-runtime demo` with only the given settings (and a cache dir of the test's)."""
    return subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LLM_AGENT_RUNTIME_DEMO_DB": str(db), **env},
    )


def saved_keys(db: Path) -> list[str]:
    async def keys() -> list[str]:
        with ar.SqliteBackend(db) as backend:
            return await backend.list_keys("session:")

    return asyncio.run(keys())


def test_a_refused_model_setting_keeps_the_previous_runs_session(tmp_path: Path) -> None:
    """A base URL without its scheme failed the run after it had deleted the saved session."""
    db = tmp_path / "d.db"
    assert run_demo(db).returncode == 0
    before = saved_keys(db)
    assert before

    run = run_demo(db, OPENAI_BASE_URL="localhost:11434/v1")

    assert run.returncode == 1
    assert run.stderr.startswith("error: the OpenAI base URL 'localhost:11434/v1' is not")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert saved_keys(db) == before


def test_a_refused_model_setting_fails_at_once_while_another_run_holds_the_database(
    tmp_path: Path,
) -> None:
    """It waited for the other run to end, then reported the setting."""
    db = tmp_path / "d.db"
    holder = os.open(tmp_path / "d.db.lock", os.O_RDWR | os.O_CREAT)  # as a running demo
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        run = subprocess.run(
            [sys.executable, "-m", "llm_agent_runtime", "demo"],
            capture_output=True,
            text=True,
            timeout=20,  # it would wait for good
            env={
                "PATH": "/usr/bin:/bin",
                "LLM_AGENT_RUNTIME_DEMO_DB": str(db),
                "ANTHROPIC_API_KEY": "sk-ant-demo",
                "ANTHROPIC_BASE_URL": "localhost:1",
            },
        )
    finally:
        os.close(holder)
    assert run.returncode == 1
    assert "waiting" not in run.stderr
    assert run.stderr.startswith("error: the Anthropic base URL 'localhost:1' is not")


@pytest.mark.parametrize("trailing", ["", "/"])
def test_a_database_path_naming_a_directory_is_refused_in_one_line(
    tmp_path: Path, trailing: str
) -> None:
    """An existing directory gave "unable to open database file"; a path ending in `/` made
    a file of that name."""
    given = f"{tmp_path / 'runs'}{trailing}"
    if not trailing:
        (tmp_path / "runs").mkdir()

    run = run_demo(given)

    assert run.returncode == 1
    expected = str(tmp_path / "runs" / "demo.db")
    assert run.stderr == (
        f"error: LLM_AGENT_RUNTIME_DEMO_DB={given!r} is a directory: give the path of the "
        f"SQLite file (e.g. {expected!r})\n"
    )
    # Nothing made: no file where a directory was meant, nothing in the existing one.
    assert [p.name for p in tmp_path.rglob("*")] == ([] if trailing else ["runs"])


def test_a_database_name_too_long_to_look_at_is_refused_in_one_line(tmp_path: Path) -> None:
    """Looking whether it named a directory raised OSError (name too long), as a traceback."""
    given = str(tmp_path / ("d" * 300 + ".db"))

    run = run_demo(given)

    assert run.returncode == 1
    assert run.stderr.startswith(f"error: cannot open SQLite database {given!r}")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize("url", ["//api.openai.com/v1", "htps://api.openai.com/v1"])
def test_an_openai_base_url_without_its_scheme_is_refused_even_for_openais_host(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """It chose nothing: the demo ran the offline model, saying nothing of the typo."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(ar.ProviderError, match="is not an http:// or https:// URL"):
        provider_from_env()


def test_openais_own_base_url_in_capitals_without_a_key_still_chooses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scheme is case-insensitive: `HTTPS://` is no URL to refuse."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "HTTPS://API.OPENAI.COM/v1")
    assert provider_from_env() is None


def test_each_provider_takes_its_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # An option one provider has and the other not (`send_stop=False` for an OpenAI model
    # that refuses `stop`) failed with a TypeError whenever the environment chose the other.
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    own = {"openai": {"send_stop": False}, "anthropic": {"max_tokens": 16000}}
    chosen = provider_from_env(model="m", **own)
    assert isinstance(chosen, ar.AnthropicProvider)
    assert chosen.max_tokens == 16000 and chosen.model == "m"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    chosen = provider_from_env(model="m", **own)
    assert isinstance(chosen, ar.OpenAIProvider)
    assert chosen.send_stop is False and chosen.model == "m"
    chosen = provider_from_env(model="a", openai={"model": "b"})  # its own win
    assert chosen is not None and chosen.model == "b"
    with pytest.raises(TypeError, match="openai must be a mapping of option names"):
        provider_from_env(openai=["send_stop"])  # type: ignore[arg-type]
