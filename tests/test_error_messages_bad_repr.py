"""A value whose repr raises, or is huge, given where a callable or a count is asked: the
error says what was wrong. Its repr used to be taken whole into the message, and when it
raised, its error replaced the one meant."""

import pytest

import llm_agent_runtime as ar


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr failed")


class HugeRepr:
    def __repr__(self) -> str:
        return "x" * 100_000


@pytest.mark.parametrize("value", [BadRepr(), HugeRepr()])
def test_an_event_callback_that_is_not_callable(value: object) -> None:
    with pytest.raises(ar.AgentRuntimeError, match="must be callable") as raised:
        ar.EventBus().on(value)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 300


@pytest.mark.parametrize("value", [BadRepr(), HugeRepr()])
def test_a_subscription_buffer_that_is_no_count(value: object) -> None:
    with pytest.raises(ValueError, match="max_buffered must be an int") as raised:
        ar.EventBus().subscribe(max_buffered=value)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 300


@pytest.mark.parametrize("value", [BadRepr(), HugeRepr()])
def test_a_breaker_failure_test_that_is_not_callable(value: object) -> None:
    with pytest.raises(TypeError, match="is_failure must be callable") as raised:
        ar.CircuitBreaker("svc", is_failure=value)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 300
