from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llm_agent_runtime import AnthropicProvider, FakeClock, OpenAIProvider, RetryPolicy

from .fake_server import FakeLlmServer

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
