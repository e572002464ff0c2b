"""File persistence: one file per key, written atomically."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.persistence.base import encode_key

__all__ = ["FileBackend", "file_name_for"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEADER = struct.Struct("<I")
_PREFIX_CHARS = 48
"""Length of the readable part of a file name: ASCII only, so also its length in bytes."""


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


class FileBackend:
    """Key -> bytes storage as files in one directory.

    Each value is written to a unique temporary file, fsynced, and renamed into place, so a
    reader never sees a half-written value, even after a crash. A file holds its original
    key, so `list_keys` can return keys exactly.

    Args:
        directory: where the files live (created if missing).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PersistenceError(f"cannot create {self.directory}: {exc}") from exc

    def _path(self, key: str) -> Path:
        return self.directory / file_name_for(key)

    def _write(self, key: str, value: bytes) -> None:
        path = self._path(key)
        encoded = key.encode("utf-8")  # _path checked that it encodes
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(len(encoded)) + encoded + bytes(value))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # best effort: the write error is what matters
                tmp.unlink(missing_ok=True)
            raise PersistenceError(f"cannot write {path}: {exc}", key=key) from exc

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

    async def save(self, key: str, value: bytes) -> None:
        """Stores `value` under `key` atomically."""
        await asyncio.to_thread(self._write, key, value)

    async def load(self, key: str) -> bytes | None:
        """Returns the value stored under `key`, or None."""
        found = await asyncio.to_thread(self._read, self._path(key), key)
        if found is None:
            return None
        stored_key, value = found
        if stored_key != key:
            raise PersistenceError(f"record file holds key {stored_key!r}", key=key)
        return value

    async def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        path = self._path(key)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise PersistenceError(f"cannot delete {path}: {exc}", key=key) from exc
            return True

        return await asyncio.to_thread(remove)

    async def batch_save(self, items: Mapping[str, bytes]) -> None:
        """Stores every item (each atomically; files have no multi-file transaction).

        Every key is checked first: a key no file can hold fails the batch before any write.
        """
        for key in items:
            encode_key(key)
        for key, value in items.items():
            await self.save(key, value)

    async def batch_load(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the stored values of those `keys` that exist."""
        found: dict[str, bytes] = {}
        for key in dict.fromkeys(keys):
            value = await self.load(key)
            if value is not None:
                found[key] = value
        return found

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Returns the stored keys starting with `prefix`, sorted."""
        encode_key(prefix)  # a prefix no key can have fails as in the other backends

        def scan() -> list[str]:
            keys = []
            for path in self.directory.glob("*.bin"):
                found = self._read(path, None)
                if found is not None and found[0].startswith(prefix):
                    keys.append(found[0])
            return sorted(keys)

        return await asyncio.to_thread(scan)

    def __repr__(self) -> str:
        return f"FileBackend(directory={str(self.directory)!r})"
