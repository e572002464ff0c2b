"""`make demo` on a real provider: the demo talks to the loopback server as it would to an API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_agent_runtime import AnthropicProvider, OpenAIProvider, SqliteBackend, demo

from .fake_server import FakeLlmServer, Reply, Turn

REPLIES = [
    'Thought: look it up\nAction: memory_search {"query": "Mars distance"}',
    'Thought: moons\nAction: graph_query {"entity": "Mars"}',
    "Thought: done\nAction: FINAL_ANSWER Phobos and Deimos, 228 million km out.",
]
KEYS = {"openai": "sk-demo-key", "anthropic": "sk-ant-demo-key"}
ENVIRONMENT = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "ANTHROPIC_API_KEY")
ENVIRONMENT += ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL")


def model_env(wire: str, url: str) -> dict[str, str]:
    """The variables that point `provider_from_env` at the loopback server."""
    if wire == "openai":
        return {"OPENAI_API_KEY": KEYS[wire], "OPENAI_BASE_URL": url + "/v1"}
    return {"ANTHROPIC_API_KEY": KEYS[wire], "ANTHROPIC_BASE_URL": url}


def run_demo(env: dict[str, str], db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LLM_AGENT_RUNTIME_DEMO_DB": str(db), **env},
    )


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_uses_the_real_model_when_a_key_is_set(tmp_path: Path, wire: str) -> None:
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in REPLIES))
        run = run_demo(model_env(wire, server.url), tmp_path / "d.db")
        requests = list(server.requests)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "model: " in out and "ScriptedProvider" not in out
    assert "sk-" not in out  # the key never reaches the output
    assert 'observation: ["Mars orbits Sun (228 million km)"' in out
    assert "final answer: Phobos and Deimos, 228 million km out." in out
    assert len(requests) == 3 and all(r.wire == wire for r in requests)
    # The model sees the tools, the recalled memories and the observations so far.
    last_prompt = str(requests[-1].json)
    assert "graph_query" in last_prompt and "Relevant memories" in last_prompt
    assert "Mars has_moon Phobos" in last_prompt


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_without_a_final_answer_says_so_and_fails(tmp_path: Path, wire: str) -> None:
    """A model that never answers used to end in `final answer: None` and exit status 0."""
    with FakeLlmServer() as server:
        server.fallback = Turn(text='Thought: again\nAction: calculator {"expression": "1 + 1"}')
        run = run_demo(model_env(wire, server.url), tmp_path / "d.db")
        requests = len(server.requests)
    assert run.returncode == 1
    assert requests == demo.MAX_ITERATIONS == 8
    assert "final answer" not in run.stdout
    assert run.stdout.count("action: calculator({'expression': '1 + 1'})") == 8
    assert "with 8 per-step checkpoints; reloaded from it: 8 steps, answer None" in run.stdout
    assert run.stderr == "error: the model gave no final answer within max_iterations=8 steps\n"


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_reports_a_provider_error_in_one_line(tmp_path: Path, wire: str) -> None:
    """A model's error used to end in a long traceback."""
    body = b'{"error": {"type": "authentication_error", "message": "invalid x-api-key"}}'
    with FakeLlmServer() as server:
        server.script(Reply(status=401, body=body, headers={"content-type": "application/json"}))
        run = run_demo(model_env(wire, server.url), tmp_path / "d.db")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert "401" in run.stderr and "invalid x-api-key" in run.stderr
    assert KEYS[wire] not in run.stderr + run.stdout


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_demo_closes_the_provider_and_the_database_when_the_model_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    wire: str,
) -> None:
    closed: list[str] = []

    def recording(cls: type[Any], name: str, what: str) -> None:
        original: Callable[..., Any] = getattr(cls, name)

        def close(self: Any) -> Any:
            closed.append(what)
            return original(self)

        monkeypatch.setattr(cls, name, close)

    recording(OpenAIProvider if wire == "openai" else AnthropicProvider, "aclose", "provider")
    recording(SqliteBackend, "close", "database")
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLM_AGENT_RUNTIME_DEMO_DB", str(tmp_path / "d.db"))
    with FakeLlmServer() as server:
        server.script(Reply(status=401, body=b'{"error": {"message": "invalid key"}}'))
        for name, value in model_env(wire, server.url).items():
            monkeypatch.setenv(name, value)
        assert demo.main() == 1
    assert sorted(closed) == ["database", "provider"]
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "invalid key" in err
