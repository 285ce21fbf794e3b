//! `wasmtx serve` as a child process on both stores: the HTTP contract, bad input, and
//! crashes — SIGKILL while a step is in flight, then restart, and two servers on one Postgres.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Answer, HttpParticipant, Script, Server, client, fresh_postgres, wait_until};

async fn push(server: &Server, name: &str, path: &str) -> Value {
    let r = client()
        .put(format!("{}/v1/plugins/{name}", server.url))
        .header("content-type", "application/wasm")
        .body(plugin_bytes(path))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn post(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = client().post(format!("{}{path}", server.url)).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let r = client().get(format!("{}{path}", server.url)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn raw(server: &Server, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = client()
        .request(method.parse().unwrap(), format!("{}{path}", server.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

on_every_store!(the_http_api_runs_a_saga_end_to_end, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let server = Server::start(dir.path(), db, &[]).await;
    let (status, health) = get(&server, "/healthz").await;
    assert_eq!((status, health["status"].clone()), (StatusCode::OK, json!("ok")));

    let pushed = push(&server, "payment", plugins::PAYMENT).await;
    assert_eq!(pushed["version"], 1);
    assert_eq!(pushed["exports"], json!(["step", "participant"]));
    let again = client()
        .put(format!("{}/v1/plugins/payment", server.url))
        .body(plugin_bytes(plugins::PAYMENT))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK, "same bytes → the existing version");
    push(&server, "inventory", plugins::INVENTORY).await;
    let (_, list) = get(&server, "/v1/plugins").await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 2);
    let (_, versions) = get(&server, "/v1/plugins/payment").await;
    assert_eq!(versions["versions"][0]["version"], 1);

    let (status, created) = post(&server, "/v1/sagas", json!({"saga_name": "order", "context": {"amount": 5}})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["state"], "pending");
    let id = created["saga_id"].as_str().unwrap().to_string();
    let (status, added) = post(&server, &format!("/v1/sagas/{id}/steps"), json!({"name": "charge", "plugin": "payment"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((added["step_index"].clone(), added["total_steps"].clone()), (json!(0), json!(1)));
    post(&server, &format!("/v1/sagas/{id}/steps"), json!({"name": "reserve", "plugin": "inventory@1"})).await;

    let (status, doc) = post(&server, &format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["state"], "completed");
    assert_eq!(doc["status"], "success");
    assert_eq!(doc["steps"][0]["plugin_version"], "payment@1");
    assert_eq!(doc["steps"][1]["attempts"], 1);

    let (status, _) = post(&server, &format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "execute twice");
    let (_, history) = get(&server, &format!("/v1/sagas/{id}/history")).await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["kind"], "saga_completed");
    assert!(events.windows(2).all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    let (_, listed) = get(&server, "/v1/sagas?state=completed&limit=10").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1);

    // /metrics counts the durable events (asynchronously) and the participant calls.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = client().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
        if text.contains("wasmtx_transaction_events_total{kind=\"saga_completed\"} 1") {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "saga_completed never counted:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(text.contains("wasmtx_participant_calls_total{phase=\"execute\",outcome=\"success\"} 2"), "{text}");
    assert!(text.contains("wasmtx_phase_duration_seconds_count{phase=\"execute\"} 2"), "{text}");
    assert!(text.contains("wasmtx_transaction_ends_total{kind=\"saga\",outcome=\"completed\"} 1"), "{text}");
    assert!(text.contains("wasmtx_http_requests_total{method=\"GET\",route=\"/v1/sagas/{id}/history\",status=\"200\"} 1"), "routes by pattern, not by id: {text}");
    assert!(text.contains("wasmtx_transaction_duration_seconds_count{kind=\"saga\",outcome=\"completed\"} 1"), "{text}");
    assert!(text.contains("wasmtx_plugin_instances 0"), "no call runs now: {text}");
    assert!(!text.contains("saga-0"), "no ids in labels");
    assert!(!text.contains("default"), "no tenant in labels");
    server.kill().await;
});

on_every_store!(metrics_count_what_needs_attention_and_the_plugin_instances_running, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &["--sweep-every-ms", "50"]).await;
    push(&server, "scripted", plugins::SCRIPTED).await;
    let metric = |text: &str, series: &str| -> Option<i64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    };
    let scrape = || async { client().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap() };
    // A saga whose first step's compensation keeps failing ends failed: an operator must act.
    let steps = json!([
        {"name": "a", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"compensate": {"do": "fail", "reason": "ledger closed"}}}},
        {"name": "b", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "fail", "reason": "no"}}}},
    ]);
    let (_, doc) = post(&server, "/v1/sagas", json!({"saga_name": "stuck", "steps": steps, "execute": true, "wait": true})).await;
    assert_eq!(doc["state"], "failed", "{doc}");
    let attention = "wasmtx_transactions_needing_attention{kind=\"saga\"}";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = scrape().await;
        if metric(&text, attention) == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failed saga is never counted:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A plugin call in progress is an instance running.
    let sleeping = json!([{"name": "nap", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "sleep", "ms": 60_000}}}}]);
    let (_, created) = post(&server, "/v1/sagas", json!({"saga_name": "nap", "steps": sleeping, "execute": true})).await;
    assert_eq!(created["state"], "running", "{created}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = scrape().await;
        if metric(&text, "wasmtx_plugin_instances") == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the running call is never counted:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.kill().await;
});

on_every_store!(idempotency_keys_never_create_two_sagas, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    let create = |body: Value| {
        client().post(format!("{}/v1/sagas", server.url)).header("Idempotency-Key", "order-77").json(&body).send()
    };
    let first: Value = create(json!({"saga_name": "a"})).await.unwrap().json().await.unwrap();
    let second = create(json!({"saga_name": "a"})).await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.json::<Value>().await.unwrap()["saga_id"], first["saga_id"]);
    let reused = create(json!({"saga_name": "b"})).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (_, listed) = get(&server, "/v1/sagas").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1);
    server.kill().await;
});

on_every_durable_store!(an_idempotent_create_whose_answer_was_never_remembered_is_not_created_twice, |url: String| async move {
    // A coordinator that dies after committing the saga but before remembering its answer
    // leaves exactly this behind: the saga, and no idempotency record. (Found by
    // `wasmtx bench fleet`, which SIGKILLs a coordinator under load.)
    let dir = tempfile::tempdir().unwrap();
    let db = match url.starts_with("sqlite") {
        false => url.clone(),
        true => format!("sqlite://{}", dir.path().join("wasmtx.db").display()),
    };
    let server = Server::start(dir.path(), Some(db.as_str()), &[]).await;
    let create = || {
        client().post(format!("{}/v1/sagas", server.url)).header("Idempotency-Key", "order-78").json(&json!({"saga_name": "a"})).send()
    };
    let first: Value = create().await.unwrap().json().await.unwrap();
    let store = wasmtx::store::Store::open(&db).await.unwrap();
    assert_eq!(store.purge_replies("default", i64::MAX, 100).await.unwrap(), 1, "the create's answer is forgotten");

    let retried = create().await.unwrap();
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(retried.json::<Value>().await.unwrap()["saga_id"], first["saga_id"], "the retry finds the first saga");
    let (_, listed) = get(&server, "/v1/sagas").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1);
    // Another key creates another saga.
    let other = client().post(format!("{}/v1/sagas", server.url)).header("Idempotency-Key", "order-79").json(&json!({"saga_name": "a"})).send().await.unwrap();
    assert_ne!(other.json::<Value>().await.unwrap()["saga_id"], first["saga_id"]);
    server.kill().await;
});

on_every_store!(bad_input_gets_a_4xx_and_changes_nothing, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    push(&server, "payment", plugins::PAYMENT).await;
    let (_, created) = post(&server, "/v1/sagas", json!({"saga_name": "s"})).await;
    let id = created["saga_id"].as_str().unwrap().to_string();
    let (_, before) = get(&server, &format!("/v1/sagas/{id}/history")).await;
    let steps = format!("/v1/sagas/{id}/steps");
    let execute = format!("/v1/sagas/{id}/execute");
    let resume = format!("/v1/sagas/{id}/resume");
    let huge = vec![b' '; 2 << 20];
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/sagas", b"{not json".to_vec(), 400, "malformed_json"),
        ("POST", "/v1/sagas", b"{}".to_vec(), 422, "invalid_request"),
        ("POST", "/v1/sagas", br#"{"saga_name": 42}"#.to_vec(), 422, "invalid_request"),
        ("POST", "/v1/sagas", br#"{"saga_name": ""}"#.to_vec(), 422, "invalid_request"),
        ("POST", "/v1/sagas", br#"{"saga_name": "x", "retry_policy": {"max_attempts": 0}}"#.to_vec(), 422, "invalid_request"),
        ("POST", "/v1/sagas", huge.clone(), 413, "body_too_large"),
        ("POST", &steps, b"[".to_vec(), 400, "malformed_json"),
        ("POST", &steps, br#"{"name": "x"}"#.to_vec(), 422, "invalid_request"),
        ("POST", &steps, br#"{"name": "x", "plugin": "payment", "endpoint": "http://a"}"#.to_vec(), 422, "invalid_request"),
        ("POST", &steps, br#"{"name": "x", "plugin": "nope"}"#.to_vec(), 422, "unknown_plugin"),
        ("POST", &steps, br#"{"name": "x", "plugin": "payment@9"}"#.to_vec(), 422, "unknown_plugin"),
        ("POST", &steps, br#"{"name": "x", "plugin": "payment", "timeout_ms": "soon"}"#.to_vec(), 422, "invalid_request"),
        ("POST", &steps, br#"{"name": "x", "endpoint": "file:///etc/passwd"}"#.to_vec(), 422, "invalid_request"),
        ("POST", &steps, huge, 413, "body_too_large"),
        ("POST", "/v1/sagas/saga-nope/steps", br#"{"name": "x", "plugin": "payment"}"#.to_vec(), 404, "not_found"),
        ("POST", "/v1/sagas/saga-nope/execute", vec![], 404, "not_found"),
        ("GET", "/v1/sagas/saga-nope", vec![], 404, "not_found"),
        ("GET", "/v1/sagas/saga-nope/history", vec![], 404, "not_found"),
        ("POST", &execute, br#"{"wait": "yes"}"#.to_vec(), 422, "invalid_request"),
        ("POST", &resume, vec![], 409, "wrong_state"),
        ("GET", "/v1/sagas?state=bogus", vec![], 400, "invalid_query"),
        ("GET", "/v1/sagas?limit=0", vec![], 400, "invalid_query"),
        ("PUT", "/v1/plugins/junk", b"definitely not wasm".to_vec(), 422, "invalid_component"),
        ("PUT", "/v1/plugins/Bad%20Name", plugin_bytes(plugins::PAYMENT), 400, "invalid_plugin_name"),
        ("GET", "/v1/plugins/nope", vec![], 404, "not_found"),
        ("GET", "/v1/nothing-here", vec![], 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, err) = raw(&server, method, path, body).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], code, "{method} {path}: {err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, after) = get(&server, &format!("/v1/sagas/{id}/history")).await;
    assert_eq!(before, after, "nothing was recorded for the saga");
    let (_, doc) = get(&server, &format!("/v1/sagas/{id}")).await;
    assert_eq!((doc["state"].clone(), doc["steps"].clone()), (json!("pending"), json!([])));
    let (_, list) = get(&server, "/v1/plugins").await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 1, "no plugin was stored");
    let (_, sagas) = get(&server, "/v1/sagas").await;
    assert_eq!(sagas["sagas"].as_array().unwrap().len(), 1, "no saga was created");
    server.kill().await;
});

/// Creates the crash scenario's saga: an HTTP step that records its calls, one that hangs on
/// its first call (so the server can be killed while it is in flight), then a plugin step.
async fn crash_saga(server: &Server, http: &HttpParticipant) -> String {
    push(server, "payment", plugins::PAYMENT).await;
    let (_, created) = post(server, "/v1/sagas", json!({"saga_name": "crash", "context": {"amount": 1}})).await;
    let id = created["saga_id"].as_str().unwrap().to_string();
    for step in [
        json!({"name": "first", "endpoint": http.url, "action": "first"}),
        json!({"name": "second", "endpoint": http.url, "action": "second", "timeout_ms": 600000}),
        json!({"name": "third", "plugin": "payment"}),
    ] {
        let (status, body) = post(server, &format!("/v1/sagas/{id}/steps"), step).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    id
}

/// Starts a server again on `dir` (and `db`) with a short lease and waits until saga `id`
/// reaches an end state; returns the server and the saga's document.
async fn restart_until_saga_ends(dir: &std::path::Path, db: Option<&str>, id: &str) -> (Server, Value) {
    let restarted = Server::start(dir, db, &["--lease-ms", "1000"]).await;
    let doc = wait_until(&format!("{}/v1/sagas/{id}", restarted.url), "the saga to finish", |d| {
        d["state"] == "completed" || d["state"] == "compensated" || d["state"] == "failed"
    })
    .await;
    (restarted, doc)
}

fn hang_then_answer() -> Script {
    let mut script = Script::default();
    script.0.insert("second".into(), vec![Answer::Hang, Answer::Status(200, json!({"second": "done"}))]);
    script
}

on_every_durable_store!(a_server_killed_mid_step_finishes_the_saga_after_restart_without_rerunning_completed_steps, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let http = HttpParticipant::start(hang_then_answer()).await;
    let server = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let id = crash_saga(&server, &http).await;
    let (status, _) = post(&server, &format!("/v1/sagas/{id}/execute"), json!({"wait": false})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    http.until_hung().await;
    server.kill().await;

    let (restarted, doc) = restart_until_saga_ends(dir.path(), db, &id).await;
    assert_eq!(doc["state"], "completed", "{doc}");
    assert_eq!(http.calls_to("first").len(), 1, "a completed step is never re-run");
    let second = http.calls_to("second");
    assert_eq!(second.len(), 2, "the in-flight step is re-invoked once after the crash");
    assert_eq!(second[0]["idempotency_key"], second[1]["idempotency_key"]);
    assert_eq!((second[0]["attempt"].clone(), second[1]["attempt"].clone()), (json!(1), json!(2)));
    assert_eq!(doc["steps"][1]["attempts"], 2);
    assert_eq!(doc["steps"][2]["attempts"], 1);
    restarted.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_drive_each_saga_exactly_once_and_take_over_a_dead_one() {
    let db = fresh_postgres().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let http = HttpParticipant::start(hang_then_answer()).await;
    let a = Server::start(dir_a.path(), Some(&db), &["--lease-ms", "1000"]).await;
    let b = Server::start(dir_b.path(), Some(&db), &["--lease-ms", "1000"]).await;

    // Ten plain sagas, half executed through each server, all at once.
    push(&a, "scripted", plugins::SCRIPTED).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let server = if i % 2 == 0 { &a } else { &b };
        let (_, created) = post(server, "/v1/sagas", json!({"saga_name": format!("s{i}")})).await;
        let id = created["saga_id"].as_str().unwrap().to_string();
        post(server, &format!("/v1/sagas/{id}/steps"), json!({"name": "count", "endpoint": http.url, "action": "count"})).await;
        post(server, &format!("/v1/sagas/{id}/steps"), json!({"name": "plug", "plugin": "scripted"})).await;
        ids.push((server.url.clone(), id));
    }
    let runs: Vec<_> = ids
        .iter()
        .map(|(url, id)| tokio::spawn(client().post(format!("{url}/v1/sagas/{id}/execute")).json(&json!({})).send()))
        .collect();
    for run in runs {
        let doc: Value = run.await.unwrap().unwrap().json().await.unwrap();
        assert_eq!(doc["state"], "completed", "{doc}");
    }
    let counted = http.calls_to("count");
    assert_eq!(counted.len(), 10, "each saga's step ran exactly once across both servers");

    // A dies with a step in flight; B takes the saga over once A's lease expires.
    let id = crash_saga(&a, &http).await;
    let (status, _) = post(&a, &format!("/v1/sagas/{id}/execute"), json!({"wait": false})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    http.until_hung().await;
    a.kill().await;
    let doc = wait_until(&format!("{}/v1/sagas/{id}", b.url), "B to finish A's saga", |d| d["state"] == "completed").await;
    assert_eq!(doc["steps"][1]["attempts"], 2);
    assert_eq!(http.calls_to("first").len(), 1);
    let (_, history) = get(&b, &format!("/v1/sagas/{id}/history")).await;
    assert!(
        history["events"].as_array().unwrap().iter().any(|e| e["kind"] == "saga_recovered"),
        "B recorded the takeover: {history}"
    );
    b.kill().await;
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_talk_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let wasmtx = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmtx"))
            .args(args)
            .args(["--server", &server.url])
            .env_remove("WASMTX_API_KEY")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, pushed, err) = wasmtx(&["plugin", "push", "payment", plugins::PAYMENT]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&pushed).unwrap()["version"], 1);
    let (ok, listed, _) = wasmtx(&["plugin", "list"]);
    assert!(ok && listed.contains("\"payment\""), "{listed}");

    let (_, created) = post(&server, "/v1/sagas", json!({"saga_name": "cli", "context": {"amount": 5}})).await;
    let id = created["saga_id"].as_str().unwrap().to_string();
    post(&server, &format!("/v1/sagas/{id}/steps"), json!({"name": "charge", "plugin": "payment"})).await;
    post(&server, &format!("/v1/sagas/{id}/execute"), json!({})).await;
    let (ok, status, _) = wasmtx(&["status", &id]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&status).unwrap()["state"], "completed");
    let (ok, _, err) = wasmtx(&["recover", &id]);
    assert!(!ok && err.contains("409"), "a completed saga cannot be resumed: {err}");
    let (ok, _, err) = wasmtx(&["status", "nonsense"]);
    assert!(!ok && err.contains("is not a transaction id"), "{err}");
    let (ok, _, err) = wasmtx(&["status", "saga-00000000-0000-0000-0000-000000000000"]);
    assert!(!ok && err.contains("404"), "{err}");
    server.kill().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmtx")).args(["status", &id, "--server", "http://127.0.0.1:9"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer from http://127.0.0.1:9"));
}

on_every_store!(a_saga_can_be_created_with_its_steps_in_one_request, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    push(&server, "payment", plugins::PAYMENT).await;
    push(&server, "shipping", plugins::SHIPPING).await;
    let body = json!({"saga_name": "order", "context": {"amount": 5}, "steps": [
        {"name": "charge", "plugin": "payment"}, {"name": "ship", "plugin": "shipping"}]});
    let (status, created) = post(&server, "/v1/sagas", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["saga_id"].as_str().unwrap().to_string();
    let (_, history) = get(&server, &format!("/v1/sagas/{id}/history")).await;
    let kinds: Vec<&str> = history["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["saga_created", "step_added", "step_added"]);
    let (_, done) = post(&server, &format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(done["state"], "completed", "{done}");
    let names: Vec<&str> = done["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["charge", "ship"]);

    // The same checks as adding steps one by one; a refused create stores nothing.
    for (steps, code) in [
        (json!([{"name": "a", "plugin": "nope"}]), "unknown_plugin"),
        (json!([{"name": "a", "plugin": "payment"}, {"name": "a", "plugin": "payment"}]), "invalid_request"),
        (json!([{"name": "a"}]), "invalid_request"),
        (json!("charge"), "invalid_request"),
    ] {
        let (status, err) = post(&server, "/v1/sagas", json!({"saga_name": "bad", "steps": steps})).await;
        assert!(status.is_client_error(), "{steps}: {status} {err}");
        assert_eq!(err["error"]["code"], code, "{steps}: {err}");
    }
    let (_, listed) = get(&server, "/v1/sagas").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1);
    server.kill().await;
});

on_every_durable_store!(a_saga_created_with_execute_starts_in_the_create_write_and_survives_a_kill, |url: String| async move {
    // `execute: true` on the create: the create's one write also starts the saga and its
    // first step, so a coordinator killed during that step leaves a record that explains it.
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let mut script = Script::default();
    script.0.insert("first".into(), vec![Answer::Hang, Answer::Status(200, json!({"first": "done"}))]);
    let http = HttpParticipant::start(script).await;
    let server = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    push(&server, "payment", plugins::PAYMENT).await;
    let body = json!({"saga_name": "at-once", "context": {"amount": 3}, "execute": true, "steps": [
        {"name": "first", "endpoint": http.url, "action": "first", "timeout_ms": 600000},
        {"name": "charge", "plugin": "payment"}]});
    let (status, created) = post(&server, "/v1/sagas", body).await;
    assert_eq!((status, created["state"].as_str()), (StatusCode::CREATED, Some("running")), "{created}");
    let id = created["saga_id"].as_str().unwrap().to_string();
    http.until_hung().await;
    let (_, history) = get(&server, &format!("/v1/sagas/{id}/history")).await;
    let events = history["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["saga_created", "step_added", "step_added", "saga_started", "step_started"], "{history}");
    assert!(events.iter().all(|e| e["at"] == events[0]["at"]), "one write: {history}");
    server.kill().await;

    let (restarted, doc) = restart_until_saga_ends(dir.path(), db, &id).await;
    assert_eq!(doc["state"], "completed", "{doc}");
    let first = http.calls_to("first");
    assert_eq!(first.len(), 2, "the step in flight at the kill is invoked again");
    assert_eq!(first[0]["idempotency_key"], first[1]["idempotency_key"]);
    restarted.kill().await;
});

on_every_store!(a_two_phase_commit_can_be_created_with_its_participants_in_one_request, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    push(&server, "ledger", plugins::LEDGER).await;
    push(&server, "shipping", plugins::SHIPPING).await;
    let body = json!({"transaction_name": "transfer", "context": {"amount": 5}, "participants": [
        {"participant_id": "debit", "plugin": "ledger"}, {"participant_id": "credit", "plugin": "ledger"}]});
    let (status, created) = post(&server, "/v1/2pc", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["transaction_id"].as_str().unwrap().to_string();
    let (_, done) = post(&server, &format!("/v1/2pc/{id}/execute"), json!({})).await;
    assert_eq!(done["state"], "committed", "{done}");
    assert_eq!(done["participants"].as_array().unwrap().len(), 2);

    for (participants, code) in [
        (json!([{"participant_id": "a", "plugin": "shipping"}]), "invalid_request"),
        (json!([{"participant_id": "a", "plugin": "ledger"}, {"participant_id": "a", "plugin": "ledger"}]), "invalid_request"),
        (json!([{"participant_id": "a", "plugin": "nope"}]), "unknown_plugin"),
    ] {
        let (status, err) = post(&server, "/v1/2pc", json!({"transaction_name": "bad", "participants": participants})).await;
        assert!(status.is_client_error(), "{participants}: {status} {err}");
        assert_eq!(err["error"]["code"], code, "{participants}: {err}");
    }
    server.kill().await;
});

on_every_durable_store!(a_server_killed_with_three_branches_in_flight_finishes_them_after_restart, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let mut script = Script::default();
    for b in ["b", "c", "d"] {
        script.0.insert(format!("do_{b}"), vec![Answer::Hang, Answer::Status(200, json!({"branch": b}))]);
    }
    let http = HttpParticipant::start(script).await;
    let server = Server::start(dir.path(), db, &["--lease-ms", "1000"]).await;
    let step = |name: &str, deps: &[&str]| json!({"name": name, "endpoint": http.url, "action": format!("do_{name}"), "depends_on": deps});
    let steps = json!([step("a", &[]), step("b", &["a"]), step("c", &["a"]), step("d", &["a"]), step("e", &["b", "c", "d"])]);
    let (status, created) = post(&server, "/v1/sagas", json!({"saga_name": "branches", "steps": steps, "execute": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["saga_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while ["do_b", "do_c", "do_d"].iter().any(|p| http.calls_to(p).is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "the three branches never all started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.kill().await;

    let (restarted, doc) = restart_until_saga_ends(dir.path(), db, &id).await;
    assert_eq!(doc["state"], "completed", "{doc}");
    assert_eq!(http.calls_to("do_a").len(), 1, "the completed step is never re-run");
    for b in ["do_b", "do_c", "do_d"] {
        let calls = http.calls_to(b);
        assert_eq!(calls.len(), 2, "{b}: in flight at the kill, invoked once more");
        assert_eq!(calls[0]["idempotency_key"], calls[1]["idempotency_key"], "{b}");
    }
    assert_eq!(http.calls_to("do_e").len(), 1);
    // Refused through the API too, naming what is wrong.
    let (status, err) = post(&restarted, "/v1/sagas", json!({"saga_name": "bad", "steps": [step("x", &["y"])]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"]["message"].as_str().unwrap().contains("\"y\""), "{err}");
    restarted.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_sent_sigterm_finishes_its_calls_and_hands_its_sagas_to_another_at_once() {
    let db = fresh_postgres().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut script = Script::default();
    script.0.insert("slow".into(), vec![Answer::Late(1500, 200, json!({"slow": "done"}))]);
    let http = HttpParticipant::start(script).await;
    // Leases of ten minutes: only a hand-back lets the other coordinator in within the test.
    let mut a = Server::start(dir_a.path(), Some(&db), &["--lease-ms", "600000", "--shutdown-grace-ms", "5000"]).await;
    let b = Server::start(dir_b.path(), Some(&db), &["--lease-ms", "600000"]).await;
    let steps = json!([{"name": "slow", "endpoint": http.url, "action": "slow"}, {"name": "after", "endpoint": http.url, "action": "after"}]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, created) = post(&a, "/v1/sagas", json!({"saga_name": "term", "steps": steps, "execute": true})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["saga_id"].as_str().unwrap().to_string());
    }
    // And a managed transaction run as a saga: its record is handed back too.
    let (_, managed) = post(&a, "/v1/transactions", json!({"transaction_name": "term"})).await;
    let managed_id = managed["transaction_id"].as_str().unwrap().to_string();
    // Two participants, so its delegate saga still has a step to run when the slow one is
    // answered during the drain (with one, it could end — and the record settle — here).
    for (participant, action) in [("slow", "slow"), ("after", "after")] {
        post(&a, &format!("/v1/transactions/{managed_id}/participants"), json!({"participant_id": participant, "endpoint": http.url, "action": action})).await;
    }
    let execute = tokio::spawn(client().post(format!("{}/v1/transactions/{managed_id}/execute", a.url)).json(&json!({"pattern": "saga"})).send());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while http.calls_to("slow").len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "the slow steps never all started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = a.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = a.child.wait().await.unwrap();
    assert!(exited.success(), "a SIGTERM ends the coordinator with status 0: {exited}");
    for id in &ids {
        let doc = wait_until(&format!("{}/v1/sagas/{id}", b.url), "the saga to finish", |d| d["state"] == "completed").await;
        assert_eq!(doc["steps"][0]["attempts"], 1, "the call in flight at the SIGTERM was answered and recorded");
        let (_, history) = get(&b, &format!("/v1/sagas/{id}/history")).await;
        let kinds: Vec<&str> = history["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        let released = kinds.iter().position(|k| *k == "saga_released").expect("handed back");
        let recovered = kinds.iter().position(|k| *k == "saga_recovered").expect("taken over");
        let completed = kinds.iter().position(|k| *k == "step_completed").unwrap();
        assert!(completed < released && released < recovered, "{kinds:?}");
    }
    let doc = wait_until(&format!("{}/v1/transactions/{managed_id}", b.url), "the managed transaction to finish", |d| d["transaction_status"] == "committed").await;
    assert_eq!(doc["selected_pattern"], "saga");
    let (_, history) = get(&b, &format!("/v1/transactions/{managed_id}/history")).await;
    assert!(history["events"].as_array().unwrap().iter().any(|e| e["kind"] == "transaction_released"), "{history}");
    let _ = execute.await;
    assert_eq!(http.calls_to("slow").len(), 6, "no completed step ran again");
    assert_eq!(http.calls_to("after").len(), 6);
    b.kill().await;
}

on_every_store!(a_saga_can_be_created_started_and_awaited_in_one_request, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    push(&server, "payment", plugins::PAYMENT).await;
    let steps = json!([{"name": "charge", "plugin": "payment"}, {"name": "again", "plugin": "payment"}]);
    let (status, doc) = post(&server, "/v1/sagas", json!({"saga_name": "one", "context": {"amount": 3}, "steps": steps, "execute": true, "wait": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    assert_eq!((doc["state"].clone(), doc["status"].clone()), (json!("completed"), json!("success")), "{doc}");
    assert_eq!(doc["steps"][1]["state"], "completed");
    let (status, err) = post(&server, "/v1/sagas", json!({"saga_name": "no", "wait": true})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    server.kill().await;
});

on_every_store!(two_phase_commits_can_be_listed_by_state_and_documents_carry_their_times, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    push(&server, "ledger", plugins::LEDGER).await;
    let participants = json!([{"participant_id": "bank", "plugin": "ledger"}]);
    let (_, a) = post(&server, "/v1/2pc", json!({"transaction_name": "a", "context": {"amount": 5}, "participants": participants})).await;
    let (_, b) = post(&server, "/v1/2pc", json!({"transaction_name": "b", "context": {"amount": 5}, "participants": participants})).await;
    let a = a["transaction_id"].as_str().unwrap();
    let (_, done) = post(&server, &format!("/v1/2pc/{a}/execute"), json!({})).await;
    assert_eq!(done["state"], "committed", "{done}");
    assert!(done["started_at"].is_string() && done["ended_at"].is_string() && done["duration_ms"].as_i64().unwrap() >= 0, "{done}");
    let (status, all) = get(&server, "/v1/2pc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["transactions"].as_array().unwrap().len(), 2);
    let (_, committed) = get(&server, "/v1/2pc?state=committed").await;
    let ids: Vec<&str> = committed["transactions"].as_array().unwrap().iter().map(|t| t["transaction_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [a]);
    let (_, init) = get(&server, "/v1/2pc?state=init&limit=1").await;
    assert_eq!(init["transactions"][0]["transaction_id"], b["transaction_id"]);
    assert!(init["transactions"][0].get("started_at").is_none(), "not started yet");
    let (status, err) = get(&server, "/v1/2pc?state=bogus").await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_query")));
    let (_, saga) = post(&server, "/v1/sagas", json!({"saga_name": "s", "execute": true, "wait": true})).await;
    assert!(saga["started_at"].is_string() && saga["ended_at"].is_string() && saga["duration_ms"].is_i64(), "{saga}");
    server.kill().await;
});

/// The API's routes as API.md names them (method, path), and those added since.
const CONTRACT: &[(&str, &str)] = &[
    ("put", "/v1/plugins/{name}"), ("get", "/v1/plugins"), ("get", "/v1/plugins/{name}"),
    ("post", "/v1/sagas"), ("post", "/v1/sagas/{id}/steps"), ("post", "/v1/sagas/{id}/execute"), ("get", "/v1/sagas/{id}"),
    ("post", "/v1/sagas/{id}/resume"), ("post", "/v1/sagas/{id}/cancel"), ("get", "/v1/sagas/{id}/history"), ("get", "/v1/sagas"),
    ("post", "/v1/2pc"), ("get", "/v1/2pc"), ("post", "/v1/2pc/{id}/participants"), ("post", "/v1/2pc/{id}/execute"),
    ("post", "/v1/2pc/{id}/abort"), ("post", "/v1/2pc/{id}/recover"), ("get", "/v1/2pc/{id}"), ("get", "/v1/2pc/{id}/history"),
    ("post", "/v1/transactions"), ("post", "/v1/transactions/{id}/participants"), ("post", "/v1/transactions/{id}/execute"),
    ("get", "/v1/transactions/{id}"), ("post", "/v1/transactions/{id}/abort"), ("post", "/v1/transactions/{id}/recover"),
    ("get", "/v1/transactions"), ("get", "/v1/transactions/{id}/history"),
    ("post", "/v1/admin/tenants"), ("post", "/v1/admin/tenants/{id}/keys"), ("delete", "/v1/admin/tenants/{id}/keys/{key_id}"),
    ("put", "/v1/settings/default-policy"), ("put", "/v1/settings/alerts"), ("get", "/v1/settings/alerts"), ("get", "/v1/audit"), ("get", "/v1/search"), ("post", "/v1/bulk/{action}"), ("get", "/healthz"), ("get", "/metrics"), ("get", "/v1/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_routes_the_server_has() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let (status, doc) = get(&server, "/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let methods = ["get", "post", "put", "delete", "patch"];
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in methods.iter().filter(|m| item.get(**m).is_some()) {
            documented.insert((method.to_string(), path.clone()));
            let op = &item[*method];
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            let errors_described = op["responses"].as_object().unwrap().keys().any(|code| code.starts_with('4') || code.starts_with('5'));
            assert!(errors_described || path == "/v1/openapi.json", "{method} {path} names no error answers");
        }
    }
    let contract: std::collections::BTreeSet<(String, String)> = CONTRACT.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, contract, "the document and the API's routes differ");

    // Every documented operation is served, and no other method is, on any documented path.
    let http = client();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{action}", "resume").replace("{name}", "payment").replace("{id}", "x-1").replace("{key_id}", "k-1");
        for method in methods {
            let answer = http.request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", server.url)).send().await.unwrap();
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            match item.get(method) {
                Some(_) => assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such endpoint"),
                    "{method} {path} is documented but not served: {status} {body}"
                ),
                None => assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented: {body}"),
            }
        }
    }

    // Every schema the operations refer to is in the document.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "{name} is referred to but not described");
    }
    for name in ["CreateSaga", "StepSpec", "CreateTpc", "ParticipantSpec", "CreateManaged", "ManagedParticipant", "SagaDocument", "ErrorBody"] {
        assert!(schemas.contains_key(name), "{name}");
    }
    assert!(schemas["StepSpec"]["properties"].get("compensation_plugin").is_some(), "request schemas are the engines' own types");
    server.kill().await;
}

/// A saga of the scripted plugin whose first step completes and, when `undo_fails`, cannot
/// be undone; its second step fails (so it ends compensated, or failed).
fn doomed_saga(name: &str, undo_fails: bool) -> Value {
    let undo = if undo_fails { json!({"do": "fail", "reason": "refund refused"}) } else { json!({}) };
    json!({"saga_name": name, "execute": true, "wait": true, "steps": [
        {"name": "charge", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"compensate": undo}}},
        {"name": "ship", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "fail", "reason": "no truck"}}}},
    ]})
}

on_every_store!(search_finds_every_kind_by_filters_pages_stably_and_flags_what_needs_attention, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    push(&server, "scripted", plugins::SCRIPTED).await;
    push(&server, "ledger", plugins::LEDGER).await;
    let (_, failed) = post(&server, "/v1/sagas", doomed_saga("refund", true)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let (_, compensated) = post(&server, "/v1/sagas", doomed_saga("order", false)).await;
    assert_eq!(compensated["state"], "compensated");
    let (_, tpc) = post(&server, "/v1/2pc", json!({"transaction_name": "transfer", "participants": [{"participant_id": "a", "plugin": "ledger"}]})).await;
    let (_, managed) = post(&server, "/v1/transactions", json!({"transaction_name": "order"})).await;

    let search = |query: &str| {
        let url = format!("{}/v1/search?{query}", server.url);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|d| d["saga_id"].as_str().or(d["transaction_id"].as_str()).unwrap().to_string()).collect()
    };
    let (status, all) = search("").await;
    assert_eq!(status, StatusCode::OK);
    let newest_first = vec![managed["transaction_id"].as_str().unwrap(), tpc["transaction_id"].as_str().unwrap(), compensated["saga_id"].as_str().unwrap(), failed["saga_id"].as_str().unwrap()];
    assert_eq!(ids(&all), newest_first, "every kind, newest first");
    assert!(all.get("next_cursor").is_none(), "one page: no cursor");
    assert_eq!(all["items"][1]["kind"], "2pc");

    let (_, sagas) = search("kind=saga&state=failed").await;
    assert_eq!(ids(&sagas), vec![failed["saga_id"].as_str().unwrap()]);
    let (_, named) = search("name=order").await;
    assert_eq!(ids(&named), vec![managed["transaction_id"].as_str().unwrap(), compensated["saga_id"].as_str().unwrap()], "a name across kinds");
    let (_, attention) = search("needs_attention=true").await;
    assert_eq!(ids(&attention), vec![failed["saga_id"].as_str().unwrap()], "failed needs an operator");
    assert_eq!(attention["items"][0]["needs_attention"], true);
    let (_, later) = search("created_after=2999-01-01T00:00:00Z").await;
    assert!(later["items"].as_array().unwrap().is_empty());
    let (_, earlier) = search(&format!("created_before={}", wasmtx::store::now_ms() + 60_000)).await;
    assert_eq!(ids(&earlier).len(), 4);

    // Pages of two, with transactions created between the pages: nothing seen twice, nothing
    // of the original four skipped, and the new ones (newer than the cursor) not in later pages.
    let (_, first) = search("limit=2").await;
    assert_eq!(ids(&first), newest_first[..2].to_vec());
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    for i in 0..3 {
        post(&server, "/v1/2pc", json!({"transaction_name": format!("new-{i}")})).await;
    }
    let (_, second) = search(&format!("limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), newest_first[2..].to_vec());
    assert!(second.get("next_cursor").is_none(), "the last page has no cursor");

    for bad in ["cursor=zz", "limit=0", "limit=501", "kind=order", "created_after=yesterday", "needs_attention=maybe"] {
        let (status, body) = search(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    // Bulk: cancel the managed one and the 2PC, resume the failed saga (still failing), and
    // an unknown id says so without stopping the others; each is audited.
    let items = json!({"items": [
        {"kind": "transaction", "id": managed["transaction_id"]},
        {"kind": "2pc", "transaction_id": tpc["transaction_id"]},
        {"kind": "saga", "id": "saga-nope"},
    ]});
    let (status, done) = post(&server, "/v1/bulk/cancel", items).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let outcomes: Vec<&str> = done["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["success", "success", "error"]);
    assert_eq!(done["results"][0]["document"]["transaction_status"], "aborted");
    assert_eq!(done["results"][1]["document"]["state"], "aborted");
    assert_eq!(done["results"][2]["code"], "not_found");
    let (status, _) = post(&server, "/v1/bulk/explode", json!({"items": []})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let too_many: Vec<Value> = (0..101).map(|i| json!({"kind": "saga", "id": format!("saga-{i}")})).collect();
    let (status, _) = post(&server, "/v1/bulk/resume", json!({"items": too_many})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, audit) = get(&server, "/v1/audit").await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"transaction_abort") && actions.contains(&"tpc_abort"), "{actions:?}");

    // The CLI prints the search as a table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmtx"))
        .args(["search", "--needs-attention", "--server", &server.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.starts_with("KIND") && table.contains(failed["saga_id"].as_str().unwrap()) && table.contains("yes"), "{table}");
    assert!(table.contains("1 shown; the last page"), "{table}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmtx")).args(["list", "2pc", "--limit", "2", "--server", &server.url]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 4, "header, two rows, the cursor line: {table}");
    assert!(table.contains("next page: --cursor"), "{table}");
    server.kill().await;
});

/// A webhook receiver: records (headers, body) of each delivery; answers 500 to the first.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>, std::sync::Arc<tokio::sync::Notify>) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>> = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (s, a) = (seen.clone(), arrived.clone());
    let app = axum::Router::new().route("/hook", axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            let n = {
                let mut seen = s.lock().unwrap();
                seen.push((headers, body.to_vec()));
                seen.len()
            };
            a.notify_one();
            if n == 1 { axum::http::StatusCode::INTERNAL_SERVER_ERROR } else { axum::http::StatusCode::OK }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen, arrived)
}

on_every_store!(a_failure_is_delivered_to_the_tenants_webhook_signed_and_retried_until_acknowledged, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &["--lease-ms", "500"]).await;
    push(&server, "scripted", plugins::SCRIPTED).await;
    let (hook, seen, arrived) = receiver().await;
    let secret = "a-secret-of-sixteen-or-more";
    for bad in [json!({"url": hook, "events": ["exploded"], "secret": secret}), json!({"url": hook, "events": ["failed"], "secret": "short"}), json!({"url": "ftp://x", "events": ["failed"], "secret": secret})] {
        let r = client().put(format!("{}/v1/settings/alerts", server.url)).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let set = client().put(format!("{}/v1/settings/alerts", server.url)).json(&json!({"url": hook, "events": ["failed"], "secret": secret})).send().await.unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let (_, shown) = get(&server, "/v1/settings/alerts").await;
    assert_eq!(shown["events"], json!(["failed"]));
    assert!(shown.get("secret").is_none(), "the secret is never shown back");

    // A saga that compensates succeeds in undoing: no alert. One that cannot: `failed`.
    post(&server, "/v1/sagas", doomed_saga("fine", false)).await;
    let (_, failed) = post(&server, "/v1/sagas", doomed_saga("refund", true)).await;
    assert_eq!(failed["state"], "failed");
    while seen.lock().unwrap().len() < 2 {
        arrived.notified().await;
    }
    let seen = seen.lock().unwrap().clone();
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(first.0["x-wasmtx-delivery"], second.0["x-wasmtx-delivery"], "a retry is the same delivery");
    assert_eq!(first.1, second.1);
    let body: Value = serde_json::from_slice(&second.1).unwrap();
    assert_eq!((body["event"].as_str(), body["transaction_id"].as_str()), (Some("failed"), failed["saga_id"].as_str()));
    let signed = second.0["x-wasmtx-signature"].to_str().unwrap();
    assert_eq!(signed, format!("sha256={}", wasmtx::alert::signature(secret, &second.1)), "HMAC-SHA256 of the body");
    // Delivered: recorded so (read from the store, which a memory server keeps to itself).
    let id = second.0["x-wasmtx-delivery"].to_str().unwrap().to_string();
    if url.starts_with("memory") {
        server.kill().await;
        return;
    }
    let store = wasmtx::store::Store::open(&match common::server_db(&url) {
        Some(u) => u.to_string(),
        None => format!("sqlite://{}", dir.path().join("wasmtx.db").display()),
    }).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row = store.get_tx("default", "alert", &id).await.unwrap().unwrap();
        if row.state == "delivered" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never recorded delivered: {}", row.state);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, all) = get(&server, "/v1/search").await;
    assert!(all["items"].as_array().unwrap().iter().all(|d| d["kind"] != "alert"), "deliveries are not listed as transactions");
    server.kill().await;
});

on_every_store!(a_failure_whose_alert_was_never_raised_is_raised_by_the_census_once, |url: String| async move {
    // A coordinator that dies between failing a transaction and storing its delivery leaves
    // a failed transaction with no delivery: here, one that failed before alerts were set.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &["--sweep-every-ms", "50"]).await;
    push(&server, "scripted", plugins::SCRIPTED).await;
    let (_, failed) = post(&server, "/v1/sagas", doomed_saga("refund", true)).await;
    assert_eq!(failed["state"], "failed");
    let (hook, seen, arrived) = receiver().await;
    let set = client().put(format!("{}/v1/settings/alerts", server.url)).json(&json!({"url": hook, "events": ["failed"], "secret": "a-secret-of-sixteen-or-more"})).send().await.unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    // The receiver answers 500 to the first try: the second is the same delivery.
    while seen.lock().unwrap().len() < 2 {
        arrived.notified().await;
    }
    // Later passes find it raised: one delivery, whatever number of tries.
    let (_, later) = post(&server, "/v1/sagas", doomed_saga("another", true)).await;
    while seen.lock().unwrap().iter().all(|(_, body)| !String::from_utf8_lossy(body).contains(later["saga_id"].as_str().unwrap())) {
        arrived.notified().await;
    }
    let seen = seen.lock().unwrap().clone();
    let of = |id: &str| -> std::collections::BTreeSet<String> {
        seen.iter().filter(|(_, b)| String::from_utf8_lossy(b).contains(id)).map(|(h, _)| h["x-wasmtx-delivery"].to_str().unwrap().to_string()).collect()
    };
    assert_eq!(of(failed["saga_id"].as_str().unwrap()).len(), 1, "raised once: {seen:?}");
    assert_eq!(of(later["saga_id"].as_str().unwrap()).len(), 1, "the census and the engine raise it once between them");
    server.kill().await;
});

on_every_store!(a_webhook_that_answers_a_flood_or_a_redirect_costs_one_try_each, |url: String| async move {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &["--lease-ms", "500"]).await;
    push(&server, "scripted", plugins::SCRIPTED).await;
    // First a 2xx with 16 MiB of body, then a redirect to the coordinator itself, then 200.
    let tries: Arc<Mutex<Vec<String>>> = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let target = format!("{}/v1/sagas", server.url);
    let (t, a) = (tries.clone(), arrived.clone());
    let app = axum::Router::new().route("/hook", axum::routing::post(move |headers: axum::http::HeaderMap| {
        let (t, a, target) = (t.clone(), a.clone(), target.clone());
        async move {
            use axum::response::IntoResponse;
            let n = {
                let mut tries = t.lock().unwrap();
                tries.push(headers["x-wasmtx-delivery"].to_str().unwrap().to_string());
                tries.len()
            };
            a.notify_one();
            match n {
                1 => (axum::http::StatusCode::OK, vec![b'x'; 16 << 20]).into_response(),
                2 => (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", target)]).into_response(),
                _ => axum::http::StatusCode::OK.into_response(),
            }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let set = client().put(format!("{}/v1/settings/alerts", server.url)).json(&json!({"url": hook, "events": ["failed"], "secret": "a-secret-of-sixteen-or-more"})).send().await.unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let (_, failed) = post(&server, "/v1/sagas", doomed_saga("refund", true)).await;
    assert_eq!(failed["state"], "failed");
    while tries.lock().unwrap().len() < 3 {
        arrived.notified().await;
    }
    let tries = tries.lock().unwrap().clone();
    assert!(tries.iter().all(|id| *id == tries[0]), "one delivery, tried again after the flood and the redirect: {tries:?}");
    // The redirect was not followed: the only saga is the failed one.
    let (_, listed) = get(&server, "/v1/sagas").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1, "{listed}");
    let (status, _) = get(&server, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.kill().await;
});

on_every_store!(a_requests_traceparent_is_carried_to_every_http_participant_as_a_child, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::server_db(&url), &[]).await;
    let mut script = Script::default();
    script.0.insert("prepare".into(), vec![Answer::Status(200, json!({"vote": "prepared"}))]);
    let http = HttpParticipant::start(script).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let steps = json!([{"name": "a", "endpoint": http.url, "action": "do_a"}, {"name": "b", "endpoint": http.url, "action": "do_b"}]);
    let r = client().post(format!("{}/v1/sagas", server.url)).header("traceparent", incoming)
        .json(&json!({"saga_name": "traced", "steps": steps, "execute": true, "wait": true})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "completed");
    let sent: Vec<String> = ["do_a", "do_b"].iter().flat_map(|a| http.traceparents(a)).map(|t| t.expect("a traceparent on every call")).collect();
    assert_eq!(sent.len(), 2);
    for t in &sent {
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && t.ends_with("-01") && t != incoming, "a child of the request's: {t}");
    }
    assert_ne!(sent[0], sent[1], "each call its own parent id");

    // Through a managed transaction to its 2PC delegate; an invalid header is ignored.
    let r = client().post(format!("{}/v1/transactions", server.url)).header("traceparent", incoming).json(&json!({"transaction_name": "t"})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["transaction_id"].as_str().unwrap().to_string();
    post(&server, &format!("/v1/transactions/{id}/participants"), json!({"participant_id": "p", "endpoint": http.url, "supports_2pc": true})).await;
    let (_, done) = post(&server, &format!("/v1/transactions/{id}/execute"), json!({"pattern": "two_phase_commit"})).await;
    assert_eq!(done["transaction_status"], "committed", "{done}");
    let prepares = http.traceparents("prepare");
    assert!(prepares.last().unwrap().as_deref().unwrap().contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{prepares:?}");
    let r = client().post(format!("{}/v1/sagas", server.url)).header("traceparent", "garbage")
        .json(&json!({"saga_name": "untraced", "steps": [{"name": "c", "endpoint": http.url, "action": "do_c"}], "execute": true, "wait": true})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "completed");
    assert_eq!(http.traceparents("do_c"), vec![None]);
    server.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_dependencies_and_cycles_get_a_422_naming_the_steps() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    push(&server, "payment", plugins::PAYMENT).await;
    let step = |name: &str, deps: &[&str]| json!({"name": name, "plugin": "payment", "depends_on": deps});
    let refused = |status: StatusCode, err: &Value, says: &[&str]| {
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(says.iter().all(|s| message.contains(s)), "{says:?} in {message}");
    };
    let (status, err) = post(&server, "/v1/sagas", json!({"saga_name": "bad", "steps": [step("a", &["a"])]})).await;
    refused(status, &err, &["\"a\"", "itself"]);
    let cycle = json!([step("a", &["c"]), step("b", &["a"]), step("c", &["b"])]);
    let (status, err) = post(&server, "/v1/sagas", json!({"saga_name": "bad", "steps": cycle})).await;
    refused(status, &err, &["cycle", "a", "b", "c"]);
    let (_, created) = post(&server, "/v1/sagas", json!({"saga_name": "ok", "steps": [step("a", &[])]})).await;
    let id = created["saga_id"].as_str().unwrap();
    let (status, err) = post(&server, &format!("/v1/sagas/{id}/steps"), step("b", &["b"])).await;
    refused(status, &err, &["\"b\"", "itself"]);
    let (_, doc) = get(&server, &format!("/v1/sagas/{id}")).await;
    assert_eq!(doc["steps"].as_array().unwrap().len(), 1, "the refused step was not added");
    server.kill().await;
}

/// An OTLP/HTTP collector for tests: decodes the protobuf batches it is sent and keeps their
/// spans.
#[derive(Clone, Default)]
struct Collector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    arrived: std::sync::Arc<tokio::sync::Notify>,
}

type OtlpSpan = opentelemetry_proto::tonic::trace::v1::Span;

impl Collector {
    async fn start() -> (Collector, String) {
        use axum::extract::State;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        async fn export(State(c): State<Collector>, body: axum::body::Bytes) -> axum::http::StatusCode {
            let batch = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf batch");
            let spans = batch.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
            c.spans.lock().unwrap().extend(spans);
            c.arrived.notify_waiters();
            axum::http::StatusCode::OK
        }
        let collector = Collector::default();
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(export)).with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, url)
    }

    /// The spans received once they satisfy `done` (waiting at most a minute for batches).
    async fn until(&self, done: impl Fn(&[OtlpSpan]) -> bool) -> Vec<OtlpSpan> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let spans = self.spans.lock().unwrap();
                    if done(&spans) {
                        return spans.clone();
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), wait).await.expect("the spans are exported")
    }
}

fn attribute(span: &OtlpSpan, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let value = span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_transactions_phases_and_calls_are_exported_over_otlp_in_the_callers_trace() {
    let (collector, otlp) = Collector::start().await;
    let http = HttpParticipant::start(Script::default()).await;
    let host = http.url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", "admin-secret-0123456789", "--allow-private-endpoints", "--otlp-endpoint", &otlp]).await;
    let admin = common::Caller::new(&server, Some("admin-secret-0123456789".into()));
    let (_, tenant) = admin.post("/v1/admin/tenants", json!({"tenant_id": "traced", "allowed_hosts": [host]})).await;
    let key = tenant["api_key"].as_str().unwrap().to_string();
    let caller = common::Caller::new(&server, Some(key.clone()));
    assert_eq!(caller.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);

    // A saga of an HTTP participant and a plugin that makes an outbound request itself.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let steps = json!([
        {"name": "a", "endpoint": http.url, "action": "do_a"},
        {"name": "b", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "http_get", "url": format!("{}/ping", http.url)}}}},
    ]);
    let r = client().post(format!("{}/v1/sagas", server.url)).bearer_auth(&key).header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({"saga_name": "traced", "steps": steps, "execute": true, "wait": true})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "completed");

    let ours = |s: &OtlpSpan| hex::encode(&s.trace_id) == trace;
    let spans = collector.until(|spans| spans.iter().filter(|s| ours(s) && s.name == "call").count() >= 2 && spans.iter().any(|s| ours(s) && s.name == "saga")).await;
    let named = |name: &str| -> Vec<&OtlpSpan> { spans.iter().filter(|s| ours(s) && s.name == name).collect() };
    let (create, saga, execute) = (named("create"), named("saga"), named("execute"));
    assert_eq!((create.len(), saga.len(), execute.len()), (1, 1, 1), "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    assert_eq!(hex::encode(&create[0].parent_span_id), parent, "the create request's span hangs under the caller's");
    assert_eq!(saga[0].parent_span_id, create[0].span_id, "the transaction under its create request");
    assert_eq!(execute[0].parent_span_id, saga[0].span_id, "the phase under the transaction");
    let calls = named("call");
    assert!(calls.iter().all(|c| c.parent_span_id == execute[0].span_id), "each call under its phase");
    let call = |step: &str| calls.iter().find(|c| attribute(c, "step").as_deref() == Some(step)).unwrap_or_else(|| panic!("a call span of step {step}"));
    assert_eq!(attribute(call("a"), "outcome").as_deref(), Some("success"));
    assert_eq!(attribute(call("b"), "to").as_deref(), Some("plugin"));
    // The callee is told the call's own span as its parent: its spans hang under the call.
    let header_of = |c: &OtlpSpan| Some(format!("00-{trace}-{}-01", hex::encode(&c.span_id)));
    assert_eq!(http.traceparents("do_a"), vec![header_of(call("a"))], "the HTTP participant's call");
    assert_eq!(http.traceparents("ping"), vec![header_of(call("b"))], "the plugin's own outbound request");

    // A 2PC transaction: its prepare and decision phases, each with its calls.
    let participants = json!([{"participant_id": "p", "endpoint": http.url}]);
    let r = client().post(format!("{}/v1/2pc", server.url)).bearer_auth(&key).header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({"transaction_name": "t", "participants": participants})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["transaction_id"].as_str().unwrap().to_string();
    let (_, done) = caller.post(&format!("/v1/2pc/{id}/execute"), json!({})).await;
    assert_eq!(done["state"], "aborted", "the participant's answer is no prepared vote: {done}");
    let spans = collector.until(|spans| spans.iter().any(|s| ours(s) && s.name == "2pc")).await;
    let named = |name: &str| -> Vec<&OtlpSpan> { spans.iter().filter(|s| ours(s) && s.name == name).collect() };
    let (tpc, prepare, decide) = (named("2pc"), named("prepare"), named("decide"));
    assert_eq!((tpc.len(), prepare.len(), decide.len()), (1, 1, 1));
    assert_eq!((prepare[0].parent_span_id.clone(), decide[0].parent_span_id.clone()), (tpc[0].span_id.clone(), tpc[0].span_id.clone()));
    assert_eq!(attribute(decide[0], "decision").as_deref(), Some("abort"));
    let under = |phase: &OtlpSpan| spans.iter().filter(|s| s.name == "call" && s.parent_span_id == phase.span_id).count();
    assert_eq!((under(prepare[0]), under(decide[0])), (1, 1), "a prepare call and an abort call");
    server.kill().await;
}
