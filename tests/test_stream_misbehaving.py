"""A provider's stream that misbehaves: the run ends with a typed error or takes the reply
the stream's first `StreamEnd` holds, within the run's timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import StreamEnd, TextDelta


class Streaming:
    """A provider whose `chat_stream` returns what `make` makes."""

    def __init__(self, make: Any) -> None:
        self.make = make

    async def chat(self, messages: Any, tools: Any = None, **kwargs: Any) -> ar.ChatResponse:
        raise AssertionError("a listening run streams")

    def chat_stream(self, messages: Any, tools: Any = None, **kwargs: Any) -> Any:
        return self.make()


def answer(text: str) -> StreamEnd:
    return StreamEnd(ar.ChatResponse(text=text, stop_reason="stop"))


async def run(provider: Any, **config: Any) -> tuple[ar.AgentSession, list[str]]:
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools", **config))
    deltas: list[str] = []
    runtime.events.on(lambda e: deltas.append(e.text) if isinstance(e, ar.LlmTextDelta) else None)
    session = await runtime.run_agent_with_provider("a", "q", provider)
    return session, deltas


async def test_a_stream_that_never_waits_is_cut_at_the_runs_timeout() -> None:
    async def busy() -> AsyncIterator[Any]:
        for _ in range(3000):  # 3 s of a model computed in the event loop's own thread
            time.sleep(0.001)
            yield TextDelta("x")
        yield answer("x" * 3000)

    started = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await run(Streaming(busy), loop_timeout_ms=200)
    assert time.perf_counter() - started < 1.5


async def test_the_first_stream_end_ends_the_reply() -> None:
    async def goes_on() -> AsyncIterator[Any]:
        yield TextDelta("ab")
        yield answer("ab")
        yield TextDelta("LEAK")
        yield answer("second")
        await asyncio.Event().wait()  # and never ends

    session, deltas = await run(Streaming(goes_on), loop_timeout_ms=5000)
    assert session.final_answer == "ab" and deltas == ["ab"]


class SyncClose:
    """An async iterator of its own whose `aclose` is a plain method."""

    def __init__(self) -> None:
        self.events: list[Any] = [TextDelta("hi"), answer("hi")]
        self.closed = False

    def __aiter__(self) -> SyncClose:
        return self

    async def __anext__(self) -> Any:
        if not self.events:
            raise StopAsyncIteration
        return self.events.pop(0)

    def aclose(self) -> None:
        self.closed = True


async def test_an_iterator_whose_aclose_is_sync_is_closed() -> None:
    stream = SyncClose()
    session, deltas = await run(Streaming(lambda: stream))
    assert session.final_answer == "hi" and deltas == ["hi"] and stream.closed


class NoNext:
    def __aiter__(self) -> NoNext:
        return self


async def test_an_object_with_no_anext_is_no_stream() -> None:
    with pytest.raises(ar.AgentRuntimeError, match="must return an async iterator"):
        await run(Streaming(NoNext))


@pytest.mark.parametrize("text", [b"bytes", 123, None])
async def test_a_text_delta_of_no_str_is_a_loop_error(text: Any) -> None:
    async def odd() -> AsyncIterator[Any]:
        yield TextDelta(text)
        yield answer("x")

    with pytest.raises(ar.AgentLoopError, match="must be a str"):
        await run(Streaming(odd))


class FailsToClose(SyncClose):
    """Its `aclose` fails, after the whole reply or before it."""

    def __init__(self, whole: bool) -> None:
        super().__init__()
        if not whole:
            self.events = [TextDelta("hi")]

    async def aclose(self) -> None:  # type: ignore[override]
        raise RuntimeError("connection reset while closing")


async def test_a_stream_that_fails_to_close_after_its_reply_keeps_the_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session, deltas = await run(Streaming(lambda: FailsToClose(whole=True)))
    assert session.final_answer == "hi" and deltas == ["hi"]
    closing = f"closing a provider's stream after its reply failed (session {session.session_id})"
    assert closing in caplog.text
    with pytest.raises(RuntimeError, match="connection reset while closing"):
        await run(Streaming(lambda: FailsToClose(whole=False)))
