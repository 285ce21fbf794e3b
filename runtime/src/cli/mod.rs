//! The `wasmtx` command line: argument parsing and the glue from commands to the library.
//! Commands print human-readable progress to stderr and results to stdout.
//!
//! The glue only: it composes the library's parts (store, host, engines, API) and reports; it
//! never reaches into a store backend's driver or an engine's state.

mod api_bench;
mod bench;
mod engine_bench;
mod child;
mod client;
mod fleet;
mod http1;
mod report;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::plugin::{HostConfig, PluginHost};

#[derive(Parser)]
#[command(name = "wasmtx", version, about = "Distributed-transaction coordinator with WebAssembly plugins")]
struct Cli {
    /// Log format on stderr: `text` or `json` (filter with WASMTX_LOG, e.g. `info`).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Run the coordinator: HTTP API, engines, recovery loop.
    Serve(serve::ServeArgs),
    /// Run one transaction described in a JSON spec on the embedded store and print its document.
    Run(run::RunArgs),
    /// Measure wasmtx on this machine.
    Bench(bench::BenchArgs),
    /// Print a transaction's document from a server (saga-…, tpc-… or tx-… id).
    Status {
        id: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Continue a stopped transaction on a server (resume a saga, recover a 2PC or managed one).
    Recover {
        id: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// List a server's transactions of one kind (saga, 2pc, transaction), newest first, as a table.
    List {
        /// `saga`, `2pc` or `transaction`.
        #[arg(value_name = "KIND")]
        of: String,
        #[command(flatten)]
        search: client::SearchArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Search a server's transactions (every kind unless --kind), newest first, as a table.
    Search {
        #[command(flatten)]
        search: client::SearchArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a component and print its digest and the roles it exports.
    Inspect {
        /// The component file (.wasm).
        file: PathBuf,
    },
    /// Upload a component to a server as the next version of NAME.
    Push {
        name: String,
        /// The component file (.wasm).
        file: PathBuf,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// List a server's plugins (newest version of each).
    List {
        #[command(flatten)]
        server: client::ServerArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Command::Serve(args) => args.otlp_endpoint.clone(),
        _ => None,
    };
    let exporter = match init_tracing(&cli.log_format, otlp.as_deref()) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}

/// Logs to stderr (filtered by `WASMTX_LOG`, `warn` by default) and, with an OTLP endpoint,
/// exports the engines' spans (at `info`, whatever the log filter says).
fn init_tracing(format: &str, otlp: Option<&str>) -> Result<Option<crate::telemetry::Exporter>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMTX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        "json" => log.json().with_filter(filter).boxed(),
        _ => log.with_filter(filter).boxed(),
    };
    let exporter = crate::telemetry::Exporter::start(otlp)?;
    // No span layer at all without export: an absent (`None`) layer says it is interested in
    // everything, and every span and event would then be built only to be filtered out
    // (measured: 8-15% more CPU per transaction in `bench saga`/`bench 2pc`).
    let _ = match &exporter {
        Some(e) => {
            let only_ours = tracing_subscriber::filter::Targets::new().with_target("wasmtx", tracing::Level::INFO);
            let spans = tracing_opentelemetry::layer().with_tracer(e.tracer()).with_filter(only_ours);
            tracing_subscriber::registry().with(log).with(spans).try_init()
        }
        None => tracing_subscriber::registry().with(log).try_init(),
    };
    Ok(exporter)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin(PluginCommand::Inspect { file }) => inspect(&file).await,
        Command::Plugin(PluginCommand::Push { name, file, server }) => server.push(&name, &file).await,
        Command::Plugin(PluginCommand::List { server }) => server.list().await,
        Command::Status { id, server } => server.status(&id).await,
        Command::Recover { id, server } => server.recover(&id).await,
        Command::List { of, search, server } => server.search(&search.of_kind(of)).await,
        Command::Search { search, server } => server.search(&search).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
    }
}

async fn inspect(file: &PathBuf) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let host = PluginHost::new(HostConfig::default()).map_err(anyhow::Error::from)?;
    match crate::plugin::inspect(&host, &bytes).await {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: not a valid wasmtx plugin: {e}", file.display());
            Ok(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
