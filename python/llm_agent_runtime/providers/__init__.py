"""LLM providers: the `LlmProvider` protocol and its implementations."""
