"""Errors that OpenAI-compatible servers report inside a 200 reply, in each of their forms.

After a stream has started, a server can only report a failure in the stream itself: as an
`{"error": {...}}` chunk (OpenAI, recent vLLM, LiteLLM with its code as a string), as vLLM's
older bare `{"object": "error", ...}` chunk, or as an event named `error` (gateways, proxies)
whose data is JSON or plain text. Each is the server's error, never an empty or whole reply.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest

from llm_agent_runtime import FakeClock, ProviderError, RetryPolicy

from .conftest import API_KEY, make_provider
from .fake_server import (
    FakeLlmServer,
    Reply,
    Turn,
    openai_error_event,
    render_openai,
    sse,
    vllm_error_event,
)
from .test_faults import HELLO, USER, collect, texts

# The server echoes the key: every form must redact it.
MESSAGE = f"model worker crashed (request by {API_KEY})"
AFTER_FIRST_DELTA = 2


class Form(NamedTuple):
    frame: bytes
    said: str
    """What the error's message must say."""
    status: int | None
    retryable: bool


FORMS = {
    "error-object": Form(
        openai_error_event(MESSAGE, "BadRequestError", 400), "BadRequestError: model", 400, False
    ),
    "error-object-code-as-string": Form(
        openai_error_event(MESSAGE, None, "503"), "error: model worker", 503, True
    ),
    "error-object-rate-limit-code": Form(
        openai_error_event(MESSAGE, "requests", "rate_limit_exceeded"), "requests: ", None, True
    ),
    "error-string": Form(sse({"error": MESSAGE}), "error: model worker", None, False),
    "vllm-bare": Form(vllm_error_event(MESSAGE), "BadRequestError: model", 400, False),
    "vllm-bare-5xx": Form(
        vllm_error_event(MESSAGE, "InternalServerError", 500), "InternalServerError: ", 500, True
    ),
    "error-event-json": Form(
        sse({"error": {"message": MESSAGE, "type": "upstream_error", "code": 502}}, "error"),
        "upstream_error: model",
        502,
        True,
    ),
    "error-event-flat-json": Form(
        sse({"message": MESSAGE, "code": 429}, "error"), "error: model worker", 429, True
    ),
    # An error event naming no type and no code: the server's own failure, as a 500 is (and
    # as the Anthropic API's `api_error`), retried before any output (it was not).
    "error-event-text": Form(sse(MESSAGE, "error"), "error: model worker", None, True),
    "error-event-message-only": Form(
        sse({"error": {"message": MESSAGE}}, "error"), "error: model worker", None, True
    ),
    "error-event-blank-type-and-code": Form(
        sse({"error": {"message": MESSAGE, "type": "", "code": ""}}, "error"),
        "error: model worker",
        None,
        True,
    ),
    "error-event-typed": Form(
        sse({"error": {"message": MESSAGE, "type": "invalid_request_error"}}, "error"),
        "invalid_request_error: model",
        None,
        False,
    ),
}


def _with_error(at: int, frame: bytes) -> Reply:
    reply = render_openai(HELLO, True)
    assert reply.frames is not None
    reply.frames.insert(at, frame)
    return reply


def _check(error: ProviderError | None, form: Form) -> None:
    assert isinstance(error, ProviderError)
    assert "OpenAI stream error" in str(error)
    assert form.said in str(error)
    assert API_KEY not in str(error) and "[redacted]" in str(error)
    assert "malformed" not in str(error)
    assert (error.status, error.retryable) == (form.status, form.retryable)


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
async def test_an_error_frame_mid_stream_is_the_servers_error(
    form: Form, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(_with_error(AFTER_FIRST_DELTA, form.frame), Turn("unused"))
    async with make_provider("openai", server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert texts(events) == ["Hello"]  # and no StreamEnd: the reply is not passed off as whole
    _check(error, form)
    assert len(server.requests) == 1  # output was seen: never replayed
    assert clock.sleeps == []


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
async def test_an_error_frame_before_any_output_is_retried_when_retryable(
    form: Form, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(_with_error(0, form.frame), HELLO)
    async with make_provider("openai", server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    if form.retryable:
        assert error is None
        assert "".join(texts(events)) == HELLO.text
        assert len(server.requests) == 2
        assert clock.sleeps == [1.0]
    else:
        assert events == []
        _check(error, form)
        assert len(server.requests) == 1


@pytest.mark.parametrize(("code", "retryable"), [(400, False), (503, True)])
async def test_vllm_bare_error_with_status_200_is_the_servers_error(
    code: int, retryable: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    body = {"object": "error", "message": MESSAGE, "type": "Busy", "param": None, "code": code}
    failure = Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    server.script(failure, Turn("ok"))
    async with make_provider("openai", server, retry=retry) as llm:
        if retryable:
            assert await llm.complete("hi") == "ok"
            return
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert "OpenAI API error: Busy: model worker crashed" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert (caught.value.status, caught.value.retryable) == (400, False)
    assert len(server.requests) == 1
