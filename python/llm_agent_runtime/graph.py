"""networkx interop for `GraphStore` (networkx is imported only when these are called)."""

from __future__ import annotations

from typing import Any

from llm_agent_runtime._core import GraphStore
from llm_agent_runtime.errors import GraphError

__all__ = ["from_networkx", "to_networkx"]


def to_networkx(graph: GraphStore) -> Any:
    """Exports `graph` as a `networkx.MultiDiGraph`.

    Nodes carry `label` and `properties`; edges carry `kind`, `weight` and `properties`,
    in insertion order (parallel relationships stay separate edges).

    Args:
        graph: The graph to export.

    Returns:
        A new `networkx.MultiDiGraph`.
    """
    import networkx as nx  # type: ignore[import-untyped,unused-ignore]

    out = nx.MultiDiGraph()
    for entity_id in graph.entity_ids():
        entity = graph.entity(entity_id)
        out.add_node(entity_id, label=entity["label"], properties=entity["properties"])
    for rel in graph.relationships():
        out.add_edge(
            rel["from"],
            rel["to"],
            kind=rel["kind"],
            weight=rel["weight"],
            properties=rel["properties"],
        )
    return out


def from_networkx(nx_graph: Any, *, weight: str = "weight", kind: str = "kind") -> GraphStore:
    """Builds a `GraphStore` from any networkx graph.

    Node ids become strings (`str(node)`). Node attributes `label` and `properties` are read
    when present; other node attributes become properties. Each edge becomes one relationship
    (an undirected edge becomes one relationship from its first to its second endpoint; run
    algorithms with `directed=False` to treat them as undirected).

    Args:
        nx_graph: A `Graph`, `DiGraph`, `MultiGraph` or `MultiDiGraph`.
        weight: Edge attribute holding the weight (default 1.0 when absent).
        kind: Edge attribute holding the relationship kind (default "related").

    Returns:
        The new graph.

    Raises:
        GraphError: When two nodes have the same string form, or an attribute is not
            JSON-compatible.
    """
    graph = GraphStore()
    names: dict[Any, str] = {}
    for node, data in nx_graph.nodes(data=True):
        name = str(node)
        if name in graph:
            raise GraphError(f"two nodes share the id {name!r} once converted to strings")
        names[node] = name
        attributes = dict(data)
        label = attributes.pop("label", "")
        properties = attributes.pop("properties", None) or attributes or None
        graph.add_entity(name, str(label), properties)
    for u, v, data in nx_graph.edges(data=True):
        extra = {k: val for k, val in data.items() if k not in (weight, kind, "properties")}
        properties = data.get("properties") or extra or None
        graph.add_relationship(
            names[u],
            names[v],
            str(data.get(kind, "related")),
            float(data.get(weight, 1.0)),
            properties,
        )
    return graph
