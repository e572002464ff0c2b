"""Semantic memory: key -> text value with tags and an optional embedding, searchable by meaning.

Embeddings live in a Rust `VectorIndex` (cosine similarity); keys, values and tags in Python
dicts, with a tag -> keys index so tag queries never scan every entry.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llm_agent_runtime._core import HashingEmbedder, VectorIndex
from llm_agent_runtime.embeddings import check_text
from llm_agent_runtime.errors import MemoryStoreError
from llm_agent_runtime.orchestration._checks import as_index

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from llm_agent_runtime.embeddings import Embedder

__all__ = ["SemanticEntry", "SemanticHit", "SemanticStore"]


@dataclass(frozen=True)
class SemanticEntry:
    """One stored entry."""

    key: str
    """Its unique key."""
    value: str
    """The stored text."""
    tags: frozenset[str]
    """Its tags."""
    has_embedding: bool
    """Whether it takes part in similarity search."""


@dataclass(frozen=True)
class SemanticHit:
    """A search result."""

    key: str
    """The entry's key."""
    value: str
    """The entry's text."""
    tags: frozenset[str]
    """The entry's tags."""
    score: float
    """Cosine similarity to the query, in [-1, 1]."""


class SemanticStore:
    """Key -> text value with tags and an optional embedding; vector search filtered by tags.

    Args:
        embedder: turns texts into vectors (for `store(..., embed=True)` and text queries);
            defaults to the built-in `HashingEmbedder` (offline, deterministic), of length
            `dim` when it is given (else 384).
        dim: embedding length, at least 1; None (the default) takes the embedder's `dim`
            when it has one that is an int of at least 1 (not, say, a method), else the
            first vector's length. Given, it must equal the embedder's `dim` (when it has
            one).
        dtype: storage of the vector index: "float32", "float16" or "int8" (see `VectorIndex`).

    Thread-safe: threads may store, delete and search at once. Writes are serialized by a
    lock; a search scans the vectors outside it, so searches run in parallel with each other
    (and with embedding). A search that overlaps writes returns each hit with the entry as it
    was stored together with the scored vector: an entry deleted or replaced during the scan
    is left out (the search widens its scan to still return up to `k` hits), never paired
    with another entry's vector.

    Raises:
        MemoryStoreError: an unknown dtype; a `dim` that is not an int (any integer type, not
            a bool) of at least 1, or that differs from the embedder's `dim`; an `embedder`
            that is no object with an `embed` method (a number meant as `dim`, a model name,
            an embedder class not instantiated), or whose `embed` is async (the store calls
            it synchronously).
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        dim: int | None = None,
        dtype: Literal["float32", "float16", "int8"] = "float32",
    ) -> None:
        if dim is not None:
            size = as_index(dim)
            if size is None or size < 1:
                raise MemoryStoreError(
                    "dim must be an int of at least 1 (or None to take the embedder's), "
                    f"got {dim!r}"
                )
            dim = size
        if not isinstance(dtype, str):
            raise MemoryStoreError(f'dtype must be "float32", "float16" or "int8", got {dtype!r}')
        # Checked now: `SemanticStore(384)` (the dimension given as the embedder) or a model
        # name would otherwise fail only at the first store, as an AttributeError.
        if embedder is not None and (
            isinstance(embedder, type) or not callable(getattr(embedder, "embed", None))
        ):
            raise MemoryStoreError(
                "embedder must be an Embedder instance (an object with an embed(texts) "
                f"method), got {embedder!r:.80}; a dimension is given as dim=..."
            )
        if embedder is not None and inspect.iscoroutinefunction(embedder.embed):
            raise MemoryStoreError(_ASYNC_EMBEDDER)
        if embedder is None:
            # The default embedder at the store's width: at its own 384, no text would fit.
            embedder = HashingEmbedder() if dim is None else HashingEmbedder(dim)
        self._embedder: Embedder = embedder
        self._dtype = dtype
        # `dim` is optional in the Embedder protocol, and may be anything.
        told = as_index(getattr(self._embedder, "dim", None))
        told = told if told is not None and told >= 1 else None
        if dim is None:
            dim = told
        elif told is not None and told != dim:
            # Refused now: such a store could embed no text, and would say so only later.
            raise MemoryStoreError(
                f"dim={dim}, but the embedder's rows have {told} values: give a matching "
                "dim (or None to take the embedder's)"
            )
        self._index: VectorIndex | None = VectorIndex(dim, dtype=dtype) if dim else None
        if self._index is None:
            VectorIndex(1, dtype=dtype)  # validates dtype now, not at the first embedding
        self._entries: dict[str, SemanticEntry] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._ids: dict[str, int] = {}
        self._keys: dict[int, str] = {}
        # Ids are never reused, not even by a replaced entry: a search maps the ids it found
        # after the scan, and an id still present names the vector that was scored.
        self._next_id = 0
        # Guards every field above; held across the index's add and remove (which release the
        # GIL) so that the index and the bookkeeping change together.
        self._lock = threading.Lock()

    # --- writing ------------------------------------------------------------------------------

    def store(
        self,
        key: str,
        value: str,
        tags: Iterable[str] | None = (),
        embedding: npt.ArrayLike | None = None,
        *,
        embed: bool = True,
    ) -> None:
        """Stores (or replaces) an entry.

        Args:
            key: unique key; storing it again replaces value, tags and embedding.
            value: the text.
            tags: labels for `retrieve_by_tag` and filtered search; None means no tags, and a
                single string is one tag (`tags="news"` is the tag "news", not the tags "n",
                "e", "w", "s").
            embedding: its vector; when None and `embed`, the value is embedded with the
                store's embedder (a value with nothing to embed, e.g. empty, gets none).
            embed: embed the value when no embedding is given.

        Raises:
            MemoryStoreError: a key, value or tag that is not a string, or not valid Unicode
                (a lone surrogate); tags that are not a string or an iterable of strings; an
                embedding that is not one vector of numbers (a scalar, a matrix), or of the
                wrong length, with NaN/inf, or zero; an embedder that does not return one row
                of shape (1, dim) for the value. Nothing changes when a call is refused.
        """
        if not isinstance(key, str) or not isinstance(value, str):
            raise MemoryStoreError("key and value must be strings")
        # A text with no UTF-8 form (a lone surrogate) is refused here, embedded or not:
        # stored, it would break every byte count of the store.
        check_text("key", key)
        check_text("value", value)
        tag_set = _tag_set(tags)
        _check_tag_texts(tag_set)
        vector = None
        if embedding is not None:
            vector = self._as_vector(embedding, "embedding")
        elif embed:
            vector = self._embed_text(value)
            if not vector.any():
                vector = None
        with self._lock:
            old_id = self._ids.get(key)
            if vector is not None:
                created = self._index is None
                index = self._index_for(len(vector))
                doc_id = self._next_id
                try:
                    index.add([doc_id], vector[None, :])  # all or nothing
                except MemoryStoreError:
                    if created:
                        self._index = None  # a refused first vector does not fix the dimension
                    # The index's message names its batch and internal id: said again of
                    # the vector the caller knows (checked only now, off the common path).
                    what = "embedding" if embedding is not None else "the embedder's row"
                    if len(vector) != index.dim:
                        message: str | None = (
                            f"{what} has shape ({len(vector)},), the store's vectors have "
                            f"shape ({index.dim},)"
                        )
                    else:
                        message = _vector_refusal(vector, what, None)
                    if message is None:
                        raise
                    raise MemoryStoreError(message) from None
                self._next_id += 1
                self._ids[key] = doc_id
                self._keys[doc_id] = key
            elif old_id is not None:
                del self._ids[key]
            if old_id is not None:
                del self._keys[old_id]
            self._untag(key)
            self._entries[key] = SemanticEntry(key, value, tag_set, vector is not None)
            for tag in tag_set:
                self._by_tag.setdefault(tag, set()).add(key)
            if old_id is not None and self._index is not None:
                # Last: the store is consistent even if the index cannot update its file.
                self._index.remove([old_id])

    def delete(self, key: str) -> bool:
        """Removes an entry; returns whether it existed.

        Raises:
            MemoryStoreError: `key` is not a string (no entry can have it).
        """
        _check_key(key)
        with self._lock:
            return self._delete(key)

    def clear(self) -> None:
        """Removes every entry."""
        with self._lock:
            for key in list(self._entries):
                self._delete(key)

    # --- reading ------------------------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value stored under `key`, or `default`.

        Raises:
            MemoryStoreError: `key` is not a string (no entry can have it).
        """
        _check_key(key)
        entry = self._entries.get(key)
        return entry.value if entry is not None else default

    def get_entry(self, key: str) -> SemanticEntry | None:
        """The whole entry stored under `key`, or None.

        Raises:
            MemoryStoreError: `key` is not a string (no entry can have it).
        """
        _check_key(key)
        return self._entries.get(key)

    def retrieve_by_tag(self, tag: str) -> list[SemanticEntry]:
        """Entries carrying `tag`, sorted by key.

        Raises:
            MemoryStoreError: `tag` is not a string (a list of tags, say).
        """
        _check_tag(tag)
        with self._lock:
            return [self._entries[k] for k in sorted(self._by_tag.get(tag, ()))]

    def search(
        self,
        query: str | npt.ArrayLike,
        k: int = 5,
        tags: Iterable[str] | None = None,
    ) -> list[SemanticHit]:
        """The `k` entries most similar to `query`, best first (ties: any order).

        Args:
            query: text (embedded with the store's embedder) or a vector.
            k: most results returned; a huge k means all of them.
            tags: when given, only entries carrying every one of these tags are considered;
                a single string is one tag, as in `store`.

        Returns:
            Up to `k` hits; only entries with an embedding take part.

        Raises:
            MemoryStoreError: k is not an int (any integer type, not a bool) or is below 1; a
                query that is neither a string nor one vector of numbers; a query vector of the
                wrong length, NaN/inf, or zero (a text with nothing to embed); tags that are
                not a string or an iterable of strings.
        """
        count = as_index(k)
        if count is None:
            raise MemoryStoreError(f"k must be an int, got {type(k).__name__}")
        k = count
        if k < 1:
            raise MemoryStoreError(f"k must be at least 1, got {k}")
        vector = (
            self._embed_text(query)
            if isinstance(query, str)
            else self._as_vector(query, "query", "a string or a vector of numbers")
        )
        required = _tag_set(tags)
        with self._lock:
            # Checked before anything is looked up, so a bad query is refused whatever the
            # store holds (even nothing, or no entry with an embedding).
            self._check_query(vector)
            index = self._index
            size = len(index) if index is not None else 0
            # One tag: at most as many entries as carry it, known without a walk of its keys
            # (a common tag's would cost more than the scan). Several: the entries carrying
            # them all, counted (the tags may share none).
            tagged = None
            if len(required) == 1:
                tagged = len(self._by_tag.get(next(iter(required)), ()))
            elif required:
                tagged = len(self._ids_tagged(required))
        if index is None or size == 0 or tagged == 0:
            return []
        # Over-fetch, then filter by tags; widen until k pass or every vector was seen. Never
        # ask the index for more than it holds, so a huge k (meaning "all") cannot overflow.
        k = min(k, size)
        want = min(k, tagged) if tagged is not None else k
        fetch = k
        if tagged is not None and tagged < size:
            # About tagged/size of any scan's hits carry the tags: asked for twice the hits
            # that would hold `want` of them, a rare tag's search takes one scan, not one more
            # at each widening (log4(size / k) scans in all: 100,000 entries, 12x the time).
            fetch = min(size, max(k, -(-2 * want * size // tagged)))
        while True:
            # The scan runs outside the lock, so searches run in parallel; other threads may
            # write meanwhile (see the class on what a search then returns).
            ids, scores = index.search(vector, fetch)
            hits = []
            with self._lock:
                size = len(index)
                if required and fetch >= _PREFILTER_FROM:
                    # A rare tag's search goes wide: its entries' ids are told apart by numpy,
                    # not the hits one by one in Python.
                    import numpy as np

                    allowed = self._ids_tagged(required)
                    want = min(k, len(allowed))
                    kept = np.isin(ids, allowed)
                    ids, scores = ids[kept], scores[kept]
                for doc_id, score in zip(ids.tolist(), scores.tolist(), strict=True):
                    key = self._keys.get(doc_id)
                    if key is None:
                        continue  # deleted or replaced since the scan
                    entry = self._entries[key]
                    if required <= entry.tags:
                        hits.append(SemanticHit(entry.key, entry.value, entry.tags, score))
            if len(hits) >= want or fetch >= size:
                return hits[:k]
            fetch = min(fetch * 4, size)

    def _ids_tagged(self, required: frozenset[str]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The ids of the entries with an embedding that carry every tag (the lock held)."""
        import numpy as np

        sets = [self._by_tag.get(t, set()) for t in required]
        keys = sets[0] if len(sets) == 1 else set.intersection(*sets)  # in C, from the least
        ids = self._ids
        return np.fromiter((ids[key] for key in keys if key in ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        # Only a string can be a key: any other object (a list too) is simply not in it.
        return isinstance(key, str) and key in self._entries

    def __reduce__(self) -> Any:
        # Copied as an object (its fields shared, its id counter not), a copy and the store
        # would give one id to two vectors: refused, as the Rust stores refuse it.
        raise TypeError("cannot pickle or copy a SemanticStore: build a new one and store into it")

    def __repr__(self) -> str:
        return f"SemanticStore(entries={len(self)}, embedded={self.entry_count_with_embedding()})"

    # --- helpers ------------------------------------------------------------------------------

    def count_by_tag(self, tag: str) -> int:
        """Entries that carry `tag`.

        Raises:
            MemoryStoreError: `tag` is not a string (a list of tags, say).
        """
        _check_tag(tag)
        return len(self._by_tag.get(tag, ()))

    def list_tags(self) -> list[str]:
        """All distinct tags, sorted."""
        return sorted(self._by_tag)

    def most_common_tag(self) -> str | None:
        """The tag on the most entries (ties: the alphabetically first); None when untagged."""
        with self._lock:  # the key function runs Python code, where threads can switch
            if not self._by_tag:
                return None
            return min(self._by_tag, key=lambda t: (-len(self._by_tag[t]), t))

    def all_keys(self) -> list[str]:
        """All keys, sorted."""
        return sorted(self._entries)

    def _value_sizes(self) -> list[int]:
        with self._lock:
            return [len(e.value.encode()) for e in self._entries.values()]

    def total_value_bytes(self) -> int:
        """Sum of the values' UTF-8 lengths in bytes."""
        return sum(self._value_sizes())

    def avg_value_bytes(self) -> float:
        """Mean UTF-8 length of the values in bytes (0.0 when empty)."""
        sizes = self._value_sizes()
        return sum(sizes) / len(sizes) if sizes else 0.0

    def max_value_bytes(self) -> int:
        """UTF-8 length in bytes of the longest value (0 when empty)."""
        return max(self._value_sizes(), default=0)

    def min_value_bytes(self) -> int:
        """UTF-8 length in bytes of the shortest value (0 when empty)."""
        return min(self._value_sizes(), default=0)

    def tag_count(self) -> int:
        """Number of distinct tags."""
        return len(self._by_tag)

    def entry_count_with_embedding(self) -> int:
        """Entries that have an embedding."""
        return len(self._ids)

    # --- internals ----------------------------------------------------------------------------

    def _index_for(self, dim: int) -> VectorIndex:
        if self._index is None:
            self._index = VectorIndex(dim, dtype=self._dtype)
        return self._index

    def _embed_text(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The embedder's row for `text`; it must return exactly one row: shape (1, dim)."""
        rows = self._embedder.embed([text])
        if inspect.isawaitable(rows):
            if inspect.iscoroutine(rows):
                rows.close()  # never awaited: closed now, so no "never awaited" warning
            raise MemoryStoreError(_ASYNC_EMBEDDER)
        try:
            matrix = _real_float32(rows)
        except (TypeError, ValueError) as e:
            raise MemoryStoreError(
                f"embedder.embed([text]) must return a (1, dim) array of numbers: {e}"
            ) from e
        except OverflowError as e:  # a Python int beyond any float
            raise MemoryStoreError(
                f"embedder.embed([text]) returned a value beyond the float range: {e}"
            ) from e
        if matrix.ndim != 2 or matrix.shape[0] != 1 or matrix.shape[1] < 1:
            raise MemoryStoreError(
                "embedder.embed([text]) must return one row, an array of shape (1, dim), "
                f"got shape {matrix.shape}"
            )
        return _contiguous(matrix[0])

    def _as_vector(
        self, value: Any, what: str, expected: str = "a vector of numbers"
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """`value` as a contiguous float32 vector.

        `what` names it and `expected` says what it must be, in the error.
        """
        try:
            # Shape first: ascontiguousarray would turn a scalar into a 1-vector.
            vector = _real_float32(value)
        except (TypeError, ValueError) as e:
            raise MemoryStoreError(f"{what} must be {expected}: {e}") from e
        except OverflowError as e:  # a Python int beyond any float
            raise MemoryStoreError(f"{what} must not hold infinite values: {e}") from e
        if vector.ndim == 0:
            raise MemoryStoreError(f"{what} must be {expected}, got {type(value).__name__}")
        if vector.ndim != 1:
            raise MemoryStoreError(f"{what} must be one vector, got shape {vector.shape}")
        if vector.size == 0:
            raise MemoryStoreError(f"{what} must not be empty")
        return _contiguous(vector)

    def _check_query(self, vector: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Refuses a query vector the index would refuse, whatever the store holds.

        That is one of another length than the store's (once it has one), with NaN/inf
        values, or zero (cosine similarity is undefined).

        Raises:
            MemoryStoreError: as the index's `search` would, with its messages.
        """
        message = _vector_refusal(vector, "query", self._index)
        if message is not None:
            raise MemoryStoreError(message)

    def _delete(self, key: str) -> bool:
        """`delete`, with the lock held."""
        if key not in self._entries:
            return False
        doc_id = self._ids.pop(key, None)
        if doc_id is not None:
            del self._keys[doc_id]
        self._untag(key)
        del self._entries[key]
        if doc_id is not None and self._index is not None:
            # Last: the store is consistent even if the index cannot update its file.
            self._index.remove([doc_id])
        return True

    def _untag(self, key: str) -> None:
        old = self._entries.get(key)
        if old is None:
            return
        for tag in old.tags:
            keys = self._by_tag[tag]
            keys.discard(key)
            if not keys:
                del self._by_tag[tag]


_PREFILTER_FROM = 1024
"""Hits of a tag-filtered search from which the tagged entries' ids filter them in numpy."""

_ASYNC_EMBEDDER = (
    "embedder.embed is async (it returns an awaitable), but SemanticStore calls it "
    "synchronously: give it an embedder whose embed returns the array itself"
)


def _vector_refusal(
    vector: np.ndarray[Any, np.dtype[np.float32]], what: str, index: VectorIndex | None
) -> str | None:
    """Why the index would refuse `vector`, said of `what` ("query", "embedding"); None if not.

    That is one of another length than `index`'s (when there is one), with NaN/inf values,
    or zero (cosine similarity is undefined).
    """
    import numpy as np

    if index is not None and len(vector) != index.dim:
        return f"{what} has dimension {len(vector)}, the store has {index.dim}"
    if not np.isfinite(vector).all():
        # As the Rust stores say it: a number past float32's range became inf as it was read.
        return (
            f"{what} contains NaN or infinite values (or values beyond float32's range, "
            "about ±3.4e38)"
        )
    if not vector.any():
        return f"{what} is the zero vector: cosine similarity is undefined"
    return None


def _check_key(key: object) -> None:
    """Refuses a `key` that is not a string, as `store` does.

    A list would fail the lookup with "unhashable type", and another non-string would
    silently find nothing.

    Raises:
        MemoryStoreError: `key` is not a string.
    """
    if not isinstance(key, str):
        raise MemoryStoreError(f"key must be a string, got {type(key).__name__}: {key!r:.80}")


def _real_float32(value: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    """`value` as a float32 array, when it holds real numbers.

    numpy's own conversion would take more: it parses "0.5", drops an imaginary part, reads
    a bool as 0.0 or 1.0 and a masked array as its data, values under the mask included; so
    a list of strings, a complex or bool array, or a masked array became a vector that was
    never given. They are refused, as the Rust stores refuse them. A masked array that masks
    nothing is read as its data. A value beyond float32 becomes inf, which the index refuses
    (its message says so).

    Raises:
        TypeError, ValueError: `value` holds text, complex numbers, bools or other
            non-numbers (or is ragged), as numpy's conversion raises them; it is (or holds) a
            masked array that masks a value.
        OverflowError: a Python int beyond any float.
    """
    import numpy as np

    plain = _plain_numbers()
    if type(value) is not np.ndarray:  # a plain array (the usual value) is no masked one
        _check_unmasked(value)
        # Before the conversion, which reads np.ma.masked as NaN (with a warning).
        if isinstance(value, (list, tuple)) and not set(map(type, value)) <= plain:
            for item in value:
                _check_unmasked(item)
    raw = np.asarray(value)
    kind = raw.dtype.kind
    if kind == "b":
        raise ValueError(_BOOLS)
    if kind not in "iufO":
        what = "complex numbers" if kind == "c" else "text or other non-numbers"
        raise ValueError(f"it holds {what} (dtype {raw.dtype}), not real numbers")
    # A sequence may mix bools (or text, or complex numbers) into numbers: numpy gives
    # np.asarray([True, 0.5]) dtype float64. An array of numbers holds none of them.
    if kind == "O":
        _check_real_items(raw.flat)
    elif not _array_like(value):  # a sequence: numpy read its items one by one
        for row in value if raw.ndim > 1 else (value,):
            if isinstance(row, np.ndarray):
                if type(row) is not np.ndarray:
                    _check_unmasked(row)
                if row.dtype.kind == "b":
                    raise ValueError(_BOOLS)
                continue
            # A row of plain floats and ints (the usual one) is told by its item types.
            if isinstance(row, (list, tuple)):
                if not set(map(type, row)) <= plain:
                    _check_real_items(row)
                continue
            _check_real_items(np.asarray(row, dtype=object).flat)
    with np.errstate(over="ignore"):
        converted = raw.astype(np.float32, copy=False)
    if converted is not raw and raw.dtype.kind in "fO" and raw.ndim in (1, 2) and raw.size:
        return _kept_direction(raw, converted)
    return converted


def _kept_direction(
    raw: np.ndarray[Any, Any], converted: np.ndarray[Any, np.dtype[np.float32]]
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """`converted` (`raw` as float32), rows too small for float32 converted again, scaled.

    Cosine similarity is blind to a vector's length, but float32 kept only a few digits of
    a row whose largest value is below its normal range (or made it zero): such rows are
    converted again from `raw` divided by their largest value.
    """
    import numpy as np

    largest = np.abs(converted).max(axis=-1, keepdims=True)
    if not (largest < np.finfo(np.float32).tiny).any():
        return converted
    values = raw if raw.dtype.kind == "f" else raw.astype(np.float64)  # Decimals, say
    scale = np.abs(values).max(axis=-1, keepdims=True)
    scale[~((scale > 0) & np.isfinite(scale))] = 1.0  # zero or NaN rows: refused as they are
    scaled: np.ndarray[Any, np.dtype[np.float32]] = (values / scale).astype(np.float32)
    return scaled


def _array_like(value: Any) -> bool:
    """Whether numpy reads `value` whole, by its dtype.

    An array, a `memoryview`, an object with `__array__` or an array interface: such a value
    of numbers holds no bools (its dtype would say so), and its rows need not be iterable.
    """
    import numpy as np

    return (
        isinstance(value, (np.ndarray, memoryview))
        or hasattr(value, "__array__")
        or hasattr(value, "__array_interface__")
    )


@functools.cache
def _plain_numbers() -> frozenset[type]:
    """The types of the items a vector is usually given as, which need no check one by one.

    Python's floats and ints, and numpy's real scalars (`list(array)` holds them): none of
    them is a bool, text, a complex number or masked (1,536 numpy floats took 3 ms a check).
    """
    import numpy as np

    names = "half single double longdouble byte short intc long longlong"
    names += " ubyte ushort uintc ulong ulonglong"
    return frozenset(
        (float, int, *(getattr(np, name) for name in names.split() if hasattr(np, name)))
    )


_BOOLS = (
    "it holds bools (dtype bool), not real numbers: they are refused, not read as 0.0 and 1.0 "
    "(convert them first, x.astype(np.float32), if that is meant)"
)


def _check_real_items(items: Iterable[Any]) -> None:
    """`_check_real_item` for each of `items` that is no plain float or int."""
    for item in items:
        if type(item) is not float and type(item) is not int:
            _check_real_item(item)


def _check_real_item(item: Any) -> None:
    """Refuses an item of a vector that is no real number numpy would convert anyway.

    Raises:
        ValueError: `item` is a bool (Python's or numpy's), text or a complex number; or a
            masked array (or `np.ma.masked`) masking a value.
    """
    import numpy as np

    if isinstance(item, (bool, np.bool_)):
        raise ValueError(
            f"it holds a bool ({item!r}), not a real number: bools are refused, not read as "
            "0.0 and 1.0"
        )
    if isinstance(item, (str, bytes)) or (
        isinstance(item, numbers.Complex) and not isinstance(item, numbers.Real)
    ):
        raise ValueError(
            f"it holds {type(item).__name__} ({item!r:.40}): text or complex numbers, not real "
            "numbers"
        )
    _check_unmasked(item)


def _check_unmasked(value: Any) -> None:
    """Refuses a numpy masked array that masks a value.

    `np.asarray` reads a masked array as its data, the values under the mask included. One
    that masks nothing (its mask `np.ma.nomask`, or all False) is taken: every value is data.

    Raises:
        ValueError: `value` is a masked array that masks a value.
    """
    import sys

    ma = sys.modules.get("numpy.ma")  # no masked array exists unless numpy.ma was imported
    if ma is not None and isinstance(value, ma.MaskedArray):
        count = int(ma.count_masked(value))
        if count:
            raise ValueError(
                f"it is a numpy masked array with {count} masked "
                f"{'value' if count == 1 else 'values'}: it is refused, as the values "
                "under the mask would be read as data; fill them first (x.filled(0.0), or "
                "another value) or leave them out (a masked array that masks nothing is "
                "read as its data)"
            )


def _contiguous(
    vector: np.ndarray[Any, np.dtype[np.float32]],
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """`vector` laid out as the index reads it: C-contiguous and aligned (copied if not).

    `np.ascontiguousarray` keeps an unaligned array as it is (`np.frombuffer` at an odd
    offset), which the index refuses; the store, which converts every other layout itself,
    copies it too.
    """
    import numpy as np

    out = np.ascontiguousarray(vector)
    return out if out.flags.aligned else out.copy()


def _check_tag(tag: object) -> None:
    """Refuses a `tag` that is not a string.

    A list would fail the tag index's lookup with "unhashable type", and another non-string
    would silently match nothing (no tag is anything but a string).

    Raises:
        MemoryStoreError: `tag` is not a string.
    """
    if not isinstance(tag, str):
        raise MemoryStoreError(
            f"tag must be a string, got {type(tag).__name__}: {tag!r:.80} (search takes "
            "several tags)"
        )


def _check_tag_texts(tags: frozenset[str]) -> None:
    """Refuses a tag with no UTF-8 form (a lone surrogate), as keys and values are refused.

    Stored, such a tag would break every later write of `list_tags()` or an entry's tags as
    UTF-8. The usual all-ASCII tags are settled by one check of them joined.

    Raises:
        MemoryStoreError: a tag holds a lone surrogate.
    """
    if "".join(tags).isascii():
        return
    for tag in sorted(tags):
        check_text("tag", tag)


def _tag_set(tags: Iterable[str] | None) -> frozenset[str]:
    """`tags` as a set; None is no tags, a single string is one tag (not its characters).

    Raises:
        MemoryStoreError: `tags` is not None, a string or an iterable of strings.
    """
    if tags is None:
        return frozenset()
    if isinstance(tags, str):
        return frozenset((tags,))
    try:
        items = list(tags)
    except TypeError:
        raise MemoryStoreError(
            f"tags must be a string or an iterable of strings, got {type(tags).__name__}"
        ) from None
    for tag in items:
        if not isinstance(tag, str):
            raise MemoryStoreError(f"tags must be strings, got {type(tag).__name__}: {tag!r:.80}")
    return frozenset(items)
