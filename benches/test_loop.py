"""Per-step overhead of the agent loop with a zero-latency model.

One run = 10 tool calls `add(a, b)` + a final answer (11 model calls). Compared: a hand-written
minimal asyncio loop (the floor), our native tool-calling mode and ReAct text mode, and peers'
agents with their own fake models where they install offline. Reported in µs per step.
"""

from __future__ import annotations

import asyncio
import compileall
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from loop_agents import CONCURRENT, EXPECTED, FLOOR, GROUP, PEERS, STEPS, _one_run

import llm_agent_runtime as ar

RUNS = 200
CASES = [
    ("tools", FLOOR),
    ("tools", "llm_agent_runtime"),
    *(("tools", peer) for peer in PEERS),
    ("react", FLOOR),
    ("react", "llm_agent_runtime"),
]


def group_for(mode: str) -> str:
    """Benchmark group of one loop mode (the floor is measured in each)."""
    return f"{GROUP} ({'native tool calls' if mode == 'tools' else 'ReAct text'})"


@pytest.mark.parametrize(("mode", "lib"), CASES)
def test_loop(benchmark: Any, mode: str, lib: str) -> None:
    one_run = _one_run(mode, lib)
    runs = 20 if lib in PEERS else RUNS  # peers take milliseconds per run
    # A round of ours takes ~15 ms, so more rounds are cheap and steady the median on a
    # shared machine; a peer's round takes up to half a second.
    rounds = 7 if lib in PEERS else 21

    def many() -> list[int]:
        async def all_runs() -> list[int]:
            return [await one_run() for _ in range(runs)]

        return asyncio.run(all_runs())

    benchmark.group = group_for(mode)
    results = benchmark.pedantic(many, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = all(r == EXPECTED for r in results)
    benchmark.extra_info["units"] = runs * STEPS  # medians are compared per step
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["runs_per_s"] = round(runs / benchmark.stats.stats.median)


# smolagents' loop is synchronous: it has no concurrent form to compare.
CONCURRENT_CASES = [
    ("tools", lib) for lib in (FLOOR, "llm_agent_runtime", "langgraph", "pydantic-ai")
]


@pytest.mark.parametrize(("mode", "lib"), CONCURRENT_CASES)
def test_loop_concurrent(benchmark: Any, mode: str, lib: str) -> None:
    one_run = _one_run(mode, lib, concurrent=True)
    in_flight = 0
    peaks: list[int] = []  # most runs in flight at once, per round

    async def counted() -> int:
        # The same counter around every library's run: runs that never suspend would run one
        # after the other, and peak at 1.
        nonlocal in_flight
        in_flight += 1
        peaks[-1] = max(peaks[-1], in_flight)
        try:
            return await one_run()
        finally:
            in_flight -= 1

    def together() -> list[int]:
        async def all_runs() -> list[int]:
            return list(await asyncio.gather(*(counted() for _ in range(CONCURRENT))))

        peaks.append(0)
        return asyncio.run(all_runs())

    benchmark.group = f"agent loop: {CONCURRENT} concurrent runs (native tool calls)"
    results = benchmark.pedantic(together, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    # The least of the rounds' (warm-up included): every round must have all runs in flight.
    benchmark.extra_info["max_in_flight"] = min(peaks)
    benchmark.extra_info["correct"] = (
        len(results) == CONCURRENT
        and all(r == EXPECTED for r in results)
        and min(peaks) == CONCURRENT
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["runs_per_s"] = round(CONCURRENT / benchmark.stats.stats.median)
    benchmark.extra_info["peak_rss_mb"] = _peak_rss_mb(mode, lib)


def _peak_rss_mb(mode: str, lib: str) -> float:
    """Peak RSS of a fresh process that imports `lib` and runs 100 concurrent runs (their
    concurrent form, as the group times them)."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("loop_agents.py")), mode, lib],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    return round(float(out.stdout.split()[-1]), 1)


IMPORTS = {
    "llm_agent_runtime": "llm_agent_runtime",
    "langgraph": "langgraph.prebuilt",
    "pydantic-ai": "pydantic_ai",
    "smolagents": "smolagents",
}
# What a program that runs an agent imports: the agent class and the tool decorator. Ours
# resolves `AgentRuntime` & co. lazily, so `import llm_agent_runtime` alone loads little.
AGENT_IMPORTS = {
    "llm_agent_runtime": "from llm_agent_runtime import AgentRuntime, AgentConfig, tool",
    "langgraph": (
        "from langgraph.prebuilt import create_react_agent; from langchain_core.tools import tool"
    ),
    "pydantic-ai": "from pydantic_ai import Agent",
    "smolagents": "from smolagents import ToolCallingAgent, tool",
}
IMPORT_FLOOR = "python floor: asyncio + pydantic.BaseModel"
"""Informational row: what any async agent class with a pydantic config imports at least."""
AGENT_IMPORTS[IMPORT_FLOOR] = "import asyncio; from pydantic import BaseModel"


@pytest.fixture(scope="module")
def installed_bytecode() -> None:
    """Our package byte-compiled, as pip leaves an installed wheel (and left the peers').

    A source checkout run under PYTHONDONTWRITEBYTECODE (as here) would otherwise compile
    every module of ours at every import, which no installed copy does.
    """
    compileall.compile_dir(Path(ar.__file__).parent, quiet=1)


def _time_import(benchmark: Any, lib: str, statement: str, group: str) -> None:
    """Times a fresh interpreter running `statement` (the benchmark's median); the import's
    own time, measured inside that process, is reported alongside."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"

    own: list[float] = []

    def measure() -> float:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{statement!r} failed: {out.stderr.strip()[-500:]}")
        own.append(float(out.stdout))
        return own[-1]

    benchmark.group = group
    benchmark.pedantic(measure, rounds=5, iterations=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = all(seconds > 0 for seconds in own)
    benchmark.extra_info["import_seconds"] = round(statistics.median(own), 3)


@pytest.mark.usefixtures("installed_bytecode")
@pytest.mark.parametrize("lib", IMPORTS)
def test_import_time(benchmark: Any, lib: str) -> None:
    module = IMPORTS[lib]
    pytest.importorskip(module)
    _time_import(
        benchmark,
        lib,
        f"import {module}",
        "import time (fresh subprocess, interpreter start included)",
    )


@pytest.mark.usefixtures("installed_bytecode")
@pytest.mark.parametrize("lib", AGENT_IMPORTS)
def test_agent_import_time(benchmark: Any, lib: str) -> None:
    pytest.importorskip(IMPORTS.get(lib, "pydantic"))
    _time_import(
        benchmark,
        lib,
        AGENT_IMPORTS[lib],
        "import time of an agent class and the tool decorator "
        "(fresh subprocess, interpreter start included)",
    )
