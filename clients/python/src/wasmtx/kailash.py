"""The Kailash transaction nodes' interface over a wasmtx server: change the import line and
the patterns document's code runs against wasmtx.

    from wasmtx.kailash import DistributedTransactionManagerNode   # was: kailash.nodes.transaction

Each node keeps the transaction it created or loaded, and `execute(operation=…, **kwargs)`
(or `await async_run(operation=…, **kwargs)`) answers a dict with `status` `success`,
`failed`, `aborted` or `error` and the fields the nodes answered. Where the two worlds
differ (see the README's mapping table):

- a step's `node_id` / `compensation_node_id` name plugins on the server (a compensation node
  other than the step's becomes the step's `compensation_plugin`); `parameters["action"]`,
  `parameters["timeout"]` and `compensation_parameters["action"]` become the step's `action`,
  `timeout_ms` and `compensation`, the rest of the parameters is passed on;
- a participant with an `endpoint` is an HTTP participant; one without names a plugin (its
  `plugin`, else its `participant_id`);
- times in seconds (`timeout`, `retry_policy.base_delay` / `max_delay`) become milliseconds,
  and `execution_time` is given in seconds from the server's `execution_time_ms`;
- `state_storage` / `storage_config` describe where the server keeps its state: they are
  accepted, and a mismatch with the server's store is warned about once;
- a transaction name the caller leaves out is the node's (`transaction_name` / `saga_name`),
  else the pattern's name.

Errors of the server (a bad request, an unknown id, a transaction in the wrong state) answer
`{"status": "error", "error": <message>, "code": <code>}`, as the nodes did; only a server
that cannot be reached raises (`wasmtx.ApiError` with code `unreachable`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Set, Tuple

from . import AsyncClient, Client
from ._api import Api
from ._http import ApiError, Call

__all__ = ["DistributedTransactionManagerNode", "SagaCoordinatorNode", "TwoPhaseCommitCoordinatorNode"]

# state_storage → the server store kinds that keep state that way.
STORAGE_KINDS = {"memory": {"memory"}, "redis": {"redis", "redis-cluster"}, "database": {"sqlite", "postgres"}}
_warned: Set[Tuple[str, str]] = set()


class _Plan(Api):
    """The API as calls not yet made: each method answers its `Call`."""

    def _run(self, call: Call) -> Call:
        return call


_PLAN = _Plan()


def _then(call: Call, after: Callable[[Any], Any]) -> Call:
    parse = call.parse
    call.parse = lambda body: after(parse(body))
    return call


def _ms(seconds: Any) -> Optional[int]:
    return None if seconds is None else int(round(float(seconds) * 1000))


def _retry_policy(policy: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The nodes' retry policy (delays in seconds) as the API's (in milliseconds)."""
    if policy is None:
        return None
    mapped = {k: v for k, v in policy.items() if k not in ("base_delay", "max_delay")}
    for name in ("base_delay", "max_delay"):
        if policy.get(name) is not None:
            mapped[f"{name}_ms"] = _ms(policy[name])
    return mapped


def _with_execution_time(doc: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(doc)
    if doc.get("execution_time_ms") is not None:
        out["execution_time"] = doc["execution_time_ms"] / 1000.0
    elif doc.get("duration_ms") is not None:
        out["execution_time"] = doc["duration_ms"] / 1000.0
    return out


def _target(participant_id: str, endpoint: Optional[str], plugin: Optional[str]) -> Dict[str, Any]:
    """An endpoint is an HTTP participant; otherwise the plugin, or the plugin named by the id."""
    return {"endpoint": endpoint} if endpoint else {"plugin": plugin or participant_id}


class _Node:
    """What the three nodes share: the server, the current transaction, `execute`/`async_run`."""

    # The operations, each a method of the same name answering the Call to make.
    OPERATIONS: Tuple[str, ...] = ()
    DEFAULT_NAME = "transaction"

    def __init__(self, *, server: Optional[str] = None, api_key: Optional[str] = None, state_storage: Optional[str] = None,
                 storage_config: Optional[Dict[str, Any]] = None, retry_policy: Optional[Dict[str, Any]] = None,
                 timeout: Optional[float] = None, **options: Any):
        self.server = server
        self.api_key = api_key
        self.state_storage = state_storage
        self.storage_config = storage_config or {}
        self.retry_policy = retry_policy
        self.timeout = timeout
        # Accepted as the nodes accepted them (monitoring_enabled, audit_logging, …): the
        # server monitors and audits every transaction anyway.
        self.options = options
        self._client: Optional[Client] = None
        self._aclient: Optional[AsyncClient] = None
        self._storage_checked = state_storage is None
        self.current_id: Optional[str] = None

    # Running operations
    def execute(self, operation: str = "", **kwargs: Any) -> Dict[str, Any]:
        if self._client is None:
            self._client = Client(self.server, self.api_key)
        try:
            if not self._storage_checked:
                self._client._run(self._storage_check())
            return self._client._run(self._plan(operation, kwargs))
        except (ApiError, _Refused) as e:
            return self._failed(e)

    async def async_run(self, operation: str = "", **kwargs: Any) -> Dict[str, Any]:
        if self._aclient is None:
            self._aclient = AsyncClient(self.server, self.api_key)
        try:
            if not self._storage_checked:
                await self._aclient._run(self._storage_check())
            return await self._aclient._run(self._plan(operation, kwargs))
        except (ApiError, _Refused) as e:
            return self._failed(e)

    def close(self) -> None:
        """Closes the blocking client's connections (`aclose` closes the asyncio one's)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def _plan(self, operation: str, kwargs: Dict[str, Any]) -> Call:
        if operation not in self.OPERATIONS:
            raise _Refused(f"unknown operation {operation!r}; use one of {', '.join(sorted(self.OPERATIONS))}")
        try:
            return getattr(self, operation)(**kwargs)
        except TypeError as e:
            raise _Refused(f"{operation}: {e}") from e

    def _failed(self, e: Exception) -> Dict[str, Any]:
        """The nodes' error answer; only a server that cannot be reached raises."""
        if isinstance(e, ApiError) and e.code == "unreachable":
            raise e
        if isinstance(e, ApiError):
            out = {"status": "error", "error": e.message, "code": e.code}
            if e.status:
                out["http_status"] = e.status
            return out
        return {"status": "error", "error": str(e), "code": "invalid_request"}

    def _storage_check(self) -> Call:
        def check(health: Dict[str, Any]) -> None:
            self._storage_checked = True
            store = str(health.get("store", ""))
            wanted = STORAGE_KINDS.get(str(self.state_storage), set())
            if store and store not in wanted and (str(self.state_storage), store) not in _warned:
                _warned.add((str(self.state_storage), store))
                warnings.warn(
                    f"state_storage={self.state_storage!r} was asked for, but the wasmtx server keeps its state in {store}: "
                    "storage_config does not apply here; where state lives is the server's --database-url "
                    "(sqlite, postgres, redis, redis+cluster or memory)",
                    RuntimeWarning,
                    stacklevel=4,
                )

        return _then(_PLAN.health(), check)

    def _current(self, given: Optional[str], what: str) -> str:
        if given:
            self.current_id = given
        if not self.current_id:
            raise _Refused(f"no {what} yet: create one first, or pass its id")
        return self.current_id

    def _adopt(self, key: str) -> Callable[[Any], Any]:
        def adopt(body: Any) -> Any:
            if isinstance(body, dict) and body.get(key):
                self.current_id = body[key]
            return dict(body)

        return adopt


class _Refused(Exception):
    """A call the node refuses before sending anything (an unknown operation, no transaction)."""


class DistributedTransactionManagerNode(_Node):
    """Managed transactions: the server picks saga or two-phase commit from the requirements
    and the participants' capabilities (or the pattern you force)."""

    OPERATIONS = (
        "create_transaction", "add_participant", "execute_transaction", "get_status", "abort_transaction",
        "recover_transaction", "list_transactions",
    )

    def __init__(self, transaction_name: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.transaction_name = transaction_name

    def create_transaction(self, requirements: Optional[Dict[str, Any]] = None, context: Optional[Dict[str, Any]] = None,
                           transaction_name: Optional[str] = None, policy: Optional[str] = None,
                           retry_policy: Optional[Dict[str, Any]] = None, parallel: Optional[bool] = None,
                           idempotency_key: Optional[str] = None) -> Call:
        reqs = dict(requirements or {})
        if "timeout" in reqs:
            reqs["timeout_ms"] = _ms(reqs.pop("timeout"))
        elif self.timeout is not None and "timeout_ms" not in reqs:
            reqs["timeout_ms"] = _ms(self.timeout)
        call = _PLAN.create_transaction(
            transaction_name or self.transaction_name or self.DEFAULT_NAME, reqs or None, context, policy=policy,
            retry_policy=_retry_policy(retry_policy or self.retry_policy), parallel=parallel, idempotency_key=idempotency_key)
        return _then(call, self._adopt("transaction_id"))

    def add_participant(self, participant_id: str, endpoint: Optional[str] = None, plugin: Optional[str] = None,
                        supports_2pc: Optional[bool] = None, supports_saga: Optional[bool] = None,
                        action: Optional[str] = None, compensation_action: Optional[str] = None,
                        parameters: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None,
                        retry_count: Optional[int] = None, priority: Optional[int] = None,
                        transaction_id: Optional[str] = None) -> Call:
        participant = {"participant_id": participant_id, **_target(participant_id, endpoint, plugin)}
        fields = dict(supports_2pc=supports_2pc, supports_saga=supports_saga, action=action, compensation_action=compensation_action,
                      parameters=parameters, timeout_ms=_ms(timeout), retry_count=retry_count, priority=priority)
        participant.update({k: v for k, v in fields.items() if v is not None})
        call = _PLAN.add_participant(self._current(transaction_id, "transaction"), participant)
        return _then(call, lambda body: {**body, "participant_id": participant_id, "transaction_id": self.current_id})

    def execute_transaction(self, pattern: Optional[str] = None, transaction_id: Optional[str] = None) -> Call:
        return _then(_PLAN.execute_transaction(self._current(transaction_id, "transaction"), pattern), _with_execution_time)

    def get_status(self, transaction_id: Optional[str] = None) -> Call:
        return _then(_PLAN.get_transaction(self._current(transaction_id, "transaction")), _with_execution_time)

    def abort_transaction(self, transaction_id: Optional[str] = None, reason: Optional[str] = None) -> Call:
        return _then(_PLAN.abort_transaction(self._current(transaction_id, "transaction")), _with_execution_time)

    def recover_transaction(self, transaction_id: Optional[str] = None) -> Call:
        return _then(_PLAN.recover_transaction(self._current(transaction_id, "transaction")), _with_execution_time)

    def list_transactions(self, status: Optional[str] = None, limit: Optional[int] = None) -> Call:
        return _then(_PLAN.list_transactions(status, limit), lambda items: {
            "status": "success", "transactions": [_with_execution_time(t) for t in items], "count": len(items)})


class SagaCoordinatorNode(_Node):
    """Sagas: steps run in order (or as a DAG), completed ones compensated in reverse on failure."""

    OPERATIONS = (
        "create_saga", "add_step", "execute_saga", "get_status", "load_saga", "resume", "cancel", "get_history", "list_sagas",
    )
    DEFAULT_NAME = "saga"

    def __init__(self, saga_name: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.saga_name = saga_name

    @property
    def saga_id(self) -> Optional[str]:
        return self.current_id

    def create_saga(self, context: Optional[Dict[str, Any]] = None, saga_name: Optional[str] = None,
                    timeout: Optional[float] = None, retry_policy: Optional[Dict[str, Any]] = None,
                    max_parallel: Optional[int] = None, idempotency_key: Optional[str] = None) -> Call:
        call = _PLAN.create_saga(
            saga_name or self.saga_name or self.DEFAULT_NAME, context, timeout_ms=_ms(timeout if timeout is not None else self.timeout),
            retry_policy=_retry_policy(retry_policy or self.retry_policy), max_parallel=max_parallel, idempotency_key=idempotency_key)
        return _then(call, self._adopt("saga_id"))

    def add_step(self, name: str, node_id: Optional[str] = None, parameters: Optional[Dict[str, Any]] = None,
                 compensation_node_id: Optional[str] = None, compensation_parameters: Optional[Dict[str, Any]] = None,
                 endpoint: Optional[str] = None, plugin: Optional[str] = None, action: Optional[str] = None,
                 compensation: Optional[str] = None, compensation_endpoint: Optional[str] = None,
                 timeout: Optional[float] = None, retry_count: Optional[int] = None, output_key: Optional[str] = None,
                 depends_on: Optional[list] = None, saga_id: Optional[str] = None) -> Call:
        params = dict(parameters or {})
        undo_params = dict(compensation_parameters or {})
        action = action or params.pop("action", None)
        if timeout is None and "timeout" in params:
            timeout = params.pop("timeout")
        compensation = compensation or undo_params.pop("action", None)
        step: Dict[str, Any] = {"name": name, **_target(name, endpoint, plugin or node_id)}
        if compensation_endpoint:
            step["compensation_endpoint"] = compensation_endpoint
        elif compensation_node_id and compensation_node_id != step.get("plugin"):
            step["compensation_plugin"] = compensation_node_id
        fields = dict(action=action, compensation=compensation, parameters=params or None, compensation_parameters=undo_params or None,
                      timeout_ms=_ms(timeout), retry_count=retry_count, output_key=output_key, depends_on=depends_on)
        step.update({k: v for k, v in fields.items() if v is not None})
        call = _PLAN.add_step(self._current(saga_id, "saga"), step)
        return _then(call, lambda body: {**body, "saga_id": self.current_id, "name": name})

    def execute_saga(self, saga_id: Optional[str] = None) -> Call:
        return _then(_PLAN.execute_saga(self._current(saga_id, "saga"), wait=True), _with_execution_time)

    def get_status(self, saga_id: Optional[str] = None) -> Call:
        return _then(_PLAN.get_saga(self._current(saga_id, "saga")), _with_execution_time)

    def load_saga(self, saga_id: str) -> Call:
        """Makes `saga_id` this node's saga; `status` says whether it was found (`success`),
        `saga_status` how the saga itself stands."""
        def loaded(doc: Dict[str, Any]) -> Dict[str, Any]:
            self.current_id = doc["saga_id"]
            return {**_with_execution_time(doc), "saga_status": doc.get("status"), "status": "success"}

        return _then(_PLAN.get_saga(saga_id), loaded)

    def resume(self, saga_id: Optional[str] = None) -> Call:
        return _then(_PLAN.resume_saga(self._current(saga_id, "saga")), _with_execution_time)

    def cancel(self, saga_id: Optional[str] = None) -> Call:
        return _then(_PLAN.cancel_saga(self._current(saga_id, "saga")), _with_execution_time)

    def get_history(self, saga_id: Optional[str] = None) -> Call:
        sid = self._current(saga_id, "saga")
        return _then(_PLAN.saga_history(sid), lambda events: {
            "status": "success", "saga_id": sid, "history": [dict(e) for e in events], "events": [dict(e) for e in events]})

    def list_sagas(self, state: Optional[str] = None, limit: Optional[int] = None) -> Call:
        return _then(_PLAN.list_sagas(state, limit), lambda items: {"status": "success", "sagas": [dict(s) for s in items], "count": len(items)})


class TwoPhaseCommitCoordinatorNode(_Node):
    """Two-phase commit: every participant votes, the decision is durable before anyone hears it."""

    OPERATIONS = (
        "begin_transaction", "add_participant", "execute_transaction", "abort_transaction", "get_status", "recover_transaction",
    )

    def __init__(self, transaction_name: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.transaction_name = transaction_name

    @property
    def transaction_id(self) -> Optional[str]:
        return self.current_id

    def begin_transaction(self, context: Optional[Dict[str, Any]] = None, transaction_name: Optional[str] = None,
                          timeout: Optional[float] = None, retry_policy: Optional[Dict[str, Any]] = None,
                          idempotency_key: Optional[str] = None) -> Call:
        call = _PLAN.create_2pc(
            transaction_name or self.transaction_name or self.DEFAULT_NAME, context,
            prepare_timeout_ms=_ms(timeout if timeout is not None else self.timeout),
            retry_policy=_retry_policy(retry_policy or self.retry_policy), idempotency_key=idempotency_key)
        return _then(call, self._adopt("transaction_id"))

    def add_participant(self, participant_id: str, endpoint: Optional[str] = None, plugin: Optional[str] = None,
                        transaction_id: Optional[str] = None, **extra: Any) -> Call:
        participant = {"participant_id": participant_id, **_target(participant_id, endpoint, plugin)}
        call = _PLAN.add_2pc_participant(self._current(transaction_id, "transaction"), participant)
        return _then(call, lambda body: {**body, "participant_id": participant_id, "transaction_id": self.current_id})

    def execute_transaction(self, transaction_id: Optional[str] = None) -> Call:
        return _then(_PLAN.execute_2pc(self._current(transaction_id, "transaction")), _with_execution_time)

    def abort_transaction(self, transaction_id: Optional[str] = None, reason: Optional[str] = None) -> Call:
        return _then(_PLAN.abort_2pc(self._current(transaction_id, "transaction")), _with_execution_time)

    def get_status(self, transaction_id: Optional[str] = None) -> Call:
        return _then(_PLAN.get_2pc(self._current(transaction_id, "transaction")), _with_execution_time)

    def recover_transaction(self, transaction_id: Optional[str] = None) -> Call:
        return _then(_PLAN.recover_2pc(self._current(transaction_id, "transaction")), _with_execution_time)
