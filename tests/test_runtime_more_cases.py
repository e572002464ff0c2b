"""Runtime API cases: misconfiguration refused at construction, session ids checked."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

import llm_agent_runtime as ar


@pytest.mark.parametrize("middlewares", [3, 1.5, object()])
def test_middlewares_that_are_not_a_list_are_refused_by_name(middlewares: object) -> None:
    with pytest.raises(ar.AgentRuntimeError, match="middlewares must be a list of Middleware"):
        ar.AgentRuntime(ar.AgentConfig(), middlewares=middlewares)  # type: ignore[arg-type]


def test_forget_approvals_takes_the_session_id_not_the_session() -> None:
    runtime = ar.AgentRuntime(ar.AgentConfig())
    session = runtime.create_session("agent")
    with pytest.raises(TypeError, match=r"session_id must be a str.*session\.session_id"):
        runtime.forget_approvals(session)  # type: ignore[arg-type]
    runtime.forget_approvals(session.session_id)  # a session with nothing remembered: fine


@ar.tool
async def transfer(amount: int) -> str:
    """Moves money."""
    return "moved"


class ClaimDropFails(ar.InMemoryBackend):
    """Fails (`failing`: "error" or "cancel") as a deletion drops its claim, last of all: the
    session's records are gone by then."""

    failing: str | None = None

    async def save_new(self, key: str, value: bytes) -> bool:
        if self.failing and re.fullmatch(r"session:[^:]+:run:\d+:[0-9a-f]+", key):  # takeover
            if self.failing == "error":
                raise OSError("disk hiccup")
            raise asyncio.CancelledError
        return await super().save_new(key, value)


@pytest.mark.parametrize(
    ("how", "cut"),
    [
        *((how, cut) for how in ("sweep", "delete_session") for cut in ("error", "cancel", None)),
        ("sweep", "damaged other"),  # a deletion takes one session: a sweep meets others
    ],
)
async def test_a_deleted_session_forgets_its_remembered_approvals(
    how: str, cut: str | None
) -> None:
    # A new chat reusing a swept id was approved with the old chat's decisions, unasked (as
    # `delete_session` forgets them); and so after a sweep or deletion that failed once the
    # session's records were gone (or on another, damaged session).
    asked: list[str] = []

    async def approve(session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        asked.append(session.session_id)
        return ar.ApprovalDecision("approve", remember=True)

    def model() -> ar.ScriptedProvider:
        call = ar.ScriptedProvider.tool_call_reply([("transfer", {"amount": 5})])
        return ar.ScriptedProvider([call, "done"])

    backend = ClaimDropFails()
    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(
        config, tools=[transfer], checkpoint_backend=backend, approval_handler=approve
    )
    await runtime.run_turn(runtime.create_session("a", "chat-42"), "pay", model())
    delete = runtime.sweep(0) if how == "sweep" else runtime.delete_session("chat-42")
    if cut == "damaged other":
        await runtime.run_turn(runtime.create_session("a", "zzz"), "pay", model())
        await backend.save("session:zzz", b"not a checkpoint")
        with pytest.raises(ar.PersistenceError, match="sweep deleted 1 session"):
            await delete
    elif cut is not None:
        backend.failing = cut
        with pytest.raises(ar.PersistenceError if cut == "error" else asyncio.CancelledError):
            await delete
        backend.failing = None
        assert await backend.list_keys("session:chat-42:") == ["session:chat-42:run:2"]
    else:
        assert await delete == (["chat-42"] if how == "sweep" else True)
    asked.clear()
    await runtime.run_turn(runtime.create_session("a", "chat-42"), "pay again", model())
    assert asked == ["chat-42"]
