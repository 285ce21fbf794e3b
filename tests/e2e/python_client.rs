//! The Python client's own suite (`clients/python/tests`, pytest) against this build's
//! `wasmtx serve`, on SQLite and PostgreSQL: the client is installed into a virtual
//! environment under `target/tools/python-client` (httpx, pytest, pytest-asyncio from PyPI) and
//! its tests must pass — and exist: a run that collects none fails.

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_client_suite_passes_against_this_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = root.join("target/tools/python-client");
    let python = venv.join("bin/python");
    if !python.exists() {
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 is required for the Python client's tests");
        assert!(made.success(), "python3 -m venv failed");
    }
    let client = root.join("clients/python");
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e"])
        .arg(format!("{}[test]", client.display()))
        .status()
        .unwrap();
    assert!(installed.success(), "installing the Python client and its test tools failed");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(client.join("tests"))
        .env("WASMTX_BIN", env!("CARGO_BIN_EXE_wasmtx"))
        .current_dir(&client)
        .output()
        .unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // pytest exits 5 when it collected nothing: that is a failure too.
    assert!(out.status.success(), "the Python client's suite failed (exit {:?}):\n{report}", out.status.code());
    let passed: usize = report.split_whitespace().collect::<Vec<_>>().windows(2).find(|w| w[1].starts_with("passed")).and_then(|w| w[0].parse().ok()).unwrap_or(0);
    assert!(passed >= 50, "the Python client's suite ran only {passed} tests:\n{report}");
    println!("{report}");
}
