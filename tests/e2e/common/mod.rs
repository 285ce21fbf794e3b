//! Helpers shared by the end-to-end tests: fresh stores of both kinds, engines on them, the
//! real binary as a child process, and a scripted HTTP participant.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use wasmtx::participant::Invoker;
use wasmtx::plugin::{CallLimits, Catalog, ComponentCache, HostConfig, PluginHost};
use wasmtx::saga::SagaEngine;
use wasmtx::txn::EngineConfig;
use wasmtx::store::Store;
use wasmtx::tpc::TpcEngine;
use wasmtx::manager::Manager;

pub mod redis;

pub const TENANT: &str = "default";
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh empty database URL of the given kind; the guard keeps a SQLite file alive.
pub async fn fresh_store_url(kind: &str) -> (String, Option<tempfile::TempDir>) {
    match kind {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            (format!("sqlite://{}", dir.path().join("wasmtx.db").display()), Some(dir))
        }
        "postgres" => (fresh_postgres().await, None),
        "memory" => (format!("memory://{}", uuid::Uuid::new_v4().simple()), None),
        "redis" => (redis::standalone_url(), None),
        "redis_cluster" => (redis::cluster_url(), None),
        other => panic!("unknown store kind {other}"),
    }
}

/// Creates a new database on the local Postgres, named with the second it was made. Fails
/// (never skips): CI must have it, and `.ci/run` starts it.
///
/// A test leaves its database behind, and the machine's PostgreSQL outlives the runs (a run
/// made ~115, 7 MB or more each): the first call of each test process drops the test
/// databases older than `STALE_AFTER`, those of test processes that have ended (cargo runs
/// the test binaries one after the other, none for that long).
pub async fn fresh_postgres() -> String {
    use sqlx::Connection;
    let admin = std::env::var("WASMTX_TEST_POSTGRES").unwrap_or_else(|_| ADMIN_URL.to_string());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for these tests and is not reachable at {admin}: {e} (start it, see README)")
    });
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SWEPT.swap(true, Ordering::SeqCst) {
        drop_stale_databases(&mut conn).await;
    }
    let name = format!("{TEST_DATABASE}{}_{}", unix_secs(), uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// What every test database's name starts with.
const TEST_DATABASE: &str = "wasmtx_test_";
/// Age past which a test database is an earlier process's.
const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Drops the test databases made more than `STALE_AFTER` ago, and those whose name carries
/// no time (made before names had one).
async fn drop_stale_databases(conn: &mut sqlx::PgConnection) {
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(TEST_DATABASE)
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
    let now = unix_secs();
    for name in names {
        let made = name.strip_prefix(TEST_DATABASE).and_then(|rest| rest.split_once('_')).and_then(|(secs, _)| secs.parse::<u64>().ok());
        if made.is_none_or(|made| now.saturating_sub(made) > STALE_AFTER.as_secs()) {
            // Another process sweeping at once may have dropped it: that is fine.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut *conn).await;
        }
    }
}

pub struct Node {
    pub store: Store,
    pub catalog: Catalog,
    pub sagas: SagaEngine,
    pub tpc: TpcEngine,
    pub manager: Manager,
}

pub fn host() -> PluginHost {
    static HOST: std::sync::OnceLock<PluginHost> = std::sync::OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(HostConfig { max_concurrent_instances: 200, cache_dir: Some(wasmtx_testkit::compiled_cache_dir()), ..HostConfig::default() }).unwrap())
        .clone()
}

pub async fn node(url: &str) -> Node {
    let store = Store::open(url).await.unwrap();
    let catalog = Catalog::new(store.clone(), ComponentCache::new(host()));
    let invoker = Invoker::new(host(), CallLimits::default());
    let config = EngineConfig::default();
    let sagas = SagaEngine::new(store.clone(), catalog.clone(), invoker.clone(), config.clone());
    let tpc = TpcEngine::new(store.clone(), catalog.clone(), invoker, config);
    let manager = Manager::new(store.clone(), catalog.clone(), sagas.clone(), tpc.clone());
    Node { store, catalog, sagas, tpc, manager }
}

/// Generates `mod $name { sqlite, postgres, memory, redis, redis_cluster }` running the same async scenario on every store
/// the project has: a new backend adds its test function here and its kind to
/// `fresh_store_url`, and the whole end-to-end suite runs on it.
#[macro_export]
macro_rules! on_every_store {
    ($name:ident, $scenario:expr) => {
        $crate::on_stores!([sqlite, postgres, memory, redis, redis_cluster], $name, $scenario);
    };
}

/// `on_every_store!` for the stores that outlive a process: scenarios that restart a server
/// or reopen a database.
#[macro_export]
macro_rules! on_every_durable_store {
    ($name:ident, $scenario:expr) => {
        $crate::on_stores!([sqlite, postgres, redis, redis_cluster], $name, $scenario);
    };
}

/// The stores whose retention the sweeper does (on Redis keys expire by themselves).
#[macro_export]
macro_rules! on_every_swept_store {
    ($name:ident, $scenario:expr) => {
        $crate::on_stores!([sqlite, postgres, memory, redis, redis_cluster], $name, $scenario);
    };
}

/// For scenarios that reach into a SQL database itself (migrations, a refusing trigger).
#[macro_export]
macro_rules! on_every_sql_store {
    ($name:ident, $scenario:expr) => {
        $crate::on_stores!([sqlite, postgres], $name, $scenario);
    };
}

/// `mod $name` with one test of `$scenario` per store kind listed.
#[macro_export]
macro_rules! on_stores {
    ([$($kind:ident),+], $name:ident, $scenario:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $($crate::store_test!($kind, $scenario);)+
        }
    };
}

/// One test of `$scenario` on a fresh store of kind `$kind`.
#[macro_export]
macro_rules! store_test {
    ($kind:ident, $scenario:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $kind() {
            let (url, _guard) = $crate::common::fresh_store_url(stringify!($kind)).await;
            ($scenario)(url).await;
        }
    };
}

/// What a test server is given as its database: nothing for SQLite (it keeps the file in its
/// data directory), the URL otherwise.
pub fn server_db(url: &str) -> Option<&str> {
    (!url.starts_with("sqlite")).then_some(url)
}

/// What an HTTP participant should answer, per action, in order; the last answer repeats.
#[derive(Clone, Default)]
pub struct Script(pub HashMap<String, Vec<Answer>>);

#[derive(Clone)]
pub enum Answer {
    Status(u16, Value),
    /// Tell the test the call arrived, then never answer.
    Hang,
    /// Do the work (the call is recorded), then answer after this many ms.
    Late(u64, u16, Value),
    /// Do the work, then answer once the test calls `HttpParticipant::release`.
    Held(u16, Value),
    /// Do the work, then lose the connection partway through the answer.
    Drop,
}

/// An HTTP participant for tests: answers as scripted and records every call it receives.
#[derive(Clone)]
pub struct HttpParticipant {
    pub url: String,
    pub calls: Arc<Mutex<Vec<Value>>>,
    pub hung: Arc<Notify>,
    /// Opened by `release`: the `Held` calls answer.
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// Calls being answered now, and the most there ever were at once.
    in_flight: Arc<(AtomicUsize, AtomicUsize)>,
}

impl HttpParticipant {
    pub async fn start(script: Script) -> HttpParticipant {
        #[derive(Clone)]
        struct S {
            script: Arc<Script>,
            calls: Arc<Mutex<Vec<Value>>>,
            hung: Arc<Notify>,
            gate: Arc<tokio::sync::watch::Sender<bool>>,
            in_flight: Arc<(AtomicUsize, AtomicUsize)>,
        }
        /// Counts a call in flight until its answer is given (or the caller gave up on it).
        struct InFlight(Arc<(AtomicUsize, AtomicUsize)>);
        impl Drop for InFlight {
            fn drop(&mut self) {
                self.0.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        async fn handle(State(s): State<S>, UrlPath(action): UrlPath<String>, headers: axum::http::HeaderMap, Json(body): Json<Value>) -> Response {
            let now = s.in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
            s.in_flight.1.fetch_max(now, Ordering::SeqCst);
            let _counted = InFlight(s.in_flight.clone());
            let n = {
                let mut calls = s.calls.lock().unwrap();
                let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
                calls.push(json!({"path": action, "body": body, "traceparent": traceparent}));
                calls.iter().filter(|c| c["path"] == action).count()
            };
            let answers = s.script.0.get(&action).cloned().unwrap_or_default();
            let answer = answers.get(n - 1).or(answers.last()).cloned().unwrap_or(Answer::Status(200, json!({"ok": true})));
            match answer {
                Answer::Status(code, body) => (StatusCode::from_u16(code).unwrap(), Json(body)).into_response(),
                Answer::Late(ms, code, body) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
                }
                Answer::Held(code, body) => {
                    let _ = s.gate.subscribe().wait_for(|open| *open).await;
                    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
                }
                Answer::Drop => {
                    // The body breaks off after its first bytes: the server closes the connection.
                    let chunks = [Ok(bytes::Bytes::from_static(b"{\"do")), Err(std::io::Error::other("connection lost"))];
                    (StatusCode::OK, axum::body::Body::from_stream(futures::stream::iter(chunks))).into_response()
                }
                Answer::Hang => {
                    s.hung.notify_one();
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
        let calls = Arc::new(Mutex::new(Vec::new()));
        let hung = Arc::new(Notify::new());
        let gate = Arc::new(tokio::sync::watch::Sender::new(false));
        let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let state = S { script: Arc::new(script), calls: calls.clone(), hung: hung.clone(), gate: gate.clone(), in_flight: in_flight.clone() };
        async fn handle_get(State(s): State<S>, UrlPath(action): UrlPath<String>, headers: axum::http::HeaderMap) -> Json<Value> {
            let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
            s.calls.lock().unwrap().push(json!({"path": action, "body": {"method": "GET"}, "traceparent": traceparent}));
            Json(json!({"pong": true}))
        }
        let app = Router::new().route("/{action}", post(handle).get(handle_get)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HttpParticipant { url, calls, hung, gate, in_flight }
    }

    /// Lets every `Held` call answer, now and from now on.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// The most calls this participant was answering at once.
    pub fn most_at_once(&self) -> usize {
        self.in_flight.1.load(Ordering::SeqCst)
    }

    /// Waits until a call is hanging here (fails the test after 60 s rather than hang it).
    pub async fn until_hung(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.hung.notified())
            .await
            .expect("no call reached the hanging participant within 60 s");
    }

    /// Calls received for `action`.
    /// The `traceparent` header of each call to `action`, in order.
    pub fn traceparents(&self, action: &str) -> Vec<Option<String>> {
        self.calls.lock().unwrap().iter().filter(|c| c["path"] == action).map(|c| c["traceparent"].as_str().map(str::to_string)).collect()
    }

    pub fn calls_to(&self, action: &str) -> Vec<Value> {
        self.calls.lock().unwrap().iter().filter(|c| c["path"] == action).map(|c| c["body"].clone()).collect()
    }
}

/// A `wasmtx serve` child process.
pub struct Server {
    pub child: tokio::process::Child,
    pub url: String,
}

impl Server {
    pub async fn start(data_dir: &Path, database_url: Option<&str>, extra: &[&str]) -> Server {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtx"));
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(data_dir).args(extra);
        match database_url {
            Some(url) => cmd.env("DATABASE_URL", url),
            None => cmd.env_remove("DATABASE_URL"),
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("starting wasmtx serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("wasmtx serve did not start within 60 s")
            .unwrap()
            .expect("wasmtx serve exited before listening");
        let url = first.split_whitespace().find(|w| w.starts_with("http://")).expect("listening line").to_string();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, url }
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// Polls GET `url` until `done(doc)` holds (the document is the observable end state).
pub async fn wait_until(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = client().get(url).send().await
            && let Ok(doc) = r.json::<Value>().await
            && done(&doc)
        {
            return doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what} at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Talks to a server as one tenant (its API key), as the admin (the admin token) or anonymously.
pub struct Caller {
    pub url: String,
    pub key: Option<String>,
}

impl Caller {
    pub fn new(server: &Server, key: Option<String>) -> Caller {
        Caller { url: server.url.clone(), key }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = client().request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(key) = &self.key {
            r = r.bearer_auth(key);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send("POST", path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send("GET", path, None).await
    }

    /// Uploads the plugin built at `path` as `name`.
    pub async fn push(&self, name: &str, path: &str) -> (StatusCode, Value) {
        let mut r = client().put(format!("{}/v1/plugins/{name}", self.url)).body(wasmtx_testkit::plugin_bytes(path));
        if let Some(key) = &self.key {
            r = r.bearer_auth(key);
        }
        let r = r.send().await.unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}
