//! The 2PC engine on both stores: unanimous commit, every kind of "no", commit retries until
//! acknowledged, a budget that runs out, presumed abort and finishing a durable decision after
//! SIGKILL, and out-of-order requests.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmtx::tpc::{CreateTpc, Decision, ParticipantState, TpcError, TpcState};
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Answer, HttpParticipant, Node, Script, Server, TENANT, client, node, wait_until};

async fn with_plugins(url: &str) -> Node {
    let n = node(url).await;
    for (name, path) in [("ledger", plugins::LEDGER), ("scripted", plugins::SCRIPTED), ("inventory", plugins::INVENTORY)] {
        n.catalog.publish(TENANT, name, &plugin_bytes(path)).await.unwrap();
    }
    n
}

async fn transaction(n: &Node, extra: Value, participants: Vec<Value>) -> String {
    let mut body = json!({"transaction_name": "transfer", "context": {"amount": 10},
                          "retry_policy": {"max_attempts": 3, "base_delay_ms": 5, "max_delay_ms": 20}});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let req: CreateTpc = serde_json::from_value(body).unwrap();
    let tx = n.tpc.create(TENANT, req).await.unwrap();
    for p in participants {
        n.tpc.add_participant(TENANT, tx.id(), serde_json::from_value(p).unwrap()).await.unwrap();
    }
    tx.id().to_string()
}

fn ok_script() -> Script {
    Script::default()
}

on_every_store!(all_prepared_commits_and_each_participant_hears_prepare_then_commit_once, |url: String| async move {
    let n = with_plugins(&url).await;
    let http = HttpParticipant::start(ok_script()).await;
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
    let yes = HttpParticipant::start(script).await;
    let id = transaction(
        &n,
        json!({}),
        vec![
            json!({"participant_id": "alice", "plugin": "ledger"}),
            json!({"participant_id": "bank", "endpoint": yes.url}),
            json!({"participant_id": "bob", "plugin": "ledger", "parameters": {"amount": 1}}),
        ],
    )
    .await;
    let done = n.tpc.execute(TENANT, &id).await.unwrap();
    assert_eq!(done.state, TpcState::Committed);
    assert_eq!(done.doc.decision, Some(Decision::Commit));
    assert!(done.doc.participants.iter().all(|p| p.state == ParticipantState::Committed && p.attempts == 1));
    let calls: Vec<String> = yes.calls.lock().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(calls, ["prepare", "commit"]);
    assert_eq!(yes.calls_to("commit")[0]["idempotency_key"], format!("{id}:bank:commit"));
    assert_eq!(done.document()["status"], "success");
    assert!(http.calls.lock().unwrap().is_empty());
});

on_every_store!(every_kind_of_no_aborts_everyone_and_nobody_commits, |url: String| async move {
    let n = with_plugins(&url).await;
    let no_votes: Vec<(&str, Value, Script)> = {
        let mut abort_vote = Script::default();
        abort_vote.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "abort"}))]);
        let mut error = Script::default();
        error.0.insert("prepare".into(), vec![Answer::Status(500, json!({}))]);
        let mut garbage = Script::default();
        garbage.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "maybe"}))]);
        let mut silent = Script::default();
        silent.0.insert("prepare".into(), vec![Answer::Hang]);
        vec![
            ("abort vote", json!({}), abort_vote),
            ("HTTP error", json!({}), error),
            ("malformed vote", json!({}), garbage),
            ("vote timeout", json!({"prepare_timeout_ms": 300}), silent),
        ]
    };
    for (what, extra, script) in no_votes {
        let bad = HttpParticipant::start(script).await;
        let mut yes_script = Script::default();
        yes_script.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
        let good = HttpParticipant::start(yes_script).await;
        let id = transaction(
            &n,
            extra,
            vec![
                json!({"participant_id": "good", "endpoint": good.url}),
                json!({"participant_id": "bad", "endpoint": bad.url}),
                json!({"participant_id": "ledger", "plugin": "ledger"}),
            ],
        )
        .await;
        let done = n.tpc.execute(TENANT, &id).await.unwrap();
        assert_eq!(done.state, TpcState::Aborted, "{what}");
        assert_eq!(done.doc.decision, Some(Decision::Abort), "{what}");
        assert!(good.calls_to("commit").is_empty() && bad.calls_to("commit").is_empty(), "{what}: nobody commits");
        assert_eq!(good.calls_to("abort").len(), 1, "{what}: everyone is told abort");
        assert!(done.doc.participants.iter().all(|p| p.state == ParticipantState::Aborted), "{what}");
        assert!(done.doc.error.as_deref().unwrap().contains("bad"), "{what}: {:?}", done.doc.error);
        assert_eq!(done.document()["status"], "aborted");
    }
});

on_every_store!(a_trapping_or_refusing_plugin_participant_aborts_the_transaction, |url: String| async move {
    let n = with_plugins(&url).await;
    for (what, params) in [
        ("trap", json!({"script": {"prepare": {"do": "trap", "message": "ledger corrupted"}}})),
        ("spin", json!({"script": {"prepare": {"do": "spin"}}})),
        ("insufficient funds", json!({"amount": 5000})),
    ] {
        let plugin = if what == "insufficient funds" { "ledger" } else { "scripted" };
        let id = transaction(
            &n,
            json!({"prepare_timeout_ms": 500}),
            vec![
                json!({"participant_id": "ok", "plugin": "ledger"}),
                json!({"participant_id": "sick", "plugin": plugin, "parameters": params}),
            ],
        )
        .await;
        let done = n.tpc.execute(TENANT, &id).await.unwrap();
        assert_eq!(done.state, TpcState::Aborted, "{what}");
        let sick = &done.doc.participants[1];
        assert!(matches!(&sick.vote, Some(wasmtx::model::Vote::Abort(_))), "{what}");
    }
});

on_every_store!(commit_is_retried_until_acknowledged_with_retries_in_the_history, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
    script.0.insert(
        "commit".into(),
        vec![Answer::Status(500, json!({})), Answer::Status(500, json!({})), Answer::Status(200, json!({}))],
    );
    let flaky = HttpParticipant::start(script).await;
    let id = transaction(&n, json!({}), vec![
        json!({"participant_id": "flaky", "endpoint": flaky.url}),
        json!({"participant_id": "ledger", "plugin": "ledger"}),
    ]).await;
    let done = n.tpc.execute(TENANT, &id).await.unwrap();
    assert_eq!(done.state, TpcState::Committed);
    assert_eq!(done.doc.participants[0].attempts, 3);
    assert_eq!(done.doc.participants[1].attempts, 1, "an acknowledged participant is not asked again");
    let commits = flaky.calls_to("commit");
    assert_eq!(commits.iter().map(|c| c["attempt"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let history = n.tpc.history(TENANT, &id).await.unwrap();
    assert_eq!(history.iter().filter(|e| e.kind == "decision_retry").count(), 2);
});

on_every_store!(a_participant_that_never_acknowledges_is_visible_and_fails_after_the_budget, |url: String| async move {
    let n = with_plugins(&url).await;
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
    script.0.insert("commit".into(), vec![Answer::Status(503, json!({"e": "down"}))]);
    let dead = HttpParticipant::start(script).await;
    let id = transaction(&n, json!({"decision_max_attempts": 2}), vec![json!({"participant_id": "dead", "endpoint": dead.url})]).await;
    let done = n.tpc.execute(TENANT, &id).await.unwrap();
    assert_eq!(done.state, TpcState::Failed);
    assert_eq!(done.doc.decision, Some(Decision::Commit), "the decision stands");
    assert!(done.doc.error.as_deref().unwrap().contains("dead"));
    let history = n.tpc.history(TENANT, &id).await.unwrap();
    assert!(history.iter().any(|e| e.kind == "alert"));
    assert!(matches!(n.tpc.abort(TENANT, &id).await, Err(TpcError::DecidedCommit(_))));
});

on_every_store!(out_of_order_requests_are_refused_and_change_nothing, |url: String| async move {
    let n = with_plugins(&url).await;
    let id = transaction(&n, json!({}), vec![json!({"participant_id": "a", "plugin": "ledger"})]).await;
    let bad_participants = [
        json!({"participant_id": "a", "plugin": "ledger"}),
        json!({"participant_id": "x", "plugin": "inventory"}),
        json!({"participant_id": "x", "plugin": "nope"}),
        json!({"participant_id": "x", "plugin": "ledger", "endpoint": "http://x"}),
        json!({"participant_id": "x"}),
    ];
    for p in bad_participants {
        let r = n.tpc.add_participant(TENANT, &id, serde_json::from_value(p.clone()).unwrap()).await;
        assert!(r.is_err(), "{p}");
    }
    assert_eq!(n.tpc.get(TENANT, &id).await.unwrap().doc.participants.len(), 1);
    n.tpc.execute(TENANT, &id).await.unwrap();
    assert!(matches!(n.tpc.execute(TENANT, &id).await, Err(TpcError::WrongState { .. })));
    let late = serde_json::from_value(json!({"participant_id": "late", "plugin": "ledger"})).unwrap();
    assert!(matches!(n.tpc.add_participant(TENANT, &id, late).await, Err(TpcError::WrongState { .. })));
    assert!(matches!(n.tpc.abort(TENANT, &id).await, Err(TpcError::DecidedCommit(_))));
    assert!(matches!(n.tpc.get(TENANT, "tpc-nope").await, Err(TpcError::NotFound { .. })));
    assert_eq!(n.tpc.get(TENANT, &id).await.unwrap().state, TpcState::Committed);
    let empty = transaction(&n, json!({}), vec![]).await;
    assert!(matches!(n.tpc.execute(TENANT, &empty).await, Err(TpcError::Invalid(_))));
    let aborted = n.tpc.abort(TENANT, &empty).await.unwrap();
    assert_eq!(aborted.state, TpcState::Aborted);
});

async fn post(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = client().post(format!("{}{path}", server.url)).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn crash_transaction(server: &Server, endpoints: &[&HttpParticipant]) -> String {
    let r = client()
        .put(format!("{}/v1/plugins/ledger", server.url))
        .body(plugin_bytes(plugins::LEDGER))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, created) = post(server, "/v1/2pc", json!({"transaction_name": "crash", "context": {"amount": 1}})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["transaction_id"].as_str().unwrap().to_string();
    let (_, added) = post(server, &format!("/v1/2pc/{id}/participants"), json!({"participant_id": "ledger", "plugin": "ledger"})).await;
    assert_eq!(added["total_participants"], 1);
    for (i, p) in endpoints.iter().enumerate() {
        let (status, _) = post(server, &format!("/v1/2pc/{id}/participants"), json!({"participant_id": format!("http{i}"), "endpoint": p.url})).await;
        assert_eq!(status, StatusCode::OK);
    }
    id
}

fn end_state(d: &Value) -> bool {
    matches!(d["state"].as_str(), Some("committed" | "aborted" | "failed"))
}

on_every_durable_store!(a_server_killed_after_the_commit_decision_commits_everyone_after_restart, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
    script.0.insert("commit".into(), vec![Answer::Hang, Answer::Status(200, json!({}))]);
    let slow = HttpParticipant::start(script).await;
    let server = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let id = crash_transaction(&server, &[&slow]).await;
    let exec = tokio::spawn(client().post(format!("{}/v1/2pc/{id}/execute", server.url)).send());
    slow.until_hung().await; // the decision is durable: commit is being delivered
    server.kill().await;
    let _ = exec.await;

    let restarted = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let doc = wait_until(&format!("{}/v1/2pc/{id}", restarted.url), "the transaction to end", end_state).await;
    assert_eq!(doc["state"], "committed", "{doc}");
    assert_eq!(doc["decision"], "commit");
    assert!(doc["participants"].as_array().unwrap().iter().all(|p| p["state"] == "committed"), "{doc}");
    assert_eq!(slow.calls_to("prepare").len(), 1, "prepare is not asked again after the decision");
    assert_eq!(slow.calls_to("commit").len(), 2);
    assert!(slow.calls_to("abort").is_empty());
    restarted.kill().await;
});

on_every_durable_store!(a_server_killed_during_prepare_aborts_everyone_after_restart, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Hang]);
    let stuck = HttpParticipant::start(script).await;
    let mut yes = Script::default();
    yes.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
    let other = HttpParticipant::start(yes).await;
    let server = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let id = crash_transaction(&server, &[&stuck, &other]).await;
    let exec = tokio::spawn(client().post(format!("{}/v1/2pc/{id}/execute", server.url)).send());
    stuck.until_hung().await;
    server.kill().await;
    let _ = exec.await;

    let restarted = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let doc = wait_until(&format!("{}/v1/2pc/{id}", restarted.url), "the transaction to end", end_state).await;
    assert_eq!(doc["state"], "aborted", "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("presumed abort"));
    for p in [&stuck, &other] {
        assert_eq!(p.calls_to("abort").len(), 1, "every participant is told abort");
        assert!(p.calls_to("commit").is_empty());
    }
    let (status, again) = post(&restarted, &format!("/v1/2pc/{id}/recover"), json!({})).await;
    assert_eq!((status, again["state"].clone()), (StatusCode::OK, json!("aborted")), "recover of an ended transaction");
    let (status, err) = post(&restarted, "/v1/2pc/tpc-nope/execute", json!({})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    restarted.kill().await;
});
