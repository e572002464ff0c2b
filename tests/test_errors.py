import pickle
import subprocess
import sys

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import _core

ALL_ERRORS = [
    ar.AgentLoopError,
    ar.BackpressureShedError,
    ar.BudgetExceededError,
    ar.CircuitOpenError,
    ar.GraphError,
    ar.MemoryStoreError,
    ar.ParseError,
    ar.PersistenceError,
    ar.PolicyDeniedError,
    ar.ProviderError,
    ar.RateLimitExceededError,
    ar.ToolError,
]


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_derives_from_the_base(cls: type[Exception]) -> None:
    assert issubclass(cls, ar.AgentRuntimeError)
    assert issubclass(cls, Exception)


def test_rust_panic_becomes_agent_runtime_error() -> None:
    with pytest.raises(ar.AgentRuntimeError, match=r"internal error.*kaboom"):
        _core._raise_panic("kaboom")
    # The interpreter is still alive and the core still answers.
    with pytest.raises(ar.AgentRuntimeError):
        _core._raise_panic("again")


def test_panic_in_a_subprocess_leaves_exit_code_zero() -> None:
    code = (
        "import llm_agent_runtime as ar\n"
        "from llm_agent_runtime import _core\n"
        "try:\n"
        "    _core._raise_panic('x')\n"
        "except ar.AgentRuntimeError:\n"
        "    print('caught')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "caught"


def test_attributes_and_messages() -> None:
    err = ar.BackpressureShedError(depth=5, capacity=4)
    assert (err.depth, err.capacity) == (5, 4)
    assert "depth 5" in str(err) and "capacity 4" in str(err)
    circuit = ar.CircuitOpenError("search")
    assert circuit.service == "search" and "search" in str(circuit)
    provider = ar.ProviderError("rate limited", status=429, retryable=True, retry_after=2.0)
    assert (provider.status, provider.retryable, provider.retry_after) == (429, True, 2.0)
    assert "429" in str(provider)
    persistence = ar.PersistenceError("corrupt record", key="session:a")
    assert persistence.key == "session:a" and "session:a" in str(persistence)
    parse = ar.ParseError("expected 'Action:'", position=7)
    assert parse.position == 7 and "(at index 7)" in str(parse)
    assert ar.ToolError("boom", tool="calc").tool == "calc"
    limited = ar.RateLimitExceededError(wait=2.5, max_wait=1.0)
    assert (limited.wait, limited.max_wait) == (2.5, 1.0)
    assert str(limited) == "the rate limit would hold this call 2.5 s, past its max_wait of 1 s"
    assert isinstance(limited, TimeoutError) and limited.errno is None
    limited.add_note("while calling the search API")
    assert pickle.loads(pickle.dumps(limited)).__notes__ == ["while calling the search API"]


@pytest.mark.parametrize(
    "err",
    [
        ar.BackpressureShedError(1, 2),
        ar.CircuitOpenError("svc"),
        ar.ProviderError("x", status=500, retryable=True),
        ar.PersistenceError("bad", key="k"),
        ar.ParseError("bad", position=3),
        ar.ToolError("bad", tool="t"),
        ar.RateLimitExceededError(0.25, 0.1),
    ],
)
def test_errors_pickle_round_trip(err: ar.AgentRuntimeError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert vars(back) == vars(err)


def test_version_is_exported() -> None:
    assert ar.__version__ == _core.__version__
    assert ar.__version__.count(".") == 2


def test_importing_the_package_loads_only_the_fast_parts() -> None:
    import subprocess
    import sys

    code = (
        "import sys, llm_agent_runtime as ar\n"
        "heavy = ('pydantic', 'httpx', 'numpy', 'psycopg', 'redis', 'networkx', 'sqlite3',\n"
        "         'llm_agent_runtime.orchestration.redis_state', 'llm_agent_runtime.semantic')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "ar.AgentRuntime, ar.AgentConfig, ar.tool\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(ar.AgentConfig.__pydantic_complete__, 'importlib.metadata' in sys.modules)\n"
        "ar.SqliteBackend, ar.RedisRateLimiter\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"  # the agent layer, HTTP, databases and backends load on first use
    # An agent needs pydantic, not the backends, the HTTP stack or numpy.
    assert out[1] == "['pydantic']"
    # Its models build their validators at first use: building one at import loads
    # pydantic's plugin machinery (importlib.metadata), a sixth of the import's time.
    assert out[2] == "False False"
    assert out[3] == "['llm_agent_runtime.orchestration.redis_state', 'pydantic', 'sqlite3']"


def test_every_public_name_resolves_and_the_provider_protocol_is_one() -> None:
    from llm_agent_runtime import providers

    for module in (ar, providers):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == []
    assert ar.LlmProvider is providers.LlmProvider
    assert isinstance(ar.ScriptedProvider(["hi"]), ar.LlmProvider)
    assert not isinstance(object(), ar.LlmProvider)
