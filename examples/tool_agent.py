"""A native tool-calling agent with events, parallel calls and metrics, on a scripted model.

The scripted provider answers as a tool-calling model would: first two calls in one round
(run concurrently), then the final answer. Every event of the run is printed as it comes.
Set OPENAI_API_KEY (or OPENAI_BASE_URL for a local OpenAI-compatible server, or
ANTHROPIC_API_KEY) to run the same agent on a real model, as `ar.provider_from_env()` reads them.

    python examples/tool_agent.py
"""

from __future__ import annotations

import asyncio
import sys

import llm_agent_runtime as ar

WEATHER = {"Paris": "18 °C, light rain", "Oslo": "4 °C, clear"}


@ar.tool
async def weather(city: str) -> str:
    """The current weather in `city`."""
    await asyncio.sleep(0.01)  # as a real HTTP call would wait
    return WEATHER.get(city, "unknown")


SCRIPT = [
    ar.ChatResponse(
        tool_calls=[
            ar.ToolCall("call_1", "weather", {"city": "Paris"}),
            ar.ToolCall("call_2", "weather", {"city": "Oslo"}),
        ],
        stop_reason="tool_calls",
    ),
    ar.ChatResponse(text="Paris is warmer (18 °C) than Oslo (4 °C).", stop_reason="stop"),
]


async def main() -> None:
    """Runs the agent once, printing its events, steps and answer."""
    model = ar.provider_from_env() or ar.ScriptedProvider(SCRIPT)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools", max_iterations=4), tools=[weather])
    runtime.events.on(lambda event: print(f"  event: {type(event).__name__}"))
    session = await runtime.run_agent_with_provider("agent-1", "Paris or Oslo: warmer?", model)
    for step in session.steps:
        if step.action != "FINAL_ANSWER":
            print(f"{step.action}({step.action_input}) -> {step.observation}")
    print(f"answer: {session.final_answer}")
    print(f"tool calls: {runtime.metrics.snapshot().total_tool_calls}")


if __name__ == "__main__":
    # A model answers in any script: characters a terminal's encoding lacks print escaped.
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    asyncio.run(main())
