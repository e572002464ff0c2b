"""Streamed and whole responses agree, however the server splits the stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_agent_runtime.providers.base import Message, StreamEnd, TextDelta, ToolCallDelta

from .conftest import make_provider
from .fake_server import RecordedRequest, Reply, Turn, render

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_calls = st.lists(
    st.tuples(
        st.from_regex(r"call_[a-z0-9]{1,6}", fullmatch=True),
        st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
        st.dictionaries(st.text(min_size=1, max_size=6), _json, max_size=4),
    ),
    max_size=3,
)


def _mock_client(turn: Turn) -> httpx.AsyncClient:
    """A client whose transport answers in memory, rendering `turn` like the fake server."""

    def handle(request: httpx.Request) -> httpx.Response:
        recorded = RecordedRequest(request.method, request.url.path, {}, request.content)
        reply: Reply = render(turn, recorded)
        if reply.frames is None:
            return httpx.Response(reply.status, content=reply.body)
        return httpx.Response(reply.status, content=b"".join(reply.frames))

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["openai", "anthropic"]),
    pieces=st.lists(st.text(min_size=1, max_size=6), max_size=12),
    calls=_calls,
    argument_chunk=st.integers(1, 12),
)
def test_stream_assembles_what_the_whole_response_says(
    kind: str, pieces: list[str], calls: list[Any], argument_chunk: int
) -> None:
    turn = Turn(
        text="".join(pieces),
        text_chunks=pieces,
        tool_calls=calls,
        argument_chunk=argument_chunk,
        input_tokens=len(pieces),
        output_tokens=len(calls),
    )
    server = type("Mock", (), {"url": "http://mock"})()

    async def both() -> tuple[Any, list[Any]]:
        async with _mock_client(turn) as client:
            llm = make_provider(kind, server, http_client=client)
            whole = await llm.chat([Message("user", "x")])
            events = [e async for e in llm.chat_stream([Message("user", "x")])]
        return whole, events

    whole, events = asyncio.run(both())
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response == whole
    assert whole.text == turn.text
    assert [(c.id, c.name, c.arguments) for c in whole.tool_calls] == calls
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == turn.text
    for index, (_, _, arguments) in enumerate(calls):
        fragments = [
            e.arguments_delta for e in events if isinstance(e, ToolCallDelta) and e.index == index
        ]
        assert len("".join(fragments)) == len(json.dumps(arguments))
