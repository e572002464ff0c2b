"""The record codec: versioned JSON with a checksum. No pickle, ever.

A record is one header line, `llm-agent-runtime/<version> <crc32> <kind>`, then the JSON
payload. A record that is truncated, altered, of an unknown kind or written by a newer
version raises `PersistenceError` naming its key; nothing is ever half-loaded.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.session import (
    JSON_KEY_TYPES,
    check_keys_written_apart,
    json_text,
    object_of_pairs,
    refuse_keys_written_alike,
)

__all__ = ["FORMAT_VERSION", "decode", "encode", "record_kind"]

FORMAT_VERSION = 1
_MAGIC = b"llm-agent-runtime/"


# One encoder for every record: `json.dumps` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=json_text)
# And one decoder: `json.loads` with a hook builds a new one per call, which cost more than
# the hook itself. The hook refuses a key written twice, which `encode` never writes.
_DECODER = json.JSONDecoder(object_pairs_hook=object_of_pairs)


def encode(kind: str, payload: Any) -> bytes:
    """Encodes `payload` as a `kind` record.

    `payload` is JSON-compatible; other values, and dict keys JSON has no form for, become
    strings.

    Raises:
        PersistenceError: `payload` holds itself, nests too deeply, or holds an int past
            Python's limit of digits for a conversion to text.
    """
    try:
        try:
            body = _ENCODER.encode(payload).encode()
        except TypeError:  # a dict key JSON has no form for (a tuple, a numpy int): its str
            body = _ENCODER.encode(_str_keys(payload)).encode()  # checks collisions itself
        else:
            check_keys_written_apart(payload)
    except (ValueError, TypeError) as error:  # a circular reference, an int too long to write
        raise PersistenceError(f"cannot encode a {kind} record as JSON: {error}") from error
    except RecursionError:  # nested deeper than the stack this call runs on allows
        raise PersistenceError(f"a {kind} record nests too deeply to encode as JSON") from None
    header = b"%s%d %08x %s\n" % (_MAGIC, FORMAT_VERSION, zlib.crc32(body), kind.encode())
    return header + body


def _str_keys(value: Any) -> Any:
    """`value` with every dict key JSON has no form for as its `str`, nested ones too.

    As `json_text` does for other values.
    """
    if isinstance(value, dict):
        refuse_keys_written_alike(value)
        return {
            key if isinstance(key, JSON_KEY_TYPES) else json_text(key): _str_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_str_keys(item) for item in value]
    return value


class UnreadableHere(PersistenceError):
    """A record this process cannot read, though nothing says it is damaged.

    Written by a newer version of the library, or handed over by the backend as another
    type than bytes: deleting it as damaged would lose a whole record.
    """


def stored_bytes(raw: Any, key: str | None) -> bytes | bytearray | memoryview:
    """`raw`, a value a backend loaded, checked to be bytes (as a backend takes them).

    Raises:
        PersistenceError: It is not: the backend breaks its protocol (a store of text, say).
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise UnreadableHere(
            f"the backend loaded a {type(raw).__name__} for a record, not bytes", key=key
        )
    return raw


def decode(raw: bytes, key: str, kind: str | None = None) -> Any:
    """Decodes a record stored under `key`, checking version, checksum and (when given) kind.

    Raises:
        PersistenceError: On a value that is no bytes (a backend's `load` breaking its
            protocol), a corrupt, truncated, foreign or newer-version record, a
            record of another kind, one nested too deeply to decode, or one with an object
            that has a key written twice (which `encode` never writes: it is corrupt or
            forged, and `json` alone would keep the last value without a word).
    """
    header, newline, body = bytes(stored_bytes(raw, key)).partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 3 or not parts[0].startswith(_MAGIC):
        raise PersistenceError("not a llm-agent-runtime record (bad header)", key=key)
    try:
        version = int(parts[0][len(_MAGIC) :])
        checksum = int(parts[1], 16)
    except ValueError:
        raise PersistenceError("not a llm-agent-runtime record (bad header)", key=key) from None
    if version > FORMAT_VERSION:
        raise UnreadableHere(
            f"record format version {version} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade llm-agent-runtime",
            key=key,
        )
    if zlib.crc32(body) != checksum:
        raise PersistenceError("record is corrupt or truncated (checksum mismatch)", key=key)
    found = parts[2].decode(errors="replace")
    if kind is not None and found != kind:
        raise PersistenceError(f"expected a {kind!r} record, found {found!r}", key=key)
    try:
        # What `encode` writes is ASCII (its encoder escapes the rest): read as it is, without
        # `detect_encoding`, which wins back a third of what the hook costs. Other bytes are
        # read as `json.loads` reads them (UTF-8 with or without a BOM, UTF-16, UTF-32).
        if body.isascii() and b"\0" not in body:
            text = body.decode("ascii")
        else:
            text = body.decode(json.detect_encoding(body), "surrogatepass")
        return _DECODER.decode(text)
    except PersistenceError as error:  # `object_of_pairs`': a key written twice
        raise PersistenceError(f"record body is refused: {error}", key=key) from error
    except ValueError as error:
        raise PersistenceError(f"record body is not JSON: {error}", key=key) from error
    except RecursionError:  # nested deeper than the stack this call runs on allows
        raise PersistenceError("record body nests too deeply to decode", key=key) from None


def record_kind(raw: bytes) -> str | None:
    """The kind a record's header names (`session`, `step`, ...), or None for no record.

    Reads the header only: the record may still be corrupt.

    Raises:
        PersistenceError: `raw` is not bytes (a backend's `load` gave something else).
    """
    header = bytes(stored_bytes(raw, None)[:256]).partition(b"\n")[0].split(b" ")
    if len(header) != 3 or not header[0].startswith(_MAGIC):
        return None
    return header[2].decode(errors="replace")
