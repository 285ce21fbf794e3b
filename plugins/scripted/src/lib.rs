//! `scripted`: a test plugin whose behaviour comes from its input, so every failure mode can be
//! provoked from a test without writing new code.
//!
//! The input's `script` object maps a phase (`execute`, `compensate`, `prepare`, `commit`,
//! `abort`) to an instruction `{"do": …}`; a phase without one succeeds, echoing its call:
//!
//! | `do` | effect |
//! |---|---|
//! | `succeed` | success with `output` (default: the call echoed) |
//! | `fail` | failure with `reason` |
//! | `retry` | retry (with `reason`, if given) while `attempt <= times`, then succeed |
//! | `vote_abort` | prepare votes abort with `reason` (other phases: failure) |
//! | `trap` | panics with `message`: the call traps |
//! | `spin` | loops forever (until the runtime's deadline) |
//! | `sleep` | sleeps `ms` milliseconds on the host clock, then succeeds |
//! | `alloc` | allocates and touches `mb` MiB, then succeeds |
//! | `invalid_json` | success whose payload is not JSON |
//! | `log` | writes `message` to the host log, stdout and stderr, then succeeds |
//! | `read_file` | tries to read `path`; success only if the sandbox let it |
//! | `env` | tries to read environment variable `name` |
//! | `connect` | tries to open a TCP connection to `addr` |
//! | `http_get` | GETs `url` over wasi:http; success with `status` and `body` if allowed |
//! | `http_keep` | GETs `url` `times` times, keeping each answer unread; success with how many were `answered` and `denied`, and why the first was denied |
//! | `print` | prints `lines` lines of 100 bytes to stdout with `println!`, then succeeds |
//! | `big_output` | succeeds with a JSON string of `bytes` bytes |
//! | `echo_input` | succeeds with its input and `forward_outcome` as the SDK reads it |
//!
//! `reason_bytes`, beside `fail`, `retry` or `vote_abort`, makes the reason that many bytes
//! (`r` repeated) instead of `reason`: a participant that explains itself at great length.

use serde_json::Value;
use wasmtx_plugin_sdk::{Call, LogLevel, Outcome, Participant, Step, Vote, json, log};

struct Scripted;

fn instruction(call: &Call, phase: &str) -> Value {
    call.input_json()
        .get("script")
        .and_then(|s| s.get(phase))
        .cloned()
        .unwrap_or(Value::Null)
}

fn echo(call: &Call, phase: &str) -> Value {
    json!({
        "phase": phase,
        "step": call.step,
        "action": call.action,
        "attempt": call.attempt,
        "idempotency_key": call.idempotency_key,
    })
}

fn text(instr: &Value, key: &str, default: &str) -> String {
    instr.get(key).and_then(|v| v.as_str()).unwrap_or(default).to_string()
}

/// The reason `instr` gives: `reason_bytes` bytes of `r`, or `reason`, or `default`.
fn reason(instr: &Value, default: &str) -> String {
    match instr.get("reason_bytes").and_then(|v| v.as_u64()) {
        Some(bytes) => "r".repeat(bytes as usize),
        None => text(instr, "reason", default),
    }
}

fn run(call: &Call, phase: &str) -> Outcome {
    let instr = instruction(call, phase);
    let number = |key: &str| instr.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    match instr.get("do").and_then(|d| d.as_str()).unwrap_or("succeed") {
        "succeed" => match instr.get("output") {
            Some(output) => Outcome::success(output),
            None => Outcome::success(&echo(call, phase)),
        },
        "fail" | "vote_abort" => Outcome::failure(reason(&instr, "scripted failure")),
        "retry" if u64::from(call.attempt) <= number("times") => {
            Outcome::retry(reason(&instr, &format!("scripted retry on attempt {}", call.attempt)))
        }
        "retry" => Outcome::success(&echo(call, phase)),
        "trap" => panic!("{}", text(&instr, "message", "scripted trap")),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(number("ms")));
            Outcome::success(&echo(call, phase))
        }
        "alloc" => {
            let mut chunks = Vec::new();
            for _ in 0..number("mb") {
                chunks.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
            Outcome::success(&json!({ "allocated_mb": chunks.len() }))
        }
        "invalid_json" => Outcome::Success("{not json".into()),
        "log" => {
            let message = text(&instr, "message", "hello from scripted");
            log(LogLevel::Warn, &message);
            println!("stdout: {message}");
            eprintln!("stderr: {message}");
            Outcome::success(&echo(call, phase))
        }
        "read_file" => match std::fs::read(text(&instr, "path", "/etc/passwd")) {
            Ok(bytes) => Outcome::success(&json!({ "read_bytes": bytes.len() })),
            Err(e) => Outcome::failure(format!("read_file denied: {e}")),
        },
        "env" => match std::env::var(text(&instr, "name", "HOME")) {
            Ok(value) => Outcome::success(&json!({ "env": value })),
            Err(e) => Outcome::failure(format!("env denied: {e}")),
        },
        "connect" => match std::net::TcpStream::connect(text(&instr, "addr", "127.0.0.1:5432")) {
            Ok(_) => Outcome::success(&json!({ "connected": true })),
            Err(e) => Outcome::failure(format!("connect denied: {e}")),
        },
        "http_get" => match waki::Client::new().get(&text(&instr, "url", "http://127.0.0.1/")).send() {
            Ok(response) => {
                let status = response.status_code();
                let body = response.body().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                Outcome::success(&json!({ "status": status, "body": body }))
            }
            Err(e) => Outcome::failure(format!("http_get denied or failed: {e:?}")),
        },
        "http_keep" => {
            let (mut kept, mut denied) = (Vec::new(), Vec::new());
            for _ in 0..number("times") {
                match waki::Client::new().get(&text(&instr, "url", "http://127.0.0.1/")).send() {
                    Ok(response) => kept.push(response),
                    Err(e) => denied.push(format!("{e:?}")),
                }
            }
            Outcome::success(&json!({ "answered": kept.len(), "denied": denied.len(), "first_denial": denied.first() }))
        }
        "print" => {
            for i in 0..number("lines") {
                println!("{i:>10} {}", "x".repeat(89));
            }
            Outcome::success(&json!({ "printed_lines": number("lines") }))
        }
        "big_output" => Outcome::success(&json!("y".repeat(number("bytes") as usize))),
        "echo_input" => Outcome::success(&json!({
            "forward_outcome": if call.forward_outcome_unknown() { "unknown" } else { "success" },
            "input": call.input_json(),
        })),
        other => Outcome::failure(format!("unknown scripted instruction {other:?}")),
    }
}

impl Step for Scripted {
    fn execute(call: Call) -> Outcome {
        run(&call, "execute")
    }

    fn compensate(call: Call) -> Outcome {
        run(&call, "compensate")
    }
}

impl Participant for Scripted {
    fn prepare(call: Call) -> Vote {
        match run(&call, "prepare") {
            Outcome::Success(_) => Vote::Prepared,
            Outcome::Failure(reason) | Outcome::Retry(reason) => Vote::Abort(reason),
        }
    }

    fn commit(call: Call) -> Outcome {
        run(&call, "commit")
    }

    fn abort(call: Call) -> Outcome {
        run(&call, "abort")
    }
}

wasmtx_plugin_sdk::service_plugin!(Scripted);
