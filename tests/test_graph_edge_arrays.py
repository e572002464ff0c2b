"""`GraphStore.from_edge_list` reads any numpy integer array of edges, subclasses included:
a memmap (`np.load(..., mmap_mode="r")`, the way to feed a huge edge list) as a plain array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import llm_agent_runtime as ar


class _Tagged(np.ndarray):
    """An ndarray subclass of a library's own."""


EDGES = np.array([[0, 1], [1, 2], [2, 0], [3, 1]], dtype=np.int64)


def _expected() -> list[tuple[int, int, float]]:
    return ar.GraphStore.from_edge_list(4, EDGES).relationships()


def test_a_memmap_of_edges_reads_as_the_array(tmp_path: Path) -> None:
    path = tmp_path / "edges.npy"
    np.save(path, EDGES)
    mapped = np.load(path, mmap_mode="r")
    assert type(mapped) is np.memmap
    assert ar.GraphStore.from_edge_list(4, mapped).relationships() == _expected()


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
def test_an_ndarray_subclass_of_edges_reads_as_the_array(dtype: type) -> None:
    edges = EDGES.astype(dtype).view(_Tagged)
    assert ar.GraphStore.from_edge_list(4, edges).relationships() == _expected()


def test_rows_of_a_subclass_read_as_rows(tmp_path: Path) -> None:
    # Not read in place (a list of them): each row is an edge, as a plain array's row is.
    path = tmp_path / "edges.npy"
    np.save(path, EDGES)
    rows = list(np.load(path, mmap_mode="r"))
    assert ar.GraphStore.from_edge_list(4, rows).relationships() == _expected()
    rows = list(EDGES.view(_Tagged))
    assert ar.GraphStore.from_edge_list(4, rows).relationships() == _expected()


def test_a_float_subclass_of_edges_is_refused_as_a_float_array_is() -> None:
    with pytest.raises(ar.GraphError, match="integer array"):
        ar.GraphStore.from_edge_list(4, EDGES.astype(np.float64).view(_Tagged))
