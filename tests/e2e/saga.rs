//! The saga engine on both stores with real plugins and real HTTP participants: forward
//! order, reverse compensation, retries, budgets, traps, timeouts, memory caps, idempotency.

mod common;

use serde_json::{Value, json};
use wasmtx::saga::{CreateSaga, SagaState, StepSpec, StepState};
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Answer, HttpParticipant, Node, Script, TENANT, node};

async fn with_plugins(url: &str) -> Node {
    let n = node(url).await;
    for (name, path) in [
        ("payment", plugins::PAYMENT),
        ("inventory", plugins::INVENTORY),
        ("shipping", plugins::SHIPPING),
        ("scripted", plugins::SCRIPTED),
        ("ledger", plugins::LEDGER),
    ] {
        n.catalog.publish(TENANT, name, &plugin_bytes(path)).await.unwrap();
    }
    n
}

fn step(v: Value) -> StepSpec {
    serde_json::from_value(v).expect("valid step spec")
}

/// Fast retries so tests do not wait on production backoff.
fn quick_retries() -> Value {
    json!({"max_attempts": 3, "backoff": "exponential", "base_delay_ms": 5, "max_delay_ms": 20})
}

async fn saga(n: &Node, context: Value, steps: Vec<Value>) -> String {
    let req: CreateSaga =
        serde_json::from_value(json!({"saga_name": "test", "context": context, "retry_policy": quick_retries()})).unwrap();
    let s = n.sagas.create(TENANT, req).await.unwrap();
    for st in steps {
        n.sagas.add_step(TENANT, s.id(), step(st)).await.unwrap();
    }
    s.id().to_string()
}

async fn kinds(n: &Node, id: &str) -> Vec<String> {
    n.sagas
        .history(TENANT, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e.step {
            Some(step) => format!("{} {step}", e.kind),
            None => e.kind,
        })
        .collect()
}

on_every_store!(runs_steps_in_order_and_merges_outputs_into_the_context, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(
        &n,
        json!({"order_id": "o-1", "amount": 10}),
        vec![
            json!({"name": "charge", "plugin": "payment", "output_key": "payment"}),
            json!({"name": "reserve", "plugin": "inventory", "parameters": {"quantity": 2}, "output_key": "reservation"}),
            json!({"name": "ship", "plugin": "shipping"}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    let doc = done.document();
    assert_eq!(doc["status"], "success");
    assert_eq!(doc["context"]["payment"]["amount"], 10.0);
    assert_eq!(doc["context"]["reservation"]["quantity"], 2);
    for (i, s) in done.doc.steps.iter().enumerate() {
        assert_eq!((s.state, s.attempts), (StepState::Completed, 1), "step {i}");
        assert!(s.plugin_version.as_deref().unwrap().ends_with("@1"));
    }
    assert_eq!(
        kinds(&n, &id).await,
        [
            "saga_created", "step_added charge", "step_added reserve", "step_added ship", "saga_started",
            "step_started charge", "step_completed charge", "step_started reserve", "step_completed reserve",
            "step_started ship", "step_completed ship", "saga_completed",
        ]
    );
    // Reloaded from the store, the document is the same.
    assert_eq!(n.sagas.get(TENANT, &id).await.unwrap().document()["steps"], doc["steps"]);
});

on_every_store!(compensates_completed_steps_in_reverse_order_when_step_3_fails, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(
        &n,
        json!({}),
        vec![
            json!({"name": "one", "plugin": "scripted"}),
            json!({"name": "two", "plugin": "scripted"}),
            json!({"name": "three", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "fail", "reason": "out of stock"}}}}),
            json!({"name": "four", "plugin": "scripted"}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let states: Vec<_> = done.doc.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Compensated, StepState::Compensated, StepState::Failed, StepState::Pending]);
    assert_eq!(done.document()["status"], "failed");
    assert!(done.doc.error.as_deref().unwrap().contains("step three failed: out of stock"));
    let history = kinds(&n, &id).await;
    let tail: Vec<_> = history.iter().skip_while(|k| *k != "step_failed three").cloned().collect();
    assert_eq!(
        tail,
        [
            "step_failed three", "saga_compensating", "compensation_started two", "step_compensated two",
            "compensation_started one", "step_compensated one", "saga_compensated",
        ]
    );
});

on_every_store!(retries_with_the_same_idempotency_key_until_success, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(
        &n,
        json!({}),
        vec![json!({"name": "flaky", "plugin": "scripted", "retry_count": 3, "parameters": {"script": {"execute": {"do": "retry", "times": 2}}}})],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    let s = &done.doc.steps[0];
    assert_eq!(s.attempts, 3);
    let out = s.output.as_ref().unwrap();
    assert_eq!(out["attempt"], 3, "the plugin saw attempt 3");
    assert_eq!(out["idempotency_key"], format!("{id}:0:execute"));
    let retries = kinds(&n, &id).await.iter().filter(|k| *k == "step_retry flaky").count();
    assert_eq!(retries, 2);
});

on_every_store!(a_spent_retry_budget_fails_the_step_and_compensates, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(
        &n,
        json!({}),
        vec![
            json!({"name": "first", "plugin": "scripted"}),
            json!({"name": "busy", "plugin": "scripted", "retry_count": 1, "parameters": {"script": {"execute": {"do": "retry", "times": 10}}}}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    assert_eq!(done.doc.steps[1].attempts, 2, "retry_count 1 = two attempts");
    assert!(done.doc.steps[1].error.as_deref().unwrap().contains("gave up after 2 attempts"));
    assert_eq!(done.doc.steps[0].state, StepState::Compensated);
    // `retry` answers until the budget is spent leave the outcome unknown: compensated too.
    assert_eq!((done.doc.steps[1].state, done.doc.steps[1].compensation_attempts), (StepState::Compensated, 1));
    assert!(kinds(&n, &id).await.contains(&"step_uncertain busy".to_string()));
});

on_every_store!(a_plugins_compensation_is_told_whether_its_step_completed, |url: String| async move {
    let n = with_plugins(&url).await;
    let echo = json!({"compensate": {"do": "echo_input"}});
    let id = saga(
        &n,
        json!({}),
        vec![
            json!({"name": "done", "plugin": "scripted", "parameters": {"script": echo}}),
            json!({"name": "late", "plugin": "scripted", "retry_count": 0, "timeout_ms": 200,
                   "parameters": {"script": {"execute": {"do": "spin"}, "compensate": {"do": "echo_input"}}}}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let history = n.sagas.history(TENANT, &id).await.unwrap();
    let told = |step: &str| {
        history.iter().find(|e| e.kind == "step_compensated" && e.step.as_deref() == Some(step)).unwrap().detail["output"]["forward_outcome"].clone()
    };
    assert_eq!(told("late"), "unknown");
    assert_eq!(told("done"), "success");
});

on_every_store!(a_compensation_that_keeps_failing_ends_failed_naming_the_step, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(
        &n,
        json!({}),
        vec![
            json!({"name": "stuck", "plugin": "scripted", "parameters": {"script": {"compensate": {"do": "fail", "reason": "ledger closed"}}}}),
            json!({"name": "boom", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "fail"}}}}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Failed);
    assert_eq!(done.doc.steps[0].state, StepState::CompensationFailed);
    assert_eq!(done.doc.steps[0].compensation_attempts, 3, "the policy's 3 attempts");
    let error = done.doc.error.clone().unwrap();
    assert!(error.contains("compensation of step stuck failed") && error.contains("ledger closed"), "{error}");
    assert_eq!(done.document()["status"], "error");
    assert!(kinds(&n, &id).await.contains(&"compensation_failed stuck".to_string()));
    // A failed saga can be resumed by an operator; it fails again here, with a fresh budget.
    let again = n.sagas.resume(TENANT, &id).await.unwrap();
    assert_eq!(again.state, SagaState::Failed);
    assert_eq!(again.doc.steps[0].compensation_attempts, 3);
    assert_eq!(again.doc.steps[1].attempts, 1, "resume never re-runs forward steps");
});

on_every_store!(traps_timeouts_and_memory_bombs_are_retried_then_compensated_as_uncertain, |url: String| async move {
    let n = with_plugins(&url).await;
    for (name, instruction, expect) in [
        ("trap", json!({"do": "trap", "message": "kaboom"}), "kaboom"),
        ("spin", json!({"do": "spin"}), "did not answer within"),
        ("bomb", json!({"do": "alloc", "mb": 200}), "memory cap"),
    ] {
        let id = saga(
            &n,
            json!({}),
            vec![
                json!({"name": "ok", "plugin": "scripted"}),
                json!({"name": name, "plugin": "scripted", "retry_count": 1, "timeout_ms": 300,
                       "parameters": {"script": {"execute": instruction}}}),
            ],
        )
        .await;
        let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
        assert_eq!(done.state, SagaState::Compensated, "{name}");
        let s = &done.doc.steps[1];
        // Without a clear answer the step may have done its work: it is compensated too.
        assert_eq!((s.state, s.attempts, s.compensation_attempts), (StepState::Compensated, 2, 1), "{name}");
        assert!(s.outcome_unknown, "{name}");
        assert!(s.error.as_deref().unwrap().contains(expect), "{name}: {:?}", s.error);
        assert_eq!(done.doc.steps[0].state, StepState::Compensated);
    }
});

on_every_store!(invalid_json_output_fails_the_step_and_undoes_it_as_uncertain, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(
        &n,
        json!({}),
        vec![json!({"name": "garbled", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "invalid_json"}}}})],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    assert!(done.doc.steps[0].error.as_deref().unwrap().contains("not valid JSON"));
    assert_eq!(done.doc.steps[0].attempts, 1, "garbage is not retried");
    // It answered success: it may have done its work, so it is undone, told so.
    assert_eq!(done.doc.steps[0].state, StepState::Compensated);
    assert!(done.doc.steps[0].outcome_unknown);
});

on_every_store!(http_steps_follow_the_participant_protocol, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = Script::default();
    script.0.insert(
        "reserve".into(),
        vec![Answer::Status(500, json!({"e": "db down"})), Answer::Status(200, json!({"reservation": "r-1"}))],
    );
    script.0.insert("bill".into(), vec![Answer::Status(409, json!({"e": "card expired"}))]);
    script.0.insert("unreserve".into(), vec![Answer::Status(200, json!({}))]);
    let http = HttpParticipant::start(script).await;
    let id = saga(
        &n,
        json!({"order": 7}),
        vec![
            json!({"name": "reserve", "endpoint": http.url, "action": "reserve", "compensation": "unreserve", "output_key": "res"}),
            json!({"name": "bill", "endpoint": http.url, "action": "bill", "parameters": {"amount": 3}}),
        ],
    )
    .await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let reserve = http.calls_to("reserve");
    assert_eq!(reserve.len(), 2, "500 is retried");
    assert_eq!(reserve[0]["idempotency_key"], reserve[1]["idempotency_key"]);
    assert_eq!((reserve[0]["attempt"].clone(), reserve[1]["attempt"].clone()), (json!(1), json!(2)));
    assert_eq!(reserve[0]["phase"], "execute");
    assert_eq!(reserve[0]["input"]["order"], 7);
    let bill = http.calls_to("bill");
    assert_eq!(bill.len(), 1, "409 is a failure, not retried");
    assert_eq!(bill[0]["input"]["amount"], 3);
    assert_eq!(bill[0]["input"]["res"]["reservation"], "r-1");
    let undo = http.calls_to("unreserve");
    assert_eq!(undo.len(), 1);
    assert_eq!(undo[0]["phase"], "compensate");
    assert_eq!(undo[0]["input"]["step_output"]["reservation"], "r-1");
});

on_every_store!(a_pending_saga_can_be_cancelled_and_a_finished_one_cannot_run_again, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = saga(&n, json!({}), vec![json!({"name": "a", "plugin": "scripted"})]).await;
    let cancelled = n.sagas.cancel(TENANT, &id).await.unwrap();
    assert_eq!(cancelled.state, SagaState::Compensated);
    assert!(matches!(n.sagas.execute(TENANT, &id, true).await, Err(wasmtx::saga::SagaError::WrongState { .. })));
    let id = saga(&n, json!({}), vec![json!({"name": "a", "plugin": "scripted"})]).await;
    n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert!(matches!(n.sagas.execute(TENANT, &id, true).await, Err(wasmtx::saga::SagaError::WrongState { .. })));
    assert!(matches!(n.sagas.add_step(TENANT, &id, step(json!({"name": "b", "plugin": "scripted"}))).await, Err(wasmtx::saga::SagaError::WrongState { .. })));
    assert!(matches!(n.sagas.get("another-tenant", &id).await, Err(wasmtx::saga::SagaError::NotFound { .. })));
});

on_every_store!(a_running_saga_pins_the_plugin_version_it_started_with, |url: String| async move {
    let n = with_plugins(&url).await;
    n.catalog.publish(TENANT, "svc", &plugin_bytes(plugins::SCRIPTED)).await.unwrap();
    let id = saga(
        &n,
        json!({}),
        vec![
            json!({"name": "slow", "plugin": "svc", "parameters": {"script": {"execute": {"do": "sleep", "ms": 300}}}}),
            json!({"name": "after", "plugin": "svc"}),
        ],
    )
    .await;
    let mut progress = n.sagas.subscribe();
    let running = n.sagas.execute(TENANT, &id, false).await.unwrap();
    assert_eq!(running.state, SagaState::Running);
    // Swap while the first step is in flight: wait for its durable start, not for time.
    loop {
        let p = progress.recv().await.unwrap();
        if p.tx_id == id && p.event.kind == "step_started" {
            break;
        }
    }
    let (v2, _) = n.catalog.publish(TENANT, "svc", &plugin_bytes(plugins::SHIPPING)).await.unwrap();
    assert_eq!(v2.version, 2);
    loop {
        let p = progress.recv().await.unwrap();
        if p.tx_id == id && p.terminal {
            break;
        }
    }
    let done = n.sagas.get(TENANT, &id).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    for s in &done.doc.steps {
        assert_eq!(s.plugin_version.as_deref(), Some("svc@1"));
        assert!(s.output.as_ref().unwrap().get("phase").is_some(), "ran scripted (v1), not shipping (v2)");
    }
});

on_every_store!(the_catalog_answers_a_publish_at_once_and_keeps_pinned_versions, |url: String| async move {
    // Lookups are cached (plugin rows are read on every step); a publish through the same
    // catalog must still be the next saga's version at once.
    let n = node(&url).await;
    n.catalog.publish(TENANT, "pay", &plugin_bytes(plugins::PAYMENT)).await.unwrap();
    assert_eq!(n.catalog.resolve(TENANT, "pay").await.unwrap().0.version, 1);
    n.catalog.publish(TENANT, "pay", &plugin_bytes(plugins::SCRIPTED)).await.unwrap();
    let (latest, component) = n.catalog.resolve(TENANT, "pay").await.unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(component.digest, latest.digest);
    let (pinned, _) = n.catalog.resolve(TENANT, "pay@1").await.unwrap();
    assert_eq!((pinned.version, pinned.digest.as_str() != latest.digest.as_str()), (1, true));
    assert!(n.catalog.resolve("another-tenant", "pay").await.is_err(), "cached rows stay per tenant");
});

on_every_store!(a_change_made_by_another_coordinator_is_not_lost_to_a_remembered_row, |url: String| async move {
    // Each engine starts a change from the row it last wrote (sparing a read); when another
    // coordinator wrote since, the revision check fails and the change is made again from
    // the stored row — never a lost step, never a spurious "busy".
    let a = with_plugins(&url).await;
    let b = node(&url).await;
    let id = saga(&a, json!({}), vec![json!({"name": "one", "plugin": "scripted"})]).await;
    b.sagas.add_step(TENANT, &id, step(json!({"name": "two", "plugin": "scripted"}))).await.unwrap();
    let (index, total) = a.sagas.add_step(TENANT, &id, step(json!({"name": "three", "plugin": "scripted"}))).await.unwrap();
    assert_eq!((index, total), (2, 3));
    b.sagas.add_step(TENANT, &id, step(json!({"name": "four", "plugin": "scripted"}))).await.unwrap();
    let done = a.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Completed);
    let names: Vec<&str> = done.doc.steps.iter().map(|s| s.spec.name.as_str()).collect();
    assert_eq!(names, ["one", "two", "three", "four"]);
    // Executing again through the other node is refused as it was before.
    assert!(matches!(b.sagas.execute(TENANT, &id, true).await, Err(wasmtx::saga::SagaError::WrongState { .. })));

    let tx = a.tpc.create(TENANT, serde_json::from_value(json!({"transaction_name": "t"})).unwrap()).await.unwrap();
    let p = |pid: &str| serde_json::from_value(json!({"participant_id": pid, "plugin": "ledger"})).unwrap();
    a.tpc.add_participant(TENANT, tx.id(), p("x")).await.unwrap();
    b.tpc.add_participant(TENANT, tx.id(), p("y")).await.unwrap();
    assert_eq!(a.tpc.add_participant(TENANT, tx.id(), p("z")).await.unwrap(), 3);
    let ended = a.tpc.execute(TENANT, tx.id()).await.unwrap();
    assert_eq!(ended.doc.participants.len(), 3);
});

/// A clock that stands still and numbers ids 1, 2, 3…
#[derive(Debug, Default)]
struct StillClock(std::sync::atomic::AtomicU64);

impl wasmtx::txn::Clock for StillClock {
    fn now_ms(&self) -> i64 {
        1_700_000_000_000
    }

    fn new_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_u128(u128::from(self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1))
    }
}

on_every_store!(an_engine_takes_its_time_and_ids_from_its_clock, |url: String| async move {
    use wasmtx::participant::Invoker;
    use wasmtx::plugin::{CallLimits, Catalog, ComponentCache};
    use wasmtx::saga::SagaEngine;
    use wasmtx::txn::EngineConfig;
    let store = wasmtx::store::Store::open(&url).await.unwrap();
    let catalog = Catalog::new(store.clone(), ComponentCache::new(common::host()));
    let config = EngineConfig { clock: std::sync::Arc::new(StillClock::default()), ..EngineConfig::default() };
    let sagas = SagaEngine::new(store, catalog, Invoker::new(common::host(), CallLimits::default()), config);
    for n in 1..=2 {
        let req: CreateSaga = serde_json::from_value(json!({"saga_name": "still", "execute": true})).unwrap();
        let done = sagas.run(TENANT, req).await.unwrap();
        assert_eq!(done.id(), format!("saga-00000000-0000-0000-0000-00000000000{n}"));
        let doc = done.document();
        assert_eq!((doc["created_at"].clone(), doc["updated_at"].clone()), (json!("2023-11-14T22:13:20.000Z"), json!("2023-11-14T22:13:20.000Z")));
        assert_eq!(doc["state"], "completed");
    }
});

on_every_store!(a_step_that_answers_too_late_is_compensated_and_told_its_outcome_is_unknown, |url: String| async move {
    let n = with_plugins(&url).await;
    let script = Script(
        [
            ("do_b".to_string(), vec![Answer::Late(1500, 200, json!({"done": "too late"}))]),
            ("do_c".to_string(), vec![Answer::Status(422, json!({"error": "refused"}))]),
        ]
        .into_iter()
        .collect(),
    );
    let http = HttpParticipant::start(script).await;
    let step = |name: &str, timeout_ms: u64| {
        json!({"name": name, "endpoint": http.url, "action": format!("do_{name}"), "compensation": format!("undo_{name}"),
               "retry_count": 0, "timeout_ms": timeout_ms})
    };
    // b does its work and answers after its 500 ms timeout: it may have happened, so it is
    // undone too — before a, and told that its outcome is unknown.
    let id = saga(&n, json!({}), vec![step("a", 5000), step("b", 500)]).await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let paths: Vec<String> = http.calls.lock().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, ["do_a", "do_b", "undo_b", "undo_a"]);
    assert_eq!(http.calls_to("undo_b")[0]["forward_outcome"], "unknown");
    assert_eq!(http.calls_to("undo_b")[0]["input"]["forward_outcome"], "unknown");
    assert_eq!(http.calls_to("undo_a")[0]["forward_outcome"], "success");
    assert_eq!(done.document()["steps"][1]["forward_outcome"], "unknown");
    assert!(done.doc.error.as_deref().unwrap().contains("unknown outcome"), "{:?}", done.doc.error);
    // c answers a definite no: nothing of it to undo.
    let id = saga(&n, json!({}), vec![step("a", 5000), step("c", 5000)]).await;
    let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    assert_eq!(done.doc.steps[1].state, StepState::Failed);
    assert!(http.calls_to("undo_c").is_empty(), "a definite failure is not compensated");
    assert_eq!(http.calls_to("undo_a").len(), 2);
});

/// A step of a DAG saga at the test participant, answering `{"from": name}`.
fn branch(http: &HttpParticipant, name: &str, deps: &[&str]) -> Value {
    json!({"name": name, "endpoint": http.url, "action": format!("do_{name}"), "compensation": format!("undo_{name}"),
           "output_key": name, "retry_count": 0, "depends_on": deps})
}

fn from(names: &[&str], late_ms: u64) -> Script {
    Script(names.iter().map(|n| (format!("do_{n}"), vec![Answer::Late(late_ms, 200, json!({"from": n}))])).collect())
}

on_every_store!(a_diamond_runs_its_branches_at_once_each_seeing_what_it_follows, |url: String| async move {
    let n = with_plugins(&url).await;
    let http = HttpParticipant::start(from(&["a", "b", "c", "e", "d"], 200)).await;
    // a → (b, c, e) → d
    let steps = vec![
        branch(&http, "a", &[]),
        branch(&http, "b", &["a"]),
        branch(&http, "c", &["a"]),
        branch(&http, "e", &["a"]),
        branch(&http, "d", &["b", "c", "e"]),
    ];
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "diamond", "context": {"order": 7}, "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Completed, "{:?}", done.doc.error);
    let input = |step: &str| http.calls_to(&format!("do_{step}"))[0]["input"].clone();
    assert_eq!(input("a"), json!({"order": 7}));
    assert_eq!(input("b"), json!({"order": 7, "a": {"from": "a"}}), "b sees a, not its siblings");
    assert_eq!(input("c"), json!({"order": 7, "a": {"from": "a"}}));
    assert_eq!(input("d"), json!({"order": 7, "a": {"from": "a"}, "b": {"from": "b"}, "c": {"from": "c"}, "e": {"from": "e"}}));
    // b, c and e started in one write, each naming the others.
    let history = n.sagas.history(TENANT, created.id()).await.unwrap();
    let starts: Vec<&wasmtx::store::EventRow> = history.iter().filter(|e| e.kind == "step_started").collect();
    let at = |s: &str| starts.iter().find(|e| e.step.as_deref() == Some(s)).unwrap().at_ms;
    assert!(at("b") == at("c") && at("c") == at("e"), "{history:?}");
    // Journal order, not timestamps (two events may share a millisecond).
    let position = |kind: &str, s: &str| history.iter().position(|e| e.kind == kind && e.step.as_deref() == Some(s)).unwrap();
    assert!(position("step_completed", "a") < position("step_started", "b"), "{history:?}");
    assert!(["b", "c", "e"].iter().all(|s| position("step_completed", s) < position("step_started", "d")), "{history:?}");
    let with_b = &starts.iter().find(|e| e.step.as_deref() == Some("b")).unwrap().detail["with"];
    assert_eq!(with_b, &json!(["c", "e"]));
    assert_eq!(done.document()["steps"][4]["depends_on"], json!(["b", "c", "e"]));
});

on_every_store!(a_failing_branch_stops_new_starts_awaits_the_others_and_undoes_in_reverse_dependency_order, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = from(&["a", "c", "d"], 0);
    script.0.insert("do_b".into(), vec![Answer::Status(422, json!({"error": "no stock"}))]);
    script.0.insert("do_c".into(), vec![Answer::Late(700, 200, json!({"from": "c"}))]);
    let http = HttpParticipant::start(script).await;
    // a → (b, c) → d; b fails at once while c still runs.
    let steps = vec![branch(&http, "a", &[]), branch(&http, "b", &["a"]), branch(&http, "c", &["a"]), branch(&http, "d", &["b", "c"])];
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "fails", "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated, "{:?}", done.doc.error);
    let states: Vec<StepState> = done.doc.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Compensated, StepState::Failed, StepState::Compensated, StepState::Pending]);
    let paths: Vec<String> = http.calls.lock().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect();
    assert!(!paths.contains(&"do_d".to_string()), "nothing starts after a failure: {paths:?}");
    assert!(!paths.contains(&"undo_b".to_string()), "a definite failure is not undone: {paths:?}");
    let pos = |p: &str| paths.iter().position(|x| x == p).unwrap_or_else(|| panic!("{p} in {paths:?}"));
    assert!(pos("do_c") < pos("undo_c") && pos("undo_c") < pos("undo_a"), "c is awaited, then undone before a: {paths:?}");
    assert!(done.doc.error.as_deref().unwrap().contains("step b failed"), "{:?}", done.doc.error);
});

on_every_store!(dependencies_on_unknown_steps_or_in_a_cycle_are_refused, |url: String| async move {
    let n = with_plugins(&url).await;
    let refused = |steps: Value| {
        let req: CreateSaga = serde_json::from_value(json!({"saga_name": "bad", "steps": steps})).unwrap();
        let sagas = n.sagas.clone();
        async move { sagas.create(TENANT, req).await.map(|_| ()).unwrap_err().to_string() }
    };
    let step = |name: &str, deps: &[&str]| json!({"name": name, "plugin": "scripted", "depends_on": deps});
    assert!(refused(json!([step("a", &["ghost"])])).await.contains("\"ghost\""));
    assert!(refused(json!([step("a", &["a"])])).await.contains("itself"));
    let cycle = refused(json!([step("a", &["c"]), step("b", &["a"]), step("c", &["b"])])).await;
    assert!(cycle.contains("cycle"), "{cycle}");
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "ok", "steps": [step("a", &[])]})).unwrap();
    let ok = n.sagas.create(TENANT, req).await.unwrap();
    let added = n.sagas.add_step(TENANT, ok.id(), serde_json::from_value(step("b", &["nope"])).unwrap()).await;
    assert!(matches!(added, Err(wasmtx::saga::SagaError::Invalid(m)) if m.contains("\"nope\"")));
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "x", "max_parallel": 0})).unwrap();
    assert!(n.sagas.create(TENANT, req).await.is_err(), "max_parallel 0");
});

on_every_store!(a_cancel_during_a_retry_wait_starts_no_new_attempt_and_undoes_the_step, |url: String| async move {
    let n = with_plugins(&url).await;
    let slow_retries = json!({"max_attempts": 5, "backoff": "fixed", "base_delay_ms": 800, "max_delay_ms": 800});
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "cancelled", "retry_policy": slow_retries, "steps": [
        {"name": "a", "plugin": "scripted"},
        {"name": "b", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "retry", "times": 10}}}}
    ]})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let mut progress = n.sagas.subscribe();
    n.sagas.execute(TENANT, created.id(), false).await.unwrap();
    // Wait for b's first `retry` answer to be recorded, then cancel during the wait.
    loop {
        let p = progress.recv().await.unwrap();
        if p.tx_id == created.id() && p.event.kind == "step_retry" {
            break;
        }
    }
    let done = n.sagas.cancel(TENANT, created.id()).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated, "{:?}", done.doc.error);
    let b = &done.doc.steps[1];
    assert_eq!(b.attempts, 1, "no attempt after the cancel");
    assert_eq!((b.state, b.outcome_unknown), (StepState::Compensated, true), "its unclear first attempt is undone");
    assert_eq!(done.doc.steps[0].state, StepState::Compensated);
    assert_eq!(done.doc.error.as_deref(), Some("cancelled"));
});

on_every_store!(a_compensation_runs_on_its_own_plugin_or_endpoint_when_the_step_names_one, |url: String| async move {
    // The transaction nodes name a step's action node and its compensation node apart
    // (`StepNode_payment_step`, `CompensationNode_payment_step`); such names are plugins here.
    let n = with_plugins(&url).await;
    for name in ["StepNode_payment_step", "CompensationNode_payment_step"] {
        n.catalog.publish(TENANT, name, &plugin_bytes(plugins::SCRIPTED)).await.unwrap();
    }
    let forward = HttpParticipant::start(Script::default()).await;
    let undo = HttpParticipant::start(Script::default()).await;
    let mut script = Script::default();
    script.0.insert("do_stock".into(), vec![Answer::Status(422, json!({"error": "no stock"}))]);
    let failing = HttpParticipant::start(script).await;
    let steps = json!([
        {"name": "payment_step", "plugin": "StepNode_payment_step", "compensation_plugin": "CompensationNode_payment_step", "retry_count": 0},
        {"name": "ship", "endpoint": forward.url, "action": "do_ship", "compensation": "undo_ship", "compensation_endpoint": undo.url, "retry_count": 0},
        {"name": "stock", "endpoint": failing.url, "action": "do_stock", "retry_count": 0},
    ]);
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "order", "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated, "{:?}", done.doc.error);
    assert_eq!(undo.calls_to("undo_ship").len(), 1, "the compensation went to its own endpoint");
    assert!(forward.calls_to("undo_ship").is_empty(), "not to the step's");
    let doc = done.document();
    assert_eq!(doc["steps"][0]["plugin_version"], "StepNode_payment_step@1");
    assert_eq!(doc["steps"][0]["compensation_plugin_version"], "CompensationNode_payment_step@1");
    let history = n.sagas.history(TENANT, created.id()).await.unwrap();
    let undone = history.iter().find(|e| e.kind == "step_compensated" && e.step.as_deref() == Some("payment_step")).unwrap();
    assert_eq!(undone.detail["output"]["phase"], "compensate", "{undone:?}");

    // Both of plugin and endpoint, or a compensation plugin that does not exist, are refused.
    let both = json!({"name": "x", "plugin": "payment", "compensation_plugin": "payment", "compensation_endpoint": undo.url});
    let err = n.sagas.add_step(TENANT, n.sagas.create(TENANT, serde_json::from_value(json!({"saga_name": "y"})).unwrap()).await.unwrap().id(), step(both)).await.unwrap_err();
    assert!(err.to_string().contains("compensation"), "{err}");
    let missing = json!({"name": "x", "plugin": "payment", "compensation_plugin": "nope"});
    let other = n.sagas.create(TENANT, serde_json::from_value(json!({"saga_name": "z"})).unwrap()).await.unwrap();
    assert!(n.sagas.add_step(TENANT, other.id(), step(missing)).await.is_err());
});

/// Waits (at most 30 s) for the journal to announce `kind` for `step` of saga `id`; announced
/// only once written, so what it returns is durable. `step` None: the saga's end.
async fn until_written(progress: &mut tokio::sync::broadcast::Receiver<wasmtx::model::Progress>, id: &str, kind: &str, step: Option<&str>) {
    let wait = async {
        loop {
            let p = progress.recv().await.unwrap();
            let end = step.is_none() && p.terminal;
            if p.tx_id == id && (end || (p.event.kind == kind && p.event.step.as_deref() == step)) {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait).await.unwrap_or_else(|_| panic!("{kind} {step:?} of {id} was never written"));
}

/// The paths the participant was called on, in order.
fn paths(http: &HttpParticipant) -> Vec<String> {
    http.calls.lock().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect()
}

on_every_store!(a_branch_that_answers_first_is_durably_completed_while_the_others_still_run, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = from(&["a", "b", "e"], 0);
    for s in ["c", "d"] {
        script.0.insert(format!("do_{s}"), vec![Answer::Held(200, json!({"from": s}))]);
    }
    let http = HttpParticipant::start(script).await;
    // a → (b, c, d) → e; c and d are held until b's completion has been seen in the store.
    let steps = vec![branch(&http, "a", &[]), branch(&http, "b", &["a"]), branch(&http, "c", &["a"]), branch(&http, "d", &["a"]), branch(&http, "e", &["b", "c", "d"])];
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "held", "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let id = created.id().to_string();
    let mut progress = n.sagas.subscribe();
    n.sagas.execute(TENANT, &id, false).await.unwrap();
    until_written(&mut progress, &id, "step_completed", Some("b")).await;
    // Another coordinator reading the store (as after a crash) sees b done, c and d running:
    // it would not call b again.
    let other = node(&url).await;
    let seen = other.sagas.get(TENANT, &id).await.unwrap();
    let states: Vec<StepState> = seen.doc.steps.iter().map(|s| s.state).collect();
    use StepState::{Completed, Pending, Running};
    assert_eq!(states, [Completed, Completed, Running, Running, Pending]);
    assert_eq!(seen.document()["steps"][1]["output"], json!({"from": "b"}));
    http.release();
    until_written(&mut progress, &id, "saga_completed", None).await;
    let done = n.sagas.get(TENANT, &id).await.unwrap();
    assert_eq!(done.state, SagaState::Completed, "{:?}", done.doc.error);
    assert_eq!(http.calls_to("do_b").len(), 1);
});

on_every_store!(an_http_step_that_loses_its_connection_or_spends_its_retries_on_5xx_is_undone_as_unknown, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = Script::default();
    script.0.insert("do_lost".into(), vec![Answer::Drop]);
    script.0.insert("do_down".into(), vec![Answer::Status(503, json!({"error": "unavailable"}))]);
    let http = HttpParticipant::start(script).await;
    let step = |name: &str, retry_count: u32| {
        json!({"name": name, "endpoint": http.url, "action": format!("do_{name}"), "compensation": format!("undo_{name}"), "retry_count": retry_count})
    };
    for (name, retry_count, why) in [("lost", 0, "connection closed"), ("down", 1, "HTTP 503")] {
        let id = saga(&n, json!({}), vec![step("first", 0), step(name, retry_count)]).await;
        let done = n.sagas.execute(TENANT, &id, true).await.unwrap();
        assert_eq!(done.state, SagaState::Compensated, "{name}: {:?}", done.doc.error);
        let s = &done.doc.steps[1];
        assert_eq!((s.state, s.attempts, s.outcome_unknown), (StepState::Compensated, retry_count + 1, true), "{name}: {:?}", s.error);
        assert!(kinds(&n, &id).await.contains(&format!("step_uncertain {name}")), "{name}");
        let undo = http.calls_to(&format!("undo_{name}"));
        assert!(s.error.as_deref().unwrap().contains(why), "{name}: {:?}", s.error);
        assert_eq!(undo.len(), 1, "{name}");
        assert_eq!(undo[0]["forward_outcome"], "unknown", "{name}");
        assert_eq!(done.doc.steps[0].state, StepState::Compensated, "{name}");
    }
    assert_eq!(http.calls_to("do_down").len(), 2, "503 is retried until the budget is spent");
    assert_eq!(http.calls_to("undo_first")[0]["forward_outcome"], "success");
});

on_every_store!(a_dag_undoes_a_timed_out_branch_and_a_completed_one_but_not_a_refused_one, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = from(&["a", "b"], 0);
    script.0.insert("do_c".into(), vec![Answer::Late(1500, 200, json!({"from": "c"}))]);
    script.0.insert("do_d".into(), vec![Answer::Status(422, json!({"error": "refused"}))]);
    let http = HttpParticipant::start(script).await;
    // a → (b, c, d): b completes, c answers after its timeout, d refuses.
    let mut late = branch(&http, "c", &["a"]);
    late["timeout_ms"] = json!(300);
    let steps = vec![branch(&http, "a", &[]), branch(&http, "b", &["a"]), late, branch(&http, "d", &["a"])];
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "mixed", "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated, "{:?}", done.doc.error);
    let states: Vec<StepState> = done.doc.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Compensated, StepState::Compensated, StepState::Compensated, StepState::Failed]);
    assert!(done.doc.steps[2].outcome_unknown && !done.doc.steps[1].outcome_unknown);
    assert_eq!(http.calls_to("undo_c")[0]["forward_outcome"], "unknown");
    assert_eq!(http.calls_to("undo_b")[0]["forward_outcome"], "success");
    let paths = paths(&http);
    assert!(!paths.contains(&"undo_d".to_string()), "a definite failure is not undone: {paths:?}");
    let pos = |p: &str| paths.iter().position(|x| x == p).unwrap_or_else(|| panic!("{p} in {paths:?}"));
    assert!(pos("undo_b") < pos("undo_a") && pos("undo_c") < pos("undo_a"), "{paths:?}");
});

on_every_store!(independent_compensations_start_together_before_the_step_they_follow, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = from(&["a", "b", "c", "d"], 0);
    script.0.insert("do_e".into(), vec![Answer::Status(422, json!({"error": "no courier"}))]);
    let http = HttpParticipant::start(script).await;
    // a → (b, c, d) → e; e fails once b, c and d completed.
    let steps = vec![branch(&http, "a", &[]), branch(&http, "b", &["a"]), branch(&http, "c", &["a"]), branch(&http, "d", &["a"]), branch(&http, "e", &["b", "c", "d"])];
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "fan", "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated, "{:?}", done.doc.error);
    let history = n.sagas.history(TENANT, created.id()).await.unwrap();
    let position = |kind: &str, s: &str| history.iter().position(|e| e.kind == kind && e.step.as_deref() == Some(s)).unwrap_or_else(|| panic!("{kind} {s}: {history:?}"));
    // b, c and d's compensations begin in one write, each naming the others.
    let begun: Vec<usize> = ["b", "c", "d"].iter().map(|s| position("compensation_started", s)).collect();
    assert_eq!(begun.iter().max().unwrap() - begun.iter().min().unwrap(), 2, "one batch: {history:?}");
    for s in ["b", "c", "d"] {
        let mut with: Vec<String> = serde_json::from_value(history[position("compensation_started", s)].detail["with"].clone()).unwrap();
        with.sort();
        let others: Vec<&str> = ["b", "c", "d"].into_iter().filter(|o| *o != s).collect();
        assert_eq!(with, others, "{s}");
    }
    // a's only once all three are undone, alone.
    let a = position("compensation_started", "a");
    assert!(["b", "c", "d"].iter().all(|s| position("step_compensated", s) < a), "{history:?}");
    assert!(history[a].detail.get("with").is_none(), "{:?}", history[a]);
    assert!(http.calls_to("undo_e").is_empty());
});

on_every_store!(max_parallel_bounds_the_calls_in_flight_at_the_participant, |url: String| async move {
    let n = with_plugins(&url).await;
    let names = ["p1", "p2", "p3", "p4", "p5"];
    let http = HttpParticipant::start(from(&names, 300)).await;
    let steps: Vec<Value> = names.iter().map(|s| branch(&http, s, &[])).collect();
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "bounded", "max_parallel": 2, "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Completed, "{:?}", done.doc.error);
    assert!(names.iter().all(|s| http.calls_to(&format!("do_{s}")).len() == 1));
    assert_eq!(http.most_at_once(), 2, "two at once, never more");
});

on_every_store!(a_dag_whose_compensations_fail_ends_failed_naming_every_step_not_undone, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = from(&["a", "b", "c"], 0);
    script.0.insert("do_d".into(), vec![Answer::Status(422, json!({"error": "refused"}))]);
    for s in ["b", "c"] {
        script.0.insert(format!("undo_{s}"), vec![Answer::Status(500, json!({"error": format!("{s}'s ledger closed")}))]);
    }
    let http = HttpParticipant::start(script).await;
    // a → (b, c, d); d refuses, then neither b nor c can be undone, so a is not undone either.
    let steps = vec![branch(&http, "a", &[]), branch(&http, "b", &["a"]), branch(&http, "c", &["a"]), branch(&http, "d", &["a"])];
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": "stuck", "steps": steps})).unwrap();
    let created = n.sagas.create(TENANT, req).await.unwrap();
    let done = n.sagas.execute(TENANT, created.id(), true).await.unwrap();
    assert_eq!(done.state, SagaState::Failed);
    let states: Vec<StepState> = done.doc.steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Completed, StepState::CompensationFailed, StepState::CompensationFailed, StepState::Failed]);
    assert!(http.calls_to("undo_a").is_empty(), "nothing is undone behind a failed compensation");
    let error = done.doc.error.clone().unwrap();
    for said in ["step b failed", "b's ledger closed", "step c failed", "c's ledger closed", "not undone behind it: a"] {
        assert!(error.contains(said), "{said}: {error}");
    }
    let history = n.sagas.history(TENANT, created.id()).await.unwrap();
    let failed = history.iter().find(|e| e.kind == "saga_failed").unwrap();
    assert_eq!(failed.detail["steps"], json!(["b", "c"]));
    assert_eq!(failed.detail["not_undone"], json!(["a"]));
});

on_every_store!(a_failed_saga_resumed_to_its_end_says_again_why_it_was_undone, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = Script::default();
    script.0.insert("bill".into(), vec![Answer::Status(409, json!({"e": "card expired"}))]);
    // The refund fails once (no retries left), then works after the operator's resume.
    script.0.insert("unreserve".into(), vec![Answer::Status(500, json!({"e": "ledger closed"})), Answer::Status(200, json!({}))]);
    let http = HttpParticipant::start(script).await;
    let id = saga(
        &n,
        json!({}),
        vec![
            json!({"name": "reserve", "endpoint": http.url, "action": "reserve", "compensation": "unreserve", "retry_count": 0}),
            json!({"name": "bill", "endpoint": http.url, "action": "bill", "retry_count": 0}),
        ],
    )
    .await;
    let failed = n.sagas.execute(TENANT, &id, true).await.unwrap();
    assert_eq!(failed.state, SagaState::Failed);
    assert!(failed.doc.error.as_deref().unwrap().contains("compensation of step reserve failed"), "{:?}", failed.doc.error);
    let done = n.sagas.resume(TENANT, &id).await.unwrap();
    assert_eq!(done.state, SagaState::Compensated);
    let error = done.doc.error.as_deref().unwrap();
    assert!(error.contains("bill") && error.contains("card expired") && !error.contains("compensation of"), "the reason it was undone, not the failure resume fixed: {error}");
});

#[tokio::test]
async fn a_call_the_outbound_policy_refuses_is_a_definite_no_only_on_a_steps_first_attempt() {
    use wasmtx::model::{CallContext, Outcome};
    use wasmtx::participant::{Invoker, Phase, Target};
    // A tenant this process has not loaded may reach nothing: every call is refused unsent.
    let invoker = Invoker::new(common::host(), wasmtx::plugin::CallLimits::default());
    let target = Target::Http { endpoint: "http://203.0.113.9/".into() };
    let ctx = |attempt| CallContext {
        tenant: "unloaded".into(),
        transaction_id: "saga-1".into(),
        step: "pay".into(),
        action: "pay".into(),
        attempt,
        idempotency_key: "saga-1:pay".into(),
        input: "{}".into(),
        deadline_ms: 1_000,
        traceparent: None,
    };
    let timeout = std::time::Duration::from_secs(1);
    let first = invoker.outcome(&target, Phase::Execute, ctx(1), timeout).await;
    assert!(matches!(first, Outcome::Failure(_)), "{first:?}");
    // The first attempt may have done the step's work before this one was refused: unknown.
    let again = invoker.outcome(&target, Phase::Execute, ctx(2), timeout).await;
    assert!(matches!(&again, Outcome::Retry(why) if why.contains("an earlier attempt may have reached it")), "{again:?}");
}
