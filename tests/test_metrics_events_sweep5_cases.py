"""Fault sweep of the event bus and the metrics export: cases that once failed."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import pytest

import llm_agent_runtime as ar

_STRUCT_SEQUENCES = textwrap.dedent(
    """
    import gc, os, time
    from llm_agent_runtime._core import tuple_of
    from llm_agent_runtime.events import EventBus

    bus = EventBus()
    got = []
    bus.on(got.append)
    for cls in (os.stat_result, time.struct_time):
        try:
            bus.emit_new(cls, (1, 2))
        except TypeError as error:
            print("TypeError:", error)
        try:
            tuple_of(cls, (1, 2))
        except TypeError as error:
            print("TypeError:", error)
    print("delivered", len(got))
    del got
    gc.collect()
    print("done")
    """
)


def test_emit_new_refuses_a_struct_sequence_instead_of_crashing() -> None:
    # `tuple.__new__(os.stat_result, ...)` is refused by CPython: a struct sequence holds
    # hidden fields past its items. `emit_new` built one anyway, and freeing it read past
    # the allocation: the process died of a segmentation fault. (Run in a child process so
    # that the crash fails the test rather than the whole session.)
    result = subprocess.run(
        [sys.executable, "-c", _STRUCT_SEQUENCES],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    lines = result.stdout.splitlines()
    assert lines.count("delivered 0") == 1, lines
    errors = [line for line in lines if line.startswith("TypeError:")]
    assert len(errors) == 4, lines
    assert all("stat_result" in e or "struct_time" in e for e in errors), errors
    assert lines[-1] == "done"


def test_a_later_callback_error_of_one_event_is_logged_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every callback gets the event and the first error is raised; the later ones were
    # dropped without a word.
    bus = ar.EventBus()
    seen: list[str] = []

    def first(event: object) -> None:
        seen.append("first")
        raise ValueError("first broke")

    def second(event: object) -> None:
        seen.append("second")
        raise KeyError("second broke")

    bus.on(first)
    bus.on(second)
    with (
        caplog.at_level(logging.ERROR, logger="llm_agent_runtime"),
        pytest.raises(ValueError, match="first broke"),
    ):
        bus.emit(ar.RunStarted("s", "a", "q"))
    assert seen == ["first", "second"]
    (record,) = [r for r in caplog.records if "event delivery failed" in r.getMessage()]
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


async def test_a_tool_call_and_its_failure_count_in_one_metrics_object() -> None:
    # Metrics replaced while a tool ran (the way to start counting afresh): the call was
    # counted a success in the old object, its failure in the new one, with no call there.
    started = asyncio.Event()
    release = asyncio.Event()

    @ar.tool
    async def flaky(x: int) -> int:
        """Fails once released."""
        started.set()
        await release.wait()
        raise ValueError("nope")

    old = ar.RuntimeMetrics()
    runtime = ar.AgentRuntime(tools=[flaky], metrics=old)
    script = ar.ScriptedProvider(['Action: flaky {"x": 1}', "Action: FINAL_ANSWER done"])
    run = asyncio.ensure_future(runtime.run_agent_with_provider("a", "q", script))
    await started.wait()
    new = ar.RuntimeMetrics()
    runtime.metrics = new
    release.set()
    assert (await run).final_answer == "done"
    before, after = old.snapshot(), new.snapshot()
    assert (before.tool_call_count("flaky"), before.tool_failure_count("flaky")) == (1, 1)
    assert (after.tool_call_count("flaky"), after.tool_failure_count("flaky")) == (0, 0)
