"""A user name and password in a base URL: sent as basic auth, shown nowhere."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx
import pytest

from llm_agent_runtime import AnthropicProvider, OpenAIProvider, ProviderError
from llm_agent_runtime.providers._http import check_base_url, move_user_info

from .conftest import API_KEY
from .fake_server import FakeLlmServer, Reply, Turn

PASSWORD = "S3cret-PW"
USER_INFO = f"alice:{PASSWORD}%40x"  # percent-escaped, as a password with '@' must be
BASIC = "Basic " + base64.b64encode(f"alice:{PASSWORD}@x".encode()).decode()


def with_user_info(url: str) -> str:
    return url.replace("http://", f"http://{USER_INFO}@", 1)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_user_info_is_sent_as_basic_auth_and_shown_nowhere(
    kind: str,
    server: FakeLlmServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx sent them as basic auth, but they showed in the repr, the base URL and the
    # demo's output; with OpenAI's bearer key they replaced it without a word.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log each request
    server.script(Turn(text="hi"))
    llm: Any
    if kind == "openai":
        llm = OpenAIProvider(base_url=with_user_info(server.url + "/v1"))
    else:  # the key goes in x-api-key: basic auth goes beside it
        llm = AnthropicProvider(base_url=with_user_info(server.url), api_key=API_KEY)
    async with llm:
        assert await llm.complete("hello") == "hi"
    headers = server.requests[0].headers
    assert headers["authorization"] == BASIC
    assert headers.get("x-api-key") == (API_KEY if kind == "anthropic" else None)
    root = server.url + ("/v1" if kind == "openai" else "")
    assert llm.base_url == root
    assert repr(llm) == f"{type(llm).__name__}(base_url={root!r}, model={llm.model!r})"
    assert caplog.records  # the request was logged, without the password
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_server_echoing_the_basic_auth_header_shows_it_in_no_error(
    kind: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the API key was redacted: the echoed header, and the password it encodes, showed.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    echoed = f"denied: got Authorization: {BASIC} (user alice, password {PASSWORD}@x)"
    server.script(Reply(status=401, body=json.dumps({"error": {"message": echoed}}).encode()))
    llm: Any
    if kind == "openai":
        llm = OpenAIProvider(base_url=with_user_info(server.url + "/v1"))
    else:
        llm = AnthropicProvider(base_url=with_user_info(server.url), api_key=API_KEY)
    async with llm:
        with pytest.raises(ProviderError) as caught:
            await llm.complete("hello")
    shown = " ".join(f"{link!s} {link!r}" for link in _chain(caught.value))
    assert "denied" in shown and "[redacted]" in shown
    assert BASIC.removeprefix("Basic ") not in shown and PASSWORD not in shown


def _chain(error: BaseException | None) -> list[BaseException]:
    links = []
    while error is not None:
        links.append(error)
        error = error.__cause__ or error.__context__
    return links


async def test_user_info_and_a_bearer_key_are_refused_together(
    server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = with_user_info(server.url + "/v1")
    for made in (
        lambda: OpenAIProvider(base_url=url, api_key=API_KEY),
        lambda: OpenAIProvider(base_url=url),  # the key from the environment
    ):
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        with pytest.raises(ProviderError, match="holds a user name and password") as caught:
            made()
        message = str(caught.value)
        assert f"'http://***@127.0.0.1:{server.port}/v1'" in message
        assert PASSWORD not in message and API_KEY not in message
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        f"http://alice:{PASSWORD}@127.0.0.1:99999/v1",  # not a valid port
        f"alice:{PASSWORD}@127.0.0.1/v1",  # no scheme
        f"http://alice:{PASSWORD}@127.0.0.1/v1?api-version=1",  # a query
        # Not percent-escaped, as they should be: a generated password often holds them.
        f"http://alice:Kx7/{PASSWORD}@127.0.0.1/v1",
        f"http://alice:Kx7?{PASSWORD}@127.0.0.1/v1",
        f"http://alice:Kx7#{PASSWORD}@127.0.0.1/v1",
        f"alice:Kx7/{PASSWORD}@127.0.0.1/v1",
    ],
)
def test_a_refused_base_url_is_quoted_without_its_password(url: str) -> None:
    with pytest.raises(ProviderError) as caught:
        check_base_url("OpenAI", url)
    assert PASSWORD not in str(caught.value) and "***@127.0.0.1" in str(caught.value)


def test_move_user_info_leaves_a_url_without_any_as_it_is() -> None:
    headers = {"authorization": "Bearer k"}
    assert move_user_info("OpenAI", "http://h:8/v1", headers) == ("http://h:8/v1", headers)
    # An '@' in the path is no user info (urlsplit and httpx read it so too).
    assert move_user_info("OpenAI", "http://h/a@b", {}) == ("http://h/a@b", {})
    no_password = move_user_info("OpenAI", "http://token@h/v1", {})
    assert no_password == ("http://h/v1", {"authorization": "Basic dG9rZW46"})  # "token:"


async def test_a_client_credential_the_provider_would_replace_is_refused(
    server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request's header replaced the client's in silence: an OPENAI_API_KEY left in the
    # shell went to the gateway whose token the client carried.
    gateway = "GATEWAY-TOKEN"
    url = server.url + "/v1"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {gateway}"}) as client:
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        with pytest.raises(ProviderError, match="sends its own authorization header"):
            OpenAIProvider(base_url=url, http_client=client)
        monkeypatch.delenv("OPENAI_API_KEY")
        with pytest.raises(ProviderError, match="sends its own authorization header"):
            OpenAIProvider(base_url=with_user_info(url), http_client=client)
        server.script(Turn("hello"))
        async with OpenAIProvider(base_url=url, http_client=client) as llm:
            assert (await llm.complete("hi")) == "hello"  # the client's own, alone
        assert server.requests[-1].headers["authorization"] == f"Bearer {gateway}"
    async with httpx.AsyncClient(headers={"x-api-key": gateway}) as client:
        with pytest.raises(ProviderError, match="sends its own x-api-key header"):
            AnthropicProvider(base_url=server.url, api_key=API_KEY, http_client=client)
