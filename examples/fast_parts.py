"""The Rust parts inside an agent loop you already have: no AgentRuntime.

Vector search over numpy arrays, a knowledge graph with its analytics, an LRU working
memory, lock-free metrics and the ReAct parser, each used on its own.

    python examples/fast_parts.py
"""

from __future__ import annotations

import numpy as np

import llm_agent_runtime as ar


def main() -> None:
    """Uses each part once and prints what it gives."""
    # Semantic lookup: 10,000 random vectors (normalized as they are added), one query,
    # exact cosine top-3.
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10_000, 64)).astype(np.float32)
    index = ar.VectorIndex(64)
    index.add(np.arange(10_000), vectors)
    ids, scores = index.search(vectors[42], k=3)
    print(f"nearest to row 42: {ids.tolist()[0]} (score {scores[0]:.3f})")

    # What the agent knows about its world, and who is central in it.
    graph = ar.GraphStore()
    graph.add_relationships(
        [
            ("alice", "acme", "works_at", 1.0),
            ("bob", "acme", "works_at", 1.0),
            ("carol", "globex", "works_at", 1.0),
            ("bob", "carol", "knows", 1.0),
        ],
        create_missing=True,
    )
    found = graph.shortest_path("alice", "carol", directed=False)  # None: not connected
    assert found is not None
    path, cost = found
    print(f"alice to carol: {' -> '.join(path)} ({cost:g} hops)")
    centrality = graph.betweenness_centrality(directed=False)
    print(f"most central: {max(centrality, key=centrality.__getitem__)}")

    # The model's reply, parsed; the tool call counted.
    step = ar.parse_react_step('Thought: look it up\nAction: lookup {"who": "carol"}')
    assert step.action is not None  # None for a final answer
    metrics = ar.RuntimeMetrics()
    metrics.record_tool_call(step.action, agent_id="agent-1")
    print(f"parsed {step.action}({step.action_input}); tool calls: ", end="")
    print(metrics.snapshot().tool_call_count("lookup"))

    # A bounded scratchpad: the least recently used entry goes first.
    memory = ar.WorkingMemory(capacity=2)
    memory.set("goal", "find carol's employer")
    memory.set("hint", "check the graph")
    memory.get("goal")
    memory.set("answer", "globex")
    print(f"working memory keeps: {sorted(key for key, _ in memory.items())}")


if __name__ == "__main__":
    main()
