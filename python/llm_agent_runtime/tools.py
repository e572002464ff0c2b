"""Tools the agent calls: `ToolSpec`, the `@tool` decorator and the `ToolRegistry`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, NamedTuple

from pydantic import TypeAdapter, ValidationError, create_model
from typing_extensions import NotRequired, TypedDict

from llm_agent_runtime.errors import (
    BudgetExceededError,
    CircuitOpenError,
    PolicyDeniedError,
    ProviderError,
    ToolError,
)
from llm_agent_runtime.orchestration import CircuitBreaker

__all__ = ["ErrorKind", "Observation", "ToolRegistry", "ToolSpec", "tool"]

IDEMPOTENCY_KEY = "idempotency_key"
"""Name of the parameter through which a tool receives its call's idempotency key."""

ErrorKind = Literal["not_found", "transient", "permanent"]
"""Why a tool call failed: unknown tool, worth retrying, or not."""

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    ConnectionError,
    CircuitOpenError,
)


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

    Args:
        error: The exception the handler raised.

    Returns:
        The error kind.
    """
    if isinstance(error, _TRANSIENT_ERRORS):
        return "transient"
    if isinstance(error, ProviderError):
        return "transient" if error.retryable else "permanent"
    return "permanent"


class ToolSpec:
    """A tool: a name, a description, a JSON schema, and a handler.

    A handler receives the parsed arguments as one dict; it may be sync (run in a worker
    thread, off the event loop) or async (awaited).

    Args:
        name: Name the model calls the tool by.
        description: What the tool does, shown to the model.
        handler: `dict -> result`, sync or async.
        parameters: JSON schema of the arguments object.
        required_fields: Argument names that must be present (added to the schema's `required`).
        timeout: Seconds a call may take before it fails as `transient`.
        circuit_breaker: Fast-fails calls while the tool is unhealthy.
        run_inline: Run a sync handler on the event loop (for trivial, non-blocking handlers).
        idempotent: Running a call twice has the effect of running it once, so a resumed run
            may repeat a call that an interruption left unfinished. With checkpoints on, a lone
            call of such a tool is not journaled before it runs (one write less per step): an
            interrupted step is run again, model reply included.
        takes_idempotency_key: The handler receives `idempotency_key` to deduplicate its side
            effects itself. With checkpoints on, the key is unique per session, step and call,
            and stable across a resume; without them (or when `ToolRegistry.call` is given no
            key) each call gets a fresh random key: unique per call, never repeated.

    Raises:
        ToolError: When the name is empty or the handler is not callable.
    """

    __slots__ = (
        "_check",
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
        if not name or not name.strip():
            raise ToolError("tool name must not be empty")
        if not callable(handler):
            raise ToolError(f"handler of tool {name!r} is not callable", tool=name)
        if timeout is not None and timeout <= 0:
            raise ToolError(f"timeout of tool {name!r} must be positive", tool=name)
        self.name = name
        self.description = description
        self.handler = handler
        self.parameters = parameters or {"type": "object", "properties": {}}
        self.required_fields = tuple(required_fields) or tuple(self.parameters.get("required", ()))
        self.timeout = timeout
        self.circuit_breaker = circuit_breaker
        self.run_inline = run_inline
        self.idempotent = idempotent
        self.takes_idempotency_key = takes_idempotency_key
        self.is_async = _is_async_callable(handler)
        # Checks an arguments dict; `@tool` puts pydantic's validator here. It may raise a
        # bare ValidationError: `check_arguments` wraps bare values and explains failures.
        self._check: Callable[[Any], dict[str, Any]] = self._check_required

    def definition(self) -> dict[str, Any]:
        """Returns the tool as a provider-neutral definition dict (name, description, schema)."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def check_arguments(self, arguments: Any) -> dict[str, Any]:
        """Validates arguments; returns them as a dict.

        Raises:
            ValueError: With a message for the model when arguments are missing or wrong.
        """
        try:
            return self._check(self._as_object(arguments))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in error.errors()
            )
            raise ValueError(f"invalid arguments: {problems}") from None

    def _as_object(self, arguments: Any) -> dict[str, Any]:
        """The arguments as a dict: a bare value is taken as the only required argument."""
        if isinstance(arguments, dict):
            return arguments
        if len(self.required_fields) == 1:
            return {self.required_fields[0]: arguments}
        raise ValueError(f"arguments of {self.name} must be a JSON object")

    def _check_required(self, arguments: Any) -> dict[str, Any]:
        checked = self._as_object(arguments)
        missing = [f for f in self.required_fields if f not in checked]
        if missing:
            raise ValueError(f"missing required argument(s) {', '.join(missing)}")
        return checked

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Runs the handler (sync handlers off the event loop) under the per-tool timeout.

        An awaitable returned by a handler taken for sync is awaited on the event loop.
        """
        if self.is_async:
            call: Awaitable[Any] = self.handler(arguments)
        elif self.run_inline:
            result = self.handler(arguments)
            if not inspect.isawaitable(result):
                return result
            call = result
        else:
            call = self._in_thread(arguments)
        if self.timeout is not None:
            return await asyncio.wait_for(call, self.timeout)
        return await call

    async def _in_thread(self, arguments: dict[str, Any]) -> Any:
        """Runs a sync handler in a worker thread; awaits what it returns if that is awaitable."""
        result = await asyncio.to_thread(self.handler, arguments)
        if inspect.isawaitable(result):
            return await result
        return result

    def __repr__(self) -> str:
        return f"ToolSpec(name={self.name!r})"


def _is_async_callable(handler: Any) -> bool:
    """Whether calling `handler` returns a coroutine.

    True for an async function, an object with an async `__call__`, or a `functools.partial`
    of either.
    """
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(handler):
        return True
    if isinstance(handler, type) or inspect.isroutine(handler):
        return False  # calling a class makes an instance; a plain routine was checked above
    return inspect.iscoroutinefunction(type(handler).__call__)


_ARG_SECTIONS = frozenset({"args", "arguments", "parameters", "params"})
# Google-style section headers; any other single word ending in ":" on a line of its own,
# at the docstring's left margin, is taken for a section header too.
_SECTIONS = _ARG_SECTIONS | {
    "attributes",
    "example",
    "examples",
    "except",
    "exceptions",
    "keyword args",
    "keyword arguments",
    "methods",
    "note",
    "notes",
    "other parameters",
    "raise",
    "raises",
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


def _section_header(raw: str) -> str | None:
    """The lower-cased section name when `raw` is a section header line, else None."""
    if raw[:1].isspace() or not raw.rstrip().endswith(":"):
        return None
    name = raw.strip()[:-1].strip().lower()
    if name in _SECTIONS or name.isalpha():
        return name
    return None


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """Splits a Google-style docstring into a summary and per-argument descriptions.

    The summary is the prose outside sections (its first two lines); `Returns:`, `Raises:`,
    `Examples:` and other sections are left out of it. Argument descriptions come from the
    `Args:` section.
    """
    summary_lines: list[str] = []
    arg_docs: dict[str, str] = {}
    section: str | None = None
    for raw in inspect.cleandoc(doc).splitlines():
        line = raw.strip()
        if not line:
            continue
        header = _section_header(raw)
        if header is not None:
            section = header
            continue
        if section is not None and not raw[:1].isspace():
            section = None  # back at the left margin: the section has ended
        if section is None:
            summary_lines.append(line)
        elif (
            section in _ARG_SECTIONS
            and ":" in line
            and raw.startswith("    ")
            and not raw.startswith("        ")
        ):
            arg, text = line.split(":", 1)
            arg_docs[arg.split(" ")[0]] = text.strip()
    return " ".join(summary_lines[:2]), arg_docs


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    circuit_breaker: CircuitBreaker | None = None,
    idempotent: bool = False,
) -> Any:
    """Turns a typed function into a `ToolSpec`; schema from type hints and docstring.

    The function receives the arguments as keyword arguments, validated by pydantic.

    Args:
        fn: The function (when used as `@tool` without parentheses).
        name: Tool name (default: the function's name).
        timeout: Per-call timeout in seconds.
        circuit_breaker: Optional breaker for this tool.
        idempotent: Calls may be repeated safely (see `ToolSpec`). A function with a parameter
            named `idempotency_key` receives the call's key, and is not shown that parameter.

    Returns:
        A `ToolSpec`, or a decorator producing one.
    """

    def build(func: Callable[..., Any]) -> ToolSpec:
        summary, arg_docs = _doc_parts(func.__doc__ or "")
        signature = inspect.signature(func)
        hints = inspect.get_annotations(func, eval_str=True)
        fields: dict[str, Any] = {}
        typed_fields: dict[str, Any] = {}
        takes_key = IDEMPOTENCY_KEY in signature.parameters
        for param in signature.parameters.values():
            if param.name == IDEMPOTENCY_KEY:
                continue
            annotation = hints.get(param.name, Any)
            optional = param.default is not inspect.Parameter.empty
            fields[param.name] = (annotation, param.default if optional else ...)
            typed_fields[param.name] = NotRequired[annotation] if optional else annotation
        schema = create_model(f"{func.__name__}_args", **fields).model_json_schema()
        # Validating into a TypedDict yields the checked dict directly (no model instance to
        # unpack); omitted optional arguments fall back to the function's own defaults.
        validator = TypeAdapter(TypedDict(f"{func.__name__}_args", typed_fields))  # type: ignore[operator]
        schema.pop("title", None)
        for prop_name, prop in schema.get("properties", {}).items():
            prop.pop("title", None)
            if prop_name in arg_docs:
                prop["description"] = arg_docs[prop_name]
        is_async = _is_async_callable(func)

        def handler(arguments: dict[str, Any]) -> Any:
            # Returns the coroutine of an async `func` unawaited: one frame less per call.
            return func(**arguments)

        spec = ToolSpec(
            name or func.__name__,
            summary,
            handler,
            parameters=schema,
            timeout=timeout,
            circuit_breaker=circuit_breaker,
            idempotent=idempotent,
            takes_idempotency_key=takes_key,
        )
        # pydantic's core validator itself: the registry tries it first, with no frame around.
        spec._check = validator.validator.validate_python
        spec.is_async = is_async
        return spec

    if fn is not None:
        return build(fn)
    return build


def _render(result: Any) -> str:
    """The text the model sees for a tool's result: JSON where it can be, else `str`."""
    if isinstance(result, str):
        return str(result)
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)


class ToolRegistry:
    """Named tools, and the one place tool calls are run and their failures classified."""

    __slots__ = ("_tools",)

    def __init__(self, tools: Iterable[ToolSpec] = ()) -> None:
        self._tools: dict[str, ToolSpec] = {}
        for spec in tools:
            self.register(spec)

    def register(self, spec: ToolSpec) -> None:
        """Adds a tool.

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
        """Returns every tool's definition dict."""
        return [spec.definition() for spec in self._tools.values()]

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    async def call(
        self,
        name: str,
        arguments: Any,
        max_chars: int = 4000,
        idempotency_key: str | None = None,
    ) -> Observation:
        """Runs one tool call; every failure becomes an `Observation` with an error kind.

        `idempotency_key` is passed to tools that take one (a fresh random key when it is
        None). Every observation is truncated to `max_chars`. Policy errors
        (`PolicyDeniedError`, `BudgetExceededError`) and cancellation propagate.
        """
        spec = self._tools.get(name)
        if spec is None:
            known = ", ".join(self.names()) or "none"
            message = f"error: unknown tool {name!r} (known: {known})"
            return Observation(_truncate(message, max_chars), "not_found")
        try:
            checked = spec._check(arguments)
        except ValueError:  # a bare value to wrap, or arguments to explain: the full check
            try:
                checked = spec.check_arguments(arguments)
            except ValueError as error:
                return Observation(_truncate(f"error: {error}", max_chars), "permanent")
        if spec.takes_idempotency_key:
            # Without a key from the caller (no checkpoints), one unique to this call.
            key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
            checked = {**checked, IDEMPOTENCY_KEY: key}
        try:
            if spec.circuit_breaker is not None:
                result = await spec.circuit_breaker.call(spec.invoke, checked)
            elif spec.is_async and spec.timeout is None:  # the common case, one frame less
                result = await spec.handler(checked)
            else:
                result = await spec.invoke(checked)
        except (PolicyDeniedError, BudgetExceededError):
            raise
        except Exception as error:  # a tool's failure is an observation for the model
            kind = classify_error(error)
            message = str(error) or type(error).__name__
            if isinstance(error, TimeoutError):
                message = f"timed out after {spec.timeout} s"
            return Observation(_truncate(f"error: {message}", max_chars), kind)
        text: str = _RENDER_EXACT.get(type(result), _render)(result)
        if len(text) > max_chars:
            text = _truncate(text, max_chars)
        # tuple.__new__ skips the named tuple's Python-level __new__: the success path is hot.
        return _new_tuple(Observation, (text, None))


_new_tuple = tuple.__new__
# The commonest results, rendered by one C call (a str is returned as is).
_RENDER_EXACT: dict[type, Callable[[Any], str]] = {
    str: str,
    int: int.__repr__,
    float: float.__repr__,
}
_TRUNCATION_MARK = " …[truncated]"


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[: max_chars - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK
