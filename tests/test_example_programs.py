"""The programs in examples/ run as they say, each in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from providers.fake_server import FakeLlmServer, Turn

import llm_agent_runtime as ar

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# No keys or base URLs: the examples run offline, on their scripted models.
ENV = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}


def run(name: str, *args: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env={**ENV, **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_example_is_tested() -> None:
    tested = {"durable_resume.py", "fast_parts.py", "guarded_support.py", "tool_agent.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_durable_resume_charges_each_item_once(tmp_path: Path) -> None:
    out = run("durable_resume.py", str(tmp_path / "runs.db"))
    assert "first run stopped after 2 steps" in out
    assert "resumed: 3 steps, answer: charged 750 cents in all" in out
    assert "charges made: [250, 500]" in out


def test_fast_parts_answer_as_the_comments_say() -> None:
    out = run("fast_parts.py").splitlines()
    assert out == [
        "nearest to row 42: 42 (score 1.000)",
        "alice to carol: alice -> acme -> bob -> carol (3 hops)",
        "most central: bob",
        "parsed lookup({'who': 'carol'}); tool calls: 1",
        "working memory keeps: ['answer', 'goal']",
    ]


@pytest.mark.parametrize("repeat", range(2))  # parallel calls may finish in either order
def test_tool_agent_runs_its_calls_and_reports_its_events(repeat: int) -> None:
    out = run("tool_agent.py").splitlines()
    events = [line.split(": ", 1)[1] for line in out if line.startswith("  event: ")]
    assert events[0] == "RunStarted" and events[-1] == "RunFinished"
    assert events.count("ToolCallStarted") == events.count("ToolCallFinished") == 2
    assert out[-4:] == [
        "weather({'city': 'Paris'}) -> 18 °C, light rain",
        "weather({'city': 'Oslo'}) -> 4 °C, clear",
        "answer: Paris is warmer (18 °C) than Oslo (4 °C).",
        "tool calls: 2",
    ]


def test_tool_agent_prints_on_an_ascii_terminal() -> None:
    out = run("tool_agent.py", PYTHONIOENCODING="ascii").splitlines()
    assert out[-2] == "answer: Paris is warmer (18 \\xb0C) than Oslo (4 \\xb0C)."


@pytest.mark.parametrize("settings", ["openai", "openai-local", "anthropic"])
def test_tool_agent_runs_on_the_real_model_the_environment_names(settings: str) -> None:
    """Its docstring: OPENAI_API_KEY, OPENAI_BASE_URL alone or ANTHROPIC_API_KEY: a real model."""
    wire = settings.split("-")[0]
    with FakeLlmServer() as server:
        server.script(
            Turn(
                tool_calls=[
                    ("c1", "weather", {"city": "Oslo"}),
                    ("c2", "weather", {"city": "Rome"}),
                ]
            ),
            Turn("Oslo, at 4 °C, is the only one I know."),
        )
        if settings == "openai":
            env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.url + "/v1"}
        elif settings == "openai-local":  # a keyless OpenAI-compatible server
            env = {"OPENAI_BASE_URL": server.url + "/v1"}
        else:
            env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": server.url}
        out = run("tool_agent.py", **env).splitlines()
        requests = list(server.requests)
    assert [request.wire for request in requests] == [wire, wire]
    assert out[-4:] == [
        "weather({'city': 'Oslo'}) -> 4 °C, clear",
        "weather({'city': 'Rome'}) -> unknown",
        "answer: Oslo, at 4 °C, is the only one I know.",
        "tool calls: 2",
    ]


def test_guarded_support_masks_approves_edits_and_denies() -> None:
    out = run("guarded_support.py").splitlines()
    assert out == [
        "turn 1: Hi, I'm ann@example.com. Where is my order 1001?",
        "  lookup_order({'order_id': '1001'}) -> headphones, paid 8000 cents, delivered [ok]",
        "  answer: Order 1001 (headphones) was delivered.",
        "turn 2: The headphones are broken, please refund order 1001 in full.",
        "  lookup_order({'order_id': '1001'}) -> headphones, paid 8000 cents, delivered [ok]",
        # The model asked for 8000: the handler's edit capped it.
        "  refund({'order_id': '1001', 'amount_cents': 5000}) -> refunded 5000 cents on order"
        " 1001 [ok]",
        "    the model asked for refund({'order_id': '1001', 'amount_cents': 8000})",
        "  answer: Done: refunded 5000 cents on order 1001.",
        "turn 3: Then cancel my order 1001 altogether.",
        "  cancel_order({'order_id': '1001'}) -> error: tool call 'cancel_order' denied:"
        " cancellations are done by a person [permanent]",
        "  answer: I cannot cancel it myself; a colleague will get back to you.",
        "the model saw: Hi, I'm <email>. Where is my order 1001?",
        # The lookup's approval is remembered: asked in turn 1 only.
        "approval asked for: lookup_order, refund, cancel_order",
        "history: 6 messages over 3 turns",
        out[-1],
    ]
    spent = int(out[-1].removeprefix("tokens spent: ").removesuffix(" of 20000"))
    assert 0 < spent < 20000


def test_guarded_support_sends_no_email_address_to_a_real_model() -> None:
    with FakeLlmServer() as server:
        server.script(
            Turn(tool_calls=[("c1", "lookup_order", {"order_id": "1001"})]),
            Turn("Delivered."),
            Turn(tool_calls=[("c2", "refund", {"order_id": "1001", "amount_cents": 9000})]),
            Turn("Refunded."),
            Turn("Ask a colleague."),
        )
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": server.url + "/v1"}
        out = run("guarded_support.py", **env).splitlines()
        bodies = [request.body.decode() for request in server.requests]
    assert len(bodies) == 5
    assert all("ann@example.com" not in body for body in bodies)
    assert all("Hi, I'm <email>. Where is my order 1001?" in body for body in bodies)
    # The history goes along: the last request holds the first turn's answer.
    assert "Delivered." in bodies[-1] and "Refunded." in bodies[-1]
    capped = "  refund({'order_id': '1001', 'amount_cents': 5000}) -> refunded 5000 cents on order"
    assert capped + " 1001 [ok]" in out
    assert "approval asked for: lookup_order, refund" in out


@pytest.mark.parametrize(
    ("amount", "decision"),
    [
        (8000, ("edit", 5000)),
        (100, ("approve", None)),
        ("8000", "deny"),
        (8000.0, "deny"),
        (True, "deny"),
        (None, "deny"),
        (-5, "deny"),
        (0, "deny"),
    ],
)
def test_guarded_support_caps_every_refund(amount: Any, decision: Any) -> None:
    # A refund whose amount is no int (which the tool's validation would turn into one after
    # the approval, past the cap) is denied, not approved uncapped.
    spec = importlib.util.spec_from_file_location(
        "guarded_support", EXAMPLES / "guarded_support.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    session = ar.AgentSession(session_id="s", agent_id="a", prompt="q")
    got = example.approve(session, "refund", {"order_id": "1001", "amount_cents": amount})
    if decision == "deny":
        assert got.action == "deny" and got.reason == "amount_cents must be a positive integer"
    else:
        action, capped = decision
        assert got.action == action
        assert capped is None or got.arguments == {"order_id": "1001", "amount_cents": capped}
