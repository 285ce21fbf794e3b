"""One description of every call (`Call`), and the two ways of sending it: `Client` blocks,
`AsyncClient` awaits. The endpoints are written once, in `wasmtx._api.Api`; each returns what
`_run` makes of its `Call`."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
# Answers after which a call that is safe to repeat is repeated (the server or a proxy in
# front of it was briefly unable to answer).
RETRY_STATUSES = {502, 503, 504}


class ApiError(Exception):
    """An error answer of the API: `{"error": {"code", "message"}}` with its HTTP status, or a
    transport failure (`code` "unreachable", status 0)."""

    def __init__(self, status: int, code: str, message: str, body: Any = None):
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


@dataclass
class Call:
    method: str
    path: str
    json: Any = None
    content: Optional[bytes] = None
    params: Optional[Dict[str, Any]] = None
    headers: Dict[str, str] = field(default_factory=dict)
    # Whether sending it twice does no harm (GET, PUT of plugin bytes, or a write that carries
    # an Idempotency-Key): only such calls are retried.
    idempotent: bool = False
    parse: Callable[[Any], Any] = lambda body: body
    timeout: Optional[float] = None


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return ApiError(response.status_code, str(err.get("code", "error")), str(err.get("message", "")), body)
    return ApiError(response.status_code, "http_error", response.text[:500], body)


def _answer(call: Call, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error_of(response)
    if not response.content:
        return call.parse({})
    return call.parse(response.json())


def _backoff(attempt: int) -> float:
    return min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2)


class _Base:
    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, transport: Any = None):
        # `transport`: an httpx transport to send through instead of the network (tests, proxies).
        self._transport = transport
        self.url = (url or os.environ.get("WASMTX_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("WASMTX_API_KEY")
        self.timeout = timeout
        self.retries = max(1, retries)

    def _headers(self, call: Call) -> Dict[str, str]:
        headers = dict(call.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _request_args(self, call: Call) -> Dict[str, Any]:
        args: Dict[str, Any] = {"headers": self._headers(call), "params": call.params, "timeout": call.timeout or self.timeout}
        if call.content is not None:
            args["content"] = call.content
        elif call.json is not None:
            args["json"] = call.json
        return args


def _settle(call: Call, url: str, attempt: int, attempts: int, response: Optional[httpx.Response], error: Optional[Exception]) -> Any:
    """What one attempt came to: `RETRY`, or the call's answer (raised if an error)."""
    last = attempt + 1 >= attempts
    if error is not None:
        if not last:
            return RETRY
        raise ApiError(0, "unreachable", f"{call.method} {url}{call.path}: {error}") from error
    assert response is not None
    if response.status_code in RETRY_STATUSES and not last:
        return RETRY
    return _answer(call, response)


RETRY = object()


class SyncTransport(_Base):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._http = httpx.Client(base_url=self.url, follow_redirects=False, transport=self._transport)

    def _run(self, call: Call) -> Any:
        attempts = self.retries if call.idempotent else 1
        for attempt in range(attempts):
            response, error = None, None
            try:
                response = self._http.request(call.method, call.path, **self._request_args(call))
            except httpx.TransportError as e:
                error = e
            settled = _settle(call, self.url, attempt, attempts, response, error)
            if settled is not RETRY:
                return settled
            time.sleep(_backoff(attempt))

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncTransport(_Base):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.url, follow_redirects=False, transport=self._transport)

    async def _run(self, call: Call) -> Any:
        attempts = self.retries if call.idempotent else 1
        for attempt in range(attempts):
            response, error = None, None
            try:
                response = await self._http.request(call.method, call.path, **self._request_args(call))
            except httpx.TransportError as e:
                error = e
            settled = _settle(call, self.url, attempt, attempts, response, error)
            if settled is not RETRY:
                return settled
            await asyncio.sleep(_backoff(attempt))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
