"""Demo of llm-agent-runtime on embedded defaults: no keys, no servers.

An agent answers a question about the bundled text with two tools (a calculator and a memory
search), episodic and working memory seeded from the text, and the offline scripted model. With
OPENAI_API_KEY / OPENAI_BASE_URL or ANTHROPIC_API_KEY set, a real model is used when the
providers are installed.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import os
from pathlib import Path
from typing import Any

import llm_agent_runtime as ar

TEXT = Path(__file__).resolve().parent / "data" / "solar_system.txt"
AGENT = "astro-agent"
QUESTION = "How much farther from the Sun is Mars than Earth, on average?"

OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}

SCRIPT = [
    'Thought: I need the orbital distances.\nAction: memory_search {"query": "distance"}',
    "Thought: Earth is at 150 and Mars at 228 million km; subtract.\n"
    'Action: calculator {"expression": "228 - 150"}',
    "Thought: I have the difference.\n"
    "Action: FINAL_ANSWER Mars is on average 78 million km farther from the Sun than Earth.",
]


def calculator(expression: str) -> float:
    """Evaluates + - * / over numbers, safely (no eval).

    Args:
        expression: Arithmetic such as "228 - 150".
    """

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return float(OPERATORS[type(node.op)](walk(node.left), walk(node.right)))
        raise ValueError(f"unsupported expression: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def build_memory_search(memory: ar.EpisodicStore) -> ar.ToolSpec:
    """A tool searching the agent's episodes for the query's words."""

    def memory_search(query: str) -> list[str]:
        """Finds remembered facts containing every word of the query.

        Args:
            query: Words to look for.
        """
        words = query.lower().split()
        return [
            e.content
            for e in memory.episodes(AGENT)
            if all(word in e.content.lower() for word in words)
        ]

    return ar.tool(memory_search)


def real_provider() -> Any:
    """Returns a real provider when keys are set and the providers are installed."""
    try:
        from llm_agent_runtime import providers
    except ImportError:
        return None
    if os.environ.get("OPENAI_API_KEY") and hasattr(providers, "OpenAIProvider"):
        return providers.OpenAIProvider()
    if os.environ.get("ANTHROPIC_API_KEY") and hasattr(providers, "AnthropicProvider"):
        return providers.AnthropicProvider()
    return None


async def main() -> None:
    print(f"llm-agent-runtime {ar.__version__}: an agent end to end on embedded defaults\n")
    memory = ar.EpisodicStore()
    facts = [line for line in TEXT.read_text().splitlines() if line.strip()]
    for fact in facts:
        memory.add_episode(AGENT, fact, 0.5)
    working = ar.WorkingMemory(8)
    working.set("units", "million km")
    print(f"seeded {len(facts)} episodes from {TEXT.name}; working memory: units=million km")

    db_path = Path(os.environ.get("LLM_AGENT_RUNTIME_DEMO_DB", ".demo/checkpoints.db"))
    checkpoints = ar.SqliteBackend(db_path)
    runtime = ar.AgentRuntime(
        ar.AgentConfig(max_iterations=6, max_memory_recalls=3, max_memory_tokens=200),
        memory=memory,
        working_memory=working,
        tools=[ar.tool(calculator), build_memory_search(memory)],
        checkpoint_backend=checkpoints,
    )
    provider = real_provider()
    if provider is None:
        provider = ar.ScriptedProvider(SCRIPT)
        print(
            "model: offline ScriptedProvider "
            "(set OPENAI_API_KEY or ANTHROPIC_API_KEY for a real one)"
        )
    else:
        print(f"model: {type(provider).__name__}")
    print(f"question: {QUESTION}\n")

    session = await runtime.run_agent_with_provider(AGENT, QUESTION, provider)
    for number, step in enumerate(session.steps, 1):
        print(f"step {number}: thought: {step.thought}")
        if step.action != "FINAL_ANSWER":
            print(f"        action: {step.action}({step.action_input})")
            print(f"        observation: {step.observation} [{step.error_kind or 'ok'}]")
        print(
            f"        model {step.model_ms:.3f} ms, tools {step.tool_ms:.3f} ms, "
            f"runtime overhead {step.overhead_ms:.3f} ms"
        )
    print(f"\nfinal answer: {session.final_answer}")
    print(f"memory hits: {session.memory_hits}, steps: {session.step_count}")
    snap = runtime.metrics.snapshot()
    print(
        f"metrics: sessions={snap.total_sessions} steps={snap.total_steps} "
        f"tool_calls={snap.total_tool_calls} failed={snap.failed_tool_calls} "
        f"memory_recalls={snap.memory_recall_count}"
    )
    step_keys = await checkpoints.list_keys(f"session:{session.session_id}:step:")
    reloaded = await ar.AgentSession.load_checkpoint(checkpoints, session.session_id)
    print(
        f"session {session.session_id} saved in SQLite at {db_path.resolve()} under key "
        f"session:{session.session_id}, with {len(step_keys)} per-step checkpoints; "
        f"reloaded from it: {reloaded.step_count} steps, answer {reloaded.final_answer!r}"
    )
    checkpoints.close()


if __name__ == "__main__":
    asyncio.run(main())
