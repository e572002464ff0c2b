"""Speed targets the issues set, checked by report.py against one run's medians."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OURS = "llm_agent_runtime"
"""The `extra_info["lib"]` value of our own benchmarks."""


@dataclass(frozen=True)
class Target:
    """`peer` in `group` must take at least `min_ratio` times our median.

    With `max_memory_share`, our `memory_MB` must also be at most that share of the peer's.
    """

    description: str
    group: str
    peer: str
    min_ratio: float
    max_memory_share: float | None = None

    def evaluate(self, groups: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, str]:
        """Returns (measured ratio, 'yes' / 'NO' / 'not measured')."""
        rows = groups.get(self.group, {})
        if OURS not in rows or self.peer not in rows:
            return "—", "not measured"
        ratio = rows[self.peer]["median"] / rows[OURS]["median"]
        ok = ratio >= self.min_ratio and rows[OURS]["correct"] and rows[self.peer]["correct"]
        measured = f"{ratio:.2f}x (need {self.min_ratio:g}x)"
        if self.max_memory_share is not None:
            ours, theirs = (rows[lib]["notes"].get("memory_MB") for lib in (OURS, self.peer))
            if ours is None or not theirs:
                return measured + ", memory not measured", "NO"
            share = ours / theirs
            ok = ok and share <= self.max_memory_share
            measured += f", memory {share:.3f} of theirs (need {self.max_memory_share:g})"
        return measured, "yes" if ok else "NO"


TARGETS: list[Target] = [
    Target(
        "ReAct parse >= 10x LangChain ReActSingleInputOutputParser",
        "react: parse 100,000 LangChain-form outputs (50-2,000 chars)",
        "langchain-classic",
        10.0,
    ),
    Target(
        "ReAct parse + JSON decode of the input >= LangChain parse + json.loads (reported)",
        "react: parse 100,000 LangChain-form outputs (50-2,000 chars), then decode the JSON input",
        "langchain-classic",
        1.0,
    ),
    Target(
        "breaker (sync path) no slower than pybreaker",
        "breaker: 10,000 sync calls through a closed breaker",
        "pybreaker",
        1.0,
    ),
    Target(
        "retry (first-try success) no slower than tenacity",
        "retry: async calls succeeding at the first try (10,000)",
        "tenacity",
        1.0,
    ),
    Target(
        "rate limiter (no wait) no slower than aiolimiter",
        "rate limit: acquires that never wait (10,000)",
        "aiolimiter",
        1.0,
    ),
    Target(
        "working memory LRU faster than lru-dict",
        "working memory: 1,000,000 ops (80% get / 20% set), capacity 1,024",
        "lru-dict",
        1.0,
    ),
    Target(
        "working memory LRU faster than OrderedDict LRU",
        "working memory: 1,000,000 ops (80% get / 20% set), capacity 1,024",
        "OrderedDict LRU",
        1.0,
    ),
    Target(
        "working memory LRU faster than cachetools",
        "working memory: 1,000,000 ops (80% get / 20% set), capacity 1,024",
        "cachetools",
        1.0,
    ),
    Target(
        "episodic recall (top 10 of 100,000, hybrid) >= 20x Python list + heapq",
        "episodic: recall top 10 of 100,000 episodes (hybrid policy)",
        "python list + heapq",
        20.0,
    ),
    Target(
        "vector f32 single query (N=100,000) at least as fast as numpy",
        "vector: single query, d=384, k=10, N=100,000",
        "numpy",
        1.0,
    ),
    Target(
        "vector f32 single query (N=100,000) >= 2x faiss IndexFlatIP",
        "vector: single query, d=384, k=10, N=100,000",
        "faiss-cpu",
        2.0,
    ),
    Target(
        "vector f32 single query (N=1,000,000) at least as fast as numpy",
        "vector: single query, d=384, k=10, N=1,000,000",
        "numpy",
        1.0,
    ),
    Target(
        "vector f32 single query (N=1,000,000) >= 2x faiss IndexFlatIP",
        "vector: single query, d=384, k=10, N=1,000,000",
        "faiss-cpu",
        2.0,
    ),
    Target(
        "vector batch of 64 (N=100,000) >= 1.5x numpy per query",
        "vector: batch of 64 queries, d=384, k=10, N=100,000",
        "numpy",
        1.5,
    ),
    Target(
        "vector batch of 64 (N=1,000,000) >= 1.5x numpy per query",
        "vector: batch of 64 queries, d=384, k=10, N=1,000,000",
        "numpy",
        1.5,
    ),
    Target(
        "vector int8 single query (N=100,000) >= 3x numpy float32, recall@10 >= 0.99",
        "vector: single query, ours int8 vs numpy float32, d=384, k=10, N=100,000",
        "numpy",
        3.0,
    ),
    Target(
        "vector int8+f32 rescore single query (N=100,000) >= 3x numpy float32, recall@10 >= 0.99",
        "vector: single query, ours int8+f32 rescore vs numpy float32, d=384, k=10, N=100,000",
        "numpy",
        3.0,
    ),
    Target(
        "vector int8, float32 copies in a file, single query (N=100,000) >= 3x numpy float32, "
        "recall@10 >= 0.99, a quarter of the memory (the int8 codes; ids and scales add 12 bytes "
        "a row: 0.26 in all at d=384)",
        "vector: single query, ours int8+f32 copies in a file vs numpy float32, "
        "d=384, k=10, N=100,000",
        "numpy",
        3.0,
        max_memory_share=0.26,
    ),
    Target(
        "vector float16 single query (N=100,000) >= 1.7x numpy float32, recall@10 >= 0.99",
        "vector: single query, ours float16 vs numpy float32, d=384, k=10, N=100,000",
        "numpy",
        1.7,
    ),
    Target(
        "vector int8 single query (N=1,000,000) >= 3x numpy float32, recall@10 >= 0.99",
        "vector: single query, ours int8 vs numpy float32, d=384, k=10, N=1,000,000",
        "numpy",
        3.0,
    ),
    Target(
        "vector int8+f32 rescore single query (N=1,000,000) >= 3x numpy float32, recall@10 >= 0.99",
        "vector: single query, ours int8+f32 rescore vs numpy float32, d=384, k=10, N=1,000,000",
        "numpy",
        3.0,
    ),
    Target(
        "vector int8, float32 copies in a file, single query (N=1,000,000) >= 3x numpy float32, "
        "recall@10 >= 0.99, a quarter of the memory (the int8 codes; ids and scales add 12 bytes "
        "a row: 0.26 in all at d=384)",
        "vector: single query, ours int8+f32 copies in a file vs numpy float32, "
        "d=384, k=10, N=1,000,000",
        "numpy",
        3.0,
        max_memory_share=0.26,
    ),
    Target(
        "vector float16 single query (N=1,000,000) >= 1.7x numpy float32, recall@10 >= 0.99",
        "vector: single query, ours float16 vs numpy float32, d=384, k=10, N=1,000,000",
        "numpy",
        1.7,
    ),
    Target(
        "counter increment >= 10x prometheus_client Counter.inc()",
        "metrics: 100,000 x increment",
        "prometheus-client",
        10.0,
    ),
    Target(
        "per-tool increment >= 10x prometheus_client Counter.labels().inc()",
        "metrics: 100,000 x per-tool increment",
        "prometheus-client",
        10.0,
    ),
    Target(
        "agent loop, native tool calls: per-step overhead within 2x of a minimal asyncio loop",
        "agent loop: 10 add() calls + final answer, zero-latency model (native tool calls)",
        "asyncio-floor",
        0.5,
    ),
    Target(
        "agent loop, ReAct text: per-step overhead within 2x of a minimal asyncio loop",
        "agent loop: 10 add() calls + final answer, zero-latency model (ReAct text)",
        "asyncio-floor",
        0.5,
    ),
    Target(
        "agent loop, native tool calls: >= 50x faster per step than smolagents",
        "agent loop: 10 add() calls + final answer, zero-latency model (native tool calls)",
        "smolagents",
        50.0,
    ),
    Target(
        "agent loop, native tool calls: >= 200x faster per step than LangGraph's ReAct agent",
        "agent loop: 10 add() calls + final answer, zero-latency model (native tool calls)",
        "langgraph",
        200.0,
    ),
    Target(
        "agent loop, native tool calls: >= 200x faster per step than pydantic-ai",
        "agent loop: 10 add() calls + final answer, zero-latency model (native tool calls)",
        "pydantic-ai",
        200.0,
    ),
    Target(
        "import of AgentRuntime, AgentConfig and tool: at most 1/3 of the fastest peer's "
        "(smolagents: ToolCallingAgent and tool)",
        "import time of an agent class and the tool decorator "
        "(fresh subprocess, interpreter start included)",
        "smolagents",
        3.0,
    ),
    Target(
        "provider streaming: OpenAIProvider no slower than the openai SDK to the last token",
        "stream 10,000 chunks over loopback HTTP (OpenAI wire format)",
        "openai",
        1.0,
    ),
    Target(
        "provider streaming: AnthropicProvider no slower than the anthropic SDK to the last token",
        "stream 10,000 chunks over loopback HTTP (Anthropic wire format)",
        "anthropic",
        1.0,
    ),
    Target(
        "checkpoint per step >= 10x cheaper than LangGraph SqliteSaver (SQLite, synchronous=FULL)",
        "checkpoint: one agent step's writes, "
        "SQLite file (WAL, synchronous=FULL: a saved step survives a power cut)",
        "langgraph",
        10.0,
    ),
    Target(
        "checkpoint per step >= 10x cheaper than LangGraph PostgresSaver",
        "checkpoint: one agent step's writes, "
        "PostgreSQL (autocommit, server fsync off in the test cluster)",
        "langgraph",
        10.0,
    ),
    Target(
        "graph betweenness unweighted (BA-2,000) at least as fast as rustworkx",
        "graph: betweenness unweighted, BA-2,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph betweenness unweighted (BA-2,000) at least as fast as igraph",
        "graph: betweenness unweighted, BA-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph betweenness unweighted (GNP-2,000) at least as fast as rustworkx",
        "graph: betweenness unweighted, GNP-2,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph betweenness unweighted (GNP-2,000) at least as fast as igraph",
        "graph: betweenness unweighted, GNP-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph betweenness weighted (BA-2,000) at least as fast as igraph (rustworkx has none)",
        "graph: betweenness weighted, BA-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph Dijkstra (BA-2,000) at least as fast as rustworkx",
        "graph: Dijkstra from one source, BA-2,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph BFS (BA-2,000) at least as fast as rustworkx",
        "graph: BFS order from one source, BA-2,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph Dijkstra (BA-2,000) at least as fast as igraph",
        "graph: Dijkstra from one source, BA-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph BFS (BA-2,000) at least as fast as igraph",
        "graph: BFS order from one source, BA-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph Dijkstra (BA-20,000) at least as fast as rustworkx",
        "graph: Dijkstra from one source, BA-20,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph BFS (BA-20,000) at least as fast as rustworkx",
        "graph: BFS order from one source, BA-20,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph Dijkstra (BA-20,000) at least as fast as igraph",
        "graph: Dijkstra from one source, BA-20,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph BFS (BA-20,000) at least as fast as igraph",
        "graph: BFS order from one source, BA-20,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph Dijkstra (GNP-2,000) at least as fast as rustworkx",
        "graph: Dijkstra from one source, GNP-2,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph BFS (GNP-2,000) at least as fast as rustworkx",
        "graph: BFS order from one source, GNP-2,000",
        "rustworkx",
        1.0,
    ),
    Target(
        "graph Dijkstra (GNP-2,000) at least as fast as igraph",
        "graph: Dijkstra from one source, GNP-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph BFS (GNP-2,000) at least as fast as igraph",
        "graph: BFS order from one source, GNP-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph Louvain (BA-2,000) at least as fast as igraph, modularity within 0.01",
        "graph: Louvain communities, BA-2,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph Louvain (BA-20,000) at least as fast as igraph, modularity within 0.01",
        "graph: Louvain communities, BA-20,000",
        "igraph",
        1.0,
    ),
    Target(
        "graph construction (BA-20,000) no slower than rustworkx",
        "graph: construction, BA-20,000",
        "rustworkx",
        1.0,
    ),
]
