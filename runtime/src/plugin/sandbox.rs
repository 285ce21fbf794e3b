//! The per-call sandbox: a fresh `Store` state with WASI granting nothing but clocks and
//! randomness, a memory limiter, and the `host` import. Never reused across calls.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::outbound::{Outbound, Scope};

use super::bindings::wit_host;

/// How much of a call's stdout and stderr is kept for the log.
const OUTPUT_CAPTURE_BYTES: usize = 64 * 1024;
/// Table elements a call may grow to; far above what real components use.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Who a call runs for; every log line of the call carries these. `http` is what the plugin
/// may reach over outbound HTTP (`None`: nothing).
#[derive(Clone, Default)]
pub struct CallTags {
    pub tenant: String,
    pub transaction_id: String,
    pub step: String,
    pub http: Option<HttpGrant>,
    /// Sent on the plugin's outbound requests that carry none (W3C trace context).
    pub traceparent: Option<String>,
}

/// The outbound client and the tenant's scope a plugin's wasi:http requests go through.
#[derive(Clone)]
pub struct HttpGrant {
    pub outbound: Outbound,
    pub scope: Scope,
}

pub(crate) struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Allowlist,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
    pub(crate) tags: CallTags,
    _running: Running,
}

/// Counts a plugin instance in `/metrics` for as long as its state lives.
struct Running;

impl Running {
    fn start() -> Running {
        crate::metrics::Metrics::global().add_instances(1);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        crate::metrics::Metrics::global().add_instances(-1);
    }
}

impl CallState {
    pub(crate) fn new(tags: CallTags, memory_cap: usize) -> Self {
        let stdout = CappedOutput::new(OUTPUT_CAPTURE_BYTES);
        let stderr = CappedOutput::new(OUTPUT_CAPTURE_BYTES);
        // Defaults already deny files (no preopens), env and args; sockets are turned off
        // outright rather than merely having every address denied.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        CallState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: Allowlist { tags: tags.clone(), in_flight: Arc::default() },
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_cap),
            stdout,
            stderr,
            tags,
            _running: Running::start(),
        }
    }

    /// Sends what the plugin printed to the log, one event per line.
    pub(crate) fn flush_output(&self) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
                tracing::info!(
                    target: "wasmtx::plugin::output",
                    tenant = %self.tags.tenant,
                    transaction_id = %self.tags.transaction_id,
                    step = %self.tags.step,
                    stream,
                    "{line}"
                );
            }
            let dropped = pipe.dropped();
            if dropped > 0 {
                tracing::warn!(
                    target: "wasmtx::plugin::output",
                    tenant = %self.tags.tenant,
                    transaction_id = %self.tags.transaction_id,
                    step = %self.tags.step,
                    stream,
                    "the plugin wrote {dropped} more bytes than the {OUTPUT_CAPTURE_BYTES} kept; they were dropped"
                );
            }
        }
    }

    /// What the plugin said about its own failure on stderr: a Python traceback's exception
    /// line, a Rust panic's location and message, or else the last line (what an uncaught
    /// exception of another language prints).
    pub(crate) fn last_stderr_message(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        explain_failure(&String::from_utf8_lossy(&bytes))
    }
}

/// Picks the lines of a failing plugin's stderr that say what went wrong.
pub(crate) fn explain_failure(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    // componentize-py prints the traceback, then its runtime panics ("Python function threw an
    // unexpected exception"): the exception is the last unindented line of the traceback, and
    // the last `File` line says where.
    if let Some(start) = lines.iter().rposition(|l| l.starts_with("Traceback (most recent call last)")) {
        let traceback: Vec<&str> = lines[start + 1..].iter().copied().take_while(|l| !l.starts_with("thread '")).collect();
        if let Some(exception) = traceback.iter().rfind(|l| !l.starts_with(' ')) {
            let at = traceback.iter().rfind(|l| l.trim_start().starts_with("File ")).map(|l| l.trim());
            return Some(match at {
                Some(at) => format!("{} ({at})", exception.trim()),
                None => exception.trim().to_string(),
            });
        }
    }
    // componentize-js (StarlingMonkey) prints the thrown value, `Stack:` and its frames, then
    // aborts.
    if let Some(stack) = lines.iter().rposition(|l| l.trim() == "Stack:") {
        if let Some(thrown) = stack.checked_sub(1).map(|i| lines[i].trim()) {
            return Some(match lines.get(stack + 1).filter(|l| l.starts_with(' ')) {
                Some(frame) => format!("{thrown} (at {})", frame.trim()),
                None => thrown.to_string(),
            });
        }
    }
    let lines: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
    match lines.iter().rposition(|l| l.contains("panicked at")) {
        Some(i) => Some(lines[i..].join(" ")),
        None => lines.last().map(|l| l.to_string()),
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Outbound HTTP through the one outbound policy (`crate::outbound`); every refusal is logged.
struct Allowlist {
    tags: CallTags,
    /// Requests of this call in flight (sent and not answered, or answered with a body the
    /// plugin still holds).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Outbound requests one call may have in flight at once, each until its answer is dropped.
const MAX_REQUESTS_IN_FLIGHT: usize = 8;

/// One request counted in a call's `in_flight`, until dropped.
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Allowlist {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        _ = fut;
        let tags = self.tags.clone();
        if let Some(tp) = tags.traceparent.as_deref().and_then(|tp| http::HeaderValue::from_str(tp).ok()) {
            request.headers_mut().entry("traceparent").or_insert(tp);
        }
        use std::sync::atomic::Ordering;
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        // Counted until the answer's body is dropped, not only until its head arrives: a
        // plugin keeping answers whose bodies never end keeps their connections open.
        let in_flight = Counted(self.in_flight.clone());
        // The whole exchange gets the plugin's first-byte timeout, or the call's own deadline
        // ends it first.
        let timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(std::time::Duration::from_secs(600));
        Box::new(async move {
            let uri = request.uri().to_string();
            let result = match &tags.http {
                Some(grant) => grant.outbound.send_plugin_request(&grant.scope, request, timeout).await,
                None => Err(wasmtime_wasi_http::Error::HttpRequestDenied),
            };
            if let Err(e @ (wasmtime_wasi_http::Error::HttpRequestDenied | wasmtime_wasi_http::Error::DestinationIpProhibited)) = &result {
                tracing::warn!(
                    target: "wasmtx::plugin::http",
                    tenant = %tags.tenant,
                    transaction_id = %tags.transaction_id,
                    step = %tags.step,
                    uri = %uri,
                    "outbound HTTP denied by the outbound policy: {e}"
                );
            }
            use http_body_util::BodyExt;
            let response = result?.map(|body| body.map_frame(move |frame| { let _ = &in_flight; frame }).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn std::future::Future<Output = _> + Send>))
        })
    }
}

/// Captures up to `cap` bytes of a plugin's stdout or stderr and drops (and counts) the rest:
/// a chatty plugin loses output, never its call.
#[derive(Clone)]
pub(crate) struct CappedOutput {
    cap: usize,
    kept: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl CappedOutput {
    fn new(cap: usize) -> Self {
        CappedOutput { cap, kept: Arc::default() }
    }

    fn take(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap();
        let room = self.cap.saturating_sub(kept.0.len()).min(bytes.len());
        kept.0.extend_from_slice(&bytes[..room]);
        kept.1 += bytes.len() - room;
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        self.kept.lock().unwrap().0.clone()
    }

    /// Bytes written beyond the cap.
    pub(crate) fn dropped(&self) -> usize {
        self.kept.lock().unwrap().1
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Pollable for CappedOutput {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async {})
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wit_host::Host for CallState {
    fn log(&mut self, level: wit_host::LogLevel, message: String) {
        let tags = &self.tags;
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(
                    target: "wasmtx::plugin::log",
                    $lvl,
                    tenant = %tags.tenant,
                    transaction_id = %tags.transaction_id,
                    step = %tags.step,
                    "{message}"
                )
            };
        }
        match level {
            wit_host::LogLevel::Trace => emit!(tracing::Level::TRACE),
            wit_host::LogLevel::Debug => emit!(tracing::Level::DEBUG),
            wit_host::LogLevel::Info => emit!(tracing::Level::INFO),
            wit_host::LogLevel::Warn => emit!(tracing::Level::WARN),
            wit_host::LogLevel::Error => emit!(tracing::Level::ERROR),
        }
    }
}

/// Caps the linear memory of a call — all of its memories together, however many instances
/// the component makes — and remembers whether the cap was what stopped the plugin, so the
/// resulting trap is reported as `MemoryLimit` rather than as the allocator's abort.
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// The bytes of every memory of the call so far.
    used: usize,
    /// `used` before the last growth allowed, for when wasmtime then fails it (a memory's own
    /// declared maximum is checked after the limiter).
    before: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(cap: usize) -> MemoryLimiter {
        MemoryLimiter { cap, used: 0, before: 0, hit: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for each memory as it is created (from 0) and each time it grows.
        let used = self.used.saturating_sub(current).saturating_add(desired);
        if used > self.cap {
            self.hit = true;
            return Ok(false);
        }
        (self.before, self.used) = (self.used, used);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used = self.before;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::{MemoryLimiter, explain_failure};

    #[test]
    fn the_memory_cap_holds_for_all_the_memories_of_a_call_together() {
        use wasmtime::ResourceLimiter;
        const MIB: usize = 1 << 20;
        let mut limiter = MemoryLimiter::new(10 * MIB);
        // A component whose instances each make a memory under the cap: the second would take
        // the call to 12 MiB.
        assert!(limiter.memory_growing(0, 6 * MIB, None).unwrap());
        assert!(!limiter.memory_growing(0, 6 * MIB, None).unwrap());
        assert!(limiter.hit);
        // What was refused is not counted: the first memory may still grow within the cap,
        // and a small second one fit beside it.
        assert!(limiter.memory_growing(6 * MIB, 9 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, MIB, None).unwrap());
        assert!(!limiter.memory_growing(MIB, 2 * MIB, None).unwrap());
        // A growth allowed here that wasmtime then fails (past the memory's own maximum) is
        // not counted.
        let mut limiter = MemoryLimiter::new(10 * MIB);
        assert!(limiter.memory_growing(0, 2 * MIB, None).unwrap());
        assert!(limiter.memory_growing(2 * MIB, 9 * MIB, None).unwrap());
        limiter.memory_grow_failed(wasmtime::Error::msg("past its maximum")).unwrap();
        assert!(limiter.memory_growing(0, 8 * MIB, None).unwrap(), "2 MiB in use, not 9");
    }

    #[test]
    fn a_python_traceback_is_explained_by_its_exception_line() {
        let stderr = "Traceback (most recent call last):\n  File \"/0/app.py\", line 43, in execute\nRuntimeError: stock table is corrupt\n\nthread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:\nPython function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            explain_failure(stderr).as_deref(),
            Some("RuntimeError: stock table is corrupt (File \"/0/app.py\", line 43, in execute)")
        );
    }

    #[test]
    fn a_js_throw_is_explained_by_the_thrown_value_and_its_first_frame() {
        let stderr = "risk service unreachable\nStack:\n  prepare@fraud-check.js:26:13\n  export_participant_0_1_0$prepare@/tmp/x/initializer.js:135:15\n\nRedirecting call to abort() to mozalloc_abort\n";
        assert_eq!(
            explain_failure(stderr).as_deref(),
            Some("risk service unreachable (at prepare@fraud-check.js:26:13)")
        );
    }

    #[test]
    fn a_rust_panic_is_explained_by_its_location_and_message() {
        let stderr = "starting\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nkaboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(explain_failure(stderr).as_deref(), Some("thread '<unnamed>' panicked at src/lib.rs:10:5: kaboom"));
    }

    #[test]
    fn otherwise_the_last_line_and_nothing_for_silence() {
        assert_eq!(explain_failure("one\nError: two\n\n").as_deref(), Some("Error: two"));
        assert_eq!(explain_failure(""), None);
    }
}
