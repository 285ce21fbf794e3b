//! `wasmtx bench fleet`: several `wasmtx serve` processes on one PostgreSQL under load, one
//! SIGKILLed mid-run and restarted, then the end checked against the guarantees of DESIGN.md:
//! every transaction ends, each 2PC decision is taken once, no two coordinators drive one
//! transaction at the same time, and no completed step is executed again. With `--servers 1`,
//! one coordinator runs the same load under the same checks, not killed: the figure a fleet's
//! is compared with.
//!
//! The participants are HTTP endpoints served by this process, so every call a coordinator
//! makes is seen and recorded — with its idempotency key, its phase and the calling node
//! (`Wasmtx-Node`) — and can be compared with the journal in the database afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::http1::Pool;
use super::report::{Report, cpu_ms_per, cpu_time_of, percentile, round1, round2};
use crate::saga::SagaState;
use crate::store::now_ms;
use crate::tpc::TpcState;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long one transaction may take, crash and takeover included, before the run fails.
const TX_DEADLINE: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct FleetArgs {
    /// Coordinators to start. With 1, nothing is killed: the figure a fleet's is compared with,
    /// the same client and checks against one coordinator.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Transactions in all (half sagas of 3 steps, half 2PC with 3 participants).
    #[arg(long, default_value_t = 600)]
    count: usize,
    /// Transactions in flight at once, spread over the servers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// A PostgreSQL server (the run creates a fresh database on it and drops it afterwards), or
    /// a Redis server or cluster (redis://…, redis+cluster://…; the run uses a fresh key
    /// prefix, whose keys it leaves for inspection).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_ADMIN_URL)]
    database_url: String,
    /// Lease of each coordinator, in ms: how soon survivors take over a dead one's work.
    #[arg(long, default_value_t = 1_000)]
    lease_ms: u64,
    /// How long each participant call takes, in ms (a window for the kill to land in).
    #[arg(long, default_value_t = 2)]
    participant_delay_ms: u64,
    /// Keep the run's database for inspection.
    #[arg(long)]
    keep_database: bool,
}

/// One call a coordinator made to a participant.
#[derive(Debug, Clone)]
struct Call {
    at_ms: i64,
    transaction_id: String,
    key: String,
    phase: String,
    node: String,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// Runs the fleet; returns whether every check passed.
pub async fn bench_fleet(report: &mut Report, args: FleetArgs) -> anyhow::Result<bool> {
    anyhow::ensure!((1..=16).contains(&args.servers), "--servers must be 1-16 (one is killed when there are several)");
    anyhow::ensure!(args.count >= 2 && args.concurrency >= 1, "--count must be at least 2, --concurrency at least 1");
    anyhow::ensure!(
        crate::store::Store::is_shared(&args.database_url),
        "the fleet shares one store: --database-url postgres://…, redis://… or redis+cluster://…"
    );
    let scratch_dir = std::env::temp_dir().join(format!("wasmtx-fleet-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch_dir)?;
    let store = crate::store::Scratch::create(&args.database_url)
        .await
        .with_context(|| format!("making a fresh store beside {}", args.database_url))?;
    report.add("store", store.described.split(' ').next().unwrap_or("store"), store.described.clone());
    let result = run(report, &args, &scratch_dir, &store.url).await;
    if !args.keep_database {
        let _ = store.remove().await;
    }
    let _ = std::fs::remove_dir_all(&scratch_dir);
    result
}

async fn run(report: &mut Report, args: &FleetArgs, scratch: &std::path::Path, db_url: &str) -> anyhow::Result<bool> {
    let calls: Calls = Arc::default();
    let participant = start_participant(calls.clone(), Duration::from_millis(args.participant_delay_ms)).await?;
    let fleet = Arc::new(Fleet { urls: RwLock::new(vec![None; args.servers]), db_url: db_url.to_string(), scratch: scratch.to_path_buf(), lease_ms: args.lease_ms });
    let mut children = Vec::new();
    for i in 0..args.servers {
        children.push(Some(fleet.start(i).await?));
    }
    eprintln!("{} coordinators up; running {} transactions, {} at a time…", args.servers, args.count, args.concurrency);

    // The coordinators' CPU from here on (each restart's own start left out), and this
    // process's (the client and the participants).
    let cpu_of = |child: &Option<tokio::process::Child>| child.as_ref().and_then(|c| c.id()).and_then(|pid| cpu_time_of(&pid.to_string()));
    let mut cpu_since: Vec<Option<Duration>> = children.iter().map(cpu_of).collect();
    let mut servers_cpu = Some(Duration::ZERO);
    let client_cpu_before = cpu_time_of("self");
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (fleet, next, done, endpoint) = (fleet.clone(), next.clone(), done.clone(), participant.clone());
        let count = args.count;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                run_one(&fleet, &endpoint, i).await.with_context(|| format!("transaction {i}"))?;
                latencies.push(t.elapsed());
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % (count / 10).max(1) == 0 {
                    eprintln!("  {n}/{count} ({:.1} s)", started.elapsed().as_secs_f64());
                }
            }
        }));
    }

    // The crash: SIGKILL one coordinator a third of the way in, restart it after two leases
    // (so the survivors must have taken its work over), under the same node id. A lone
    // coordinator is not killed: it is the figure a fleet's is compared with.
    let victim = if args.servers > 1 { 1 } else { 0 };
    let mut crash = None;
    if args.servers > 1 {
        while done.load(Ordering::Relaxed) < args.count / 3 && !workers.iter().all(|w| w.is_finished()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed_at = started.elapsed();
        let done_before = done.load(Ordering::Relaxed);
        servers_cpu = add_spent(servers_cpu, cpu_since[victim], cpu_of(&children[victim]));
        fleet.urls.write().unwrap()[victim] = None;
        if let Some(mut child) = children[victim].take() {
            child.kill().await.context("SIGKILL")?;
        }
        eprintln!("  SIGKILLed coordinator {victim} at {:.2} s", killed_at.as_secs_f64());
        tokio::time::sleep(Duration::from_millis(2 * args.lease_ms)).await;
        children[victim] = Some(fleet.start(victim).await?);
        cpu_since[victim] = cpu_of(&children[victim]);
        let restarted_at = started.elapsed();
        eprintln!("  restarted coordinator {victim} at {:.2} s", restarted_at.as_secs_f64());
        crash = Some((killed_at, restarted_at, done_before));
    }

    let mut latencies = Vec::with_capacity(args.count);
    for w in workers {
        latencies.extend(w.await??);
    }
    let wall = started.elapsed();
    for (child, since) in children.iter().zip(&cpu_since) {
        servers_cpu = add_spent(servers_cpu, *since, cpu_of(child));
    }
    let client_cpu = cpu_ms_per(client_cpu_before, cpu_time_of("self"), latencies.len());
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / wall.as_secs_f64();
    report.add("servers", args.servers, format!("{} coordinators, lease {} ms", args.servers, args.lease_ms));
    report.add("transactions", latencies.len(), format!("{} (half 3-step sagas, half 3-participant 2PC), concurrency {}", latencies.len(), args.concurrency));
    report.add("tx_per_s", rate.round(), format!("{rate:.0}{}", if crash.is_some() { " (through the crash)" } else { " (one coordinator, not killed)" }));
    report.add("p50_ms", round1(percentile(&latencies, 0.5).as_secs_f64() * 1e3), format!("{:.1} ms", percentile(&latencies, 0.5).as_secs_f64() * 1e3));
    report.add("p99_ms", round1(percentile(&latencies, 0.99).as_secs_f64() * 1e3), format!("{:.1} ms", percentile(&latencies, 0.99).as_secs_f64() * 1e3));
    if let Some((killed_at, restarted_at, done_before)) = crash {
        // Every coordinator up, nothing lost yet: the fleet's own pace, apart from the crash's.
        let before = done_before as f64 / killed_at.as_secs_f64();
        report.add("tx_per_s_before_kill", before.round(), format!("{before:.0} (all {} coordinators up, until the kill)", args.servers));
        report.add("killed_at_s", round1(killed_at.as_secs_f64()), format!("{:.2} s: coordinator {victim} SIGKILLed", killed_at.as_secs_f64()));
        report.add("restarted_at_s", round1(restarted_at.as_secs_f64()), format!("{:.2} s: coordinator {victim} restarted", restarted_at.as_secs_f64()));
    }
    report.add("wall_s", round1(wall.as_secs_f64()), format!("{:.2} s", wall.as_secs_f64()));
    if let Some(per_tx) = cpu_ms_per(Some(Duration::ZERO), servers_cpu, latencies.len()) {
        report.add("servers_cpu_ms_per_tx", round2(per_tx), format!("{per_tx:.3} ms of the coordinators' CPU per transaction, all of them together"));
    }
    if let Some(per_tx) = client_cpu {
        report.add("client_cpu_ms_per_tx", round2(per_tx), format!("{per_tx:.3} ms of this process's CPU per transaction (the client and the participants)"));
    }

    // The restarted coordinator must be serving before the check (its recovery has run).
    let (url, pool) = fleet.urls.read().unwrap()[victim].clone().expect("restarted");
    let (health, _) = pool.send(Method::GET, "/healthz", None, &[]).await?;
    anyhow::ensure!(health.is_success(), "{url}/healthz answered {health}");
    let calls = calls.lock().unwrap().clone();
    let passed = check(report, db_url, &calls).await?;
    for mut child in children.into_iter().flatten() {
        let _ = child.kill().await;
    }
    Ok(passed)
}

/// `spent` plus the CPU time a process used from `since` to `now`; unknown if any is.
fn add_spent(spent: Option<Duration>, since: Option<Duration>, now: Option<Duration>) -> Option<Duration> {
    Some(spent? + now?.checked_sub(since?)?)
}

/// The coordinators: where each listens and its idle connections (`None` while it is down).
struct Fleet {
    urls: RwLock<Vec<Option<(String, Pool)>>>,
    db_url: String,
    scratch: PathBuf,
    lease_ms: u64,
}

impl Fleet {
    /// Starts coordinator `i` (node id `fleet-i`, its own data directory) and waits until it listens.
    async fn start(&self, i: usize) -> anyhow::Result<tokio::process::Child> {
        let dir = self.scratch.join(format!("node-{i}"));
        let (lease, node) = (self.lease_ms.to_string(), format!("fleet-{i}"));
        let (child, url) = super::child::serve(&dir, &["--node-id", &node, "--lease-ms", &lease], Some(&self.db_url)).await?;
        let pool = Pool::new(&url)?;
        self.urls.write().unwrap()[i] = Some((url, pool));
        Ok(child)
    }

    /// A live coordinator, preferring `i`'s.
    fn pick(&self, i: usize) -> Option<(String, Pool)> {
        let urls = self.urls.read().unwrap();
        (0..urls.len()).find_map(|k| urls[(i + k) % urls.len()].clone())
    }
}

/// Sends one request to a live coordinator (`i`'s first), moving on to the next when one does
/// not answer; gives up after `TX_DEADLINE`. The answer's status and JSON (`null` if none).
async fn request(fleet: &Fleet, i: usize, method: Method, path: &str, body: Option<&Value>, idempotency_key: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let deadline = Instant::now() + TX_DEADLINE;
    let body = body.map(|b| bytes::Bytes::from(serde_json::to_vec(b).expect("JSON serialises")));
    let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let mut attempt = 0usize;
    loop {
        let (base, pool) = fleet.pick(i + attempt).context("no coordinator is up")?;
        match pool.send(method.clone(), path, body.clone(), &headers).await {
            Ok((status, answer)) => return Ok((status.as_u16(), serde_json::from_slice(&answer).unwrap_or(Value::Null))),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{path} on {base}: {e}; trying another coordinator");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).context(format!("{path}: no coordinator answered")),
        }
    }
}

/// Creates, fills and runs transaction `i` to an end state, whatever happens to the
/// coordinator it started on.
async fn run_one(fleet: &Fleet, endpoint: &str, i: usize) -> anyhow::Result<()> {
    let saga = i % 2 == 0;
    let (create, body, id_field, add, docs) = if saga {
        ("/v1/sagas", json!({"saga_name": "fleet", "context": {"n": i}}), "saga_id", "steps", "/v1/sagas")
    } else {
        ("/v1/2pc", json!({"transaction_name": "fleet", "context": {"n": i}}), "transaction_id", "participants", "/v1/2pc")
    };
    let key = format!("fleet-{i}");
    let (status, created) = request(fleet, i, Method::POST, create, Some(&body), Some(&key)).await?;
    anyhow::ensure!(status == 201 || status == 200, "create answered {status}: {created}");
    let id = created[id_field].as_str().context("no id in the create answer")?.to_string();
    for k in 0..3 {
        let member = if saga {
            json!({"name": format!("s{k}"), "endpoint": endpoint, "action": "execute", "compensation": "compensate"})
        } else {
            json!({"participant_id": format!("p{k}"), "endpoint": endpoint})
        };
        // Not idempotent: when the answer is lost, look before adding again.
        let (status, answer) = request(fleet, i, Method::POST, &format!("{docs}/{id}/{add}"), Some(&member), None).await?;
        if status >= 300 {
            let (_, doc) = request(fleet, i, Method::GET, &format!("{docs}/{id}"), None, None).await?;
            let have = doc[if saga { "steps" } else { "participants" }].as_array().map_or(0, |a| a.len());
            anyhow::ensure!(have > k, "adding member {k} answered {status}: {answer}");
        }
    }
    let execute = if saga { json!({"wait": true}) } else { json!({}) };
    let (status, answer) = request(fleet, i, Method::POST, &format!("{docs}/{id}/execute"), Some(&execute), None).await?;
    // An execute answered with the ended document is the end; otherwise (the coordinator may
    // have died under it) watch the document until it ends, and execute again only if it
    // never started.
    if status == 200 && answer["state"].as_str().is_some_and(ended) {
        return Ok(());
    }
    let deadline = Instant::now() + TX_DEADLINE;
    loop {
        let (_, doc) = request(fleet, i, Method::GET, &format!("{docs}/{id}"), None, None).await?;
        match doc["state"].as_str().unwrap_or("") {
            state if ended(state) => return Ok(()),
            "pending" | "init" => {
                let _ = request(fleet, i, Method::POST, &format!("{docs}/{id}/execute"), Some(&execute), None).await?;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        anyhow::ensure!(Instant::now() < deadline, "{id} did not end within {TX_DEADLINE:?}: {doc}");
    }
}

/// Whether a saga's or 2PC's state, as the API and the table spell it, is an end state.
fn ended(state: &str) -> bool {
    SagaState::parse(state).is_some_and(SagaState::is_terminal) || TpcState::parse(state).is_some_and(TpcState::is_terminal)
}

/// The HTTP participant every step and 2PC member points at: records each call, waits
/// `delay`, and says yes.
async fn start_participant(calls: Calls, delay: Duration) -> anyhow::Result<String> {
    async fn handle(
        State((calls, delay)): State<(Calls, Duration)>,
        UrlPath(action): UrlPath<String>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::Json<Value> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        calls.lock().unwrap().push(Call {
            at_ms: now_ms(),
            transaction_id: body["transaction_id"].as_str().unwrap_or("").to_string(),
            key: body["idempotency_key"].as_str().unwrap_or("").to_string(),
            phase: body["phase"].as_str().unwrap_or("").to_string(),
            node: header("wasmtx-node"),
        });
        tokio::time::sleep(delay).await;
        axum::Json(if action == "prepare" { json!({"vote": "prepared"}) } else { json!({"ok": true}) })
    }
    let app = axum::Router::new().route("/{action}", axum::routing::post(handle)).with_state((calls, delay));
    super::http1::serve_on_loopback(app).await
}

/// Compares the journal with what the participants saw; prints each check and returns whether
/// all passed.
async fn check(report: &mut Report, db_url: &str, calls: &[Call]) -> anyhow::Result<bool> {
    let db = crate::store::Store::open(db_url).await?;
    let mut failures: Vec<String> = Vec::new();

    // 1. Every transaction ended.
    let mut states = BTreeMap::new();
    let mut unfinished = 0i64;
    for (kind, state, n) in db.state_counts().await? {
        if !ended(&state) {
            unfinished += n;
        }
        states.insert(format!("{kind} {state}"), n);
    }
    if unfinished > 0 {
        failures.push(format!("{unfinished} transactions not in an end state"));
    }
    let summary = states.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ");
    report.add("end_states", json!(states), &summary);

    // 2. Each 2PC decision taken once; participants heard only that decision.
    let mut decided: HashMap<String, (i64, i64)> = HashMap::new();
    for (tx, at, _) in db.journal_events("2pc", "decision").await? {
        let (n, first) = decided.entry(tx).or_insert((0, at));
        *n += 1;
        *first = (*first).min(at);
    }
    let decisions: Vec<(String, i64, i64, String)> = db
        .states_of_kind("2pc")
        .await?
        .into_iter()
        .map(|(id, state)| {
            let (n, at) = decided.get(&id).copied().unwrap_or((0, 0));
            (id, n, at, state)
        })
        .collect();
    let mut by_tx: HashMap<&str, Vec<&Call>> = HashMap::new();
    for c in calls {
        by_tx.entry(c.transaction_id.as_str()).or_default().push(c);
    }
    let twice = decisions.iter().filter(|d| d.1 != 1).count();
    let mixed = decisions
        .iter()
        .filter(|(id, ..)| {
            let heard = by_tx.get(id.as_str()).map(|v| v.as_slice()).unwrap_or(&[]);
            heard.iter().any(|c| c.phase == "commit") && heard.iter().any(|c| c.phase == "abort")
        })
        .count();
    let late_prepares = decisions
        .iter()
        .filter(|(id, _, at, _)| by_tx.get(id.as_str()).is_some_and(|v| v.iter().any(|c| c.phase == "prepare" && c.at_ms > *at)))
        .count();
    for (n, what) in [(twice, "2PC transactions without exactly one decision"), (mixed, "2PC transactions whose participants heard both commit and abort"), (late_prepares, "2PC transactions asked to prepare after their decision")] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    report.add(
        "decisions_once",
        twice == 0 && mixed == 0 && late_prepares == 0,
        format!("{} 2PC decisions: {twice} taken other than once, {mixed} heard both ways, {late_prepares} prepares after a decision", decisions.len()),
    );

    // 3. One driver at a time: once another coordinator has called for a transaction, the
    //    earlier one never calls for it again.
    let mut interleaved = 0;
    let mut taken_over = 0;
    for heard in by_tx.values() {
        let mut heard = heard.clone();
        heard.sort_by_key(|c| c.at_ms);
        let mut nodes: Vec<&str> = Vec::new();
        for c in &heard {
            if nodes.last() != Some(&c.node.as_str()) {
                nodes.push(&c.node);
            }
        }
        let mut seen = nodes.clone();
        seen.sort();
        seen.dedup();
        interleaved += usize::from(seen.len() != nodes.len());
        taken_over += usize::from(nodes.len() > 1);
    }
    if interleaved > 0 {
        failures.push(format!("{interleaved} transactions driven by two coordinators in turn"));
    }
    report.add(
        "one_driver_at_a_time",
        interleaved == 0,
        format!("{taken_over} transactions changed coordinator, {interleaved} went back and forth"),
    );

    // 4. No completed step executed again: no execute call for a step's key after the write
    //    that recorded its completion.
    let mut completed_at: HashMap<String, i64> = HashMap::new();
    for (tx, at, event) in db.journal_events("saga", "step_completed").await? {
        let index = event.step.as_deref().unwrap_or_default().trim_start_matches('s');
        completed_at.insert(format!("{tx}:{index}:execute"), at);
    }
    let executes: Vec<&Call> = calls.iter().filter(|c| c.phase == "execute").collect();
    let after_completion = executes.iter().filter(|c| completed_at.get(&c.key).is_some_and(|at| c.at_ms > *at)).count();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for c in &executes {
        *per_key.entry(&c.key).or_default() += 1;
    }
    let repeated = per_key.values().filter(|n| **n > 1).count();
    if after_completion > 0 {
        failures.push(format!("{after_completion} step executions after the step was recorded completed"));
    }
    report.add(
        "no_completed_step_rerun",
        after_completion == 0,
        format!(
            "{} step executions, {after_completion} after completion; {repeated} steps re-executed with their key after the crash (at-least-once)",
            executes.len()
        ),
    );

    let passed = failures.is_empty();
    report.add("checks", if passed { "passed" } else { "FAILED" }, if passed { "all passed".to_string() } else { failures.join("; ") });
    Ok(passed)
}

