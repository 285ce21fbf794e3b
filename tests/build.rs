//! Builds the example and test plugins for `wasm32-wasip2` with the same cargo, into their own
//! target directory, and hands their paths to the tests as `WASMTX_PLUGIN_<NAME>`.
//! (The same idea as wasmtime's test-programs artifacts crate.)

use std::path::PathBuf;
use std::process::Command;
use std::{env, fs};

const PLUGINS: &[&str] =
    &["payment", "inventory", "shipping", "notification", "ledger", "scripted", "always-saga", "cost-aware", "scripted-policy"];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..").canonicalize().unwrap();
    for watched in ["plugins", "plugin-sdk/src", "plugin-sdk/build.rs", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target/plugins");
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["build", "--locked", "--profile", "plugin", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for p in PLUGINS {
        cmd.args(["-p", p]);
    }
    // Flags meant for the host build must not leak into the wasm build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
    );
    for p in PLUGINS {
        // Cargo names a cdylib after its lib name, where `-` becomes `_`.
        let path = target_dir.join(format!("wasm32-wasip2/plugin/{}.wasm", p.replace('-', "_")));
        assert!(fs::metadata(&path).is_ok(), "missing {}", path.display());
        println!("cargo:rustc-env=WASMTX_PLUGIN_{}={}", p.to_uppercase().replace('-', "_"), path.display());
    }
}
