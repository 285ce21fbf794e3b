"""The transaction nodes' interface: every operation of the three classes, and the patterns
document's examples with only the import line changed (and endpoints pointed at a real
participant). Each test runs blocking (`execute`) and with asyncio (`async_run`)."""

import asyncio
import warnings

import pytest

from wasmtx.kailash import DistributedTransactionManagerNode, SagaCoordinatorNode, TwoPhaseCommitCoordinatorNode
from conftest import unique


@pytest.fixture(params=["execute", "async_run"])
def run(request):
    """`run(node, operation, **kwargs)` through one of the two entry points."""
    used = []

    def blocking(node, operation, **kwargs):
        used.append(node)
        return node.execute(operation=operation, **kwargs)

    loop = asyncio.new_event_loop()

    def with_asyncio(node, operation, **kwargs):
        used.append(node)
        return loop.run_until_complete(node.async_run(operation=operation, **kwargs))

    yield blocking if request.param == "execute" else with_asyncio
    for node in used:
        loop.run_until_complete(node.aclose())
    loop.close()


def test_the_e_commerce_order_selects_saga(server, run):
    manager = DistributedTransactionManagerNode(server=server.url)
    created = run(manager, "create_transaction", requirements={"consistency": "eventual", "availability": "high"}, context={"amount": 5})
    assert created["status"] == "success" and created["transaction_id"]
    services = [
        {"id": "payment", "2pc": True, "saga": True},
        {"id": "inventory", "2pc": False, "saga": True},  # Legacy
        {"id": "shipping", "2pc": False, "saga": True},  # External
    ]
    for service in services:
        added = run(manager, "add_participant", participant_id=service["id"], supports_2pc=service["2pc"], supports_saga=service["saga"])
        assert added["status"] == "success", added
    result = run(manager, "execute_transaction")
    assert result["selected_pattern"] == "saga"
    assert result["status"] == "success" and result["transaction_status"] == "committed"


def test_the_financial_transfer_selects_two_phase_commit(server, run):
    manager = DistributedTransactionManagerNode(server=server.url)
    run(manager, "create_transaction", requirements={"consistency": "immediate", "availability": "medium"}, context={"amount": 5})
    for service in ["core_banking", "fraud_detection", "compliance_check", "audit_logging"]:
        run(manager, "add_participant", participant_id=service, supports_2pc=True, supports_saga=True)
    result = run(manager, "execute_transaction")
    assert result["selected_pattern"] == "two_phase_commit"
    assert result["transaction_status"] == "committed"


def test_the_first_example_with_endpoints_and_a_forced_pattern(server, participant, run):
    from wasmtx import kailash
    kailash._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = DistributedTransactionManagerNode(
            transaction_name="business_process", state_storage="redis",
            storage_config={"redis_client": object(), "key_prefix": "transactions:"}, server=server.url)
        result = run(manager, "create_transaction", requirements={"consistency": "eventual", "availability": "high", "timeout": 300},
                     context={"order_id": "123", "customer_id": "456"})
    assert result["status"] == "success"
    mismatch = [w for w in caught if "state_storage='redis'" in str(w.message)]
    assert len(mismatch) == 1, "the server keeps no Redis state: said once"
    assert run(manager, "get_status")["requirements"]["timeout_ms"] == 300_000, "seconds became milliseconds"
    participants = [
        {"participant_id": "payment_service", "endpoint": participant.url + "/payment", "supports_2pc": True, "supports_saga": True,
         "compensation_action": "refund_payment"},
        {"participant_id": "inventory_service", "endpoint": participant.url + "/inventory", "supports_2pc": False, "supports_saga": True,
         "compensation_action": "release_inventory"},
    ]
    for p in participants:
        assert run(manager, "add_participant", **p)["status"] == "success"
    result = run(manager, "execute_transaction", pattern="saga")
    assert result["selected_pattern"] == "saga" and result["status"] == "success"
    assert any(path.startswith("/payment/") for path in participant.paths())


def test_state_storage_that_the_server_does_not_use_is_warned_about_once(server, run):
    from wasmtx import kailash
    kailash._warned.clear()
    with pytest.warns(RuntimeWarning, match="keeps its state in"):
        run(SagaCoordinatorNode(server=server.url, state_storage="memory"), "create_saga", context={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(SagaCoordinatorNode(server=server.url, state_storage="memory"), "create_saga", context={})
        run(SagaCoordinatorNode(server=server.url, state_storage="database"), "create_saga", context={})


def test_immediate_consistency_with_a_legacy_participant_is_an_error_naming_it(server, run):
    manager = DistributedTransactionManagerNode(server=server.url)
    run(manager, "create_transaction", requirements={"consistency": "immediate"})
    run(manager, "add_participant", participant_id="core_banking", supports_2pc=True)
    run(manager, "add_participant", participant_id="inventory", supports_2pc=False, supports_saga=True)
    result = run(manager, "execute_transaction")
    assert result["status"] == "error" and "inventory" in result["error"], result


def test_the_monitoring_example_reads_its_fields(server, run):
    manager = DistributedTransactionManagerNode(
        server=server.url, monitoring_enabled=True, audit_logging=True,
        retry_policy={"max_attempts": 3, "backoff": "exponential", "base_delay": 1.0, "max_delay": 30.0})
    run(manager, "create_transaction", context={"amount": 5})
    run(manager, "add_participant", participant_id="payment")
    run(manager, "execute_transaction")
    status = run(manager, "get_status")
    metrics = {
        "transaction_id": status["transaction_id"],
        "selected_pattern": status["selected_pattern"],
        "participants": len(status["participants"]),
        "state": status["transaction_status"],
        "duration": status.get("execution_time", 0),
    }
    assert metrics["participants"] == 1 and metrics["state"] == "committed" and metrics["duration"] >= 0
    assert isinstance(metrics["duration"], float)


def test_the_error_handling_example_sees_the_statuses_it_tests_for(server, participant, run):
    participant.fail.add("do_ship")
    manager = DistributedTransactionManagerNode(server=server.url)
    run(manager, "create_transaction", context={"amount": 5})
    run(manager, "add_participant", participant_id="payment", priority=1)
    run(manager, "add_participant", participant_id="ship", endpoint=participant.url, action="do_ship", retry_count=0, priority=2)
    result = run(manager, "execute_transaction")
    assert result["status"] == "failed" and result["error"], result
    assert "2pc" not in (result.get("selected_pattern") or "")
    assert result["transaction_status"] == "compensated"

    participant.vote_no.add("/no")
    tpc = DistributedTransactionManagerNode(server=server.url)
    run(tpc, "create_transaction", requirements={"consistency": "immediate"})
    run(tpc, "add_participant", participant_id="no", endpoint=participant.url + "/no", supports_2pc=True)
    result = run(tpc, "execute_transaction")
    assert result["status"] == "aborted" and result.get("reason", "Unknown"), result
    status = run(tpc, "get_status")
    assert status.get("coordinator_status"), "the 2PC branch reads coordinator_status"


def test_every_manager_operation(server, run):
    manager = DistributedTransactionManagerNode(transaction_name=unique("ops"), server=server.url)
    created = run(manager, "create_transaction", context={"amount": 5})
    tid = created["transaction_id"]
    run(manager, "add_participant", participant_id="payment")
    aborted = run(manager, "abort_transaction")
    assert aborted["transaction_status"] == "aborted" and aborted["status"] == "aborted"
    assert run(manager, "recover_transaction", transaction_id=tid)["transaction_status"] == "aborted"
    listed = run(manager, "list_transactions", status="aborted", limit=500)
    assert listed["status"] == "success" and tid in [t["transaction_id"] for t in listed["transactions"]]
    assert run(manager, "no_such_operation")["status"] == "error"
    assert run(DistributedTransactionManagerNode(server=server.url), "get_status")["status"] == "error", "no transaction yet"
    missing = run(manager, "get_status", transaction_id="tx-missing")
    assert (missing["status"], missing["code"], missing["http_status"]) == ("error", "not_found", 404)


def test_the_saga_setup_steps_and_recovery_examples(server, run):
    coordinator = SagaCoordinatorNode(saga_name="order_processing", state_storage="database",
                                      storage_config={"db_pool": object(), "table_name": "saga_states"}, server=server.url)
    result = run(coordinator, "create_saga", context={"order_id": "order_123", "customer_id": "customer_456", "total_amount": 299.99})
    assert result["status"] == "success" and result["state"] == "pending"
    steps = [
        {"name": "payment_step", "action": "process_payment", "compensation": "refund_payment", "timeout": 30, "retry_count": 3},
        {"name": "inventory_step", "action": "reserve_inventory", "compensation": "release_inventory", "timeout": 20, "retry_count": 2},
        {"name": "shipping_step", "action": "schedule_shipment", "compensation": "cancel_shipment", "timeout": 45, "retry_count": 1},
    ]
    for step in steps:
        added = run(coordinator, "add_step",
                    name=step["name"],
                    node_id=f"StepNode_{step['name']}",
                    parameters={"action": step["action"], "timeout": step["timeout"]},
                    compensation_node_id=f"CompensationNode_{step['name']}",
                    compensation_parameters={"action": step["compensation"]})
        assert added["status"] == "success", added
    result = run(coordinator, "execute_saga")
    assert result["status"] == "success" and result["state"] == "completed"
    assert result["steps"][0]["plugin_version"] == "StepNode_payment_step@1"
    assert result["steps"][0]["compensation_plugin_version"] == "CompensationNode_payment_step@1"
    assert result["steps"][0]["output"]["action"] == "process_payment", "parameters.action became the step's action"
    saga_id = result["saga_id"]

    other = SagaCoordinatorNode(server=server.url)
    loaded = run(other, "load_saga", saga_id=saga_id)
    assert loaded["status"] == "success" and other.saga_id == saga_id
    assert run(other, "get_status")["state"] == "completed"
    history = run(other, "get_history")
    assert history["status"] == "success" and history["history"][0]["kind"] == "saga_created"
    resumed = run(other, "resume")
    assert resumed["status"] == "error" and resumed["http_status"] == 409, "a completed saga does not resume"
    listed = run(other, "list_sagas", state="completed", limit=500)
    assert saga_id in [s["saga_id"] for s in listed["sagas"]]


def test_a_failed_saga_is_compensated_by_its_compensation_nodes_and_cancel_undoes(server, participant, run):
    participant.fail.add("fail")
    coordinator = SagaCoordinatorNode(saga_name=unique("undo"), server=server.url)
    run(coordinator, "create_saga", context={})
    run(coordinator, "add_step", name="payment_step", node_id="StepNode_payment_step", compensation_node_id="CompensationNode_payment_step",
        compensation_parameters={"action": "refund_payment"})
    run(coordinator, "add_step", name="late", endpoint=participant.url, action="fail", retry_count=0)
    result = run(coordinator, "execute_saga")
    assert result["status"] == "failed" and result["state"] == "compensated"
    events = run(coordinator, "get_history")["events"]
    undone = [e for e in events if e["kind"] == "step_compensated"]
    assert undone and undone[0]["detail"]["output"]["action"] == "refund_payment"

    cancel = SagaCoordinatorNode(server=server.url)
    run(cancel, "create_saga", context={})
    run(cancel, "add_step", name="payment_step", node_id="StepNode_payment_step")
    assert run(cancel, "cancel")["state"] in ("compensated", "failed")


def test_the_two_phase_commit_examples(server, participant, run):
    coordinator = TwoPhaseCommitCoordinatorNode(transaction_name="financial_transfer", state_storage="redis",
                                                storage_config={"redis_client": object(), "key_prefix": "2pc:"}, server=server.url)
    result = run(coordinator, "begin_transaction", context={"transfer_id": "transfer_789", "from_account": "ACC001",
                                                          "to_account": "ACC002", "amount": 10000.00, "currency": "USD"})
    assert result["status"] == "success" and result["state"] == "init"
    for participant_id in ["source_bank_service", "target_bank_service", "compliance_service", "audit_service"]:
        added = run(coordinator, "add_participant", participant_id=participant_id, endpoint=f"{participant.url}/{participant_id}/2pc")
        assert added["status"] == "success"
    result = run(coordinator, "execute_transaction")
    assert result["state"] == "committed" and result["status"] == "success"
    assert participant.paths().count("/source_bank_service/2pc/commit") == 1

    recovered = run(TwoPhaseCommitCoordinatorNode(server=server.url), "recover_transaction", transaction_id=result["transaction_id"])
    assert recovered["status"] == "success" and recovered["state"] == "committed"
    assert run(coordinator, "get_status")["decision"] == "commit"

    aborting = TwoPhaseCommitCoordinatorNode(server=server.url)
    run(aborting, "begin_transaction", context={})
    run(aborting, "add_participant", participant_id="ledger")
    assert run(aborting, "abort_transaction")["state"] == "aborted"
