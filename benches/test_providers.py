"""Streaming a 10,000-chunk completion over loopback HTTP: our providers vs the official SDKs.

The scripted server of the provider tests (tests/providers/fake_server.py) replays the same
pre-encoded stream for every client: OpenAI Chat Completions chunks for `OpenAIProvider` and
the `openai` SDK, Anthropic Messages events for `AnthropicProvider` and the `anthropic` SDK.
Each client reads the text deltas of its fastest public streaming path (our `stream()`, the
SDKs' raw `create(stream=True)` iterators) with a warm, pooled connection. Timed: request to
last token. extra_info: CPU time of the client thread and the per-chunk cost.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from providers.fake_server import FakeLlmServer, Turn, render_anthropic, render_openai

N_CHUNKS = 10_000
PIECES = [f"tok{i} " for i in range(N_CHUNKS)]
EXPECTED = "".join(PIECES)
TURN = Turn(text=EXPECTED, text_chunks=PIECES, input_tokens=12, output_tokens=N_CHUNKS)
GROUP_OPENAI = f"stream {N_CHUNKS:,} chunks over loopback HTTP (OpenAI wire format)"
GROUP_ANTHROPIC = f"stream {N_CHUNKS:,} chunks over loopback HTTP (Anthropic wire format)"
PROMPT = [{"role": "user", "content": "count"}]

Stream = Callable[[], AsyncIterator[str]]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLlmServer]:
    openai_reply = render_openai(TURN, stream=True)
    anthropic_reply = render_anthropic(TURN, stream=True)
    with FakeLlmServer() as server:
        server.fallback = lambda r: anthropic_reply if r.wire == "anthropic" else openai_reply
        yield server


def _ours_openai(url: str) -> tuple[Stream, Any]:
    llm = ar.OpenAIProvider(api_key="sk-bench", base_url=url + "/v1", model="m")
    return (lambda: llm.stream("count")), llm.aclose


def _ours_anthropic(url: str) -> tuple[Stream, Any]:
    llm = ar.AnthropicProvider(api_key="sk-bench", base_url=url, model="m")
    return (lambda: llm.stream("count")), llm.aclose


def _sdk_openai(url: str) -> tuple[Stream, Any]:
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=url + "/v1", max_retries=0)

    async def stream() -> AsyncIterator[str]:
        chunks = await client.chat.completions.create(
            model="m",
            messages=PROMPT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return stream, client.close


def _sdk_anthropic(url: str) -> tuple[Stream, Any]:
    import anthropic

    client = anthropic.AsyncAnthropic(api_key="sk-bench", base_url=url, max_retries=0)

    async def stream() -> AsyncIterator[str]:
        events = await client.messages.create(
            model="m",
            max_tokens=N_CHUNKS + 10,
            messages=PROMPT,  # type: ignore[arg-type]
            stream=True,
        )
        async for event in events:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text

    return stream, client.close


FLOOR = "httpx-floor"
"""`extra_info["lib"]` of the floor: httpx reading the raw stream, parsing nothing."""
_FLOOR_MEDIANS: dict[str, float] = {}


def _floor(path: str) -> Callable[[str], tuple[Stream, Any]]:
    def make(url: str) -> tuple[Stream, Any]:
        import httpx

        client = httpx.AsyncClient()
        body = {"model": "m", "max_tokens": 1, "messages": PROMPT, "stream": True}

        async def stream() -> AsyncIterator[str]:
            async with client.stream("POST", url + path, json=body) as response:
                async for chunk in response.aiter_bytes():
                    yield chunk.decode()

        return stream, client.aclose

    return make


CASES = [
    pytest.param(GROUP_OPENAI, FLOOR, _floor("/v1/chat/completions"), id="openai-wire-floor"),
    pytest.param(GROUP_OPENAI, "llm_agent_runtime", _ours_openai, id="openai-wire-ours"),
    pytest.param(GROUP_OPENAI, "openai", _sdk_openai, id="openai-wire-openai-sdk"),
    pytest.param(GROUP_ANTHROPIC, FLOOR, _floor("/v1/messages"), id="anthropic-wire-floor"),
    pytest.param(GROUP_ANTHROPIC, "llm_agent_runtime", _ours_anthropic, id="anthropic-wire-ours"),
    pytest.param(GROUP_ANTHROPIC, "anthropic", _sdk_anthropic, id="anthropic-wire-anthropic-sdk"),
]


@pytest.mark.parametrize(("group", "lib", "make"), CASES)
def test_stream_to_last_token(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    server: FakeLlmServer,
    group: str,
    lib: str,
    make: Callable[[str], tuple[Stream, Any]],
) -> None:
    if lib != FLOOR:
        pytest.importorskip(lib)
    stream, close = make(server.url)
    cpu_times: list[float] = []

    async def consume() -> str:
        pieces = [piece async for piece in stream()]
        return "".join(pieces)

    def run() -> str:
        cpu = time.thread_time()  # the client's thread only: the server runs in another
        text = loop.run_until_complete(consume())
        cpu_times.append(time.thread_time() - cpu)
        return text

    run()  # the warm-up (the cold first request), outside the CPU times
    cpu_times.clear()

    benchmark.group = group
    benchmark.extra_info["lib"] = lib
    text = benchmark.pedantic(run, rounds=5, iterations=1)
    loop.run_until_complete(close())
    if lib == FLOOR:  # raw SSE text: check it carries every piece, in order
        benchmark.extra_info["correct"] = len(text) > len(EXPECTED) and PIECES[-1] in text
    else:
        benchmark.extra_info["correct"] = text == EXPECTED
    if benchmark.stats is None:  # None under --benchmark-disable
        return
    median = benchmark.stats.stats.median
    if lib == FLOOR:
        _FLOOR_MEDIANS[group] = median
    if group in _FLOOR_MEDIANS and lib != FLOOR:
        # What parsing, validation and the iterator layers add on top of httpx itself.
        overhead = (median - _FLOOR_MEDIANS[group]) / N_CHUNKS * 1e6
        benchmark.extra_info["us_per_chunk_over_httpx"] = round(overhead, 2)
    benchmark.extra_info["cpu_ms"] = round(statistics.median(cpu_times) * 1e3, 1)
    benchmark.extra_info["us_per_chunk"] = round(median / N_CHUNKS * 1e6, 2)
    benchmark.extra_info["cpu_us_per_chunk"] = round(
        statistics.median(cpu_times) / N_CHUNKS * 1e6, 2
    )
