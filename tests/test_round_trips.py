"""JSON round trips of GraphStore and EpisodicStore keep every float bit (hypothesis).

serde_json's default float parser may read a shortest-round-trip decimal back one ulp off
(about one value in ten); the crate enables `float_roundtrip` so that it never does.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

FINITE = st.floats(allow_nan=False, allow_infinity=False)
UNIT = st.floats(min_value=0.0, max_value=1.0)
TIMES = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
SETTINGS = settings(max_examples=200, deadline=None)


def bits(x: float) -> bytes:
    """The IEEE-754 bits of `x`: tells -0.0 from 0.0, and one ulp from the next."""
    return struct.pack("<d", x)


def test_a_value_the_default_parser_reads_one_ulp_off() -> None:
    g = ar.GraphStore()
    g.add_entity("a", properties={"w": 95.89784328838307})
    g.add_relationship("a", "a", "k", 0.42451918914251396)
    h = ar.GraphStore.from_json(g.to_json())
    assert h.relationships()[0]["weight"] == 0.42451918914251396
    assert h.entity("a")["properties"]["w"] == 95.89784328838307
    store = ar.EpisodicStore(clock=lambda: 1.7e9 + 0.42451918914251396)
    store.add_episode("a", "x", 0.42451918914251396)
    back = ar.EpisodicStore.from_json(store.to_json()).episodes("a")[0]
    assert back.importance == 0.42451918914251396
    assert back.created_at == 1.7e9 + 0.42451918914251396


@SETTINGS
@given(st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=40), FINITE)
def test_graph_floats_survive_json_exactly(
    edges: list[tuple[float, float]], entity_value: float
) -> None:
    g = ar.GraphStore()
    g.add_entity("a", "node", {"x": entity_value, "nested": [entity_value, {"y": -entity_value}]})
    for weight, value in edges:
        g.add_relationship("a", "a", "k", weight, {"w": value})
    text = g.to_json()
    h = ar.GraphStore.from_json(text)
    assert h.to_json() == text
    props = h.entity("a")["properties"]
    assert bits(props["x"]) == bits(entity_value)
    assert bits(props["nested"][1]["y"]) == bits(-entity_value)
    for (weight, value), rel in zip(edges, h.relationships(), strict=True):
        assert bits(rel["weight"]) == bits(weight)
        assert bits(rel["properties"]["w"]) == bits(value)


@SETTINGS
@given(st.lists(st.tuples(UNIT, TIMES), min_size=1, max_size=40), st.data())
def test_episodic_floats_survive_json_exactly(
    episodes: list[tuple[float, float]], data: st.DataObject
) -> None:
    now = [0.0]
    store = ar.EpisodicStore(per_agent_capacity=100, clock=lambda: now[0])
    for i, (importance, created_at) in enumerate(episodes):
        now[0] = created_at
        store.add_episode(f"agent{i % 3}", f"e{i}", importance)
    now[0] = data.draw(TIMES)
    store.recall("agent0", 2)  # recall times are exported too
    text = store.to_json()
    back = ar.EpisodicStore.from_json(text)
    assert back.to_json() == text
    for agent in ("agent0", "agent1", "agent2"):
        for ours, theirs in zip(store.episodes(agent), back.episodes(agent), strict=True):
            assert bits(theirs.importance) == bits(ours.importance)
            assert bits(theirs.created_at) == bits(ours.created_at)
            assert theirs.last_recalled_at == ours.last_recalled_at


class _NoText:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_value_whose_str_fails_is_a_persistence_error_not_a_bare_one() -> None:
    # `default=str` let the value's own error out, untyped, of to_json and of checkpoints.
    from llm_agent_runtime.persistence.codec import encode

    session = ar.AgentSession(session_id="s", agent_id="a")
    session.steps.append(ar.Step("t", "tool", {"x": _NoText()}, "ok"))
    with pytest.raises(ar.PersistenceError, match=r"str\(\) failed: RuntimeError\('no text'\)"):
        session.to_json()
    with pytest.raises(ar.PersistenceError, match=r"str\(\) failed"):
        encode("step", {"value": _NoText()})
    with pytest.raises(ar.PersistenceError, match=r"str\(\) failed"):
        encode("step", {_NoText(): 1})  # a key JSON has no form for
