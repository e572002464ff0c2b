"""A run that dies mid-way, resumed from its SQLite checkpoints without charging twice.

The first runtime's model fails after two steps (as a process dying would leave the run);
a second runtime, on the same database file, resumes the session: the completed steps are
not run again, and the charge keyed by its idempotency key is made once.

    python examples/durable_resume.py [database path]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import llm_agent_runtime as ar

CHARGES: dict[str, int] = {}
"""The payment service: amounts charged, by idempotency key (a repeated key is ignored)."""


@ar.tool
def charge(amount: int, idempotency_key: str) -> str:
    """Charges the customer `amount` cents."""
    CHARGES.setdefault(idempotency_key, amount)
    return f"charged {amount}"


REPLIES = [
    'Thought: charge the first item\nAction: charge {"amount": 500}',
    'Thought: charge the second item\nAction: charge {"amount": 250}',
    "Thought: both are paid\nAction: FINAL_ANSWER charged 750 cents in all",
]


def dies_after(count: int) -> ar.InferFn:
    """A model that gives the first `count` replies, then fails (the run is cut there)."""
    replies = iter(REPLIES[:count])

    async def infer(prompt: str) -> str:
        reply = next(replies, None)
        if reply is None:
            raise ConnectionError("the process died here")
        return reply

    return infer


async def main(path: Path) -> None:
    """Runs the order until it dies, then resumes it on a new runtime."""
    with ar.SqliteBackend(path) as backend:
        first = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)
        session = first.create_session("billing")
        try:
            await first.run_agent("billing", "Charge the order", dies_after(2), session=session)
        except ConnectionError as error:
            print(f"first run stopped after {session.step_count} steps: {error}")

    # Another process, say: its own connection to the same file.
    with ar.SqliteBackend(path) as backend:
        second = ar.AgentRuntime(tools=[charge], checkpoint_backend=backend)
        replies = iter(REPLIES[2:])  # what the model says next

        async def model(prompt: str) -> str:
            return next(replies)

        done = await second.resume(session.session_id, model)
    print(f"resumed: {done.step_count} steps, answer: {done.final_answer}")
    print(f"charges made: {sorted(CHARGES.values())}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(scratch) / "runs.db"
        asyncio.run(main(target))
