//! `wasmtx bench fleet` in small: three coordinators on one PostgreSQL, one SIGKILLed under
//! load and restarted, and the run's own checks of the end state must all pass; and the lone
//! coordinator its figure is compared with, under the same client and checks.

use std::process::Command;

/// Runs `wasmtx bench --json fleet` with `servers` and `count` (12 at a time); its report, its
/// stderr; fails unless every check passed.
fn fleet(servers: usize, count: usize) -> (serde_json::Value, String) {
    let admin = std::env::var("WASMTX_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let out = Command::new(env!("CARGO_BIN_EXE_wasmtx"))
        .args(["bench", "--json", "fleet", "--servers", &servers.to_string(), "--count", &count.to_string(), "--concurrency", "12"])
        .args(["--database-url", &admin, "--lease-ms", "500", "--participant-delay-ms", "5"])
        .output()
        .expect("running wasmtx bench fleet");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); PostgreSQL must be up for this test. stderr:\n{stderr}"));
    assert!(out.status.success(), "checks failed: {report:#}\n{stderr}");
    assert_eq!(report["checks"], "passed", "{report:#}");
    assert_eq!(report["transactions"], count);
    let ended: i64 = report["end_states"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum();
    assert_eq!(ended, count as i64, "every transaction is in the database, in an end state: {}", report["end_states"]);
    for check in ["decisions_once", "one_driver_at_a_time", "no_completed_step_rerun"] {
        assert_eq!(report[check], true, "{check}: {report:#}");
    }
    (report, stderr)
}

#[test]
fn a_fleet_survives_a_coordinator_killed_under_load() {
    let (report, stderr) = fleet(3, 90);
    assert!(stderr.contains("SIGKILLed coordinator 1") && stderr.contains("restarted coordinator 1"), "{stderr}");
    assert!(report["killed_at_s"].as_f64().unwrap() < report["restarted_at_s"].as_f64().unwrap());
    assert_eq!(report["servers"], 3);
    // A third of the transactions ended before the kill, so the pace until then is a figure.
    assert!(report["tx_per_s_before_kill"].as_f64().is_some_and(|r| r > 0.0), "{report:#}");
}

#[test]
fn a_lone_coordinator_runs_the_fleets_load_without_being_killed() {
    let (report, stderr) = fleet(1, 40);
    assert!(!stderr.contains("SIGKILLed"), "nothing is killed: {stderr}");
    assert!(report.get("killed_at_s").is_none() && report.get("tx_per_s_before_kill").is_none(), "{report:#}");
    assert_eq!(report["servers"], 1);
    assert!(report["tx_per_s"].as_f64().unwrap() > 0.0, "{report:#}");
}
