//! Plugins written in Python (componentize-py) and JavaScript (componentize-js) next to Rust
//! ones: each called directly, a mixed saga whose compensation crosses languages, a mixed 2PC,
//! and the errors their authors meet — an exception or throw, a stale copy of the WIT.

mod common;

use std::sync::OnceLock;

use serde_json::{Value, json};
use wasmtx::model::{CallContext, Outcome, Vote};
use wasmtx::plugin::{CallError, CallLimits, CallTags, Catalog, CatalogError, HostConfig, LoadError, PluginHost, Role};
use wasmtx::saga::{CreateSaga, SagaState, StepState};
use wasmtx::tpc::{CreateTpc, Decision, ParticipantState, TpcState};
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Node, TENANT, node};

/// The load error behind a catalog's refusal (what these tests provoke).
fn load_error(e: CatalogError) -> LoadError {
    match e {
        CatalogError::Load(e) => e,
        other => panic!("expected a load error, got {other}"),
    }
}

fn host() -> PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(HostConfig { max_concurrent_instances: 64, cache_dir: Some(wasmtx_testkit::compiled_cache_dir()), ..HostConfig::default() }).unwrap())
        .clone()
}

fn ctx(attempt: u32, input: Value) -> CallContext {
    CallContext {
        tenant: TENANT.into(),
        transaction_id: "tx-7".into(),
        step: "reserve".into(),
        action: "reserve".into(),
        attempt,
        idempotency_key: "tx-7:reserve:execute".into(),
        input: input.to_string(),
        deadline_ms: 30_000,
        traceparent: None,
    }
}

fn success(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Success(s) => serde_json::from_str(&s).expect("success payload is JSON"),
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_step_reserves_retries_on_a_lock_conflict_and_releases() {
    let registry = Catalog::in_memory(host());
    let (v, _) = registry.add(TENANT, "inventory", &plugin_bytes(plugins::PYTHON_INVENTORY)).await.unwrap();
    let c = v.component.clone();
    assert_eq!(c.roles, [Role::Step]);
    let (limits, tags) = (CallLimits::default(), CallTags::default());
    let input = json!({"sku": "book", "quantity": 2, "lock_conflicts": 1});

    let first = host().execute(&c, ctx(1, input.clone()), &limits, tags.clone()).await.unwrap();
    assert_eq!(first, Outcome::Retry("lock conflict on attempt 1".into()));
    let record = success(host().execute(&c, ctx(2, input), &limits, tags.clone()).await.unwrap());
    assert_eq!(
        record,
        json!({"reservation_id": "tx-7:reserve:execute", "transaction_id": "tx-7", "sku": "book",
               "quantity": 2, "reserved_by": "python"})
    );
    let refused = host().execute(&c, ctx(1, json!({"quantity": 5, "stock": 3})), &limits, tags.clone()).await;
    assert_eq!(refused.unwrap(), Outcome::Failure("insufficient stock: 5 requested, 3 left".into()));

    let released =
        success(host().compensate(&c, ctx(1, json!({"step_output": record})), &limits, tags).await.unwrap());
    assert_eq!(released["released"], "tx-7:reserve:execute");
    assert_eq!(released["released_by"], "python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_participant_votes_on_the_amount_against_its_threshold() {
    let registry = Catalog::in_memory(host());
    let (v, _) = registry.add(TENANT, "fraud-check", &plugin_bytes(plugins::JS_FRAUD_CHECK)).await.unwrap();
    let c = v.component.clone();
    assert_eq!(c.roles, [Role::Participant]);
    let (limits, tags) = (CallLimits::default(), CallTags::default());
    let host = host();
    let vote = |input: Value| host.prepare(&c, ctx(1, input), &limits, tags.clone());
    assert_eq!(vote(json!({"amount": 500, "fraud_threshold": 1000})).await.unwrap(), Vote::Prepared);
    assert_eq!(
        vote(json!({"amount": 5000, "fraud_threshold": 1000})).await.unwrap(),
        Vote::Abort("amount 5000 is above the fraud threshold 1000".into())
    );
    assert_eq!(vote(json!({"amount": 9000})).await.unwrap(), Vote::Prepared, "default threshold 10000");
    let committed = success(host.commit(&c, ctx(1, json!({})), &limits, tags.clone()).await.unwrap());
    assert_eq!(committed, json!({"cleared": "tx-7", "checked_by": "javascript"}));
    let aborted = success(host.abort(&c, ctx(1, json!({})), &limits, tags.clone()).await.unwrap());
    assert_eq!(aborted, json!({"released": "tx-7", "checked_by": "javascript"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_exception_and_a_js_throw_reach_the_error_with_their_message() {
    let registry = Catalog::in_memory(host());
    let (py, _) = registry.add(TENANT, "inventory", &plugin_bytes(plugins::PYTHON_INVENTORY)).await.unwrap();
    let (js, _) = registry.add(TENANT, "fraud-check", &plugin_bytes(plugins::JS_FRAUD_CHECK)).await.unwrap();
    let (limits, tags) = (CallLimits::default(), CallTags::default());

    let err = host()
        .execute(&py.component, ctx(1, json!({"raise": "stock table is corrupt"})), &limits, tags.clone())
        .await
        .unwrap_err();
    let CallError::Trap { message } = &err else { panic!("expected a trap, got {err:?}") };
    assert!(message.contains("RuntimeError: stock table is corrupt"), "{message}");

    let err = host()
        .prepare(&js.component, ctx(1, json!({"throw": "risk service unreachable"})), &limits, tags.clone())
        .await
        .unwrap_err();
    let CallError::Trap { message } = &err else { panic!("expected a trap, got {err:?}") };
    assert!(message.contains("risk service unreachable"), "{message}");

    // Input that is not an object: the plugin's own TypeError, not a bare "wasm trap".
    let err = host().prepare(&js.component, ctx(1, json!([1, 2])), &limits, tags).await.unwrap_err();
    assert!(err.to_string().contains("input must be a JSON object"), "{err}");
}

#[tokio::test]
async fn a_component_built_against_a_stale_copy_of_the_wit_is_refused_naming_the_mismatch() {
    let registry = Catalog::in_memory(host());
    let err = registry.add(TENANT, "drifted", &plugin_bytes(plugins::DRIFTED_CONTRACT)).await.map_err(load_error).unwrap_err();
    let LoadError::BadExport { role: "step", reason } = &err else { panic!("expected BadExport, got {err:?}") };
    let text = err.to_string();
    assert!(text.contains("`step` export does not match the contract"), "{text}");
    assert!(
        reason.contains("`execute`'s call-context lacks field `deadline-ms`"),
        "the reason names the function and the missing field: {reason}"
    );
    assert!(reason.contains("rebuild it against wit/plugin.wit"), "{reason}");
    assert!(registry.versions(TENANT, "drifted").await.unwrap().is_empty());
}

async fn polyglot_node(url: &str) -> Node {
    let n = node(url).await;
    for (name, path) in [
        ("payment", plugins::PAYMENT),
        ("inventory", plugins::PYTHON_INVENTORY),
        ("shipping", plugins::SHIPPING),
        ("scripted", plugins::SCRIPTED),
        ("ledger", plugins::LEDGER),
        ("fraud-check", plugins::JS_FRAUD_CHECK),
    ] {
        n.catalog.publish(TENANT, name, &plugin_bytes(path)).await.unwrap();
    }
    n
}

async fn saga(n: &Node, steps: Vec<Value>) -> String {
    let req: CreateSaga = serde_json::from_value(json!({
        "saga_name": "order", "context": {"order_id": "o-7", "amount": 30, "sku": "book", "quantity": 2},
        "retry_policy": {"max_attempts": 3, "base_delay_ms": 5, "max_delay_ms": 20},
    }))
    .unwrap();
    let s = n.sagas.create(TENANT, req).await.unwrap();
    for st in steps {
        n.sagas.add_step(TENANT, s.id(), serde_json::from_value(st).unwrap()).await.unwrap();
    }
    s.id().to_string()
}

on_every_store!(a_rust_python_rust_saga_completes_through_a_python_retry, |url: String| async move {
    let n = polyglot_node(&url).await;
    let id = saga(
        &n,
        vec![
            json!({"name": "charge", "plugin": "payment", "output_key": "payment"}),
            json!({"name": "reserve", "plugin": "inventory", "parameters": {"lock_conflicts": 1}, "output_key": "reservation"}),
            json!({"name": "ship", "plugin": "shipping", "output_key": "shipment"}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Completed, "{:?}", done.doc.error);
    let attempts: Vec<u32> = done.doc.steps.iter().map(|s| s.attempts).collect();
    assert_eq!(attempts, [1, 2, 1], "the Python step asked for one retry");
    let ctx = &done.document()["context"];
    assert_eq!(ctx["reservation"]["reserved_by"], "python");
    assert_eq!(ctx["reservation"]["sku"], "book");
    assert_eq!(ctx["reservation"]["quantity"], 2);
    assert_eq!(ctx["payment"]["amount"], 30.0);
    assert!(ctx["shipment"]["tracking_number"].is_string());
});

on_every_store!(a_failure_after_the_python_step_compensates_across_languages, |url: String| async move {
    let n = polyglot_node(&url).await;
    let id = saga(
        &n,
        vec![
            json!({"name": "charge", "plugin": "payment", "output_key": "payment"}),
            json!({"name": "reserve", "plugin": "inventory", "output_key": "reservation"}),
            json!({"name": "ship", "plugin": "scripted",
                   "parameters": {"script": {"execute": {"do": "fail", "reason": "no courier"}}}}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let states: Vec<StepState> = done.doc.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Compensated, StepState::Compensated, StepState::Failed]);
    let reserved = done.doc.steps[1].output.clone().unwrap();
    let compensated: Vec<(String, Value)> = n
        .sagas
        .history(TENANT, &id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "step_compensated")
        .map(|e| (e.step.unwrap(), e.detail["output"].clone()))
        .collect();
    let order: Vec<&str> = compensated.iter().map(|(step, _)| step.as_str()).collect();
    assert_eq!(order, ["reserve", "charge"], "Python released first, then Rust refunded");
    let released = &compensated[0].1;
    assert_eq!(released["released"], reserved["reservation_id"], "Python released what it reserved");
    assert_eq!(released["released_by"], "python");
    assert!(compensated[1].1.is_object(), "the Rust refund reported: {:?}", compensated[1].1);
});

on_every_store!(a_python_exception_fails_the_step_with_its_message, |url: String| async move {
    let n = polyglot_node(&url).await;
    let id = saga(
        &n,
        vec![
            json!({"name": "charge", "plugin": "payment"}),
            json!({"name": "reserve", "plugin": "inventory", "retry_count": 0, "parameters": {"raise": "sku table missing"}}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let error = done.doc.steps[1].error.as_deref().unwrap();
    assert!(error.contains("RuntimeError: sku table missing"), "{error}");
});

async fn transfer(n: &Node, amount: u64) -> String {
    let req: CreateTpc = serde_json::from_value(json!({
        "transaction_name": "transfer", "context": {"amount": amount, "fraud_threshold": 1000},
        "retry_policy": {"max_attempts": 3, "base_delay_ms": 5, "max_delay_ms": 20},
    }))
    .unwrap();
    let tx = n.tpc.create(TENANT, req).await.unwrap();
    for p in [
        json!({"participant_id": "debit", "plugin": "ledger"}),
        json!({"participant_id": "fraud", "plugin": "fraud-check"}),
        json!({"participant_id": "credit", "plugin": "ledger"}),
    ] {
        n.tpc.add_participant(TENANT, tx.id(), serde_json::from_value(p).unwrap()).await.unwrap();
    }
    tx.id().to_string()
}

on_every_store!(a_rust_and_js_two_phase_commit_commits_below_the_threshold_and_aborts_above, |url: String| async move {
    let n = polyglot_node(&url).await;

    let ok = n.tpc.execute(TENANT, &transfer(&n, 200).await).await.unwrap();
    assert_eq!(ok.state, TpcState::Committed);
    assert_eq!(ok.doc.decision, Some(Decision::Commit));
    assert!(ok.doc.participants.iter().all(|p| p.state == ParticipantState::Committed));

    let vetoed = n.tpc.execute(TENANT, &transfer(&n, 5000).await).await.unwrap();
    assert_eq!(vetoed.state, TpcState::Aborted);
    assert_eq!(vetoed.doc.decision, Some(Decision::Abort));
    let fraud = vetoed.doc.participants.iter().find(|p| p.spec.participant_id == "fraud").unwrap();
    assert_eq!(fraud.vote, Some(Vote::Abort("amount 5000 is above the fraud threshold 1000".into())));
    assert!(vetoed.doc.participants.iter().all(|p| p.state == ParticipantState::Aborted));
});
