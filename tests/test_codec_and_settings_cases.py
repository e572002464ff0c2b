"""A record with a key written twice is refused; settings checked when set.

`codec.decode` refuses a JSON object with a key written twice, as `AgentSession.from_json`
does (`encode` never writes one: such a record is corrupt or forged). `CircuitBreaker.service`,
`RedisCircuitStateBackend.prefix` and `RedisBackend.prefix` are checked when set, as the
constructors check them; a breaker given another service goes by that service's state.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from test_redis_state import redis_url

import llm_agent_runtime as ar
from llm_agent_runtime.errors import PersistenceError
from llm_agent_runtime.orchestration.circuit_breaker import CLOSED, CircuitState
from llm_agent_runtime.persistence.base import session_key
from llm_agent_runtime.persistence.codec import FORMAT_VERSION, decode, encode
from llm_agent_runtime.persistence.redis import RedisBackend

NO_REDIS = "redis://127.0.0.1:1/0"
"""A URL no server answers: the Redis classes connect only when a command is sent."""


def _record(body: bytes, kind: str = "step") -> bytes:
    """A record holding `body` as is, with a header whose checksum matches it."""
    return b"llm-agent-runtime/%d %08x %s\n" % (FORMAT_VERSION, zlib.crc32(body), kind.encode())


def _forged(body: bytes, kind: str = "step") -> bytes:
    return _record(body, kind) + body


# -- codec.decode: a key written twice ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "twice"),
    [
        pytest.param(b'{"a":1,"a":2}', "a", id="top-level"),
        pytest.param(b'{"step":{"thought":"t","thought":"u"}}', "thought", id="nested"),
        pytest.param(b'[{"x":1},{"y":1,"y":1}]', "y", id="in-a-list"),
        pytest.param(b'{"a":1,"\\u0061":2}', "a", id="escaped-alike"),
        pytest.param(b'{"a" : 1 ,\n "a":1}', "a", id="spaced-same-value"),
    ],
)
def test_decode_refuses_a_key_written_twice_naming_it_and_the_record(
    body: bytes, twice: str
) -> None:
    with pytest.raises(PersistenceError) as refused:
        decode(_forged(body), "session:s:step:0", "step")
    assert refused.value.key == "session:s:step:0"
    assert repr(twice) in str(refused.value)
    assert "written twice" in str(refused.value)


def test_decode_refuses_a_key_written_twice_in_a_utf16_body() -> None:
    # `json.loads` reads UTF-16 and UTF-32 bodies too: the check holds for them alike.
    body = '{"a":1,"a":2}'.encode("utf-16")
    with pytest.raises(PersistenceError, match="'a' is written twice"):
        decode(_forged(body), "k")


def test_decode_still_reads_what_encode_writes_and_what_json_reads() -> None:
    payload = {
        "a": 1,
        "A": [{"a": 1}, {"a": 2}],  # the same key in two objects is no key written twice
        "nested": {"a": {"a": None}},
        "text": 'a "quoted" \\ "a":1',
        "": {},
    }
    assert decode(encode("step", payload), "k", "step") == payload
    # A body in UTF-8 with a BOM, or in UTF-16, reads as `json.loads` reads it.
    assert decode(_forged(b'\xef\xbb\xbf{"a":1}'), "k") == {"a": 1}
    assert decode(_forged('{"b":[1,2]}'.encode("utf-16")), "k") == {"b": [1, 2]}
    assert decode(_forged(b"[]"), "k") == []
    assert decode(_forged(b'"text"'), "k") == "text"


def test_decode_still_refuses_a_body_that_is_not_json() -> None:
    with pytest.raises(PersistenceError, match="record body is not JSON") as refused:
        decode(_forged(b'{"a":'), "k")
    assert refused.value.key == "k"
    with pytest.raises(PersistenceError, match="record body is not JSON"):
        decode(_forged(b"\xff\xfe\x00"), "k")


def test_a_saved_session_with_a_key_written_twice_is_refused_on_load() -> None:
    session = ar.AgentSession("s1", "agent", prompt="p", final_answer="the real one")
    good = encode("session", {"session": session.to_dict(), "finished_at": 1.0})
    body = good.partition(b"\n")[2]
    assert body.startswith(b'{"session":{')
    # The saved session's answer written twice: `json` alone would load the forged one.
    forged = _forged(b'{"session":{"final_answer":"forged",' + body[12:], "session")

    async def load(raw: bytes) -> ar.AgentSession:
        backend = ar.InMemoryBackend()
        await backend.save(session_key("s1"), raw)
        return await ar.AgentSession.load_checkpoint(backend, "s1")

    assert asyncio.run(load(good)).final_answer == "the real one"
    with pytest.raises(PersistenceError, match="'final_answer' is written twice"):
        asyncio.run(load(forged))


def test_decode_and_from_json_refuse_a_key_written_twice_alike() -> None:
    # One check for both readers: the same words for the same fault.
    with pytest.raises(PersistenceError) as from_json:
        ar.AgentSession.from_json('{"session_id":"s","session_id":"t","agent_id":"a"}')
    with pytest.raises(PersistenceError) as decoded:
        decode(_forged(b'{"session_id":"s","session_id":"t"}'), "k")
    said = "the key 'session_id' is written twice in one object"
    assert said in str(from_json.value)
    assert said in str(decoded.value)


# -- CircuitBreaker.service ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, b"svc", None, ["svc"]], ids=repr)
def test_a_bad_service_raises_the_constructors_error_and_keeps_the_old_one(bad: object) -> None:
    breaker = ar.CircuitBreaker("svc")
    with pytest.raises(TypeError, match="service must be a str") as refused:
        breaker.service = bad  # type: ignore[assignment]
    assert repr(bad)[:20] in str(refused.value)
    assert breaker.service == "svc"
    assert repr(breaker) == repr(ar.CircuitBreaker("svc"))
    with pytest.raises(TypeError) as made:
        ar.CircuitBreaker(bad)  # type: ignore[arg-type]
    assert str(refused.value) == str(made.value)
    assert breaker.call_sync(lambda: 7) == 7  # still working, on its old service


def _boom() -> None:
    raise ConnectionError("down")


def test_a_breaker_given_another_service_goes_by_that_services_state() -> None:
    backend = ar.InMemoryCircuitStateBackend()
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("a", failure_threshold=2, backend=backend, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call_sync(_boom)
    assert breaker.state == "open"
    with pytest.raises(ar.CircuitOpenError) as refused:
        breaker.call_sync(lambda: 1)
    assert refused.value.service == "a"

    breaker.service = "b"
    assert breaker.service == "b"
    assert breaker.state == "closed"  # b's state, never seen
    assert breaker.call_sync(lambda: 2) == 2
    with pytest.raises(ConnectionError):
        breaker.call_sync(_boom)
    # The failure counted for b; a's state stayed as it was.
    assert backend.peek("b").failures == 1
    assert backend.peek("a").status == "open"
    assert "service='b'" in repr(breaker)

    breaker.service = "a"
    assert breaker.state == "open"
    with pytest.raises(ar.CircuitOpenError) as refused:
        breaker.call_sync(lambda: 3)
    assert refused.value.service == "a"
    assert backend.peek("b").failures == 1


def test_a_breaker_given_another_service_reports_changes_under_its_name() -> None:
    breaker = ar.CircuitBreaker("a", failure_threshold=1)
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda change: seen.append((change.service, change.new)))
    breaker.service = "b"

    async def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        asyncio.run(breaker.call(fail))
    assert seen == [("b", "open")]
    with pytest.raises(ar.CircuitOpenError, match="'b'"):
        asyncio.run(breaker.call(fail))


class _SharedBackend:
    """A `CircuitStateBackend` other than the in-process one (as a Redis one is)."""

    def __init__(self) -> None:
        self.states: dict[str, CircuitState] = {}

    async def get(self, service: str) -> CircuitState:
        return self.states.get(service, CLOSED)

    async def update(
        self, service: str, change: Callable[[CircuitState], CircuitState]
    ) -> tuple[CircuitState, CircuitState]:
        old = self.states.get(service, CLOSED)
        self.states[service] = new = change(old)
        return old, new


def test_a_shared_breaker_given_another_service_forgets_the_state_it_saw() -> None:
    backend = _SharedBackend()
    backend.states["b"] = CLOSED._replace(failures=1)
    breaker = ar.CircuitBreaker("a", failure_threshold=1, backend=backend)

    async def go() -> None:
        with pytest.raises(ConnectionError):
            await breaker.call(_boom)
        assert breaker.state == "open"  # a's, as this breaker saw it
        breaker.service = "b"
        # Not a's state under b's name: b's is not known here until it is read.
        assert breaker.state == "closed"
        assert (await breaker.current_state()).failures == 1
        assert await breaker.call(lambda: 5) == 5
        assert backend.states["b"].failures == 0
        assert backend.states["a"].status == "open"

    asyncio.run(go())


# -- RedisCircuitStateBackend.prefix and RedisBackend.prefix -------------------------------


def _breaker_backend(**kwargs: Any) -> ar.RedisCircuitStateBackend:
    return ar.RedisCircuitStateBackend(NO_REDIS, **kwargs)


def _kv_backend(**kwargs: Any) -> RedisBackend:
    return RedisBackend(NO_REDIS, **kwargs)


@pytest.mark.parametrize(
    ("make", "bad", "error", "match"),
    [
        (_breaker_backend, b"p:", TypeError, "prefix must be a str .*got bytes"),
        (_breaker_backend, 5, TypeError, "prefix must be a str .*got int"),
        (_breaker_backend, None, TypeError, "prefix must be a str .*got NoneType"),
        (_kv_backend, b"p:", TypeError, "prefix must be a str .*got bytes"),
        (_kv_backend, 5, TypeError, "prefix must be a str .*got int"),
        (_kv_backend, "p\ud800:", PersistenceError, "prefix 'p\\\\ud800:' is not valid"),
    ],
    ids=lambda value: getattr(value, "__name__", repr(value)),
)
def test_a_bad_prefix_raises_the_constructors_error_and_keeps_the_old_one(
    make: Callable[..., Any], bad: object, error: type[Exception], match: str
) -> None:
    backend = make(prefix="p:")
    with pytest.raises(error, match=match) as refused:
        backend.prefix = bad
    assert backend.prefix == "p:"
    assert repr(backend) == repr(make(prefix="p:"))
    with pytest.raises(error) as made:
        make(prefix=bad)
    assert str(refused.value) == str(made.value)


def test_a_good_prefix_set_later_shows_in_the_repr() -> None:
    for make in (_breaker_backend, _kv_backend):
        backend = make()
        backend.prefix = "other:"
        assert backend.prefix == "other:"
        assert repr(backend) == repr(make(prefix="other:"))


def test_a_redis_breaker_backend_given_another_prefix_keeps_state_under_it() -> None:
    url = redis_url()

    async def go() -> None:
        backend = ar.RedisCircuitStateBackend(url, prefix="test:prefix-set:old:")
        await backend.client.delete("test:prefix-set:old:svc", "test:prefix-set:new:svc")
        try:
            breaker = ar.CircuitBreaker("svc", failure_threshold=1, backend=backend)
            with pytest.raises(ConnectionError):
                await breaker.call(_boom)
            assert (await backend.get("svc")).status == "open"
            backend.prefix = "test:prefix-set:new:"
            assert (await breaker.current_state()).status == "closed"  # the new key's state
            assert await breaker.call(lambda: 1) == 1
            with pytest.raises(ConnectionError):
                await breaker.call(_boom)
            assert await backend.client.exists("test:prefix-set:new:svc")
            backend.prefix = "test:prefix-set:old:"
            assert (await backend.get("svc")).status == "open"
            backend.prefix = "test:prefix-set:new:"
            assert (await backend.get("svc")).status == "open"  # its own outage
        finally:
            await backend.client.delete("test:prefix-set:old:svc", "test:prefix-set:new:svc")
            await backend.close()

    asyncio.run(go())


def test_a_redis_backend_given_another_prefix_stores_under_it() -> None:
    url = redis_url()

    async def go() -> None:
        backend = RedisBackend(url, prefix="test:kv-prefix-set:old:")
        try:
            await backend.save("k", b"old")
            backend.prefix = "test:kv-prefix-set:new:"
            assert await backend.load("k") is None
            await backend.save("k", b"new")
            assert await backend.list_keys() == ["k"]
            assert await backend.client.get("test:kv-prefix-set:new:k") == b"new"
            backend.prefix = "test:kv-prefix-set:old:"
            assert await backend.load("k") == b"old"
        finally:
            await backend.client.delete("test:kv-prefix-set:old:k", "test:kv-prefix-set:new:k")
            await backend.close()

    asyncio.run(go())
