//! Process metrics (`/metrics`, Prometheus text through `prometheus-client`): transaction
//! events by kind, ends and durations by kind and outcome, transactions needing attention,
//! plugin instances running, plugin/participant call outcomes and latency
//! per phase, executions in flight, HTTP requests by route and status, the store's group
//! commits (batch size, latency) and the recovery passes completed. No tenant appears in a label: `/metrics` is for the
//! operator, and one tenant's activity must not be visible to another.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    phase: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    /// The route's pattern (`/v1/sagas/{id}`), never the path with its ids.
    route: String,
    status: u16,
}

fn latency() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The metrics of one process.
pub struct Metrics {
    registry: Registry,
    events: Family<KindLabel, Counter>,
    ends: Family<EndLabels, Counter>,
    durations: Family<EndLabels, Histogram, fn() -> Histogram>,
    instances: Gauge,
    attention: Family<KindLabel, Gauge>,
    calls: Family<CallLabels, Counter>,
    phase_latency: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    requests: Family<RouteLabels, Counter>,
    request_latency: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    commit_batch: Histogram,
    commit_latency: Histogram,
    recovery_passes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmtx");
        let events = Family::<KindLabel, Counter>::default();
        registry.register("transaction_events", "Durable transaction events by kind", events.clone());
        let ends = Family::<EndLabels, Counter>::default();
        registry.register("transaction_ends", "Transactions that reached an end state, by kind and outcome", ends.clone());
        let durations = Family::<EndLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        registry.register("transaction_duration_seconds", "From creation to the end state, by kind and outcome", durations.clone());
        let instances = Gauge::default();
        registry.register("plugin_instances", "Plugin instances running now", instances.clone());
        let attention = Family::<KindLabel, Gauge>::default();
        registry.register("transactions_needing_attention", "Transactions needing an operator by kind, across tenants (counted every sweep, at most 1000 per tenant and kind)", attention.clone());
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("participant_calls", "Plugin and HTTP participant calls by phase and outcome", calls.clone());
        let phase_latency = Family::<PhaseLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        registry.register("phase_duration_seconds", "Participant call latency by phase", phase_latency.clone());
        let in_flight = Gauge::default();
        registry.register("executions_in_flight", "Executions being served by this process", in_flight.clone());
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        let request_latency = Family::<PhaseLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        registry.register("http_request_duration_seconds", "HTTP request latency by method", request_latency.clone());
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register("store_commit_batch_writes", "Writes per group commit", commit_batch.clone());
        let commit_latency = latency();
        registry.register("store_commit_duration_seconds", "Group commit latency", commit_latency.clone());
        let recovery_passes = Counter::default();
        registry.register("recovery_passes", "Recovery passes completed (claiming expired leases)", recovery_passes.clone());
        Metrics { registry, events, ends, durations, instances, attention, calls, phase_latency, in_flight, requests, request_latency, commit_batch, commit_latency, recovery_passes }
    }
}

impl Metrics {
    /// The process's metrics (the store's committers record into them too).
    pub fn global() -> Arc<Metrics> {
        static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Metrics::default())).clone()
    }

    pub fn count_event(&self, kind: &str) {
        self.events.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }

    /// A transaction of `kind` reached the end state `outcome`, `took` after it was created.
    pub fn count_end(&self, kind: &str, outcome: &str, took: Duration) {
        let labels = EndLabels { kind: kind.to_string(), outcome: outcome.to_string() };
        self.ends.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Plugin instances running now (`delta` +1 when one is instantiated, -1 when it is
    /// dropped).
    pub fn add_instances(&self, delta: i64) {
        self.instances.inc_by(delta);
    }

    /// Transactions needing an operator, as last counted (see `serve`'s census).
    pub fn set_attention(&self, kind: &str, n: i64) {
        self.attention.get_or_create(&KindLabel { kind: kind.to_string() }).set(n);
    }

    /// One participant call of `phase` that ended as `outcome` after `took`.
    pub fn record_call(&self, phase: &'static str, outcome: &'static str, took: Duration) {
        self.calls.get_or_create(&CallLabels { phase, outcome }).inc();
        self.phase_latency.get_or_create(&PhaseLabel { phase }).observe(took.as_secs_f64());
    }

    pub fn add_in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// One HTTP request to `route` (its pattern) answered `status` after `took`.
    /// The method is one of the API's (any other counts as `other`: a client choosing its own
    /// method names must not grow the series without bound).
    pub fn record_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let method: &'static str = match method {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "HEAD" => "HEAD",
            _ => "other",
        };
        self.requests.get_or_create(&RouteLabels { method: method.to_string(), route: route.to_string(), status }).inc();
        self.request_latency.get_or_create(&PhaseLabel { phase: method }).observe(took.as_secs_f64());
    }

    /// One group commit of `writes` writes that took `took`.
    pub fn record_commit(&self, writes: usize, took: Duration) {
        self.commit_batch.observe(writes as f64);
        self.commit_latency.observe(took.as_secs_f64());
    }

    /// One recovery pass ended (whatever it claimed).
    pub fn count_recovery_pass(&self) {
        self.recovery_passes.inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text_without_tenants() {
        let m = Metrics::default();
        m.count_event("saga_completed");
        m.count_end("saga", "completed", Duration::from_millis(40));
        m.add_instances(3);
        m.add_instances(-1);
        m.set_attention("saga", 4);
        m.record_call("execute", "success", Duration::from_millis(3));
        m.add_in_flight(2);
        m.record_request("GET", "/v1/sagas/{id}", 200, Duration::from_millis(1));
        m.record_commit(12, Duration::from_millis(2));
        m.count_recovery_pass();
        let text = m.render();
        for line in [
            "wasmtx_transaction_events_total{kind=\"saga_completed\"} 1",
            "wasmtx_transaction_ends_total{kind=\"saga\",outcome=\"completed\"} 1",
            "wasmtx_participant_calls_total{phase=\"execute\",outcome=\"success\"} 1",
            "wasmtx_executions_in_flight 2",
            "wasmtx_http_requests_total{method=\"GET\",route=\"/v1/sagas/{id}\",status=\"200\"} 1",
            "wasmtx_store_commit_batch_writes_count 1",
            "wasmtx_recovery_passes_total 1",
            "wasmtx_transaction_duration_seconds_count{kind=\"saga\",outcome=\"completed\"} 1",
            "wasmtx_plugin_instances 2",
            "wasmtx_transactions_needing_attention{kind=\"saga\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn methods_a_client_makes_up_share_one_series() {
        let m = Metrics::default();
        for i in 0..50 {
            m.record_request(&format!("X{i:04}"), "unmatched", 404, Duration::from_millis(1));
        }
        let text = m.render();
        assert!(text.contains("wasmtx_http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 50"), "{text}");
        assert!(!text.contains("X0001"), "{text}");
    }
}
