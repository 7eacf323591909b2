//! The command line: argument definitions (clap derive; `///` comments are the `--help`
//! text), one file per command, and the single place where outcomes become exit codes.
//!
//! Commands parse and validate their arguments, call the library, and print: human text
//! by default, exactly one JSON document on stdout with `--json`. Nothing below `cli/`
//! prints or exits.

mod admin;
mod backup;
mod bench;
mod boot;
mod checkin;
mod crosscheck;
pub mod diff;
mod diff_hardware;
mod diff_image;
mod diff_tree;
mod fingerprint;
mod fingerprint_hardware;
mod fingerprint_image;
mod fingerprint_tree;
mod gate;
mod hook;
mod init;
mod ledger;
mod output;
mod serve;
mod service;
mod simulate;
mod status;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Env, Overrides, ProcessEnv};
use crate::exit::{self, Exit};
pub use output::Output;

/// vmledger: offline-first licensing ledger for virtual appliances.
///
/// Exit codes: 0 ok, 1 negative answer (verification failed, mismatch, violation),
/// 2 usage/I-O/internal error, 3 locked, 4 disabled.
#[derive(Debug, Parser)]
#[command(
    name = "vmledger",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after any command.
///
/// `VMLEDGER_STATE_DIR` and `VMLEDGER_CONFIG` stand in for the flags; they are read by
/// [`GlobalArgs::with_env`] rather than by clap so that, like every `VMLEDGER_*` variable,
/// an empty value counts as unset.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// State directory (env VMLEDGER_STATE_DIR) [default: /var/lib/vmledger as root, else $XDG_STATE_HOME/vmledger]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Config file (env VMLEDGER_CONFIG) [default: /etc/vmledger/config.toml as root, else $XDG_CONFIG_HOME/vmledger/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this instance's identity (instance id, Ed25519 key) and its ledger
    Init(init::Args),
    /// Record a boot in the ledger (creating the identity on a sealed image's first boot)
    Boot(boot::Args),
    /// Show the instance, its ledger head and license state
    Status(status::Args),
    /// Inspect, verify and export the ledger
    #[command(subcommand)]
    Ledger(ledger::Command),
    /// Fingerprint disk images, virtual hardware or file trees
    #[command(subcommand)]
    Fingerprint(fingerprint::Command),
    /// Compare two images, manifests, hardware or tree fingerprints (exit 1 when they differ)
    Diff(diff::Args),
    /// Check in with the licensing service (or through request/response files when air-gapped)
    Checkin(checkin::Args),
    /// Exit 0 when configuration changes are allowed, 3 when locked, 4 when disabled
    Gate(gate::Args),
    /// Record (and with --restore undo) changes to configuration paths while locked
    Watch(watch::Args),
    /// Run the licensing service (HTTP API) until SIGTERM
    Serve(serve::Args),
    /// Create the licensing service's database and key
    #[command(subcommand)]
    Service(service::Command),
    /// The vendor's operations on the service database: SLAs, inspection, overrides
    #[command(subcommand)]
    Admin(admin::Command),
    /// Load generators that measure the service
    #[command(subcommand)]
    Bench(bench::Command),
    /// Cross-check exported ledgers for restored, duplicate and switching copies (exit 1 when flagged)
    Crosscheck(crosscheck::Args),
    /// Write a simulated fleet's signed exports and ground-truth labels (accuracy and scale runs)
    Simulate(simulate::Args),
    /// Hypervisor hooks (libvirt, Proxmox VE): the duplicate-start guard and host ledgers
    #[command(subcommand)]
    Hook(hook::Command),
    /// Signed backup manifests, and verifying a backup before a restore
    #[command(subcommand)]
    Backup(backup::Command),
}

impl GlobalArgs {
    /// Fill options the command line left unset from their environment variables (flags
    /// beat the environment; empty variables are unset).
    pub fn with_env(mut self, env: &dyn Env) -> GlobalArgs {
        if self.state_dir.is_none() {
            self.state_dir = env.var("VMLEDGER_STATE_DIR").map(PathBuf::from);
        }
        if self.config.is_none() {
            self.config = env.var("VMLEDGER_CONFIG").map(PathBuf::from);
        }
        self
    }
}

/// What every command gets: the global options and the output mode.
pub struct Ctx {
    pub global: GlobalArgs,
    pub out: Output,
}

impl Ctx {
    /// Resolve the configuration (defaults < file < env < flags); `serial` is the
    /// command's own `--serial`, if it has one.
    pub fn config(&self, serial: Option<&str>) -> anyhow::Result<Config> {
        Ok(Config::load(&Overrides {
            state_dir: self.global.state_dir.clone(),
            config: self.global.config.clone(),
            serial: serial.map(str::to_string),
        })?)
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    let ctx = Ctx {
        out: Output::new(cli.global.json),
        global: cli.global.with_env(&ProcessEnv),
    };
    match cli.command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Boot(a) => boot::run(&ctx, a),
        Command::Status(a) => status::run(&ctx, a),
        Command::Ledger(c) => ledger::run(&ctx, c),
        Command::Fingerprint(c) => fingerprint::run(&ctx, c),
        Command::Diff(a) => diff::run(&ctx, a),
        Command::Checkin(a) => checkin::run(&ctx, a),
        Command::Gate(a) => gate::run(&ctx, a),
        Command::Watch(a) => watch::run(&ctx, a),
        Command::Serve(a) => serve::run(&ctx, a),
        Command::Service(c) => service::run(&ctx, c),
        Command::Admin(c) => admin::run(&ctx, c),
        Command::Bench(c) => bench::run(&ctx, c),
        Command::Crosscheck(a) => crosscheck::run(&ctx, a),
        Command::Simulate(a) => simulate::run(&ctx, a),
        Command::Hook(c) => hook::run(&ctx, c),
        Command::Backup(c) => backup::run(&ctx, c),
    }
}

/// Entry point of the binary: parse, run, report, and decide the exit code.
pub fn main() -> ExitCode {
    crate::fsutil::restrict_umask();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are successes; every usage error is 2.
            if !e.use_stderr() {
                return ExitCode::SUCCESS;
            }
            // Usage errors, like every other error, are one JSON document with --json
            // (the command line did not parse, so look for the flag itself).
            let json = std::env::args_os()
                .skip(1)
                .take_while(|a| a != "--")
                .any(|a| a == "--json");
            if json {
                Output::new(true).usage_error(&e.render().to_string());
            }
            return ExitCode::from(exit::ERROR);
        }
    };
    let json = cli.global.json;
    match run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(err) => {
            Output::new(json).error(&err);
            ExitCode::from(exit::ERROR)
        }
    }
}
