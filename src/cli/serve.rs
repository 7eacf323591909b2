//! `vmledger serve`: run the licensing service's HTTP API until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;

use super::Ctx;
use super::service::DbArg;
use crate::exit::Exit;
use crate::service::{self, ServiceConfig, Settings, TlsFiles};
use crate::time::SystemClock;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: DbArg,
    /// Address to listen on [default: `[server] listen`, else 127.0.0.1:8440]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// TLS certificate chain (PEM); serves HTTPS with --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Do not run the daily SLA alert job in this process
    #[arg(long)]
    pub no_alerts: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Exit> {
    let (db, cfg) = args.db.resolve(ctx)?;
    let listen = args
        .listen
        .or(cfg.server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8440".to_string());
    let settings = Settings::from_section(&cfg.server);
    // Fail before binding if the database or key is unusable.
    let (_, key_id) = service::load_key(&db)?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let https = tls.is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        // Handlers first: a SIGTERM that arrives as soon as the address is announced must
        // already mean "shut down gracefully", not the default "die".
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("listener address")?;
        let url = format!("{}://{addr}", if https { "https" } else { "http" });
        let doc = json!({"format": "vmledger-serve/v1", "url": url, "key_id": key_id, "db": db});
        ctx.out.emit(&doc, || {
            format!("vmledger: serving on {url} (key {key_id})")
        })?;
        let config = ServiceConfig {
            db,
            settings,
            clock: Arc::new(SystemClock),
            tls,
            alerts: !args.no_alerts,
        };
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        service::launch(listener, config, shutdown).await?;
        ctx.out
            .note("vmledger: stopped (in-flight requests finished)");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Exit::Ok)
}
