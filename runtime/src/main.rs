// mimalloc: the coordinator allocates small, short-lived objects on every worker thread
// (JSON documents, plugin call state); glibc malloc's arena locking and consolidation showed
// up as a tenth of a saga's CPU in `perf`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wasmtx::cli::main()
}
