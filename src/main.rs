//! The `vmledger` binary: parse the command line, run one command, map the outcome to an
//! exit code. Everything else lives in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    vmledger::cli::main()
}
