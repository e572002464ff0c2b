"""Round trips of a `GraphStore` (JSON, networkx, copy, subgraph) checked value for value
against a Python model: odd ids (empty, NUL, astral, very long), every JSON type of property
(64-bit integers at both ends, -0.0, nested lists and dicts), weights of every sign and size,
parallel relationships and self-loops. What goes in comes back exactly (bool stays bool,
-0.0 stays -0.0), or is refused with a GraphError and nothing changes.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import llm_agent_runtime as ar
from llm_agent_runtime.graph import from_networkx, to_networkx

# ---------------------------------------------------------------- exact comparison


def _exact(value: Any) -> Any:
    """`value` with every scalar tagged by its type (and floats by their bits), so that
    True != 1, 1 != 1.0 and 0.0 != -0.0; dicts keep their key order."""
    if isinstance(value, dict):
        return ("dict", [(k, _exact(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_exact(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex(), math.copysign(1.0, value))
    return (type(value).__name__, value)


ODD_IDS = ["", "\x00", "a\x00b", "é☃", "𝄞", "x" * 3000, "0", "v1", " ", "\n"]
KINDS = ["", "k", "\x00", "ré"]
WEIGHTS = [0.0, -0.0, -1.5, 1.0, 1e308, -1e308, 5e-324, 0.1, 2.0**53 + 2]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([-(2**63), 2**63 - 1, 2**63, 2**64 - 1, 0, -1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_properties = st.none() | st.dictionaries(st.text(max_size=5), _values, max_size=4)


def _props_out(properties: dict[str, Any] | None) -> dict[str, Any]:
    """Properties as the store lists them: a dict, empty for none."""
    return {} if properties is None else properties


# ---------------------------------------------------------------- a reference model


class RoundTripMachine(RuleBasedStateMachine):
    """Mutations with labels, properties and weights, checked against a model after each
    step, and again through `to_json`/`from_json`, `copy` and networkx."""

    def __init__(self) -> None:
        super().__init__()
        self.g = ar.GraphStore()
        self.ids: list[str] = []
        self.entities: dict[str, tuple[str, dict[str, Any]]] = {}
        self.rels: list[tuple[str, str, str, float, dict[str, Any]]] = []

    # ------------------------------------------------------------ mutations
    @rule(
        id=st.sampled_from(ODD_IDS),
        label=st.sampled_from(["", "L", "\x00é"]),
        properties=_properties,
    )
    def add_entity(self, id: str, label: str, properties: dict[str, Any] | None) -> None:
        if id in self.entities:
            before = self.g.to_json()
            with pytest.raises(ar.GraphError, match="already exists"):
                self.g.add_entity(id, label, properties)
            assert self.g.to_json() == before
            return
        self.g.add_entity(id, label, copy.deepcopy(properties))
        self.ids.append(id)
        self.entities[id] = (label, _props_out(properties))

    @precondition(lambda self: self.ids)
    @rule(
        data=st.data(),
        label=st.none() | st.sampled_from(["", "M"]),
        properties=_properties,
    )
    def update_entity(
        self, data: Any, label: str | None, properties: dict[str, Any] | None
    ) -> None:
        x = data.draw(st.sampled_from(self.ids))
        self.g.update_entity(x, label, copy.deepcopy(properties))
        old_label, old_props = self.entities[x]
        self.entities[x] = (
            old_label if label is None else label,
            old_props if properties is None else properties,
        )

    @precondition(lambda self: self.ids)
    @rule(
        data=st.data(),
        kind=st.sampled_from(KINDS),
        weight=st.sampled_from(WEIGHTS) | st.floats(allow_nan=False, allow_infinity=False),
        properties=_properties,
    )
    def add_relationship(
        self, data: Any, kind: str, weight: float, properties: dict[str, Any] | None
    ) -> None:
        a, b = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        self.g.add_relationship(a, b, kind, weight, copy.deepcopy(properties))
        self.rels.append((a, b, kind, weight, _props_out(properties)))

    @precondition(lambda self: self.ids)
    @rule(
        data=st.data(),
        kind=st.sampled_from(KINDS),
        weight=st.none() | st.sampled_from(WEIGHTS),
        properties=_properties,
    )
    def update_relationship(
        self, data: Any, kind: str, weight: float | None, properties: dict[str, Any] | None
    ) -> None:
        a, b = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        count = 0
        for i, (f, t, k, w, p) in enumerate(self.rels):
            if (f, t, k) == (a, b, kind):
                self.rels[i] = (
                    f,
                    t,
                    k,
                    w if weight is None else weight,
                    p if properties is None else properties,
                )
                count += 1
        assert self.g.update_relationship(a, b, kind, weight, copy.deepcopy(properties)) == count

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), kind=st.none() | st.sampled_from(KINDS))
    def remove_relationship(self, data: Any, kind: str | None) -> None:
        a, b = data.draw(st.sampled_from(self.ids)), data.draw(st.sampled_from(self.ids))
        keep = [r for r in self.rels if not (r[0] == a and r[1] == b and kind in (None, r[2]))]
        assert self.g.remove_relationship(a, b, kind) == len(self.rels) - len(keep)
        self.rels = keep

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def remove_entity(self, data: Any) -> None:
        x = data.draw(st.sampled_from(self.ids))
        self.g.remove_entity(x)
        at = self.ids.index(x)
        last = self.ids.pop()
        if last != x:
            self.ids[at] = last
        del self.entities[x]
        self.rels = [r for r in self.rels if x not in (r[0], r[1])]

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), bad=st.sampled_from(["nan", "set", "wide", "surrogate", "list"]))
    def refused_writes_change_nothing(self, data: Any, bad: str) -> None:
        x = data.draw(st.sampled_from(self.ids))
        properties: Any = {
            "nan": {"p": float("nan")},
            "set": {"p": {1}},
            "wide": {"p": [2**64]},
            "surrogate": {"p": "\ud800"},
            "list": [1],
        }[bad]
        before = self.g.to_json()
        for write in (
            lambda: self.g.update_entity(x, "changed", properties),
            lambda: self.g.add_relationship(x, x, "k", 1.0, properties),
            lambda: self.g.update_relationship(x, x, "k", 9.0, properties),
            lambda: self.g.add_entity("fresh-" + x, "", properties),
        ):
            with pytest.raises(ar.GraphError):
                write()
        assert self.g.to_json() == before

    @rule()
    def reload_from_json(self) -> None:
        self.g = ar.GraphStore.from_json(self.g.to_json())

    @rule()
    def replace_by_a_copy(self) -> None:
        self.g = self.g.copy()

    # ------------------------------------------------------------ checks
    def _check(self, g: ar.GraphStore) -> None:
        assert g.entity_ids() == self.ids
        assert g.entity_count() == len(self.ids) == len(g)
        assert g.relationship_count() == len(self.rels)
        for x in self.ids:
            label, props = self.entities[x]
            assert x in g
            assert _exact(g.entity(x)) == _exact({"id": x, "label": label, "properties": props})
        listed = [
            {"from": a, "to": b, "kind": k, "weight": w, "properties": p}
            for a, b, k, w, p in self.rels
        ]
        assert _exact(g.relationships()) == _exact(listed)
        for x in self.ids:
            assert _exact(g.edges_from(x)) == _exact([r for r in listed if r["from"] == x])
            assert g.neighbors_of(x) == sorted({r["to"] for r in listed if r["from"] == x})
        assert g.relationship_kinds() == sorted({r[2] for r in self.rels})
        assert g.entities_with_self_loops() == sorted({r[0] for r in self.rels if r[0] == r[1]})

    @invariant()
    def store_matches_the_model(self) -> None:
        self._check(self.g)

    @invariant()
    def json_round_trip_is_exact(self) -> None:
        text = self.g.to_json()
        back = ar.GraphStore.from_json(text)
        self._check(back)
        assert back.to_json() == text

    @invariant()
    def networkx_round_trip_keeps_everything(self) -> None:
        back = from_networkx(to_networkx(self.g))
        assert back.entity_ids() == self.ids
        for x in self.ids:
            assert _exact(back.entity(x)) == _exact(self.g.entity(x))

        # Documented: only the relationships from one source to one target keep their order.
        def by_pair(rows: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
            out: dict[tuple[str, str], list[Any]] = {}
            for r in rows:
                out.setdefault((r["from"], r["to"]), []).append(_exact(r))
            return out

        assert by_pair(back.relationships()) == by_pair(self.g.relationships())


TestRoundTripMachine = RoundTripMachine.TestCase
TestRoundTripMachine.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)


# ---------------------------------------------------------------- single values


@settings(max_examples=150, deadline=None)
@given(properties=_properties, weight=st.floats(allow_nan=False, allow_infinity=False))
def test_any_json_value_comes_back_exactly_through_every_round_trip(
    properties: dict[str, Any] | None, weight: float
) -> None:
    g = ar.GraphStore()
    g.add_entity("a", "L", copy.deepcopy(properties))
    g.add_relationship("a", "a", "self", weight, copy.deepcopy(properties))
    entity = {"id": "a", "label": "L", "properties": _props_out(properties)}
    rel = {
        "from": "a",
        "to": "a",
        "kind": "self",
        "weight": weight,
        "properties": entity["properties"],
    }
    for back in (
        g,
        ar.GraphStore.from_json(g.to_json()),
        g.copy(),
        g.subgraph(["a"]),
        from_networkx(to_networkx(g)),
    ):
        assert _exact(back.entity("a")) == _exact(entity)
        assert _exact(back.relationships()) == _exact([rel])


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, float("nan"), float("inf"), -float("inf"), {1}, b"x", "\ud800", {1: 2}],
    ids=["2**64", "-2**63-1", "nan", "inf", "-inf", "set", "bytes", "surrogate", "int-key"],
)
def test_a_property_no_round_trip_could_keep_is_refused_at_the_way_in(value: Any) -> None:
    g = ar.GraphStore()
    g.add_entity("a")
    properties = value if isinstance(value, dict) else {"p": [value]}
    with pytest.raises(ar.GraphError):
        g.add_entity("b", "", properties)
    with pytest.raises(ar.GraphError):
        g.add_relationship("a", "a", "k", 1.0, properties)
    assert g.entity_ids() == ["a"]
    assert g.relationship_count() == 0


# ---------------------------------------------------------------- hostile documents


def _base() -> dict[str, Any]:
    return {
        "format": "llm-agent-runtime/graph",
        "version": 1,
        "entities": [{"id": "a", "label": "", "properties": None}, {"id": "b"}],
        "relationships": [{"from": "a", "to": "b", "kind": "k", "weight": 1.0, "properties": None}],
    }


def _edited(edit: Any) -> str:
    document = _base()
    edit(document)
    return json.dumps(document)


_GOOD = json.dumps(_base())

HOSTILE = {
    "duplicate id": _edited(lambda d: d["entities"].append({"id": "a"})),
    "missing endpoint": _edited(
        lambda d: d["relationships"].append({"from": "a", "to": "z", "kind": "k", "weight": 1})
    ),
    "id not a str": _edited(lambda d: d["entities"].append({"id": 5})),
    "label null": _edited(lambda d: d["entities"][0].update(label=None)),
    "weight a str": _edited(lambda d: d["relationships"][0].update(weight="1")),
    "weight missing": _edited(lambda d: d["relationships"][0].pop("weight")),
    "kind null": _edited(lambda d: d["relationships"][0].update(kind=None)),
    "properties a list": _edited(lambda d: d["entities"][0].update(properties=[1])),
    "properties a str": _edited(lambda d: d["relationships"][0].update(properties="x")),
    "version a str": _edited(lambda d: d.update(version="1")),
    "version 0": _edited(lambda d: d.update(version=0)),
    "version 2": _edited(lambda d: d.update(version=2)),
    "no format": _edited(lambda d: d.pop("format")),
    "entities an object": _edited(lambda d: d.update(entities={})),
    "a list": "[]",
    "null": "null",
    "empty": "",
    "trailing text": _GOOD + " x",
    "NaN weight": _GOOD.replace('"weight": 1.0', '"weight": NaN'),
    "weight past the float range": _GOOD.replace('"weight": 1.0', '"weight": 1e400'),
    "duplicate top-level field": _GOOD[:-1] + ', "entities": []}',
    "lone surrogate escape": _GOOD.replace('"label": ""', '"label": "\\ud800"'),
    "raw control character": _GOOD.replace('"label": ""', '"label": "\x01"'),
    "integer -0": _GOOD.replace('"properties": null}, {"id"', '"properties": {"x": -0}}, {"id"'),
    "integer past 64 bits": _GOOD.replace(
        '"properties": null}, {"id"', '"properties": {"x": 18446744073709551616}}, {"id"'
    ),
    "nested past the parser's limit": _GOOD.replace(
        '"properties": null}, {"id"', '"properties": {"x": ' + "[" * 5000 + "]" * 5000 + '}}, {"id"'
    ),
    "nested past add_entity's limit": _GOOD.replace(
        '"properties": null}, {"id"', '"properties": ' + '{"a": ' * 80 + "1" + "}" * 80 + ', {"id"'
    ),
}


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_document_is_a_graph_error(text: str) -> None:
    with pytest.raises(ar.GraphError):
        ar.GraphStore.from_json(text)


def test_every_truncation_of_a_document_is_a_graph_error() -> None:
    g = ar.GraphStore()
    g.add_entity("é\x00", "L", {"p": [1, {"q": None}], "f": -0.0})
    g.add_relationship("é\x00", "é\x00", "k", -2.5, {"r": True})
    text = g.to_json()
    for end in range(len(text)):
        with pytest.raises(ar.GraphError):
            ar.GraphStore.from_json(text[:end])
    assert ar.GraphStore.from_json(text).to_json() == text


# ---------------------------------------------------------------- a key named twice

_ENTITY_PROPS = '"properties": null}, {"id"'
_REL_PROPS = '"properties": null}]'


@pytest.mark.parametrize(
    ("where", "properties"),
    [
        (_ENTITY_PROPS, '{"x": 1, "x": 2}'),
        (_ENTITY_PROPS, '{"x": 1, "y": {"z": [], "z": []}}'),
        (_ENTITY_PROPS, '{"x": [{"": 1, "": 1}]}'),
        (_REL_PROPS, '{"w": "a", "w": "b"}'),
    ],
    ids=["entity", "nested", "in-a-list", "relationship"],
)
def test_a_document_naming_a_property_key_twice_is_a_graph_error(
    where: str, properties: str
) -> None:
    # One of the values was dropped without a word (the last one won), while a document
    # naming an entity's own field twice was refused.
    assert where in _GOOD
    end = '}, {"id"' if where == _ENTITY_PROPS else "}]"
    text = _GOOD.replace(where, f'"properties": {properties}{end}')
    with pytest.raises(ar.GraphError, match="twice"):
        ar.GraphStore.from_json(text)
    # The same key in different objects is no repetition.
    fine = _GOOD.replace(where, f'"properties": {{"x": {{"k": 1}}, "y": {{"k": 2}}}}{end}')
    loaded = ar.GraphStore.from_json(fine)
    expected = {"x": {"k": 1}, "y": {"k": 2}}
    if where == _ENTITY_PROPS:
        assert loaded.entity("a")["properties"] == expected
    else:
        assert loaded.relationships()[0]["properties"] == expected


class _SameText(str):
    """A key equal only to itself: a dict holds it beside an equal plain str."""

    def __hash__(self) -> int:
        return 12345

    def __eq__(self, other: object) -> bool:
        return self is other


def test_a_dict_with_two_keys_of_one_text_is_refused_not_collapsed() -> None:
    # {"k": 1, _SameText("k"): 2} came back as {"k": 2}: one value dropped without a word.
    properties = {"k": 1, _SameText("k"): 2}
    assert len(properties) == 2
    g = ar.GraphStore()
    g.add_entity("a")
    with pytest.raises(ar.GraphError, match="twice"):
        g.add_entity("b", "", properties)
    with pytest.raises(ar.GraphError, match="twice"):
        g.add_relationship("a", "a", "k", 1.0, {"outer": [properties]})
    assert g.entity_ids() == ["a"]
    assert g.relationship_count() == 0
