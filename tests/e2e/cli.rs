//! The `wasmtx` binary as a user runs it.

use std::process::Command;

use wasmtx_testkit::plugins;

fn wasmtx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmtx")).args(args).output().expect("running wasmtx")
}

#[test]
fn plugin_inspect_prints_digest_and_exports() {
    let out = wasmtx(&["plugin", "inspect", plugins::PAYMENT]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["exports"], serde_json::json!(["step", "participant"]));
    assert!(report["digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn plugin_inspect_explains_why_a_file_is_not_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("module.wasm");
    std::fs::write(&path, wat::parse_str("(module)").unwrap()).unwrap();
    let out = wasmtx(&["plugin", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("core WebAssembly module, not a component"), "{stderr}");

    let out = wasmtx(&["plugin", "inspect", "/nonexistent/x.wasm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/x.wasm"));
}

#[test]
fn bench_plugin_prints_its_figures() {
    let out = wasmtx(&["bench", "plugin", "--component", plugins::PAYMENT, "--calls", "300", "--warmup", "20"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for figure in ["machine:", "first load:", "cached load:", "calls:        300", "calls/s:", "p50:", "p99:", "peak RSS:"] {
        assert!(stdout.contains(figure), "missing {figure:?} in:\n{stdout}");
    }
}

#[test]
fn bench_plugin_measures_python_and_js_components_and_writes_json() {
    for (path, phase) in [(plugins::PYTHON_INVENTORY, "execute"), (plugins::JS_FRAUD_CHECK, "prepare")] {
        let out = wasmtx(&["bench", "--json", "plugin", "--component", path, "--calls", "20", "--warmup", "2"]);
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("--json prints one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(report["phase"], phase, "{report}");
        assert_eq!(report["calls"], 20);
        assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
        for figure in ["first_load_ms", "cached_load_ms", "calls_per_s", "p50_us", "p99_us", "peak_rss_mib"] {
            assert!(report[figure].as_f64().is_some_and(|v| v > 0.0), "{figure} in {report}");
        }
        assert!(report["p50_us"].as_f64() <= report["p99_us"].as_f64());
    }
}

#[test]
fn bench_plugin_refuses_a_policy_component_with_a_reason() {
    let out = wasmtx(&["bench", "plugin", "--component", plugins::ALWAYS_SAGA, "--calls", "5"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exports neither `step` nor `participant`"), "{stderr}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmtx"))
        .args(["--log-format", "json", "plugin", "inspect", plugins::PAYMENT])
        .env("WASMTX_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "debug logging produced nothing");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
}

#[test]
fn bench_api_refuses_a_participant_delay_past_its_bound_before_starting_anything() {
    let out = wasmtx(&["bench", "api", "--mode", "http-saga", "--participant-delay-ms", "18446744073709551615", "--count", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--participant-delay-ms must be at most 10000"), "{stderr}");
}

#[test]
fn bench_api_drives_a_server_of_its_own_in_every_mode() {
    let plugin_dir = std::path::Path::new(plugins::PAYMENT).parent().unwrap().to_str().unwrap().to_string();
    for mode in ["saga", "saga-one", "http-saga", "2pc", "managed"] {
        let out = wasmtx(&["bench", "--json", "api", "--mode", mode, "--count", "12", "--concurrency", "3", "--plugin-dir", &plugin_dir]);
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["transactions"], 12, "{mode}: {report}");
        assert!(report["tx_per_s"].as_f64().unwrap() > 0.0 && report["server_cpu_ms_per_tx"].is_number(), "{mode}: {report}");
        // The baseline (the same requests answered 404) ran, and bounds the ratio from above.
        assert!(report["baseline_tx_per_s"].as_f64().is_some_and(|r| r > 0.0), "{mode}: {report}");
        // The engine's figure beside it, where the engine bench has the same transactions.
        let twin = matches!(mode, "saga" | "saga-one" | "2pc" | "managed");
        assert_eq!(report["engine_tx_per_s"].as_f64().is_some_and(|r| r > 0.0), twin, "{mode}: {report}");
        assert_eq!(report["api_over_engine"].is_number(), twin, "{mode}: {report}");
        let ceiling = report["ceiling_over_engine"].as_f64();
        assert_eq!(ceiling.is_some_and(|c| c > 0.0 && c < 1.0), twin, "{mode}: {report}");
        assert_eq!(report["api_beyond_us_per_tx"].is_number(), twin, "{mode}: {report}");
        // The room an 80% ratio leaves is a quarter of the engine's time per transaction, less
        // the exchange's (2% for the rounding of the printed figures).
        if let (Some(room), Some(engine), Some(baseline)) =
            (report["room_at_80_us_per_tx"].as_f64(), report["engine_tx_per_s"].as_f64(), report["baseline_tx_per_s"].as_f64())
        {
            let expected = 0.25e6 / engine - 1e6 / baseline;
            assert!((room - expected).abs() <= 0.02 * expected.abs().max(10.0), "{mode}: {room} against {expected}: {report}");
        }
        assert_eq!(report["room_at_80_us_per_tx"].is_number(), twin, "{mode}: {report}");
        assert_eq!(report["engine_cpu_ms_per_tx"].is_number(), twin, "{mode}: {report}");
    }
}
