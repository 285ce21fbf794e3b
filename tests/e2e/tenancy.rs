//! One server, tenants that do not trust each other: keys (hashed, rotated, revoked), every
//! endpoint scoped by tenant (another tenant's ids answer 404), per-tenant plugin namespaces,
//! concurrency caps (429) and memory caps that touch only their own tenant.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmtx_testkit::plugins;

use common::{Caller, Server, client};

const ADMIN: &str = "admin-secret-for-tests";

/// Sagas of a tenant's, its steps added one by one.
trait Sagas {
    async fn saga(&self, steps: &[Value]) -> String;
}

impl Sagas for Caller {
    async fn saga(&self, steps: &[Value]) -> String {
        let (status, created) = self.post("/v1/sagas", json!({"saga_name": "s", "context": {"amount": 1}})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["saga_id"].as_str().unwrap().to_string();
        for step in steps {
            let (status, body) = self.post(&format!("/v1/sagas/{id}/steps"), step.clone()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        id
    }
}

async fn new_tenant(server: &Server, id: &str, limits: Value) -> (String, String) {
    let admin = Caller::new(server, Some(ADMIN.into()));
    let (status, body) = admin.post("/v1/admin/tenants", json!({"tenant_id": id, "limits": limits})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["api_key"].as_str().unwrap().to_string(), body["key_id"].as_str().unwrap().to_string())
}

on_every_store!(tenants_are_isolated_and_keys_are_checked, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let server = Server::start(dir.path(), db, &["--admin-token", ADMIN]).await;
    let anonymous = Caller::new(&server, None);
    let (status, body) = Caller::new(&server, Some("wrong".into()))
        .post("/v1/admin/tenants", json!({"tenant_id": "acme"}))
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("unauthorized")));

    let (acme_key, acme_key_id) = new_tenant(&server, "acme", json!({})).await;
    let (globex_key, _) = new_tenant(&server, "globex", json!({})).await;
    let (status, _) = Caller::new(&server, Some(ADMIN.into())).post("/v1/admin/tenants", json!({"tenant_id": "acme"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let acme = Caller::new(&server, Some(acme_key.clone()));
    let globex = Caller::new(&server, Some(globex_key));

    // Keys: missing, malformed, unknown → 401.
    for caller in [&anonymous, &Caller::new(&server, Some("wtx_0000000000000000_".to_string() + &"0".repeat(64))), &Caller::new(&server, Some("nonsense".into()))] {
        let (status, body) = caller.get("/v1/sagas").await;
        assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("unauthorized")));
    }

    // Same plugin name, different bytes, separate namespaces.
    let (_, a) = acme.push("payment", plugins::PAYMENT).await;
    let (_, g) = globex.push("payment", plugins::SHIPPING).await;
    assert_eq!((a["version"].clone(), g["version"].clone()), (json!(1), json!(1)));
    assert_ne!(a["digest"], g["digest"]);
    assert_eq!(g["exports"], json!(["step"]));

    let id = acme.saga(&[json!({"name": "pay", "plugin": "payment"})]).await;
    let (status, doc) = acme.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("completed")), "{doc}");
    assert!(doc["steps"][0]["output"].get("charge_id").is_some(), "acme's payment ran, not globex's");

    // Every endpoint with the other tenant's id answers 404 and leaks nothing.
    for (method, path) in [
        ("GET", format!("/v1/sagas/{id}")),
        ("GET", format!("/v1/sagas/{id}/history")),
        ("POST", format!("/v1/sagas/{id}/execute")),
        ("POST", format!("/v1/sagas/{id}/resume")),
        ("POST", format!("/v1/sagas/{id}/cancel")),
        ("POST", format!("/v1/sagas/{id}/steps")),
    ] {
        let body = path.ends_with("/steps").then(|| json!({"name": "x", "plugin": "payment"}));
        let (status, err) = globex.send(method, &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
        assert!(!err.to_string().contains("completed"), "{err}");
    }
    let (_, listed) = globex.get("/v1/sagas").await;
    assert_eq!(listed["sagas"], json!([]));
    // The same for 2PC and managed transactions.
    let (_, tpc) = acme.post("/v1/2pc", json!({"transaction_name": "t"})).await;
    let (_, managed) = acme.post("/v1/transactions", json!({"transaction_name": "t"})).await;
    let (tpc, managed) = (tpc["transaction_id"].as_str().unwrap(), managed["transaction_id"].as_str().unwrap());
    for (method, path) in [
        ("GET", format!("/v1/2pc/{tpc}")),
        ("POST", format!("/v1/2pc/{tpc}/execute")),
        ("POST", format!("/v1/2pc/{tpc}/abort")),
        ("GET", format!("/v1/transactions/{managed}")),
        ("POST", format!("/v1/transactions/{managed}/execute")),
        ("POST", format!("/v1/transactions/{managed}/abort")),
    ] {
        let (status, err) = globex.send(method, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
    }
    let (_, theirs) = globex.get("/v1/transactions").await;
    assert_eq!(theirs["transactions"], json!([]));
    let (_, mine) = acme.get("/v1/sagas").await;
    assert_eq!(mine["sagas"].as_array().unwrap().len(), 1);
    let (status, _) = globex.get("/v1/plugins/payment").await;
    assert_eq!(status, StatusCode::OK);
    let (_, versions) = globex.get("/v1/plugins/payment").await;
    assert_eq!(versions["versions"][0]["digest"], g["digest"]);

    // The audit trail says who did what, per tenant.
    let (_, audit) = acme.get("/v1/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in ["tenant_created", "plugin_uploaded", "created", "step_added", "saga_execute"] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    let upload = entries.iter().find(|e| e["action"] == "plugin_uploaded").unwrap();
    assert_eq!(upload["actor"], format!("key:{acme_key_id}"));
    assert_eq!(upload["detail"]["digest"], a["digest"]);
    let (_, theirs) = globex.get("/v1/audit").await;
    let theirs = theirs["entries"].as_array().unwrap();
    assert!(theirs.iter().all(|e| e["actor"] != upload["actor"]), "only globex's own actions: {theirs:?}");
    assert!(theirs.iter().all(|e| e["detail"]["digest"] != a["digest"]));

    // Rotation: a second key works beside the first; revoking the first locks it out.
    let admin = Caller::new(&server, Some(ADMIN.into()));
    let (status, rotated) = admin.post("/v1/admin/tenants/acme/keys", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let acme2 = Caller::new(&server, Some(rotated["api_key"].as_str().unwrap().into()));
    assert_eq!(acme2.get(&format!("/v1/sagas/{id}")).await.0, StatusCode::OK);
    let (status, _) = admin.send("DELETE", &format!("/v1/admin/tenants/acme/keys/{acme_key_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(acme.get("/v1/sagas").await.0, StatusCode::UNAUTHORIZED, "a revoked key");
    assert_eq!(acme2.get("/v1/sagas").await.0, StatusCode::OK);
    server.kill().await;
});

on_every_store!(limits_touch_only_their_own_tenant, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let server = Server::start(dir.path(), db, &["--admin-token", ADMIN]).await;
    let (small_key, _) = new_tenant(
        &server,
        "small",
        json!({"max_concurrent": 1, "memory_mb": 16, "max_versions": 1, "max_component_bytes": 600000}),
    )
    .await;
    let (big_key, _) = new_tenant(&server, "big", json!({})).await;
    let small = Caller::new(&server, Some(small_key.clone()));
    let big = Caller::new(&server, Some(big_key));
    for c in [&small, &big] {
        assert_eq!(c.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    }
    // Upload limits: one version per name, components up to 600 000 bytes.
    let (status, err) = small.push("scripted", plugins::PAYMENT).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::CONFLICT, json!("version_limit")), "{err}");
    assert_eq!(small.push("scripted", plugins::SCRIPTED).await.0, StatusCode::OK, "the same bytes are not a new version");
    assert_eq!(big.push("scripted", plugins::PAYMENT).await.0, StatusCode::CREATED, "big has no version limit");
    let big_component = vec![0u8; 700_000];
    let r = client().put(format!("{}/v1/plugins/huge", server.url)).bearer_auth(&small_key).body(big_component).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // An infinite loop in small's plugin costs small's call, not big's transactions.
    let spin = small
        .saga(&[json!({"name": "spin", "plugin": "scripted", "timeout_ms": 5000, "retry_count": 0,
                       "parameters": {"script": {"execute": {"do": "spin"}}}})])
        .await;
    let (status, _) = small.post(&format!("/v1/sagas/{spin}/execute"), json!({"wait": false})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for _ in 0..3 {
        let quick = big.saga(&[json!({"name": "quick", "plugin": "scripted@1"})]).await;
        let (_, doc) = big.post(&format!("/v1/sagas/{quick}/execute"), json!({})).await;
        assert_eq!(doc["state"], "completed");
    }
    let (_, spinning) = small.get(&format!("/v1/sagas/{spin}")).await;
    assert_eq!(spinning["state"], "running", "big's sagas completed while small's plugin was still spinning");
    // The spinning saga counts against small's max_concurrent of 1 until it ends.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while small.get(&format!("/v1/sagas/{spin}")).await.1["state"] != "compensated" {
        assert!(tokio::time::Instant::now() < deadline, "the spin saga never ended");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Memory: 32 MiB is over small's 16 MiB cap and under big's default 64 MiB.
    let bomb = json!({"name": "alloc", "plugin": "scripted", "retry_count": 0,
                      "parameters": {"script": {"execute": {"do": "alloc", "mb": 32}}}});
    let id = small.saga(&[bomb.clone()]).await;
    let (_, doc) = small.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "compensated", "{doc}");
    assert!(doc["steps"][0]["error"].as_str().unwrap().contains("memory cap"), "{doc}");
    let bomb_v1 = {
        let mut b = bomb.clone();
        b["plugin"] = json!("scripted@1");
        b
    };
    let id = big.saga(&[bomb_v1]).await;
    let (_, doc) = big.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "completed", "{doc}");

    // Concurrency: small may run one execution; a second gets 429; big is unaffected.
    let slow = json!({"name": "slow", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "sleep", "ms": 3000}}}});
    let first = small.saga(&[slow.clone()]).await;
    let second = small.saga(&[slow]).await;
    let running = {
        let url = format!("{}/v1/sagas/{first}/execute", server.url);
        tokio::spawn(client().post(url).bearer_auth(small_key.clone()).json(&json!({})).send())
    };
    // Wait for the first execution to be in flight (its saga is running).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, doc) = small.get(&format!("/v1/sagas/{first}")).await;
        if doc["state"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the first saga never ran: {doc}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = client()
        .post(format!("{}/v1/sagas/{second}/execute", server.url))
        .bearer_auth(&small_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "too_many_executions", "{err}");
    let other = big.saga(&[json!({"name": "quick", "plugin": "scripted@1"})]).await;
    let (status, doc) = big.post(&format!("/v1/sagas/{other}/execute"), json!({})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("completed")), "big is not capped by small");
    let finished = running.await.unwrap().unwrap();
    assert_eq!(finished.status(), StatusCode::OK);
    let (status, doc) = small.post(&format!("/v1/sagas/{second}/execute"), json!({"wait": true})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("completed")), "the slot is free again");
    server.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_admin_api_is_off_and_single_tenant_mode_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let anyone = Caller::new(&server, None);
    let (status, body) = anyone.post("/v1/admin/tenants", json!({"tenant_id": "acme"})).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("admin_disabled")));
    assert_eq!(anyone.get("/v1/sagas").await.0, StatusCode::OK);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_api_runs_as_the_tenant_its_key_names_and_is_refused_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let (acme_key, _) = new_tenant(&server, "acme", json!({})).await;
    let (globex_key, _) = new_tenant(&server, "globex", json!({})).await;
    let plugin_dir = std::path::Path::new(plugins::PAYMENT).parent().unwrap().to_str().unwrap().to_string();
    let bench = |key: Option<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtx"));
        cmd.args(["bench", "--json", "api", "--server", &server.url, "--mode", "saga", "--count", "6", "--concurrency", "2"]);
        cmd.args(["--plugin-dir", &plugin_dir]).env_remove("WASMTX_API_KEY");
        if let Some(key) = key {
            cmd.args(["--api-key", &key]);
        }
        cmd.output()
    };

    let out = bench(Some(acme_key.clone())).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["transactions"], 6, "{report}");
    // The sagas are acme's, and globex sees none of them.
    let (_, acme) = Caller::new(&server, Some(acme_key)).get("/v1/sagas?limit=100").await;
    assert_eq!(acme["sagas"].as_array().unwrap().len(), 6, "{acme}");
    assert!(acme["sagas"].as_array().unwrap().iter().all(|s| s["state"] == "completed"), "{acme}");
    let (_, globex) = Caller::new(&server, Some(globex_key)).get("/v1/sagas").await;
    assert_eq!(globex["sagas"], json!([]), "{globex}");

    let out = bench(None).await.unwrap();
    assert!(!out.status.success(), "a keyed server refuses a bench without a key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401") || stderr.contains("API key is required"), "{stderr}");
    server.kill().await;
}

/// A server on loopback that answers every request with a 302 to `to`; returns its URL.
async fn bouncer(to: String) -> String {
    let app = axum::Router::new().fallback(move || {
        let to = to.clone();
        async move { (axum::http::StatusCode::FOUND, [("location", to)]) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A saga step whose plugin GETs `url` over wasi:http.
fn http_get(url: &str) -> Value {
    json!({"name": "fetch", "plugin": "scripted", "retry_count": 0,
           "parameters": {"script": {"execute": {"do": "http_get", "url": url}}}})
}

on_every_store!(plugins_reach_only_their_tenants_allowed_hosts, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let target = common::HttpParticipant::start(common::Script::default()).await;
    let host = target.url.trim_start_matches("http://").to_string();
    let bounce = bouncer(format!("{}/ping", target.url)).await;
    // The target listens on loopback, which tenants reach only when the operator allows it.
    let server = Server::start(dir.path(), db, &["--admin-token", ADMIN, "--allow-private-endpoints"]).await;
    let admin = Caller::new(&server, Some(ADMIN.into()));
    let bounce_host = bounce.trim_start_matches("http://");
    let (_, open) = admin.post("/v1/admin/tenants", json!({"tenant_id": "open", "allowed_hosts": [host, bounce_host]})).await;
    let (_, closed) = admin.post("/v1/admin/tenants", json!({"tenant_id": "closed"})).await;
    let (status, bad) = admin.post("/v1/admin/tenants", json!({"tenant_id": "bad", "allowed_hosts": ["http://x/y"]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    let get = http_get(&format!("{}/ping", target.url));
    let mut outcomes = Vec::new();
    for tenant in [&open, &closed] {
        let caller = Caller::new(&server, Some(tenant["api_key"].as_str().unwrap().into()));
        assert_eq!(caller.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
        let id = caller.saga(&[get.clone()]).await;
        let (_, doc) = caller.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
        outcomes.push(doc);
    }
    assert_eq!(outcomes[0]["state"], "completed", "{}", outcomes[0]);
    assert_eq!(outcomes[0]["steps"][0]["output"]["status"], 200);
    assert!(outcomes[0]["steps"][0]["output"]["body"].as_str().unwrap().contains("pong"));
    assert_eq!(outcomes[1]["state"], "compensated", "{}", outcomes[1]);
    let refused = outcomes[1]["steps"][0]["error"].as_str().unwrap();
    assert!(refused.contains("HttpRequestDenied"), "the outcome says the request was refused: {refused}");
    assert_eq!(target.calls_to("ping").len(), 1, "only the allowed tenant's request arrived");
    // A redirect is the plugin's answer, never followed on its behalf (the target it points
    // at is allowed, and hears nothing).
    let open = Caller::new(&server, Some(open["api_key"].as_str().unwrap().into()));
    let id = open.saga(&[http_get(&format!("{bounce}/anything"))]).await;
    let (_, doc) = open.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "completed", "{doc}");
    assert_eq!(doc["steps"][0]["output"]["status"], 302, "{doc}");
    assert_eq!(target.calls_to("ping").len(), 1, "the redirect was not followed");
    server.kill().await;
    // Without --allow-private-endpoints, loopback is refused though the tenant lists it, by
    // address or by a name that resolves to it; nothing is sent.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), db, &["--admin-token", ADMIN]).await;
    let admin = Caller::new(&server, Some(ADMIN.into()));
    let port = host.rsplit(':').next().unwrap();
    let by_name = format!("localhost:{port}");
    let (status, strict) = admin.post("/v1/admin/tenants", json!({"tenant_id": "strict", "allowed_hosts": [host, by_name]})).await;
    assert_eq!(status, StatusCode::CREATED, "{strict}");
    let strict = Caller::new(&server, Some(strict["api_key"].as_str().unwrap().into()));
    assert_eq!(strict.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    for url in [format!("{}/ping", target.url), format!("http://{by_name}/ping")] {
        let id = strict.saga(&[http_get(&url)]).await;
        let (_, doc) = strict.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
        assert_eq!(doc["state"], "compensated", "{url}: {doc}");
        let refused = doc["steps"][0]["error"].as_str().unwrap();
        assert!(refused.contains("DestinationIpProhibited"), "{url}: the outcome says the address was refused: {refused}");
    }
    assert_eq!(target.calls_to("ping").len(), 1, "no request reached loopback");
    server.kill().await;
});

on_every_store!(fuel_and_body_limits_apply_per_tenant, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let db = common::server_db(&url);
    let server = Server::start(dir.path(), db, &["--admin-token", ADMIN, "--fuel-metering"]).await;
    let (key, _) = new_tenant(&server, "metered", json!({"fuel": 20000000, "max_body_bytes": 2000})).await;
    let metered = Caller::new(&server, Some(key));
    assert_eq!(metered.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED, "uploads are not body-limited");
    let id = metered
        .saga(&[json!({"name": "spin", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "spin"}}}})])
        .await;
    let (_, doc) = metered.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "compensated", "{doc}");
    assert!(doc["steps"][0]["error"].as_str().unwrap().contains("fuel"), "{doc}");
    let big_context = json!({"saga_name": "s", "context": {"blob": "x".repeat(5000)}});
    let (status, err) = metered.post("/v1/sagas", big_context).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("body_too_large")), "{err}");
    server.kill().await;
});
