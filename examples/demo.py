"""Demo of llm-agent-runtime on embedded defaults: no keys, no servers.

Parses a short ReAct trace with the Rust parser, runs its tool calls, and counts everything
with the lock-free runtime metrics.
"""

from __future__ import annotations

import ast
import operator

import llm_agent_runtime as ar

TRACE = [
    'Thought: I need the sum first.\nAction: calculator {"expression": "17 + 25"}',
    "Thought: Now double it.\nAction: calculator\nAction Input: ```json\n"
    '{"expression": "42 * 2"}\n```',
    "Thought: I should look something up.\nAction: weather\nAction Input: Paris",
    "Thought: I have what I need.\nFinal Answer: 84",
]

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def calculator(expression: str) -> int:
    """Evaluates + - * over integers, safely (no eval)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return int(OPERATORS[type(node.op)](walk(node.left), walk(node.right)))
        raise ValueError(f"unsupported expression: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def main() -> None:
    print(f"llm-agent-runtime {ar.__version__}: ReAct parsing and runtime metrics\n")
    metrics = ar.RuntimeMetrics()
    metrics.session_started()
    for i, text in enumerate(TRACE, 1):
        step = ar.parse_react_step(text)
        metrics.record_step()
        print(f"step {i}: thought={step.thought!r}")
        if step.final_answer is not None:
            print(f"        final answer: {step.final_answer}")
            break
        metrics.record_tool_call(step.action or "", "demo-agent")
        if step.action == "calculator":
            result = calculator(**step.action_input)
            print(f"        {step.action}({step.action_input}) -> {result}")
        else:
            metrics.record_tool_failure(step.action or "", "demo-agent")
            print(f"        {step.action}({step.action_input!r}) -> not_found")
    metrics.session_finished()

    try:
        ar.parse_react_step("I am not sure what to do.")
    except ar.ParseError as err:
        print(f"\nunparseable output is a typed error: ParseError({err})")

    snapshot = metrics.snapshot()
    print("\nmetrics:")
    print(f"  steps={snapshot.total_steps} tool_calls={snapshot.total_tool_calls}")
    print(f"  failure_rate={snapshot.failure_rate():.2f} most_called={snapshot.most_called_tool()}")
    print(f"  json: {snapshot.to_json()}")
    print("\nprometheus exposition (excerpt):")
    for line in metrics.to_prometheus().splitlines():
        if "tool_calls_by_tool_total{" in line:
            print(f"  {line}")


if __name__ == "__main__":
    main()
