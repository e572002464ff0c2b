"""The README's Python snippets run, and show what their comments say they return."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import numpy as np
import pydantic
import pytest
from providers.fake_server import FakeLlmServer, Turn

import llm_agent_runtime as ar

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
FRAGMENT = "# In an async function"
"""The first line of a snippet that is a part of a program, not one to run as it is."""
# `expression  # literal`: the README's word for what the expression returns.
SHOWN = re.compile(r"^(?P<expr>[^#\s][^#]*?)\s+#\s+(?P<value>[(\[{'].*)$")


def test_the_readme_snippets_run_and_return_what_they_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files a snippet creates go there
    namespace: dict[str, object] = {}
    shown = 0
    for snippet in SNIPPETS:
        if snippet.startswith(FRAGMENT):
            compile(snippet, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            continue
        exec(compile(snippet, "README.md", "exec"), namespace)  # one program, in order
        for line in snippet.splitlines():
            match = SHOWN.match(line)
            if match is None:
                continue
            try:
                expression = compile(match["expr"], "README.md", "eval")
                expected = ast.literal_eval(match["value"])
            except (ValueError, SyntaxError):
                continue  # a statement (an assignment), or a comment that is no value
            assert eval(expression, namespace) == expected, line
            shown += 1
    assert len(SNIPPETS) >= 6 and shown >= 5


def snippet_with(text: str) -> str:
    """The one README snippet that holds `text`."""
    (found,) = [snippet for snippet in SNIPPETS if text in snippet]
    return found


def without_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


ENVIRONMENT = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "ANTHROPIC_API_KEY")
ENVIRONMENT += ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL")


def test_the_agent_with_a_tool_answers_as_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace: dict[str, object] = {}
    exec(compile(snippet_with("def add("), "README.md", "exec"), namespace)
    assert capsys.readouterr().out == "5 2 1\n"  # answer, steps, tool calls


def test_the_real_model_snippet_runs_against_an_openai_compatible_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `main()` the README defines, its local server's URL swapped for a loopback one."""
    without_model_settings(monkeypatch)  # the snippet passes its settings itself
    namespace: dict[str, object] = {}
    exec(compile(snippet_with("def add("), "README.md", "exec"), namespace)
    capsys.readouterr()
    real = snippet_with("async def main()")
    with FakeLlmServer() as server:
        server.script(
            Turn(tool_calls=[("call_1", "add", {"a": 2, "b": 3})]),
            Turn("2 + 3 = 5"),
            Turn("Hello!"),
        )
        code = real.replace("http://localhost:11434/v1", f"{server.url}/v1")
        assert code != real
        exec(compile(code, "README.md", "exec"), namespace)
        main = namespace["main"]
        assert callable(main)
        asyncio.run(main())
        requests = list(server.requests)
    assert capsys.readouterr().out == "Hello!"  # the streamed deltas
    assert [request.json["model"] for request in requests] == ["qwen3"] * 3
    assert [bool(request.json.get("stream")) for request in requests] == [False, False, True]
    assert [tool["function"]["name"] for tool in requests[0].json["tools"]] == ["add"]


def test_the_providers_defaults_are_the_readmes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models `gpt-4o-mini` / `claude-sonnet-4-5`; settings from the environment; None unset."""
    without_model_settings(monkeypatch)
    assert ar.provider_from_env() is None
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # no key: still none
    assert ar.provider_from_env() is None
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    anthropic = ar.provider_from_env()
    assert isinstance(anthropic, ar.AnthropicProvider)
    assert anthropic.model == "claude-sonnet-4-5"
    assert "http://127.0.0.1:9" in repr(anthropic)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")  # OpenAI-compatible
    local = ar.provider_from_env()
    assert isinstance(local, ar.OpenAIProvider) and local.model == "gpt-4o-mini"
    assert "http://127.0.0.1:11434/v1" in repr(local)
    monkeypatch.setenv("OPENAI_MODEL", "qwen3")
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-x")
    assert ar.OpenAIProvider().model == "qwen3"
    assert ar.AnthropicProvider(max_tokens=1024).model == "claude-x"


def test_the_durable_fragment_resumes_a_run_that_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fragment, in an async function, its `...` a run that dies after one step."""
    monkeypatch.chdir(tmp_path)  # `runs.db` goes there
    fragment = snippet_with(FRAGMENT)
    lines = fragment.splitlines()
    (dies,) = [number for number, line in enumerate(lines) if line.startswith("...")]
    lines[dies] = "await run_until_it_dies(runtime, session)"
    body = "\n".join(f"    {line}" for line in lines)
    code = (
        f"async def fragment(ar, charge, model, run_until_it_dies):\n{body}\n"
        "    return session, runtime"
    )
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    charged: list[tuple[int, str]] = []

    @ar.tool
    def charge(amount: int, idempotency_key: str) -> str:
        """Charges `amount` cents."""
        charged.append((amount, idempotency_key))
        return "charged"

    replies = [
        'Thought: pay\nAction: charge {"amount": 5}',
        "Thought: paid\nAction: FINAL_ANSWER done",
    ]

    async def run_until_it_dies(runtime: ar.AgentRuntime, session: ar.AgentSession) -> None:
        async def dies_after_one_step(prompt: str) -> str:
            if session.step_count:
                raise ConnectionError("the process died here")
            return replies[0]

        with pytest.raises(ConnectionError):
            await runtime.run_agent("agent-1", "pay", dies_after_one_step, session=session)

    async def model(prompt: str) -> str:
        return replies[1]

    fragment_fn = namespace["fragment"]
    assert callable(fragment_fn)
    session, runtime = asyncio.run(fragment_fn(ar, charge, model, run_until_it_dies))
    runtime.checkpoint_backend.close()  # else its connection is left to the collector
    assert session.final_answer == "done" and session.step_count == 2
    assert len(charged) == 1  # the step done before the death is not run again
    assert (tmp_path / "runs.db").is_file()


def test_the_errors_are_the_ones_the_readme_names() -> None:
    with pytest.raises(ar.ParseError) as parse:
        ar.parse_react_step("no step here")
    assert isinstance(parse.value, ar.AgentRuntimeError)
    assert isinstance(parse.value.position, int)
    with pytest.raises(pydantic.ValidationError):
        ar.AgentConfig(max_iterations=0)
    for make in (
        lambda: ar.RetryPolicy(max_attempts=0),
        lambda: ar.CircuitBreaker("api", failure_threshold=0),
        lambda: ar.CostBudget(max_cost_usd=-1.0),
    ):
        with pytest.raises((ValueError, TypeError)):
            make()
    index = ar.VectorIndex(4)
    index.add(np.arange(2), np.ones((2, 4), dtype=np.float32))
    query = np.ones(4, dtype=np.float32)
    graph = ar.GraphStore()
    # The wrong type for the Rust core is Python's TypeError, as for built-ins ...
    with pytest.raises(TypeError):
        index.search(query, k=1.5)
    with pytest.raises(TypeError):
        graph.add_entity(None, "person")
    # ... and a value of the right type that is refused, the typed error.
    with pytest.raises(ar.MemoryStoreError):
        index.search(query, k=-1)
    with pytest.raises(ar.MemoryStoreError):
        index.search(query, k=True)
    with pytest.raises(ar.GraphError):
        graph.bfs("nobody")
