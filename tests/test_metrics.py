import inspect
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


def test_counters_and_queries() -> None:
    m = ar.RuntimeMetrics()
    m.session_started()
    m.session_started()
    m.session_finished()
    for _ in range(3):
        m.record_step()
    m.record_tool_call("search", "a1")
    m.record_tool_call("search", "a1")
    m.record_tool_call("calc", "a2")
    m.record_tool_failure("search", "a1")
    m.record_backpressure_shed()
    m.record_memory_recall(4)
    m.record_checkpoint_error()
    m.record_tokens(10, 5)
    s = m.snapshot()
    assert (s.active_sessions, s.total_sessions, s.total_steps) == (1, 2, 3)
    assert (s.total_tool_calls, s.failed_tool_calls) == (3, 1)
    assert (s.backpressure_shed_count, s.memory_recall_count, s.checkpoint_errors) == (1, 4, 1)
    assert (s.input_tokens, s.output_tokens) == (10, 5)
    assert s.tool_call_count("search") == 2 and s.tool_call_count("nope") == 0
    assert s.tool_failure_count("search") == 1
    assert s.tool_success_count("search") == 1
    assert s.tool_names() == ["calc", "search"]
    assert s.tool_names_with_failures() == ["search"]
    assert s.failure_rate() == 1 / 3
    assert s.success_rate() == 1 - 1 / 3
    assert s.failed_tool_ratio_for("search") == 0.5
    assert s.failed_tool_ratio_for("calc") == 0.0
    assert s.most_called_tool() == "search"
    assert s.tool_diversity() == 2
    assert s.total_agent_count() == 2
    assert s.agent_with_most_calls() == "a1"
    assert s.avg_failures_per_session() == 1.0
    assert s.steps_per_tool_call() == 1.0
    assert s.backpressure_shed_rate() == 1 / 3
    assert s.agent_calls == {"a1": 2, "a2": 1}


def test_empty_snapshot_rates() -> None:
    s = ar.RuntimeMetrics().snapshot()
    assert s.failure_rate() == 0.0 and s.success_rate() == 1.0
    assert s.most_called_tool() is None and s.agent_with_most_calls() is None
    assert s.steps_per_tool_call() == 0.0 and s.avg_failures_per_session() == 0.0


def test_active_sessions_never_negative() -> None:
    m = ar.RuntimeMetrics()
    m.session_finished()
    assert m.snapshot().active_sessions == 0


def test_most_called_ties_go_to_smallest_name() -> None:
    m = ar.RuntimeMetrics()
    m.record_tool_call("b")
    m.record_tool_call("a")
    assert m.snapshot().most_called_tool() == "a"


def test_delta_is_saturating() -> None:
    m = ar.RuntimeMetrics()
    m.record_tool_call("x")
    before = m.snapshot()
    m.record_tool_call("x")
    m.record_tool_call("y")
    after = m.snapshot()
    d = ar.MetricsSnapshot.delta(after, before)
    assert d.total_tool_calls == 2
    assert d.tool_calls == {"x": 1, "y": 1}
    backwards = ar.MetricsSnapshot.delta(before, after)
    assert backwards.total_tool_calls == 0 and backwards.tool_calls == {"x": 0}


def test_delta_rates_stay_between_zero_and_one() -> None:
    # A call is counted as it starts and its failure as it ends: a window may hold more
    # failures than calls, or failures alone.
    m = ar.RuntimeMetrics()
    for _ in range(3):
        m.record_tool_call("search")
    before = m.snapshot()
    m.record_tool_call("search")
    for _ in range(3):
        m.record_tool_failure("search")
    window = ar.MetricsSnapshot.delta(m.snapshot(), before)
    assert (window.total_tool_calls, window.failed_tool_calls) == (1, 3)
    assert (window.failure_rate(), window.success_rate()) == (1.0, 0.0)
    assert window.failed_tool_ratio_for("search") == 1.0
    before = m.snapshot()
    m.record_tool_failure("search")
    failures_alone = ar.MetricsSnapshot.delta(m.snapshot(), before)
    assert (failures_alone.failure_rate(), failures_alone.success_rate()) == (1.0, 0.0)
    assert ar.RuntimeMetrics().snapshot().success_rate() == 1.0  # nothing failed
    assert m.snapshot().failure_rate() == 4 / 4


def test_json_round_trip() -> None:
    m = ar.RuntimeMetrics()
    m.record_tool_call("t", "agent")
    s = m.snapshot()
    data = json.loads(s.to_json())
    assert data["tool_calls"] == {"t": 1} and data["agent_calls"] == {"agent": 1}
    assert ar.MetricsSnapshot.from_json(s.to_json()) == s
    try:
        ar.MetricsSnapshot.from_json("{")
    except ar.AgentRuntimeError as err:
        assert "not a metrics snapshot" in str(err)
    else:
        raise AssertionError("expected AgentRuntimeError")


def test_a_snapshot_whose_totals_are_not_its_tools_sums_is_refused() -> None:
    # It loaded, and its rates (from the totals) then disagreed with its per-tool counts.
    m = ar.RuntimeMetrics()
    m.record_tool_call("a")
    m.record_tool_call("b")
    m.record_tool_failure("b")
    data = json.loads(m.snapshot().to_json())
    for field, value, sum_ in [("total_tool_calls", 99, 2), ("failed_tool_calls", 0, 1)]:
        bad = {**data, field: value}
        with pytest.raises(ar.AgentRuntimeError, match=f"{field} is {value}, .* add up to {sum_}"):
            ar.MetricsSnapshot.from_json(json.dumps(bad))


def test_a_delta_of_unrelated_snapshots_keeps_totals_its_tools_sums() -> None:
    # Its totals were the totals' differences, which the saturated per-tool deltas did not
    # add up to: its own JSON was then no snapshot.
    one, other = ar.RuntimeMetrics(), ar.RuntimeMetrics()
    for _ in range(5):
        one.record_tool_call("x")
    for _ in range(10):
        other.record_tool_call("y")
    d = ar.MetricsSnapshot.delta(other.snapshot(), one.snapshot())
    assert d.tool_calls == {"y": 10} and d.total_tool_calls == 10
    assert ar.MetricsSnapshot.from_json(d.to_json()) == d


def test_prometheus_exposition_parses() -> None:
    m = ar.RuntimeMetrics()
    m.record_tool_call('we"ird\\name\n')
    m.record_step()
    text = m.to_prometheus()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE")
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples["llm_agent_runtime_steps_total"] == 1
    assert samples['llm_agent_runtime_tool_calls_by_tool_total{tool="we\\"ird\\\\name\\n"}'] == 1
    # Cross-check with prometheus_client's own parser.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    tool_family = families["llm_agent_runtime_tool_calls_by_tool"]
    assert tool_family.samples[0].labels == {"tool": 'we"ird\\name\n'}


def test_record_step_is_a_method_like_the_others() -> None:
    # A bare C method (the count of a step is a run's most frequent call): bound, unbound,
    # introspected and misused as any method of the class is.
    m = ar.RuntimeMetrics()
    m.record_step()
    ar.RuntimeMetrics.record_step(m)
    assert m.snapshot().total_steps == 2
    assert str(inspect.signature(ar.RuntimeMetrics.record_step)) == "(self, /)"
    assert ar.RuntimeMetrics.record_step.__doc__ == "Counts one loop step."
    with pytest.raises(TypeError, match="takes no arguments"):
        m.record_step(1)  # type: ignore[call-arg]
    with pytest.raises(
        TypeError, match=r"doesn't apply to a 'llm_agent_runtime\.MetricsSnapshot' object"
    ):
        ar.RuntimeMetrics.record_step(m.snapshot())  # type: ignore[arg-type]
    assert m.snapshot().total_steps == 2


def test_exact_under_thread_contention() -> None:
    m = ar.RuntimeMetrics()
    per_thread = 20_000

    def work(i: int) -> None:
        for j in range(per_thread):
            m.record_step()
            m.record_tool_call(f"tool{j % 3}", f"agent{i}")
            if j % 10 == 0:
                m.record_tool_failure("tool0", f"agent{i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = m.snapshot()
    assert s.total_steps == 8 * per_thread
    assert s.total_tool_calls == 8 * per_thread
    assert sum(s.tool_calls.values()) == 8 * per_thread
    assert s.failed_tool_calls == 8 * (per_thread // 10)
    assert s.agent_calls == {f"agent{i}": per_thread for i in range(8)}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["call", "fail"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["x", "y", None]),
        ),
        max_size=50,
    )
)
def test_matches_a_python_reference(ops: list[tuple[str, str, str | None]]) -> None:
    m = ar.RuntimeMetrics()
    calls: dict[str, int] = {}
    fails: dict[str, int] = {}
    for op, tool, agent in ops:
        if op == "call":
            m.record_tool_call(tool, agent)
            calls[tool] = calls.get(tool, 0) + 1
        else:
            m.record_tool_failure(tool, agent)
            fails[tool] = fails.get(tool, 0) + 1
    s = m.snapshot()
    for tool in "abc":
        assert s.tool_call_count(tool) == calls.get(tool, 0)
        assert s.tool_failure_count(tool) == fails.get(tool, 0)
    assert s.total_tool_calls == sum(calls.values())
    assert s.tool_diversity() == len(calls)


U64_MAX = 2**64 - 1
amounts = st.one_of(st.integers(0, 1000), st.integers(0, U64_MAX), st.just(U64_MAX))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(amounts, amounts, amounts), max_size=12))
def test_token_and_recall_totals_saturate_instead_of_wrapping(
    ops: list[tuple[int, int, int]],
) -> None:
    m = ar.RuntimeMetrics()
    for input_tokens, output_tokens, recalled in ops:
        m.record_tokens(input_tokens, output_tokens)
        m.record_memory_recall(recalled)
    s = m.snapshot()
    # The reference: exact sums, clamped to the largest u64.
    assert s.input_tokens == min(sum(op[0] for op in ops), U64_MAX)
    assert s.output_tokens == min(sum(op[1] for op in ops), U64_MAX)
    assert s.memory_recall_count == min(sum(op[2] for op in ops), U64_MAX)


def test_token_totals_stay_at_the_maximum() -> None:
    m = ar.RuntimeMetrics()
    m.record_tokens(U64_MAX, 1)
    m.record_tokens(5, 0)  # used to wrap around to 4
    m.record_memory_recall()
    s = m.snapshot()
    assert (s.input_tokens, s.output_tokens, s.memory_recall_count) == (U64_MAX, 1, 1)
    assert f"llm_agent_runtime_input_tokens_total {U64_MAX}" in m.to_prometheus()


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.record_memory_recall(-1),
        lambda m: m.record_tokens(-1, 0),
        lambda m: m.record_tokens(0, -(2**70)),
        lambda m: m.record_tokens(2**64, 0),
        # A bool is no count: Python's was counted as 1, numpy's a bare TypeError.
        lambda m: m.record_memory_recall(True),
        lambda m: m.record_tokens(np.True_, 1),
        lambda m: m.record_tokens(0, np.False_),
    ],
)
def test_counts_out_of_range_are_typed_errors(call) -> None:  # type: ignore[no-untyped-def]
    m = ar.RuntimeMetrics()
    # These used to raise Python's OverflowError.
    with pytest.raises(
        ar.AgentRuntimeError, match=r"counts must be integers between 0 and 2\*\*64 - 1"
    ):
        call(m)
    s = m.snapshot()
    assert (s.input_tokens, s.output_tokens, s.memory_recall_count) == (0, 0, 0)


def test_counts_of_numpy_ints_are_counted() -> None:
    m = ar.RuntimeMetrics()
    m.record_tokens(np.int64(3), np.uint8(2))
    m.record_memory_recall(np.int32(4))
    s = m.snapshot()
    assert (s.input_tokens, s.output_tokens, s.memory_recall_count) == (3, 2, 4)


def test_a_snapshot_taken_while_threads_record_is_a_state_the_counters_were_in() -> None:
    # Counters used to be read name by name, calls before failures and totals apart: a
    # snapshot showed more failures than calls for a tool that succeeded half the time.
    m = ar.RuntimeMetrics()
    for i in range(5_000):  # many names: a snapshot takes a while
        m.record_tool_call(f"tool{i}", f"agent{i}")
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            m.record_tool_call("a", "agent-a")
            m.record_tool_failure("a", "agent-a")

    recorder = threading.Thread(target=record)
    recorder.start()
    try:
        for _ in range(50):
            s = m.snapshot()
            for calls, failures in ((s.tool_calls, s.tool_failures), (s.agent_calls, {})):
                assert all(failures.get(name, 0) <= n for name, n in calls.items())
            assert s.tool_failures.get("a", 0) <= s.tool_calls.get("a", 0)
            assert s.agent_failures.get("agent-a", 0) <= s.agent_calls.get("agent-a", 0)
            assert s.total_tool_calls == sum(s.tool_calls.values())
            assert s.failed_tool_calls == sum(s.tool_failures.values())
            assert sum(s.agent_calls.values()) <= s.total_tool_calls
            assert s.failure_rate() <= 1.0
    finally:
        stop.set()
        recorder.join()


def test_a_snapshot_taken_while_calls_come_under_new_tool_names_counts_them_per_tool() -> None:
    # The tools' names were copied before the agents' counts were read: a call under a new
    # tool name in between was in its agent's count, and in no tool's.
    m = ar.RuntimeMetrics()
    for i in range(50_000):  # many names: a snapshot takes a while
        m.record_tool_call(f"old{i}")
    m.record_tool_call("first", "agent")
    stop = threading.Event()

    def record() -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            m.record_tool_call(f"new{i}", "agent")
            m.record_tool_failure(f"new{i}", "agent")

    recorder = threading.Thread(target=record)
    recorder.start()
    try:
        for _ in range(3):
            s = m.snapshot()
            of_agent = {n: c for n, c in s.tool_calls.items() if not n.startswith("old")}
            assert s.agent_calls["agent"] <= sum(of_agent.values())
            assert s.agent_failures.get("agent", 0) <= sum(s.tool_failures.values())
            assert s.agent_failures.get("agent", 0) <= s.agent_calls["agent"]
    finally:
        stop.set()
        recorder.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_another_thread_takes_a_snapshot_records_new_names() -> None:
    # A snapshot held the name map's lock with the GIL released: a fork() then copied it
    # held, and the child hung for good at its first new name (most forks did).
    m = ar.RuntimeMetrics()
    for i in range(20_000):
        m.record_tool_call(f"tool{i}", f"agent{i}")
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            m.snapshot()
            m.to_prometheus()

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    hung = 0
    try:
        for _ in range(6):
            time.sleep(0.02)
            pid = os.fork()
            if pid == 0:  # the child: a new tool and agent, then out at once
                # Killed by SIGALRM if it hangs (by the signal itself: a Python handler, such
                # as pytest-timeout's, would wait for the GIL the hung child holds).
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(10)
                m.record_tool_call("a-new-tool", "a-new-agent")
                os._exit(0 if m.snapshot().tool_calls["a-new-tool"] == 1 else 3)
            _, status = os.waitpid(pid, 0)
            hung += os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0
    finally:
        stop.set()
        scraper.join()
    assert hung == 0


def test_the_metrics_module_names_the_rust_metrics() -> None:
    # DESIGN.md's layout has a `metrics.py` beside `memory.py` and `graph.py`: there was none.
    from llm_agent_runtime import metrics

    assert metrics.RuntimeMetrics is ar.RuntimeMetrics
    assert metrics.MetricsSnapshot is ar.MetricsSnapshot
    assert sorted(metrics.__all__) == ["MetricsSnapshot", "RuntimeMetrics"]


def test_a_deltas_active_sessions_is_the_gauge_at_its_end() -> None:
    m = ar.RuntimeMetrics()
    for _ in range(5):
        m.session_started()
    before = m.snapshot()
    for _ in range(3):
        m.session_finished()
    m.session_started()
    after = m.snapshot()
    d = ar.MetricsSnapshot.delta(after, before)
    assert (d.active_sessions, d.total_sessions) == (3, 1)
    assert "llm_agent_runtime_sessions_active 3" in d.to_prometheus()


async def test_each_run_of_a_session_counts_as_a_session_started() -> None:
    # Documented as runs: a turn of a multi-turn session counts once, as it is active while
    # it runs (the active count never exceeds the total).
    metrics = ar.RuntimeMetrics()
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), metrics=metrics)
    session = runtime.create_session("a")
    for turn in ("one", "two", "three"):
        await runtime.run_turn(session, turn, ar.ScriptedProvider(["ok"]))
    snapshot = metrics.snapshot()
    assert (snapshot.total_sessions, snapshot.active_sessions) == (3, 0)
    assert "turn" in (type(snapshot).total_sessions.__doc__ or "")


def test_an_agent_named_like_the_shared_name_takes_no_place() -> None:
    # It took one of the places, and the agents past the limit were added to its count.
    metrics = ar.RuntimeMetrics(max_agents=2)
    for agent in ["alice", "(other)", "bob", "carol"]:
        metrics.record_tool_call("search", agent)
    assert metrics.snapshot().agent_calls == {"alice": 1, "bob": 1, "(other)": 2}


def test_max_agents_bounds_the_agents_counted_apart() -> None:
    # One entry per distinct agent id, for the metrics' life: with ids from end users, the
    # memory and the Prometheus output grew without bound.
    metrics = ar.RuntimeMetrics(max_agents=2)
    for agent in ["a", "b", "c", "a", "d", "b"]:
        metrics.record_tool_call("search", agent)
    metrics.record_tool_failure("search", "e")
    metrics.record_tool_failure("search", "a")
    snapshot = metrics.snapshot()
    assert snapshot.agent_calls == {"a": 2, "b": 2, "(other)": 2}
    assert snapshot.agent_failures == {"a": 1, "b": 0, "(other)": 1}
    assert snapshot.tool_call_count("search") == 6
    assert 'agent="(other)"' in metrics.to_prometheus()
    unbounded = ar.RuntimeMetrics()
    for n in range(50):
        unbounded.record_tool_call("search", f"agent{n}")
    assert len(unbounded.snapshot().agent_calls) == 50
    for bad in (0, -1, True):
        with pytest.raises(ar.AgentRuntimeError, match="max_agents must be an int of 1 or more"):
            ar.RuntimeMetrics(max_agents=bad)
    for wrong in (1.5, "2"):
        with pytest.raises(TypeError, match="max_agents must be an int"):
            ar.RuntimeMetrics(max_agents=wrong)  # type: ignore[arg-type]
    assert ar.RuntimeMetrics(max_agents=2**70).snapshot().agent_calls == {}
