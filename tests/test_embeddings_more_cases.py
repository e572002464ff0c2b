"""More OpenAIEmbedder cases, over loopback HTTP against the fake LLM server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from providers.fake_server import FakeLlmServer, Reply

import llm_agent_runtime as ar

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer() as server:
        yield server


@pytest.mark.parametrize("status", [201, 203])
def test_openai_embedder_takes_any_success_status(llm_server: FakeLlmServer, status: int) -> None:
    # Only a 200 was read: a 201 or 203 with its embeddings was an "HTTP error".
    llm_server.reset()
    body = json.dumps({"data": [{"index": 0, "embedding": [0.5, 0.25]}]}).encode()
    llm_server.script(Reply(status=status, headers=dict(JSON), body=body))
    embedder = ar.OpenAIEmbedder(base_url=llm_server.url + "/v1")
    assert embedder.embed(["x"]).tolist() == [[0.5, 0.25]]


@pytest.mark.parametrize(
    ("status", "verdict", "retryable"),
    [(500, "false", False), (400, "true", True), (503, None, True), (400, None, False)],
)
def test_openai_embedder_error_follows_x_should_retry(
    llm_server: FakeLlmServer, status: int, verdict: str | None, retryable: bool
) -> None:
    # The server's `x-should-retry` was ignored: a 500 it said not to retry was reported as
    # retryable (a RetryPolicy sent it again), a 4xx it said to retry as final.
    llm_server.reset()
    headers = dict(JSON)
    if verdict is not None:
        headers["x-should-retry"] = verdict
    body = json.dumps({"error": {"message": "scripted"}}).encode()
    llm_server.script(Reply(status=status, headers=headers, body=body))
    embedder = ar.OpenAIEmbedder(
        base_url=llm_server.url + "/v1", retry=ar.RetryPolicy(max_attempts=1)
    )
    with pytest.raises(ar.ProviderError) as caught:
        embedder.embed(["x"])
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert len(llm_server.requests) == 1
