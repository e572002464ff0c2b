"""A provider's `stop=` of a wrong type is refused by name before any request is made.

`stop=5` failed deep in the request's making with a bare "'int' object is not iterable",
and `stop=[1]` (a list holding no str) was sent to the server.
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_agent_runtime.providers.base import Message, StreamEnd

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Turn

BAD_STOPS = [
    (5, r"stop must be a str or a list of str, got int"),
    (2.5, r"stop must be a str or a list of str, got float"),
    (b"END", r"stop must be a str or a list of str, got bytes"),
    ({"END": 1}, r"stop must be a str or a list of str, got dict"),
    ([1], r"stop\[0\] must be a str, got int"),
    (["END", None], r"stop\[1\] must be a str, got NoneType"),
    (("END", b"x"), r"stop\[1\] must be a str, got bytes"),
]
BAD_IDS = ["int", "float", "bytes", "dict", "list-of-int", "list-with-none", "tuple-with-bytes"]


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(("stop", "message"), BAD_STOPS, ids=BAD_IDS)
@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "chat_stream"])
async def test_a_call_with_a_bad_stop_is_refused_before_any_request(
    kind: str, stop: Any, message: str, streamed: bool, server: FakeLlmServer
) -> None:
    server.fallback = Turn("ok")
    async with make_provider(kind, server) as llm:
        with pytest.raises(TypeError, match=message):
            if streamed:
                llm.chat_stream([Message("user", "hi")], stop=stop)  # raised at once
            else:
                await llm.chat([Message("user", "hi")], stop=stop)
    assert server.requests == []


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(("stop", "message"), BAD_STOPS, ids=BAD_IDS)
def test_a_provider_made_with_a_bad_stop_is_refused(
    kind: str, stop: Any, message: str, server: FakeLlmServer
) -> None:
    with pytest.raises(TypeError, match=message):
        make_provider(kind, server, stop=stop)


async def test_a_bad_stop_is_refused_when_openai_sends_none_too(server: FakeLlmServer) -> None:
    # `send_stop=False` leaves `stop` out of the request: a wrong one is still a mistake.
    async with make_provider("openai", server, send_stop=False) as llm:
        with pytest.raises(TypeError, match=r"stop\[0\] must be a str"):
            await llm.chat([Message("user", "hi")], stop=[1])
    assert server.requests == []


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stop_of_any_sequence_of_str_is_sent(kind: str, server: FakeLlmServer) -> None:
    server.fallback = Turn("ok")
    async with make_provider(kind, server, stop=("END",)) as llm:
        assert llm.stop == ["END"]
        await llm.chat([Message("user", "a")])
        await llm.chat([Message("user", "b")], stop=("X", "Y"))
        await llm.chat([Message("user", "c")], stop=(s for s in ["Z"]))
        events = [e async for e in llm.chat_stream([Message("user", "d")], stop=None)]
        assert isinstance(events[-1], StreamEnd)
    field = "stop" if kind == "openai" else "stop_sequences"
    sent = [r.json.get(field) for r in server.requests]
    assert sent == [["END"], ["X", "Y"], ["Z"], None]
