"""Small instruments shared by test files: a prompt recorder, a GIL probe, a Ctrl-C timer,
scripted replies."""

from __future__ import annotations

import _thread
import gc
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import llm_agent_runtime as ar

SCRIPTED_ANSWER = "all done"
"""The final answer of `native_reply` and `react_reply`."""


class PromptRecorder:
    """An `infer` model that answers at once with `answer` and keeps the prompts it was sent."""

    def __init__(self, answer: str = "5") -> None:
        self.prompts: list[str] = []
        self._reply = f"Thought: t\nAction: FINAL_ANSWER {answer}"

    async def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self._reply


class RecordingProvider(ar.ScriptedProvider):
    """A `ScriptedProvider` that keeps the messages of each request (`requests`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[list[ar.Message]] = []

    async def chat(self, messages: Any, *args: Any, **kwargs: Any) -> ar.ChatResponse:
        self.requests.append(list(messages))
        return await super().chat(messages, *args, **kwargs)


def gil_released_during(op: Callable[[], object], attempts: int = 3) -> bool:
    """Whether another thread gets the GIL while `op` (a Rust call) runs in a worker thread.

    With a switch interval far longer than the work, the worker keeps the GIL unless `op`
    lets go of it: the main thread, waiting for the GIL from the worker's start, resumes
    while the worker calls `op` (20 times: time for the main thread to be scheduled) only if
    `op` released it, and once the worker is done otherwise. On a loaded machine the main
    thread may not be scheduled before the work ends: tried up to `attempts` times (an `op`
    that keeps the GIL can never pass).
    """
    return any(_gil_released_once(op) for _ in range(attempts))


def _gil_released_once(op: Callable[[], object]) -> bool:
    """One try of `gil_released_during`."""
    times: dict[str, float] = {}

    def work() -> None:
        for _ in range(20):
            op()
        times["ended"] = time.perf_counter()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        resumed = time.perf_counter()
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    return resumed < times["ended"]


def run_until_ctrl_c(run: Callable[[], object], after: float = 0.1) -> tuple[float, float]:
    """Calls `run` over and over until a Ctrl-C, sent to the main thread `after` seconds in,
    raises KeyboardInterrupt (within 60 s).

    Returns the seconds from the start to the KeyboardInterrupt, and from the Ctrl-C to it.
    The timer starts inside `pytest.raises`: on a loaded machine the Ctrl-C may come before
    `run` does, and it must not end the test session. No collections meanwhile: a
    KeyboardInterrupt raised in a gc callback (hypothesis leaves one installed) or a
    finalizer cannot propagate, and the Ctrl-C would be lost.
    """
    sent: list[float] = []

    def ctrl_c() -> None:
        sent.append(time.perf_counter())
        _thread.interrupt_main()

    def run_for_a_minute() -> None:
        # A frame of its own, with no handler: CPython 3.13 can look up the handler of a
        # KeyboardInterrupt raised at a loop's backward jump at the wrong instruction, and
        # miss the `pytest.raises` around the loop (python/cpython#130279). Raised in here,
        # it leaves through the call, whose handler is found.
        give_up = start + 60.0
        while time.perf_counter() < give_up:
            run()

    timer = threading.Timer(after, ctrl_c)
    collecting = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            timer.start()
            run_for_a_minute()
        raised = time.perf_counter()
    finally:
        timer.cancel()
        if timer.ident is not None:
            timer.join()
        if collecting:
            gc.enable()
    return raised - start, raised - sent[0]


def native_reply(rounds: Sequence[Sequence[Any]], index: int, usage: ar.Usage) -> ar.ChatResponse:
    """The reply to model call `index` of a scripted native run: round `index`'s calls
    (each with a `tool` and an `n`, its one argument), then `SCRIPTED_ANSWER`."""
    if index == len(rounds):
        return ar.ChatResponse(SCRIPTED_ANSWER, usage=usage, stop_reason="stop")
    calls = [ar.ToolCall(f"c{c.n}", c.tool, {"n": c.n}) for c in rounds[index]]
    return ar.ChatResponse("", calls, usage=usage, stop_reason="tool_calls")


def react_reply(rounds: Sequence[Sequence[Any]], index: int) -> str:
    """`native_reply` as a ReAct text model writes it (one call a round)."""
    if index == len(rounds):
        return f"Thought: done\nAction: FINAL_ANSWER {SCRIPTED_ANSWER}"
    (call,) = rounds[index]
    return f'Thought: go\nAction: {call.tool} {{"n": {call.n}}}'
