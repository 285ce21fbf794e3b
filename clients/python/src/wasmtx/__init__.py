"""Python client for wasmtx.

`Client` (blocking) and `AsyncClient` (asyncio) cover every endpoint of the HTTP API;
`wasmtx.kailash` has the transaction nodes' interface (`DistributedTransactionManagerNode`,
`SagaCoordinatorNode`, `TwoPhaseCommitCoordinatorNode`) on top of them.

    from wasmtx import Client
    with Client("http://127.0.0.1:8080") as wasmtx:
        saga = wasmtx.create_saga("order", {"amount": 5}, steps=[{"name": "pay", "plugin": "payment"}])
        print(wasmtx.execute_saga(saga.saga_id).state)
"""

from ._api import Api
from ._http import ApiError, AsyncTransport, Call, SyncTransport
from ._types import Document, Event, Plugin, PluginVersions, Saga, Tenant, Transaction, TwoPhaseCommit

__all__ = [
    "ApiError", "AsyncClient", "Client", "Document", "Event", "Plugin", "PluginVersions", "Saga", "Tenant",
    "Transaction", "TwoPhaseCommit",
]
__version__ = "0.1.0"


class Client(SyncTransport, Api):
    """The API, blocking. `url` defaults to `$WASMTX_URL`, else http://127.0.0.1:8080;
    `api_key` to `$WASMTX_API_KEY`. Calls that are safe to repeat (reads, plugin uploads,
    writes with an `idempotency_key`) are retried `retries` times on connection errors and
    502/503/504; errors raise `ApiError` with the API's `code`, `message` and `status`."""


class AsyncClient(AsyncTransport, Api):
    """The API for asyncio: the same methods as `Client`, each awaited."""
