//! A hostile tenant or client harms nobody but itself: calls leave only where the outbound
//! policy allows, answers and inputs are read with caps, tenants get fair shares of the Wasm
//! host, limits hold however the work was started, connections that never finish their
//! request are closed, and every mistake of the caller's is a 4xx with the JSON error document.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode as AxumStatus;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtx_testkit::{plugin_bytes, plugins};

use common::{Caller, Server, client};

const ADMIN: &str = "admin-secret-for-hostile-tests";

fn anonymous(server: &Server) -> Caller {
    Caller::new(server, None)
}

fn admin(server: &Server) -> Caller {
    Caller::new(server, Some(ADMIN.into()))
}

/// What these tests do as a caller beyond requests.
trait Sagas {
    async fn saga(&self, steps: Value) -> String;
    async fn saga_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value;
}

impl Sagas for Caller {
    /// Creates a saga with `steps` in one request; returns its id.
    async fn saga(&self, steps: Value) -> String {
        let (status, created) = self.post("/v1/sagas", json!({"saga_name": "s", "steps": steps})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["saga_id"].as_str().unwrap().to_string()
    }

    /// Polls the saga until `done` holds.
    async fn saga_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (_, doc) = self.get(&format!("/v1/sagas/{id}")).await;
            if done(&doc) {
                return doc;
            }
            assert!(tokio::time::Instant::now() < deadline, "saga {id} never got there: {doc}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Creates tenant `id` (with `extra` fields such as limits and allowed_hosts) and returns it.
async fn tenant(server: &Server, id: &str, extra: Value) -> Caller {
    let mut body = json!({"tenant_id": id});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    let (status, created) = admin(server).post("/v1/admin/tenants", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    Caller::new(server, Some(created["api_key"].as_str().unwrap().into()))
}

fn database(url: &str) -> Option<&str> {
    common::server_db(url)
}

/// An HTTP server that misbehaves on request, counting every call it gets:
/// `/huge/{mb}/{declared}/{action}` answers `mb` MiB (streamed; with a Content-Length when
/// `declared` is 1) to `go` and `prepare`, and plainly to anything else (a compensation, a 2PC
/// decision); the other routes misbehave for `go` only: `/redirect/{code}/{port}/{action}` redirects to 127.0.0.1:`port`/secret,
/// `/sized/{bytes}/{action}` answers a JSON string of `bytes` bytes, `/slow/{ms}/{action}`
/// answers after `ms` milliseconds, anything else
/// (`/secret/…`) answers `{"secret": true}`. `GET /hold/{ms}` (what a plugin's `http_get`
/// sends) answers after `ms` milliseconds and is not counted as a call: it tells how many
/// plugin calls wait on it at once; `GET /endless` answers at once with a body that never ends.
#[derive(Clone)]
struct Misbehaving {
    url: String,
    calls: Arc<AtomicUsize>,
    holding: Arc<Holding>,
}

/// The `GET /hold` requests being answered now, the most there ever were, and a signal at
/// each arrival.
#[derive(Default)]
struct Holding {
    now: AtomicUsize,
    most: AtomicUsize,
    arrived: tokio::sync::Notify,
}

impl Misbehaving {
    async fn start() -> Misbehaving {
        let calls = Arc::new(AtomicUsize::new(0));
        async fn huge(State(calls): State<Arc<AtomicUsize>>, UrlPath((mb, declared, action)): UrlPath<(usize, u8, String)>) -> Response {
            calls.fetch_add(1, Ordering::SeqCst);
            // A 2PC decision and a compensation are answered plainly: only `go` and the vote
            // are huge.
            if action != "go" && action != "prepare" {
                return axum::Json(json!({"ok": true})).into_response();
            }
            static CHUNK: [u8; 64 << 10] = [b'a'; 64 << 10];
            let chunks = futures::stream::repeat_with(|| Ok::<_, Infallible>(Bytes::from_static(&CHUNK))).take(mb * 16);
            let mut response = Body::from_stream(chunks).into_response();
            if declared == 1 {
                response.headers_mut().insert("content-length", (mb << 20).to_string().parse().unwrap());
            }
            response
        }
        async fn redirect(State(calls): State<Arc<AtomicUsize>>, UrlPath((code, port, action)): UrlPath<(u16, u16, String)>) -> Response {
            calls.fetch_add(1, Ordering::SeqCst);
            if action != "go" {
                return axum::Json(json!({"undone": true})).into_response();
            }
            let to = format!("http://127.0.0.1:{port}/secret");
            (AxumStatus::from_u16(code).unwrap(), [("location", to)]).into_response()
        }
        async fn sized(State(calls): State<Arc<AtomicUsize>>, UrlPath((bytes, action)): UrlPath<(usize, String)>) -> Response {
            calls.fetch_add(1, Ordering::SeqCst);
            let bytes = if action == "go" { bytes } else { 10 };
            axum::Json(json!("z".repeat(bytes.saturating_sub(2)))).into_response()
        }
        async fn slow(State(calls): State<Arc<AtomicUsize>>, UrlPath((ms, _)): UrlPath<(u64, String)>) -> axum::Json<Value> {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            axum::Json(json!({"slept_ms": ms}))
        }
        async fn secret(State(calls): State<Arc<AtomicUsize>>) -> axum::Json<Value> {
            calls.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"secret": true}))
        }
        async fn hold(State(holding): State<Arc<Holding>>, UrlPath(ms): UrlPath<u64>) -> axum::Json<Value> {
            /// Counts the request until it is answered or its caller gives up on it.
            struct Held(Arc<Holding>);
            impl Drop for Held {
                fn drop(&mut self) {
                    self.0.now.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let now = holding.now.fetch_add(1, Ordering::SeqCst) + 1;
            holding.most.fetch_max(now, Ordering::SeqCst);
            let _held = Held(holding.clone());
            holding.arrived.notify_waiters();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            axum::Json(json!({"held_ms": ms}))
        }
        let holding = Arc::new(Holding::default());
        let app = axum::Router::new()
            .route("/hold/{ms}", axum::routing::get(hold).with_state(holding.clone()))
            .route("/endless", axum::routing::get(endless))
            .route("/huge/{mb}/{declared}/{action}", post(huge))
            .route("/redirect/{code}/{port}/{action}", post(redirect))
            .route("/sized/{bytes}/{action}", post(sized))
            .route("/slow/{ms}/{action}", post(slow))
            .fallback(any(secret))
            .with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Misbehaving { url, calls, holding }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until `n` `GET /hold` requests are being answered at once (fails the test
    /// after 60 s rather than hang it).
    async fn until_holding(&self, n: usize) {
        let arrived = async {
            loop {
                // Registered before the count is read: an arrival in between still wakes it.
                let next = self.holding.arrived.notified();
                if self.holding.now.load(Ordering::SeqCst) >= n {
                    return;
                }
                next.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), arrived).await.unwrap_or_else(|_| panic!("{n} requests were never held at once"));
    }

    /// The most `GET /hold` requests that were answered at once.
    fn most_held(&self) -> usize {
        self.holding.most.load(Ordering::SeqCst)
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// The peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_outside_the_outbound_policy_are_refused_when_added_and_when_called() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Misbehaving::start().await;
    let port = internal.port();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let acme = tenant(
        &server,
        "acme",
        json!({"allowed_hosts": [format!("127.0.0.1:{port}"), "localhost", "[::ffff:127.0.0.1]", "api.example.com"]}),
    )
    .await;
    let (_, created) = acme.post("/v1/sagas", json!({"saga_name": "s"})).await;
    let id = created["saga_id"].as_str().unwrap().to_string();
    let (_, tx) = acme.post("/v1/2pc", json!({"transaction_name": "t"})).await;
    let tpc = tx["transaction_id"].as_str().unwrap().to_string();
    let (_, m) = acme.post("/v1/transactions", json!({"transaction_name": "m"})).await;
    let managed = m["transaction_id"].as_str().unwrap().to_string();
    for (endpoint, why) in [
        (format!("http://127.0.0.1:{port}/"), "loopback"),
        (format!("http://2130706433:{port}/"), "loopback"),
        (format!("http://127.1:{port}/"), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "loopback"),
        ("http://169.254.169.254/latest/meta-data".to_string(), "allowed_hosts"),
        ("http://10.0.0.1/".to_string(), "allowed_hosts"),
        ("http://evil.example.org/".to_string(), "allowed_hosts"),
    ] {
        let step = json!({"name": "x", "endpoint": endpoint, "retry_count": 0});
        let (status, err) = acme.post(&format!("/v1/sagas/{id}/steps"), step.clone()).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("endpoint_refused")), "{endpoint}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(why), "{endpoint}: {err}");
        let (status, err) = acme.post("/v1/sagas", json!({"saga_name": "s", "steps": [step]})).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("endpoint_refused")), "{err}");
        let participant = json!({"participant_id": "p", "endpoint": endpoint});
        let (status, err) = acme.post(&format!("/v1/2pc/{tpc}/participants"), participant.clone()).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("endpoint_refused")), "{err}");
        let (status, err) = acme.post(&format!("/v1/transactions/{managed}/participants"), participant).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("endpoint_refused")), "{err}");
    }
    // A name is judged by what it resolves to, when the call is made: `localhost` is allowed
    // by name, and refused because it resolves to loopback.
    let step = json!({"name": "x", "endpoint": format!("http://localhost:{port}/secret"), "retry_count": 0});
    let (status, body) = acme.post(&format!("/v1/sagas/{id}/steps"), step).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, doc) = acme.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "compensated", "{doc}");
    let error = doc["steps"][0]["error"].as_str().unwrap();
    assert!(error.contains("resolves to") && error.contains("loopback"), "{error}");
    assert_eq!(internal.calls(), 0, "nothing reached the internal service");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_answers_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (bouncer, inside) = (Misbehaving::start().await, Misbehaving::start().await);
    // Single-tenant mode may call loopback (local development), so the bounce is what is tested.
    let server = Server::start(dir.path(), None, &[]).await;
    let anyone = anonymous(&server);
    for code in [302, 307, 308] {
        let endpoint = format!("{}/redirect/{code}/{}", bouncer.url, inside.port());
        let id = anyone.saga(json!([{"name": "bounce", "endpoint": endpoint, "action": "go", "retry_count": 0}])).await;
        let (_, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
        assert_eq!(doc["state"], "compensated", "{doc}");
        assert!(doc["steps"][0]["error"].as_str().unwrap().contains(&format!("HTTP {code}")), "{doc}");
    }
    // Each bounced step's outcome is unknown, so it is compensated too (plainly answered).
    assert_eq!(bouncer.calls(), 6);
    assert_eq!(inside.calls(), 0, "no redirect was followed");
    server.kill().await;
}

on_every_store!(huge_answers_fail_their_call_once_at_a_bounded_cost, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let huge = Misbehaving::start().await;
    let server = Server::start(dir.path(), database(&url), &["--lease-ms", "500"]).await;
    let pid = server.child.id().unwrap();
    let anyone = anonymous(&server);
    assert_eq!(anyone.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let before = peak_rss_mib(pid);
    let cases = [
        ("1024/0", "larger than the 1048576 bytes accepted"),
        ("64/1", "is 67108864 bytes, more than the 1048576 accepted"),
    ];
    for (shape, why) in cases {
        let calls = huge.calls();
        let id = anyone
            .saga(json!([
                {"name": "first", "plugin": "scripted"},
                {"name": "flood", "endpoint": format!("{}/huge/{shape}", huge.url), "action": "go", "retry_count": 0}
            ]))
            .await;
        let (status, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        assert_eq!(doc["state"], "compensated", "{doc}");
        let error = doc["steps"][1]["error"].as_str().unwrap();
        assert!(error.contains(why), "{error}");
        assert!(doc.get("steps").unwrap()[1].get("output").is_none(), "nothing of the answer was stored");
        assert_eq!(doc["steps"][0]["state"], "compensated");
        assert_eq!(huge.calls() - calls, 2, "called once (retry_count 0), then compensated: its outcome is unknown");
        assert_eq!(doc["steps"][1]["forward_outcome"], "unknown");
    }
    // A 512 MiB vote is no vote.
    let participants = json!([{"participant_id": "flood", "endpoint": format!("{}/huge/512/0", huge.url)}]);
    let (_, tx) = anyone.post("/v1/2pc", json!({"transaction_name": "t", "participants": participants})).await;
    let tx = tx["transaction_id"].as_str().unwrap().to_string();
    let (status, doc) = anyone.post(&format!("/v1/2pc/{tx}/execute"), json!({})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("aborted")), "{doc}");
    assert!(doc["participants"][0]["vote_reason"].as_str().unwrap().contains("bytes accepted"), "{doc}");
    // A plugin's output is capped the same way.
    let id = anyone
        .saga(json!([{"name": "big", "plugin": "scripted", "retry_count": 0,
                      "parameters": {"script": {"execute": {"do": "big_output", "bytes": 2_000_000}}}}]))
        .await;
    let (_, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "compensated", "{doc}");
    assert!(doc["steps"][0]["error"].as_str().unwrap().contains("more than the 1048576 accepted"), "{doc}");
    let grown = peak_rss_mib(pid).saturating_sub(before);
    assert!(grown < 256, "1.5 GiB of answers cost {grown} MiB of peak memory");
    // Recovery passes (every 250 ms) leave what the failures ended alone: at least three whole
    // passes begun after them, longer than a 500 ms lease, and nobody called the flood again.
    let calls = huge.calls();
    let passes = recovery_passes(&server).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while recovery_passes(&server).await < passes + 4 {
        assert!(tokio::time::Instant::now() < deadline, "no recovery pass ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(huge.calls(), calls, "recovery called the flood again");
    server.kill().await;
});

/// The recovery passes `server` has completed (its `/metrics`).
async fn recovery_passes(server: &Server) -> u64 {
    let text = client().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("wasmtx_recovery_passes_total ")).unwrap_or_else(|| panic!("no recovery pass counter in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_answer_cap_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sized = Misbehaving::start().await;
    let host = format!("127.0.0.1:{}", sized.port());
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN, "--allow-private-endpoints"]).await;
    let small = tenant(&server, "small", json!({"limits": {"max_answer_bytes": 2000}, "allowed_hosts": [host]})).await;
    let roomy = tenant(&server, "roomy", json!({"allowed_hosts": [host]})).await;
    let step = |bytes: usize| json!([{"name": "get", "endpoint": format!("{}/sized/{bytes}", sized.url), "action": "go", "retry_count": 0}]);
    for (caller, bytes, state) in [(&small, 1500, "completed"), (&small, 5000, "compensated"), (&roomy, 5000, "completed")] {
        let id = caller.saga(step(bytes)).await;
        let (_, doc) = caller.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
        assert_eq!(doc["state"], state, "{bytes} bytes: {doc}");
    }
    let (status, err) = admin(&server).post("/v1/admin/tenants", json!({"tenant_id": "x", "limits": {"max_answer_bytes": 0}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_host_waits_its_turn_and_others_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN, "--max-instances", "8"]).await;
    let flood = tenant(&server, "flood", json!({"limits": {"max_instances": 4}})).await;
    let calm = tenant(&server, "calm", json!({})).await;
    for t in [&flood, &calm] {
        assert_eq!(t.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    }
    let slow = json!([{"name": "slow", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "sleep", "ms": 1500}}}}]);
    let mut flooding = Vec::new();
    for _ in 0..16 {
        let (status, created) = flood.post("/v1/sagas", json!({"saga_name": "flood", "steps": slow, "execute": true})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        flooding.push(created["saga_id"].as_str().unwrap().to_string());
    }
    // 16 calls of 1.5 s through a share of 4 take 6 s; calm's sagas do not wait for them.
    for _ in 0..3 {
        let id = calm.saga(json!([{"name": "quick", "plugin": "scripted"}])).await;
        let (_, doc) = calm.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
        assert_eq!(doc["state"], "completed", "{doc}");
    }
    let mut still_running = 0;
    for id in &flooding {
        if flood.get(&format!("/v1/sagas/{id}")).await.1["state"] == "running" {
            still_running += 1;
        }
    }
    assert!(still_running > 0, "calm's sagas completed while the flood was still queued");
    // Waiting is not failing: every flooding saga completes.
    for id in &flooding {
        let doc = flood.saga_until(id, |d| d["state"] != "running").await;
        assert_eq!(doc["state"], "completed", "{doc}");
    }
    // A tenant without a share may take the whole pool, and still never fails for want of a slot.
    let greedy = tenant(&server, "greedy", json!({})).await;
    assert_eq!(greedy.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let quick_sleep = json!([{"name": "nap", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "sleep", "ms": 300}}}}]);
    let mut ids = Vec::new();
    for _ in 0..24 {
        let (_, created) = greedy.post("/v1/sagas", json!({"saga_name": "g", "steps": quick_sleep, "execute": true})).await;
        ids.push(created["saga_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let doc = greedy.saga_until(id, |d| d["state"] != "running").await;
        assert_eq!(doc["state"], "completed", "more calls than the pool's 8 slots wait instead of failing: {doc}");
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2pc_of_plugins_commits_while_another_tenant_fills_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Misbehaving::start().await;
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN, "--max-instances", "2", "--allow-private-endpoints"]).await;
    let flood = tenant(&server, "flood", json!({"allowed_hosts": [format!("127.0.0.1:{}", holder.port())]})).await;
    let calm = tenant(&server, "calm", json!({})).await;
    for t in [&flood, &calm] {
        assert_eq!(t.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    }
    // Four calls that each keep an instance for 1.5 s: the pool of two is full, twice over.
    let hold = json!([{"name": "hold", "plugin": "scripted", "retry_count": 0,
                       "parameters": {"script": {"execute": {"do": "http_get", "url": format!("{}/hold/1500", holder.url)}}}}]);
    let mut flooding = Vec::new();
    for _ in 0..4 {
        let (status, created) = flood.post("/v1/sagas", json!({"saga_name": "flood", "steps": hold, "execute": true})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        flooding.push(created["saga_id"].as_str().unwrap().to_string());
    }
    holder.until_holding(2).await;
    // A plugin uploaded meanwhile waits its turn for the instance its check needs.
    let upload = {
        let calm = Caller { url: calm.url.clone(), key: calm.key.clone() };
        tokio::spawn(async move { calm.push("payment", plugins::PAYMENT).await })
    };
    // calm's participants wait for instances far longer than the 200 ms each has to vote:
    // waiting for the host is not a slow vote.
    let participants = json!([{"participant_id": "a", "plugin": "scripted"}, {"participant_id": "b", "plugin": "scripted"}]);
    let (status, created) = calm.post("/v1/2pc", json!({"transaction_name": "t", "prepare_timeout_ms": 200, "participants": participants})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, doc) = calm.post(&format!("/v1/2pc/{}/execute", created["transaction_id"].as_str().unwrap()), json!({})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("committed")), "{doc}");
    assert!(doc["duration_ms"].as_u64().unwrap() > 200, "the votes came after the prepare timeout's length: {doc}");
    let (status, body) = upload.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for id in &flooding {
        let doc = flood.saga_until(id, |d| d["state"] != "running").await;
        assert_eq!(doc["state"], "completed", "{doc}");
    }
    assert_eq!(holder.most_held(), 2, "the pool's two instances were all the flood had");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_compile_off_the_threads_that_answer_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let started = tokio::time::Instant::now();
    let uploads: Vec<_> = [("py", plugins::PYTHON_INVENTORY), ("js", plugins::JS_FRAUD_CHECK), ("pay", plugins::PAYMENT), ("led", plugins::LEDGER)]
        .into_iter()
        .map(|(name, path)| {
            let url = format!("{}/v1/plugins/{name}", server.url);
            let bytes = plugin_bytes(path);
            tokio::spawn(async move {
                let r = client().put(url).body(bytes).send().await.unwrap();
                (r.status(), tokio::time::Instant::now())
            })
        })
        .collect();
    // While the compilations run, the server keeps answering.
    let mut answered = Vec::new();
    while answered.len() < 5 {
        let r = client().get(format!("{}/healthz", server.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        answered.push(tokio::time::Instant::now());
    }
    let mut first_done = None::<tokio::time::Instant>;
    for upload in uploads {
        let (status, at) = upload.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        first_done = Some(first_done.map_or(at, |f| f.min(at)));
    }
    let first_done = first_done.unwrap();
    assert!(
        answered.iter().filter(|at| **at < first_done).count() >= 3,
        "health checks were answered while the first compilation ran ({:?} after the start)",
        first_done - started
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_prints_past_the_capture_completes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let anyone = anonymous(&server);
    assert_eq!(anyone.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    // 2 000 lines of 100 bytes: three times the 64 KiB kept for the log.
    let id = anyone
        .saga(json!([{"name": "chatty", "plugin": "scripted", "retry_count": 0,
                      "parameters": {"script": {"execute": {"do": "print", "lines": 2000}}}}]))
        .await;
    let (_, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "completed", "{doc}");
    assert_eq!(doc["steps"][0]["output"]["printed_lines"], 2000);
    server.kill().await;
}

/// The longest reason kept, in characters: 500 and the ellipsis that says it was cut.
const KEPT_REASON_CHARS: usize = 501;

on_every_store!(a_plugins_long_reasons_are_cut_and_its_transaction_ends_as_usual, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &[]).await;
    let anyone = anonymous(&server);
    assert_eq!(anyone.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    // A MiB of explanation with a retry, then with a failure: each is kept as 500 characters,
    // and the saga compensates as it would for a short reason.
    let mib = 1 << 20;
    let id = anyone
        .saga(json!([
            {"name": "reserve", "plugin": "scripted"},
            {"name": "verbose_retry", "plugin": "scripted", "retry_count": 1,
             "parameters": {"script": {"execute": {"do": "retry", "times": 1, "reason_bytes": mib}}}},
            {"name": "verbose_failure", "plugin": "scripted", "retry_count": 0,
             "parameters": {"script": {"execute": {"do": "fail", "reason_bytes": mib}}}}
        ]))
        .await;
    let (status, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("compensated")), "{doc}");
    let error = doc["steps"][2]["error"].as_str().unwrap();
    assert!(error.starts_with("rrrr") && error.chars().count() <= KEPT_REASON_CHARS, "{} characters kept", error.chars().count());
    assert!(doc.to_string().len() < 16 << 10, "the document holds no MiB reason: {} bytes", doc.to_string().len());
    let (_, history) = anyone.get(&format!("/v1/sagas/{id}/history")).await;
    let history = history.to_string();
    assert!(history.contains("rrrr") && history.len() < 32 << 10, "the journal holds no MiB reason: {} bytes", history.len());
    // A vote to abort as long: the transaction aborts, its reason cut the same way.
    let (status, created) = anyone
        .post("/v1/2pc", json!({"transaction_name": "t", "participants": [
            {"participant_id": "verbose", "plugin": "scripted",
             "parameters": {"script": {"prepare": {"do": "vote_abort", "reason_bytes": mib}}}},
            {"participant_id": "quiet", "plugin": "scripted"}
        ]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let tx = created["transaction_id"].as_str().unwrap();
    let (status, doc) = anyone.post(&format!("/v1/2pc/{tx}/execute"), json!({})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("aborted")), "{doc}");
    let reason = doc["participants"][0]["vote_reason"].as_str().unwrap();
    assert!(reason.starts_with("rrrr") && reason.chars().count() <= KEPT_REASON_CHARS, "{} characters kept", reason.chars().count());
    let (_, history) = anyone.get(&format!("/v1/2pc/{tx}/history")).await;
    assert!(history.to_string().len() < 32 << 10, "the journal holds no MiB reason");
    server.kill().await;
});

on_every_store!(contexts_outputs_and_descriptions_past_their_caps_are_refused, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &[]).await;
    let anyone = anonymous(&server);
    assert_eq!(anyone.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    // `{"blob":"…"}` of exactly `bytes` bytes as JSON.
    let context = |bytes: usize| json!({"blob": "x".repeat(bytes - r#"{"blob":""}"#.len())});
    const CONTEXT_CAP: usize = 256 << 10;
    for (path, name) in [("/v1/sagas", "saga_name"), ("/v1/2pc", "transaction_name"), ("/v1/transactions", "transaction_name")] {
        let (status, err) = anyone.post(path, json!({name: "big", "context": context(CONTEXT_CAP + 1)})).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{path}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("context"), "{path}: {err}");
        let (status, created) = anyone.post(path, json!({name: "at-the-cap", "context": context(CONTEXT_CAP)})).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: a context at the cap is stored: {created}");
    }
    // One step or participant: at most 32 KiB as JSON, added alone or with its transaction.
    let bulky = json!({"blob": "p".repeat(33 << 10)});
    let (status, err) = anyone.post("/v1/sagas", json!({"saga_name": "s", "steps": [{"name": "a", "plugin": "scripted", "parameters": bulky}]})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    let (_, created) = anyone.post("/v1/sagas", json!({"saga_name": "s"})).await;
    let saga = created["saga_id"].as_str().unwrap();
    let (status, err) = anyone.post(&format!("/v1/sagas/{saga}/steps"), json!({"name": "a", "plugin": "scripted", "parameters": bulky})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    let (_, created) = anyone.post("/v1/2pc", json!({"transaction_name": "t"})).await;
    let tx = created["transaction_id"].as_str().unwrap();
    let (status, err) = anyone.post(&format!("/v1/2pc/{tx}/participants"), json!({"participant_id": "a", "plugin": "scripted", "parameters": bulky})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    let (status, _) = anyone.post(&format!("/v1/sagas/{saga}/steps"), json!({"name": "a", "plugin": "scripted", "parameters": {"blob": "p".repeat(16 << 10)}})).await;
    assert_eq!(status, StatusCode::OK, "a step under the cap is added");
    // A saga's outputs together: at most 2 MiB. Two outputs of 900 KB fit; a third would pass
    // the cap, so it is not kept and the saga undoes what it did.
    let big = |name: &str| json!({"name": name, "plugin": "scripted", "retry_count": 0,
                                  "parameters": {"script": {"execute": {"do": "big_output", "bytes": 900_000}}}});
    let id = anyone.saga(json!([big("first"), big("second"), big("third")])).await;
    let (status, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    let summary = |doc: &Value| doc["steps"].as_array().map(|steps| steps.iter().map(|s| (s["state"].clone(), s["error"].clone())).collect::<Vec<_>>());
    assert_eq!((status, doc["state"].clone()), (StatusCode::OK, json!("compensated")), "{:?}", summary(&doc));
    assert_eq!(doc["steps"][0]["output"].as_str().map(str::len), Some(900_000), "the outputs within the cap are kept");
    assert!(doc["steps"][2].get("output").is_none_or(Value::is_null), "the output past the cap is not");
    let error = doc["steps"][2]["error"].as_str().unwrap();
    assert!(error.contains("past 2097152 bytes"), "{error}");
    server.kill().await;
});

on_every_store!(max_concurrent_counts_every_running_transaction, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &["--admin-token", ADMIN]).await;
    let one = tenant(&server, "one", json!({"limits": {"max_concurrent": 1}})).await;
    assert_eq!(one.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let slow = json!([{"name": "slow", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "sleep", "ms": 1500}}}}]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(one.saga(slow.clone()).await);
    }
    let one = Arc::new(one);
    let executes: Vec<_> = ids
        .iter()
        .map(|id| {
            let (one, path) = (one.clone(), format!("/v1/sagas/{id}/execute"));
            tokio::spawn(async move { one.post(&path, json!({"wait": false})).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for e in executes {
        let (status, body) = e.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "too_many_executions");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS]);
    // Creates that start at once count the same way, while the first one runs.
    let creates: Vec<_> = (0..5)
        .map(|_| {
            let (one, slow) = (one.clone(), slow.clone());
            tokio::spawn(async move { one.post("/v1/sagas", json!({"saga_name": "s", "steps": slow, "execute": true})).await })
        })
        .collect();
    for c in creates {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "one saga is still running: {body}");
    }
    let (_, listed) = one.get("/v1/sagas?limit=100").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 5, "a refused create created nothing");
    for id in &ids {
        one.saga_until(id, |d| d["state"] != "running").await;
    }
    let creates: Vec<_> = (0..5)
        .map(|_| {
            let (one, slow) = (one.clone(), slow.clone());
            tokio::spawn(async move { one.post("/v1/sagas", json!({"saga_name": "s", "steps": slow, "execute": true})).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in creates {
        statuses.push(c.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS]);
    // A failed saga runs again when resumed: that counts too.
    let (_, listed) = one.get("/v1/sagas?state=running").await;
    for doc in listed["sagas"].as_array().unwrap() {
        one.saga_until(doc["saga_id"].as_str().unwrap(), |d| d["state"] != "running").await;
    }
    let failing = one
        .saga(json!([
            {"name": "a", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"compensate": {"do": "fail"}}}},
            {"name": "b", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "fail"}}}}
        ]))
        .await;
    let (_, doc) = one.post(&format!("/v1/sagas/{failing}/execute"), json!({})).await;
    assert_eq!(doc["state"], "failed", "{doc}");
    let busy = one.saga(slow.clone()).await;
    assert_eq!(one.post(&format!("/v1/sagas/{busy}/execute"), json!({"wait": false})).await.0, StatusCode::ACCEPTED);
    let (status, err) = one.post(&format!("/v1/sagas/{failing}/resume"), json!({})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::TOO_MANY_REQUESTS, json!("too_many_executions")), "{err}");
    // A create that waits for its saga's end is counted, and answers the ended saga.
    one.saga_until(&busy, |d| d["state"] != "running").await;
    let quick = json!([{"name": "quick", "plugin": "scripted"}]);
    let (status, doc) = one.post("/v1/sagas", json!({"saga_name": "s", "steps": quick, "execute": true, "wait": true})).await;
    assert_eq!((status, doc["state"].clone()), (StatusCode::CREATED, json!("completed")), "{doc}");
    server.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_count_the_bytes_read_not_the_declared_length() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let small = tenant(&server, "small", json!({"limits": {"max_body_bytes": 1000}})).await;
    let chunked = |size: usize| {
        let body = json!({"saga_name": "s", "context": {"blob": "x".repeat(size)}}).to_string().into_bytes();
        let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> =
            body.chunks(100).map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c)))).collect();
        reqwest::Body::wrap(http_body_util::StreamBody::new(futures::stream::iter(frames)))
    };
    let send = |body: reqwest::Body| {
        client().post(format!("{}/v1/sagas", server.url)).bearer_auth(small.key.clone().unwrap()).header("content-type", "application/json").body(body).send()
    };
    let r = send(chunked(5000)).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "body_too_large");
    let r = send(chunked(500)).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_request_are_closed_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--max-connections", "64", "--header-timeout-ms", "500"]).await;
    let pid = server.child.id().unwrap();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut sockets = Vec::new();
    for _ in 0..600 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
        sockets.push(s);
    }
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(open < 64 + 100, "the server holds {open} descriptors with 600 half-open connections");
    let r = client().get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The half-open connections are closed by the server, not left to hang.
    for s in sockets.iter_mut().take(100) {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await.expect("the server closes it");
        assert!(matches!(read, Ok(0) | Err(_)) || read.as_ref().is_ok_and(|n| buf[..*n].starts_with(b"HTTP/1.1 408")), "{read:?}");
    }
    drop(sockets);
    // The store still opens files: the recovery loop and writes work.
    let (status, _) = anonymous(&server).post("/v1/sagas", json!({"saga_name": "after"})).await;
    assert_eq!(status, StatusCode::CREATED);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_router_refuses_is_answered_with_the_json_error_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let big_header = "h".repeat(200_000);
    let r = client().get(format!("{}/v1/sagas", server.url)).header("x-filler", big_header).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "headers_too_large");
    let long = format!("{}/v1/sagas/{}", server.url, "a".repeat(10_000));
    let r = client().get(long).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "uri_too_long");
    let r = client().delete(format!("{}/v1/sagas", server.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers().get("allow").is_some(), "the Allow header is kept");
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "method_not_allowed", "{err}");
    for path in ["/v1/sagas/%FF", "/v1/sagas/%00", "/v1/plugins/a%00b", "/v1/2pc/%00/history", "/v1/transactions/a%0Ab"] {
        let r = client().get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_path", "{path}: {err}");
    }
    let (_, created) = anonymous(&server).post("/v1/sagas", json!({"saga_name": "s"})).await;
    let id = created["saga_id"].as_str().unwrap();
    let r = client().post(format!("{}/v1/sagas/{id}/execute", server.url)).body("[true]").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "a JSON array is not an execute body");
    server.kill().await;
}

/// `wasmtx serve --listen 0.0.0.0:0 ARGS`: its first stdout line, or its exit status and stderr.
async fn serve_beyond_loopback(dir: &std::path::Path, args: &[&str]) -> Result<(tokio::process::Child, String), String> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtx"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("WASMTX_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    match lines.next_line().await.unwrap() {
        Some(line) => {
            let port = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().rsplit(':').next().unwrap().to_string();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((child, format!("http://127.0.0.1:{port}")))
        }
        None => {
            let output = child.wait_with_output().await.unwrap();
            Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_tenant_mode_beyond_loopback_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let refused = serve_beyond_loopback(dir.path(), &[]).await.map(|_| ()).unwrap_err();
    assert!(refused.contains("--allow-unauthenticated"), "{refused}");
    let (mut child, url) = serve_beyond_loopback(dir.path(), &["--admin-token", ADMIN]).await.unwrap();
    let r = client().get(format!("{url}/v1/sagas")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no tenant yet, and no anonymous access beyond loopback");
    child.kill().await.unwrap();
    let (mut child, url) = serve_beyond_loopback(dir.path(), &["--allow-unauthenticated"]).await.unwrap();
    let r = client().get(format!("{url}/v1/sagas")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_named_default_is_reserved_and_keys_are_checked_as_rfc_7235_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let anyone = anonymous(&server);
    let (_, made) = anyone.post("/v1/sagas", json!({"saga_name": "made-before-tenants"})).await;
    let (status, err) = admin(&server).post("/v1/admin/tenants", json!({"tenant_id": "default"})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("reserved_tenant_id")), "{err}");
    let acme = tenant(&server, "acme", json!({})).await;
    let (status, _) = acme.get(&format!("/v1/sagas/{}", made["saga_id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "single-tenant mode's work is nobody's to take");
    let key = acme.key.clone().unwrap();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = client().get(format!("{}/v1/sagas", server.url)).header("authorization", format!("{scheme} {key}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
    for wrong in ["x", "admin-secret-for-hostile-test", "admin-secret-for-hostile-tests-and-more"] {
        let r = client().post(format!("{}/v1/admin/tenants", server.url)).bearer_auth(wrong).json(&json!({"tenant_id": "z"})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    server.kill().await;
}

on_every_store!(nul_bytes_and_out_of_range_numbers_are_the_callers_errors, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &["--admin-token", ADMIN]).await;
    let anyone = anonymous(&server);
    let (_, created) = anyone.post("/v1/sagas", json!({"saga_name": "s"})).await;
    let id = created["saga_id"].as_str().unwrap().to_string();
    let huge = json!(9_223_372_036_854_775_808u64);
    let cases: Vec<(String, Value)> = vec![
        ("/v1/sagas".into(), json!({"saga_name": "a\u{0}b"})),
        ("/v1/sagas".into(), json!({"saga_name": "s", "timeout_ms": huge})),
        ("/v1/sagas".into(), json!({"saga_name": "s", "timeout_ms": u64::MAX})),
        ("/v1/2pc".into(), json!({"transaction_name": "a\u{0}"})),
        ("/v1/2pc".into(), json!({"transaction_name": "t", "prepare_timeout_ms": huge})),
        ("/v1/transactions".into(), json!({"transaction_name": "\u{0}"})),
        ("/v1/transactions".into(), json!({"transaction_name": "t", "requirements": {"timeout_ms": huge}})),
        (format!("/v1/sagas/{id}/steps"), json!({"name": "a\u{0}", "plugin": "payment"})),
        (format!("/v1/sagas/{id}/steps"), json!({"name": "x", "endpoint": "http://a\u{0}b/"})),
        (format!("/v1/sagas/{id}/steps"), json!({"name": "x", "endpoint": "http://a/", "timeout_ms": huge})),
    ];
    for (path, body) in cases {
        let (status, err) = anyone.post(&path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{path} {body}: {err}");
    }
    let r = client().put(format!("{}/v1/plugins/a%00b", server.url)).body(plugin_bytes(plugins::PAYMENT)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for path in [format!("/v1/sagas/%00"), format!("/v1/sagas/%00/history"), format!("/v1/2pc/%00"), "/v1/plugins/a%00b".into()] {
        let (status, err) = anyone.get(&path).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_path")), "{path}");
    }
    // A search's text and a cursor's id reach the store only once checked.
    let cursor_of = |position: &str| position.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let searches = [
        ("name=a%00b".to_string(), "invalid_query"),
        ("state=running%00".into(), "invalid_query"),
        ("kind=saga&name=%00".into(), "invalid_query"),
        (format!("cursor={}", cursor_of("1764590000123:saga-\0")), "invalid_cursor"),
    ];
    for (query, code) in searches {
        let (status, err) = anyone.get(&format!("/v1/search?{query}")).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!(code)), "{query}: {err}");
    }
    let (status, page) = anyone.get(&format!("/v1/search?name=s&cursor={}", cursor_of("9999999999999:saga-z"))).await;
    assert_eq!((status, page["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "a cursor this server could give out: {page}");
    // So do a bulk request's ids: one the store cannot hold refuses the request, before any
    // item is acted on.
    let items = json!({"items": [{"kind": "saga", "id": id}, {"kind": "saga", "id": "saga-\u{0}"}]});
    let (status, err) = anyone.post("/v1/bulk/cancel", items).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    let (_, doc) = anyone.get(&format!("/v1/sagas/{id}")).await;
    assert_eq!(doc["state"], "pending", "nothing of a refused bulk request was done: {doc}");
    let admin = admin(&server);
    let (status, err) = admin.post("/v1/admin/tenants", json!({"tenant_id": "a\u{0}"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    // A tenant's limits are bounded: a max_concurrent past what a count can be compared with
    // is refused, not wrapped.
    for max in [json!(0), json!(1_000_001), huge.clone(), json!(u64::MAX)] {
        let (status, err) = admin.post("/v1/admin/tenants", json!({"tenant_id": "wide", "limits": {"max_concurrent": max}})).await;
        assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{max}: {err}");
    }
    tenant(&server, "wide", json!({"limits": {"max_concurrent": 1_000_000}})).await;
    tenant(&server, "acme", json!({})).await;
    let (status, err) = admin.post("/v1/admin/tenants/%00/keys", json!({})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_path")), "{err}");
    let (status, err) = admin.send("DELETE", "/v1/admin/tenants/acme/keys/%00", None).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_path")), "{err}");
    server.kill().await;
});

on_every_store!(hostile_idempotency_keys_are_refused_or_kept_apart_and_each_answers_once, |url: String| async move {
    // The key becomes a stored row (its answer, written in the group commit beside other
    // writes): malformed keys are the caller's error and store nothing; a key full of quotes
    // and SQL is only text; two tenants' equal keys are two requests; keys racing each other
    // create one saga each.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &["--admin-token", ADMIN]).await;
    let (acme, other) = (tenant(&server, "acme", json!({})).await, tenant(&server, "other", json!({})).await);
    let create = |caller: &Caller, key: reqwest::header::HeaderValue, name: &str| {
        client()
            .post(format!("{}/v1/sagas", server.url))
            .bearer_auth(caller.key.as_deref().unwrap())
            .header("idempotency-key", key)
            .json(&json!({"saga_name": name}))
            .send()
    };
    let text = |k: &str| reqwest::header::HeaderValue::from_str(k).unwrap();
    let malformed = [
        text(&"k".repeat(256)),
        text(""),
        text("a\tb"),
        reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
    ];
    for key in malformed {
        let r = create(&acme, key.clone(), "s").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key:?}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_idempotency_key", "{key:?}: {err}");
    }
    let (_, listed) = acme.get("/v1/sagas").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 0, "a refused key created nothing");

    let prefix = "x'); DELETE FROM idempotency; --\"";
    let sly = format!("{prefix}{}", "%".repeat(255 - prefix.len()));
    assert_eq!(sly.len(), 255);
    let first: Value = create(&acme, text(&sly), "s").await.unwrap().json().await.unwrap();
    let again = create(&acme, text(&sly), "s").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the longest key answers its first answer again");
    let theirs = create(&other, text(&sly), "s").await.unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["saga_id"], first["saga_id"], "another tenant's equal key is another request");
    let (status, _) = other.get(&format!("/v1/sagas/{}", first["saga_id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "and never reaches the first tenant's saga");

    // Twenty keys, each sent twice at once: their answers share commits.
    let racing = (0..40).map(|i| create(&acme, text(&format!("race-{}", i / 2)), "r"));
    let mut answers = Vec::new();
    for r in futures::future::join_all(racing).await {
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        answers.push(r.json::<Value>().await.unwrap());
    }
    for pair in answers.chunks(2) {
        assert_eq!(pair[0]["saga_id"], pair[1]["saga_id"], "{pair:?}");
    }
    let (_, listed) = acme.get("/v1/sagas?limit=100").await;
    let names: Vec<&str> = listed["sagas"].as_array().unwrap().iter().map(|s| s["saga_name"].as_str().unwrap()).collect();
    assert_eq!((names.iter().filter(|n| **n == "r").count(), names.len()), (20, 21), "one saga per key");
    server.kill().await;
});

on_every_store!(a_keyed_retry_answers_the_first_answer_whatever_its_own_create_runs_into, |url: String| async move {
    // A keyed create goes to the store first and reads the stored answer only when the id is
    // taken or the create fails: a retry refused for the tenant's limit (its first create is
    // still running) or sent with a body that does not parse must still get the first
    // answer, or be told the key was used with another body, and create nothing.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &["--admin-token", ADMIN]).await;
    let one = tenant(&server, "one", json!({"limits": {"max_concurrent": 1}})).await;
    assert_eq!(one.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let slow = json!({"saga_name": "s", "execute": true,
        "steps": [{"name": "slow", "plugin": "scripted", "parameters": {"script": {"execute": {"do": "sleep", "ms": 1500}}}}]});
    let send = |body: Vec<u8>| {
        client()
            .post(format!("{}/v1/sagas", server.url))
            .bearer_auth(one.key.as_deref().unwrap())
            .header("idempotency-key", "order-1")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send(slow.to_string().into_bytes()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["state"], "running", "{first}");

    // The tenant runs its one transaction: a create that starts another is refused, but this
    // is the same request again.
    let (refused, _) = one.post("/v1/sagas", json!({"saga_name": "other", "execute": true})).await;
    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    let again = send(slow.to_string().into_bytes()).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the retry answers the first answer");

    for other in [b"{not json".to_vec(), json!({"saga_name": "t"}).to_string().into_bytes()] {
        let r = send(other.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&other));
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_reused");
    }
    let (_, listed) = one.get("/v1/sagas?limit=100").await;
    assert_eq!(listed["sagas"].as_array().unwrap().len(), 1, "one saga for the key: {listed}");
    server.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_names_one_request_per_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let send = |path: &str, body: Value| client().post(format!("{}{path}", server.url)).header("idempotency-key", "same-key").json(&body).send();
    let saga: Value = send("/v1/sagas", json!({"saga_name": "s"})).await.unwrap().json().await.unwrap();
    let r = send("/v1/2pc", json!({"transaction_name": "t"})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tpc: Value = r.json().await.unwrap();
    let id = tpc["transaction_id"].as_str().expect("the 2PC create answers a 2PC transaction");
    assert_ne!(Some(id), saga["saga_id"].as_str());
    let (status, doc) = anonymous(&server).get(&format!("/v1/2pc/{id}")).await;
    assert_eq!((status, doc["transaction_name"].clone()), (StatusCode::OK, json!("t")));
    let again: Value = send("/v1/sagas", json!({"saga_name": "s"})).await.unwrap().json().await.unwrap();
    assert_eq!(again, saga, "the saga create's key still answers the saga");
    server.kill().await;
}

on_every_store!(plugin_uploads_succeed_while_everything_else_writes, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &[]).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop) = (server.url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = client().post(format!("{url}/v1/sagas")).json(&json!({"saga_name": "load", "execute": true})).send().await.unwrap();
                    assert_eq!(r.status(), StatusCode::CREATED);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let bytes = plugin_bytes(plugins::PAYMENT);
    for i in 0..10 {
        let r = client().put(format!("{}/v1/plugins/p{i}", server.url)).body(bytes.clone()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "upload {i}: {}", r.text().await.unwrap());
    }
    let concurrent: Vec<_> = (0..4)
        .map(|i| {
            let (url, bytes) = (format!("{}/v1/plugins/c{i}", server.url), bytes.clone());
            tokio::spawn(async move { client().put(url).body(bytes).send().await.unwrap().status() })
        })
        .collect();
    for c in concurrent {
        assert_eq!(c.await.unwrap(), StatusCode::CREATED);
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    let (_, list) = anonymous(&server).get("/v1/plugins").await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 14);
    server.kill().await;
});

/// `component` with a custom section naming `n` appended: the same plugin, other bytes (a
/// new version when uploaded).
fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"wasmtx-test-variant";
    let payload = n.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 lengths");
    let mut bytes = component.to_vec();
    bytes.extend([0, size as u8, name.len() as u8]);
    bytes.extend(name);
    bytes.extend(payload);
    bytes
}

on_every_store!(a_plugin_swapped_under_load_serves_the_sagas_started_after_each_swap, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &[]).await;
    let anyone = anonymous(&server);
    let scripted = plugin_bytes(plugins::SCRIPTED);
    let upload = |n: u32| {
        let (url, bytes) = (format!("{}/v1/plugins/x", server.url), variant(&scripted, n));
        async move {
            let r = client().put(url).body(bytes).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, StatusCode::CREATED, "upload {n}: {body}");
            body["version"].as_u64().unwrap()
        }
    };
    assert_eq!(upload(1).await, 1);
    // A saga that started on version 1 and runs across every swap: its plugin step comes
    // after an HTTP step that answers only once the swaps are done.
    let gate = common::HttpParticipant::start(common::Script(
        [("go".to_string(), vec![common::Answer::Held(200, json!({"ok": true}))])].into(),
    ))
    .await;
    let pinned = anyone.saga(json!([{"name": "wait", "endpoint": gate.url, "action": "go", "timeout_ms": 300_000}, {"name": "after", "plugin": "x"}])).await;
    assert_eq!(anyone.post(&format!("/v1/sagas/{pinned}/execute"), json!({"wait": false})).await.0, StatusCode::ACCEPTED);
    // Sagas on x, one after another from four clients: each is started after the version
    // last answered, and must run that version or a newer one.
    let published = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let (url, published, stop) = (server.url.clone(), published.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ran = 0;
                while !stop.load(Ordering::SeqCst) {
                    let at_least = published.load(Ordering::SeqCst);
                    let saga = json!({"saga_name": "load", "steps": [{"name": "s", "plugin": "x"}], "execute": true, "wait": true});
                    let r = client().post(format!("{url}/v1/sagas")).json(&saga).send().await.unwrap();
                    let doc: Value = r.json().await.unwrap();
                    assert_eq!(doc["state"], "completed", "{doc}");
                    let version: u64 = doc["steps"][0]["plugin_version"].as_str().unwrap().strip_prefix("x@").unwrap().parse().unwrap();
                    assert!(version >= at_least, "a saga started after version {at_least} was published ran version {version}");
                    ran += 1;
                }
                ran
            })
        })
        .collect();
    for n in 2..=4 {
        assert_eq!(upload(n).await, n as u64);
        published.store(n as u64, Ordering::SeqCst);
    }
    // Uploads of the same name at once: each its own version.
    let (a, b) = tokio::join!(upload(5), upload(6));
    let mut versions = [a, b];
    versions.sort();
    assert_eq!(versions, [5, 6]);
    published.store(6, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for r in runners {
        assert!(r.await.unwrap() > 0, "every client ran sagas during the swaps");
    }
    gate.release();
    let doc = anyone.saga_until(&pinned, |d| d["state"] != "running").await;
    assert_eq!(doc["state"], "completed", "{doc}");
    assert_eq!(doc["steps"][1]["plugin_version"], "x@1", "a running saga keeps the version it started with");
    let (_, listed) = anyone.get("/v1/plugins/x").await;
    assert_eq!(listed["versions"].as_array().unwrap().len(), 6, "{listed}");
    server.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_what_was_done_once_it_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let acme = tenant(&server, "acme", json!({})).await;
    assert_eq!(acme.post("/v1/sagas/saga-nope/execute", json!({})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(acme.post("/v1/sagas/saga-nope/cancel", json!({})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(acme.post("/v1/2pc/nope/execute", json!({})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(acme.post("/v1/sagas/saga-nope/steps", json!({"name": "x", "endpoint": "http://api.example.com"})).await.0, StatusCode::NOT_FOUND);
    let (_, audit) = acme.get("/v1/audit").await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["tenant_created"], "failed requests left no entries: {audit}");
    let id = acme.saga(json!([])).await;
    assert_eq!(acme.post(&format!("/v1/sagas/{id}/execute"), json!({})).await.0, StatusCode::OK);
    let (_, audit) = acme.get("/v1/audit").await;
    let executes = audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "saga_execute").count();
    assert_eq!(executes, 1, "{audit}");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_memory_share_bounds_its_concurrent_calls() {
    use wasmtx::model::CallContext;
    use wasmtx::plugin::{CallLimits, CallTags, Catalog, HostConfig, HostShare, PluginHost};
    let host = PluginHost::new(HostConfig { max_concurrent_instances: 16, cache_dir: Some(wasmtx_testkit::compiled_cache_dir()), ..HostConfig::default() }).unwrap();
    let registry = Catalog::in_memory(host.clone());
    let (scripted, _) = registry.add("t", "scripted", &plugin_bytes(plugins::SCRIPTED)).await.unwrap();
    // 32 MiB calls in a 64 MiB share: two at a time.
    host.set_share("small", HostShare { max_instances: None, max_memory_bytes: Some(64 << 20) });
    let limits = CallLimits { memory_bytes: 32 << 20, ..CallLimits::default() };
    let most_at_once = |tenant: &'static str| {
        let (host, component, limits) = (host.clone(), scripted.component.clone(), limits.clone());
        async move {
            let calls: Vec<_> = (0..6)
                .map(|i| {
                    let (host, component, limits) = (host.clone(), component.clone(), limits.clone());
                    tokio::spawn(async move {
                        let ctx = CallContext {
                            tenant: tenant.into(),
                            transaction_id: format!("tx-{i}"),
                            step: "s".into(),
                            action: "s".into(),
                            attempt: 1,
                            idempotency_key: format!("tx-{i}"),
                            input: json!({"script": {"execute": {"do": "sleep", "ms": 300}}}).to_string(),
                            deadline_ms: 30_000,
                            traceparent: None,
                        };
                        let tags = CallTags { tenant: tenant.into(), ..CallTags::default() };
                        host.execute(&component, ctx, &limits, tags).await
                    })
                })
                .collect();
            let mut most = 0;
            while calls.iter().any(|c| !c.is_finished()) {
                most = most.max(host.instances_in_use());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for c in calls {
                assert!(matches!(c.await.unwrap(), Ok(wasmtx::model::Outcome::Success(_))), "every call completes");
            }
            most
        }
    };
    assert_eq!(most_at_once("small").await, 2, "the share admits two 32 MiB calls at a time");
    assert!(most_at_once("unbounded").await > 2, "a tenant without a share is bounded by the pool only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_too_heavy_for_two_at_once_waits_for_room_and_one_too_heavy_for_the_pool_is_refused() {
    use wasmtx::model::{CallContext, Outcome};
    use wasmtx::plugin::{CallLimits, CallTags, Catalog, CatalogError, HostConfig, LoadError, PluginHost};
    let pool = |instances: u32| {
        PluginHost::new(HostConfig { max_concurrent_instances: instances, cache_dir: Some(wasmtx_testkit::compiled_cache_dir()), ..HostConfig::default() }).unwrap()
    };
    let python = plugin_bytes(plugins::PYTHON_INVENTORY);
    // The Python component instantiates more core modules than a pool keeps per instance
    // slot (8): one slot's worth of them is too few, and it is refused when loaded.
    let refused = Catalog::in_memory(pool(1)).add("t", "inventory", &python).await.map(drop).unwrap_err();
    assert!(matches!(&refused, CatalogError::Load(LoadError::Invalid(why)) if why.contains("exceeds the configured maximum")), "{refused}");
    // Two slots' worth fit one call at a time: the others wait for the core instances, not
    // only for a slot, and none fails.
    let host = pool(2);
    let (inventory, _) = Catalog::in_memory(host.clone()).add("t", "inventory", &python).await.unwrap();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let (host, component) = (host.clone(), inventory.component.clone());
            tokio::spawn(async move {
                let ctx = CallContext {
                    tenant: "t".into(),
                    transaction_id: format!("tx-{i}"),
                    step: "reserve".into(),
                    action: "reserve".into(),
                    attempt: 1,
                    idempotency_key: format!("tx-{i}:reserve"),
                    input: json!({"sku": "book", "quantity": 1}).to_string(),
                    deadline_ms: 30_000,
                    traceparent: None,
                };
                host.execute(&component, ctx, &CallLimits::default(), CallTags { tenant: "t".into(), ..CallTags::default() }).await
            })
        })
        .collect();
    for c in calls {
        let outcome = c.await.unwrap();
        assert!(matches!(outcome, Ok(Outcome::Success(_))), "{outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_memory_share_set_by_the_admin_bounds_the_tenants_concurrent_calls() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Misbehaving::start().await;
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN, "--allow-private-endpoints"]).await;
    // Calls capped at 32 MiB in a share of 64 MiB: two at a time, in a pool of 1,000.
    let limits = json!({"memory_mb": 32, "max_plugin_memory_mb": 64});
    let small = tenant(&server, "small", json!({"limits": limits, "allowed_hosts": [format!("127.0.0.1:{}", holder.port())]})).await;
    assert_eq!(small.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let hold = json!([{"name": "hold", "plugin": "scripted", "retry_count": 0,
                       "parameters": {"script": {"execute": {"do": "http_get", "url": format!("{}/hold/400", holder.url)}}}}]);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (status, created) = small.post("/v1/sagas", json!({"saga_name": "s", "steps": hold, "execute": true})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["saga_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let doc = small.saga_until(id, |d| d["state"] != "running").await;
        assert_eq!(doc["state"], "completed", "a call beyond the share waits: {doc}");
    }
    assert_eq!(holder.most_held(), 2, "the share admitted two 32 MiB calls at a time");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_answered_and_its_saga_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Misbehaving::start().await;
    let server = Server::start(dir.path(), None, &["--request-timeout-ms", "1000"]).await;
    let anyone = anonymous(&server);
    let id = anyone.saga(json!([{"name": "slow", "endpoint": format!("{}/slow/3000", slow.url), "action": "go"}])).await;
    let (status, err) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({"wait": true})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("request_timeout")), "{err}");
    let doc = anyone.saga_until(&id, |d| d["state"] != "running").await;
    assert_eq!(doc["state"], "completed", "{doc}");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_gets_408_and_a_client_that_never_reads_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--body-timeout-ms", "300", "--write-stall-ms", "300"]).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    // Headers promise 100 bytes; 10 arrive.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/sagas HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"saga_na").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut answer)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"), "{answer}");
    // Requests pipelined without ever reading an answer: once the answers fill the socket, the
    // server's writes stall and it closes the connection, which fails the writer.
    let mut greedy = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let requests = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(400_000);
    let wrote = tokio::time::timeout(Duration::from_secs(60), greedy.write_all(&requests)).await.expect("the server closed the connection");
    assert!(wrote.is_err(), "the server disconnected a client that does not read");
    let (status, _) = anonymous(&server).get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_transactions_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let (acme, globex) = (tenant(&server, "acme", json!({})).await, tenant(&server, "globex", json!({})).await);
    let (status, _) = acme.post("/v1/2pc", json!({"transaction_name": "mine"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(acme.post("/v1/sagas", json!({"saga_name": "mine"})).await.0, StatusCode::CREATED);
    let (_, theirs) = globex.get("/v1/2pc").await;
    assert_eq!(theirs["transactions"], json!([]), "{theirs}");
    let (_, theirs) = globex.get("/v1/sagas").await;
    assert_eq!(theirs["sagas"], json!([]), "{theirs}");
    let (_, mine) = acme.get("/v1/2pc").await;
    assert_eq!(mine["transactions"].as_array().unwrap().len(), 1);
    server.kill().await;
}

on_every_store!(json_as_deeply_nested_as_a_body_may_be_is_stored_and_read_back, |url: String| async move {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database(&url), &[]).await;
    let anyone = anonymous(&server);
    assert_eq!(anyone.push("payment", plugins::PAYMENT).await.0, StatusCode::CREATED);
    // The body nests 126 levels, within serde_json's 128; the saga's document keeps the
    // parameters 3 levels deeper, which must not make the saga unreadable once stored.
    let deep: Value = serde_json::from_str(&format!("{}{}", "[".repeat(124), "]".repeat(124))).unwrap();
    let (_, created) = anyone.post("/v1/sagas", json!({"saga_name": "deep"})).await;
    let id = created["saga_id"].as_str().unwrap().to_string();
    let (status, added) = anyone.post(&format!("/v1/sagas/{id}/steps"), json!({"name": "s", "plugin": "payment", "parameters": {"a": deep}})).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    for path in [format!("/v1/sagas/{id}"), format!("/v1/sagas/{id}/history"), "/v1/sagas".to_string(), "/v1/search".to_string()] {
        let answer = client().get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{path}: {}", answer.text().await.unwrap());
    }
    server.kill().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_that_once_broke_the_server_are_answered_as_the_callers_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &[]).await;
    let anyone = anonymous(&server);
    // A chain of 15,000 dependencies (about 630 KB, within the body cap): refused for its
    // number of steps before anything walks it, and the server lives on.
    let steps: Vec<Value> = (0..15_000).map(|i| json!({"name": format!("a{i}"), "depends_on": [format!("a{}", i + 1)]})).collect();
    let (status, err) = anyone.post("/v1/sagas", json!({"saga_name": "chain", "steps": steps})).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("at most 100 steps"), "{err}");
    // A managed participant two-phase commit could not take is refused when added, not when
    // the pattern is chosen.
    let (_, m) = anyone.post("/v1/transactions", json!({"transaction_name": "m"})).await;
    let managed = m["transaction_id"].as_str().unwrap().to_string();
    let spaced = json!({"participant_id": "bank a", "endpoint": "https://bank.example/", "supports_2pc": true});
    let (status, err) = anyone.post(&format!("/v1/transactions/{managed}/participants"), spaced).await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("without spaces"), "{err}");
    // A cursor whose second pair of bytes cuts a character in two.
    let (status, err) = anyone.get("/v1/search?cursor=a%C3%A9a").await;
    assert_eq!((status, err["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_cursor")), "{err}");
    // Methods a client makes up are counted as one series, not one each.
    for i in 0..5 {
        let answer = client().request(format!("X{i:04}").parse().unwrap(), format!("{}/healthz", server.url)).send().await.unwrap();
        assert!(answer.status().is_client_error(), "{}", answer.status());
    }
    let metrics = client().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("X0001") && metrics.contains("method=\"other\""), "{metrics}");
    let (status, _) = anyone.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "the server lives on");
    server.kill().await;
}

/// `GET /endless`: its head and a first byte at once, then a body that never ends.
async fn endless() -> Response {
    let first = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"[")) });
    Body::from_stream(first.chain(futures::stream::pending())).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_keeping_answers_whose_bodies_never_end_holds_eight_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let endless = Misbehaving::start().await;
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN, "--allow-private-endpoints"]).await;
    let anyone = tenant(&server, "keeper", json!({"allowed_hosts": [format!("127.0.0.1:{}", endless.port())]})).await;
    assert_eq!(anyone.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let keep = json!({"do": "http_keep", "times": 12, "url": format!("{}/endless", endless.url)});
    let id = anyone.saga(json!([{"name": "keep", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": keep}}}])).await;
    let (_, doc) = anyone.post(&format!("/v1/sagas/{id}/execute"), json!({})).await;
    assert_eq!(doc["state"], "completed", "{doc}");
    // An answer counts against the call's 8 requests in flight until its body is dropped.
    let output = &doc["steps"][0]["output"];
    assert_eq!((output["answered"].clone(), output["denied"].clone()), (json!(8), json!(4)), "{doc}");
    assert!(output["first_denial"].as_str().unwrap().contains("HttpRequestDenied"), "{doc}");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_site_cannot_use_a_server_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let port = server.url.rsplit(':').next().unwrap().to_string();
    // What a page may send without asking: a `text/plain` POST, with its own origin.
    let post = |origin: Option<String>, host: Option<String>| {
        let mut r = client().post(format!("{}/v1/sagas", server.url)).header("content-type", "text/plain").body(r#"{"saga_name": "csrf"}"#);
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        if let Some(host) = host {
            r = r.header("host", host);
        }
        r.send()
    };
    let code = |r: reqwest::Response| async move { (r.status(), r.json::<Value>().await.unwrap_or_default()["error"]["code"].clone()) };
    let refused = post(Some("https://evil.example".into()), None).await.unwrap();
    assert_eq!(code(refused).await, (StatusCode::FORBIDDEN, json!("cross_origin")));
    // A page that re-pointed its own name at 127.0.0.1 is same-origin with it: its Host
    // gives it away.
    let rebound = post(Some(format!("http://evil.example:{port}")), Some(format!("evil.example:{port}"))).await.unwrap();
    assert_eq!(code(rebound).await, (StatusCode::FORBIDDEN, json!("foreign_host")));
    // An opaque origin (a sandboxed frame) the browser does not vouch for as same-origin.
    let sandboxed = client().post(format!("{}/v1/sagas", server.url)).header("origin", "null").header("sec-fetch-site", "cross-site").body("{}").send().await.unwrap();
    assert_eq!(code(sandboxed).await, (StatusCode::FORBIDDEN, json!("cross_origin")));
    // The server's own pages (a form posted under `no-referrer` has origin `null`, vouched for
    // as same-origin), and clients that are not browsers, are served.
    for origin in [Some(server.url.clone()), None] {
        let served = post(origin.clone(), None).await.unwrap();
        assert_eq!(served.status(), StatusCode::CREATED, "{origin:?}");
    }
    let own_form = client().post(format!("{}/v1/sagas", server.url)).header("origin", "null").header("sec-fetch-site", "same-origin").body(r#"{"saga_name": "own"}"#).send().await.unwrap();
    assert_eq!(own_form.status(), StatusCode::CREATED);
    // Once a tenant exists every request needs its key, which a page does not hold.
    tenant(&server, "acme", json!({})).await;
    let keyless = post(Some("https://evil.example".into()), None).await.unwrap();
    assert_eq!(code(keyless).await, (StatusCode::UNAUTHORIZED, json!("unauthorized")));
    server.kill().await;
}
