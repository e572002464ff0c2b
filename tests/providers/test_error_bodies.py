"""Errors a server sends with status 200 whose fields are of unexpected types.

Over loopback HTTP against the fake server: the reply is still the server's error, with its
message, never a "malformed reply" that loses it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from llm_agent_runtime import OpenAIEmbedder, ProviderError, RetryPolicy
from llm_agent_runtime.providers.base import Message

from .conftest import API_KEY, make_provider
from .fake_server import FakeLlmServer, Reply

_ODD_ERRORS = {
    # A message that is no string: the whole body is quoted.
    "openai": {"error": {"message": {"detail": "quota exhausted for project p-1"}}},
    # A type that is no string.
    "anthropic": {"type": "error", "error": {"type": None, "message": "quota exhausted now"}},
}


def _json_reply(payload: Any) -> Reply:
    return Reply(body=json.dumps(payload).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_error_with_odd_fields_sent_with_status_200_keeps_its_message(
    server: FakeLlmServer, kind: str
) -> None:
    server.script(_json_reply(_ODD_ERRORS[kind]))

    async def call() -> None:
        async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1)) as llm:
            await llm.chat([Message("user", "hi")])

    with pytest.raises(ProviderError) as caught:
        asyncio.run(call())
    message = str(caught.value)
    assert "quota exhausted" in message
    assert "malformed" not in message


def test_embedder_error_with_odd_fields_sent_with_status_200_keeps_its_message(
    server: FakeLlmServer,
) -> None:
    server.script(_json_reply(_ODD_ERRORS["openai"]))
    embedder = OpenAIEmbedder(api_key=API_KEY, base_url=server.url + "/v1")
    with pytest.raises(ProviderError) as caught:
        embedder.embed(["hello"])
    message = str(caught.value)
    assert "quota exhausted" in message
    assert "malformed" not in message


_GOOD_REPLIES = {
    "openai": {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        "error": None,
    },
    "anthropic": {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "fine"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
        "error": {},
    },
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_good_reply_with_an_empty_error_member_is_read_as_a_reply(
    server: FakeLlmServer, kind: str
) -> None:
    # Some compatible servers add `"error": null` (or `{}`) to a good reply: no error.
    server.script(_json_reply(_GOOD_REPLIES[kind]))

    async def call() -> str:
        async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1)) as llm:
            return (await llm.chat([Message("user", "hi")])).text

    assert asyncio.run(call()) == "fine"


_CLIENT_SECRET = "client-level-secret-0123456789"
"""A credential of the caller's own httpx client (a pooled client set up for a gateway)."""


def _echoing_401() -> Reply:
    """A 401 whose message quotes the credentials the request carried."""
    message = f"bad credentials Bearer {_CLIENT_SECRET} (proxy {_CLIENT_SECRET})"
    return Reply(
        status=401,
        body=json.dumps({"error": {"message": message}}).encode(),
        headers={"content-type": "application/json"},
    )


def test_the_embedder_sends_a_clients_headers_and_redacts_its_credentials(
    server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.script(_echoing_401())
    client = httpx.Client(headers={"Authorization": f"Bearer {_CLIENT_SECRET}", "X-Tenant": "t"})
    embedder = OpenAIEmbedder(base_url=server.url + "/v1", client=client)  # no key of its own
    with pytest.raises(ProviderError, match="bad credentials") as caught:
        embedder.embed(["hello"])
    assert _CLIENT_SECRET not in str(caught.value)
    sent = server.requests[-1].headers
    assert sent["authorization"] == f"Bearer {_CLIENT_SECRET}" and sent["x-tenant"] == "t"
    client.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_providers_client_credentials_are_redacted_from_errors(
    server: FakeLlmServer, kind: str
) -> None:
    server.script(_echoing_401())

    async def call() -> None:
        headers = {"Proxy-Authorization": f"Bearer {_CLIENT_SECRET}"}
        async with httpx.AsyncClient(headers=headers) as client:
            llm = make_provider(kind, server, retry=RetryPolicy(max_attempts=1), http_client=client)
            await llm.chat([Message("user", "hi")])

    with pytest.raises(ProviderError, match="bad credentials") as caught:
        asyncio.run(call())
    assert _CLIENT_SECRET not in str(caught.value)
