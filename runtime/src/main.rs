fn main() -> std::process::ExitCode {
    wasmtx::cli::main()
}
