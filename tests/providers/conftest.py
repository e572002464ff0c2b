from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import AnthropicProvider, FakeClock, OpenAIProvider, RetryPolicy

from .fake_server import FakeLlmServer, Reply

API_KEY = "sk-test-0123456789-SECRET-abcdef"


@pytest.fixture(scope="session")
def llm_server_session() -> Iterator[FakeLlmServer]:
    with FakeLlmServer() as server:
        yield server


@pytest.fixture
def server(llm_server_session: FakeLlmServer) -> Iterator[FakeLlmServer]:
    llm_server_session.reset()
    yield llm_server_session
    llm_server_session.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def retry(clock: FakeClock) -> RetryPolicy:
    """Three attempts, 1 s then 2 s backoff, on virtual time."""
    return RetryPolicy(max_attempts=3, base_delay=1.0, jitter=False, clock=clock)


PROVIDERS = ["openai", "anthropic"]


def make_provider(kind: str, server: Any, **options: Any) -> Any:
    """A provider of `kind` pointed at the fake server, with the test key."""
    options.setdefault("api_key", API_KEY)
    if kind == "openai":
        return OpenAIProvider(base_url=server.url + "/v1", **options)
    return AnthropicProvider(base_url=server.url, **options)


async def weather_loop(server: FakeLlmServer, stream: bool, *replies: Reply) -> list[Any]:
    """Runs a tool loop (tool `get_weather(city)`) of an `OpenAIProvider` on `server`, which
    answers with `replies`; streamed when `stream` (a listener makes the runtime stream).

    Returns the assistant messages the loop's second request sent back. Checks that the run
    answered and that each request was streamed as asked.
    """

    @ar.tool
    async def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    server.script(*replies)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[get_weather])
    if stream:
        runtime.events.on(lambda event: None)
    async with make_provider("openai", server, retry=RetryPolicy(max_attempts=1)) as llm:
        session = await runtime.run_agent_with_provider("a", "Weather?", llm)
    assert session.final_answer is not None
    assert [r.streamed for r in server.requests] == [stream] * len(server.requests)
    return [m for m in server.requests[1].json["messages"] if m["role"] == "assistant"]


async def openai_reply(server: FakeLlmServer, stream: bool, reply: Reply) -> ar.ChatResponse:
    """The response an `OpenAIProvider` reads from `reply` (streamed when `stream`)."""
    server.script(reply)
    question = [ar.providers.base.Message("user", "Weather?")]
    async with make_provider("openai", server, retry=RetryPolicy(max_attempts=1)) as llm:
        if stream:
            events = [event async for event in llm.chat_stream(question)]
            response: ar.ChatResponse = events[-1].response
            return response
        return await llm.chat(question)  # type: ignore[no-any-return]
