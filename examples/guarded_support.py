"""A multi-turn support agent with a human in the loop: approvals, a middleware, a budget.

Three turns of one chat session on a scripted tool-calling model. A middleware masks email
addresses before the model sees a message; the approval handler lets order lookups through
(remembered for the session, so it is asked once), edits a refund down to the policy's limit
and denies cancellations; a token budget caps what the session may spend. The history goes
from turn to turn, trimmed to `context_window_tokens`.

Set OPENAI_API_KEY (or OPENAI_BASE_URL, or ANTHROPIC_API_KEY) to run it on a real model.

    python examples/guarded_support.py
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import llm_agent_runtime as ar

ORDERS = {"1001": {"item": "headphones", "paid_cents": 8000, "status": "delivered"}}
REFUND_LIMIT_CENTS = 5000
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
ASKED: list[str] = []
"""The tools the approval handler was asked about, in order."""


@ar.tool
def lookup_order(order_id: str) -> str:
    """The item, amount paid and status of an order."""
    order = ORDERS.get(order_id)
    if order is None:
        raise ValueError(f"no order {order_id}")  # a failed call: the model is told why
    return f"{order['item']}, paid {order['paid_cents']} cents, {order['status']}"


@ar.tool
def refund(order_id: str, amount_cents: int) -> str:
    """Refunds part or all of an order."""
    return f"refunded {amount_cents} cents on order {order_id}"


@ar.tool
def cancel_order(order_id: str) -> str:
    """Cancels an order."""
    return f"cancelled order {order_id}"


class MaskEmails(ar.Middleware):
    """Keeps customers' email addresses away from the model."""

    def on_user_message(self, session: ar.AgentSession, text: str) -> str:
        """The message with each email address replaced by `<email>`."""
        return EMAIL.sub("<email>", text)


def approve(session: ar.AgentSession, tool: str, arguments: Any) -> ar.ApprovalDecision:
    """The support policy: lookups are fine, refunds capped, cancellations need a person."""
    ASKED.append(tool)
    if tool == "lookup_order":
        return ar.ApprovalDecision("approve", remember=True)
    if tool == "refund":
        # A real model's arguments are not checked yet: the tool's validation comes after,
        # and would turn "8000" or 8000.0 into 8000 past the cap. Only an int is capped.
        amount = arguments.get("amount_cents") if isinstance(arguments, dict) else None
        if type(amount) is not int or amount < 1:
            return ar.ApprovalDecision("deny", reason="amount_cents must be a positive integer")
        if amount > REFUND_LIMIT_CENTS:
            capped = {**arguments, "amount_cents": REFUND_LIMIT_CENTS}
            return ar.ApprovalDecision("edit", arguments=capped)
    if tool == "cancel_order":
        return ar.ApprovalDecision("deny", reason="cancellations are done by a person")
    return ar.ApprovalDecision("approve")


def scripted(last: str) -> ar.ChatResponse | str:
    """What a tool-calling model would answer to the conversation's last message."""
    call = ar.ScriptedProvider.tool_call_reply
    if last.startswith("headphones"):  # the lookup's result
        return "Order 1001 (headphones) was delivered."
    if last.startswith("refunded"):
        return f"Done: {last}."
    if "cancellations are done by a person" in last:  # the denial's reason
        return "I cannot cancel it myself; a colleague will get back to you."
    if "cancel" in last:
        return call([("cancel_order", {"order_id": "1001"})])
    if "refund" in last:
        refund_all = {"order_id": "1001", "amount_cents": 8000}
        return call([("lookup_order", {"order_id": "1001"}), ("refund", refund_all)])
    if "order 1001" in last:
        return call([("lookup_order", {"order_id": "1001"})])
    return "How can I help?"


async def main() -> None:
    """Runs three turns of one session and prints what each did."""
    model = ar.provider_from_env() or ar.ScriptedProvider(rule=scripted)
    config = ar.AgentConfig(mode="tools", max_iterations=4, context_window_tokens=2000)
    budget = ar.CostBudget(max_tokens=20_000)
    runtime = ar.AgentRuntime(
        config,
        tools=[lookup_order, refund, cancel_order],
        middlewares=[MaskEmails()],
        approval_handler=approve,
        budget=budget,
    )
    session = runtime.create_session("support")
    turns = [
        "Hi, I'm ann@example.com. Where is my order 1001?",
        "The headphones are broken, please refund order 1001 in full.",
        "Then cancel my order 1001 altogether.",
    ]
    for n, message in enumerate(turns, 1):
        steps_before = len(session.steps)
        answer = await runtime.run_turn(session, message, model)
        print(f"turn {n}: {message}")
        for step in session.steps[steps_before:]:
            if step.action != "FINAL_ANSWER":
                kind = step.error_kind or "ok"
                print(f"  {step.action}({step.action_input}) -> {step.observation} [{kind}]")
                if step.requested is not None:  # the approval handler edited the call
                    asked = step.requested
                    print(f"    the model asked for {asked['name']}({asked['arguments']})")
        print(f"  answer: {answer}")
    print(f"the model saw: {session.messages[0]['content']}")
    print(f"approval asked for: {', '.join(ASKED)}")
    print(f"history: {len(session.messages)} messages over {len(turns)} turns")
    print(f"tokens spent: {budget.used_tokens} of {budget.max_tokens}")


if __name__ == "__main__":
    asyncio.run(main())
