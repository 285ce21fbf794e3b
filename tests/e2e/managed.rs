//! Managed transactions on both stores: the built-in rules on the seed examples, forced
//! patterns, capabilities, priorities, policy plugins (choice, reject, trap, nonsense → recorded
//! fallback), hot swap of the default policy on a running server, abort and recovery.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmtx::manager::{CreateManaged, Managed, ManagerError, Status};
use wasmtx::model::Pattern;
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Answer, HttpParticipant, Node, Script, Server, TENANT, client, node, wait_until};

async fn with_plugins(url: &str) -> Node {
    let n = node(url).await;
    for (name, path) in [
        ("payment", plugins::PAYMENT),
        ("inventory", plugins::INVENTORY),
        ("shipping", plugins::SHIPPING),
        ("ledger", plugins::LEDGER),
        ("scripted", plugins::SCRIPTED),
        ("always-saga", plugins::ALWAYS_SAGA),
        ("cost-aware", plugins::COST_AWARE),
        ("scripted-policy", plugins::SCRIPTED_POLICY),
    ] {
        n.catalog.publish(TENANT, name, &plugin_bytes(path)).await.unwrap();
    }
    n
}

async fn managed(n: &Node, create: Value, participants: Vec<Value>) -> String {
    let mut body = json!({"transaction_name": "t", "retry_policy": {"max_attempts": 2, "base_delay_ms": 5, "max_delay_ms": 10}});
    body.as_object_mut().unwrap().extend(create.as_object().unwrap().clone());
    let req: CreateManaged = serde_json::from_value(body).unwrap();
    let m = n.manager.create(TENANT, req).await.unwrap();
    for p in participants {
        n.manager.add_participant(TENANT, m.id(), serde_json::from_value(p).unwrap()).await.unwrap();
    }
    m.id().to_string()
}

async fn run(n: &Node, id: &str, pattern: Option<&str>) -> Value {
    let m = n.manager.execute(TENANT, id, pattern).await.unwrap();
    n.manager.document(TENANT, &m).await.unwrap()
}

async fn events(n: &Node, id: &str) -> Vec<wasmtx::store::EventRow> {
    n.manager.history(TENANT, id).await.unwrap()
}

/// Executes `id` as a saga in a task of its own, once its delegate's `step` has started.
async fn execute_as_saga_until_started(n: &Node, id: &str, step: &str) -> tokio::task::JoinHandle<Result<Managed, ManagerError>> {
    let mut progress = n.sagas.subscribe();
    let exec = {
        let (manager, id) = (n.manager.clone(), id.to_string());
        tokio::spawn(async move { manager.execute(TENANT, &id, Some("saga")).await })
    };
    loop {
        let p = progress.recv().await.unwrap();
        if p.event.kind == "step_started" && p.event.step.as_deref() == Some(step) {
            return exec;
        }
    }
}

on_every_store!(the_seed_examples_pick_their_patterns_and_report_one_document, |url: String| async move {
    let n = with_plugins(&url).await;
    // E-commerce order: mixed capabilities → saga, completed → committed.
    let order = managed(&n, json!({"context": {"amount": 5}}), vec![
        json!({"participant_id": "payment", "plugin": "payment"}),
        json!({"participant_id": "inventory", "plugin": "inventory"}),
    ]).await;
    let doc = run(&n, &order, None).await;
    assert_eq!((doc["selected_pattern"].clone(), doc["transaction_status"].clone()), (json!("saga"), json!("committed")), "{doc}");
    assert_eq!(doc["status"], "success");
    assert_eq!(doc["participants"][0]["state"], "completed");
    assert!(doc["execution_time_ms"].as_i64().is_some());
    assert_eq!(doc["requirements"], json!({"consistency": "eventual", "availability": "high", "timeout_ms": 300000}));
    assert_eq!((doc["coordinator_status"]["kind"].clone(), doc["coordinator_status"]["state"].clone()), (json!("saga"), json!("completed")), "{doc}");
    assert_eq!(doc["coordinator_status"]["id"], doc["delegate_id"]);
    assert!(doc["started_at"].is_string() && doc["ended_at"].is_string() && doc["duration_ms"] == doc["execution_time_ms"], "{doc}");
    // Financial transfer: immediate, all 2PC → two_phase_commit.
    let transfer = managed(&n, json!({"requirements": {"consistency": "immediate"}}), vec![
        json!({"participant_id": "debit", "plugin": "ledger"}),
        json!({"participant_id": "credit", "plugin": "ledger"}),
    ]).await;
    let doc = run(&n, &transfer, None).await;
    assert_eq!((doc["selected_pattern"].clone(), doc["transaction_status"].clone()), (json!("two_phase_commit"), json!("committed")), "{doc}");
    assert_eq!(doc["participants"][1]["vote"], "prepared");
    assert_eq!((doc["coordinator_status"]["kind"].clone(), doc["coordinator_status"]["state"].clone()), (json!("2pc"), json!("committed")), "{doc}");
    // Cross-system integration with a legacy mainframe (no 2PC), strong consistency → saga.
    let integration = managed(&n, json!({"requirements": {"consistency": "strong", "availability": "low"}}), vec![
        json!({"participant_id": "crm", "plugin": "payment"}),
        json!({"participant_id": "mainframe", "endpoint": "http://127.0.0.1:9/legacy"}),
    ]).await;
    let m = n.manager.get(TENANT, &integration).await.unwrap();
    assert_eq!(m.doc.participants[1].supports_2pc, false, "an endpoint defaults to saga only");
    let doc = run(&n, &integration, Some("auto")).await;
    assert_eq!(doc["selected_pattern"], "saga", "{doc}");
    assert_eq!(doc["transaction_status"], "compensated", "nothing listens on the mainframe's port: {doc}");
    // A compensated saga reports compensated.
    let failing = managed(&n, json!({}), vec![
        json!({"participant_id": "ok", "plugin": "scripted"}),
        json!({"participant_id": "no", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "fail"}}}}),
    ]).await;
    let doc = run(&n, &failing, None).await;
    assert_eq!((doc["transaction_status"].clone(), doc["status"].clone()), (json!("compensated"), json!("failed")));
    let (_, listed) = (0, n.manager.list(TENANT, Some(Status::Compensated), 10).await.unwrap());
    assert_eq!(listed.len(), 2, "the integration and the failing order");
});

on_every_store!(one_subscription_hears_every_engine_of_a_node_once_in_commit_order, |url: String| async move {
    let n = with_plugins(&url).await;
    // Subscribed through the 2PC engine: the managed transaction and its saga delegate are
    // announced on the same channel, each change once.
    let mut progress = n.tpc.subscribe();
    let id = managed(&n, json!({"context": {"amount": 5}}), vec![json!({"participant_id": "payment", "plugin": "payment"}), json!({"participant_id": "shipping", "plugin": "shipping"})]).await;
    let done = n.manager.execute(TENANT, &id, Some("saga")).await.unwrap();
    let delegate = done.doc.delegate_id.clone().unwrap();
    let mut heard: Vec<(String, String)> = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), progress.recv()).await;
        let p = next.unwrap_or_else(|_| panic!("the managed transaction's end was never heard: {heard:?}")).expect("no announcement missed");
        heard.push((p.tx_id.clone(), p.event.kind.clone()));
        if p.tx_id == id && p.terminal {
            break;
        }
    }
    let kinds_of = |tx: &str| heard.iter().filter(|(t, _)| t == tx).map(|(_, k)| k.as_str()).collect::<Vec<_>>();
    let saga = kinds_of(&delegate);
    assert_eq!(saga.iter().filter(|k| **k == "saga_completed").count(), 1, "{heard:?}");
    assert_eq!(saga.iter().filter(|k| **k == "step_completed").count(), 2, "{heard:?}");
    let own = kinds_of(&id);
    assert_eq!(own.iter().filter(|k| **k == "pattern_selected").count(), 1, "{heard:?}");
    // Commit order: the selection before the delegate's first change, its end before ours.
    let at = |tx: &str, kind: &str| heard.iter().position(|(t, k)| t == tx && k == kind).unwrap();
    assert!(at(&id, "pattern_selected") < at(&delegate, "saga_started"), "{heard:?}");
    assert_eq!(own.last(), Some(&"transaction_committed"), "{heard:?}");
    assert!(at(&delegate, "saga_completed") < at(&id, "transaction_committed"), "{heard:?}");
});

on_every_store!(immediate_consistency_without_2pc_is_rejected_naming_the_participants, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = managed(&n, json!({"requirements": {"consistency": "immediate"}}), vec![
        json!({"participant_id": "ledger", "plugin": "ledger"}),
        json!({"participant_id": "warehouse", "plugin": "inventory"}),
    ]).await;
    let doc = run(&n, &id, None).await;
    assert_eq!(doc["status"], "error");
    assert_eq!(doc["transaction_status"], "failed");
    assert_eq!(doc["selected_pattern"], Value::Null);
    let error = doc["error"].as_str().unwrap();
    assert!(error.contains("warehouse") && !error.contains("ledger"), "{error}");
});

on_every_store!(forced_patterns_are_checked_against_capabilities, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = managed(&n, json!({}), vec![
        json!({"participant_id": "pay", "plugin": "payment"}),
        json!({"participant_id": "stock", "plugin": "inventory"}),
    ]).await;
    let err = n.manager.execute(TENANT, &id, Some("two_phase_commit")).await.unwrap_err();
    assert!(matches!(&err, ManagerError::Invalid(m) if m.contains("stock") && !m.contains("pay")), "{err}");
    assert!(matches!(n.manager.execute(TENANT, &id, Some("three_phase")).await, Err(ManagerError::Invalid(_))));
    assert_eq!(n.manager.get(TENANT, &id).await.unwrap().state, Status::Pending, "state unchanged");
    let doc = run(&n, &id, Some("saga")).await;
    assert_eq!(doc["selected_pattern"], "saga");
    let two = managed(&n, json!({"context": {"amount": 5}}), vec![json!({"participant_id": "pay", "plugin": "payment"})]).await;
    let doc = run(&n, &two, Some("two_phase_commit")).await;
    assert_eq!((doc["selected_pattern"].clone(), doc["transaction_status"].clone()), (json!("two_phase_commit"), json!("committed")));
});

on_every_store!(capabilities_default_to_exports_and_flags_may_narrow_but_not_claim, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = managed(&n, json!({"requirements": {"consistency": "strong", "availability": "low"}}), vec![]).await;
    let claim = serde_json::from_value(json!({"participant_id": "x", "plugin": "inventory", "supports_2pc": true})).unwrap();
    assert!(matches!(n.manager.add_participant(TENANT, &id, claim).await, Err(ManagerError::Invalid(_))));
    let narrow = serde_json::from_value(json!({"participant_id": "pay", "plugin": "payment", "supports_2pc": false})).unwrap();
    n.manager.add_participant(TENANT, &id, narrow).await.unwrap();
    let doc = run(&n, &id, None).await;
    assert_eq!(doc["selected_pattern"], "saga", "narrowed to saga only, strong consistency → saga");
});

on_every_store!(saga_steps_run_in_ascending_priority_stable_for_equal, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = managed(&n, json!({}), vec![
        json!({"participant_id": "c", "plugin": "scripted", "priority": 3}),
        json!({"participant_id": "a1", "plugin": "scripted", "priority": 1}),
        json!({"participant_id": "b", "plugin": "scripted", "priority": 2}),
        json!({"participant_id": "a2", "plugin": "scripted", "priority": 1}),
    ]).await;
    let m = n.manager.execute(TENANT, &id, None).await.unwrap();
    let saga = n.sagas.get(TENANT, m.doc.delegate_id.as_deref().unwrap()).await.unwrap();
    let order: Vec<&str> = saga.doc.steps.iter().map(|s| s.spec.name.as_str()).collect();
    assert_eq!(order, ["a1", "a2", "b", "c"]);
});

on_every_store!(policies_choose_reject_or_fall_back_to_the_builtin_rules_with_a_record, |url: String| async move {
    let n = with_plugins(&url).await;
    let ledgers = || vec![json!({"participant_id": "d", "plugin": "ledger"}), json!({"participant_id": "c", "plugin": "ledger"})];
    let mixed = || vec![json!({"participant_id": "pay", "plugin": "payment"}), json!({"participant_id": "stock", "plugin": "inventory"})];
    // A policy's valid choice wins over the rules (payment can do both: cost-aware picks 2PC for strong).
    let id = managed(&n, json!({"policy": "cost-aware", "requirements": {"consistency": "strong"}}),
        vec![json!({"participant_id": "p1", "plugin": "payment"}), json!({"participant_id": "p2", "plugin": "payment"})]).await;
    let doc = run(&n, &id, None).await;
    assert_eq!((doc["selected_pattern"].clone(), doc["policy"].clone()), (json!("two_phase_commit"), json!("cost-aware@1")), "{doc}");
    // Reject → status error with the policy's reason.
    let id = managed(&n, json!({"policy": "scripted-policy", "context": {"policy_script": "reject"}}), ledgers()).await;
    let doc = run(&n, &id, None).await;
    assert_eq!(doc["status"], "error");
    assert!(doc["error"].as_str().unwrap().contains("scripted policy refuses"));
    // Trap, spin, and a choice the participants cannot do → built-in rules, recorded.
    for (script, participants, expect_reason) in [
        ("trap", ledgers(), "trapped"),
        ("spin", ledgers(), "did not answer"),
        ("2pc", mixed(), "cannot do"),
    ] {
        let id = managed(&n, json!({"policy": "scripted-policy", "requirements": {"consistency": "immediate"},
                                    "context": {"policy_script": script}}), participants).await;
        let doc = run(&n, &id, None).await;
        assert_eq!(doc["policy"], "builtin", "{script}: {doc}");
        let fallback: Vec<_> = events(&n, &id).await.into_iter().filter(|e| e.kind == "policy_fallback").collect();
        assert_eq!(fallback.len(), 1, "{script}");
        assert!(fallback[0].detail["reason"].as_str().unwrap().contains(expect_reason), "{script}: {:?}", fallback[0].detail);
    }
    // always-saga on ledger-only participants (no saga) → fallback to 2PC by the rules.
    let id = managed(&n, json!({"policy": "always-saga", "requirements": {"consistency": "immediate"}}), ledgers()).await;
    let doc = run(&n, &id, None).await;
    assert_eq!(doc["selected_pattern"], "two_phase_commit");
});

on_every_store!(abort_and_recover_in_each_pattern, |url: String| async move {
    let n = with_plugins(&url).await;
    let pending = managed(&n, json!({}), vec![json!({"participant_id": "a", "plugin": "scripted"})]).await;
    let m = n.manager.abort(TENANT, &pending).await.unwrap();
    assert_eq!(m.state, Status::Aborted);
    assert!(matches!(n.manager.execute(TENANT, &pending, None).await, Err(ManagerError::WrongState { .. })));

    // A running saga: abort compensates what completed.
    let id = managed(&n, json!({}), vec![
        json!({"participant_id": "first", "plugin": "scripted"}),
        json!({"participant_id": "slow", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "sleep", "ms": 500}}}}),
        json!({"participant_id": "never", "plugin": "scripted"}),
    ]).await;
    let exec = execute_as_saga_until_started(&n, &id, "slow").await;
    let aborted = n.manager.abort(TENANT, &id).await.unwrap();
    let interrupted = exec.await.unwrap().expect("the interrupted execution settles without error");
    // Both answer the compensated state, whichever settled first.
    assert_eq!((interrupted.state, aborted.state), (Status::Compensated, Status::Compensated));
    let m = n.manager.get(TENANT, &id).await.unwrap();
    assert_eq!(m.state, Status::Compensated, "{:?}", aborted.state);
    let doc = n.manager.document(TENANT, &m).await.unwrap();
    assert_eq!(doc["participants"][0]["state"], "compensated");
    assert_eq!(doc["participants"][2]["state"], "pending", "the step after the abort never ran");

    // 2PC: committed cannot be aborted; recover of an ended transaction returns it.
    let id = managed(&n, json!({}), vec![json!({"participant_id": "l", "plugin": "ledger"})]).await;
    let m = n.manager.execute(TENANT, &id, Some("two_phase_commit")).await.unwrap();
    assert_eq!((m.doc.selected_pattern, m.state), (Some(Pattern::TwoPhaseCommit), Status::Committed));
    assert!(matches!(n.manager.abort(TENANT, &id).await, Err(ManagerError::WrongState { .. })));
    assert_eq!(n.manager.recover(TENANT, &id).await.unwrap().state, Status::Committed);
});

async fn post(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = client().post(format!("{}{path}", server.url)).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn put_plugin(server: &Server, name: &str, path: &str) -> Value {
    client().put(format!("{}/v1/plugins/{name}", server.url)).body(plugin_bytes(path)).send().await.unwrap().json().await.unwrap()
}

async fn new_transaction(server: &Server, body: Value, participants: &[Value]) -> String {
    let (status, created) = post(server, "/v1/transactions", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["transaction_status"], "pending");
    let id = created["transaction_id"].as_str().unwrap().to_string();
    for p in participants {
        let (status, r) = post(server, &format!("/v1/transactions/{id}/participants"), p.clone()).await;
        assert_eq!(status, StatusCode::OK, "{r}");
    }
    id
}

on_every_store!(the_default_policy_hot_swaps_on_a_running_server, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    put_plugin(&server, "payment", plugins::PAYMENT).await;
    assert_eq!(put_plugin(&server, "house-policy", plugins::ALWAYS_SAGA).await["version"], 1);
    let r = client().put(format!("{}/v1/settings/default-policy", server.url)).json(&json!({"policy": "house-policy"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = json!({"transaction_name": "t", "context": {"amount": 5}, "requirements": {"consistency": "strong", "availability": "low"}});
    let parts = [json!({"participant_id": "a", "plugin": "payment"}), json!({"participant_id": "b", "plugin": "payment"})];

    let first = new_transaction(&server, body.clone(), &parts).await;
    let (_, doc) = post(&server, &format!("/v1/transactions/{first}/execute"), json!({})).await;
    assert_eq!((doc["selected_pattern"].clone(), doc["policy"].clone()), (json!("saga"), json!("house-policy@1")), "{doc}");
    // The execution answers from what it ended with; the store holds the same.
    let stored: Value = client().get(format!("{}/v1/transactions/{first}", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!((doc["transaction_status"].clone(), &doc), (json!("committed"), &stored));

    assert_eq!(put_plugin(&server, "house-policy", plugins::COST_AWARE).await["version"], 2);
    let second = new_transaction(&server, body.clone(), &parts).await;
    let (_, doc) = post(&server, &format!("/v1/transactions/{second}/execute"), json!({})).await;
    assert_eq!((doc["selected_pattern"].clone(), doc["policy"].clone()), (json!("two_phase_commit"), json!("house-policy@2")), "{doc}");
    let stored: Value = client().get(format!("{}/v1/transactions/{second}", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!((doc["transaction_status"].clone(), &doc), (json!("committed"), &stored));

    let r = client().put(format!("{}/v1/settings/default-policy", server.url)).json(&json!({"policy": "payment"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "a plugin without `policy` cannot be the default");
    let (_, listed) = (0, client().get(format!("{}/v1/transactions?status=committed", server.url)).send().await.unwrap().json::<Value>().await.unwrap());
    assert_eq!(listed["transactions"].as_array().unwrap().len(), 2);

    // Bad input: 4xx, nothing created.
    for (body, status) in [
        (json!({"transaction_name": "x", "requirements": {"consistency": "total"}}), 422),
        (json!({"transaction_name": "x", "policy": "nope"}), 422),
        (json!({"requirements": {}}), 422),
    ] {
        let (got, err) = post(&server, "/v1/transactions", body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}: {err}");
    }
    let (got, _) = post(&server, &format!("/v1/transactions/{second}/execute"), json!({"pattern": "saga"})).await;
    assert_eq!(got, StatusCode::CONFLICT);
    let (got, err) = post(&server, &format!("/v1/transactions/{first}/participants"), json!({"participant_id": "late", "plugin": "payment"})).await;
    assert_eq!(got, StatusCode::CONFLICT, "{err}");
    let (got, _) = post(&server, "/v1/transactions/tx-nope/abort", json!({})).await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    let all: Value = client().get(format!("{}/v1/transactions", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["transactions"].as_array().unwrap().len(), 2);
    server.kill().await;
});

on_every_store!(an_execution_whose_record_was_written_meanwhile_settles_from_the_stored_one, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = managed(&n, json!({}), vec![
        json!({"participant_id": "slow", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "sleep", "ms": 300}}}}),
    ]).await;
    let exec = execute_as_saga_until_started(&n, &id, "slow").await;
    // Another writer moves the record a revision on while its delegate runs: the execution's
    // own write of the outcome, from the record it holds, is refused, and it settles again
    // from the stored one.
    let row = n.store.get_tx(TENANT, "transaction", &id).await.unwrap().unwrap();
    n.store.save_tx(&row, &[wasmtx::store::NewEvent::new("touched", None, json!({}))], None).await.unwrap();
    let ended = exec.await.unwrap().unwrap();
    let stored = n.manager.get(TENANT, &id).await.unwrap();
    assert_eq!((ended.state, stored.state), (Status::Committed, Status::Committed));
    assert_eq!(ended.row.rev, stored.row.rev, "answered what was written after the re-read");
    let kinds: Vec<String> = events(&n, &id).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds[kinds.len() - 2..], ["touched", "transaction_committed"], "{kinds:?}");
});

on_every_durable_store!(a_managed_2pc_killed_during_prepare_is_recovered_to_aborted, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Hang]);
    let stuck = HttpParticipant::start(script).await;
    let server = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let id = new_transaction(&server, json!({"transaction_name": "t"}), &[json!({"participant_id": "x", "endpoint": stuck.url, "supports_2pc": true})]).await;
    let exec = tokio::spawn(client().post(format!("{}/v1/transactions/{id}/execute", server.url)).json(&json!({"pattern": "two_phase_commit"})).send());
    stuck.until_hung().await;
    server.kill().await;
    let _ = exec.await;
    let restarted = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let doc = wait_until(&format!("{}/v1/transactions/{id}", restarted.url), "recovery", |d| d["transaction_status"] == "aborted").await;
    assert_eq!(doc["selected_pattern"], "two_phase_commit");
    assert_eq!(stuck.calls_to("abort").len(), 1);
    let (status, doc) = post(&restarted, &format!("/v1/transactions/{id}/recover"), json!({})).await;
    assert_eq!((status, doc["transaction_status"].clone()), (StatusCode::OK, json!("aborted")));
    restarted.kill().await;
});

on_every_store!(a_transaction_that_exceeds_its_timeout_is_compensated_or_aborted, |url: String| async move {
    let n = with_plugins(&url).await;
    // Saga: the deadline passes during the slow step; the next step never starts.
    let id = managed(&n, json!({"requirements": {"timeout_ms": 200}}), vec![
        json!({"participant_id": "slow", "plugin": "scripted", "priority": 1, "parameters": {"script": {"execute": {"do": "sleep", "ms": 400}}}}),
        json!({"participant_id": "late", "plugin": "scripted", "priority": 2}),
    ]).await;
    let doc = run(&n, &id, Some("saga")).await;
    assert_eq!(doc["transaction_status"], "compensated", "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("timed out"), "{doc}");
    assert_eq!(doc["participants"][1]["state"], "pending");
    // 2PC: a vote slower than the transaction's timeout is a no.
    let id = managed(&n, json!({"requirements": {"timeout_ms": 200}}), vec![
        json!({"participant_id": "slow", "plugin": "scripted", "parameters": {"script": {"prepare": {"do": "sleep", "ms": 2000}}}}),
    ]).await;
    let doc = run(&n, &id, Some("two_phase_commit")).await;
    assert_eq!(doc["transaction_status"], "aborted", "{doc}");
});

on_every_store!(parallel_runs_participants_of_equal_priority_at_once_under_the_saga_pattern, |url: String| async move {
    let n = with_plugins(&url).await;
    let http = HttpParticipant::start(Script::default()).await;
    let p = |id: &str, priority: i64| json!({"participant_id": id, "endpoint": http.url, "action": format!("do_{id}"), "priority": priority});
    let id = managed(&n, json!({"parallel": true}), vec![p("charge", 1), p("reserve", 1), p("ship", 2)]).await;
    let doc = run(&n, &id, Some("saga")).await;
    assert_eq!(doc["transaction_status"], "committed", "{doc}");
    let saga = doc["delegate_id"].as_str().unwrap();
    let history = n.sagas.history(TENANT, saga).await.unwrap();
    let starts: Vec<_> = history.iter().filter(|e| e.kind == "step_started").collect();
    let at = |s: &str| starts.iter().find(|e| e.step.as_deref() == Some(s)).unwrap().at_ms;
    assert_eq!(at("charge"), at("reserve"), "equal priorities start in one write");
    // Journal order, not timestamps (two events may share a millisecond).
    let position = |kind: &str, s: &str| history.iter().position(|e| e.kind == kind && e.step.as_deref() == Some(s)).unwrap();
    let ship = position("step_started", "ship");
    assert!(position("step_completed", "charge") < ship && position("step_completed", "reserve") < ship, "the next priority waits for the group before");
    let delegate = n.sagas.get(TENANT, saga).await.unwrap();
    assert_eq!(delegate.doc.steps[2].spec.depends_on, Some(vec!["charge".to_string(), "reserve".to_string()]));
    // Without `parallel`, the same participants run one after another.
    let id = managed(&n, json!({}), vec![p("charge", 1), p("reserve", 1), p("ship", 2)]).await;
    let doc = run(&n, &id, Some("saga")).await;
    let sequential = n.sagas.get(TENANT, doc["delegate_id"].as_str().unwrap()).await.unwrap();
    assert!(sequential.doc.steps.iter().all(|s| s.spec.depends_on.is_none()));
});

on_every_store!(two_executes_racing_for_one_transaction_run_it_once_through_one_delegate, |url: String| async move {
    let n = with_plugins(&url).await;
    for pattern in ["saga", "two_phase_commit"] {
        let name = format!("race-{pattern}");
        let id = managed(&n, json!({"transaction_name": name, "context": {"amount": 5}}), vec![json!({"participant_id": "pay", "plugin": "payment"})]).await;
        // Both read the transaction pending before either records its pattern.
        let (a, b) = tokio::join!(n.manager.execute(TENANT, &id, Some(pattern)), n.manager.execute(TENANT, &id, Some(pattern)));
        let (won, lost) = match (a, b) {
            (Ok(m), Err(e)) | (Err(e), Ok(m)) => (m, e),
            (a, b) => {
                let shown = |r: Result<Managed, ManagerError>| r.map(|m| m.state.as_str()).map_err(|e| e.to_string());
                panic!("{pattern}: one execute must win and one lose, got {:?} and {:?}", shown(a), shown(b))
            }
        };
        assert_eq!(won.state, Status::Committed, "{pattern}");
        // The loser's is the caller's race: 409 (busy, or already running), never a store error.
        assert!(matches!(lost, ManagerError::Busy(_) | ManagerError::WrongState { .. }), "{pattern}: {lost}");
        let sagas = n.sagas.list(TENANT, None, 1000).await.unwrap();
        let tpcs = n.tpc.list(TENANT, None, 1000).await.unwrap();
        let delegates: Vec<String> = sagas.iter().filter(|s| s.row.name == name).map(|s| s.id().to_string())
            .chain(tpcs.iter().filter(|t| t.row.name == name).map(|t| t.id().to_string()))
            .collect();
        assert_eq!(delegates, vec![won.doc.delegate_id.clone().unwrap()], "{pattern}: one delegate, the one that ran");
    }
});
