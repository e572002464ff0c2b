"""Demo of llm-agent-runtime on embedded defaults: no keys, no servers.

An agent answers a question about a small bundled text with three tools (a calculator, a
semantic memory search and a knowledge-graph query). Episodic memory, semantic memory (the
built-in hashing embedder) and a knowledge graph are all seeded from the text; the model is the
offline scripted one, and every step is checkpointed to SQLite. With OPENAI_API_KEY /
OPENAI_BASE_URL or ANTHROPIC_API_KEY set, the same agent runs on that real model.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import os
import re
from pathlib import Path

import llm_agent_runtime as ar
from llm_agent_runtime.providers import provider_from_env

TEXT = Path(__file__).resolve().parent / "data" / "solar_system.txt"
AGENT = "astro-agent"
QUESTION = (
    "How much farther from the Sun is Mars than Earth, on average, and what are Mars's moons?"
)

OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}

SCRIPT = [
    "Thought: I need the orbital distances of Earth and Mars.\n"
    'Action: memory_search {"query": "average distance of Earth and Mars from the Sun"}',
    "Thought: Earth is at 150 and Mars at 228 million km; subtract.\n"
    'Action: calculator {"expression": "228 - 150"}',
    "Thought: Now the moons: the knowledge graph links Mars to them.\n"
    'Action: graph_query {"entity": "Mars"}',
    "Thought: I have both parts.\n"
    "Action: FINAL_ANSWER Mars is on average 78 million km farther from the Sun than Earth; "
    "its moons are Phobos and Deimos.",
]

ORBIT = re.compile(r"^(\w+) orbits the (\w+) at an average distance of (\d+) million km")
MOONS = re.compile(r"^(\w+) has .*?moons?, (\w+) and (\w+)")
SATELLITE = re.compile(r"^(\w+) has one natural satellite, the (\w+)")


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


def build_graph(facts: list[str]) -> ar.GraphStore:
    """Extracts entities and relationships (orbits, has_moon) from the facts."""
    graph = ar.GraphStore()

    def entity(name: str, label: str) -> None:
        if name not in graph:
            graph.add_entity(name, label)

    for fact in facts:
        if match := ORBIT.match(fact):
            body, center, distance = match.groups()
            entity(center, "star")
            entity(body, "planet")
            graph.add_relationship(body, center, "orbits", float(distance), {"unit": "million km"})
        elif (match := MOONS.match(fact)) or (match := SATELLITE.match(fact)):
            planet, *moons = match.groups()
            entity(planet, "planet")
            for moon in moons:
                entity(moon, "moon")
                graph.add_relationship(planet, moon, "has_moon")
    return graph


def build_semantic_search(memory: ar.SemanticStore) -> ar.ToolSpec:
    """A tool searching the semantic memory by meaning (hashing embedder, offline)."""

    def memory_search(query: str) -> list[str]:
        """Finds the remembered facts most similar to the query.

        Args:
            query: What to look for, in words.
        """
        return [hit.value for hit in memory.search(query, k=3)]

    return ar.tool(memory_search)


def build_graph_query(graph: ar.GraphStore) -> ar.ToolSpec:
    """A tool listing an entity's relationships in the knowledge graph."""

    def graph_query(entity: str) -> list[str]:
        """Lists the relationships of an entity in the knowledge graph.

        Args:
            entity: Name of the entity, e.g. "Mars".
        """
        if entity not in graph:
            known = ", ".join(sorted(graph.entity_ids()))
            raise ValueError(f"unknown entity {entity!r}; known: {known}")
        return [
            f"{r['from']} {r['kind']} {r['to']}"
            + (f" ({r['weight']:g} {r['properties']['unit']})" if r["properties"] else "")
            for r in graph.edges_from(entity)
        ]

    return ar.tool(graph_query)


async def main() -> None:
    print(f"llm-agent-runtime {ar.__version__}: an agent end to end on embedded defaults\n")
    facts = [line for line in TEXT.read_text().splitlines() if line.strip()]
    episodes = ar.EpisodicStore(embedder=ar.HashingEmbedder())
    semantic = ar.SemanticStore()
    for number, fact in enumerate(facts):
        episodes.add_episode(AGENT, fact, 0.5)
        semantic.store(f"fact-{number}", fact, tags=["solar-system"])
    graph = build_graph(facts)
    working = ar.WorkingMemory(8)
    working.set("units", "million km")
    print(
        f"seeded {len(facts)} facts from {TEXT.name} into episodic and semantic memory; "
        f"knowledge graph: {graph.entity_count()} entities, "
        f"{graph.relationship_count()} relationships ({', '.join(graph.relationship_kinds())})"
    )

    db_path = Path(os.environ.get("LLM_AGENT_RUNTIME_DEMO_DB", ".demo/checkpoints.db"))
    checkpoints = ar.SqliteBackend(db_path)
    runtime = ar.AgentRuntime(
        ar.AgentConfig(
            max_iterations=8,
            max_memory_recalls=3,
            max_memory_tokens=200,
            # A real model stops before writing an observation of its own.
            stop_sequences=["\nObservation:"],
        ),
        memory=episodes,
        working_memory=working,
        graph=graph,
        tools=[
            ar.tool(calculator),
            build_semantic_search(semantic),
            build_graph_query(graph),
        ],
        checkpoint_backend=checkpoints,
    )
    provider = provider_from_env()
    if provider is None:
        provider = ar.ScriptedProvider(SCRIPT)
        print(
            "model: offline ScriptedProvider "
            "(set OPENAI_API_KEY, OPENAI_BASE_URL or ANTHROPIC_API_KEY for a real one)"
        )
    else:
        print(f"model: {provider!r}")
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
    if hasattr(provider, "aclose"):
        await provider.aclose()
    checkpoints.close()


if __name__ == "__main__":
    asyncio.run(main())
