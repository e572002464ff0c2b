import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_runs_and_reports() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "calculator({'expression': '17 + 25'}) -> 42" in out
    assert "calculator({'expression': '42 * 2'}) -> 84" in out
    assert "weather('Paris') -> not_found" in out
    assert "final answer: 84" in out
    assert "ParseError(" in out
    assert "steps=4 tool_calls=3" in out
    assert 'llm_agent_runtime_tool_calls_by_tool_total{tool="calculator"} 2' in out
