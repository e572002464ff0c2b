"""Per-step overhead of the agent loop with a zero-latency model.

One run = 10 tool calls `add(a, b)` + a final answer (11 model calls). Compared: a hand-written
minimal asyncio loop (the floor), our native tool-calling mode and ReAct text mode, and peers'
agents with their own fake models where they install offline. Reported in µs per step.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from typing import Any

import pytest

import llm_agent_runtime as ar

N_TOOL_CALLS = 10
STEPS = N_TOOL_CALLS + 1
RUNS = 200
EXPECTED = sum(range(N_TOOL_CALLS)) + N_TOOL_CALLS  # sum of add(i, 1)
GROUP = f"agent loop: {N_TOOL_CALLS} add() calls + final answer, zero-latency model"


@ar.tool
async def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


NATIVE_SCRIPT = [
    ar.ScriptedProvider.tool_call_reply([("add", {"a": i, "b": 1})]) for i in range(N_TOOL_CALLS)
] + [ar.providers.base.ChatResponse(text="done")]
REACT_SCRIPT = [
    f'Thought: step {i}\nAction: add {{"a": {i}, "b": 1}}' for i in range(N_TOOL_CALLS)
] + ["Thought: done\nAction: FINAL_ANSWER done"]


def _total(session: ar.AgentSession) -> int:
    return sum(int(s.observation) for s in session.steps if s.action == "add")


async def add_plain(a: int, b: int) -> int:
    """The floor's tool: the same addition, no decorator."""
    return a + b


FLOOR_TOOLS = {"add": add_plain}
NATIVE_REPLIES = [
    {"tool_calls": [{"id": f"call_{i}", "name": "add", "arguments": {"a": i, "b": 1}}]}
    for i in range(N_TOOL_CALLS)
] + [{"content": "done", "tool_calls": []}]
REACT_ACTION = re.compile(r"Action:\s*(\w+)\s*(.*)", re.DOTALL)


async def _floor_native() -> int:
    """Native floor: a chat history and one dict lookup + await per tool call, nothing else."""
    replies = iter(NATIVE_REPLIES)

    async def model(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return next(replies)

    messages: list[dict[str, Any]] = [{"role": "user", "content": "sum"}]
    total = 0
    for _ in range(STEPS):
        reply = await model(messages)
        messages.append(reply)
        if not reply["tool_calls"]:
            return total
        for call in reply["tool_calls"]:
            result = await FLOOR_TOOLS[call["name"]](**call["arguments"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
            total += result
    return total


async def _floor_react() -> int:
    """ReAct floor: the same text replies, parsed with one regex and json.loads."""
    replies = iter(REACT_SCRIPT)

    async def model(prompt: str) -> str:
        return next(replies)

    transcript = ["Question: sum"]
    total = 0
    for _ in range(STEPS):
        reply = await model("\n".join(transcript))
        match = REACT_ACTION.search(reply)
        if match is None:
            raise ValueError(reply)
        name, argument = match.groups()
        if name == "FINAL_ANSWER":
            return total
        result = await FLOOR_TOOLS[name](**json.loads(argument))
        transcript.append(f"{reply}\nObservation: {result}")
        total += result
    return total


def _ours(mode: str) -> Any:
    config = ar.AgentConfig(mode=mode, max_iterations=STEPS)  # type: ignore[arg-type]
    memory = ar.EpisodicStore()
    memory.add_episode("bench", "adding numbers is easy", 0.5)
    runtime = ar.AgentRuntime(config, tools=[add], memory=memory)
    runtime.events.on(lambda event: None)  # events on, as a listening application has them

    async def run() -> int:
        if mode == "tools":
            provider = ar.ScriptedProvider(NATIVE_SCRIPT)
            session = await runtime.run_agent_with_provider("bench", "sum", provider)
        else:
            replies = iter(REACT_SCRIPT)

            async def infer(prompt: str) -> str:
                return next(replies)

            session = await runtime.run_agent("bench", "sum", infer)
        return _total(session)

    return run


FLOOR = "asyncio-floor"
"""`extra_info["lib"]` of the hand-written minimal asyncio loop."""
CASES = [
    ("tools", FLOOR),
    ("tools", "llm_agent_runtime"),
    ("react", FLOOR),
    ("react", "llm_agent_runtime"),
]


def group_for(mode: str) -> str:
    """Benchmark group of one loop mode (the floor is measured in each)."""
    return f"{GROUP} ({'native tool calls' if mode == 'tools' else 'ReAct text'})"


@pytest.mark.parametrize(("mode", "lib"), CASES)
def test_loop(benchmark: Any, mode: str, lib: str) -> None:
    floor = _floor_native if mode == "tools" else _floor_react
    one_run = floor if lib == FLOOR else _ours(mode)

    def many() -> list[int]:
        async def all_runs() -> list[int]:
            return [await one_run() for _ in range(RUNS)]

        return asyncio.run(all_runs())

    benchmark.group = group_for(mode)
    results = benchmark.pedantic(many, rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = all(r == EXPECTED for r in results)
    benchmark.extra_info["us_per_step"] = benchmark.stats.stats.median / (RUNS * STEPS) * 1e6


def test_import_time(benchmark: Any) -> None:
    def measure() -> float:
        out = (
            subprocess.run(
                [sys.executable, "-X", "importtime", "-c", "import llm_agent_runtime"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stderr.strip()
            .splitlines()[-1]
        )
        return int(out.split("|")[1]) / 1e6

    benchmark.group = "import time (subprocess)"
    seconds = benchmark.pedantic(measure, rounds=5, iterations=1)
    benchmark.extra_info["lib"] = "llm_agent_runtime"
    benchmark.extra_info["correct"] = seconds > 0
    benchmark.extra_info["import_seconds"] = seconds
