"""networkx interop for `GraphStore`.

`to_networkx` imports networkx when it is called (the `networkx` extra:
``pip install 'llm-agent-runtime[networkx]'``); `from_networkx` takes any networkx graph.
"""

from __future__ import annotations

import json
from typing import Any

from llm_agent_runtime._core import GraphStore
from llm_agent_runtime.errors import GraphError

__all__ = ["from_networkx", "to_networkx"]


def to_networkx(graph: GraphStore) -> Any:
    """Exports `graph` as a `networkx.MultiDiGraph`.

    Nodes carry `label` and `properties`; edges carry `kind`, `weight` and `properties`,
    added in insertion order (parallel relationships stay separate edges). The export is
    read in one go (one `to_json()`), so another thread's writes land wholly before or after
    it.

    `from_networkx(to_networkx(g))` holds the same entities, in order, and the same
    relationships, but not always in the same order: networkx lists a node's edges grouped
    by target (targets in the order the node first reached them), so only the relationships
    from one source to one target keep their order. A source's relationships to different
    targets come back grouped by target (their order in `edges_from` and `relationships`
    may change), sources come in entity order, and so the order of an undirected traversal's
    visits among neighbours reached through different sources may differ. (A directed
    traversal visits in the same order: each source's targets keep the order they were
    first reached in.)

    Args:
        graph: The graph to export.

    Returns:
        A new `networkx.MultiDiGraph`.

    Raises:
        GraphError: When `graph` is not a `GraphStore` (a networkx graph, say, or another
            object with a `to_json` that gives no graph, such as an `EpisodicStore`), or
            networkx is not installed (the `networkx` extra).
    """
    # Read through `to_json` alone (a wrapper of a store will do); anything else (a networkx
    # graph passed the wrong way round) would fail with an AttributeError naming it.
    if not callable(getattr(graph, "to_json", None)) or isinstance(graph, type):
        raise GraphError(f"to_networkx takes a GraphStore, got {type(graph).__name__}")
    try:
        import networkx as nx  # type: ignore[import-untyped,unused-ignore]
    except ImportError as error:
        raise GraphError(
            "to_networkx needs networkx: pip install 'llm-agent-runtime[networkx]'"
        ) from error

    # One read of the whole graph under the store's lock: separate reads of the ids, each
    # entity and the relationships could each see another thread's write in between.
    document = _graph_document(graph)
    out = nx.MultiDiGraph()
    for entity in document["entities"]:
        out.add_node(entity["id"], label=entity["label"], properties=_dict_of(entity["properties"]))
    for rel in document["relationships"]:
        out.add_edge(
            rel["from"],
            rel["to"],
            kind=rel["kind"],
            weight=rel["weight"],
            properties=_dict_of(rel["properties"]),
        )
    return out


_GRAPH_FORMAT = "llm-agent-runtime/graph"
"""The `format` field of `GraphStore.to_json()`."""


def _graph_document(graph: Any) -> dict[str, Any]:
    """`graph.to_json()` parsed, when it is a `GraphStore`'s document.

    Raises:
        GraphError: `to_json` gives no JSON text, or JSON of something else than a graph (an
            `EpisodicStore` and a metrics snapshot have a `to_json` too).
    """
    refused = f"to_networkx takes a GraphStore, got {type(graph).__name__}"
    try:
        document = json.loads(graph.to_json())
    except (TypeError, ValueError) as error:  # no str, or no JSON (JSONDecodeError)
        raise GraphError(f"{refused}: its to_json() gives no graph ({error})") from error
    if not (
        isinstance(document, dict)
        and document.get("format") == _GRAPH_FORMAT
        and isinstance(document.get("entities"), list)
        and isinstance(document.get("relationships"), list)
    ):
        raise GraphError(f"{refused}: its to_json() gives no {_GRAPH_FORMAT} document")
    return document


def _dict_of(properties: dict[str, Any] | None) -> dict[str, Any]:
    """Properties as `entity()` and `relationships()` give them: a dict, empty for none."""
    return {} if properties is None else properties


def from_networkx(nx_graph: Any, *, weight: str = "weight", kind: str = "kind") -> GraphStore:
    """Builds a `GraphStore` from any networkx graph.

    Node ids become strings (`str(node)`). A node's `label` attribute becomes its label
    (None or absent is "", other values than strings are converted with `str`); its
    properties are its other attributes merged with its `properties` attribute (a dict):
    on a key in both, the `properties` dict wins, as it is the explicit one (and what
    `to_networkx` writes). Each edge becomes one relationship (an undirected edge becomes one
    relationship from its first to its second endpoint; run algorithms with `directed=False`
    to treat them as undirected); its properties are, likewise, its attributes other than
    `weight` and `kind` merged with its `properties` dict, which wins on a clash. With
    `weight="cost"`, an edge's `weight` attribute is an ordinary property. A multigraph's
    edge keys are not kept (parallel edges stay separate relationships, in key order): put
    what a key means in the `kind` attribute or a property.

    Args:
        nx_graph: A `Graph`, `DiGraph`, `MultiGraph` or `MultiDiGraph`.
        weight: Edge attribute holding the weight, a real number as `add_relationship`
            takes one: an int, a float, a `Fraction`, a `Decimal`, a numpy number (default
            1.0 when absent).
        kind: Edge attribute holding the relationship kind (default "related" when absent
            or None; other values than strings are converted with `str`).

    Returns:
        The new graph.

    Raises:
        GraphError: When `nx_graph` is not a networkx graph (a `GraphStore`, say); two nodes
            have the same string form; a node's string form, a label or a kind is not valid
            Unicode (a lone surrogate); a weight is not a finite real number (None, a string,
            a bool, NaN, or one beyond the float range such as `10**400`); a `properties`
            attribute is not a dict; or a property is not JSON-compatible. The message names
            the node or edge.
    """
    # Any object with networkx's graph methods will do; another (a GraphStore passed the
    # wrong way round) would fail with an AttributeError naming one of them.
    if not all(callable(getattr(nx_graph, m, None)) for m in ("nodes", "edges", "is_multigraph")):
        raise GraphError(f"from_networkx takes a networkx graph, got {type(nx_graph).__name__}")
    graph = GraphStore()
    names: dict[Any, str] = {}
    for node, data in nx_graph.nodes(data=True):
        name = str(node)
        if name in graph:
            raise GraphError(f"two nodes share the id {name!r} once converted to strings")
        names[node] = name
        where = f"node {node!r}"
        attributes = dict(data)
        label = attributes.pop("label", None)
        properties = _merged(attributes.pop("properties", None), attributes, where)
        try:
            graph.add_entity(name, "" if label is None else str(label), properties)
        except GraphError as error:
            raise GraphError(f"{where}: {error}") from error
    edges = (
        nx_graph.edges(keys=True, data=True)
        if nx_graph.is_multigraph()
        else ((u, v, None, data) for u, v, data in nx_graph.edges(data=True))
    )
    for u, v, key, data in edges:
        where = f"edge {u!r} -> {v!r}" + (f" (key {key!r})" if key is not None else "")
        extra = {k: val for k, val in data.items() if k not in (weight, kind, "properties")}
        properties = _merged(data.get("properties"), extra, where)
        kind_value = data.get(kind)
        kind_name = "related" if kind_value is None else str(kind_value)
        as_float = _weight_of(data.get(weight, 1.0), weight, where)
        try:
            graph.add_relationship(names[u], names[v], kind_name, as_float, properties)
        except GraphError as error:
            raise GraphError(f"{where}: {error}") from error
    return graph


def _weight_of(value: Any, attribute: str, where: str) -> float:
    """An edge's weight read as `GraphStore.add_relationship` reads one.

    Whether it is finite is checked where the store takes it.

    Raises:
        GraphError: When `value` is a bool (Python's or numpy's) or a complex number, has no
            float form (None, a str), or is beyond the float range, or is a 0-d array holding
            such a value; the message names the edge and `attribute`.
    """
    shown = value
    # A 0-d numpy array of bools, text or objects is read as the scalar it holds: float()
    # would parse one of text, and take one of a bool as 1.0 or 0.0.
    if getattr(getattr(value, "dtype", None), "kind", None) in ("b", "O", "S", "U") and (
        getattr(value, "shape", None) == ()
    ):
        value = value.item()
    kind = type(value)
    # The store reads a weight through __float__ (or __index__), as a Decimal or a 0-d numpy
    # array has it; float() would also parse a str, which is no number. A bool converts but
    # is no weight.
    is_bool = isinstance(value, bool) or (
        kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    )
    # A numpy complex number has __float__, which keeps the real part with only a warning.
    is_complex = (
        isinstance(value, complex) or getattr(getattr(value, "dtype", None), "kind", None) == "c"
    )
    if is_bool or is_complex or not (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise GraphError(f"{where}: weight ({attribute!r}) must be a real number, got {shown!r}")
    try:
        return float(value)
    except OverflowError as error:  # an int or Fraction beyond the float range
        raise GraphError(
            f"{where}: weight ({attribute!r}) must be a finite real number, got one beyond "
            f"the float range ({error})"
        ) from error
    except (TypeError, ValueError) as error:  # an array of many values, a signaling NaN
        raise GraphError(
            f"{where}: weight ({attribute!r}) must be a finite real number, got {shown!r} ({error})"
        ) from error


def _merged(explicit: Any, attributes: dict[str, Any], where: str) -> dict[str, Any] | None:
    """`attributes` updated with the `explicit` properties dict (which wins on a clash).

    Raises:
        GraphError: When `explicit` is neither a dict nor None.
    """
    if explicit is not None and not isinstance(explicit, dict):
        raise GraphError(
            f"{where}: the properties attribute must be a dict, got {type(explicit).__name__}"
        )
    merged = {**attributes, **(explicit or {})}
    return merged or None
