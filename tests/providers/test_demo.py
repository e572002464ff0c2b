"""`make demo` on a real provider: the demo talks to the loopback server as it would to an API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .fake_server import FakeLlmServer, Turn

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
REPLIES = [
    'Thought: look it up\nAction: memory_search {"query": "Mars distance"}',
    'Thought: moons\nAction: graph_query {"entity": "Mars"}',
    "Thought: done\nAction: FINAL_ANSWER Phobos and Deimos, 228 million km out.",
]


@pytest.mark.parametrize(
    ("env_for", "wire"),
    [
        (lambda url: {"OPENAI_API_KEY": "sk-demo-key", "OPENAI_BASE_URL": url + "/v1"}, "openai"),
        (
            lambda url: {"ANTHROPIC_API_KEY": "sk-ant-demo-key", "ANTHROPIC_BASE_URL": url},
            "anthropic",
        ),
    ],
)
def test_demo_uses_the_real_model_when_a_key_is_set(
    tmp_path: Path, env_for: object, wire: str
) -> None:
    with FakeLlmServer() as server:
        server.script(*(Turn(text=reply) for reply in REPLIES))
        env = {"PATH": "/usr/bin:/bin", "LLM_AGENT_RUNTIME_DEMO_DB": str(tmp_path / "d.db")}
        env.update(env_for(server.url))  # type: ignore[operator]
        out = subprocess.run(
            [sys.executable, str(DEMO)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=env,
        ).stdout
        requests = list(server.requests)
    assert "model: " in out and "ScriptedProvider" not in out
    assert "sk-" not in out  # the key never reaches the output
    assert 'observation: ["Mars orbits Sun (228 million km)"' in out
    assert "final answer: Phobos and Deimos, 228 million km out." in out
    assert len(requests) == 3 and all(r.wire == wire for r in requests)
    # The model sees the tools, the recalled memories and the observations so far.
    last_prompt = str(requests[-1].json)
    assert "graph_query" in last_prompt and "Relevant memories" in last_prompt
    assert "Mars has_moon Phobos" in last_prompt
