"""Which calls are retried, and how often: only those that are safe to repeat."""

import httpx
import pytest

from wasmtx import ApiError, AsyncClient, Client


def flaky(failures):
    """A transport that answers 503 `failures` times, then 200, counting requests."""
    seen = []

    def handle(request):
        seen.append((request.method, request.url.path, request.headers.get("Idempotency-Key")))
        if len(seen) <= failures:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
        return httpx.Response(200, json={"status": "success", "saga_id": "saga-1", "state": "pending"})

    return httpx.MockTransport(handle), seen


def test_reads_and_keyed_writes_are_retried_unkeyed_writes_are_not():
    transport, seen = flaky(2)
    with Client("http://wasmtx.test", transport=transport, retries=3) as c:
        assert c.get_saga("saga-1").saga_id == "saga-1"
    assert len(seen) == 3

    transport, seen = flaky(1)
    with Client("http://wasmtx.test", transport=transport) as c:
        assert c.create_saga("order", idempotency_key="k-1").saga_id == "saga-1"
    assert [s[2] for s in seen] == ["k-1", "k-1"], "the retry carries the same key"

    transport, seen = flaky(1)
    with Client("http://wasmtx.test", transport=transport) as c:
        with pytest.raises(ApiError) as e:
            c.create_saga("order")
    assert (e.value.status, e.value.code, len(seen)) == (503, "unavailable", 1)


def test_retries_stop_after_the_budget():
    transport, seen = flaky(10)
    with Client("http://wasmtx.test", transport=transport, retries=2) as c:
        with pytest.raises(ApiError):
            c.list_sagas()
    assert len(seen) == 2


def test_the_api_key_is_sent_as_a_bearer_token_and_taken_from_the_environment(monkeypatch):
    headers = []
    transport = httpx.MockTransport(lambda r: headers.append(r.headers.get("Authorization")) or httpx.Response(200, json={"status": "ok"}))
    monkeypatch.setenv("WASMTX_API_KEY", "key-from-env")
    monkeypatch.setenv("WASMTX_URL", "http://from-env.test")
    with Client(transport=transport) as c:
        assert c.url == "http://from-env.test"
        c.health()
    assert headers == ["Bearer key-from-env"]


async def test_the_async_client_retries_the_same_way():
    transport, seen = flaky(1)
    async with AsyncClient("http://wasmtx.test", transport=transport) as c:
        assert (await c.get_saga("saga-1")).saga_id == "saga-1"
    assert len(seen) == 2
