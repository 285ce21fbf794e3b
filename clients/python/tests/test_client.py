"""Every `Client` method against a real server."""

import pytest

from wasmtx import ApiError, Client, Plugin, Saga, Transaction, TwoPhaseCommit
from conftest import plugin, unique


def test_plugins_push_list_and_versions(client):
    name = unique("pay")
    first = client.push_plugin(name, plugin("payment"))
    assert isinstance(first, Plugin) and first.version == 1 and "step" in first.exports and first.digest
    again = client.push_plugin(name, plugin("payment").read_bytes())
    assert again.version == 1, "the same bytes are the same version"
    second = client.push_plugin(name, plugin("inventory"))
    assert second.version == 2
    listed = {p.name: p for p in client.list_plugins()}
    assert listed[name].version == 2
    versions = client.plugin_versions(name)
    assert [v.version for v in versions.versions] == [1, 2]
    assert versions.versions[0].digest == first.digest


def test_a_saga_from_create_to_history(client):
    saga = client.create_saga(unique("order"), {"amount": 5}, timeout_ms=60_000)
    assert isinstance(saga, Saga) and saga.state == "pending" and saga.status == "success"
    added = client.add_step(saga.saga_id, name="pay", plugin="payment", retry_count=1)
    assert added["total_steps"] == 1
    client.add_step(saga.saga_id, {"name": "reserve", "plugin": "inventory"})
    done = client.execute_saga(saga.saga_id)
    assert done.state == "completed" and [s["state"] for s in done.steps] == ["completed", "completed"]
    assert client.get_saga(saga.saga_id).state == "completed"
    kinds = [e.kind for e in client.saga_history(saga.saga_id)]
    assert kinds[0] == "saga_created" and kinds[-1] == "saga_completed"
    assert saga.saga_id in [s.saga_id for s in client.list_sagas(state="completed", limit=500)]


def test_a_saga_in_one_request_and_one_that_is_cancelled_and_resumed(client, participant):
    done = client.create_saga(unique("one"), {"amount": 5}, steps=[{"name": "pay", "plugin": "payment"}], execute=True, wait=True)
    assert done.state == "completed"
    participant.fail.add("do_ship")
    failing = client.create_saga(unique("ship"), {"amount": 5}, steps=[
        {"name": "pay", "plugin": "payment"},
        {"name": "ship", "endpoint": participant.url, "action": "do_ship", "retry_count": 0},
    ])
    run = client.execute_saga(failing.saga_id)
    assert run.state == "compensated" and run.status == "failed"
    with pytest.raises(ApiError) as refused:
        client.resume_saga(failing.saga_id)
    assert refused.value.status == 409
    pending = client.create_saga(unique("cancel"), {"amount": 5}, steps=[{"name": "pay", "plugin": "payment"}])
    cancelled = client.cancel_saga(pending.saga_id)
    assert cancelled.state in ("compensated", "failed")


def test_two_phase_commit_commits_aborts_and_recovers(client, participant):
    tx = client.create_2pc(unique("transfer"), {"amount": 10}, prepare_timeout_ms=5000)
    assert isinstance(tx, TwoPhaseCommit) and tx.state == "init"
    client.add_2pc_participant(tx.transaction_id, participant_id="a", plugin="ledger")
    client.add_2pc_participant(tx.transaction_id, {"participant_id": "b", "endpoint": participant.url + "/b"})
    done = client.execute_2pc(tx.transaction_id)
    assert done.state == "committed" and done.decision == "commit"
    assert "/b/prepare" in participant.paths() and "/b/commit" in participant.paths()
    assert client.get_2pc(tx.transaction_id).state == "committed"
    assert client.recover_2pc(tx.transaction_id).state == "committed"
    kinds = [e.kind for e in client.tpc_history(tx.transaction_id)]
    assert kinds[0] == "transaction_created" and "decision" in kinds
    other = client.create_2pc(unique("abort"), participants=[{"participant_id": "a", "plugin": "ledger"}])
    assert client.abort_2pc(other.transaction_id).state == "aborted"
    assert other.transaction_id in [t.transaction_id for t in client.list_2pc(state="aborted", limit=500)]


def test_managed_transactions_pick_their_pattern(client):
    tx = client.create_transaction(unique("order"), {"consistency": "eventual"}, {"amount": 5})
    assert isinstance(tx, Transaction) and tx.transaction_status == "pending"
    client.add_participant(tx.transaction_id, participant_id="payment", plugin="payment")
    client.add_participant(tx.transaction_id, {"participant_id": "inventory", "plugin": "inventory"})
    done = client.execute_transaction(tx.transaction_id)
    assert done.selected_pattern == "saga" and done.transaction_status == "committed"
    assert client.get_transaction(tx.transaction_id).transaction_status == "committed"
    assert client.recover_transaction(tx.transaction_id).transaction_status == "committed"
    assert client.transaction_history(tx.transaction_id)
    forced = client.create_transaction(unique("forced"))
    client.add_participant(forced.transaction_id, participant_id="ledger", plugin="ledger")
    assert client.execute_transaction(forced.transaction_id, "two_phase_commit").selected_pattern == "two_phase_commit"
    aborted = client.create_transaction(unique("aborted"))
    assert client.abort_transaction(aborted.transaction_id).transaction_status == "aborted"
    assert aborted.transaction_id in [t.transaction_id for t in client.list_transactions(status="aborted", limit=500)]


def test_the_openapi_document_covers_every_client_call(client):
    doc = client.openapi()
    assert doc["openapi"] == "3.1.0"
    for path in ("/v1/sagas", "/v1/2pc/{id}/execute", "/v1/transactions/{id}/participants", "/v1/plugins/{name}"):
        assert path in doc["paths"], path


def test_settings_health_and_audit(client, participant):
    assert client.set_default_policy("builtin")["status"] == "success"
    client.set_alerts(participant.url + "/hook", ["failed"], "sixteen-characters-at-least")
    assert client.get_alerts()["events"] == ["failed"]
    health = client.health()
    assert health["status"] == "ok" and health["store"] in ("sqlite", "postgres")
    actions = [e["action"] for e in client.audit()["entries"]]
    assert actions, "the policy change above is audited"


def test_errors_carry_the_apis_code_message_and_status(client):
    with pytest.raises(ApiError) as missing:
        client.get_saga("saga-that-does-not-exist")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.message
    with pytest.raises(ApiError) as invalid:
        client.add_step(client.create_saga(unique("bad")).saga_id, name="x", plugin="payment", endpoint="http://a.example")
    assert invalid.value.status == 422
    with pytest.raises(ApiError) as garbage:
        client.push_plugin(unique("garbage"), b"not a component")
    assert (garbage.value.status, garbage.value.code) == (422, "invalid_component")


def test_an_idempotency_key_creates_once(client):
    key = unique("order-key")
    name = unique("idem")
    first = client.create_saga(name, idempotency_key=key)
    second = client.create_saga(name, idempotency_key=key)
    assert first.saga_id == second.saga_id


def test_an_unreachable_server_raises_unreachable():
    with Client("http://127.0.0.1:9", retries=2, timeout=2) as c:
        with pytest.raises(ApiError) as e:
            c.health()
    assert e.value.code == "unreachable" and e.value.status == 0


def test_admin_endpoints_need_the_admin_token(client):
    with pytest.raises(ApiError) as e:
        client.create_tenant(unique("acme"))
    assert e.value.status in (401, 403, 404)


def test_search_pages_and_bulk_actions(client):
    name = unique("bulk")
    made = [client.create_2pc(name, participants=[{"participant_id": "a", "plugin": "ledger"}]) for _ in range(3)]
    first = client.search(kind="2pc", name=name, limit=2)
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = client.search(kind="2pc", name=name, limit=2, cursor=first["next_cursor"])
    seen = [i["transaction_id"] for i in first["items"] + rest["items"]]
    assert seen == [t.transaction_id for t in reversed(made)] and "next_cursor" not in rest
    done = client.bulk("abort", first["items"] + rest["items"])
    assert [r["status"] for r in done["results"]] == ["success"] * 3
    assert client.search(kind="2pc", name=name, state="aborted")["items"][0]["state"] == "aborted"
    assert client.search(needs_attention=True, name=name)["items"] == []
