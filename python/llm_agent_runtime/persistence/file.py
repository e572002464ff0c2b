"""File persistence: one file per key, written atomically; a batch all or none (a redo log)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence._checks import (
    check_items,
    check_key,
    check_keys,
    check_path,
    check_prefix,
    check_value,
    check_wait,
)
from llm_agent_runtime.persistence._waiting import Abandoned, run_in_thread, wait_until
from llm_agent_runtime.persistence.base import encode_key

if sys.platform != "win32":
    import fcntl

__all__ = ["FileBackend", "file_name_for"]

logger = logging.getLogger("llm_agent_runtime")

T = TypeVar("T")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEADER = struct.Struct("<I")
_PREFIX_CHARS = 48
"""Length of the readable part of a file name: ASCII only, so also its length in bytes."""
_RECORD = re.compile(r"[A-Za-z0-9._-]*-[0-9a-f]{64}\.bin\Z")
"""The name of a record file (see `file_name_for`)."""
_TEMP = re.compile(r"\.[A-Za-z0-9._-]*-[0-9a-f]{64}\.bin\.[0-9a-f]{32}\.tmp\Z")
"""The name of a record file being written (`_write`): `.<record file name>.<uuid>.tmp`."""
_BATCHES = ".batches"
"""The folder of the redo log: a batch being written (`<uuid>.tmp`) or installed."""
_BATCH = re.compile(r"[0-9a-f]{32}\.batch\Z")
_BATCH_TEMP = re.compile(r"[0-9a-f]{32}\.tmp\Z")
_INSTALL_LOCK = ".batches.lock"
"""The redo log's lock file, beside its folder: a batch's writer holds it exclusively from
the batch's commit until it is installed, and readers hold it shared while they read (see
`FileBackend`); single writes hold it shared too."""
_TURNSTILE = ".batches.turnstile"
"""Passed on the way to `_INSTALL_LOCK`: a batch's writer holds it exclusively while it waits
for that lock, readers take it shared, so the reads that come after a waiting writer wait
behind it (flock lets new shared locks in past a waiting exclusive one)."""
_BATCH_MAGIC = b"llm-agent-runtime-batch/1\n"
_DELETIONS_MAGIC = b"llm-agent-runtime-batch/2\n"
"""A batch record holding deletions (`batch_delete_if`): written only then, so that a batch of
writes stays one that earlier versions, sharing the directory, can finish."""
_DELETED = 2**64 - 1
"""The value length of a deletion in a `_DELETIONS_MAGIC` record (no value follows)."""
_BATCH_COUNT = struct.Struct("<I")
_BATCH_ITEM = struct.Struct("<IQ")
_BATCH_CHECKSUM = struct.Struct("<I")
_INSTALLING: set[str] = set()
"""The batches this process is installing: without POSIX locks, what tells them apart."""
_INSTALLING_LOCK = threading.Lock()


def file_name_for(key: str) -> str:
    """`<readable prefix>-<SHA-256 of the key, hex>.bin` for a key (at most 117 bytes).

    The prefix is the key's first characters, each one that is not an ASCII letter, digit,
    `.`, `_` or `-` replaced by `_`: a name never leaves the directory, whatever the key. The
    hash of the key's UTF-8 bytes keeps distinct keys apart even when they sanitize alike
    (`a/b` and `a_b`).

    Raises:
        PersistenceError: The key is not valid Unicode text.
    """
    digest = hashlib.sha256(encode_key(key)).hexdigest()
    return f"{_UNSAFE.sub('_', key[:_PREFIX_CHARS])}-{digest}.bin"


_LOCKING_FDS: set[int] = set()
"""The descriptors this process opened to lock (lock files, batches): a fork()ed child
closes its copies (`_after_fork_in_child`)."""


def _open_locking(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
    """`os.open`, of a file to lock: its descriptor is known to a fork()ed child."""
    fd = os.open(path, flags, mode)
    _LOCKING_FDS.add(fd)  # a set's add and discard hold the GIL: no lock a fork could copy
    return fd


def _close_locking(fd: int) -> None:
    """`os.close` of a descriptor `_open_locking` opened."""
    _LOCKING_FDS.discard(fd)  # first: a child forked after it must not close another's
    os.close(fd)


def _after_fork_in_child() -> None:
    # A lock belongs to the open file, which the child shares: held by a call of the
    # parent's (a worker thread the child has not), it stayed held until the child exited,
    # and the child waited for it itself. Closing the child's copies leaves the parent's.
    for fd in list(_LOCKING_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCKING_FDS.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock(fd: int, wait: bool = True, shared: bool = False) -> bool:
    """Takes an advisory lock on open file `fd`; False if `wait` is off and it is taken.

    Exclusive, unless `shared`. The lock says "a live writer (or reader) uses this file": the
    kernel drops it when the process dies, or the file is closed. Without POSIX locks
    (Windows) it is always taken (see `FileBackend`).
    """
    if sys.platform == "win32":
        return True
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_for_lock(fd: int, timeout: float, shared: bool = False) -> None:
    """Takes an advisory lock on open file `fd` (see `_lock`), waiting as `wait_until` does.

    A blocking `flock` cannot be given up: one a slow reader or a stopped process holds
    would keep a cancelled call's thread, and so a cancelled write's caller, waiting.

    Raises:
        TimeoutError: Another call held it for `timeout` seconds (one of a stopped process).
        Abandoned: The call was cancelled meanwhile (see `run_in_thread`).
    """
    if not wait_until(lambda: _lock(fd, wait=False, shared=shared), timeout):
        raise TimeoutError(f"another call has held its lock for {timeout:g} s (lock_timeout)")


@contextlib.contextmanager
def _lock_file(path: Path, shared: bool, timeout: float) -> Iterator[None]:
    """Holds the lock file at `path` (made if missing), shared or exclusive.

    It waits for it as `_wait_for_lock` does. A reader that may not write it (another
    user's directory, a read-only mount) opens it read-only: a shared lock needs no more.
    Only where it is missing and cannot be made (a read-only copy of a directory, which
    nobody writes) does a reader hold none. (Without POSIX locks, Windows, nobody does: see
    `FileBackend`.)

    Raises:
        PersistenceError: When it cannot be opened (but as above), or locked.
        Abandoned: The call was cancelled meanwhile.
    """
    fd = None
    if sys.platform != "win32":
        try:
            # For writing: where `flock` is emulated with POSIX locks (NFS), an exclusive
            # lock needs it.
            fd = _open_locking(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not shared:
                raise PersistenceError(f"cannot open {path}: {exc}") from exc
            try:
                fd = _open_locking(path, os.O_RDONLY)
            except FileNotFoundError:
                pass  # `FileBackend` makes it wherever it can: here nobody writes
            except OSError as error:
                raise PersistenceError(f"cannot open {path}: {error}") from error
    if fd is None:
        yield
        return
    try:
        try:
            _wait_for_lock(fd, timeout, shared)
        except OSError as exc:  # TimeoutError too
            raise PersistenceError(f"cannot lock {path}: {exc}") from exc
        yield
    finally:
        _close_locking(fd)  # drops the lock


def _sync_directory(directory: Path) -> None:
    """Makes the renames and removals in `directory` durable (fsync of the directory)."""
    if sys.platform == "win32":  # directories cannot be opened there; NTFS journals names
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_batch(items: Mapping[str, bytes | None]) -> bytes:
    """A batch as one redo-log record: magic, count, (key, value) pairs, CRC-32 of it all.

    A value None is the key's deletion: its length `_DELETED`, no value after it (in a record
    of its own magic, `_DELETIONS_MAGIC`).
    """
    deletes = any(value is None for value in items.values())
    parts = [_DELETIONS_MAGIC if deletes else _BATCH_MAGIC, _BATCH_COUNT.pack(len(items))]
    for key, value in items.items():
        encoded = encode_key(key)
        if value is None:
            parts += [_BATCH_ITEM.pack(len(encoded), _DELETED), encoded]
        else:
            parts += [_BATCH_ITEM.pack(len(encoded), len(value)), encoded, value]
    body = b"".join(parts)
    return body + _BATCH_CHECKSUM.pack(zlib.crc32(body))


def _decode_batch(data: bytes) -> dict[str, bytes | None] | None:
    """The items of a redo-log record, or None when it is not a whole, intact one.

    An item's value None is the key's deletion. (Both magics are as long: see `_encode_batch`.)
    """
    end = len(data) - _BATCH_CHECKSUM.size
    if end < len(_BATCH_MAGIC) + _BATCH_COUNT.size:
        return None
    deletes = data.startswith(_DELETIONS_MAGIC)
    if not (deletes or data.startswith(_BATCH_MAGIC)):
        return None
    if _BATCH_CHECKSUM.unpack_from(data, end)[0] != zlib.crc32(data[:end]):
        return None
    at = len(_BATCH_MAGIC)
    (count,) = _BATCH_COUNT.unpack_from(data, at)
    at += _BATCH_COUNT.size
    items: dict[str, bytes | None] = {}
    try:
        for _ in range(count):
            key_length, value_length = _BATCH_ITEM.unpack_from(data, at)
            at += _BATCH_ITEM.size
            key = data[at : at + key_length].decode("utf-8")
            at += key_length
            if deletes and value_length == _DELETED:
                items[key] = None
                continue
            items[key] = data[at : at + value_length]
            at += value_length
    except (struct.error, UnicodeDecodeError):
        return None
    return items if at == end else None


class FileBackend:
    """Key -> bytes storage as files in one directory.

    Each value is written to a unique temporary file, fsynced, and renamed into place (the
    directory fsynced then, as after a deletion), so a reader never sees a half-written
    value, even after a crash, and a write that returned survives a power loss. A file holds
    its original key, so `list_keys` can return keys exactly; a damaged file fails the loads
    of its own key and the listings whose keys it may hold (it is not skipped: a session
    loaded without its damaged last step would look whole).

    A batch (the deletions of `batch_delete_if` too) is all or none, even across a crash,
    through a redo log: the whole batch is written to one file in `.batches/`, fsynced, and
    renamed to its final name there (the commit, fsynced too); then each key's file is written
    as a single value is (or removed), the directory fsynced, and the batch's file removed (that
    fsynced too). A batch a crash left committed is finished before anything else is read or
    written (when the backend is opened, and by every call, and by a batch right before its own
    commit, under the redo log's lock, so a dead writer's batch never lands over a later one);
    one left uncommitted is dropped, as are the temporary files of writes a crash cut short. So
    a batch committed but not installed for want of space (its record fit on the disk, its files
    did not: installing takes about twice its size) fails every call on the directory, reads
    included, until space is freed outside the store. A single write (`save`, `save_new`,
    `delete`) is made holding that lock shared, once no batch is left committed: no batch is
    committed while it is under way, so none committed before it is installed over it later.

    Several processes may share the directory: POSIX advisory locks (`flock`) tell a live
    writer's files from those a crash left, and no read (`load`, `batch_load`, `list_keys`)
    sees part of a batch: a batch's writer holds the redo log's lock (`.batches.lock`) from
    the batch's commit until it is installed, and a read holds it shared, so a read waits
    for a batch being installed, and a batch for the reads under way (a batch a crash left
    is finished before a read). Reads that start while a batch waits wait behind it, so a
    stream of reads cannot hold a batch off. A reader that may not write the lock files
    (another user's directory) opens them read-only; only where they are missing and cannot
    be made (a read-only copy, which nobody writes) does a read take no lock. (Where there
    are no POSIX locks, Windows, only one process should use a directory.) A fork()ed child
    (a multiprocessing "fork" worker) may use the directory, and a backend it inherited: it
    lets go of the locks its parent's calls held as it forked.

    Every call runs in a worker thread, and waits for a lock (a batch another writer is
    installing; for a batch, the reads under way) in a way a cancellation ends: a call
    cancelled before its thread started never runs; one cancelled later makes its thread
    give up any such wait, now or to come. A cancelled read then goes on at once (its
    thread may end in the background: it writes nothing but a batch a crash left). A
    cancelled write goes on once its thread has ended: a batch cancelled before its commit
    writes nothing, one cancelled after it is installed whole first (which waits for no
    lock); `save`, `save_new` and `delete` give up only while they wait for a batch being
    installed. So a cancelled write has landed, or never will, by the time the cancellation
    reaches the caller; only the file I/O under way (a hung network file system) delays it.

    A listing (`list_keys`) reads the names of every file in the directory (the keys of the
    files it has not seen before once): the checkpoints list a session's keys a few times a
    turn, so a turn slows as the store grows (about 13 ms at 130 files, 47 ms at 13,000). A
    long-lived service keeps its checkpoints in a database (`SqliteBackend` needs no server),
    whose listings read only the session's keys.

    Args:
        directory: where the files live (created if missing): a non-empty `str` or
            `os.PathLike` of one.
        lock_timeout: seconds a call waits for a lock another call holds (a batch being
            installed, or for a batch, the reads under way; of this process or another),
            a finite number >= 0: past it the call fails with a `PersistenceError` naming
            the lock, rather than wait for good on a process that was stopped (SIGSTOP, a
            debugger) holding it. A batch that fails so writes nothing. 0 fails a call at
            any contention, even with this process's own calls.

    Raises:
        PersistenceError: When `directory` is no such path, `lock_timeout` no such time,
            the directory cannot be created, or a batch a crash left cannot be finished (or
            one another call is installing is still not, `lock_timeout` later).
    """

    def __init__(self, directory: str | os.PathLike[str], lock_timeout: float = 30.0) -> None:
        # Absolute: a later `os.chdir` must not move the store.
        self.directory = Path(check_path(directory, "a FileBackend directory")).absolute()
        self.lock_timeout = check_wait("lock_timeout", lock_timeout)
        """Seconds a call waits for a lock another call holds before it fails."""
        self._batches = self.directory / _BATCHES
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            raise PersistenceError(f"cannot create {str(self.directory)!r}: {exc}") from exc
        # A directory that is read-only (an archive) is still read: the redo log's folder
        # is made by the first batch then. The lock files are made now, so that a reader
        # that may not make them finds them (see `_lock_file`).
        with contextlib.suppress(OSError):
            self._batches.mkdir(exist_ok=True)
            for name in (_TURNSTILE, _INSTALL_LOCK):
                os.close(os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o644))
        self._batches_finishing: set[Path] = set()  # those whose finishing was logged
        # The key each record file listed so far holds: a name holds one key for good (it
        # ends with the key's hash), so a listing reads only the files it has not read yet.
        self._listed: dict[str, str] = {}
        self._finish_batches()
        self._remove_abandoned_temporaries()

    def __repr__(self) -> str:
        return f"FileBackend(directory={str(self.directory)!r})"

    # ------------------------------------------------------------------ one file
    def _path(self, key: str) -> Path:
        return self.directory / file_name_for(key)

    def _write(self, key: str, value: bytes) -> None:
        """Writes one key's file atomically (its directory not synced: see `_write_durably`)."""
        self._put(key, value, new=False)

    def _write_durably(self, key: str, value: bytes) -> None:
        """Writes one key's file atomically, then fsyncs the directory (a power loss keeps it)."""
        self._write(key, value)
        self._sync(key)

    def _write_new(self, key: str, value: bytes) -> bool:
        """Writes one key's file if there is none, durably; returns whether it wrote."""
        written = self._put(key, value, new=True)
        if written:
            self._sync(key)
        return written

    def _sync(self, key: str) -> None:
        """Makes a write or deletion of `key`'s file in the directory durable.

        Raises:
            PersistenceError: When the directory cannot be fsynced.
        """
        try:
            _sync_directory(self.directory)
        except OSError as exc:
            raise PersistenceError(f"cannot sync {self.directory}: {exc}", key=key) from exc

    def _put(self, key: str, value: bytes, new: bool) -> bool:
        """Writes one key's file atomically; with `new`, only if there is none (else False)."""
        path = self._path(key)
        encoded = key.encode("utf-8")  # _path checked that it encodes
        for attempt in range(2):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "xb") as f:
                    _lock(f.fileno())  # a live write: `_remove_abandoned_temporaries` spares it
                    f.write(_HEADER.pack(len(encoded)) + encoded + value)
                    f.flush()
                    os.fsync(f.fileno())
                    if not new:
                        os.replace(tmp, path)
                        return True
                    # A hard link fails if the name exists: create-if-absent, atomically,
                    # with the whole value already in the file.
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        written = False
                    else:
                        written = True
                    with contextlib.suppress(OSError):  # else removed as a crash's leftover
                        os.unlink(tmp)
                    return written
            except FileNotFoundError as exc:
                # Another process opening the directory took this temporary file for one a
                # crash left, in the instant between its creation and its lock: write anew.
                if attempt == 0 and self.directory.is_dir() and not tmp.exists():
                    continue
                error: OSError = exc
            except OSError as exc:
                error = exc
            with contextlib.suppress(OSError):  # best effort: the write error is what matters
                tmp.unlink(missing_ok=True)
            raise PersistenceError(f"cannot write {path}: {error}", key=key) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, path: Path, key: str | None) -> tuple[str, bytes] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PersistenceError(f"cannot read {path}: {exc}", key=key) from exc
        if len(data) < _HEADER.size:
            raise PersistenceError(f"truncated record file {path}", key=key)
        (length,) = _HEADER.unpack_from(data)
        end = _HEADER.size + length
        if end > len(data):
            raise PersistenceError(f"truncated record file {path}", key=key)
        try:
            stored_key = data[_HEADER.size : end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PersistenceError(f"corrupt record file {path}", key=key) from exc
        return stored_key, data[end:]

    def _load(self, key: str) -> bytes | None:
        found = self._read(self._path(key), key)
        if found is None:
            return None
        stored_key, value = found
        if stored_key != key:
            raise PersistenceError(f"record file holds key {stored_key!r}", key=key)
        return value

    def _stored_key(self, path: Path) -> str | None:
        """The key the record file at `path` holds; None when it was deleted meanwhile.

        Only the key is read, not the value.

        Raises:
            PersistenceError: The file is damaged (cut short, or holding the key of another
                file): it may hold any key its name allows, so no listing it may be in can
                be told complete.
        """
        try:
            with open(path, "rb") as f:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    raise ValueError("truncated")
                (length,) = _HEADER.unpack(header)
                encoded = f.read(length)
            if len(encoded) < length:
                raise ValueError("truncated")
            key = encoded.decode("utf-8")
            if file_name_for(key) != path.name:
                raise ValueError("it holds the key of another file")
        except FileNotFoundError:
            return None  # deleted meanwhile
        except (OSError, ValueError, PersistenceError) as exc:
            raise PersistenceError(
                f"cannot list the keys: the record file {path} is damaged ({exc}); restore "
                "it, or move it out of the directory to list without it"
            ) from exc
        return key

    # ------------------------------------------------------------------ the redo log
    def _write_batch(
        self, items: Mapping[str, bytes | None], guard: tuple[str, bytes] | None = None
    ) -> bool:
        """Writes `items` all or none (see the class): commit to the redo log, then install.

        An item whose value is None is its key's deletion (`batch_delete_if`). With a `guard`
        (key, value), only if that key holds that value, checked under the exclusive install
        lock, which every single write (`_between_batches`) waits for: nothing writes the
        guard between the check and the install. Returns whether it wrote.
        """
        if len(items) <= 1 and guard is None:  # one file is atomic on its own
            for key, value in items.items():
                self._install_item(key, value)
                self._sync(key)
            return True
        record = _encode_batch(items)  # checks every key first: a bad one writes nothing
        for attempt in range(2):
            name = uuid.uuid4().hex
            tmp = self._batches / f"{name}.tmp"
            batch = self._batches / f"{name}.batch"
            try:
                try:
                    fd = _open_locking(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileNotFoundError:
                    self._batches.mkdir(exist_ok=True)  # removed by hand: made again
                    fd = _open_locking(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise PersistenceError(f"cannot write the batch {tmp}: {exc}") from exc
            try:
                with contextlib.ExitStack() as installing:
                    try:
                        # Held until the batch is installed: `_finish_batch` waits for it,
                        # and nobody takes it for one a crash left.
                        _lock(fd)
                        view = memoryview(record)
                        while view:
                            view = view[os.write(fd, view) :]
                        os.fsync(fd)
                        # From the commit until the batch is installed: no read sees part
                        # of it.
                        installing.enter_context(self._install_lock(shared=False))
                        # A batch committed meanwhile is a dead writer's (a live one holds
                        # the lock until its batch is installed), older than this one: it is
                        # installed first, not over this one later.
                        for left in self._committed_batches():
                            self._finish_batch(left)
                        if guard is not None and self._load(guard[0]) != guard[1]:
                            tmp.unlink()
                            return False
                        os.replace(tmp, batch)  # the commit...
                    except (OSError, PersistenceError, Abandoned) as exc:
                        if (
                            isinstance(exc, FileNotFoundError)
                            and attempt == 0
                            and self._batches.is_dir()
                            and not tmp.exists()
                        ):
                            continue  # taken for a crash's leftover before the lock
                        with contextlib.suppress(OSError):
                            tmp.unlink(missing_ok=True)
                        if isinstance(exc, Abandoned):
                            raise  # cancelled before the commit: nothing of it is saved
                        raise PersistenceError(
                            f"cannot write the batch {tmp} (nothing of it was saved): {exc}"
                        ) from exc
                    with _INSTALLING_LOCK:
                        _INSTALLING.add(str(batch))
                    try:
                        _sync_directory(self._batches)  # ...made durable
                        self._install(batch, items)
                    except (OSError, PersistenceError) as exc:
                        raise PersistenceError(
                            f"batch committed to {batch} but not installed: {exc}; the next "
                            "call on this directory finishes it",
                            key=next(iter(items), None),  # none for an empty guarded batch
                        ) from exc
                    finally:
                        with _INSTALLING_LOCK:
                            _INSTALLING.discard(str(batch))
                    return True
            finally:
                _close_locking(fd)
        raise PersistenceError(f"cannot write the batch in {self._batches}")  # pragma: no cover

    def _install_item(self, key: str, value: bytes | None) -> None:
        """Writes one key's file atomically, or removes it when `value` is None (a deletion).

        Either may be done again (a batch a crash left is installed anew): removing a file
        that is gone already does nothing. The directory is not synced (see `_install`).
        """
        if value is not None:
            self._write(key, value)
            return
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise PersistenceError(f"cannot delete {path}: {exc}", key=key) from exc

    def _install(self, batch: Path, items: Mapping[str, bytes | None]) -> None:
        """Writes each item's file, makes them durable, then removes the batch's file durably.

        An item whose value is None is its key's deletion: its file is removed. The batch's
        removal is fsynced too: lost in a power cut, the batch would come back and be
        installed again over the writes acknowledged after it.
        """
        for key, value in items.items():
            self._install_item(key, value)
        _sync_directory(self.directory)
        batch.unlink(missing_ok=True)
        try:
            _sync_directory(self._batches)
        except OSError as exc:  # the batch is installed: its caller is told it was saved
            logger.warning(
                "FileBackend: the removal of the installed batch %s may not survive a power "
                "loss (the redo log cannot be fsynced: %s)",
                batch,
                exc,
            )

    @contextlib.contextmanager
    def _install_lock(self, shared: bool) -> Iterator[None]:
        """Holds the redo log's install lock: shared to read, exclusive to install a batch.

        It is taken through the turnstile (`_TURNSTILE`), so a batch waits for the reads
        under way, not for those that come after it. Each is held as `_lock_file` says.

        Raises:
            PersistenceError: When one cannot be opened or locked.
            Abandoned: The call was cancelled meanwhile.
        """
        with contextlib.ExitStack() as held:
            timeout = self.lock_timeout
            with _lock_file(self.directory / _TURNSTILE, shared, timeout):
                held.enter_context(_lock_file(self.directory / _INSTALL_LOCK, shared, timeout))
            yield

    async def _read_in_thread(self, read: Callable[[], T]) -> T:
        """`_between_batches(read)` in a worker thread; cancelled, it goes on at once.

        It sees each batch whole, or not at all (see the class).
        """
        # Nothing to wait for: the thread gives up its waits for locks, and writes nothing but
        # a batch a crash left, which any call may finish.
        return await run_in_thread(lambda: self._between_batches(read), grace=0)

    def _between_batches(self, work: Callable[[], T]) -> T:
        """`work()` under the shared install lock, once no batch is left committed.

        No batch is committed or installed while the lock is held: a read sees each batch
        whole or not at all, and a single write (`save`, `save_new`, `delete`, a one-item
        `batch_save`) lands after every batch committed before it and before every later
        one. (Looking at the redo log outside the lock, a write could miss a batch committed
        right after, by a writer that then died: finished later, that batch landed over the
        acknowledged write.)
        Under the lock, a committed batch is one a crash left (a live writer holds the lock
        until its batch is installed): it is finished first, outside the lock (no read
        under the lock sees part of it), and `work` is tried again.
        """
        while True:
            with self._install_lock(shared=True):
                if not self._committed_batches():
                    return work()
            self._finish_batches()

    def _committed_batches(self) -> list[Path]:
        """The batches committed to the redo log and not installed yet, by name.

        Where there are no locks to wait on, those this process is installing are left out.

        Raises:
            PersistenceError: When the redo log cannot be listed.
        """
        try:
            names = sorted(os.listdir(self._batches))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PersistenceError(f"cannot list the redo log {self._batches}: {exc}") from exc
        batches = [self._batches / name for name in names if _BATCH.match(name)]
        if sys.platform == "win32":
            with _INSTALLING_LOCK:
                batches = [batch for batch in batches if str(batch) not in _INSTALLING]
        return batches

    def _finish_batches(self) -> None:
        """Finishes each batch a crash left committed (and waits for one being installed).

        Raises:
            PersistenceError: When one cannot be finished: what is stored would not be
                all of it.
        """
        for batch in self._committed_batches():
            self._finish_batch(batch)

    def _finish_batch(self, batch: Path) -> None:
        try:
            fd = _open_locking(batch, os.O_RDWR)
        except FileNotFoundError:
            return  # finished meanwhile
        except OSError as exc:
            raise PersistenceError(f"cannot finish the batch {batch}: {exc}") from exc
        try:
            try:  # a live writer holds it until its batch is installed
                _wait_for_lock(fd, self.lock_timeout)
            except TimeoutError as exc:  # a live writer, slow or stopped: no crash's leftover
                raise PersistenceError(
                    f"the batch {batch} is being installed by another call, still not done: {exc}"
                ) from None
            except OSError as exc:
                raise PersistenceError(f"cannot finish the batch {batch}: {exc}") from exc
            try:
                self._finish_locked_batch(batch, fd)
            except (OSError, PersistenceError) as exc:
                raise PersistenceError(
                    f"cannot finish the batch {batch}, committed but not installed (its "
                    f"writer failed or stopped first): {exc}"
                ) from exc
        finally:
            _close_locking(fd)

    def _finish_locked_batch(self, batch: Path, fd: int) -> None:
        """Installs the committed `batch`, whose lock `fd` holds (see `_finish_batch`)."""
        try:
            if os.stat(batch).st_ino != os.fstat(fd).st_ino:
                return  # pragma: no cover (names are never reused)
        except FileNotFoundError:
            return  # installed by its writer while this one waited
        with os.fdopen(os.dup(fd), "rb") as f:
            items = _decode_batch(f.read())
        if items is None:  # fsynced before its commit: only a failing disk gets here
            aside = batch.with_suffix(".damaged")
            os.replace(batch, aside)
            logger.warning("FileBackend: a damaged batch file was put aside as %s", aside)
            return
        if batch not in self._batches_finishing:  # once, not at every call that retries
            self._batches_finishing.add(batch)
            logger.warning(
                "FileBackend: finishing a batch committed but not installed, its writer "
                "failed or stopped first (%s)",
                batch,
            )
        self._install(batch, items)
        self._batches_finishing.discard(batch)

    def _remove_abandoned_temporaries(self) -> None:
        """Removes the temporary files of writes a crash cut short (only this backend's).

        A file is removed only when it has this backend's temporary-file name and no live
        writer holds its lock; failures are logged, never raised.
        """
        for directory, pattern in ((self.directory, _TEMP), (self._batches, _BATCH_TEMP)):
            try:
                names = [n for n in os.listdir(directory) if pattern.match(n)]
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("FileBackend: cannot list %s: %s", directory, exc)
                continue
            for name in names:
                path = directory / name
                try:
                    fd = _open_locking(path, os.O_RDWR)
                except FileNotFoundError:
                    continue  # renamed into place meanwhile
                except OSError as exc:
                    logger.warning("FileBackend: cannot remove %s: %s", path, exc)
                    continue
                try:
                    if _lock(fd, wait=False) and sys.platform != "win32":
                        path.unlink(missing_ok=True)
                except OSError as exc:
                    logger.warning("FileBackend: cannot remove %s: %s", path, exc)
                finally:
                    _close_locking(fd)

    # ------------------------------------------------------------------ the protocol
    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key` atomically."""
        value = check_value(check_key(key), value)

        await run_in_thread(lambda: self._between_batches(lambda: self._write_durably(key, value)))

    async def save_new(self, key: str, value: bytes) -> bool:
        """Stores `value` under `key` unless the key exists; returns whether it wrote.

        The file is written whole, then hard-linked to its name, which fails if the name
        exists: of several writers (processes included), exactly one wins. (A file system
        without hard links fails it with `PersistenceError`.)
        """
        value = check_value(check_key(key), value)

        return await run_in_thread(
            lambda: self._between_batches(lambda: self._write_new(key, value))
        )

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        check_key(key)

        return await self._read_in_thread(lambda: self._load(key))

    async def delete(self, key: str) -> bool:
        """Removes `key` (durably: the directory is fsynced); returns whether it existed."""
        path = self._path(check_key(key))

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise PersistenceError(f"cannot delete {path}: {exc}", key=key) from exc
            self._sync(key)
            return True

        return await run_in_thread(lambda: self._between_batches(remove))

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item, all or none, even across a crash (see the class).

        Every key is checked first: a key no file can hold fails the batch before any write.
        """
        checked = check_items(items)
        for key in checked:
            encode_key(key)

        def write() -> None:
            if len(checked) <= 1:  # one file: a single write, under the install lock (`save`)
                self._between_batches(lambda: self._write_batch(checked))
                return
            self._finish_batches()
            self._write_batch(checked)

        await run_in_thread(write)

    async def batch_save_if(
        self, guard_key: str, guard_value: bytes, items: Mapping[str, bytes]
    ) -> bool:
        """Stores every item, all or none, only if `guard_key` holds `guard_value`.

        Returns whether it wrote. Always through the redo log, whose exclusive install lock
        keeps every other write of the guard out from the check to the install.
        """
        guard_value = check_value(check_key(guard_key), guard_value)
        encode_key(guard_key)
        checked = check_items(items)
        for key in checked:
            encode_key(key)

        def write() -> bool:
            self._finish_batches()
            return self._write_batch(checked, (guard_key, guard_value))

        return await run_in_thread(write)

    async def batch_delete_if(
        self, guard_key: str, guard_value: bytes, keys: Sequence[str]
    ) -> bool:
        """Deletes every key of `keys`, all or none, only if `guard_key` holds `guard_value`.

        Returns whether the guard held. As `batch_save_if`, always through the redo log (the
        batch records the deletions), whose exclusive install lock keeps every other write of
        the guard out from the check to the install: all or none, even across a crash.
        """
        guard_value = check_value(check_key(guard_key), guard_value)
        encode_key(guard_key)
        wanted = list(dict.fromkeys(check_keys(keys)))
        for key in wanted:
            encode_key(key)
        deletions: dict[str, bytes | None] = dict.fromkeys(wanted)

        def delete() -> bool:
            self._finish_batches()
            return self._write_batch(deletions, (guard_key, guard_value))

        return await run_in_thread(delete)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        wanted = list(dict.fromkeys(check_keys(keys)))
        for key in wanted:
            encode_key(key)

        def read() -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            for key in wanted:
                value = self._load(key)
                if value is not None:
                    found[key] = value
            return found

        return await self._read_in_thread(read)

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys starting with `prefix`, sorted.

        Only the files whose names can be those of such keys are read (their keys only),
        and each once: the backend remembers the key of every file it listed (a file name
        holds one key for good), so keys sharing a long start (session ids of one tenant)
        are not read again at every listing.

        Raises:
            PersistenceError: The directory cannot be listed, or one of those files is
                damaged (a listing without it could silently miss a key, such as a session's
                last step).
        """
        encode_key(check_prefix(prefix))  # a prefix no key can have fails as in the others
        # A key's file name starts with its first characters, each unsafe one as `_`.
        start = _UNSAFE.sub("_", prefix[:_PREFIX_CHARS])

        def scan() -> list[str]:
            keys = []
            try:
                names = os.listdir(self.directory)
            except OSError as exc:
                raise PersistenceError(f"cannot list {self.directory}: {exc}") from exc
            listed = self._listed
            for name in names:
                if name.startswith(start) and _RECORD.match(name):
                    key = listed.get(name)
                    if key is None:
                        key = self._stored_key(self.directory / name)
                        if key is None:
                            continue  # deleted meanwhile
                        listed[name] = key
                    if key.startswith(prefix):
                        keys.append(key)
            if len(listed) > 2 * len(names):  # mostly files deleted since: forgotten
                present = set(names)
                self._listed = {n: k for n, k in listed.items() if n in present}
            return sorted(keys)

        return await self._read_in_thread(scan)
