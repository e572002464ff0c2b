"""The vector index's files: atomic saves, temporary files, and the float32 copies file."""

import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

import llm_agent_runtime as ar


def rows(seed: int, n: int = 20, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_concurrent_saves_to_one_path_always_leave_a_whole_index(tmp_path: Path) -> None:
    path = tmp_path / "shared.bin"
    indexes = []
    for seed in range(4):
        index = ar.VectorIndex(8)
        index.add(np.arange(seed * 100, seed * 100 + 20 + seed), rows(seed, 20 + seed))
        indexes.append(index)
    expected = {len(index) for index in indexes}
    errors: list[BaseException] = []
    bad: list[str] = []

    def saver(index: ar.VectorIndex) -> None:
        for _ in range(40):
            try:
                index.save(str(path))
                loaded = ar.VectorIndex.load(str(path))
                if len(loaded) not in expected:
                    bad.append(f"loaded {len(loaded)} rows")
            except ar.PersistenceError as e:  # a save that fails must say so, not corrupt
                errors.append(e)

    threads = [threading.Thread(target=saver, args=(index,)) for index in indexes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not bad
    final = ar.VectorIndex.load(str(path))
    assert any(
        final.search(rows(s)[0], 3)[0].tolist() == index.search(rows(s)[0], 3)[0].tolist()
        for s, index in enumerate(indexes)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    copies = tmp_path / "copies.f32"
    index = ar.VectorIndex(8, dtype="int8", originals_path=copies)
    index.add(np.arange(20), rows(0))
    os.truncate(copies, 10)  # cut from outside: the save fails as it copies them
    with pytest.raises(ar.PersistenceError, match="cannot read the float32 copies"):
        index.save(str(tmp_path / "target"))
    assert [p.name for p in tmp_path.iterdir()] == ["copies.f32"]


def test_two_indexes_cannot_share_an_originals_file(tmp_path: Path) -> None:
    copies = tmp_path / "copies.f32"
    first = ar.VectorIndex(8, dtype="int8", originals_path=copies)
    data = rows(1)
    first.add(np.arange(20), data)
    with pytest.raises(ar.PersistenceError, match="in use by another index"):
        ar.VectorIndex(8, dtype="int8", originals_path=copies)
    saved = tmp_path / "i.bin"
    first.save(str(saved))
    with pytest.raises(ar.PersistenceError, match="in use by another index"):
        ar.VectorIndex.load(str(saved), originals_path=copies)
    assert copies.stat().st_size == 20 * 8 * 4  # the first index's rows are untouched
    assert first.search(data[7], 1)[0].tolist() == [7]
    del first  # closing the file releases it
    second = ar.VectorIndex(8, dtype="int8", originals_path=copies)
    assert second.originals_path == str(copies)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
@pytest.mark.parametrize("others_open", [0, 300])
def test_a_forked_child_does_not_keep_the_parents_originals_file_locked(
    tmp_path: Path, others_open: int
) -> None:
    # A flock belongs to the open file, which fork() shares: a child alive (a worker pool's)
    # held the lock of an index the parent had dropped, and the parent could not open the
    # file again ("in use by another index"). The child, which may not use the file, lets it go,
    # however many other such files are open (a fixed table of 256 once missed the rest).
    others = [
        ar.VectorIndex(8, dtype="int8", originals_path=tmp_path / f"other{i}.f32")
        for i in range(others_open)
    ]
    copies = tmp_path / "copies.f32"
    index = ar.VectorIndex(8, dtype="int8", originals_path=copies)
    index.add(np.arange(20), rows(1))
    saved = tmp_path / "i.bin"
    index.save(str(saved))
    reader, writer = os.pipe()
    started, ready = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads (the core's pool) may
        # deadlock: the child only waits on a pipe and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # the child: waits until told to end, the parent's index still its own
        try:
            os.close(writer)
            os.write(ready, b"1")  # its fork handlers have run: the file is let go
            os.read(reader, 1)
        finally:
            os._exit(0)
    os.close(reader)
    os.close(ready)
    os.read(started, 1)  # not before: the child lets the file go as it starts, not at once
    os.close(started)
    try:
        # Still the parent's while its index lives...
        with pytest.raises(ar.PersistenceError, match="in use by another index"):
            ar.VectorIndex.load(str(saved), originals_path=copies)
        del index
        # ...and free once it is dropped, the child alive.
        again = ar.VectorIndex.load(str(saved), originals_path=copies)
        assert again.search(rows(1)[3], 1)[0].tolist() == [3]
        assert len(others) == others_open  # all still open
    finally:
        os.close(writer)
        os.waitpid(child, 0)


@pytest.mark.parametrize("change", ["add", "remove the last row"])
def test_changing_a_truncated_originals_file_is_refused(tmp_path: Path, change: str) -> None:
    # An append left a zero-filled gap; removing the last row (which reads no row) grew the
    # file back to its length with zeros: both then scored as the rows cut off.
    copies = tmp_path / "copies.f32"
    index = ar.VectorIndex(16, dtype="int8", originals_path=copies)
    data = rows(3, 50, 16)
    index.add(np.arange(50), data)
    os.truncate(copies, 100)
    with pytest.raises(ar.PersistenceError):
        index.search(data[9], 3)
    with pytest.raises(ar.PersistenceError, match="changed from outside"):
        if change == "add":
            index.add([100], -data[:1])
        else:
            index.remove([49])
    assert copies.stat().st_size == 100  # no zeros written
    assert len(index) == 50 and 49 in index  # refused before any row moved
    with pytest.raises(ar.PersistenceError):
        index.search(data[9], 3)


def test_load_refuses_the_index_file_as_its_originals_file(tmp_path: Path) -> None:
    index = ar.VectorIndex(8, dtype="int8", exact_rescore=True)
    index.add(np.arange(20), rows(2))
    path = tmp_path / "i.bin"
    index.save(str(path))
    before = path.read_bytes()
    with pytest.raises(ar.MemoryStoreError, match="index file itself"):
        ar.VectorIndex.load(str(path), originals_path=path)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    with pytest.raises(ar.MemoryStoreError, match="index file itself"):
        ar.VectorIndex.load(str(path), originals_path=link)
    assert path.read_bytes() == before
    assert len(ar.VectorIndex.load(str(path))) == 20


def test_save_refuses_the_index_own_originals_file(tmp_path: Path) -> None:
    # It used to be accepted: the index file replaced the copies file, so the copies the
    # index kept writing went to a file no name reached, and were lost with the process.
    copies = tmp_path / "copies.f32"
    index = ar.VectorIndex(4, dtype="int8", originals_path=copies)
    index.add([1, 2], np.eye(4, dtype=np.float32)[:2])
    before = copies.read_bytes()
    link = tmp_path / "link.f32"
    link.symlink_to(copies)
    for target in (copies, str(copies), link):
        with pytest.raises(ar.MemoryStoreError, match="own originals_path"):
            index.save(target)
    assert copies.read_bytes() == before  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copies.f32", "link.f32"]
    index.add([3], np.eye(4, dtype=np.float32)[2:3])
    assert copies.stat().st_size == 3 * 4 * 4  # the copies still go to the file
    path = tmp_path / "index.bin"
    index.save(path)
    loaded = ar.VectorIndex.load(path)
    assert loaded.search(np.eye(4, dtype=np.float32)[2], 1)[0].tolist() == [3]


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("dtype", "offset", "value", "message"),
    [
        # Header 36 bytes, then two ids (16 bytes): the rows start at 52.
        ("float32", 52, struct.pack("<f", float("nan")), "not finite"),
        ("float32", 56, struct.pack("<f", float("inf")), "not finite"),
        ("float16", 52, struct.pack("<H", 0x7E00), "not finite"),
        # int8: two scales (8 bytes) come first, then the codes at 60.
        ("int8", 60, bytes([0x80]), "-128"),
    ],
)
def test_load_refuses_values_the_index_never_stores(
    tmp_path: Path, dtype: str, offset: int, value: bytes, message: str
) -> None:
    index = ar.VectorIndex(4, dtype=dtype)
    index.add([1, 2], np.eye(2, 4, dtype=np.float32))
    path = tmp_path / "i.bin"
    index.save(str(path))
    body = bytearray(path.read_bytes()[:-4])
    body[offset : offset + len(value)] = value
    path.write_bytes(with_crc(bytes(body)))
    with pytest.raises(ar.PersistenceError, match=message):
        ar.VectorIndex.load(str(path))


def test_load_refuses_a_float32_copy_that_is_not_finite(tmp_path: Path) -> None:
    index = ar.VectorIndex(4, dtype="int8", exact_rescore=True)
    index.add([1, 2], np.eye(2, 4, dtype=np.float32))
    path = tmp_path / "i.bin"
    index.save(str(path))
    data = path.read_bytes()
    body = data[:-8] + struct.pack("<f", float("nan"))  # the last copy value
    path.write_bytes(with_crc(body))
    with pytest.raises(ar.PersistenceError, match="not finite"):
        ar.VectorIndex.load(str(path))
    path.write_bytes(data)
    assert len(ar.VectorIndex.load(str(path))) == 2


def test_text_arguments_that_are_not_valid_unicode_are_typed_errors(tmp_path: Path) -> None:
    # A str holding a lone surrogate has no UTF-8 (or file-system) form: these raised the
    # built-in UnicodeEncodeError.
    lone = str(tmp_path / "index\ud800.bin")
    index = ar.VectorIndex(8)
    index.add(np.arange(20), rows(0))
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        index.save(lone)
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        ar.VectorIndex.load(lone)
    saved = str(tmp_path / "index.bin")
    index.save(saved)
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        ar.VectorIndex.load(saved, originals_path=lone)
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        ar.VectorIndex(8, dtype="int8", originals_path=lone)
    with pytest.raises(ar.MemoryStoreError, match="not valid Unicode"):
        ar.VectorIndex(8, dtype="int8\ud800")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.bin"]
    assert len(ar.VectorIndex.load(saved)) == 20


class _FsPath(os.PathLike[str]):
    """An os.PathLike that is not a pathlib.Path."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return self._path


def test_save_and_load_take_os_path_like(tmp_path: Path) -> None:
    # They refused pathlib.Path with the built-in TypeError, while originals_path took it.
    index = ar.VectorIndex(8, dtype="int8", originals_path=tmp_path / "copies.f32")
    index.add(np.arange(20), rows(0))
    index.save(tmp_path / "a.bin")
    index.save(_FsPath(str(tmp_path / "b.bin")))
    for i, path in enumerate([tmp_path / "a.bin", _FsPath(str(tmp_path / "b.bin"))]):
        loaded = ar.VectorIndex.load(path, originals_path=tmp_path / f"loaded{i}.f32")
        assert len(loaded) == 20
        np.testing.assert_array_equal(loaded.get(3), index.get(3))
    lone = tmp_path / "index\ud800.bin"
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        index.save(lone)
    with pytest.raises(ar.PersistenceError, match="not valid Unicode"):
        ar.VectorIndex.load(_FsPath(str(lone)))
    with pytest.raises(TypeError):
        index.save(None)  # type: ignore[arg-type]


def test_a_long_remove_lets_other_threads_run(tmp_path: Path) -> None:
    # With float32 copies in a file each removed id costs file I/O; the removal held the GIL
    # throughout (over a second for 50,000 ids), so no other Python thread ran meanwhile.
    n = 40_000
    index = ar.VectorIndex(8, dtype="int8", originals_path=tmp_path / "copies.f32")
    index.add(np.arange(n), rows(0, n))
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        while len(ticks) < 3:  # the ticker runs before the call starts
            time.sleep(0.001)
        start = time.perf_counter()
        index.remove(np.random.default_rng(1).permutation(n)[: n // 2])
        end = time.perf_counter()
    finally:
        stop.set()
        ticker.join()
    during = sum(1 for t in ticks if start < t < end)
    # Holding the GIL, the call let the ticker in at most at its edges; releasing it, the
    # ticker runs about once a millisecond of a call that takes a tenth of a second or more.
    assert during >= 10, f"{during} ticks in {end - start:.3f} s"
    assert len(index) == n - n // 2


def test_save_replaces_only_a_regular_file_and_follows_a_link(tmp_path: Path) -> None:
    # The rename replaced whatever was at the path: a FIFO (or a device, such as /dev/null)
    # became a regular file, and a link was replaced while the file it named kept the old
    # index.
    index = ar.VectorIndex(4)
    index.add([1, 2], np.eye(4, dtype=np.float32)[:2])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    for target in (fifo, folder):
        with pytest.raises(ar.PersistenceError, match="not a regular file"):
            index.save(target)
    assert fifo.is_fifo() and folder.is_dir()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing" / "index.bin")
    with pytest.raises(ar.PersistenceError, match="target cannot be resolved"):
        index.save(dangling)
    to_fifo = tmp_path / "to_fifo"
    to_fifo.symlink_to(fifo)
    with pytest.raises(ar.PersistenceError, match="not a regular file"):
        index.save(to_fifo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "folder", "pipe", "to_fifo"]

    real = tmp_path / "real.bin"
    ar.VectorIndex(4).save(real)  # an empty index
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    index.save(link)
    assert link.is_symlink() and link.resolve() == real
    assert len(ar.VectorIndex.load(real)) == 2  # the file it names is the new index
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_float32_copies_file_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ar.PersistenceError, match="not a regular file"):
        ar.VectorIndex(4, dtype="int8", originals_path=fifo)
    assert fifo.is_fifo()


def test_copies_changed_from_outside_give_an_error_not_nan_scores(tmp_path: Path) -> None:
    # The lock is advisory: a writer from outside, at the same length, gave NaN scores and
    # vectors (and scores far above 1).
    copies = tmp_path / "copies.f32"
    index = ar.VectorIndex(8, dtype="int8", exact_rescore=True, originals_path=copies)
    data = rows(3)
    index.add(np.arange(20), data)
    query = data[5] / np.linalg.norm(data[5])
    assert index.search(query, 1)[0].tolist() == [5]
    for bad in (np.nan, 1e30):
        with open(copies, "r+b") as file:
            file.write(np.full(20 * 8, bad, dtype=np.float32).tobytes())
        with pytest.raises(ar.PersistenceError, match="changed from outside the index"):
            index.search(query, 3)
        with pytest.raises(ar.PersistenceError, match="changed from outside the index"):
            index.get(5)
