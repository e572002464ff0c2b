"""Pipelines: a chain of sync or async stages, each fed the previous stage's output."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Self

from llm_agent_runtime.errors import PipelineStageError
from llm_agent_runtime.orchestration._calls import uncallable_error
from llm_agent_runtime.orchestration._checks import names_repr, safe_repr, short_repr

__all__ = ["Pipeline"]


class Pipeline:
    """A composable chain of stages; `await pipeline.run(value)` runs them in order.

    A failing stage raises `PipelineStageError` naming the stage, with the original error
    as its cause.

    Args:
        stages: initial `(name, fn)` pairs or plain callables (named after the function, or
            the class of a callable object).

    Raises:
        TypeError: a stage is neither a callable nor a `(name, fn)` pair.
    """

    def __init__(self, *stages: Callable[[Any], Any] | tuple[str, Callable[[Any], Any]]) -> None:
        self._stages: list[tuple[str, Callable[[Any], Any]]] = []
        for stage in stages:
            if isinstance(stage, tuple):
                if len(stage) != 2 or not isinstance(stage[0], str):
                    # A bounded repr that never raises: else its error replaced this one.
                    raise TypeError(f"a named stage is a (name, fn) pair, got {short_repr(stage)}")
                self.then(stage[1], name=stage[0])
            else:
                self.then(stage)

    @safe_repr
    def __repr__(self) -> str:
        return f"Pipeline(stages={names_repr(self.stage_names)})"

    @property
    def stage_names(self) -> list[str]:
        """Names of the stages, in order."""
        return [name for name, _ in self._stages]

    def then(self, fn: Callable[[Any], Any], name: str | None = None) -> Pipeline:
        """Appends a stage (sync or async) and returns the pipeline, for chaining.

        Raises:
            TypeError: `fn` is not callable, or `name` is neither None nor a str.
        """
        if not callable(fn):
            # A coroutine (`then(step(x))`) is closed: refused, not left never awaited.
            raise uncallable_error(fn, "a pipeline stage")
        if name is not None and not isinstance(name, str):
            # Checked as a `(name, fn)` pair's is: else the error's `.stage` is no name.
            raise TypeError(f"a stage name must be a str, got {short_repr(name)}")
        # A callable object is named after its class: a repr holds a memory address.
        default = getattr(fn, "__name__", None) or type(fn).__name__
        self._stages.append((name or str(default), fn))
        return self

    def __copy__(self) -> Self:
        """A pipeline of the same stages, to which `then` adds apart from this one.

        Of the same class, with the same other attributes (a subclass's).
        """
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._stages = list(self._stages)
        return clone

    def __or__(self, other: Pipeline) -> Pipeline:
        """Concatenates two pipelines (`|` with anything else is a TypeError)."""
        if not isinstance(other, Pipeline):
            return NotImplemented
        joined = Pipeline()
        joined._stages = [*self._stages, *other._stages]
        return joined

    async def run(self, value: Any) -> Any:
        """Feeds `value` through every stage and returns the last stage's output.

        A run goes through the stages the pipeline had when it started: a stage added by
        `then` meanwhile is for later runs.

        Raises:
            PipelineStageError: a stage failed; `.stage` names it.
        """
        # A copy: `then` appends to the list in place, and a run in flight would go on into
        # a stage added meanwhile (fed an output it was not written for).
        for index, (name, fn) in enumerate(tuple(self._stages)):
            try:
                # Called here, not in a helper coroutine: a sync stage's StopIteration stays
                # itself (a coroutine would turn it into a RuntimeError).
                value = fn(value)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                try:
                    detail = str(exc)
                except Exception:  # else its error would replace the stage's, unnamed
                    detail = f"{type(exc).__name__} (its message cannot be shown)"
                raise PipelineStageError(
                    f"pipeline stage {index} ({name!r}) failed: {detail}", stage=name
                ) from exc
        return value
