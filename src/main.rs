//! The `vmledger` binary: parse the command line, run one command, map the outcome to an
//! exit code. Everything else lives in the library (`src/lib.rs`).

/// mimalloc: the cross-check and the service allocate many small short-lived objects
/// (parsed entries, JSON values); glibc's allocator spent a third of the cross-check's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vmledger::cli::main()
}
