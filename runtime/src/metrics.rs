//! Process metrics in Prometheus text format: transaction events by kind (which covers end
//! states by pattern: `saga_completed`, `transaction_committed`, …, and retries and recovery
//! claims), plugin/participant call outcomes and latency per phase, executions in flight.
//! No tenant appears in a label: `/metrics` is for the operator, and one tenant's activity
//! must not be visible to another.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 11] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    events: Mutex<BTreeMap<String, u64>>,
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    in_flight: AtomicI64,
}

impl Metrics {
    pub fn count_event(&self, kind: &str) {
        *self.events.lock().unwrap().entry(kind.to_string()).or_default() += 1;
    }

    /// One participant call of `phase` that ended as `outcome` after `took`.
    pub fn record_call(&self, phase: &'static str, outcome: &'static str, took: Duration) {
        *self.calls.lock().unwrap().entry((phase, outcome)).or_default() += 1;
        let secs = took.as_secs_f64();
        let mut latency = self.latency.lock().unwrap();
        let h = latency.entry(phase).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn add_in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP wasmtx_transaction_events_total Durable transaction events by kind.\n");
        out.push_str("# TYPE wasmtx_transaction_events_total counter\n");
        for (kind, n) in self.events.lock().unwrap().iter() {
            let _ = writeln!(out, "wasmtx_transaction_events_total{{kind=\"{kind}\"}} {n}");
        }
        out.push_str("# HELP wasmtx_participant_calls_total Plugin and HTTP participant calls by phase and outcome.\n");
        out.push_str("# TYPE wasmtx_participant_calls_total counter\n");
        for ((phase, outcome), n) in self.calls.lock().unwrap().iter() {
            let _ = writeln!(out, "wasmtx_participant_calls_total{{phase=\"{phase}\",outcome=\"{outcome}\"}} {n}");
        }
        out.push_str("# HELP wasmtx_phase_duration_seconds Participant call latency by phase.\n");
        out.push_str("# TYPE wasmtx_phase_duration_seconds histogram\n");
        for (phase, h) in self.latency.lock().unwrap().iter() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "wasmtx_phase_duration_seconds_bucket{{phase=\"{phase}\",le=\"{bound}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "wasmtx_phase_duration_seconds_bucket{{phase=\"{phase}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "wasmtx_phase_duration_seconds_sum{{phase=\"{phase}\"}} {}", h.sum);
            let _ = writeln!(out, "wasmtx_phase_duration_seconds_count{{phase=\"{phase}\"}} {}", h.count);
        }
        out.push_str("# HELP wasmtx_executions_in_flight Executions being served by this process.\n");
        out.push_str("# TYPE wasmtx_executions_in_flight gauge\n");
        let _ = writeln!(out, "wasmtx_executions_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.count_event("saga_completed");
        m.count_event("saga_completed");
        m.record_call("execute", "success", Duration::from_micros(300));
        m.record_call("execute", "retry", Duration::from_secs(2));
        m.add_in_flight(1);
        let text = m.render();
        assert!(text.contains("wasmtx_transaction_events_total{kind=\"saga_completed\"} 2"), "{text}");
        assert!(text.contains("wasmtx_participant_calls_total{phase=\"execute\",outcome=\"retry\"} 1"));
        assert!(text.contains("wasmtx_phase_duration_seconds_bucket{phase=\"execute\",le=\"0.0005\"} 1"));
        assert!(text.contains("wasmtx_phase_duration_seconds_bucket{phase=\"execute\",le=\"5\"} 2"));
        assert!(text.contains("wasmtx_phase_duration_seconds_count{phase=\"execute\"} 2"));
        assert!(text.contains("wasmtx_executions_in_flight 1"));
    }
}
