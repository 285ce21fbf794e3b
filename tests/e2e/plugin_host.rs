//! The Wasm host against real components: each world called, every limit and every kind of
//! garbage provoked, hot swap with a call in flight, the compiled-code cache.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use wasmtx::model::{Availability, Candidate, CallContext, Consistency, Decision, Outcome, Pattern, Profile, Vote};
use wasmtx::plugin::{
    CallError, CallLimits, CallTags, Catalog, CatalogError, Component, HostConfig, LoadError, LookupError, PluginHost,
};
use wasmtx_testkit::{plugin_bytes, plugins};

const TENANT: &str = "default";

/// One host per test binary: engines are process-wide in production too.
/// The load error behind a catalog's refusal (what these tests provoke).
fn load_error(e: CatalogError) -> LoadError {
    match e {
        CatalogError::Load(e) => e,
        other => panic!("expected a load error, got {other}"),
    }
}

fn host() -> PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(HostConfig { cache_dir: Some(wasmtx_testkit::compiled_cache_dir()), ..HostConfig::default() }).expect("host")).clone()
}

async fn registered(name: &str, path: &str) -> (Catalog, Arc<Component>) {
    let registry = Catalog::in_memory(host());
    let (version, created) = registry.add(TENANT, name, &plugin_bytes(path)).await.expect("valid plugin");
    assert!(created);
    (registry, version.component.clone())
}

fn ctx(step: &str, input: Value) -> CallContext {
    CallContext {
        tenant: TENANT.into(),
        transaction_id: "tx-1".into(),
        step: step.into(),
        action: step.into(),
        attempt: 1,
        idempotency_key: format!("tx-1/{step}/execute"),
        input: input.to_string(),
        deadline_ms: 30_000,
        traceparent: None,
    }
}

fn script(phase: &str, instruction: Value) -> Value {
    json!({ "script": { phase: instruction } })
}

fn success_json(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Success(s) => serde_json::from_str(&s).expect("success payload is JSON"),
        other => panic!("expected success, got {other:?}"),
    }
}

fn short(ms: u64) -> CallLimits {
    CallLimits { timeout: Duration::from_millis(ms), ..CallLimits::default() }
}

async fn execute(c: &Component, input: Value, limits: &CallLimits) -> Result<Outcome, CallError> {
    host().execute(c, ctx("s", input), limits, CallTags::default()).await
}

#[tokio::test]
async fn exports_decide_the_roles_of_each_plugin() {
    let cases: [(&str, &str, &[&str]); 6] = [
        ("payment", plugins::PAYMENT, &["step", "participant"]),
        ("inventory", plugins::INVENTORY, &["step"]),
        ("shipping", plugins::SHIPPING, &["step"]),
        ("ledger", plugins::LEDGER, &["participant"]),
        ("scripted", plugins::SCRIPTED, &["step", "participant"]),
        ("cost-aware", plugins::COST_AWARE, &["policy"]),
    ];
    let registry = Catalog::in_memory(host());
    for (name, path, roles) in cases {
        let (v, _) = registry.add(TENANT, name, &plugin_bytes(path)).await.unwrap();
        assert_eq!(v.exports, roles, "{name}");
        assert!(v.digest.starts_with("sha256:") && v.digest.len() == 7 + 64);
        assert_eq!(v.version, 1);
    }
}

#[tokio::test]
async fn step_world_executes_and_compensates() {
    let (_r, payment) = registered("payment", plugins::PAYMENT).await;
    let out = success_json(execute(&payment, json!({"amount": 42, "order_id": "o-1"}), &CallLimits::default()).await.unwrap());
    assert_eq!(out["amount"], 42.0);
    assert_eq!(out["order_id"], "o-1");
    assert_eq!(out["charge_id"], "tx-1/s/execute", "the idempotency key reaches the plugin");

    let declined = execute(&payment, json!({"amount": 20000}), &CallLimits::default()).await.unwrap();
    assert!(matches!(&declined, Outcome::Failure(m) if m.contains("card declined")), "{declined:?}");

    let refund = host().compensate(&payment, ctx("s", json!({})), &CallLimits::default(), CallTags::default()).await;
    assert_eq!(success_json(refund.unwrap())["refund_of"], "tx-1");
}

#[tokio::test]
async fn participant_world_prepares_commits_and_aborts() {
    let (_r, ledger) = registered("ledger", plugins::LEDGER).await;
    let h = host();
    let limits = CallLimits::default();
    let vote = h.prepare(&ledger, ctx("a", json!({"amount": 10})), &limits, CallTags::default()).await;
    assert_eq!(vote.unwrap(), Vote::Prepared);
    let vote = h.prepare(&ledger, ctx("a", json!({"amount": 5000})), &limits, CallTags::default()).await;
    assert!(matches!(vote.unwrap(), Vote::Abort(r) if r.contains("insufficient funds")));
    let commit = h.commit(&ledger, ctx("a", json!({})), &limits, CallTags::default()).await.unwrap();
    assert!(success_json(commit).get("posted").is_some());
    let abort = h.abort(&ledger, ctx("a", json!({})), &limits, CallTags::default()).await.unwrap();
    assert!(success_json(abort).get("voided").is_some());
}

#[tokio::test]
async fn policy_world_selects_a_pattern() {
    let (_r, policy) = registered("cost-aware", plugins::COST_AWARE).await;
    let candidate = |id: &str, tpc: bool| Candidate {
        participant_id: id.into(),
        supports_two_phase_commit: tpc,
        supports_saga: true,
    };
    let profile = |consistency, participants| Profile {
        tenant: TENANT.into(),
        transaction_name: "transfer".into(),
        consistency,
        availability: Availability::Medium,
        timeout_ms: 1000,
        participants,
        context: "{}".into(),
    };
    let select = |p| async { host().select(&policy, p, &CallLimits::default(), CallTags::default()).await.unwrap() };
    assert_eq!(
        select(profile(Consistency::Strong, vec![candidate("a", true), candidate("b", true)])).await,
        Decision::Choose(Pattern::TwoPhaseCommit)
    );
    assert_eq!(
        select(profile(Consistency::Strong, vec![candidate("a", true), candidate("b", false)])).await,
        Decision::Choose(Pattern::Saga)
    );
    assert!(matches!(select(profile(Consistency::Immediate, vec![])).await, Decision::Reject(_)));
}

#[tokio::test]
async fn a_role_the_plugin_does_not_export_is_refused_without_calling_it() {
    let (_r, inventory) = registered("inventory", plugins::INVENTORY).await;
    let err = host().prepare(&inventory, ctx("i", json!({})), &CallLimits::default(), CallTags::default()).await;
    assert_eq!(err.unwrap_err(), CallError::MissingRole { role: "participant" });
}

#[tokio::test]
async fn a_trap_ends_the_call_with_the_panic_message_and_the_next_call_gets_a_fresh_instance() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let err = execute(&scripted, script("execute", json!({"do": "trap", "message": "boom in step"})), &CallLimits::default())
        .await
        .unwrap_err();
    match err {
        CallError::Trap { message } => assert!(message.contains("boom in step"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    let after = execute(&scripted, json!({}), &CallLimits::default()).await.unwrap();
    assert_eq!(success_json(after)["attempt"], 1);
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_deadline() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let err = execute(&scripted, script("execute", json!({"do": "spin"})), &short(200)).await.unwrap_err();
    assert_eq!(err, CallError::Timeout { after: Duration::from_millis(200) });
}

#[tokio::test]
async fn a_plugin_sleeping_past_its_deadline_times_out() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let err = execute(&scripted, script("execute", json!({"do": "sleep", "ms": 60_000})), &short(200)).await.unwrap_err();
    assert_eq!(err, CallError::Timeout { after: Duration::from_millis(200) });
}

#[tokio::test]
async fn a_memory_bomb_hits_the_cap() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let limits = CallLimits { memory_bytes: 16 << 20, ..CallLimits::default() };
    let err = execute(&scripted, script("execute", json!({"do": "alloc", "mb": 64})), &limits).await.unwrap_err();
    assert_eq!(err, CallError::MemoryLimit { limit_bytes: 16 << 20 });
    // Under the cap the same allocation succeeds.
    let ok = execute(&scripted, script("execute", json!({"do": "alloc", "mb": 4})), &limits).await.unwrap();
    assert_eq!(success_json(ok)["allocated_mb"], 4);
}

#[tokio::test]
async fn fuel_bounds_computation_when_metering_is_on() {
    let host = PluginHost::new(HostConfig { fuel_metering: true, max_concurrent_instances: 16, ..HostConfig::default() })
        .unwrap();
    let registry = Catalog::in_memory(host.clone());
    let (v, _) = registry.add(TENANT, "scripted", &plugin_bytes(plugins::SCRIPTED)).await.unwrap();
    let limits = CallLimits { fuel: Some(5_000_000), ..CallLimits::default() };
    let err = host
        .execute(&v.component, ctx("s", script("execute", json!({"do": "spin"}))), &limits, CallTags::default())
        .await
        .unwrap_err();
    assert_eq!(err, CallError::FuelExhausted);
    let ok = host.execute(&v.component, ctx("s", json!({})), &limits, CallTags::default()).await;
    assert!(matches!(ok, Ok(Outcome::Success(_))), "{ok:?}");
}

#[tokio::test]
async fn invalid_json_output_is_passed_through_for_the_engine_to_judge() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let out = execute(&scripted, script("execute", json!({"do": "invalid_json"})), &CallLimits::default()).await;
    assert_eq!(out.unwrap(), Outcome::Success("{not json".into()));
}

#[tokio::test]
async fn the_sandbox_grants_no_files_env_or_sockets() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    // SAFETY: set before any thread of this test reads the environment; the plugin must not see it.
    unsafe { std::env::set_var("WASMTX_TEST_SECRET", "hunter2") };
    for (instruction, denied) in [
        (json!({"do": "read_file", "path": "/etc/hostname"}), "read_file denied"),
        (json!({"do": "read_file", "path": "Cargo.toml"}), "read_file denied"),
        (json!({"do": "env", "name": "WASMTX_TEST_SECRET"}), "env denied"),
        (json!({"do": "connect", "addr": "127.0.0.1:5432"}), "connect denied"),
        (json!({"do": "http_get", "url": "http://127.0.0.1:5432/"}), "HttpRequestDenied"),
    ] {
        let out = execute(&scripted, script("execute", instruction.clone()), &CallLimits::default()).await.unwrap();
        assert!(matches!(&out, Outcome::Failure(m) if m.contains(denied)), "{instruction}: {out:?}");
    }
}

/// Collects formatted tracing output for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn host_log_stdout_and_stderr_reach_the_log_tagged_with_the_call() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let tags = CallTags { tenant: "acme".into(), transaction_id: "tx-42".into(), step: "notify".into(), ..CallTags::default() };
    let input = script("execute", json!({"do": "log", "message": "hello-from-plugin"}));
    let out = host().execute(&scripted, ctx("notify", input), &CallLimits::default(), tags).await.unwrap();
    assert!(matches!(out, Outcome::Success(_)));
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in ["hello-from-plugin", "stdout: hello-from-plugin", "stderr: hello-from-plugin"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let tagged = text.lines().filter(|l| l.contains("hello-from-plugin")).collect::<Vec<_>>();
    assert_eq!(tagged.len(), 3, "{text}");
    for line in tagged {
        assert!(line.contains("tenant=acme") && line.contains("transaction_id=tx-42") && line.contains("step=notify"), "{line}");
    }
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test WAT parses")
}

#[tokio::test]
async fn garbage_is_refused_with_a_reason() {
    let registry = Catalog::in_memory(host());
    let cases: Vec<(&str, Vec<u8>, fn(&LoadError) -> bool)> = vec![
        ("empty", vec![], |e| matches!(e, LoadError::Empty)),
        ("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), |e| {
            matches!(e, LoadError::NotWasm)
        }),
        ("core module", wat("(module (func (export \"run\")))"), |e| matches!(e, LoadError::CoreModule)),
        ("truncated component", plugin_bytes(plugins::PAYMENT)[..1000].to_vec(), |e| {
            matches!(e, LoadError::Invalid(_))
        }),
        ("component with no role", wat("(component)"), |e| matches!(e, LoadError::NoRole { .. })),
        (
            "another contract version",
            wat(r#"(component (instance $i) (export "wasmtx:plugin/step@0.2.0" (instance $i)))"#),
            |e| matches!(e, LoadError::WrongContractVersion { found, .. } if found == "0.2.0"),
        ),
        (
            "step export without its functions",
            wat(r#"(component (instance $i) (export "wasmtx:plugin/step@0.1.0" (instance $i)))"#),
            |e| matches!(e, LoadError::BadExport { role: "step", .. }),
        ),
        (
            "import the sandbox does not provide",
            wat(r#"(component
                 (import "acme:secret/db@1.0.0" (instance $db (export "query" (func))))
                 (instance $i) (export "wasmtx:plugin/step@0.1.0" (instance $i)))"#),
            |e| matches!(e, LoadError::UnsupportedImport(m) if m.contains("acme:secret/db")),
        ),
        (
            // Memories take slots of the pool every tenant shares: one component has 16 at most.
            "seventeen memories",
            wat(&format!("(component (core module $m (memory 0)) {})", "(core instance (instantiate $m)) ".repeat(17))),
            |e| matches!(e, LoadError::Invalid(why) if why.contains("more than one component may") && why.contains("memories")),
        ),
    ];
    for (what, bytes, expected) in cases {
        let err = registry.add(TENANT, "garbage", &bytes).await.map_err(load_error).expect_err(what);
        assert!(expected(&err), "{what}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert!(registry.versions(TENANT, "garbage").await.unwrap().is_empty(), "nothing was registered");
}

#[tokio::test]
async fn oversized_components_and_bad_names_are_refused() {
    let host = PluginHost::new(HostConfig { max_component_bytes: 1024, max_concurrent_instances: 16, ..HostConfig::default() })
        .unwrap();
    let registry = Catalog::in_memory(host);
    let err = registry.add(TENANT, "payment", &plugin_bytes(plugins::PAYMENT)).await.map_err(load_error).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { limit: 1024, .. }), "{err:?}");
    let err = Catalog::in_memory(self::host()).add(TENANT, "Bad Name", &plugin_bytes(plugins::PAYMENT)).await.map_err(load_error).unwrap_err();
    assert!(matches!(err, LoadError::BadName(_)), "{err:?}");
}

#[tokio::test]
async fn versions_are_numbered_and_identical_bytes_are_not_a_new_version() {
    let registry = Catalog::in_memory(host());
    let (v1, created) = registry.add(TENANT, "svc", &plugin_bytes(plugins::SHIPPING)).await.unwrap();
    assert!(created);
    let (again, created) = registry.add(TENANT, "svc", &plugin_bytes(plugins::SHIPPING)).await.unwrap();
    assert!(!created);
    assert_eq!((again.version, &again.digest), (1, &v1.digest));
    let (v2, created) = registry.add(TENANT, "svc", &plugin_bytes(plugins::INVENTORY)).await.unwrap();
    assert!(created);
    assert_eq!(v2.version, 2);
    assert_eq!(registry.version(TENANT, "svc").await.unwrap().version, 2);
    assert_eq!(registry.version(TENANT, "svc@1").await.unwrap().digest, v1.digest);
    assert!(matches!(registry.version(TENANT, "svc@3").await, Err(CatalogError::Lookup(LookupError::UnknownVersion { version: 3, .. }))));
    assert!(matches!(registry.version(TENANT, "nope").await, Err(CatalogError::Lookup(LookupError::UnknownPlugin(_)))));
    assert!(matches!(registry.version("other-tenant", "svc").await, Err(CatalogError::Lookup(LookupError::UnknownPlugin(_)))));
    assert_eq!(registry.versions(TENANT, "svc").await.unwrap().len(), 2);
    assert_eq!(registry.list(TENANT).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_serves_new_calls_while_a_call_in_flight_finishes_on_its_version() {
    let registry = Catalog::in_memory(host());
    registry.add(TENANT, "svc", &plugin_bytes(plugins::SCRIPTED)).await.unwrap();
    let v1 = registry.version(TENANT, "svc").await.unwrap();

    let in_flight = {
        let component = v1.component.clone();
        tokio::spawn(async move {
            execute(&component, script("execute", json!({"do": "sleep", "ms": 3000})), &CallLimits::default()).await
        })
    };
    let (v2, created) = registry.add(TENANT, "svc", &plugin_bytes(plugins::PAYMENT)).await.unwrap();
    assert!(created && v2.version == 2);
    assert!(!in_flight.is_finished(), "the swap happened while the v1 call was running");

    let newest = registry.version(TENANT, "svc").await.unwrap();
    assert_eq!(newest.version, 2);
    let out = success_json(execute(&newest.component, json!({"amount": 1}), &CallLimits::default()).await.unwrap());
    assert!(out.get("charge_id").is_some(), "new calls run v2 (payment): {out}");

    let old = success_json(in_flight.await.unwrap().unwrap());
    assert_eq!(old["phase"], "execute", "the in-flight call finished on v1 (scripted): {old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_instance() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = scripted.clone();
        tasks.push(tokio::spawn(async move {
            let input = if i % 8 == 0 { script("execute", json!({"do": "trap"})) } else { json!({}) };
            (i, execute(&c, input, &CallLimits::default()).await)
        }));
    }
    for t in tasks {
        let (i, result) = t.await.unwrap();
        if i % 8 == 0 {
            assert!(matches!(result, Err(CallError::Trap { .. })), "{i}: {result:?}");
        } else {
            assert!(matches!(result, Ok(Outcome::Success(_))), "{i}: {result:?}");
        }
    }
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk_by_digest_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig { cache_dir: Some(dir.path().to_path_buf()), max_concurrent_instances: 16, ..HostConfig::default() };
    let first = Catalog::in_memory(PluginHost::new(config.clone()).unwrap());
    first.add(TENANT, "payment", &plugin_bytes(plugins::PAYMENT)).await.unwrap();
    let entries = || std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    assert_eq!(entries().len(), 1, "{:?}", entries());
    assert!(entries()[0].to_string_lossy().ends_with(".cwasm"));

    // A new process (host) with the same cache directory loads the artifact and it works.
    let host = PluginHost::new(config).unwrap();
    let second = Catalog::in_memory(host.clone());
    let (v, _) = second.add(TENANT, "payment", &plugin_bytes(plugins::PAYMENT)).await.unwrap();
    assert_eq!(entries().len(), 1);
    let out = host.execute(&v.component, ctx("s", json!({"amount": 3})), &CallLimits::default(), CallTags::default()).await;
    assert!(matches!(out, Ok(Outcome::Success(_))));

    // A corrupt cache entry is ignored and replaced, not trusted.
    let path = dir.path().join(&entries()[0]);
    std::fs::write(&path, b"garbage").unwrap();
    let third = Catalog::in_memory(PluginHost::new(HostConfig { cache_dir: Some(dir.path().into()), max_concurrent_instances: 16, ..HostConfig::default() }).unwrap());
    third.add(TENANT, "payment", &plugin_bytes(plugins::PAYMENT)).await.unwrap();
    assert!(std::fs::read(&path).unwrap().len() > 1000);
}

#[tokio::test(flavor = "current_thread")]
async fn a_computing_plugin_yields_so_other_calls_on_the_same_thread_progress() {
    let (_r, scripted) = registered("scripted", plugins::SCRIPTED).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let spin = {
        let (c, order) = (scripted.clone(), order.clone());
        async move {
            let r = execute(&c, script("execute", json!({"do": "spin"})), &short(2000)).await;
            order.lock().unwrap().push("spin");
            r
        }
    };
    let quick = {
        let (c, order) = (scripted.clone(), order.clone());
        async move {
            let r = execute(&c, json!({}), &CallLimits::default()).await;
            order.lock().unwrap().push("quick");
            r
        }
    };
    // One thread: without yields the spinning call would hold it until its deadline.
    let (spun, quick) = tokio::join!(spin, quick);
    assert!(matches!(spun, Err(CallError::Timeout { .. })));
    assert!(matches!(quick, Ok(Outcome::Success(_))));
    assert_eq!(*order.lock().unwrap(), ["quick", "spin"]);
}
