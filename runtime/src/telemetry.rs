//! Span export over OTLP (HTTP/protobuf), when `serve --otlp-endpoint URL` (or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The spans
//! are the `tracing` spans the engines open (see `crate::trace`): one per transaction drive,
//! one per phase, one per participant or plugin call. Batches are sent from the exporter's
//! own thread, so a slow or absent collector never holds up a transaction; what is still
//! queued is flushed when the server stops (not after a SIGKILL).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The OTLP signal path appended to a base endpoint, as the OTLP specification says.
const TRACES_PATH: &str = "/v1/traces";

/// The span exporter, while it runs; `shutdown` flushes what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts exporting to `endpoint` (a collector's base URL, such as
    /// `http://127.0.0.1:4318`), or to what `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names when
    /// `endpoint` is `None`. `Ok(None)` when neither is set: nothing is exported.
    pub fn start(endpoint: Option<&str>) -> Result<Option<Exporter>, String> {
        let traces_url = match endpoint.filter(|e| !e.trim().is_empty()) {
            Some(base) => {
                url::Url::parse(base).map_err(|e| format!("--otlp-endpoint {base:?}: {e}"))?;
                Some(format!("{}{TRACES_PATH}", base.trim_end_matches('/')))
            }
            None if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() => None,
            None => return Ok(None),
        };
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(url) = traces_url {
            builder = builder.with_endpoint(url);
        }
        let exporter = builder.build().map_err(|e| format!("the OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("wasmtx").build())
            .build();
        Ok(Some(Exporter { provider }))
    }

    /// The tracer the `tracing` layer records spans with.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("wasmtx")
    }

    /// Sends what is queued and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: exporting the last spans failed: {e}");
        }
    }
}
