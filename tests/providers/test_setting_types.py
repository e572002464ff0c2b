"""Provider and embedder settings of the wrong type are refused when the object is made."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import HttpUrl, SecretStr

import llm_agent_runtime as ar

_CLASSES = [ar.OpenAIProvider, ar.AnthropicProvider, ar.OpenAIEmbedder]
_URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("cls", _CLASSES)
def test_a_secret_str_key_and_url_objects_are_read_as_their_text(cls: Any) -> None:
    made = cls(api_key=SecretStr("sk-test-key"), base_url=httpx.URL(_URL))
    assert "sk-test-key" not in repr(made)
    cls(api_key="sk-test-key", base_url=HttpUrl(_URL))


@pytest.mark.parametrize("cls", _CLASSES)
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("api_key", b"sk-test"),
        ("api_key", 1234),
        ("api_key", SecretStr("x").get_secret_value),  # a method, not called
        ("base_url", b"http://127.0.0.1:9/v1"),
        ("base_url", 9),
        ("model", b"gpt-4o"),
        ("model", True),
        ("model", 12345),
    ],
)
def test_a_setting_of_the_wrong_type_is_a_type_error(cls: Any, setting: str, value: Any) -> None:
    # They failed with a bare AttributeError, or (a model) were sent as they were.
    settings: dict[str, Any] = {"api_key": "sk-test", "base_url": _URL, setting: value}
    with pytest.raises(TypeError, match=f"^{setting} must be"):
        cls(**settings)


def test_the_embedders_model_is_no_none() -> None:
    # The providers read None as their default model; the embedder would send `null`.
    with pytest.raises(TypeError, match=r"^model must be a str"):
        ar.OpenAIEmbedder(api_key="sk-test", base_url=_URL, model=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [ar.OpenAIProvider, ar.AnthropicProvider])
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("retry", 3),
        ("budget", 100.0),
        ("budget", ar.RuntimeMetrics()),  # no check() nor record()
        ("budget", ar.CostBudget),  # the class
        ("metrics", True),
        ("metrics", ar.RuntimeMetrics),
        ("http_client", "http://127.0.0.1:9"),
        ("http_client", httpx.Client()),  # a sync client cannot serve the async calls
    ],
)
def test_a_provider_object_setting_of_the_wrong_kind_is_refused_when_made(
    cls: Any, setting: str, value: Any
) -> None:
    # They failed at the first call with an AttributeError (`metrics`: after the request
    # the server billed, whose reply was lost).
    with pytest.raises(TypeError, match=f"^{setting} must be"):
        cls(api_key="sk-test", base_url=_URL, **{setting: value})


@pytest.mark.parametrize("cls", [ar.OpenAIProvider, ar.AnthropicProvider])
def test_provider_object_settings_of_the_right_kind_are_taken(cls: Any) -> None:
    budget, metrics = ar.CostBudget(max_tokens=10), ar.RuntimeMetrics()
    made = cls(api_key="sk-test", base_url=_URL, budget=budget, metrics=metrics)
    assert made._transport.budget is budget and made._transport.metrics is metrics
