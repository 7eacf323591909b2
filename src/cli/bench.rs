//! `vmledger bench checkin`: the check-in load generator (see `service::loadgen`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::Ctx;
use crate::exit::Exit;
use crate::keys;
use crate::service::loadgen::{self, Options};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Simulated instances check in with a running service; prints throughput, latency percentiles and the ratio to this machine's Ed25519-verify rate
    Checkin(Args),
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service, e.g. http://127.0.0.1:8440
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Simulated instances (serials PREFIX00000, PREFIX00001, ...)
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Offered check-ins per second (open loop); 0 runs closed loop, as fast as possible
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Seconds of measured load (after every instance's first check-in)
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Keep-alive connections
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Serial prefix of the simulated instances
    #[arg(long, default_value = "BENCH-")]
    pub serial_prefix: String,
    /// Activation code of every simulated serial
    #[arg(long, value_name = "CODE")]
    pub activation_code: String,
    /// The service's public key: receipts are verified under it
    #[arg(long, value_name = "BASE64")]
    pub service_key: Option<String>,
    /// Service database: afterwards, check that every acknowledged entry is stored
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Seed of the simulated instances' keys
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Process id of the service (on this machine): report its CPU time per check-in
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Sign each request when it is sent instead of before the measured phase (the
    /// generator then competes with the service for the CPU)
    #[arg(long)]
    pub live_sign: bool,
}

pub fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<Exit> {
    let Command::Checkin(a) = cmd;
    let service_key = a
        .service_key
        .as_deref()
        .map(|k| keys::decode_public_key(k, "--service-key"))
        .transpose()?;
    let opts = Options {
        url: a.url,
        instances: a.instances,
        rate: a.rate.max(0.0),
        duration: Duration::from_secs(a.duration),
        connections: a.connections,
        serial_prefix: a.serial_prefix,
        activation_code: a.activation_code,
        service_key,
        db: a.db,
        seed: a.seed,
        server_pid: a.server_pid,
        presign: !a.live_sign,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let r = rt.block_on(loadgen::run(opts))?;
    ctx.out.emit(&r, || {
        format!(
            "{} instances, {:.0} s: {} check-ins ok, {} refused, {} errors\n\
             throughput {:.0} check-ins/s (offered {:.0}/s)\n\
             latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             entries acknowledged {}, lost {}\n\
             Ed25519 verify (1 core) {:.0}/s; check-ins/s : verify/s = {:.3}\n\
             CPU per check-in: load generator {}, service {}; 2-core capacity {}\n{}",
            r.instances,
            r.duration_s,
            r.ok,
            r.refused,
            r.errors,
            r.checkins_per_s,
            r.offered_rate,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.entries_acked,
            r.lost
                .map_or("unchecked (no --db)".to_string(), |l| l.to_string()),
            r.ed25519_verify_per_s,
            r.ratio_to_verify,
            r.client_cpu_us_per_checkin
                .map_or("?".into(), |v| format!("{v:.0} us")),
            r.server_cpu_us_per_checkin
                .map_or("? (no --server-pid)".into(), |v| format!("{v:.0} us")),
            r.two_core_capacity_per_s
                .map_or("?".into(), |v| format!("{v:.0} check-ins/s")),
            r.first_error
                .as_ref()
                .map(|e| format!("first error: {e}\n"))
                .unwrap_or_default()
        )
    })?;
    Ok(Exit::from_bool(
        r.errors == 0 && r.refused == 0 && r.lost.unwrap_or(0) == 0,
    ))
}
