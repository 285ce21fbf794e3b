//! How a benchmark reports: the machine, versions and build it ran on, then each figure as it
//! comes (text) or all of them at the end (`--json`), and the statistics the figures use.
//! Shared by every `wasmtx bench` command, so none of them imports another.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// The figures of one benchmark run, printed as they come (text) or at the end (`--json`).
pub(crate) struct Report {
    json: bool,
    fields: Map<String, Value>,
}

impl Report {
    /// A report that starts with the machine, the versions and the build profile.
    pub(crate) fn new(json: bool) -> Report {
        let mut report = Report { json, fields: Map::new() };
        let machine = Machine::read();
        report.add(
            "machine",
            json!({"cores": machine.cores, "cpu": machine.cpu, "memory_gib": machine.memory_gib}),
            format!("{} cores ({}), {:.1} GiB memory", machine.cores, machine.cpu, machine.memory_gib),
        );
        report.add(
            "versions",
            json!({"wasmtx": env!("CARGO_PKG_VERSION"), "wasmtime": "48"}),
            format!("wasmtx {}, wasmtime 48", env!("CARGO_PKG_VERSION")),
        );
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        report.add("build", profile, profile);
        report
    }

    /// Records one figure: `value` for JSON, `text` for people.
    pub(crate) fn add(&mut self, key: &str, value: impl Into<Value>, text: impl std::fmt::Display) {
        if !self.json {
            println!("{:<13} {text}", format!("{}:", label(key)));
        }
        self.fields.insert(key.to_string(), value.into());
    }

    /// Records the peak resident set size so far.
    pub(crate) fn add_peak_rss(&mut self) {
        let kib = peak_rss();
        let text = kib.map_or("unknown".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0));
        self.add("peak_rss_mib", kib.map(|kb| (kb as f64 / 1024.0 * 10.0).round() / 10.0), text);
    }

    pub(crate) fn finish(self) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&Value::Object(self.fields))?);
        }
        Ok(())
    }
}

/// The text label of a JSON key: `calls_per_s` → `calls/s`, `p50_us` → `p50`, `peak_rss_mib` → `peak RSS`.
fn label(key: &str) -> String {
    let key = key.replace("_per_s", "/s").replace("rss", "RSS");
    let key = ["_mib", "_ms", "_us", "_s"].iter().find_map(|unit| key.strip_suffix(unit)).unwrap_or(&key);
    key.replace('_', " ")
}

/// Rounds to two decimals (millisecond latencies in the JSON figures).
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to one decimal for the JSON figures.
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

struct Machine {
    cores: usize,
    cpu: String,
    memory_gib: f64,
}

impl Machine {
    fn read() -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
            .map_or(0.0, |kb| round1(kb as f64 / 1024.0 / 1024.0));
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine { cores, cpu, memory_gib }
    }
}


/// The `q` quantile of sorted latencies.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}


/// Peak resident set size of this process in KiB.
pub(crate) fn peak_rss() -> Option<u64> {
    peak_rss_of("self")
}

/// Runs `count` transactions, `concurrency` at a time, each by calling `one`, printing
/// progress every tenth; returns their latencies, sorted, and the wall time of the whole run.
pub(crate) async fn run_load<F, Fut>(concurrency: usize, count: usize, one: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (next, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (one, next, done) = (one.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let t = std::time::Instant::now();
                    one().await?;
                    latencies.push(t.elapsed());
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % (count / 10).max(1) == 0 {
                        eprintln!("  {n}/{count} ({:.1} s)", started.elapsed().as_secs_f64());
                    }
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for w in workers {
        latencies.extend(w.await??);
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    Ok((latencies, wall))
}

/// Milliseconds, as the figures print them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time (user plus system) process `pid` (`self` for this one) has used so far, from
/// /proc (Linux).
pub(crate) fn cpu_time_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    Some(Duration::from_secs_f64(ticks as f64 / per_second))
}

/// Milliseconds of CPU per transaction between two readings of `cpu_time_of`.
pub(crate) fn cpu_ms_per(before: Option<Duration>, after: Option<Duration>, count: usize) -> Option<f64> {
    Some(ms(after?.checked_sub(before?)?) / count.max(1) as f64)
}

/// Peak resident set size of process `pid` (`self` for this one) in KiB, from /proc (Linux).
pub(crate) fn peak_rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}
