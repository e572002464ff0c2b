"""Type stubs for the compiled `llm_agent_runtime._core` extension (kept in step with rust/)."""

__version__: str

def _raise_panic(message: str) -> None:
    """Panic inside the Rust core (tests only); raises AgentRuntimeError."""
