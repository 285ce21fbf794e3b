"""Every endpoint of the API (API.md), written once. `Client` runs them and returns results;
`AsyncClient` returns awaitables of the same results."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Union
from urllib.parse import quote

from ._http import Call
from ._types import Event, Plugin, PluginVersions, Saga, Tenant, Transaction, TwoPhaseCommit


def _seg(value: str) -> str:
    """A path segment, escaped (ids come from callers)."""
    return quote(str(value), safe="")


def _body(**fields: Any) -> Dict[str, Any]:
    """The fields that were given (None means: leave it to the server's default)."""
    return {k: v for k, v in fields.items() if v is not None}


def _write(path: str, body: Any, parse: Any, idempotency_key: Optional[str] = None, timeout: Optional[float] = None) -> Call:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call("POST", path, json=body, headers=headers, idempotent=idempotency_key is not None, parse=parse, timeout=timeout)


def _read(path: str, parse: Any, params: Optional[Dict[str, Any]] = None) -> Call:
    return Call("GET", path, params=_body(**(params or {})) or None, idempotent=True, parse=parse)


def _items(key: str, kind: Any):
    return lambda body: [kind(item) for item in body.get(key, [])]


class Api:
    """The API's endpoints; subclasses say how a `Call` is run (`_run`)."""

    def _run(self, call: Call) -> Any:  # pragma: no cover - provided by the transport
        raise NotImplementedError

    # Plugins
    def push_plugin(self, name: str, component: Union[bytes, str, "os.PathLike[str]"]) -> Plugin:
        """Uploads a component (bytes or a file path) as the next version of `name`; the same
        bytes again answer the existing version. Safe to retry."""
        if isinstance(component, (bytes, bytearray)):
            data = bytes(component)
        else:
            with open(component, "rb") as f:
                data = f.read()
        return self._run(Call("PUT", f"/v1/plugins/{_seg(name)}", content=bytes(data), headers={"Content-Type": "application/wasm"}, idempotent=True, parse=Plugin))

    def list_plugins(self) -> List[Plugin]:
        return self._run(_read("/v1/plugins", _items("plugins", Plugin)))

    def plugin_versions(self, name: str) -> PluginVersions:
        return self._run(_read(f"/v1/plugins/{_seg(name)}", PluginVersions))

    # Sagas
    def create_saga(self, saga_name: str, context: Optional[Dict[str, Any]] = None, *, timeout_ms: Optional[int] = None,
                    steps: Optional[Iterable[Dict[str, Any]]] = None, retry_policy: Optional[Dict[str, Any]] = None,
                    max_parallel: Optional[int] = None, execute: Optional[bool] = None, wait: Optional[bool] = None,
                    idempotency_key: Optional[str] = None) -> Saga:
        body = _body(saga_name=saga_name, context=context, timeout_ms=timeout_ms, steps=list(steps) if steps is not None else None,
                     retry_policy=retry_policy, max_parallel=max_parallel, execute=execute, wait=wait)
        return self._run(_write("/v1/sagas", body, Saga, idempotency_key))

    def add_step(self, saga_id: str, step: Optional[Dict[str, Any]] = None, **fields: Any) -> Dict[str, Any]:
        """Adds a step (`{name, plugin | endpoint, action?, compensation?, …}`, as a dict or as
        keyword arguments)."""
        return self._run(_write(f"/v1/sagas/{_seg(saga_id)}/steps", {**(step or {}), **_body(**fields)}, dict))

    def execute_saga(self, saga_id: str, wait: bool = True) -> Saga:
        """Runs the saga; with `wait`, answers its document at the end (else at once, 202)."""
        return self._run(_write(f"/v1/sagas/{_seg(saga_id)}/execute", {"wait": wait}, Saga))

    def get_saga(self, saga_id: str) -> Saga:
        return self._run(_read(f"/v1/sagas/{_seg(saga_id)}", Saga))

    def resume_saga(self, saga_id: str) -> Saga:
        return self._run(_write(f"/v1/sagas/{_seg(saga_id)}/resume", {}, Saga))

    def cancel_saga(self, saga_id: str) -> Saga:
        return self._run(_write(f"/v1/sagas/{_seg(saga_id)}/cancel", {}, Saga))

    def saga_history(self, saga_id: str) -> List[Event]:
        return self._run(_read(f"/v1/sagas/{_seg(saga_id)}/history", _items("events", Event)))

    def list_sagas(self, state: Optional[str] = None, limit: Optional[int] = None) -> List[Saga]:
        return self._run(_read("/v1/sagas", _items("sagas", Saga), {"state": state, "limit": limit}))

    # Two-phase commit
    def create_2pc(self, transaction_name: str, context: Optional[Dict[str, Any]] = None, *, prepare_timeout_ms: Optional[int] = None,
                   participants: Optional[Iterable[Dict[str, Any]]] = None, retry_policy: Optional[Dict[str, Any]] = None,
                   idempotency_key: Optional[str] = None) -> TwoPhaseCommit:
        body = _body(transaction_name=transaction_name, context=context, prepare_timeout_ms=prepare_timeout_ms,
                     participants=list(participants) if participants is not None else None, retry_policy=retry_policy)
        return self._run(_write("/v1/2pc", body, TwoPhaseCommit, idempotency_key))

    def add_2pc_participant(self, transaction_id: str, participant: Optional[Dict[str, Any]] = None, **fields: Any) -> Dict[str, Any]:
        return self._run(_write(f"/v1/2pc/{_seg(transaction_id)}/participants", {**(participant or {}), **_body(**fields)}, dict))

    def execute_2pc(self, transaction_id: str) -> TwoPhaseCommit:
        return self._run(_write(f"/v1/2pc/{_seg(transaction_id)}/execute", {}, TwoPhaseCommit))

    def abort_2pc(self, transaction_id: str) -> TwoPhaseCommit:
        return self._run(_write(f"/v1/2pc/{_seg(transaction_id)}/abort", {}, TwoPhaseCommit))

    def recover_2pc(self, transaction_id: str) -> TwoPhaseCommit:
        return self._run(_write(f"/v1/2pc/{_seg(transaction_id)}/recover", {}, TwoPhaseCommit))

    def get_2pc(self, transaction_id: str) -> TwoPhaseCommit:
        return self._run(_read(f"/v1/2pc/{_seg(transaction_id)}", TwoPhaseCommit))

    def tpc_history(self, transaction_id: str) -> List[Event]:
        return self._run(_read(f"/v1/2pc/{_seg(transaction_id)}/history", _items("events", Event)))

    def list_2pc(self, state: Optional[str] = None, limit: Optional[int] = None) -> List[TwoPhaseCommit]:
        return self._run(_read("/v1/2pc", _items("transactions", TwoPhaseCommit), {"state": state, "limit": limit}))

    # Managed transactions
    def create_transaction(self, transaction_name: str, requirements: Optional[Dict[str, Any]] = None,
                           context: Optional[Dict[str, Any]] = None, *, policy: Optional[str] = None,
                           retry_policy: Optional[Dict[str, Any]] = None, parallel: Optional[bool] = None,
                           idempotency_key: Optional[str] = None) -> Transaction:
        body = _body(transaction_name=transaction_name, requirements=requirements, context=context, policy=policy,
                     retry_policy=retry_policy, parallel=parallel)
        return self._run(_write("/v1/transactions", body, Transaction, idempotency_key))

    def add_participant(self, transaction_id: str, participant: Optional[Dict[str, Any]] = None, **fields: Any) -> Dict[str, Any]:
        return self._run(_write(f"/v1/transactions/{_seg(transaction_id)}/participants", {**(participant or {}), **_body(**fields)}, dict))

    def execute_transaction(self, transaction_id: str, pattern: Optional[str] = None) -> Transaction:
        """Runs it to its end with the pattern given (`auto`, `saga`, `two_phase_commit`) or
        chosen by the rules or the policy."""
        return self._run(_write(f"/v1/transactions/{_seg(transaction_id)}/execute", _body(pattern=pattern), Transaction))

    def get_transaction(self, transaction_id: str) -> Transaction:
        return self._run(_read(f"/v1/transactions/{_seg(transaction_id)}", Transaction))

    def abort_transaction(self, transaction_id: str) -> Transaction:
        return self._run(_write(f"/v1/transactions/{_seg(transaction_id)}/abort", {}, Transaction))

    def recover_transaction(self, transaction_id: str) -> Transaction:
        return self._run(_write(f"/v1/transactions/{_seg(transaction_id)}/recover", {}, Transaction))

    def transaction_history(self, transaction_id: str) -> List[Event]:
        return self._run(_read(f"/v1/transactions/{_seg(transaction_id)}/history", _items("events", Event)))

    def list_transactions(self, status: Optional[str] = None, limit: Optional[int] = None) -> List[Transaction]:
        return self._run(_read("/v1/transactions", _items("transactions", Transaction), {"status": status, "limit": limit}))

    # Finding and operating
    def search(self, kind: Optional[str] = None, state: Optional[str] = None, name: Optional[str] = None,
               created_after: Optional[str] = None, created_before: Optional[str] = None, needs_attention: Optional[bool] = None,
               limit: Optional[int] = None, cursor: Optional[str] = None) -> Dict[str, Any]:
        """A page of the tenant's transactions of every kind, newest first: `{items, next_cursor?}`;
        pass `next_cursor` back as `cursor` for the next page."""
        params = {"kind": kind, "state": state, "name": name, "created_after": created_after, "created_before": created_before,
                  "needs_attention": None if needs_attention is None else str(bool(needs_attention)).lower(), "limit": limit, "cursor": cursor}
        return self._run(_read("/v1/search", dict, params))

    def bulk(self, action: str, items: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
        """`resume`, `cancel`, `recover` or `abort` on up to 100 items (`{kind, id}`, or a
        search's items as they are); each item's outcome in `results`."""
        wanted = [{"kind": i["kind"], "id": i.get("id") or i.get("saga_id") or i.get("transaction_id")} for i in items]
        return self._run(_write(f"/v1/bulk/{_seg(action)}", {"items": wanted}, dict))

    # Settings, tenants, operations
    def set_default_policy(self, policy: str) -> Dict[str, Any]:
        """`policy`: a policy plugin's name, or `builtin` for the built-in rules."""
        return self._run(Call("PUT", "/v1/settings/default-policy", json={"policy": policy}, idempotent=True, parse=dict))

    def set_alerts(self, url: str, events: List[str], secret: str) -> Dict[str, Any]:
        """The tenant's webhook for `failed`, `compensation_failed`, `decision_unacknowledged`,
        `policy_fallback`; deliveries are signed with `secret` (HMAC-SHA256)."""
        return self._run(Call("PUT", "/v1/settings/alerts", json={"url": url, "events": list(events), "secret": secret}, idempotent=True, parse=dict))

    def get_alerts(self) -> Dict[str, Any]:
        return self._run(_read("/v1/settings/alerts", dict))

    def create_tenant(self, tenant_id: str, limits: Optional[Dict[str, Any]] = None, allowed_hosts: Optional[List[str]] = None) -> Tenant:
        """Admin only (the client's `api_key` is the admin token). The key is shown once."""
        return self._run(_write("/v1/admin/tenants", _body(tenant_id=tenant_id, limits=limits, allowed_hosts=allowed_hosts), Tenant))

    def add_key(self, tenant_id: str) -> Dict[str, Any]:
        return self._run(_write(f"/v1/admin/tenants/{_seg(tenant_id)}/keys", {}, dict))

    def revoke_key(self, tenant_id: str, key_id: str) -> Dict[str, Any]:
        return self._run(Call("DELETE", f"/v1/admin/tenants/{_seg(tenant_id)}/keys/{_seg(key_id)}", idempotent=True, parse=dict))

    def audit(self) -> Dict[str, Any]:
        return self._run(_read("/v1/audit", dict))

    def openapi(self) -> Dict[str, Any]:
        """The server's OpenAPI 3.1 document."""
        return self._run(_read("/v1/openapi.json", dict))

    def health(self) -> Dict[str, Any]:
        """`{status: "ok", store}` when the server's store answers."""
        return self._run(_read("/healthz", dict))
