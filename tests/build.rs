//! Builds the example and test plugins for `wasm32-wasip2` with the same cargo, into their own
//! target directory, and hands their paths to the tests as `WASMTX_PLUGIN_<NAME>`.
//! (The same idea as wasmtime's test-programs artifacts crate.)
//!
//! The Python and JavaScript plugins are built with their pinned toolchains (componentize-py
//! from `plugins/python/requirements.txt`, componentize-js from `plugins/js/package-lock.json`),
//! installed on first use into `target/tools` — never into the user's own environment. A
//! component is rebuilt only when its sources, the WIT or the pinned tool change.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const PLUGINS: &[&str] =
    &["payment", "inventory", "shipping", "notification", "ledger", "scripted", "always-saga", "cost-aware", "scripted-policy", "drifted-contract"];

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
        export(p, &path);
    }
    for plugin in FOREIGN {
        let path = build_foreign(&root, plugin);
        export(plugin.name, &path);
    }
    // Compiled components, shared by the tests' hosts so an 18 MB Python component is compiled
    // once per engine configuration, not once per test.
    println!("cargo:rustc-env=WASMTX_TEST_COMPILED_CACHE={}", root.join("target/plugins/compiled-cache").display());
}

fn export(name: &str, path: &Path) {
    println!("cargo:rustc-env=WASMTX_PLUGIN_{}={}", name.to_uppercase().replace('-', "_"), path.display());
}

/// A plugin written in another language: its sources, and the world it is built for.
struct Foreign {
    name: &'static str,
    language: Language,
    /// Source directory, relative to the workspace root.
    dir: &'static str,
    /// The module (Python) or file (JavaScript) that implements the world.
    entry: &'static str,
    world: &'static str,
}

#[derive(Clone, Copy)]
enum Language {
    Python,
    JavaScript,
}

const FOREIGN: &[Foreign] = &[
    Foreign {
        name: "python-inventory",
        language: Language::Python,
        dir: "plugins/python/inventory",
        entry: "app",
        world: "step-plugin",
    },
    Foreign {
        name: "js-fraud-check",
        language: Language::JavaScript,
        dir: "plugins/js/fraud-check",
        entry: "fraud-check.js",
        world: "participant-plugin",
    },
];

/// Builds one foreign plugin into `target/plugins/<language>/<name>.wasm`, unless the stamp
/// next to it says these exact inputs built it already.
fn build_foreign(root: &Path, plugin: &Foreign) -> PathBuf {
    let (lang_dir, pin_file) = match plugin.language {
        Language::Python => ("python", "plugins/python/requirements.txt"),
        Language::JavaScript => ("js", "plugins/js/package-lock.json"),
    };
    let out_dir = root.join("target/plugins").join(lang_dir);
    fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{}.wasm", plugin.name));
    let stamp = out.with_extension("stamp");
    let source_dir = root.join(plugin.dir);
    let wit = root.join("wit/plugin.wit");
    let fingerprint = fingerprint(&[&source_dir, &wit, &root.join(pin_file)]);
    if out.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == fingerprint) {
        return out;
    }

    // Build from a copy, so the toolchain's caches (`__pycache__`) never land in the source
    // tree, where they would make cargo rerun this script.
    let work = out_dir.join(format!("{}.src", plugin.name));
    let _ = fs::remove_dir_all(&work);
    copy_dir(&source_dir, &work);
    let mut cmd = match plugin.language {
        Language::Python => {
            let tool = python_tool(root);
            let mut cmd = Command::new(tool);
            cmd.arg("-d").arg(&wit).args(["-w", plugin.world, "componentize", "-p"]).arg(&work);
            cmd.arg(plugin.entry).arg("-o").arg(&out).env("PYTHONDONTWRITEBYTECODE", "1");
            cmd
        }
        Language::JavaScript => {
            let tool = js_tool(root);
            let mut cmd = Command::new(tool);
            cmd.arg(work.join(plugin.entry)).arg("--wit").arg(&wit).args(["-n", plugin.world, "-o"]).arg(&out);
            cmd
        }
    };
    run(&mut cmd, &format!("building the {} plugin {}", lang_dir, plugin.name));
    assert!(out.exists(), "{} did not produce {}", plugin.name, out.display());
    fs::write(&stamp, fingerprint).unwrap();
    out
}

/// componentize-py, pinned by `plugins/python/requirements.txt`, in a venv under `target/tools`.
fn python_tool(root: &Path) -> PathBuf {
    let pins = root.join("plugins/python/requirements.txt");
    let venv = root.join("target/tools/python");
    let tool = venv.join("bin/componentize-py");
    let marker = venv.join("installed-requirements.txt");
    let wanted = fs::read_to_string(&pins).unwrap();
    if tool.exists() && fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return tool;
    }
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv), "creating a Python venv for componentize-py (needs python3 with venv)");
    run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&pins),
        "installing componentize-py from PyPI",
    );
    fs::write(&marker, wanted).unwrap();
    tool
}

/// componentize-js, pinned by `plugins/js/package-lock.json`, installed under `target/tools`.
fn js_tool(root: &Path) -> PathBuf {
    let dir = root.join("target/tools/js");
    let tool = dir.join("node_modules/.bin/componentize-js");
    let lock = fs::read_to_string(root.join("plugins/js/package-lock.json")).unwrap();
    if tool.exists() && fs::read_to_string(dir.join("package-lock.json")).is_ok_and(|l| l == lock) {
        return tool;
    }
    fs::create_dir_all(&dir).unwrap();
    fs::copy(root.join("plugins/js/package.json"), dir.join("package.json")).unwrap();
    fs::write(dir.join("package-lock.json"), &lock).unwrap();
    run(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir),
        "installing componentize-js from npm (needs Node.js and npm)",
    );
    tool
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: could not start {:?}: {e}", cmd.get_program()));
    assert!(status.success(), "{what} failed ({status}): {cmd:?}");
}

/// A hash of every file under `paths` (names and contents), in a stable order.
fn fingerprint(paths: &[&Path]) -> String {
    fn walk(path: &Path, files: &mut Vec<PathBuf>) {
        if path.is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), files);
            }
        } else {
            files.push(path.to_path_buf());
        }
    }
    let mut files = Vec::new();
    for p in paths {
        walk(p, &mut files);
    }
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "__pycache__"));
    files.sort();
    let mut hasher = DefaultHasher::new();
    for f in files {
        f.hash(&mut hasher);
        fs::read(&f).unwrap().hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" || name == "node_modules" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(name));
        } else {
            fs::copy(&path, to.join(name)).unwrap();
        }
    }
}
