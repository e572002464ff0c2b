import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_runs_an_agent_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LLM_AGENT_RUNTIME_DEMO_DB": str(db)},
    ).stdout
    assert "seeded 7 facts from solar_system.txt into episodic and semantic memory" in out
    assert "knowledge graph: 7 entities, 6 relationships (has_moon, orbits)" in out
    assert "model: offline ScriptedProvider" in out
    # The semantic search finds both distances among the facts, by meaning.
    assert "action: memory_search(" in out
    assert "Earth orbits the Sun at an average distance of 150 million km." in out
    assert "Mars orbits the Sun at an average distance of 228 million km." in out
    assert "action: calculator({'expression': '228 - 150'})" in out
    assert "observation: 78.0 [ok]" in out
    assert "action: graph_query({'entity': 'Mars'})" in out
    assert '"Mars has_moon Phobos", "Mars has_moon Deimos"' in out
    assert '"Mars orbits Sun (228 million km)"' in out
    assert "final answer: Mars is on average 78 million km farther" in out
    assert "metrics: sessions=1 steps=4 tool_calls=3 failed=0 memory_recalls=3" in out
    assert f"saved in SQLite at {db}" in out and db.exists()
    assert "with 4 per-step checkpoints" in out
    assert "reloaded from it: 4 steps, answer 'Mars is on average 78 million km" in out


def test_console_script_demo_and_version() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.cli", "version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert version.startswith("llm-agent-runtime ")
    bad = subprocess.run(
        [sys.executable, "-m", "llm_agent_runtime.cli", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
