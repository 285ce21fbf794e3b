//! Retention: ended transactions, their journals and idempotency replies go after the
//! retention period, in-flight ones never, a tenant may keep its own longer (or forever),
//! audit entries have their own period, and two coordinators sweeping at once purge each
//! row once. (On Redis keys expire by themselves: see the store tests.)

mod common;

use serde_json::json;
use wasmtx::retention::{RetentionPolicy, Swept, sweep};
use wasmtx::saga::CreateSaga;
use wasmtx::store::{IdempotentReply, KeyRow, TenantRow, now_ms};
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Answer, HttpParticipant, Node, Script, TENANT, node};

async fn saga(n: &Node, tenant: &str, name: &str, steps: serde_json::Value, run: bool) -> String {
    let req: CreateSaga = serde_json::from_value(json!({"saga_name": name, "context": {"amount": 5}, "steps": steps})).unwrap();
    let created = n.sagas.create(tenant, req).await.unwrap();
    if run {
        n.sagas.execute(tenant, created.id(), true).await.unwrap();
    }
    created.id().to_string()
}

fn policy(keep_ms: u64) -> RetentionPolicy {
    RetentionPolicy { transactions_ms: keep_ms, audit_ms: keep_ms, every: std::time::Duration::from_secs(3600) }
}

on_every_swept_store!(ended_transactions_go_after_the_retention_and_in_flight_ones_stay, |url: String| async move {
    let n = node(&url).await;
    for tenant in [TENANT, "keeper"] {
        n.catalog.publish(tenant, "payment", &plugin_bytes(plugins::PAYMENT)).await.unwrap();
        n.catalog.publish(tenant, "ledger", &plugin_bytes(plugins::LEDGER)).await.unwrap();
    }
    let keeper = TenantRow { tenant_id: "keeper".into(), limits: json!({"retention_ms": 0}), allowed_hosts: json!([]), created_at_ms: now_ms() };
    let key = KeyRow { key_id: "k1".into(), tenant_id: "keeper".into(), salt: "s".into(), hash: "h".into(), created_at_ms: now_ms() };
    assert!(n.store.create_tenant(&keeper, &key).await.unwrap());

    let pay = json!([{"name": "pay", "plugin": "payment"}]);
    let mut ended = Vec::new();
    for i in 0..3 {
        ended.push(saga(&n, TENANT, &format!("done-{i}"), pay.clone(), true).await);
    }
    let kept = saga(&n, "keeper", "kept", pay.clone(), true).await;
    let pending = saga(&n, TENANT, "pending", pay.clone(), false).await;
    let hanging = HttpParticipant::start(Script([("do_wait".to_string(), vec![Answer::Hang])].into())).await;
    let running = saga(&n, TENANT, "running", json!([{"name": "wait", "endpoint": hanging.url, "action": "do_wait"}]), false).await;
    n.sagas.execute(TENANT, &running, false).await.unwrap();
    hanging.until_hung().await;
    let tx: wasmtx::tpc::CreateTpc = serde_json::from_value(json!({"transaction_name": "t", "participants": [{"participant_id": "a", "plugin": "ledger"}]})).unwrap();
    let committed = n.tpc.create(TENANT, tx).await.unwrap();
    n.tpc.execute(TENANT, committed.id()).await.unwrap();
    ended.push(committed.id().to_string());
    let reply = IdempotentReply { request_hash: "h".into(), status: 201, body: json!({}) };
    n.store.remember_reply(TENANT, "old", &reply, now_ms() - 60_000).await.unwrap();
    n.store.audit(TENANT, "admin", "something", &json!({})).await.unwrap();

    // Sagas keep running while two coordinators sweep at once, with a retention that
    // everything ended so far has outlived.
    let cutoff_now = now_ms() + 5_000;
    let busy: Vec<_> = (0..4).map(|i| {
        let sagas = n.sagas.clone();
        tokio::spawn(async move {
            let req: CreateSaga = serde_json::from_value(json!({"saga_name": format!("busy-{i}"), "context": {"amount": 5}, "steps": [{"name": "pay", "plugin": "payment"}]})).unwrap();
            let s = sagas.create(TENANT, req).await.unwrap();
            sagas.execute(TENANT, s.id(), true).await.unwrap().state
        })
    }).collect();
    let short = policy(1_000);
    let (a, b) = tokio::join!(sweep(&n.store, &short, cutoff_now), sweep(&n.store, &short, cutoff_now));
    let (a, b) = (a.unwrap(), b.unwrap());
    for task in busy {
        assert_eq!(task.await.unwrap(), wasmtx::saga::SagaState::Completed, "the engines were not held up");
    }
    assert!(a.transactions + b.transactions >= ended.len() as u64, "{a:?} {b:?}");

    for id in &ended {
        assert!(n.store.get_tx(TENANT, if id.starts_with("saga") { "saga" } else { "2pc" }, id).await.unwrap().is_none(), "{id} purged");
        assert!(n.store.events(id).await.unwrap().is_empty(), "{id}'s journal purged");
    }
    assert!(n.sagas.get(TENANT, &pending).await.is_ok(), "a pending saga is not ended");
    assert_eq!(n.sagas.get(TENANT, &running).await.unwrap().state, wasmtx::saga::SagaState::Running, "in flight: never purged");
    assert!(n.sagas.get("keeper", &kept).await.is_ok(), "retention_ms 0 keeps it forever");
    assert!(n.store.idempotent_reply(TENANT, "old").await.unwrap().is_none());
    assert!(n.store.audit_log(TENANT, 10).await.unwrap().is_empty(), "audit has its own period, passed too");

    // Nothing left to purge: a second pass deletes nothing, and a long retention keeps all.
    let again = sweep(&n.store, &short, cutoff_now).await.unwrap();
    assert!(again.transactions <= 4, "only the busy sagas, if they ended before the cutoff: {again:?}");
    let long = policy(3_600_000);
    let kept_all = sweep(&n.store, &long, now_ms()).await.unwrap();
    assert_eq!(kept_all, Swept::default());
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sweeps_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), None, &["--retention-ms", "200", "--sweep-every-ms", "100"]).await;
    let http = common::client();
    let r = http.put(format!("{}/v1/plugins/payment", server.url)).body(plugin_bytes(plugins::PAYMENT)).send().await.unwrap();
    assert!(r.status().is_success());
    let body = json!({"saga_name": "o", "context": {"amount": 5}, "steps": [{"name": "pay", "plugin": "payment"}], "execute": true, "wait": true});
    let doc: serde_json::Value = http.post(format!("{}/v1/sagas", server.url)).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["state"], "completed");
    let url = format!("{}/v1/sagas/{}", server.url, doc["saga_id"].as_str().unwrap());
    // The sweeper's schedule is the server's own: poll until it has run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http.get(&url).send().await.unwrap().status() != reqwest::StatusCode::NOT_FOUND {
        assert!(std::time::Instant::now() < deadline, "the ended saga was not purged");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.kill().await;
}
