"""Tools the agent calls: `ToolSpec`, the `@tool` decorator and the `ToolRegistry`."""

from __future__ import annotations

import ast
import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import copy
import dataclasses
import enum
import errno
import functools
import importlib
import inspect
import json
import logging
import math
import numbers
import os
import re
import socket
import sys
import threading
import time
import types
import typing
import uuid
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from types import SimpleNamespace
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Literal,
    NamedTuple,
    NotRequired,
    Self,
    SupportsIndex,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    overload,
)

import typing_extensions
from annotated_types import BaseMetadata
from pydantic import (
    AfterValidator,
    AliasPath,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaValue,
    JsonSchemaWarningKind,
    SkipJsonSchema,
)
from pydantic_core import (
    PydanticSerializationError,
    PydanticUndefined,
    core_schema,
    to_jsonable_python,
)
from typing_extensions import TypedDict, is_typeddict

from llm_agent_runtime._cancelling import CANCEL_COUNTS_EXACT, cancellations_so_far
from llm_agent_runtime._core import dicts_with_keys_made_text, shown_part, tuple_of
from llm_agent_runtime._depth import MAX_ARGUMENT_DEPTH, TOO_DEEP, nested_deeper_than
from llm_agent_runtime.errors import (
    BudgetExceededError,
    CircuitOpenError,
    PolicyDeniedError,
    ProviderError,
    ToolError,
    group_leaves,
    is_retryable_status,
    policy_error_in,
)
from llm_agent_runtime.orchestration._calls import (
    current_task,
    is_async_callable,
    running_loop,
    surely_not_awaitable,
    task_of,
)
from llm_agent_runtime.orchestration._checks import (
    as_index,
    check_flag,
    names_repr,
    safe_repr,
    short_repr,
)
from llm_agent_runtime.providers.base import json_chars

if TYPE_CHECKING:  # a breaker is the user's; the tool only calls it
    from llm_agent_runtime.orchestration.circuit_breaker import CircuitBreaker

__all__ = ["ErrorKind", "Observation", "ToolRegistry", "ToolSpec", "tool"]

T = TypeVar("T")

logger = logging.getLogger("llm_agent_runtime")

IDEMPOTENCY_KEY = "idempotency_key"
"""Name of the parameter through which a tool receives its call's idempotency key."""

ErrorKind = Literal["not_found", "transient", "permanent"]
"""Why a tool call failed: unknown tool, worth retrying, or not."""

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,  # a class of its own before Python 3.11
    ConnectionError,
    socket.gaierror,  # a failed DNS lookup
    CircuitOpenError,
    # The tool's own work cancelled (`Future.result()` of a cancelled executor future): as
    # `asyncio.to_thread` turns it into the `CancelledError` `ToolRegistry.call` takes for
    # transient, so on every other path too (asyncio imports the module already).
    concurrent.futures.CancelledError,
)
# Exceptions of HTTP clients this module does not import (they may not be installed), by
# (top-level package, class name); the first class along an exception's MRO found here
# decides. TLS failures come before the connection errors they derive from: no retry
# fixes a bad certificate, nor a URL with no scheme.
_THIRD_PARTY_KINDS: dict[tuple[str, str], ErrorKind] = {
    ("requests", "SSLError"): "permanent",
    ("requests", "ConnectionError"): "transient",  # ConnectTimeout, ProxyError too
    ("requests", "Timeout"): "transient",  # ReadTimeout
    ("httpx", "UnsupportedProtocol"): "permanent",
    ("httpx", "LocalProtocolError"): "permanent",
    ("httpx", "TransportError"): "transient",  # ConnectError, ReadTimeout, RemoteProtocolError
    ("aiohttp", "ClientSSLError"): "permanent",
    ("aiohttp", "ServerFingerprintMismatch"): "permanent",
    ("aiohttp", "ClientConnectionError"): "transient",  # ServerDisconnectedError too
}
# Their HTTP error status exceptions, classified by the status (`_http_status`).
_HTTP_STATUS_ERRORS = frozenset(
    {
        ("httpx", "HTTPStatusError"),
        ("requests", "HTTPError"),
        ("aiohttp", "ClientResponseError"),
        ("urllib", "HTTPError"),
    }
)
# Network failures an `OSError` names only by its errno (a bare `socket.connect` raises
# them; urllib wraps them): worth a retry, as a refused connection is.
_TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in ("ENETUNREACH", "EHOSTUNREACH", "ENETDOWN", "EHOSTDOWN", "ENETRESET")
    )
    if code is not None
)
_GROUP_SHOWN = 10
"""How many of an exception group's members an observation describes."""
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Tool names the providers accept (OpenAI and Anthropic enforce this pattern)."""
_FINAL_ANSWER = "FINAL_ANSWER"
"""The action of a final answer: no tool is named so, in any letter case (see `_check_name`)."""
_PROPERTY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""Argument names (the schema's property keys) Anthropic accepts; OpenAI accepts them too."""


class _ToolTimeoutError(TimeoutError):
    """The per-tool timeout expired (a tool's own `TimeoutError` keeps its own message)."""


class Observation(NamedTuple):
    """The result of one tool call as the model sees it."""

    content: str
    """Text handed back to the model (truncated to the configured limit)."""
    error_kind: ErrorKind | None = None
    """None on success, else the failure class."""

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.error_kind is None


def classify_error(error: BaseException) -> ErrorKind:
    """Classifies a tool's exception as `transient` (retry may help) or `permanent`.

    Transient: `TimeoutError` (`asyncio.TimeoutError` too), `ConnectionError`, an `OSError`
    whose errno says the network or host is unreachable or down (`ENETUNREACH`,
    `EHOSTUNREACH`, `ENETDOWN`, `EHOSTDOWN`, `ENETRESET`; not other `OSError`s),
    `socket.gaierror` (a failed DNS lookup), `CircuitOpenError`,
    `concurrent.futures.CancelledError` (the tool's own work was cancelled), a retryable
    `ProviderError`; and the network failures of HTTP clients, recognised by package and
    class name along the exception's MRO, without importing them: requests'
    `ConnectionError` and `Timeout` (not `SSLError`), httpx's `TransportError` (not
    `UnsupportedProtocol` nor `LocalProtocolError`), aiohttp's `ClientConnectionError` (not
    `ClientSSLError` nor `ServerFingerprintMismatch`), unless an `ssl.SSLError` caused them
    (no retry fixes a bad certificate). An HTTP error status those clients
    raise (httpx's `HTTPStatusError`, requests' `HTTPError`, aiohttp's
    `ClientResponseError`, the standard library's `urllib.error.HTTPError`) is transient
    when the providers would retry it too: 408, 409, 429 and 5xx. Any other
    `urllib.error.URLError` is classified by the failure it wraps (its `reason`): a refused
    connection or a timeout is transient, a bad certificate or URL permanent. An exception
    group (say, from a `TaskGroup`) is transient when all its members are, nested groups
    included. Anything else is permanent.

    Args:
        error: The exception the handler raised.

    Returns:
        The error kind.
    """
    if isinstance(error, _TRANSIENT_ERRORS):
        return "transient"
    if isinstance(error, ProviderError):
        return "transient" if error.retryable else "permanent"
    members = group_leaves(error)
    if members is not None:
        if members and all(classify_error(m) == "transient" for m in members):
            return "transient"
        return "permanent"
    if _tls_failure(error):
        return "permanent"
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return "transient"
    for klass in type(error).__mro__:
        kind = _THIRD_PARTY_KINDS.get((_package(klass), klass.__name__))
        if kind is not None:
            return kind
    status = _http_status(error)
    if status is not None and is_retryable_status(status):
        return "transient"
    if status is None:
        reason = _url_error_reason(error)
        if reason is not None:
            return classify_error(reason)
    return "permanent"


def _url_error_reason(error: BaseException) -> BaseException | None:
    """The exception a `urllib.error.URLError` wraps (its `reason`), None for others."""
    if any((_package(k), k.__name__) == ("urllib", "URLError") for k in type(error).__mro__):
        reason = getattr(error, "reason", None)
        if isinstance(reason, BaseException) and reason is not error:
            return reason
    return None


def _tls_failure(error: BaseException) -> bool:
    """Whether `error` is an `ssl.SSLError` or was raised while handling one.

    HTTP clients wrap a TLS failure (a bad certificate, say) in their connection errors
    (httpx's `ConnectError`, through httpcore's, which hides it as a suppressed context),
    which are transient otherwise: every cause and context is followed. Told by class name:
    importing `ssl` here would slow every import.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(_package(k) == "ssl" and k.__name__ == "SSLError" for k in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


def _http_status(error: BaseException) -> int | None:
    """The response status of an HTTP client's error status exception, None for others."""
    for klass in type(error).__mro__:
        if (_package(klass), klass.__name__) in _HTTP_STATUS_ERRORS:
            # aiohttp's carries `status`; httpx's and requests' their response.
            status = getattr(error, "status", None)
            if status is None:
                status = getattr(getattr(error, "response", None), "status_code", None)
            return status if isinstance(status, int) else None
    return None


def _package(klass: type) -> str:
    """The top-level package a class is defined in."""
    module = getattr(klass, "__module__", None)
    return module.partition(".")[0] if isinstance(module, str) else ""


def _check_name(name: Any) -> None:
    """Raises `ToolError` unless `name` is a tool name every provider accepts.

    `FINAL_ANSWER` is refused in any letter case (`final_answer` too): the ReAct parser reads
    `Action: FINAL_ANSWER ...`, its letter case ignored, as the final answer, so such a tool
    could never run, and a step of that name is a run's final answer.
    """
    if not isinstance(name, str) or not name.strip():
        raise ToolError("tool name must not be empty")
    if _NAME.fullmatch(name) is None:
        raise ToolError(
            f"tool name {name!r} is invalid: use 1 to 64 ASCII letters, digits, '_' or '-' "
            "(providers refuse other names)",
            tool=name,
        )
    if name.upper() == _FINAL_ANSWER:
        raise ToolError(
            f"tool name {name!r} is reserved: 'Action: FINAL_ANSWER ...' is the final answer "
            "in ReAct mode (in any letter case), so the tool could never run; name it "
            "otherwise",
            tool=name,
        )


def _logged_failure(tool: str, error: BaseException) -> None:
    """Logs a tool's exception with its traceback, at DEBUG.

    The model sees its message only; the developer needs where it was raised.
    """
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("tool %r raised %s", tool, type(error).__name__, exc_info=error)


def _checked_timeout(name: str, timeout: Any) -> float | None:
    """`timeout`, None or a finite number of seconds above 0, as an int or a float.

    Another real type (a numpy float32) is made a float: added to a clock it would stay
    itself, and float32 rounds a deadline by seconds once the clock is days past its start.

    Raises:
        ToolError: `timeout` is neither.
    """
    if timeout is None:
        return None
    # A NaN compares false with everything: the call's deadline would never come.
    try:
        usable = (
            not isinstance(timeout, bool)
            and isinstance(timeout, numbers.Real)
            and math.isfinite(timeout)
            and float(timeout) > 0
        )
    except OverflowError:  # an int or a Fraction beyond the float range
        usable = False
    if not usable:
        raise ToolError(
            f"timeout of tool {name!r} must be a finite number of seconds above 0, got {timeout!r}",
            tool=name,
        )
    return timeout if type(timeout) in (int, float) else float(timeout)


def _checked_flag(name: str, setting: str, value: Any) -> bool:
    """`value` of the bool `setting` of tool `name`, as a bool (see `check_flag`).

    Raises:
        ToolError: `value` is no bool (a string such as "false" would read as true).
    """
    try:
        return check_flag(setting, value)
    except TypeError:
        raise ToolError(
            f"{setting} of tool {name!r} must be a bool, got {short_repr(value)}", tool=name
        ) from None


def _checked_fields(name: str, required_fields: Any) -> tuple[str, ...]:
    """`required_fields` of tool `name` as a tuple of argument names.

    Raises:
        ToolError: It is not an iterable of strings (a str is one of one-letter names).
    """
    fields = (
        tuple(required_fields)
        if isinstance(required_fields, Iterable) and not isinstance(required_fields, str)
        else None
    )
    if fields is None or not all(isinstance(f, str) for f in fields):
        raise ToolError(
            f"required_fields of tool {name!r} must be a list of argument names, "
            f"got {short_repr(required_fields)}",
            tool=name,
        )
    return fields


def _check_inline(name: str, run_inline: Any, timeout: Any) -> None:
    """Raises `ToolError` when `run_inline` comes with a timeout (which could not apply)."""
    if run_inline and timeout is not None:
        raise ToolError(
            f"tool {name!r}: run_inline=True runs the handler on the event loop, where a "
            "timeout cannot interrupt it; drop run_inline or the timeout",
            tool=name,
        )


def _check_breaker(name: str, breaker: Any) -> None:
    """Raises `ToolError` unless `breaker` is None or has a `call` method (a `CircuitBreaker`).

    Else every call of the tool would fail, its `AttributeError` shown to the model as the
    tool's own failure.
    """
    if breaker is not None and not callable(getattr(breaker, "call", None)):
        raise ToolError(
            f"circuit_breaker of tool {name!r} must be a CircuitBreaker (or None), "
            f"got {type(breaker).__name__}",
            tool=name,
        )


def _checked_max_chars(max_chars: Any) -> int:
    """`max_chars` as an int, for a `ToolRegistry.call` given something other than an int.

    Raises:
        ToolError: When it is no integer (a bool, a float, None, text) or is below 0.
    """
    count = as_index(max_chars)  # an int subclass, a numpy integer
    if count is not None and count >= 0:
        return count
    raise ToolError(f"max_chars must be an int of 0 or more, got {max_chars!r}")


def _check_description(name: str, description: Any) -> None:
    """Raises `ToolError` unless `description` is a str (providers refuse anything else)."""
    if not isinstance(description, str):
        raise ToolError(
            f"description of tool {name!r} must be a str, got {type(description).__name__}",
            tool=name,
        )


def _check_handler(name: str, handler: Any) -> None:
    """Raises `ToolError` unless `handler` is callable and not a generator function."""
    if not callable(handler):
        raise ToolError(f"handler of tool {name!r} is not callable", tool=name)
    if _is_generator_callable(handler):
        raise ToolError(
            f"tool {name!r}: its function is a generator (it yields); a tool's result is "
            "handed to the model whole: return a list instead",
            tool=name,
        )


def _check_takes_arguments(name: str, handler: Any) -> None:
    """Raises `ToolError` unless a `ToolSpec`'s handler can be called with the arguments dict.

    A handler written as for `@tool` (`def add(a, b)`), or taking nothing, is a mistake of the
    code, not a failure of the tool: refused here, not told to the model at each call.
    """
    try:
        # Its own: a wrapper made with `functools.wraps` shows the function it wraps.
        signature = inspect.signature(handler, follow_wrapped=False)
    except (TypeError, ValueError):  # a builtin without one: it cannot be told
        return
    try:
        signature.bind({})
    except TypeError as error:
        raise ToolError(
            f"handler of tool {name!r} must take the call's arguments as one dict "
            f"(handler(arguments)): {_callable_name(handler)}{signature} cannot ({error}); "
            "to register a function of named parameters, use @tool or tool(fn)",
            tool=name,
        ) from None


def _is_generator_callable(fn: Any) -> bool:
    """Whether calling `fn` makes a generator or an async generator (partials unwrapped)."""
    fn = _base_callable(fn)
    if isinstance(fn, type):
        return False  # calling a class makes an instance
    if not inspect.isroutine(fn):
        fn = type(fn).__call__
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def _check_schema(name: str, parameters: Any) -> None:
    """Raises `ToolError` unless `parameters` is a JSON schema of an arguments object.

    It must be JSON data, as request bodies carry it: a schema that holds itself (which
    walking its references would follow for ever), one nested too deeply to encode, or a
    value JSON has no form for is refused.
    """
    if not isinstance(parameters, dict):
        raise ToolError(
            f"parameters of tool {name!r} must be a dict (the JSON schema of the arguments "
            f"object), got {type(parameters).__name__}",
            tool=name,
        )
    try:
        json.dumps(parameters, allow_nan=False)
        # Bounded here, not by the encoder's recursion limit, which grows with the Python
        # version (3.12, 3.13): the runtime walks a schema in Python frames of its own.
        if _depth(parameters) > _MAX_SCHEMA_DEPTH:
            raise RecursionError
    except (TypeError, ValueError, RecursionError) as error:
        why = (
            f"nested too deeply (over {_MAX_SCHEMA_DEPTH} levels)"
            if isinstance(error, RecursionError)
            else str(error)
        )
        raise ToolError(
            f"parameters of tool {name!r} must be JSON data (the schema request bodies "
            f"carry): {why}",
            tool=name,
        ) from None
    if parameters.get("type", "object") != "object":
        raise ToolError(
            f'parameters of tool {name!r} must be a schema of "type": "object", '
            f"got {parameters['type']!r}",
            tool=name,
        )
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        raise ToolError(f'"properties" of tool {name!r} must be a dict', tool=name)
    for key in properties:
        _check_property(name, key)
    required = parameters.get("required", [])
    if not isinstance(required, (list, tuple)) or not all(isinstance(r, str) for r in required):
        raise ToolError(f'"required" of tool {name!r} must be a list of names', tool=name)


_MAX_SCHEMA_DEPTH = 128
"""The most levels of dicts and lists a tool's schema may nest (real ones nest a few)."""


def _depth(value: Any) -> int:
    """How many levels of dicts and lists `value` nests (JSON data: it holds no cycle)."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            deepest = max(deepest, depth)
            if depth <= _MAX_SCHEMA_DEPTH:  # past it, the answer is known
                level.extend((child, depth + 1) for child in item)
    return deepest


def _check_property(name: str, key: Any, parameter: str | None = None) -> None:
    """Raises `ToolError` unless `key` is an argument name every provider accepts."""
    if isinstance(key, str) and _PROPERTY.fullmatch(key) is not None:
        return
    which = f"argument name {key!r}"
    if parameter is not None and parameter != key:
        which = f"parameter {parameter!r} goes by the {which}, which"
    raise ToolError(
        f"tool {name!r}: {which} is invalid: use 1 to 64 ASCII letters, digits, '_', '.' "
        "or '-' (Anthropic refuses other names; an alias can rename a parameter)",
        tool=name,
    )


_DATA_SLOTS = ("description", "name", "parameters", "required_fields")
"""The `ToolSpec` settings that are data, which a deep copy copies (the rest it shares)."""


class ToolSpec:
    """A tool: a name, a description, a JSON schema, and a handler.

    A handler receives the parsed arguments as one dict; it may be sync (run in a worker
    thread, off the event loop) or async (awaited). An awaitable a sync handler returns is
    awaited; one an async handler returns (`return fetch(url)`, an `await` missed) is a
    `permanent` observation, not its repr taken for a result. The dict is the handler's own
    copy, its lists, dicts and tuples too (other objects in it are shared): it may change it
    without changing the call the session records and the model is shown again.

    A `ToolSpec` made by hand checks only that the schema's required arguments are there:
    the types, ranges and enums of `parameters` are shown to the model, not enforced, so the
    handler checks its values itself. `@tool` validates every argument against the function's
    type hints (a wrong one is a `permanent` observation, the handler not called), as
    pydantic's JSON mode would when its Python mode refuses them (a strict `date` takes an
    ISO string, as the schema asks).

    Arguments are a dict (another mapping is taken for the dict of its items); a string
    holding a JSON object is taken for that object. Another
    bare value is taken for the only required argument when there is exactly one; for a tool
    with no required argument, None and "" mean no arguments. For a tool whose only argument
    is a required one, text starting with '{' that is not a JSON object, or is one that does
    not validate (say, `{}` or a code snippet), is that argument's value when it validates as
    such.

    A sync handler with a `timeout` runs on a pool of daemon threads (as many as the default
    executor has), so a call that times out does not hold a worker that other tools need: a
    worker stuck in a timed-out call leaves the pool and a new one takes its place. A thread
    cannot be killed: the timed-out handler keeps running in the background until it returns
    (its result is dropped), though it does not keep `asyncio.run` or the interpreter from
    exiting. A call whose timeout expires before a worker is free never runs. A sync handler
    without a timeout runs in the event loop's default executor (a sub-agent it runs with
    `asyncio.run` gets its own): `asyncio.run` waits for it at exit, even when its run was
    cancelled or timed out, so give a handler that may block for long a `timeout`.

    Args:
        name: Name the model calls the tool by: 1 to 64 ASCII letters, digits, '_' or '-',
            other than `FINAL_ANSWER` in any letter case (the final answer's action).
        description: What the tool does, shown to the model.
        handler: `dict -> result`, sync or async.
        parameters: JSON schema of the arguments object (a copy given `"type": "object"`
            when it has no "type", and `"properties": {}` when it has no "properties",
            which OpenAI refuses).
        required_fields: Argument names that must be present (added to the schema's
            `required`, in a copy of `parameters`).
        timeout: Seconds a call may take before it fails as `transient`. An async handler is
            cancelled then; one that catches that cancellation and returns ends the call
            with what it returned, late, as `asyncio.timeout` lets it.
        circuit_breaker: Fast-fails calls while the tool is unhealthy.
        run_inline: Run a sync handler on the event loop (for trivial, non-blocking handlers).
            Nothing can interrupt it there, so it takes no `timeout`.
        idempotent: Running a call twice has the effect of running it once, so a resumed run
            may repeat a call that an interruption left unfinished. With checkpoints on, a lone
            call of such a tool is not journaled before it runs (one write less per step): an
            interrupted step is run again, model reply included (unless the call is guarded:
            a runtime with an approval handler, `on_tool_call` middlewares or capabilities
            journals the reply before they decide, and a resume reuses it).
        takes_idempotency_key: The handler receives `idempotency_key` to deduplicate its side
            effects itself. With checkpoints on, the key is unique per session, step and call,
            and stable across a resume; without them (or when `ToolRegistry.call` is given no
            key) each call gets a fresh random key: unique per call, never repeated.

    Raises:
        ToolError: When the name is empty, not a valid tool name, or `FINAL_ANSWER` in any
            letter case (reserved for the final answer); the description is not a str;
            the handler is not callable, or is a generator function; `parameters` is not a
            dict holding an object's schema, or names an argument other than by 1 to 64
            ASCII letters, digits, '_', '.' or '-'; `required_fields` is a str, not names;
            the timeout is not a finite number above 0; `run_inline` comes with a timeout; or
            the circuit breaker has no `call` method. A name, description, handler,
            `parameters`, `required_fields`, timeout, circuit breaker or `run_inline` set
            later is checked too.

    `parameters` set later is taken as the constructor takes it, its `required` list then
    being `required_fields`; `required_fields` set later becomes the schema's `required`
    list (the model is shown it). A runtime shows the model a changed name, description or schema
    from its next run on. A registry knows a tool by the name it had when it was registered:
    rename a spec before registering it.
    """

    __slots__ = (
        "_check",
        "_direct",
        "_full_check",
        "_made_of",
        "_origin",
        "_validated_anew",
        "circuit_breaker",
        "description",
        "handler",
        "idempotent",
        "is_async",
        "name",
        "parameters",
        "required_fields",
        "run_inline",
        "takes_idempotency_key",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        description: str,
        handler: Callable[[dict[str, Any]], Any],
        parameters: dict[str, Any] | None = None,
        required_fields: Iterable[str] = (),
        timeout: float | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        run_inline: bool = False,
        idempotent: bool = False,
        takes_idempotency_key: bool = False,
    ) -> None:
        _check_name(name)
        _check_description(name, description)
        _check_handler(name, handler)
        _check_takes_arguments(name, handler)
        # Read as a bool by the check below (the flags are checked again as they are set).
        run_inline = _checked_flag(name, "run_inline", run_inline)
        _checked_timeout(name, timeout)
        _check_breaker(name, circuit_breaker)
        if parameters is not None:
            _check_schema(name, parameters)
        fields = _checked_fields(name, required_fields)
        _check_inline(name, run_inline, timeout)
        schema = _object_schema(parameters or {"type": "object", "properties": {}})
        declared = list(schema.get("required", ()))
        added = [f for f in dict.fromkeys(fields) if f not in declared]
        if added:  # a copy: the caller's schema stays as it was
            schema = {**schema, "required": declared + added}
        self.name: str = name
        self.description: str = description
        self.handler = handler
        self.parameters: dict[str, Any] = schema
        self.required_fields: tuple[str, ...] = tuple(declared + added)
        self.timeout = timeout
        self.circuit_breaker = circuit_breaker
        self.run_inline = run_inline
        self.idempotent = idempotent
        self.takes_idempotency_key = takes_idempotency_key
        self.is_async = is_async_callable(handler)
        # Checks an arguments dict; `@tool` puts pydantic's validator here. It may raise a
        # bare ValidationError, or whatever a validator raises: `check_arguments` wraps bare
        # values and explains failures. `_check` may drop keys it does not know (a cheaper
        # validator; the registry then sees fewer keys than it passed); `_full_check` refuses
        # them.
        self._check: Callable[[Any], dict[str, Any]] = self._check_required
        self._full_check: Callable[[Any], dict[str, Any]] = self._check_required
        # An async function the registry may call with the checked arguments as keywords
        # instead of going through `handler` (`@tool` sets it); cleared when a setting of
        # how calls run changes.
        self._direct: Callable[..., Awaitable[Any]] | None = None
        # Where `@tool` put the spec (module, qualified name): it pickles by that reference.
        self._origin: tuple[str, str] | None = None
        # What `@tool` made the spec of (the callable and the tool name it took): a spec
        # found at no module's top level pickles as that, made again (`_tool_remade`).
        self._made_of: tuple[Callable[..., Any], str | None] | None = None
        # Whether validation gives the handler no list or dict of the caller's arguments
        # (`@tool` tells, see `_validated_anew`): else the registry copies them first.
        self._validated_anew = False

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        """Pickles a `@tool` spec at a module's top level by reference, as a function.

        By its module and name, as `pickle` does a function: it is found again where it is
        unpickled (another process imports the module). The name is the function's when the
        spec took its place (`@tool` on a function), else the one the spec is bound to in
        the function's module (`search_tool = tool(search)`). Another `@tool` spec (in a
        list, say: `TOOLS = [tool(search)]`) pickles as the callable it was made of, which
        must pickle itself (a module's function, a method of an object that pickles), and
        its settings: unpickled, it is made again of them. A spec made by hand pickles by
        value (its handler must then pickle itself).
        """
        if self._origin is not None:
            module, qualname = self._origin
            with contextlib.suppress(ToolError):
                if _tool_at(module, qualname) is self:
                    return (_tool_at, self._origin)
            namespace = getattr(sys.modules.get(module), "__dict__", {})
            for name, value in list(namespace.items()):
                if value is self:
                    return (_tool_at, (module, name))
        if self._made_of is not None:
            settings = {name: getattr(self, name) for name in _REMADE_SETTINGS}
            return (_tool_remade, (*self._made_of, settings))
        return super().__reduce_ex__(protocol)

    def __copy__(self) -> ToolSpec:
        """A spec with the same settings, which may then be changed on its own."""
        clone = object.__new__(type(self))
        for slot in ToolSpec.__slots__:
            if hasattr(self, slot):
                value = getattr(self, slot)
                if getattr(value, "__self__", None) is self:  # a check of this spec's own
                    value = getattr(clone, value.__name__)  # settings: the clone's, for it
                object.__setattr__(clone, slot, value)
        _copy_subclass_state(self, clone, ToolSpec)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> ToolSpec:
        """As `__copy__`, with the settings that are data (the schema, say) copied deeply.

        What the spec calls (its handler, a method's object, its circuit breaker) is the
        user's and is shared, as in `__copy__`: a copy of a client would not be the one
        the user configured (nor can a lock be copied).
        """
        clone = self.__copy__()
        memo[id(self)] = clone
        for slot in _DATA_SLOTS:
            if hasattr(self, slot):
                object.__setattr__(clone, slot, copy.deepcopy(getattr(self, slot), memo))
        _copy_subclass_state(self, clone, ToolSpec, memo)  # a subclass's own: copied deeply
        return clone

    def __setattr__(self, name: str, value: Any) -> None:
        # Checked also when set after `@tool`; a copy or an unpickled spec sets its slots in
        # their order, before `name`.
        if name == "timeout":
            value = _checked_timeout(getattr(self, "name", "?"), value)
            # Else the timeout would be silently ignored (an unset slot reads as None).
            _check_inline(getattr(self, "name", "?"), getattr(self, "run_inline", None), value)
        elif name == "run_inline":
            value = _checked_flag(getattr(self, "name", "?"), name, value)
            _check_inline(getattr(self, "name", "?"), value, getattr(self, "timeout", None))
        elif name in ("idempotent", "takes_idempotency_key"):
            value = _checked_flag(getattr(self, "name", "?"), name, value)
        elif name == "description":
            _check_description(getattr(self, "name", "?"), value)
        elif name == "name":
            _check_name(value)
        elif name == "parameters":
            _check_schema(getattr(self, "name", "?"), value)
            if hasattr(self, "parameters"):  # set later: as the constructor takes it
                value = _object_schema(value)
                required = value.get("required", ())
                fields = tuple(f for f in required if isinstance(f, str))
                object.__setattr__(self, "required_fields", fields)
        elif name == "required_fields":
            value = tuple(dict.fromkeys(_checked_fields(getattr(self, "name", "?"), value)))
            if hasattr(self, "required_fields"):  # set later: the schema's list is this one
                schema = {k: v for k, v in self.parameters.items() if k != "required"}
                if value:
                    schema["required"] = list(value)
                object.__setattr__(self, "parameters", schema)
                SHOWN_CHANGES[0] += 1
        elif name == "circuit_breaker":
            _check_breaker(getattr(self, "name", "?"), value)
        elif name == "handler":
            _check_handler(getattr(self, "name", "?"), value)
            _check_takes_arguments(getattr(self, "name", "?"), value)
            # A sync handler set in place of an async one runs in a thread, and vice versa.
            object.__setattr__(self, "is_async", is_async_callable(value))
            if hasattr(self, "_made_of"):  # replaced: no longer what `@tool` made of it
                object.__setattr__(self, "_made_of", None)
        changed = name in _SHOWN and hasattr(self, name)  # a change, not a first setting
        object.__setattr__(self, name, value)
        if name in _RUN_SETTINGS:
            object.__setattr__(self, "_direct", None)
        elif changed:
            SHOWN_CHANGES[0] += 1

    def definition(self) -> dict[str, Any]:
        """Returns the tool as a provider-neutral definition dict (name, description, schema).

        The schema is as the model is shown it (`shown_schema`): `parameters` with its
        references inlined and what providers require of it added.
        """
        return {
            "name": self.name,
            "description": self.description,
            "parameters": shown_schema(self.parameters),
        }

    def check_arguments(self, arguments: Any) -> dict[str, Any]:
        """Validates arguments; returns them as a dict.

        Raises:
            ValueError: With a message for the model when arguments are missing or wrong
                (also when a validator fails with an exception other than ValueError).
        """
        try:
            return self._full_check(self._as_object(arguments))
        except Exception as error:
            sole = self._sole_argument()
            if sole is not None and isinstance(arguments, str) and arguments.lstrip()[:1] == "{":
                # Not an arguments object after all: a code snippet, say, or `{}`.
                with contextlib.suppress(Exception):
                    return self._full_check({sole: arguments})
            if isinstance(error, ValidationError):
                raise ValueError(f"invalid arguments: {self._explain(error)}") from None
            if isinstance(error, ValueError):
                raise
            # A validator's own failure, e.g. a KeyError.
            raise ValueError(
                f"invalid arguments: a validator failed with {_describe(error, with_type=True)}"
            ) from None

    def _sole_argument(self) -> str | None:
        """The name of the tool's only argument when that one is required, else None."""
        if len(self.required_fields) != 1:
            return None
        sole = self.required_fields[0]
        properties = self.parameters.get("properties") or {}
        return sole if all(p == sole for p in properties) else None

    def _explain(self, error: ValidationError) -> str:
        """The errors pydantic found, as one line for the model."""
        problems = []
        for e in error.errors():
            # An empty key as `''`: else the bare "arguments" (or `where.`) would name no key.
            where = ".".join(str(p) if p != "" else "''" for p in e["loc"]) or "arguments"
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
                known = ", ".join(self.parameters.get("properties", ())) or "none"
                problems.append(f"{where}: unexpected argument (the arguments are: {known})")
            elif e["type"] == "extra_forbidden":  # a key inside an argument's value
                problems.append(f"{where}: unexpected key")
            else:
                problems.append(f"{where}: {e['msg']}")
        return "; ".join(problems)

    def _as_object(self, arguments: Any) -> dict[str, Any]:
        """The arguments as a dict.

        Another mapping (a read-only view, say) is the dict of its items. A string holding
        a JSON object is that object; any other string starting with '{' is refused
        (`check_arguments` may then take it for the only argument). A string of keyword
        arguments as Python writes them in a call (`city="Paris", unit="C"`: a model's
        `get_weather(city="Paris")`), each named for one of the tool's parameters and given a
        literal, is those arguments. Another bare value is the only required argument; None
        and "" are no arguments for a tool that requires none, and so are the words `None`,
        `N/A` and `null` for a tool that takes none (for one that takes some, such a word
        may be a value).
        """
        if isinstance(arguments, dict):
            return arguments
        if isinstance(arguments, str):
            text = arguments.strip()
            if text.startswith("{"):
                try:
                    parsed = json.loads(text)
                except (ValueError, RecursionError):
                    parsed = None
                if nested_deeper_than(parsed, MAX_ARGUMENT_DEPTH):  # as the parsers refuse it
                    raise ValueError(f"arguments of {self.name} are {TOO_DEEP}")
                if not isinstance(parsed, dict):
                    raise ValueError(
                        f"arguments of {self.name} must be a JSON object, with double-quoted "
                        f"keys and strings; got text that is not one: {_preview(text)}"
                    )
                return parsed
            properties = self.parameters.get("properties") or {}
            if not text and not self.required_fields:
                return {}
            if not properties and _says_none(text):  # `Action Input: None`, LangChain-style
                return {}
            named = _keyword_arguments(text, properties)
            if named is not None:
                return named
        elif isinstance(arguments, Mapping):  # a read-only view, say: its keys are the names
            return dict(arguments)
        elif arguments is None and not self.required_fields:
            return {}
        if len(self.required_fields) == 1:
            return {self.required_fields[0]: arguments}
        raise ValueError(f"arguments of {self.name} must be a JSON object")

    def _check_required(self, arguments: Any) -> dict[str, Any]:
        checked = self._as_object(arguments)
        missing = [f for f in self.required_fields if f not in checked]
        if missing:
            raise ValueError(f"missing required argument(s) {', '.join(missing)}")
        return dict(checked)  # the handler's own copy: the caller's dict is left as it was

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Runs the handler (sync handlers off the event loop) under the per-tool timeout.

        An awaitable returned by a handler taken for sync is awaited on the event loop.

        Raises:
            TimeoutError: "timed out after N s" when the per-tool timeout expires; a
                `TimeoutError` the handler raises itself propagates as it is.
        """
        timeout = self.timeout
        if self.is_async:
            call: Awaitable[Any] = self.handler(arguments)
        elif self.run_inline:
            result = self.handler(arguments)
            if not inspect.isawaitable(result):
                return result
            call = result
        elif timeout is None:
            call = self._in_thread(arguments)
        else:
            call = self._in_pool(arguments, timeout)
        if timeout is None:
            return await call
        return await _with_timeout(call, timeout)

    async def _in_thread(self, arguments: dict[str, Any]) -> Any:
        """Runs a sync handler in a worker thread; awaits what it returns if that is awaitable."""
        result = await asyncio.to_thread(_call_sync, self.handler, arguments)
        if inspect.isawaitable(result):
            return await result
        return result

    async def _in_pool(self, arguments: dict[str, Any], timeout: float) -> Any:
        """Runs a sync handler on the daemon worker pool (for a call with a timeout).

        A call still waiting for a worker when its timeout expires is not run (see
        `_on_pool`).
        """
        result = await _on_pool(self.handler, arguments, time.monotonic() + timeout)
        if inspect.isawaitable(result):
            return await result
        return result

    def __repr__(self) -> str:
        return f"ToolSpec(name={self.name!r})"


async def _on_pool(
    handler: Callable[[dict[str, Any]], Any],
    arguments: dict[str, Any],
    deadline: float,
    pool: _WorkerPool | None = None,
) -> Any:
    """`handler(arguments)`, run on a daemon worker pool in a copy of the caller's context.

    `pool`: None for the sync tools' pool.

    A call abandoned (timed out or cancelled) while it runs leaves its worker running it
    without holding a place in the pool; its outcome is then dropped. A call still waiting
    for a worker at `deadline` (`time.monotonic()`) is not run.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    job = _Job(handler, arguments, contextvars.copy_context(), loop, future, deadline)
    pool = _POOL if pool is None else pool
    pool.submit(job)
    try:
        return await future
    except asyncio.CancelledError:
        pool.abandon(job)
        raise


async def run_blocking(fn: Callable[[], T]) -> T:
    """`fn()`, a blocking call (an embedder's network call, say), run off the event loop.

    On a worker pool of its own, as the sync tools have theirs: a call its caller gives up
    on (a run's timeout, a cancellation) frees its place for others while it finishes,
    rather than hold one of asyncio's default executor's few threads, which checkpoint
    writes wait for; and slow embeddings of memory recalls never keep a tool from running.
    """
    result: T = await _on_pool(lambda _: fn(), {}, math.inf, _BLOCKING_POOL)
    return result


async def _with_timeout(call: Awaitable[Any], timeout: float) -> Any:
    """Awaits `call` for at most `timeout` s; only an expiry says "timed out after N s".

    The call runs in the caller's task, as one without a timeout: a cancellation that lands
    as the call ends is never lost (`asyncio.wait_for` on Python 3.11 returned the result
    then, and the cancelled run went on), and a `SystemExit` is raised as it is. From Python
    3.13, a tool that catches its caller's cancellation and returns still ends cancelled.
    """
    task = current_task()
    # One asked but not delivered yet is the caller's, delivered before the timeout's scope
    # counts it (else a tool slow to unwind made it a timeout, and it was lost).
    cancels = await cancellations_so_far(task, call)
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            result = await call
    except _TIMEOUT_ERRORS:
        if not scope.expired():  # the tool's own TimeoutError
            raise
        raise _ToolTimeoutError(f"timed out after {timeout} s") from None
    if task is not None and task.cancelling() > cancels:
        # The caller was cancelled and the tool swallowed it (caught `CancelledError` and
        # returned): the cancellation still stands, as `asyncio.wait_for` kept it.
        _cancelled_while_running(task, cancels)
    return result


def _call_sync(handler: Callable[[dict[str, Any]], Any], arguments: dict[str, Any]) -> Any:
    """Calls a sync handler (in a worker thread); what a future cannot carry is replaced.

    A future refuses a StopIteration (the call awaiting it would never finish), and hands a
    GeneratorExit to the awaiting task by `throw`, which closes every coroutine of the call
    instead of letting `ToolRegistry.call` catch it: each becomes a RuntimeError.
    """
    try:
        return handler(arguments)
    except (StopIteration, GeneratorExit) as error:
        raise _carried_error(error) from error


def _carried_error(error: BaseException) -> RuntimeError:
    """The RuntimeError that stands for a tool's StopIteration or GeneratorExit (its cause)."""
    replacement = RuntimeError(f"the tool raised {error!r}")
    replacement.__cause__ = error
    return replacement


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Hands a worker thread's outcome to its future, unless the call has timed out."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, (StopIteration, GeneratorExit)):  # see `_call_sync`
        future.set_exception(_carried_error(error))
    else:
        future.set_exception(error)


# States of a `_Job`.
_QUEUED = "queued"
_RUNNING = "running"
_DONE = "done"
_ABANDONED = "abandoned"  # its call gave up on it (timed out, or was cancelled)


class _Job:
    """One call of a sync handler on the worker pool."""

    __slots__ = ("arguments", "context", "deadline", "future", "handler", "loop", "state")

    def __init__(
        self,
        handler: Callable[[dict[str, Any]], Any],
        arguments: dict[str, Any],
        context: contextvars.Context,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        deadline: float,
    ) -> None:
        self.handler = handler
        self.arguments = arguments
        self.context = context
        self.loop = loop
        self.future = future
        self.deadline = deadline  # `time.monotonic()` past which the call has timed out
        self.state = _QUEUED

    def run(self) -> None:
        """Runs the handler in the caller's context; hands its outcome to the caller's loop."""
        error: BaseException | None = None
        result: Any = None
        try:
            result = self.context.run(self.handler, self.arguments)
        except BaseException as exc:  # handed to the awaiting coroutine, as to_thread does
            error = exc
        # RuntimeError: the event loop has closed, and nobody waits for this call.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        del result, error  # no cycle through the traceback's frames


class _WorkerPool:
    """Daemon threads that run blocking calls (one pool for sync tools, one for the rest).

    At most `size` workers run calls that someone still awaits; further calls wait in a
    queue, and idle workers wait for calls. A call abandoned while it runs gives its worker's
    place to a new worker: the stuck worker finishes the call, drops its outcome and exits. A
    call abandoned while it waits, or whose timeout has expired by the time a worker is free,
    is never run, nor is one whose caller was cancelled meanwhile (a cancelled run's queued
    calls, even as its running ones give their places to new workers). Being daemon threads,
    workers do not keep the interpreter from exiting.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        """The workers' thread names start with it."""
        self._reset()

    def _reset(self) -> None:
        """Starts empty (also in a forked child, where the parent's workers do not exist)."""
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._jobs: collections.deque[_Job] = collections.deque()  # abandoned ones included
        self._waiting = 0  # jobs in the queue not abandoned
        self._workers = 0  # workers not stuck in an abandoned call
        self._idle = 0  # of these, the ones waiting with no job meant for them yet
        self._started = 0

    def submit(self, job: _Job) -> None:
        """Queues `job`, for an idle worker or a new one when the pool has room.

        Raises:
            RuntimeError: When no worker can be started and none exists to run the job.
        """
        with self._lock:
            self._jobs.append(job)
            self._waiting += 1
            if self._idle:
                self._idle -= 1
                self._wakeup.notify()
            elif self._workers < self.size:
                try:
                    self._start()
                except RuntimeError:  # can't start new thread
                    if self._workers:
                        return  # a busy worker runs it later (if its timeout allows)
                    self._jobs.remove(job)
                    self._waiting -= 1
                    raise

    def abandon(self, job: _Job) -> None:
        """Gives up on `job`: dropped if it waits; if it runs, its worker's place is freed."""
        with self._lock:
            if job.state is _QUEUED:
                job.state = _ABANDONED
                self._waiting -= 1
            elif job.state is _RUNNING:
                job.state = _ABANDONED
                self._workers -= 1
                if self._waiting > self._idle:  # calls wait: a worker for them at once
                    with contextlib.suppress(RuntimeError):
                        self._start()

    def _start(self) -> None:
        """Starts a worker (with the lock held)."""
        self._workers += 1
        self._started += 1
        name = f"{self.name}-{self._started}"
        try:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        except BaseException:
            self._workers -= 1
            raise

    def _work(self) -> None:
        """A worker's loop: takes jobs until one it runs is abandoned."""
        lock, wakeup, jobs = self._lock, self._wakeup, self._jobs
        while True:
            with lock:
                while not jobs:
                    self._idle += 1
                    wakeup.wait()  # `submit` takes it off the idle count
                job = jobs.popleft()
                runnable = job.state is _QUEUED  # else abandoned while it waited
                if runnable:
                    self._waiting -= 1
                    # Timed out while it waited, or its caller cancelled (which cancels the
                    # future at once, before the caller's task gets to `abandon`): the call
                    # is about to give up, and must not run.
                    if time.monotonic() < job.deadline and not job.future.done():
                        job.state = _RUNNING
                    else:
                        job.state = _ABANDONED
                        runnable = False
            if runnable:
                job.run()
                with lock:
                    if job.state is _ABANDONED:
                        return  # another worker has taken this one's place
                    job.state = _DONE
            del job  # an idle worker holds on to no call's loop or arguments


# Each the default executor's size.
_POOL = _WorkerPool(min(32, (os.cpu_count() or 1) + 4), "llm-agent-runtime-tool")
_BLOCKING_POOL = _WorkerPool(_POOL.size, "llm-agent-runtime-blocking")
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._reset)
    os.register_at_fork(after_in_child=_BLOCKING_POOL._reset)


_ARG_SECTIONS = frozenset(
    {
        "args",
        "arguments",
        "parameters",
        "params",
        "keyword args",
        "keyword arguments",
        "other parameters",
    }
)
# Google-style section headers; any other single word ending in ":" on a line of its own,
# at the docstring's left margin, is taken for a section header too.
_SECTIONS = _ARG_SECTIONS | {
    "attributes",
    "example",
    "examples",
    "except",
    "exceptions",
    "methods",
    "note",
    "notes",
    "raise",
    "raises",
    "receives",
    "references",
    "return",
    "returns",
    "see also",
    "todo",
    "warning",
    "warnings",
    "warns",
    "yield",
    "yields",
}
# `name: text`, `name (type): text`, `*args: text` (Google style); the type may hold one
# level of parentheses, as in `(dict(str, int))`.
_GOOGLE_ARG = re.compile(r"\*{0,2}(\w+)\s*(?:\((?:[^()]|\([^()]*\))*\))?\s*:(.*)")
# `:param name: text`, `:param type name: text` (Sphinx style).
_SPHINX_ARG = re.compile(
    r":(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:]*\s)?\**(\w+)\s*:(.*)"
)
# Any other Sphinx field: `:returns: ...`, `:type name: ...`, `:raises E: ...`.
_SPHINX_FIELD = re.compile(r":[^:\s][^:]*:")
# The line under a NumPy-style section header.
_UNDERLINE = re.compile(r"-{3,}|={3,}")


def _section_header(raw: str) -> str | None:
    """The lower-cased section name when `raw` is a section header line, else None."""
    if raw[:1].isspace() or not raw.rstrip().endswith(":"):
        return None
    name = raw.strip()[:-1].strip().lower()
    if name in _SECTIONS or name.isalpha():
        return name
    return None


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """Splits a docstring into a summary and per-argument descriptions.

    Google (`Args:` with `name (type): text`, wrapped onto deeper-indented lines), Sphinx
    (`:param name: text`) and NumPy (`Parameters` underlined by dashes, `name : type` with
    the text indented below) styles are understood. The summary is the prose outside
    sections, whole, made one line (a ReAct prompt lists a tool a line); `Returns`,
    `Raises`, `Examples` and other sections are left out of it. An underlined line is a
    section header only when it names a known section; another one is a title, part of
    the prose (its underline is not).
    """
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines: list[str] = []
    arg_docs: dict[str, str] = {}
    section: str | None = None  # lower-cased name of the current section; None in the prose
    numpy = False  # the current section has an underlined (NumPy-style) header
    current: list[str] = []  # the argument(s) whose description the next lines continue
    current_indent = 0
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        indent = len(raw) - len(raw.lstrip())
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if _UNDERLINE.fullmatch(line):
            continue  # a rule, or the underline of a title: no text
        if indent == 0 and _UNDERLINE.fullmatch(following):
            if line.lower() in _SECTIONS:  # a NumPy-style section header
                section, numpy, current = line.lower(), True, []
                continue
            section, numpy, current = None, False, []  # an underlined title: prose
        if indent == 0 and line.startswith(":"):
            match = _SPHINX_ARG.fullmatch(line)
            if match is not None:
                current, current_indent = [match[1]], 0
                arg_docs[match[1]] = match[2].strip()
                section, numpy = "sphinx fields", False
                continue
            if _SPHINX_FIELD.match(line):
                current, section, numpy = [], "sphinx fields", False
                continue
        header = _section_header(raw)
        if header is not None:
            section, numpy, current = header, False, []
            continue
        if indent == 0 and not numpy:
            section, current = None, []  # back at the left margin: the section has ended
        if section is None:
            summary_lines.append(line)
        elif current and indent > current_indent:  # a description continued
            for name in current:
                arg_docs[name] = f"{arg_docs[name]} {line}".strip()
        elif section in _ARG_SECTIONS and numpy:
            if indent == 0:  # `name : type`, or `x, y : type`
                current = [n.strip().lstrip("*") for n in line.split(":", 1)[0].split(",")]
                current = [n for n in current if n.isidentifier()]
                current_indent = 0
                for name in current:
                    arg_docs[name] = ""
        elif section in _ARG_SECTIONS and not numpy:
            match = _GOOGLE_ARG.fullmatch(line)
            if match is not None:
                current, current_indent = [match[1]], indent
                arg_docs[match[1]] = match[2].strip()
            elif current:  # text at the argument's own indentation: still its description
                for name in current:
                    arg_docs[name] = f"{arg_docs[name]} {line}".strip()
    # Whole: one cut after its first lines would end mid-sentence when the prose wraps.
    return " ".join(summary_lines), {k: v for k, v in arg_docs.items() if v}


def _base_callable(fn: Any) -> Any:
    """The callable under any `functools.partial` layers."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _partial_keywords(fn: Any) -> set[str]:
    """Names of the arguments `functools.partial` layers fix by keyword (not for the model)."""
    names: set[str] = set()
    while isinstance(fn, functools.partial):
        names.update(fn.keywords)
        fn = fn.func
    return names


def _hidden_parameters(func: Any, signature: inspect.Signature) -> set[str]:
    """Keyword parameters of the function under `func` that `signature` does not show.

    A bound method's first (`self`, `cls`), so too a callable object's `__call__`'s and a
    class's `__init__`'s, and those a partial fixes by position: their
    values are bound already, so one passed again through `**kwargs` would fail the call.
    """
    inner = _base_callable(func)
    if isinstance(inner, type):  # a class: its `__init__` (or `__new__`) takes `self`
        init = inner.__init__  # type: ignore[misc]  # the class's own, read from the class
        inner = init if init is not object.__init__ else inner.__new__
    elif not inspect.isroutine(inner):  # a callable object: its `__call__` takes `self`
        inner = type(inner).__call__
    inner = getattr(inner, "__func__", inner)  # a bound method's function
    try:
        own = inspect.signature(inner).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to hide
        return set()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in own.items() if p.kind in keyword and n not in signature.parameters}


def _callable_name(fn: Any) -> str:
    """A function's (or method's, or class's) name; a callable object's class name."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _callable_doc(fn: Any) -> str:
    """The docstring to describe a tool by; for a callable object, its `__call__`'s or class's."""
    if inspect.isroutine(fn) or isinstance(fn, type):
        return fn.__doc__ or ""
    call = type(fn).__call__
    return getattr(call, "__doc__", None) or type(fn).__doc__ or ""


def _globals_of(fn: Any) -> dict[str, Any]:
    """The module globals a callable's string annotations are resolved in."""
    fn = _base_callable(fn)
    if isinstance(fn, type):
        # Its own `__init__` or the one it inherits: a base's, defined in the base's module.
        fn = next(vars(k)["__init__"] for k in fn.__mro__ if "__init__" in vars(k))
    elif not inspect.isroutine(fn):
        fn = type(fn).__call__
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    namespace = getattr(fn, "__globals__", None)
    return namespace if isinstance(namespace, dict) else {}


def _signature(fn: Any, tool_name: str, fixed: Collection[str] = ()) -> inspect.Signature:
    """`fn`'s signature with its parameters' annotations resolved in `fn`'s module.

    Names quoted inside an annotation (`list["Point"]`) are resolved too, as pydantic's
    `validate_call` resolves them. Those of the `fixed` parameters (a partial's: never
    shown, nor checked) are left as they are: a type imported for type checkers only is
    no error there.

    Raises:
        ToolError: When the signature cannot be read or an annotation cannot be resolved
            (naming the parameter).
    """
    try:
        raw = inspect.signature(fn)
    except (TypeError, ValueError) as error:
        raise ToolError(
            f"cannot make tool {tool_name!r}: its signature cannot be read ({error})",
            tool=tool_name,
        ) from error
    empty = inspect.Parameter.empty
    if all(p.annotation is empty for p in raw.parameters.values()):
        return raw.replace(return_annotation=inspect.Signature.empty)
    namespace = _globals_of(fn)
    params = []
    for param in raw.parameters.values():
        annotation = param.annotation
        if param.name in fixed:
            params.append(param)
            continue
        if annotation is not empty:
            # Also resolves the names quoted inside a generic (`list["Point"]`,
            # `Optional["Point"]`), which pydantic would look up in this module, not `fn`'s.
            holder = SimpleNamespace(__annotations__={param.name: annotation})
            with contextlib.suppress(Exception):  # left as it is; a whole str is tried below
                annotation = get_type_hints(holder, namespace, include_extras=True)[param.name]
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # what inspect's eval_str does
            except Exception as error:
                raise ToolError(
                    f"cannot make tool {tool_name!r}: the annotation {annotation!r} of "
                    f"parameter {param.name!r} cannot be resolved "
                    f"({_describe(error, with_type=True)}); the type must be defined or "
                    "imported at module level before the tool is made (a class defined "
                    "below `@tool` is not there yet), not local to a function, nor imported "
                    "under `if TYPE_CHECKING:`",
                    tool=tool_name,
                ) from error
        params.append(param.replace(annotation=annotation))
    return raw.replace(parameters=params, return_annotation=inspect.Signature.empty)


class _NotPassed:
    """The default of a TypedDict key that is not required: omitted, it is not passed."""

    def __repr__(self) -> str:
        return "<not passed>"


# No JSON form: the schema shows no default for such a key.
_NOT_PASSED: Any = _NotPassed()

# `Unpack` and the qualifiers of a TypedDict's keys, as `typing` and `typing_extensions` spell
# them (`ReadOnly` is in `typing` from Python 3.13, in `typing_extensions` from 4.9).
_UNPACK = (typing.Unpack, typing_extensions.Unpack)
# Type aliases (`type X = ...` is `typing`'s, from Python 3.12).
_ALIAS_TYPES: tuple[type, ...] = tuple(
    {
        alias
        for module in (typing, typing_extensions)
        if (alias := getattr(module, "TypeAliasType", None))
    }
)
_KEY_QUALIFIERS = tuple(
    form
    for name in ("Required", "NotRequired", "ReadOnly")
    for module in (typing, typing_extensions)
    if (form := getattr(module, name, None)) is not None
)


def _key_type(annotation: Any) -> tuple[Any, set[Any]]:
    """A TypedDict key's type without its qualifiers (also inside `Annotated`), and those.

    The qualifiers are `Required`, `NotRequired` and `ReadOnly`, which say nothing of the
    key's value: pydantic unwraps them so.
    """
    qualifiers: set[Any] = set()
    metadata: tuple[Any, ...] = ()
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:  # `Annotated[Required[int], ...]`: the metadata is kept
            metadata = (*annotation.__metadata__, *metadata)
            annotation = annotation.__origin__
        elif origin in _KEY_QUALIFIERS:
            qualifiers.add(origin)
            annotation = get_args(annotation)[0]
        else:
            break
    return (Annotated[(annotation, *metadata)] if metadata else annotation), qualifiers


def _unpacked_keywords(
    tool_name: str, signature: inspect.Signature, hidden: Collection[str]
) -> inspect.Signature:
    """`signature` with `**kwargs: Unpack[SomeTypedDict]` (PEP 692) made a parameter per key.

    The keys are keyword-only parameters, after the named ones, in the TypedDict's order:
    they are shown, checked, described and fixed by a partial as parameters are. A key that
    is not required (by the TypedDict's totality, `Required[...]` and `NotRequired[...]`, as
    pydantic reads them) defaults to `_NOT_PASSED`: omitted, it is not passed, and the
    function's kwargs lack it; unless its `Field` has a default, which is filled in then, as
    pydantic's `validate_call` fills it in. A TypedDict with `extra_items` (PEP 728) keeps
    **kwargs, of that type.

    Raises:
        ToolError: When `Unpack` holds no TypedDict class, or one with a pydantic config
            (which its keys, checked one by one, would not follow), or its annotations
            cannot be resolved; when a key has the name of a parameter (or of one in
            `hidden`, which the function takes though `signature` does not show it): a
            call could not pass both; when a key's name is no Python parameter's (`from`),
            or it is hidden by `SkipJsonSchema` though a call would have to pass it.
    """
    kind = inspect.Parameter
    params = list(signature.parameters.values())
    if not params or params[-1].kind is not kind.VAR_KEYWORD:
        return signature
    var_keyword = params[-1]
    if get_origin(var_keyword.annotation) not in _UNPACK:
        return signature
    unpacked = get_args(var_keyword.annotation)[0]
    # A generic TypedDict given its type arguments (`Page[int]`): its class, and what each
    # of its type variables stands for.
    typed_dict = get_origin(unpacked) or unpacked
    bound = dict(zip(getattr(typed_dict, "__parameters__", ()), get_args(unpacked), strict=False))
    what = getattr(typed_dict, "__qualname__", repr(typed_dict))
    if bound:
        names = (a.__qualname__ if isinstance(a, type) else repr(a) for a in bound.values())
        what += f"[{', '.join(names)}]"
    where = f"cannot make tool {tool_name!r}: **{var_keyword.name}: Unpack[{what}]"
    if not is_typeddict(typed_dict):
        raise ToolError(
            f"{where} unpacks {what}, which is no TypedDict class (PEP 692 unpacks a "
            "TypedDict's keys into keyword arguments)",
            tool=tool_name,
        )
    if getattr(typed_dict, "__pydantic_config__", None) is not None:
        raise ToolError(
            f"{where}: the pydantic config of {what} would not apply to its keys, each "
            "checked as a parameter; give the keys' types their own settings "
            "(`Annotated[int, Strict()]`, say)",
            tool=tool_name,
        )
    try:
        # Its own name resolves: a recursive TypedDict defined in a function names itself.
        local = {getattr(typed_dict, "__name__", ""): typed_dict}
        hints = get_type_hints(typed_dict, localns=local, include_extras=True)
    except Exception as error:
        raise ToolError(
            f"{where}: the annotations of {what} cannot be resolved "
            f"({_describe(error, with_type=True)})",
            tool=tool_name,
        ) from error
    taken = set(signature.parameters) | set(hidden)
    keys: list[inspect.Parameter] = []
    for key, hint in hints.items():
        if bound:
            hint = _with_type_arguments(hint, bound)
        if key in taken:
            raise ToolError(
                f"{where}: key {key!r} of {what} has the name of parameter {key!r} (a call "
                "could not pass both); rename one of them",
                tool=tool_name,
            )
        annotation, qualifiers = _key_type(hint)
        required = (
            key in typed_dict.__required_keys__ or typing.Required in qualifiers
        ) and typing.NotRequired not in qualifiers
        metadata = getattr(annotation, "__metadata__", ())
        has_default = any(isinstance(m, FieldInfo) and not m.is_required() for m in metadata)
        if _skips_schema(annotation) and (required or has_default):
            raise ToolError(
                f"{where}: key {key!r} of {what} is hidden from the model (SkipJsonSchema), "
                "which can then never pass it; make it NotRequired, with no `Field` default "
                "(a hidden key is never passed)",
                tool=tool_name,
            )
        default = kind.empty if required or has_default else _NOT_PASSED
        try:
            keys.append(
                inspect.Parameter(key, kind.KEYWORD_ONLY, default=default, annotation=annotation)
            )
        except ValueError as error:  # a keyword (`from`), or no identifier
            raise ToolError(
                f"{where}: key {key!r} of {what} is no Python parameter name, which a "
                "tool's keys must be; name it otherwise, with the alias "
                f"`Annotated[..., Field(alias={key!r})]`",
                tool=tool_name,
            ) from error
    extra = getattr(typed_dict, "__extra_items__", None)
    no_extra = (None, getattr(typing_extensions, "NoExtraItems", None), typing.Never)
    if all(extra is not n for n in no_extra):  # PEP 728's `extra_items=T`: **kwargs of T
        keys.append(var_keyword.replace(annotation=_key_type(extra)[0]))
    return signature.replace(parameters=[*params[:-1], *keys])


def _with_type_arguments(hint: Any, bound: Mapping[Any, Any]) -> Any:
    """`hint` with the type variables in `bound` replaced by their types.

    `list[T]` becomes `list[int]`; a variable not in `bound` stays.
    """
    if isinstance(hint, TypeVar):
        return bound.get(hint, hint)
    variables = getattr(hint, "__parameters__", ())
    if not variables:
        return hint
    return hint[tuple(bound.get(v, v) for v in variables)]


def _tool_at(module: str, qualname: str) -> ToolSpec:
    """The `ToolSpec` named `qualname` in `module` (imported if need be).

    How a `@tool` spec is unpickled (see `ToolSpec.__reduce_ex__`).

    Raises:
        ToolError: No spec goes by that name there (the module or the tool was renamed).
    """
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        found = None
    if not isinstance(found, ToolSpec):
        raise ToolError(f"no tool is defined as {module}.{qualname} (it was pickled so)")
    return found


_REMADE_SETTINGS = (
    "idempotent",
    "circuit_breaker",
    "run_inline",
    "timeout",
    "takes_idempotency_key",
    "name",
    "description",
    "parameters",
)
"""A `@tool` spec's settings, as a pickle of it keeps them (see `_tool_remade`), in an order
they can be set in: the timeout after `run_inline`, which a timeout may not go with."""


def _tool_remade(func: Callable[..., Any], name: str | None, settings: dict[str, Any]) -> ToolSpec:
    """The `@tool` spec of `func` (named `name`, when the tool was named), with `settings`.

    How a `@tool` spec found at no module's top level is unpickled (see
    `ToolSpec.__reduce_ex__`): a setting changed after `@tool` is set again.
    """
    spec = tool(func, name=name)
    for setting, value in settings.items():
        if getattr(spec, setting) != value:
            setattr(spec, setting, value)
    return spec


@overload
def tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    circuit_breaker: CircuitBreaker | None = None,
    idempotent: bool = False,
) -> ToolSpec: ...


@overload
def tool(
    fn: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    circuit_breaker: CircuitBreaker | None = None,
    idempotent: bool = False,
) -> Callable[[Callable[..., Any]], ToolSpec]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    circuit_breaker: CircuitBreaker | None = None,
    idempotent: bool = False,
) -> ToolSpec | Callable[[Callable[..., Any]], ToolSpec]:
    """Turns a typed function into a `ToolSpec`; schema from type hints and docstring.

    The function receives the arguments as keyword arguments, validated by pydantic; an
    argument the function does not take is refused (the schema says
    `"additionalProperties": false`). A default may be a pydantic `Field(...)`, whose
    constraints are then checked. Defaults follow pydantic's `validate_call`: a signature
    default replaces one from `Annotated[..., Field(default=...)]`; an omitted argument gets
    its default unvalidated (unless `Field(validate_default=True)`); a default the validator
    would refuse if the model passed it (say `limit: int = None`) is left out of the schema,
    and one that `validate_default` refuses makes the argument required there. A default
    with no JSON form (`math.inf`, NaN, also inside a list) is left out of the schema too.
    An empty `[]`, `{}` or `set()` default is a new one at each call (one agent's call never
    sees another's); any other default object is the function's own, shared by every call
    as Python shares it. Positional-only parameters are passed positionally;
    `*args: T` is an optional argument holding a list of `T`; `**kwargs: T` lets the model
    pass further arguments of type `T`. `**kwargs: Unpack[SomeTypedDict]` (PEP 692; `Unpack`,
    `Required`, `NotRequired` and `ReadOnly` from `typing` or `typing_extensions`) makes each
    key an argument, after the named ones in the TypedDict's order, typed and required as the
    TypedDict says (`ReadOnly` is ignored), as a keyword-only parameter would be: its
    `Annotated[..., Field(...)]` constraints, alias and default apply, its docstring
    description is shown; no other key is taken (unless the TypedDict has `extra_items=T`:
    further arguments of type `T`). A key the model omits is not passed (the function's
    kwargs lack it), unless its `Field` has a default. A key fixed by a partial, or hidden by
    `SkipJsonSchema` (a key that is not required, with no `Field` default), is never passed by
    the model, as such a parameter; a key named `idempotency_key` receives the call's key.
    pydantic's `validate_call` reads such a signature the same way, but ignores an unknown key,
    which a tool refuses. Functions, bound methods, `functools.partial`
    objects (arguments the partial fixes by keyword are not shown to the model, nor taken
    from it, not even through `**kwargs`) and callable objects can be tools. A parameter
    whose `Field` has an alias (or a validation alias) goes by it, in the schema and in the
    arguments (an `AliasPath` or `AliasChoices` by its first path of a single key, as
    pydantic's schema names it). A parameter annotated
    `SkipJsonSchema[T]` is not for the model, as one a partial fixes: it is not in the schema,
    passing it is refused, and every call gets its default. A `Literal` of plain Enum members
    takes the values its schema lists (the members' values), as well as the members. Argument
    descriptions come from a Google, Sphinx or NumPy style docstring; one for a name that is
    no parameter (a misspelling, say) is not shown, and a `UserWarning` says so.

    Args:
        fn: The function (when used as `@tool` without parentheses).
        name: Tool name (default: the function's name, or a callable object's class name).
        description: What the model is told the tool does (default: the docstring's
            summary; a process run with `python -OO` has no docstrings).
        timeout: Per-call timeout in seconds.
        circuit_breaker: Optional breaker for this tool.
        idempotent: Calls may be repeated safely (see `ToolSpec`). A function with a parameter
            named `idempotency_key` (or such a key in `**kwargs: Unpack[...]`) receives the
            call's key, and is not shown that parameter.

    Returns:
        A `ToolSpec`, or a decorator producing one. A spec made at a module's top level
        pickles by reference, as a function does (to a worker process, say).

    Raises:
        ToolError: When the name is not a valid tool name (a lambda's `<lambda>`: pass
            `name=`) or is `FINAL_ANSWER` in any letter case (reserved for the final
            answer: a function `final_answer` needs another `name=`), an annotation cannot
            be resolved, a parameter's type has no JSON
            schema, or a parameter's default and `Field(...)` settings conflict (a default
            and a default factory, which `validate_call` refuses too); when a parameter goes
            by a name other than 1 to 64 ASCII letters, digits, '_', '.' or '-' (Anthropic
            refuses others: an alias can rename it), or by a validation alias with no path of
            a single key (`AliasPath("config", "limit")`, which no schema can show), or is
            hidden by `SkipJsonSchema` with no default in the signature (or a `Field(...)`
            there); the message names the parameter. When `**kwargs: Unpack[...]` holds no
            TypedDict class, or one with a pydantic config (`with_config`, which its keys,
            checked as parameters, would not follow), or one with a key named as a parameter
            (a call could not pass both), a key no Python parameter can be named (`from`: an
            alias can give it that name), or a required key hidden by `SkipJsonSchema`. Also
            when the function is a generator (return a list instead), is a method decorated
            in its class body or taken from its class (use the bound method:
            `tool(instance.method)`; for a classmethod, `tool(TheClass.method)` after the
            class), or the timeout is not a finite number above 0, or the circuit breaker has
            no `call` method; when `fn` is a str (`@tool("search")`: the name goes by
            keyword, `@tool(name="search")`).
    """

    def build(func: Callable[..., Any]) -> ToolSpec:
        if isinstance(func, classmethod):  # `@tool` above `@classmethod`, in the class body
            _refuse_class_body_classmethod(name, func)
        if isinstance(func, staticmethod):
            # `@tool` above `@staticmethod`, in the class body: its function (Python 3.11's
            # `inspect` does not look inside, so an async one was run as sync, a generator
            # not refused).
            func = func.__func__
        if isinstance(func, str):  # `@tool("search")`, as some libraries name their tools
            raise ToolError(
                f"cannot make a tool of {func!r}: a str is not a function; to name the tool, "
                f"pass the name by keyword: @tool(name={func!r})",
                tool=func,
            )
        if not callable(func):
            raise ToolError(f"cannot make a tool of {func!r}: it is not callable")
        base = _base_callable(func)
        tool_name = name if name is not None else _callable_name(base)
        if name is None and _NAME.fullmatch(tool_name) is None:
            raise ToolError(
                f"cannot make a tool of {func!r}: its name {tool_name!r} is not a valid tool "
                "name (1 to 64 ASCII letters, digits, '_' or '-'); pass name= to @tool",
                tool=tool_name,
            )
        _check_name(tool_name)
        _check_handler(tool_name, func)
        summary, arg_docs = _doc_parts(_callable_doc(base))
        if description is not None:
            summary = description
        fixed = _partial_keywords(func)
        signature = _signature(func, tool_name, fixed)
        _refuse_unbound_method(tool_name, base, signature, fixed)
        hidden = _hidden_parameters(func, signature)
        # The function's parameters, with those `**kwargs: Unpack[SomeTypedDict]` stands for.
        unpacked = _unpacked_keywords(tool_name, signature, hidden)
        kind = inspect.Parameter
        model_fields: dict[str, Any] = {}
        typed_fields: dict[str, Any] = {}
        annotations: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        positional: list[str] = []  # passed positionally (before `*args`, or positional-only)
        var_positional: str | None = None
        var_keyword: Any = None
        has_var_keyword = False
        var_keyword_name: str | None = None
        fills_defaults = False  # the validator adds omitted arguments' `Field` defaults
        order: list[str] = []  # the parameters in the schema, in order
        field_types: dict[str, Any] = {}  # what the validator checks each parameter's value by
        validated_defaults: dict[str, Any] = {}  # defaults a `validate_default` checks per call
        called: list[str] = []  # the names they go by (other than *args)
        path_keys: dict[str, str] = {}  # field -> the key a path alias takes (see `_alias_key`)
        # Keyword parameters the model is not shown, which **kwargs must not take (see
        # `_schema_and_check`): those a partial fixes, a bound method's first, and those
        # hidden below.
        unshown = set(fixed) | hidden
        params = [p for p in unpacked.parameters.values() if p.name not in fixed]
        takes_var_positional = any(p.kind is kind.VAR_POSITIONAL for p in params)
        for index, param in enumerate(params):
            pname = param.name
            annotation = (
                Any if param.annotation is kind.empty else _checked_as_shown(param.annotation)
            )
            if param.kind is kind.VAR_KEYWORD:
                has_var_keyword, var_keyword, var_keyword_name = True, annotation, pname
                continue
            if param.kind is kind.POSITIONAL_ONLY or (
                param.kind is kind.POSITIONAL_OR_KEYWORD and takes_var_positional
            ):
                positional.append(pname)
                defaults[pname] = param.default
            if pname == IDEMPOTENCY_KEY:
                continue
            if _skips_schema(annotation):
                # Hidden from the model: kept out of the validator too, as an argument a
                # partial fixes. pydantic would leave it out of the schema yet take it from the
                # model, and the schema's properties would no longer line up with `order`.
                _check_hidden_default(tool_name, param)
                if param.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY):
                    unshown.add(pname)
                continue
            annotations[pname] = annotation
            # Schema fields are named f0, f1... with the parameter's name as their alias, so
            # no name (`_private`, `model_config`, `schema`) clashes with pydantic's own.
            field = f"f{index}"
            default = param.default
            order.append(pname)
            if param.kind is kind.VAR_POSITIONAL:
                var_positional = pname
                items: Any = list[annotation]  # type: ignore[valid-type]
                model_fields[field] = (items, Field(default_factory=list, alias=pname))
                typed_fields[pname] = NotRequired[items]
                continue
            # The parameter's own `Field`s: in `Annotated[...]`, whose default the validator
            # fills in (the signature's default instead when it has one), and as its default.
            infos = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, FieldInfo)]
            fills_defaults = fills_defaults or any(not info.is_required() for info in infos)
            if isinstance(default, FieldInfo):
                infos.append(default)
            if infos:  # pydantic's own merge, to refuse conflicts and see `validate_default`
                merged = _merged_field(tool_name, pname, annotation, default)
                # A key's `_NOT_PASSED` is never filled in, so never validated.
                no_default = (PydanticUndefined, _NOT_PASSED)
                if merged.validate_default and all(merged.default is not d for d in no_default):
                    validated_defaults[pname] = merged.default
            # A parameter with an alias of its own goes by its alias, in the schema and the
            # validator alike (which hands the value over under the parameter's name).
            own_alias = next(
                (a for i in infos for a in (i.validation_alias, i.alias) if a is not None), None
            )
            named: dict[str, Any] = {} if own_alias is not None else {"alias": pname}
            if isinstance(own_alias, str):
                called.append(own_alias)
            elif own_alias is not None:  # an `AliasPath` or `AliasChoices`
                called.append(path_keys.setdefault(field, _alias_key(tool_name, pname, own_alias)))
            else:
                called.append(pname)
            if isinstance(default, FieldInfo):  # `= Field(default=..., ge=...)`
                typed: Any = Annotated[annotation, default]
                model_fields[field] = (typed, Field(**named))
                typed_fields[pname] = typed if default.is_required() else NotRequired[typed]
                fills_defaults = fills_defaults or not default.is_required()
            elif default is kind.empty or default is Ellipsis:
                # `= ...` is pydantic's required (its schema says so): never left to the
                # function, which would get Ellipsis.
                model_fields[field] = (annotation, Field(**named))
                typed = typed_fields[pname] = annotation
            elif default is not _NOT_PASSED and (
                _empty_container(default)
                or any(not info.is_required() or info.validate_default for info in infos)
            ):
                # As in pydantic, the signature's default replaces one in `Annotated` (and
                # `validate_default` validates it): the validator fills it in. So too an
                # empty `[]`, `{}` or `set()`, a new one each call as in `validate_call`,
                # rather than the one object every call (every agent) would share.
                model_fields[field] = (annotation, Field(default, **named))
                typed = Annotated[annotation, Field(default=default)]
                typed_fields[pname] = NotRequired[typed]
                fills_defaults = True
            else:  # left to the function itself when omitted (a TypedDict key: not passed)
                model_fields[field] = (annotation, Field(default, **named))
                typed = annotation
                typed_fields[pname] = NotRequired[annotation]
            field_types[pname] = typed
        try:
            schema, check, full_check = _schema_and_check(
                tool_name,
                model_fields,
                typed_fields,
                has_var_keyword,
                var_keyword,
                fills_defaults,
                frozenset(unshown),
            )
        except Exception as error:
            raise _schema_error(tool_name, annotations, var_keyword, error) from error
        schema.pop("title", None)
        if path_keys:
            # pydantic's schema names a parameter whose alias is a path (`AliasPath("q")`) by
            # its internal field name, which validation refuses: the key the path takes.
            schema["properties"] = {path_keys.get(k, k): v for k, v in schema["properties"].items()}
            if "required" in schema:
                schema["required"] = [path_keys.get(k, k) for k in schema["required"]]
        properties = schema.get("properties", {})
        if len(properties) != len(order):  # an alias is another parameter's name or alias
            clashes = sorted({n for n in called if called.count(n) > 1})
            raise ToolError(
                f"cannot make tool {tool_name!r}: more than one parameter goes by the name "
                f"{', '.join(map(repr, clashes)) or 'of an alias'}",
                tool=tool_name,
            )
        # The schema lists the parameters in order, each by its alias if it has one.
        for pname, (prop_name, prop) in zip(order, properties.items(), strict=True):
            _check_property(tool_name, prop_name, pname)
            prop.pop("title", None)
            doc = arg_docs.get(pname, arg_docs.get(prop_name))
            if doc is not None:
                prop.setdefault("description", doc)
        keywords_doc = arg_docs.get(var_keyword_name or "")
        if keywords_doc:  # described where the model sees what **kwargs takes
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                extra.setdefault("description", keywords_doc)
            elif extra is True:
                schema["additionalProperties"] = {"description": keywords_doc}
        # A misspelled name in the docstring would leave its parameter undescribed, silently.
        # A parameter the model is not shown (fixed by a partial, the idempotency key) may
        # still be documented: the docstring is the function's, under any partial.
        stray = [
            n
            for n in arg_docs
            if n not in signature.parameters
            and n not in unpacked.parameters
            and n not in properties
        ]
        if stray and base is not func:
            with contextlib.suppress(TypeError, ValueError):
                own = inspect.signature(base).parameters
                stray = [n for n in stray if n not in own]
        if stray:
            warnings.warn(
                f"tool {tool_name!r}: its docstring describes {', '.join(map(repr, stray))}, "
                f"which is not a parameter (the parameters are: "
                f"{', '.join(unpacked.parameters) or 'none'}); that description is not shown",
                UserWarning,
                stacklevel=3 if fn is not None else 2,  # the line that makes the tool
            )
        _drop_refused_defaults(
            tool_name,
            schema,
            order,
            field_types,
            validated_defaults,
            None if fills_defaults else full_check,
        )
        is_async = is_async_callable(func)

        handler_takes_keywords = not positional and var_positional is None
        if not handler_takes_keywords:

            def handler(arguments: dict[str, Any]) -> Any:
                keywords = dict(arguments)
                args = [keywords.pop(n) if n in keywords else defaults[n] for n in positional]
                if var_positional is not None:
                    args.extend(keywords.pop(var_positional, ()))
                return func(*args, **keywords)

        else:

            def handler(arguments: dict[str, Any]) -> Any:
                # Returns the coroutine of an async `func` unawaited: one frame less per call.
                return func(**arguments)

        spec = ToolSpec(
            tool_name,
            summary,
            handler,
            parameters=schema,
            timeout=timeout,
            circuit_breaker=circuit_breaker,
            idempotent=idempotent,
            takes_idempotency_key=IDEMPOTENCY_KEY in unpacked.parameters
            and IDEMPOTENCY_KEY not in fixed,
        )
        # The fast check, for most tools pydantic's core validator itself: the registry tries
        # it first, with no frame around.
        spec._check = check
        spec._full_check = full_check
        spec._validated_anew = (
            not has_var_keyword
            and var_positional is None
            and all(_validated_anew(t) for t in field_types.values())
        )
        spec.is_async = is_async
        if (
            is_async
            and handler_takes_keywords
            and timeout is None
            and circuit_breaker is None
            and not spec.takes_idempotency_key
        ):
            spec._direct = func  # what `handler` calls: the registry saves a frame per call
        module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            spec._origin = (module, qualname)
        spec._made_of = (func, name)
        return spec

    if fn is not None:
        return build(fn)
    return build


def _refuse_unbound_method(
    tool_name: str, base: Any, signature: inspect.Signature, fixed: set[str]
) -> None:
    """Raises `ToolError` for a method decorated in its class body (or taken from its class).

    Such a function's `self` (or `cls`) would be an argument for the model to pass: a plain
    function defined in a class (by its `__qualname__`) whose first parameter is an
    unannotated `self` or `cls` that no partial fixes.
    """
    first = next(iter(signature.parameters.values()), None)
    if (
        first is None
        or first.name not in ("self", "cls")
        or first.name in fixed
        or first.annotation is not inspect.Parameter.empty
        or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
        or not inspect.isfunction(base)
    ):
        return
    scopes = base.__qualname__.split(".")
    if len(scopes) < 2 or scopes[-2] == "<locals>":
        return  # a module-level or local function, not a method
    raise ToolError(
        f"cannot make tool {tool_name!r}: {base.__qualname__} is a method, and its "
        f"{first.name!r} is not an argument the model can pass; make the tool from the bound "
        f"method instead: `tool(instance.{base.__name__})` (for a classmethod, "
        f"`tool({scopes[-2]}.{base.__name__})`), not `@tool` in the class body",
        tool=tool_name,
    )


def _refuse_class_body_classmethod(name: str | None, method: classmethod[Any, Any, Any]) -> None:
    """Raises `ToolError` for a classmethod object: `@tool` above `@classmethod`.

    Such an object is not callable until its class exists; the class's attribute is (bound
    to the class), and makes the tool.
    """
    function = method.__func__
    tool_name = name if name is not None else _callable_name(function)
    scopes = getattr(function, "__qualname__", tool_name).split(".")
    owner = scopes[-2] if len(scopes) >= 2 else "TheClass"
    raise ToolError(
        f"cannot make tool {tool_name!r}: {'.'.join(scopes)} is a classmethod decorated in "
        f"its class body, where it cannot be called yet; make the tool from the class's "
        f"attribute instead: `tool({owner}.{_callable_name(function)})`, after the class",
        tool=tool_name,
    )


# A class at run time, a generic to type checkers (which refuse it in `isinstance`).
_SKIP_JSON_SCHEMA: Any = SkipJsonSchema


def _skips_schema(annotation: Any) -> bool:
    """Whether `annotation` hides its parameter from the schema (`SkipJsonSchema[T]`)."""
    metadata = getattr(annotation, "__metadata__", ())
    return any(isinstance(m, _SKIP_JSON_SCHEMA) for m in metadata)


def _check_hidden_default(tool_name: str, param: inspect.Parameter) -> None:
    """Refuses a parameter hidden from the schema that has no plain default of its own.

    The model is never shown it, so it is never passed: the function's own default is what
    every call gets.

    Raises:
        ToolError: When the parameter has no default, `...`, or a `Field(...)` (which the
            function would get as it is) as its default.
    """
    default = param.default
    if param.kind is param.VAR_POSITIONAL or not (
        default is inspect.Parameter.empty or default is Ellipsis or isinstance(default, FieldInfo)
    ):
        return
    raise ToolError(
        f"cannot make tool {tool_name!r}: parameter {param.name!r} is hidden from the model "
        "(SkipJsonSchema), which can then never pass it; give it a default in the signature "
        "(`= value`, not `Field(...)`), which every call gets",
        tool=tool_name,
    )


def _checked_as_shown(annotation: Any, aliases: frozenset[int] = frozenset()) -> Any:
    """`annotation`, validated as its schema shows it, before the tool is called.

    * A `Literal` of plain Enum members takes the members' values too. pydantic's schema
      shows it (`Literal[Color.RED]`) by its members' values, but its validator takes only
      the members, which are not equal to their values (unlike a `str` or `int` Enum's):
      every value the model was shown was refused. A validator in front turns a member's
      value, of the value's own type (`true` is not 1), into the member.
    * An `Iterable[T]` is a `list[T]` (an `Iterator[T]`, an iterator over one). pydantic
      checks an iterable's items lazily, as the tool reads them: the tool ran, a bad item
      failed inside it as the tool's own error, and a str (not the array the schema shows)
      was taken for its characters.

    Inside generics, unions and `Annotated` too, and behind a type alias (`type X = ...`,
    `TypeAliasType`) or a `NewType` (`aliases`: the ids of those being looked through, so a
    recursive alias is entered once); a model's, dataclass's or TypedDict's fields are their
    own class's.
    """
    aliased = _aliased(annotation)
    if aliased is not None and id(annotation) not in aliases:
        inner = _checked_as_shown(aliased, aliases | {id(annotation)})
        return annotation if inner is aliased else inner
    origin, args = get_origin(annotation), get_args(annotation)
    lazy = annotation if origin is None else origin  # by identity: any object may annotate
    if lazy is Iterable or lazy is Iterator:
        listed = list[_checked_as_shown(args[0], aliases) if args else Any]  # type: ignore[misc, valid-type]
        return Annotated[listed, AfterValidator(iter)] if lazy is Iterator else listed
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        # An Enum's tuple values are shown as arrays, which JSON sends as lists.
        tupled = [m for m in annotation if type(m.value) is tuple]
        if not tupled:
            return annotation
        origin, args = Literal, tuple(tupled)
    if origin is Literal:
        members = [a for a in args if isinstance(a, enum.Enum) and a != a.value]
        if not members:
            return annotation

        def to_member(value: Any) -> Any:
            for member in members:
                if _same_value(value, member.value):
                    return member
            return value

        return Annotated[annotation, BeforeValidator(to_member)]
    if not args:
        return annotation
    if origin is Annotated:  # args: the type, then the metadata
        inner = _checked_as_shown(args[0], aliases)
        return annotation if inner is args[0] else Annotated[(inner, *args[1:])]
    rewritten = tuple(_checked_as_shown(a, aliases) for a in args)
    if origin in _MAPPINGS:  # a `Counter`'s one argument is its key too
        rewritten = (_keys_from_names(rewritten[0]), *rewritten[1:])
    if all(new is old for new, old in zip(rewritten, args, strict=True)):
        return annotation
    try:
        if origin is Union or origin is types.UnionType:
            return Union[rewritten]  # noqa: UP007 (built from a tuple)
        return origin[rewritten]
    except TypeError:  # a generic that cannot be rebuilt so: left as pydantic reads it
        return annotation


_MAPPINGS = frozenset(
    {
        dict,
        Mapping,
        MutableMapping,
        collections.OrderedDict,
        collections.defaultdict,
        collections.Counter,
    }
)
"""The origins of the mappings whose keys `_keys_from_names` reads (JSON sends objects)."""

_NAMED_SCALARS = (int, float, bool, type(None))
"""The types of the Enum and Literal key values a JSON name stands for by their JSON text."""


def _named_by_text(values: Iterable[Any]) -> bool:
    """Whether mapping keys of `values` are sent by their JSON texts.

    So are numbers, booleans and None (plain values, not Enum members); text needs nothing.
    """
    return all(type(v) in _NAMED_SCALARS for v in values)


def _keys_from_names(key: Any, aliases: frozenset[int] = frozenset()) -> Any:
    """`key`, a mapping's key type, taking the JSON names its values are sent by.

    A JSON object's names are text: pydantic takes "1" for an `int` key, but not for a plain
    Enum's member of value 1 or for `Literal[1, 2]`, so every name a model could send was
    refused (the names are shown by `_ArgumentsJsonSchema.dict_schema`).
    """
    if get_origin(key) is Annotated:  # its metadata kept
        inner = _keys_from_names(key.__origin__, aliases)
        return key if inner is key.__origin__ else Annotated[(inner, *key.__metadata__)]
    aliased = _aliased(key)
    if aliased is not None:  # `aliases`: those followed, as `_checked_as_shown` keeps them
        if id(key) in aliases:
            return key
        inner = _keys_from_names(aliased, aliases | {id(key)})
        return key if inner is aliased else inner
    if isinstance(key, type) and issubclass(key, enum.Enum):
        values: list[Any] = list(key)
    elif get_origin(key) is Literal:
        values = list(get_args(key))
    else:
        return key
    if not _named_by_text(v.value if isinstance(v, enum.Enum) else v for v in values):
        return key
    # The first value of a name wins, as the schema lists it.
    by_name = {json.dumps(getattr(v, "value", v)): v for v in reversed(values)}
    return Annotated[key, BeforeValidator(_KeyFromName(by_name))]


class _KeyFromName:
    """A mapping key's value from the JSON name it is sent by (see `_keys_from_names`).

    Its own class: the schema shows the names of the keys it reads, and of no others (a
    model's or TypedDict's dict field keeps pydantic's reading, and its schema).
    """

    def __init__(self, by_name: dict[str, Any]) -> None:
        self.by_name = by_name

    def __call__(self, name: Any) -> Any:
        return self.by_name.get(name, name) if type(name) is str else name


def _aliased(annotation: Any) -> Any:
    """What the type alias or `NewType` `annotation` stands for, or None for another one.

    A generic alias (`Pair[int]`) with its type arguments put in. None too for an alias
    whose value names a type by a string (`Iterable["Item"]`, or itself, as a recursive
    alias does): only the alias resolves it, so it is not looked through (what it names is
    then validated as pydantic reads it).
    """
    if isinstance(annotation, typing.NewType):
        supertype = annotation.__supertype__
        return supertype if _names_types_itself(supertype, annotation) else None
    origin = get_origin(annotation)
    alias: Any = origin if origin is not None else annotation
    if not isinstance(alias, _ALIAS_TYPES):
        return None
    value = getattr(alias, "__value__", None)
    if not _names_types_itself(value, alias):
        return None
    if origin is None:
        return value
    params = getattr(alias, "__type_params__", ())
    return _with_type_arguments(value, dict(zip(params, get_args(annotation), strict=False)))


def _names_types_itself(value: Any, alias: Any) -> bool:
    """Whether `value`, what `alias` stands for, holds no type named by a string.

    Nor `alias` itself, however deep: a forward reference only the alias resolves.
    """
    if isinstance(value, (str, typing.ForwardRef)) or value is alias:
        return False
    origin, args = get_origin(value), get_args(value)
    if origin is Literal:  # values, not types (a str among them too)
        return True
    if origin is Annotated:  # the type, then metadata (a str among them too)
        args = args[:1]
    return all(_names_types_itself(arg, alias) for arg in args)


def _same_value(value: Any, expected: Any) -> bool:
    """Whether `value` is `expected`, of its type (a bool is no int).

    A tuple is sent as a JSON array: a list (or a tuple) of its items, each checked so, is it.
    """
    if type(expected) is tuple:
        return (
            type(value) in (list, tuple)
            and len(value) == len(expected)
            and all(_same_value(v, e) for v, e in zip(value, expected, strict=True))
        )
    # JSON has one number type: 2.0 is the int 2, and 1 the float 1.0.
    if (type(expected), type(value)) in ((int, float), (float, int)):
        return bool(value == expected)
    return type(value) is type(expected) and bool(value == expected)


def _alias_key(tool_name: str, pname: str, alias: Any) -> str:
    """The argument name a path validation alias takes: its first path of a single key.

    As pydantic's schema names an `AliasChoices` (`AliasChoices(AliasPath("q"), "query")`
    takes "q"); a bare `AliasPath("q")` takes "q" too.

    Raises:
        ToolError: When no path is a single key (`AliasPath("config", "limit")` reaches into
            a nested value): the schema could show no argument that validation takes.
    """
    paths = alias.convert_to_aliases()
    for path in [paths] if isinstance(alias, AliasPath) else paths:
        if len(path) == 1 and isinstance(path[0], str):
            return str(path[0])
    raise ToolError(
        f"cannot make tool {tool_name!r}: the validation alias {alias!r} of parameter "
        f"{pname!r} names no argument, only a path into one, which a JSON schema cannot "
        "show; give it a str alias (or a path of one key)",
        tool=tool_name,
    )


def _empty_container(value: Any) -> bool:
    """Whether a default is an empty list, dict, set or bytearray (`= []`, the usual slip).

    Such a default is filled in new for each call, as `validate_call` fills it in; any other
    default is the function's own object, as a direct call has it (a table or a client is
    shared on purpose, and copying one each call could be slow, or fail).
    """
    return type(value) in (list, dict, set, bytearray) and not value


def _refuses_extra_inside(schema: dict[str, Any]) -> bool:
    """Whether an object below the top of an arguments schema refuses unknown keys.

    Such an object is a dataclass or a TypedDict (however the annotation reaches it: a
    generic, a type alias, a NewType), which validates with the `extra` setting of the
    validator it is in; or a model that refuses them itself.
    """
    pending: list[Any] = [v for k, v in schema.items() if k != "additionalProperties"]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("additionalProperties") is False:
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _schema_and_check(
    tool_name: str,
    model_fields: dict[str, Any],
    typed_fields: dict[str, Any],
    has_var_keyword: bool,
    var_keyword: Any,
    fills_defaults: bool,
    unshown: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], Callable[[Any], dict[str, Any]], Callable[[Any], dict[str, Any]]]:
    """The JSON schema of a tool's arguments, a fast check and the full check.

    With **kwargs, an argument named as a parameter in `unshown` (one the model is not shown:
    a partial fixes it, or it is hidden from the schema) is refused: passed on as a keyword,
    it would replace the fixed value (or default) with one checked only as **kwargs' type.

    The fast check drops unknown keys instead of refusing them (pydantic's refusal costs
    about half the validation again): `ToolRegistry.call` sees that the checked dict is
    smaller than the arguments and runs the full check. A validator that adds defaults, or
    one whose arguments hold dataclasses or TypedDicts (which take its `extra` setting, so
    that a key dropped inside one would go unnoticed), is used as both. Both validate in
    Python mode; the full check, which runs when the fast one fails, then tries JSON mode
    (see `_json_mode_fallback`), so strict types take the JSON their schema asks for.
    """
    # Unknown keys are refused, **kwargs' too: a validator's `extra` setting reaches the
    # dataclasses and TypedDicts in the arguments, where `allow` would take any key (and a
    # key named as a method would hide it). **kwargs' arguments are told apart by that
    # refusal and checked on their own (`checker`).
    namespace: dict[str, Any] = {"model_config": ConfigDict(extra="forbid")}
    base = type(f"{tool_name}_base", (BaseModel,), namespace)
    model: type[BaseModel] = create_model(f"{tool_name}_args", __base__=base, **model_fields)
    if has_var_keyword:  # the schema's `additionalProperties` is the type of **kwargs
        schema = _schema_with_extra(model, var_keyword)
    else:
        schema = model.model_json_schema(schema_generator=_ArgumentsJsonSchema)
    # Validating into a TypedDict yields the checked dict directly (no model instance to
    # unpack); omitted optional arguments fall back to the function's own defaults.
    make_typed_dict: Any = TypedDict  # a TypedDict made at run time: mypy cannot check it
    typed = make_typed_dict(f"{tool_name}_args", typed_fields)
    typed.__pydantic_config__ = ConfigDict(extra="forbid")
    adapter = TypeAdapter(typed)
    validate: Callable[[Any], dict[str, Any]] = adapter.validator.validate_python
    full = _json_mode_fallback(adapter)
    if not has_var_keyword:
        if fills_defaults or _refuses_extra_inside(schema):
            return schema, validate, full
        lenient = make_typed_dict(f"{tool_name}_args", typed_fields)
        lenient.__pydantic_config__ = ConfigDict(extra="ignore")
        return schema, TypeAdapter(lenient).validator.validate_python, full
    # Its dataclasses and TypedDicts refuse unknown keys, as the parameters' do.
    extra_adapter = TypeAdapter(dict[str, var_keyword], config=_FORBID)
    names = frozenset(typed_fields)  # the parameters' own names: the checked dict's keys

    def checker(
        validate: Callable[[Any], dict[str, Any]], validate_extra: Callable[[Any], Any]
    ) -> Callable[[Any], dict[str, Any]]:
        def check(arguments: Any) -> dict[str, Any]:
            try:
                return validate(arguments)
            except ValidationError as error:
                # The keys refused at the top are **kwargs' (told as pydantic tells the
                # parameters' names and aliases): the rest is checked again without them.
                extra_keys = {
                    e["loc"][0]
                    for e in error.errors(include_url=False, include_context=False)
                    if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
                }
                if not extra_keys or not isinstance(arguments, dict):
                    raise
            if not names.isdisjoint(extra_keys):  # it would replace the parameter's value
                name = min(map(str, names.intersection(extra_keys)))
                raise ValueError(
                    f"invalid arguments: {name}: unexpected argument (the parameter's "
                    "argument has another name)"
                )
            checked = validate({k: v for k, v in arguments.items() if k not in extra_keys})
            checked.update(validate_extra({k: arguments[k] for k in extra_keys}))
            return checked

        return check

    fast_extra: Callable[[Any], Any] = extra_adapter.validator.validate_python
    full_extra = _json_mode_fallback(extra_adapter)
    if unshown:  # checked with the extra arguments: a tool with none to check pays nothing
        fast_extra = _refusing(unshown, fast_extra)
        full_extra = _refusing(unshown, full_extra)
    fast = checker(validate, fast_extra)
    return schema, fast, checker(full, full_extra)


_FORBID = ConfigDict(extra="forbid")


def _schema_with_extra(model: type[BaseModel], var_keyword: Any) -> dict[str, Any]:
    """The arguments schema of `model`, whose `additionalProperties` is **kwargs' type.

    Both are made in one pass, so that their definitions share one `$defs` (two classes of
    one name are told apart there).
    """
    schemas, definitions = TypeAdapter.json_schemas(
        [
            ("arguments", "validation", TypeAdapter(model)),
            # As checked (`_validator`): its dataclasses and TypedDicts refuse unknown keys.
            ("extra", "validation", TypeAdapter(dict[str, var_keyword], config=_FORBID)),
        ],
        schema_generator=_ArgumentsJsonSchema,
    )
    defs = dict(definitions.get("$defs", {}))
    schema = schemas["arguments", "validation"]
    reference = schema.get("$ref")
    if isinstance(reference, str):  # the model's own definition, shown as the schema
        schema = defs.pop(reference.rsplit("/", 1)[-1])
    extra = schemas["extra", "validation"].get("additionalProperties", True)
    return {**({"$defs": defs} if defs else {}), **schema, "additionalProperties": extra}


def _refusing(
    unshown: frozenset[str], validate_extra: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """`validate_extra`, refusing first the extra arguments named in `unshown`.

    Raises:
        ValueError: An extra argument is named in `unshown` (the first, sorted, is named).
    """

    def validate(extra_args: dict[str, Any]) -> Any:
        if not unshown.isdisjoint(extra_args):
            name = min(unshown.intersection(extra_args))
            raise ValueError(f"invalid arguments: {name}: unexpected argument (the tool sets it)")
        return validate_extra(extra_args)

    return validate


class _ArgumentsJsonSchema(GenerateJsonSchema):
    """Pydantic's JSON schema of arguments, without the dataclass fields a call refuses.

    A dataclass field with `init=False` is set by the dataclass, not passed: pydantic shows
    it all the same, and a tool's validator refuses it as an unknown key. A default with no
    JSON form (a sentinel `object()`, a client) is left out silently: such a default is
    expected of a tool, and pydantic's warning would fail a program run with `-W error`.
    """

    ignored_warning_kinds: set[JsonSchemaWarningKind] = {  # noqa: RUF012 (as pydantic declares it)
        *GenerateJsonSchema.ignored_warning_kinds,
        "non-serializable-default",
    }

    def field_is_present(
        self,
        field: core_schema.ModelField
        | core_schema.DataclassField
        | core_schema.TypedDictField
        | core_schema.ComputedField,
    ) -> bool:
        """Whether `field` is shown: not when it is a dataclass field with `init=False`."""
        if field["type"] == "dataclass-field" and field.get("init") is False:
            return False
        return super().field_is_present(field)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        """As pydantic's, with the names an int, float or bool key takes (`propertyNames`).

        JSON names are strings: pydantic shows no constraint on them for such keys, and
        a model that sent other names (`{"alice": 1}` for `dict[int, float]`) was refused.
        """
        return self._with_key_names(super().dict_schema(schema), schema)

    def ordered_dict_schema(self, schema: core_schema.OrderedDictSchema) -> JsonSchemaValue:
        """As `dict_schema`, for an `OrderedDict`."""
        return self._with_key_names(super().ordered_dict_schema(schema), schema)

    def counter_schema(self, schema: core_schema.CounterSchema) -> JsonSchemaValue:
        """As `dict_schema`, for a `Counter`."""
        return self._with_key_names(super().counter_schema(schema), schema)

    @staticmethod
    def _with_key_names(shown: JsonSchemaValue, schema: Mapping[str, Any]) -> JsonSchemaValue:
        """`shown`, a mapping's schema, with the names its keys take (`dict_schema`)."""
        keys = schema.get("keys_schema")
        if keys is not None and keys["type"] == "function-before":
            reader = keys["function"].get("function")
            if isinstance(reader, _KeyFromName):  # the names `_keys_from_names` reads
                shown["propertyNames"] = {"enum": list(reader.by_name)[::-1]}
                return shown
        names = _KEY_NAMES.get(keys["type"]) if keys is not None else None
        if names is not None and "propertyNames" not in shown:
            shown["propertyNames"] = names
        return shown

    def encode_default(self, dft: Any) -> Any:
        """As pydantic encodes a default, but one holding `inf` or `nan` is left out.

        pydantic writes them as null inside an untyped container (`limits: dict = {"max":
        math.inf}`): a model that passed the default it was shown would get None.
        """
        encoded = super().encode_default(dft)
        try:
            exact = to_jsonable_python(dft, inf_nan_mode="constants", serialize_unknown=True)
        except Exception:  # what cannot be read so stays as pydantic encoded it
            return encoded
        if not _has_json_form(exact):  # left out, as pydantic leaves out what it cannot encode
            raise PydanticSerializationError(f"the default {short_repr(dft)} has no JSON form")
        return encoded


_KEY_NAMES: dict[str, dict[str, Any]] = {
    "int": {"pattern": "^-?(0|[1-9][0-9]*)$"},
    "float": {"pattern": "^-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)?$"},
    "bool": {"enum": ["true", "false"]},
}
"""The JSON names of dict keys by their core schema type: what the key validator takes
(each a JSON number's or boolean's text; pydantic takes more, such as `+1`)."""


def _json_mode_fallback(adapter: TypeAdapter[Any]) -> Callable[[Any], Any]:
    """`adapter`'s validation in Python mode, then, when that fails, in JSON mode.

    The model sends JSON: a strict type (`ConfigDict(strict=True)`, `Strict()`) refuses in
    Python mode the ISO date, UUID string or array (for a tuple) that its own schema asks
    for, and takes them in JSON mode. Python mode goes first: it takes the Python objects a
    middleware may have put in the arguments (which JSON cannot encode: its error stands).
    When both fail, JSON mode's error is raised: it names what is wrong with the JSON sent;
    but Python mode's when JSON mode cannot parse the arguments at all (a lone surrogate).
    """
    validate_python = adapter.validator.validate_python
    validate_json = adapter.validator.validate_json

    def validate(arguments: Any) -> Any:
        try:
            return validate_python(arguments)
        except ValidationError as python_error:
            try:
                text = json.dumps(arguments)
            except (TypeError, ValueError, RecursionError):
                text = None
            if text is None:
                raise  # the Python-mode error
            try:
                return validate_json(text)
            except ValidationError as json_error:
                # JSON mode cannot parse the text (half a surrogate pair in a string, which
                # it refuses): its "Invalid JSON" would hide what Python mode found wrong.
                if any(e["type"] == "json_invalid" for e in json_error.errors()):
                    raise python_error from None
                raise

    return validate


def _merged_field(tool_name: str, pname: str, annotation: Any, default: Any) -> FieldInfo:
    """A parameter's `Field`s merged as pydantic merges them (the signature's default last).

    Raises:
        ToolError: When they conflict, say a default and a default factory (which pydantic's
            `validate_call` refuses too).
    """
    try:
        if default is inspect.Parameter.empty:
            return FieldInfo.from_annotation(annotation)
        return FieldInfo.from_annotated_attribute(annotation, default)
    except Exception as error:
        raise ToolError(
            f"cannot make tool {tool_name!r}: the default and `Field(...)` settings of "
            f"parameter {pname!r} conflict: {_describe(error, with_type=True)}",
            tool=tool_name,
        ) from error


# Types whose values of exactly that type always pass validation: defaults to check no further.
_PLAIN_TYPES = frozenset({bool, int, float, str})


def _drop_refused_defaults(
    tool_name: str,
    schema: dict[str, Any],
    order: list[str],
    field_types: dict[str, Any],
    validated_defaults: dict[str, Any],
    validate: Callable[[Any], Any] | None,
) -> None:
    """Keeps the schema from showing a default that a call refuses (at decoration time).

    Like `validate_call`, a tool fills in an omitted argument's default without validating
    it, but a model that passes the default it is shown (say `null` for `limit: int = None`,
    or 3 for `Annotated[int, Field(ge=10)] = 3`) is refused: such a default is left out of
    the schema. A default validated at every call (`validate_default=True`) that does not
    validate fails every call that omits it: the argument is listed as required. A default
    with no JSON form (`inf` or `nan`, even nested) is left out too: providers would send
    `Infinity` or `NaN`, which is no JSON and which their APIs refuse.

    Args:
        tool_name: The tool's name.
        schema: The tool's JSON schema, changed in place.
        order: The parameters, in the order of the schema's properties.
        field_types: The type the validator checks each parameter's value by.
        validated_defaults: The defaults validated at every call that omits them.
        validate: The tool's own validator of an arguments dict when it fills in no
            defaults (so it calls no default factory here), else None.
    """
    properties = schema.get("properties", {})
    keys = dict(zip(order, properties, strict=True))  # parameter -> the key it goes by
    shown: dict[str, tuple[str, Any, Any]] = {}  # parameter -> (its key, its type, default)
    for pname, key in keys.items():
        prop = properties[key]
        if "default" in prop and not _has_json_form(prop["default"]):
            del prop["default"]  # still optional: omitted, it gets the function's default
        if "default" in prop and pname in field_types:
            value, kind = prop["default"], field_types[pname]
            # `type(value) is kind` first: `kind` may be an `Annotated` whose metadata (a
            # dict, say) cannot be hashed for the set lookup.
            if not (type(value) is kind and kind in _PLAIN_TYPES):
                shown[pname] = (key, kind, value)
    refused = _refused_values(tool_name, shown, validate)
    validated = {
        pname: (keys[pname], field_types[pname], value)
        for pname, value in validated_defaults.items()
    }
    failing = _refused_values(tool_name, validated, None)
    for key in refused | failing:
        properties[key].pop("default", None)
    if failing:
        required = list(schema.get("required", ()))
        schema["required"] = required + [k for k in properties if k in failing - set(required)]


def _has_json_form(value: Any) -> bool:
    """Whether `value` has a strict JSON form: no `inf` nor `nan` anywhere in it.

    `json` writes those as `Infinity` and `NaN`, which no JSON parser need accept.
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _refused_values(
    tool_name: str, fields: dict[str, tuple[str, Any, Any]], validate: Callable[[Any], Any] | None
) -> set[str]:
    """The keys of the values in `fields` (parameter -> (key, type, value)) that fail.

    `validate` checks a dict of arguments (errors for other, missing ones are ignored); when
    None, a validator of just these fields is made.
    """
    if not fields:
        return set()
    if validate is None:
        make_typed_dict: Any = TypedDict
        types = {pname: kind for pname, (_, kind, _) in fields.items()}
        typed = make_typed_dict(f"{tool_name}_defaults", types)
        typed.__pydantic_config__ = ConfigDict(extra="ignore")
        try:
            validate = _json_mode_fallback(TypeAdapter(typed))  # as a call checks them
        except Exception:  # not expected: the tool's own validator takes the same types
            return set()
    keys = {key for key, _, _ in fields.values()}
    try:
        validate({key: value for key, _, value in fields.values()})
    except ValidationError as error:
        return {str(e["loc"][0]) for e in error.errors() if e["loc"]} & keys
    except Exception:  # a validator's own failure, which a call gets too: whose value, then?
        if len(fields) == 1:
            return keys
        return set().union(
            *(_refused_values(tool_name, {p: f}, validate) for p, f in fields.items())
        )
    return set()


def _schema_error(
    tool_name: str, annotations: dict[str, Any], var_keyword: Any, error: Exception
) -> ToolError:
    """A `ToolError` naming the parameter whose type has no schema or validator."""
    candidates = list(annotations.items())
    if var_keyword is not None:
        candidates.append(("**kwargs", var_keyword))
    for pname, annotation in candidates:
        try:
            TypeAdapter(annotation).json_schema()
        except Exception as culprit:
            return ToolError(
                f"cannot make tool {tool_name!r}: parameter {pname!r} has a type with no JSON "
                f"schema ({annotation!r}): {_describe(culprit, with_type=True)}",
                tool=tool_name,
            )
    return ToolError(
        f"cannot make tool {tool_name!r}: {_describe(error, with_type=True)}", tool=tool_name
    )


def _describe(error: BaseException, with_type: bool = False) -> str:
    """An exception's message (`Type: message` with `with_type`), even when `str` fails.

    An exception group's message is followed by its members' (a group's own only counts
    them).
    """
    kind = type(error).__name__
    try:
        message = str(error)
    except Exception as failure:
        return f"{kind} (its message could not be rendered: {type(failure).__name__})"
    leaves = group_leaves(error)
    if leaves:
        shown = "; ".join(_describe(m, with_type=True) for m in leaves[:_GROUP_SHOWN])
        more = len(leaves) - _GROUP_SHOWN
        message = f"{message}: {shown}" + (f"; and {more} more" if more > 0 else "")
    if not message:
        return kind
    return f"{kind}: {message}" if with_type else message


_KEYWORD_START = re.compile(r"[A-Za-z_]\w*\s*=(?!=)")
_MAX_KEYWORD_TEXT = 10_000
"""Longest text read as keyword arguments (parsing it builds a syntax tree)."""


def _keyword_arguments(text: str, parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """`text` read as the keyword arguments of a Python call, or None.

    Only when every keyword names one of `parameters` and every value is a literal
    (`ast.literal_eval`): text that merely holds an `=` (`a=1` for a tool taking a query, an
    unquoted `query=rust`) is not arguments.
    """
    if len(text) > _MAX_KEYWORD_TEXT or not _KEYWORD_START.match(text):
        return None

    try:
        # The `)` on a line of its own: a comment ending the arguments must not hide it.
        call = ast.parse(f"f({text}\n)", mode="eval").body
        # One call of `f` (not `f(x=1)(y=2)`, which `x=1)(y=2` would make), keywords only.
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)) or call.args:
            return None
        named: dict[str, Any] = {}
        for keyword in call.keywords:
            if keyword.arg is None or keyword.arg not in parameters or keyword.arg in named:
                return None
            named[keyword.arg] = ast.literal_eval(_JsonNames().visit(keyword.value))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    return named


def _says_none(text: str) -> bool:
    """Whether `text` says there is no input: `None`, `N/A`, `null` (case, a final `.` too)."""
    return text.rstrip(".").strip().lower() in ("none", "n/a", "null")


class _JsonNames(ast.NodeTransformer):
    """Reads JSON's `true`, `false` and `null` as `True`, `False` and `None`.

    Models write them among Python's literals.
    """

    _VALUES: ClassVar[dict[str, Any]] = {"true": True, "false": False, "null": None}

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self._VALUES:
            return ast.copy_location(ast.Constant(self._VALUES[node.id]), node)
        return node


def _preview(text: str, limit: int = 60) -> str:
    """The start of `text`, for an error message."""
    return text if len(text) <= limit else text[:limit] + "…"


def _json_default(value: Any) -> Any:
    """JSON for what `json` cannot encode itself: models, dataclasses, enums, bytes, sets."""
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except ValueError:  # a field pydantic cannot write as JSON (bytes not UTF-8, arrays)
            return value.model_dump()  # its raw values come back here, as a dict's would
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Its fields as they are (no deep copy): `json` encodes them in turn, and its check
        # for cycles catches a dataclass that contains itself.
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    # numpy scalars and arrays (numpy not imported): their numbers, not `str`'s text, which
    # elides a long array's middle.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _as_list(value, tolist)
    if inspect.isgenerator(value) or inspect.isasyncgen(value):
        raise _GeneratorInside("a generator")  # else `<generator object ...>`, for its items
    if not surely_not_awaitable(value) and inspect.isawaitable(value):
        # Else `<coroutine object ...>` for a result whose work never ran.
        raise _GeneratorInside(f"an awaitable ({type(value).__name__})")
    if isinstance(value, (Iterator, AsyncIterator)):  # else `<map object at 0x...>`, say
        raise _GeneratorInside(f"an iterator ({type(value).__name__})")
    return str(value)


def _as_list(value: Any, tolist: Callable[[], Any]) -> Any:
    """`value.tolist()`, with a numpy float32 or float16 number as numpy shows it (`0.1`).

    `tolist()` widens such a number to a Python float, whose text has float64's digits
    (`0.10000000149011612`): each is read back from numpy's own text instead, the shortest
    that reads back as the same number (NaN and infinities as before). A long double, which
    `tolist()` leaves a numpy number (no JSON), is read so too: the nearest float. numpy is
    not imported: only numpy's own values are recognised, by their type's module.
    """
    if type(value).__module__ == "numpy":
        dtype: Any = getattr(value, "dtype", None)
        if getattr(dtype, "kind", None) == "f" and dtype.itemsize != 8:
            return _floats(value.astype(str).tolist())
    listed = tolist()
    if type(listed).__module__ != "numpy" and callable(getattr(listed, "tolist", None)):
        # A `tolist` giving another object with one (a mock's gives a new mock at each
        # call): followed, it went a thousand levels deep, seconds on the event loop.
        return str(value)
    return listed


def _floats(texts: Any) -> Any:
    """`texts` (a number's text, or nested lists of them) as Python floats."""
    if isinstance(texts, list):
        return [_floats(text) for text in texts]
    return float(texts)


class _GeneratorInside(Exception):
    """A result holds a generator, an awaitable or another iterator inside a structure.

    Async ones included. Its argument says which (`"a generator"`, `"an iterator (map)"`).
    """


class _KeysMadeText(ValueError):
    """An object `_json_default` converted holds a dict whose keys `json` makes text."""


def _json_default_checked(value: Any) -> Any:
    """`_json_default`, refusing a value that holds a dict with keys `json` makes text.

    `_render` checks the result's own dicts for keys written alike, but not the dicts an
    object converted here holds (a dataclass's field, an object array's item): this refusal
    sends such a result through `_with_json_keys`, which checks them all. Only values `json`
    cannot encode itself get here, so plain results pay nothing for it.
    """
    converted = _json_default(value)
    if dicts_with_keys_made_text(converted):
        raise _KeysMadeText
    return converted


# Non-ASCII text as it is (the model reads it, and it is a sixth of the size of `\\uXXXX`).
# Strict JSON: a NaN or an infinity (which JSON has no number for) fails it, and is then
# written as its `str` (see `_with_json_keys`).
_JSON = json.JSONEncoder(ensure_ascii=False, default=_json_default_checked, allow_nan=False)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _render(result: Any, whole: Any = None) -> str:
    r"""The text the model sees for a tool's result: JSON where it can be, else `str`.

    A str is returned as is (a str-based enum as its value's text), and bytes as text (UTF-8,
    undecodable bytes replaced); a numpy scalar as its Python value is (a float32 NaN as
    `nan`, a `datetime64` as its date). Pydantic models, dataclasses, enums (by value), sets,
    bytes, and numpy scalars and arrays (by `tolist()`) inside a structure become JSON; a
    numpy float32 or float16 number, alone or inside, is shown as numpy shows it (`0.1`, not
    float64's `0.10000000149011612`). A dict key JSON refuses is made text: an enum's by its
    value, bytes as text, any other by `str`, and so is a float JSON has no number for inside
    a structure (NaN as `"nan"`, infinity as `"inf"`), so the text is strict JSON. JSON keeps
    non-ASCII text as it is; a lone surrogate in it is escaped (`\udcff`), so the text always
    has a UTF-8 form. `result` may be the part of `whole` that shows (`_rendered_to_show`):
    where JSON refuses it, the text is then `whole`'s `str`.

    Raises:
        TypeError: For a generator (or async generator), also one inside a structure: its
            items are not the result; so too for any other iterator (`map(...)`, `iter(...)`,
            an async iterator), whose text (`<map object at 0x...>`) would pass for a
            result; collections (`range`, `dict.keys()`) are shown by their text. For an
            awaitable (a coroutine, a task), also one inside a structure: an async tool that
            returns one has missed an `await`, and what it stands for is not the result (a
            coroutine returned whole is closed: its work never runs).
        Exception: Whatever rendering raises (`ToolRegistry.call` makes it an observation).
    """
    if isinstance(result, enum.Enum) and isinstance(result, str):
        # Its value, as inside a structure: its `str` may be `Status.ACTIVE` (Python 3.11).
        return str.__str__(result)
    if isinstance(result, str):
        return str(result)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result).decode("utf-8", "replace")
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        raise TypeError("the tool returned a generator; return a list instead")
    if isinstance(result, float) and not math.isfinite(result):  # as a float is shown: `nan`
        return str(result)
    if not _written_as_json(result):  # its text, not that text as a quoted JSON string
        if not surely_not_awaitable(result) and inspect.isawaitable(result):
            _refuse_awaitable_result(result)
        tolist = getattr(result, "tolist", None)
        if not callable(tolist):
            if isinstance(result, (Iterator, AsyncIterator)):  # `map(...)`, `iter(...)`
                kind = type(result).__name__
                raise TypeError(f"the tool returned an iterator ({kind}); return a list instead")
            return str(result)
        # numpy scalars and arrays (numpy not imported): by their Python values, each shown as
        # that value is (a float32 NaN as `nan`, as a float's; not as the JSON string "nan").
        try:
            value = _as_list(result, tolist)
        except Exception:  # not numpy's (a class's unbound method, say): as JSON below
            value = result
        if not callable(getattr(value, "tolist", None)):  # else (a mock, say) as JSON below
            return _render(value)
    try:
        try:
            text = _JSON.encode(result)
            # A dict key json makes text itself: two may be made the same text.
            if dicts_with_keys_made_text(result):
                text = _JSON.encode(_with_json_keys(result, set()))
        except (TypeError, ValueError):  # a dict key `json` refuses (an enum), or a NaN
            text = _JSON.encode(_with_json_keys(result, set()))
    except _GeneratorInside as inside:  # not a TypeError: `str` of the whole would hide it
        what = inside.args[0]
        fix = "await it in the tool" if what.startswith("an awaitable") else "return a list instead"
        raise TypeError(f"the tool returned {what} inside its result; {fix}") from None
    except (TypeError, ValueError, RecursionError):  # not JSON, a cycle, or nested too deep
        return str(result if whole is None else whole)
    if not text.isascii() and _SURROGATE.search(text):
        # A lone surrogate (say, from `os.fsdecode`) has no UTF-8 form: JSON escapes it.
        text = _SURROGATE.sub(_escape_surrogate, text)
    return text


_LOOKAHEAD = 8
"""Characters past `max_chars` whose text `_truncate` may read (it steps back out of an
escape or a surrogate pair), with room to spare."""
_MAX_ROOM = 2**63 - 1
"""The most characters `shown_part` counts to (a limit past it shows every result whole)."""


def _rendered_to_show(result: Any, max_chars: int) -> str:
    """The text of a tool's result, of which `max_chars` characters are shown.

    Of a result far longer, only the part that shows is rendered (`shown_part`), into the
    text the whole would start with: rendering millions of rows whole, to cut them to a
    few thousand characters, took seconds on the event loop and hundreds of megabytes. What
    lies past the part is not looked at (a generator there is not refused). A part whose
    text falls back to `str` (JSON refuses something in it) gives the whole result's `str`,
    whose start differs (numpy elides a long array's middle). A result that holds itself,
    or is nested too deep to walk, is rendered whole, as before.
    """
    part = shown_part(result, min(max_chars + _LOOKAHEAD, _MAX_ROOM))
    return _render(result) if part is None else _render(part, whole=result)


def _refuse_awaitable_result(result: Any) -> None:
    """Raises the `TypeError` for an awaitable returned as a tool's result (see `_render`).

    An async tool returned it in place of its result (`return fetch(url)` for
    `return await fetch(url)`): its repr would pass for a successful result. A coroutine is
    closed (no "never awaited" warning: the observation says it); a task or future is left
    as it is, its owner's to await or cancel.
    """
    if inspect.iscoroutine(result):
        result.close()
        what = f"a coroutine ({getattr(result, '__qualname__', type(result).__name__)})"
    else:
        what = f"an awaitable ({type(result).__name__})"
    raise TypeError(f"the tool returned {what}, not its result; await it in the tool")


def _written_as_json(value: Any) -> bool:
    """Whether JSON writes `value` as a structure or a number, not as its quoted `str`.

    See `_json_default`, which writes what `json` cannot itself.
    """
    return (
        value is None
        or isinstance(value, (dict, list, tuple, int, float, set, frozenset, BaseModel, enum.Enum))
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
    )


def _with_json_keys(value: Any, within: set[int]) -> Any:
    """`value` with the dict keys `json` refuses made keys it takes (see `_json_key`).

    A float JSON has no number for (NaN, an infinity) becomes its `str`. Values `json`
    cannot encode itself are converted by `_json_default` first, so that a dict inside a
    dataclass, say, is reached too.

    Args:
        value: What to convert.
        within: The ids of the values being converted around this one, to refuse a cycle.

    Raises:
        ValueError: For a value that contains itself (as `json` does), or a dict two of whose
            keys are made the same text (`_render` then shows the whole result by `str`).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float)):  # what `json` takes as it is
        return value
    if id(value) in within:
        raise ValueError("circular reference")
    within.add(id(value))
    try:
        if isinstance(value, dict):
            converted = {_json_key(k): _with_json_keys(v, within) for k, v in value.items()}
            if len(converted) < len(value):  # two keys made the same text: one would be lost
                raise ValueError("dict keys collide once made text")
            return converted
        if isinstance(value, (list, tuple)):
            return [_with_json_keys(v, within) for v in value]
        return _with_json_keys(_json_default(value), within)
    finally:
        within.discard(id(value))


def _json_key(key: Any) -> str:
    """A dict key as the text `json` writes for it: an enum's by its value, any other by `str`.

    Bytes are their text, as a bytes value is (not `"b'k'"`). The text itself (`1` and `"1"`
    are both `"1"`), so two keys that would collide are seen to collide.
    """
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, (bytes, memoryview)):  # else `"b'k'"`, or a view's address
        return bytes(key).decode("utf-8", "replace")
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or isinstance(key, (int, float)):  # `null`, `true`, `1`, `1.5`, `NaN`
        return json.dumps(key)
    return str(key)


def _escape_surrogate(match: re.Match[str]) -> str:
    """A surrogate code point as a JSON escape."""
    return f"\\u{ord(match[0]):04x}"


def _cancelled_by_the_tool(task: asyncio.Task[Any] | None, cancels: int) -> bool:
    """Whether a CancelledError comes from the tool's own work, not from cancelling the call.

    True when the count of cancellations asked of the call's task (`cancels` when the call
    began) did not rise: the task may have entered the call with a count of its own. Before
    Python 3.13, a rise may also be a `TaskGroup`'s of the tool (see `CANCEL_COUNTS_EXACT`),
    which cannot be told from a cancellation: the call is taken as cancelled then, so that
    no cancellation is lost.
    """
    return task is None or task.cancelling() <= cancels


def _must_propagate(group: BaseException, task: asyncio.Task[Any] | None, cancels: int) -> bool:
    """Whether an exception group carries a `KeyboardInterrupt` or the call's cancellation.

    `task` and `cancels`: as `_cancelled_by_the_tool`'s.
    """
    leaves = group_leaves(group) or ()
    if any(isinstance(e, KeyboardInterrupt) for e in leaves):
        return True
    cancelled = any(isinstance(e, asyncio.CancelledError) for e in leaves)
    return cancelled and not _cancelled_by_the_tool(task, cancels)


def _copy_subclass_state(
    source: object, clone: object, base: type, memo: dict[int, Any] | None = None
) -> None:
    """Copies to `clone` what a subclass of `base` adds: its slots, its `__dict__`.

    Shallowly; deeply with `memo` (a `copy.deepcopy`'s).
    """
    for cls in type(source).__mro__:
        if cls is base:
            break
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            # A private name (`__secret`) is stored mangled, as the class's code reads it.
            private = name.startswith("__") and not name.endswith("__")
            slot = f"_{cls.__name__.lstrip('_')}{name}" if private else name
            if hasattr(source, slot):
                value = getattr(source, slot)
                if memo is not None:
                    value = copy.deepcopy(value, memo)
                object.__setattr__(clone, slot, value)
    if hasattr(source, "__dict__"):
        added = source.__dict__ if memo is None else copy.deepcopy(source.__dict__, memo)
        clone.__dict__.update(added)


class ToolRegistry:
    """Named tools, and the one place tool calls are run and their failures classified."""

    __slots__ = ("_tools",)

    def __copy__(self) -> Self:
        """A registry of the same tools, whose registrations then go apart from this one's.

        Of the same class, with the same other attributes (a subclass's).
        """
        clone = object.__new__(type(self))
        _copy_subclass_state(self, clone, ToolRegistry)
        clone._tools = dict(self._tools)
        return clone

    def __init__(self, tools: Iterable[ToolSpec] = ()) -> None:
        """Registers `tools`.

        Raises:
            ToolError: When `tools` is not an iterable of ToolSpec (a lone ToolSpec, say), or
                two of them share a name.
        """
        self._tools: dict[str, ToolSpec] = {}
        # Else a bare TypeError ("'ToolSpec' object is not iterable") for a lone tool.
        if isinstance(tools, ToolSpec):
            raise ToolError(f"tools must be a list of ToolSpec, got one ({tools.name!r})")
        try:
            specs = iter(tools)
        except TypeError:
            raise ToolError(
                f"tools must be a list of ToolSpec, got {type(tools).__name__}"
            ) from None
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec) -> None:
        """Adds a tool, under its name as it is now (a later rename does not move it).

        Raises:
            ToolError: When `spec` is not a ToolSpec or its name is already registered.
        """
        if not isinstance(spec, ToolSpec):
            raise ToolError(f"expected a ToolSpec (use @tool), got {type(spec).__name__}")
        if spec.name in self._tools:
            raise ToolError(f"tool {spec.name!r} is registered twice", tool=spec.name)
        self._tools[spec.name] = spec

    def get(self, name: str) -> ToolSpec | None:
        """Returns the tool called `name`, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Returns the registered tool names, sorted."""
        return sorted(self._tools)

    def definitions(self) -> list[dict[str, Any]]:
        """Returns every tool's definition dict.

        Of the tools registered when it is called: a copy of the registry is read, which
        another thread may grow meanwhile. Each is named as it was registered, the name it
        is called by: a spec renamed since keeps its registered name here.
        """
        return [{**spec.definition(), "name": name} for name, spec in list(self._tools.items())]

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    @safe_repr
    def __repr__(self) -> str:
        return f"ToolRegistry(tools={names_repr(self._tools)})"

    def not_found(self, name: str, max_chars: int = 4000) -> Observation:
        """The observation of a call of `name`, a tool this registry does not have.

        Raises:
            ToolError: When `max_chars` is not an int of 0 or more.
        """
        if type(max_chars) is not int or max_chars < 0:
            max_chars = _checked_max_chars(max_chars)
        known = ", ".join(self.names()) or "none"
        message = f"error: unknown tool {name!r} (known: {known})"
        return Observation(_truncate(message, max_chars), "not_found")

    async def call(
        self,
        name: str,
        arguments: Any,
        max_chars: int = 4000,
        idempotency_key: str | None = None,
        *,
        task: asyncio.Task[Any] | Literal[False] | None = False,
        on_start: Callable[[], object] | None = None,
    ) -> Observation:
        """Runs one tool call; every failure becomes an `Observation` with an error kind.

        `idempotency_key` is passed to tools that take one (a fresh random key when it is
        None). Every observation is truncated to `max_chars`; of a result far longer (a
        list, tuple or dict of millions of items, nested too, or a numpy array), only the
        part that shows is rendered, into the same text. `task` is the asyncio task
        the call runs in, when the caller has it at hand (None: it runs in none); by
        default it is looked up, which costs a system call (`getpid`) per call before
        Python 3.12. `on_start`, when given, is called right before the tool is (once its
        arguments are checked and a cancellation asked before the call is delivered): a call
        that ends before it was called never ran its tool.

        Failures: invalid arguments (a validator's own exception included), a result that
        cannot be rendered, and `SystemExit` raised by a tool (say, by argparse) are
        `permanent`; the per-tool timeout ("timed out after N s") and a tool's own
        `TimeoutError` (with its own message) are `transient`. A `CancelledError` that comes
        from the tool's own work (say, a subtask it awaited was cancelled) while nobody
        cancels the call is `transient`: a retry may work. A `StopIteration` (which a
        coroutine or future cannot carry) and any other `BaseException` a tool raises (say,
        `GeneratorExit`) are `permanent`. Policy errors (`PolicyDeniedError`,
        `BudgetExceededError`), cancellation of the call, and `KeyboardInterrupt` propagate,
        also from inside an exception group (a policy error then as itself: the first one).
        From Python 3.13, a call cancelled while its tool ran ends cancelled even when the
        tool caught the `CancelledError` and returned (or raised something else); before,
        such a tool ends the call as it chose, as asyncio cannot tell its cancellation from
        a `TaskGroup`'s own (see `CANCEL_COUNTS_EXACT`); for the same reason, a tool whose
        own work is cancelled after one of its `TaskGroup`s failed in the same call ends the
        call as cancelled there. A `name` that is not registered (whatever its type) is a
        `not_found` observation.

        Raises:
            ToolError: When `max_chars` is not an int of 0 or more (before the tool runs).
        """
        # Checked before the tool runs: else a bad limit failed only after its effects.
        if type(max_chars) is not int or max_chars < 0:
            max_chars = _checked_max_chars(max_chars)
        try:
            spec = self._tools[name]
        except (KeyError, TypeError):  # TypeError: a name no dict key can be (a list)
            return self.not_found(name, max_chars)
        if not spec._validated_anew and type(arguments) is dict:
            # Validation passes an `Any` value on as it is: the tool gets its own copy.
            arguments = _copied(arguments)
        try:
            checked = spec._check(arguments)
            if len(arguments) > len(checked):  # keys the fast check dropped: refused below
                raise ValueError
        except Exception:  # a bare value, unknown keys, arguments to explain: the full check
            try:
                checked = spec.check_arguments(arguments)
            except ValueError as error:
                return Observation(_truncate(f"error: {_describe(error)}", max_chars), "permanent")
        direct = spec._direct
        if direct is None and spec.takes_idempotency_key:
            # Without a key from the caller (no checkpoints), one unique to this call.
            key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
            checked = {**checked, IDEMPOTENCY_KEY: key}
        # A tool that catches the cancellation of its call and returns (or fails otherwise)
        # must not end it: the count of cancellations asked of this task says it was asked.
        if task is False:
            loop = running_loop()  # `current_task()`, inlined: this is the per-step path
            task = None if loop is None else task_of(loop)
        # One asked but not delivered yet is the call's (else the tool was blamed for it):
        # `cancellations_so_far`, inlined (a coroutine call a step costs ~0.3 us).
        cancels = 0 if task is None else task.cancelling()
        if cancels:
            await asyncio.sleep(0)
        if on_start is not None:
            on_start()
        try:
            if direct is not None:  # an async `@tool` function: the common case, called as is
                result = await direct(**checked)
            elif spec.circuit_breaker is not None:
                result = await spec.circuit_breaker.call(spec.invoke, checked)
            elif spec.is_async and spec.timeout is None:  # one frame less
                result = await spec.handler(checked)
            else:
                result = await spec.invoke(checked)
        except (PolicyDeniedError, BudgetExceededError):
            raise
        except Exception as error:  # a tool's failure is an observation for the model
            if task is not None and task.cancelling() > cancels:
                _cancelled_while_running(task, cancels, error)
            policy = policy_error_in(error)
            if policy is not None:
                raise policy from error
            kind = classify_error(error)
            # A KeyError's message is the bare key (`'u2'`): its type says what went wrong.
            detail = _describe(error, with_type=isinstance(error, KeyError))
            _logged_failure(spec.name, error)
            return Observation(_truncate(f"error: {detail}", max_chars), kind)
        except asyncio.CancelledError:
            if not _cancelled_by_the_tool(task, cancels):
                raise  # the call itself is cancelled
            message = (
                "error: the tool's own work was cancelled (CancelledError), "
                "though the call was not; it may work if retried"
            )
            return Observation(_truncate(message, max_chars), "transient")
        except SystemExit as error:
            _logged_failure(spec.name, error)
            detail = _describe(error, with_type=True)
            message = f"error: the tool tried to exit the program ({detail})"
            return Observation(_truncate(message, max_chars), "permanent")
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # GeneratorExit, a library's own BaseException
            if _must_propagate(error, task, cancels):
                raise
            policy = policy_error_in(error)  # a group's, beside another BaseException
            if policy is not None:
                raise policy from error
            _logged_failure(spec.name, error)
            message = f"error: {_describe(error, with_type=True)}"
            return Observation(_truncate(message, max_chars), "permanent")
        if task is not None and task.cancelling() > cancels:
            _cancelled_while_running(task, cancels)
        try:
            render = _RENDER_EXACT.get(type(result))
            if render is None:
                text: str = _rendered_to_show(result, max_chars)
            else:
                text = render(result)
        except Exception as error:  # e.g. an int over the str conversion limit, a bad __repr__
            # The call did run: the model must not take it for one that did nothing.
            detail = _describe(error, True)
            message = f"error: the tool ran, but its result could not be rendered: {detail}"
            return Observation(_truncate(message, max_chars), "permanent")
        if len(text) > max_chars:
            text = _truncate(text, max_chars)
        # Built in Rust, skipping the named tuple's Python-level __new__: the path is hot.
        return tuple_of(Observation, (text, None))


def _cancelled_while_running(
    task: asyncio.Task[Any], cancels: int, error: BaseException | None = None
) -> None:
    """Handles a call whose task's count of cancellation requests rose while its tool ran.

    The tool returned, or raised something other than `CancelledError`. From Python 3.13,
    the call was cancelled and the tool caught it: `CancelledError`. Before, the rise may be
    a `TaskGroup`'s of the tool (see `CANCEL_COUNTS_EXACT`): the count is put back, as that
    `TaskGroup` would have, so the caller's own timeouts (the run's `loop_timeout_ms`) still
    tell their expiry from a cancellation; the tool's result stands.
    """
    if CANCEL_COUNTS_EXACT:
        raise asyncio.CancelledError from error
    # A cancellation asked but not delivered yet (after the tool's last await) is no
    # `TaskGroup`'s: its count stays, and the next await (the next call's, see `call`)
    # delivers it.
    pending = 1 if getattr(task, "_must_cancel", False) else 0
    while task.cancelling() > cancels + pending:
        task.uncancel()


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An arguments schema as providers want it: one that says it is an object's.

    With `properties` too (OpenAI refuses an object schema without); a copy when either is
    added.
    """
    if "type" not in schema:  # taken for an object, but providers want it said
        schema = {"type": "object", **schema}
    if "properties" not in schema:
        schema = {**schema, "properties": {}}
    return schema


_SHOWN = frozenset({"name", "description", "parameters"})
"""A spec's attributes the model is shown (`ToolSpec.definition`)."""
SHOWN_CHANGES = [0]
"""How many times an attribute in `_SHOWN` of a spec was set after its construction (any
spec's): a runtime that showed the model its tools shows them again when this changed."""
# The `ToolSpec` attributes that decide how a call runs: setting one clears `_direct`.
_RUN_SETTINGS = frozenset(
    {"circuit_breaker", "handler", "is_async", "takes_idempotency_key", "timeout"}
)
# The commonest results, rendered by one C call (a str is returned as is).
_RENDER_EXACT: dict[type, Callable[[Any], str]] = {
    str: str,
    int: int.__repr__,
    float: float.__repr__,
}
_TRUNCATION_MARK = " …[truncated]"


_ATOMS = frozenset((int, float, str, bool, bytes, type(None)))
"""Types whose validated values are never a list or dict the caller holds."""
_BUILT = frozenset((list, tuple, set, frozenset, dict))
"""Containers validation builds anew (of validated items) when a parameter's type names one."""


def _validated_anew(annotation: Any) -> bool:
    """Whether validation against `annotation` gives no list or dict of its input's own.

    pydantic builds a `list[int]` anew, but passes an `Any` (an untyped parameter, a bare
    `list`'s items, a model's `Any` field) on as it is: such a parameter may hand the tool
    the very list or dict of the model's call.
    """
    if isinstance(annotation, type):
        return annotation in _ATOMS or issubclass(annotation, enum.Enum)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return all(map(_keeps_validation, args[1:])) and _validated_anew(args[0])
    if origin is Literal:
        return True
    if origin is Union or origin is types.UnionType or origin in _BUILT:
        return bool(args) and all(a is Ellipsis or _validated_anew(a) for a in args)
    return False


def _keeps_validation(metadata: Any) -> bool:
    """Whether `Annotated` metadata leaves its type's validation to build the value.

    A field, a constraint, or a validator run before or after it does; metadata with its own
    schema hook may replace or skip it (`PlainValidator`, `WrapValidator`, `SkipValidation`,
    `InstanceOf`), passing the input on as it is. Other metadata (a note) is not pydantic's.
    """
    if isinstance(metadata, FieldInfo | BaseMetadata | AfterValidator | BeforeValidator):
        return True
    return not hasattr(metadata, "__get_pydantic_core_schema__")


def _copied(arguments: Any) -> Any:
    """A call's arguments with their dicts, lists and tuples copied, at any depth.

    Their other values are shared: a provider's own objects (a lock, an array) are neither
    duplicated nor compared by identity as changed. Arguments nested past the recursion
    limit, or holding themselves, are shared whole.
    """
    try:
        return _containers_copied(arguments)
    except RecursionError:
        return arguments


def _containers_copied(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _containers_copied(v) for k, v in value.items()}
    if kind is list:
        return [_containers_copied(v) for v in value]
    if kind is tuple:
        return tuple(_containers_copied(v) for v in value)
    return value


def _truncate(text: str, max_chars: int) -> str:
    r"""`text` cut to at most `max_chars` characters, marked as truncated when there is room.

    The cut never splits a surrogate pair nor a backslash escape (`\n`, `\u00e9`): it
    comes before them.
    """
    if len(text) <= max_chars:
        return text
    if max_chars <= len(_TRUNCATION_MARK):
        return text[: _cut(text, max(max_chars, 0))]
    return text[: _cut(text, max_chars - len(_TRUNCATION_MARK))] + _TRUNCATION_MARK


def _cut(text: str, end: int) -> int:
    """Where to cut `text` at or before `end`, outside a surrogate pair and an escape."""
    if 0 < end < len(text) and _is_high(text[end - 1]) and _is_low(text[end]):
        end -= 1
    start = text.rfind("\\", max(end - 5, 0), end)  # an escape is at most 6 characters
    if start == -1:
        return end
    before = start
    while before > 0 and text[before - 1] == "\\":
        before -= 1
    if (start - before) % 2:
        return end  # the second backslash of an escaped backslash: that escape is whole
    size = 6 if text[start + 1 : start + 2] == "u" else 2
    return start if start + size > end else end


def _is_high(char: str) -> bool:
    """Whether `char` is the first half of a surrogate pair."""
    return "\ud800" <= char <= "\udbff"


def _is_low(char: str) -> bool:
    """Whether `char` is the second half of a surrogate pair."""
    return "\udc00" <= char <= "\udfff"


_SCHEMA_KEYWORDS = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "contentSchema",  # pydantic's `Json[...]`: the schema of the JSON in the string
    "if",
    "then",
    "else",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas")


_INLINE_CHARS = 1000
"""A definition used more than once is inlined at each use only while its inlined JSON is at
most this long: beyond, copies would multiply (a model of two fields of a model of two
fields... doubles at each level), so it is shown once, in `$defs`."""


def shown_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool's JSON schema as the model is shown it: whole, compact, and as providers take it.

    Local `$ref`s (`#/$defs/...`, `#/definitions/...`) are replaced by what they name, so the
    model sees nested objects, enums and `required` lists; `title`s (a name said again) are
    dropped, and so is a discriminator's `mapping` (of `$ref`s to what is now inlined). A
    recursive reference stays a `$ref`, as does one to a definition used more than once whose
    inlined form exceeds `_INLINE_CHARS` (so the shown schema stays linear in the tool's), and
    `$defs` then holds what they name. A schema with a local reference of another kind (into a
    definition, to nested `$defs`, to an anchor) is shown as it is, so that none dangles.
    Either way, each of its schemas is as providers take it (`_as_providers_take`).
    """
    defs: dict[str, tuple[str, str, Any]] = {}  # ref -> (section, name, definition)
    for section in ("$defs", "definitions"):
        named = parameters.get(section)
        if isinstance(named, dict):
            defs.update(
                {f"#/{section}/{_escaped(n)}": (section, n, schema) for n, schema in named.items()}
            )
    uses = _ref_counts(parameters)
    shown_defs: dict[str, Any] = {}  # ref -> its definition as shown (each walked once)
    inline: dict[str, bool] = {}  # ref -> whether its uses show it inlined
    resolving: set[str] = set()
    kept: set[str] = set()  # refs the shown schema names

    def at_use(ref: str) -> Any:
        """What a use of `ref` shows: its definition inlined, or the reference."""
        if ref in resolving:  # recursive
            kept.add(ref)
            return {"$ref": ref}
        if ref not in shown_defs:
            resolving.add(ref)
            shown_defs[ref] = walk(defs[ref][2])
            resolving.discard(ref)
            inline[ref] = uses[ref] <= 1 or json_chars(shown_defs[ref]) <= _INLINE_CHARS
        if inline[ref]:
            return shown_defs[ref]
        kept.add(ref)
        return {"$ref": ref}

    def walk(node: Any, whole: bool = True) -> Any:
        # A reference's siblings (`whole` False) are made as providers take them once merged
        # with what it names: alone, an array's `items` would be missing, and filled.
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in defs:
            used = at_use(ref)
            rest = walk({k: v for k, v in node.items() if k != "$ref"}, whole=False)
            return _as_providers_take(_merged(used, rest)) if isinstance(used, dict) else used
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("title", "$defs", "definitions"):
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [walk(sub) for sub in value]
            elif key in _SCHEMA_KEYWORDS:
                out[key] = walk(value)
            elif key == "discriminator" and isinstance(value, dict) and defs:
                # Its `mapping` names `$defs` entries, inlined and gone: `propertyName` stays.
                out[key] = {k: v for k, v in value.items() if k != "mapping"}
            else:  # a value, not a schema (`default`, `enum`, ...): as it is
                out[key] = value
        return _as_providers_take(out) if whole else out

    shown: dict[str, Any] = walk(parameters)
    # A reference under a keyword not walked (kept as it is: a vendor's, say) keeps what
    # it names too, so that no reference is left dangling.
    while True:
        named = _ref_counts([shown, *(shown_defs[ref] for ref in kept)])
        missing = [ref for ref in named if ref in defs and ref not in kept]
        if not missing:
            break
        for ref in missing:
            if ref not in shown_defs:
                shown_defs[ref] = walk(defs[ref][2])
            kept.add(ref)
    for ref in sorted(kept):
        section, name, _ = defs[ref]
        shown.setdefault(section, {})[name] = shown_defs[ref]
    if all(_resolves(shown, ref) for ref in _schema_refs(shown)):
        return shown
    whole: dict[str, Any] = _fixed_up(parameters)
    root = whole.get("$ref")
    if isinstance(root, str) and root in defs and isinstance(defs[root][2], dict):
        # A schema that is a reference (zod-to-json-schema's): the definition at the root,
        # its definitions kept, so that references into them still resolve.
        siblings = {k: v for k, v in whole.items() if k != "$ref"}
        whole = _as_providers_take(_merged(_fixed_up(defs[root][2]), siblings))
    return whole


def _escaped(name: str) -> str:
    """A name as a JSON pointer writes it (`~` and `/` escaped)."""
    return name.replace("~", "~0").replace("/", "~1")


def _resolves(schema: Any, ref: str) -> bool:
    """Whether `ref` names something in `schema`.

    True of any reference but a local one (`#...`), which must be a JSON pointer into it.
    """
    if not ref.startswith("#"):
        return True  # a remote one: not the schema's to hold
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False  # an anchor: kept only with its schema whole
    node = schema
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def _schema_refs(node: Any) -> Iterator[str]:
    """The references of a schema: its `$ref`s where a schema is (not in `default`, say)."""
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        yield ref
    for key, value in node.items():
        if key in (*_SCHEMA_MAPS, "$defs", "definitions") and isinstance(value, dict):
            for sub in value.values():
                yield from _schema_refs(sub)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for sub in value:
                yield from _schema_refs(sub)
        elif key in _SCHEMA_KEYWORDS:
            yield from _schema_refs(value)


def _fixed_up(node: Any) -> Any:
    """A schema as given, each of its schemas as providers take it (`_as_providers_take`)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in (*_SCHEMA_MAPS, "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _fixed_up(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_fixed_up(sub) for sub in value]
        elif key in _SCHEMA_KEYWORDS:
            out[key] = _fixed_up(value)
        else:
            out[key] = value
    return _as_providers_take(out)


def _merged(named: dict[str, Any], siblings: dict[str, Any]) -> dict[str, Any]:
    """A definition a reference names, with the keywords beside the reference.

    Those apply too: a field's `description` is the field's, and properties and required
    names add up (a `ToolSpec` made `properties` a reference's sibling).
    """
    merged = {**named, **siblings}
    if isinstance(named.get("properties"), dict) and isinstance(siblings.get("properties"), dict):
        merged["properties"] = {**named["properties"], **siblings["properties"]}
    if isinstance(named.get("required"), list) and isinstance(siblings.get("required"), list):
        merged["required"] = list(dict.fromkeys([*named["required"], *siblings["required"]]))
    return merged


def _as_providers_take(node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with what providers want of it and JSON Schema leaves out.

    A fixed-length array (a tuple's `prefixItems`) gets an `items`, the schema of any of
    its items: OpenAI and Gemini refuse an array schema without (the whole request, whatever
    tool the model calls); another array without (an Enum's tuple values, an empty tuple)
    gets one of any item. A `required` name with no property gets one, of any value:
    Gemini refuses a required name its `properties` leave out (a `ToolSpec` given
    `required_fields` and no schema for them).
    """
    prefix = node.get("prefixItems")
    if isinstance(prefix, list) and "items" not in node:
        kinds = list(
            {json.dumps(item, sort_keys=True, default=str): item for item in prefix}.values()
        )
        node["items"] = kinds[0] if len(kinds) == 1 else {"anyOf": kinds} if kinds else {}
    elif "items" not in node and _is_array(node.get("type")):
        node["items"] = {}
    properties, required = node.get("properties"), node.get("required")
    if isinstance(properties, dict) and isinstance(required, list):
        missing = [n for n in required if isinstance(n, str) and n not in properties]
        if missing:  # a new dict: `properties` may be a definition's, shown elsewhere too
            node["properties"] = {**properties, **{name: {} for name in missing}}
    return node


def _is_array(kind: Any) -> bool:
    """Whether a schema's `type` (a name, or a list of names) allows an array."""
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def _ref_counts(node: Any) -> collections.Counter[str]:
    """How many times each `$ref` occurs in a JSON schema, its definitions included."""
    counts: collections.Counter[str] = collections.Counter()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                counts[ref] += 1
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return counts
