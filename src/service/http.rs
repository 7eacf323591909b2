//! The HTTP API: `POST /v1/checkin`, `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! Hardening, so that no input can cost more than a bounded amount or end in a 500:
//! header-read and request timeouts, a body size limit (checked on `Content-Length` and
//! while reading), a per-instance token bucket (burst >= 10), JSON
//! `vmledger-service-error/v1` bodies with a 4xx status for every bad input (unknown
//! routes and methods included), and a panic guard that still answers JSON. Connections
//! are served by hyper directly (plain or TLS via rustls), so shutdown is graceful: stop
//! accepting, finish requests in flight (their commits included), return.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::checkin::{self, Refusal};
use super::config::Settings;
use super::writer::{self, Job, Outcome};
use super::{ServiceConfig, ServiceError, SqliteStore, TlsFiles};
use crate::protocol::Receipt;
use crate::time::{self, Clock};

/// The service's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Vec<(String, String)>, Counter>,
    checkin_seconds: Histogram,
    batch_size: Histogram,
    entries: Counter,
    verdicts: Family<Vec<(String, String)>, Counter>,
    pub alerts_sent: Counter,
    pub alerts_failed: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vmledger");
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        let checkin_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let entries = Counter::default();
        let verdicts = Family::<Vec<(String, String)>, Counter>::default();
        let alerts_sent = Counter::default();
        let alerts_failed = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status code",
            requests.clone(),
        );
        registry.register(
            "checkin_duration_seconds",
            "Time to answer a check-in (parse, verify, commit, sign)",
            checkin_seconds.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Check-ins per durable commit (group commit)",
            batch_size.clone(),
        );
        registry.register("entries_stored", "Ledger entries stored", entries.clone());
        registry.register("verdicts", "Verdicts issued by kind", verdicts.clone());
        registry.register("alerts_sent", "SLA alert e-mails sent", alerts_sent.clone());
        registry.register(
            "alerts_failed",
            "SLA alert e-mails that failed (retried on the next run)",
            alerts_failed.clone(),
        );
        Metrics {
            registry,
            requests,
            checkin_seconds,
            batch_size,
            entries,
            verdicts,
            alerts_sent,
            alerts_failed,
        }
    }

    pub(crate) fn observe_batch(&self, n: usize) {
        self.batch_size.observe(n as f64);
    }

    fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route".into(), route.into()),
                ("code".into(), status.to_string()),
            ])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A token bucket per instance and signing key: `burst` requests at once, refilled at
/// `per_minute`.
struct RateLimiter {
    per_ms: f64,
    burst: f64,
    buckets: HashMap<String, (f64, i64)>,
}

const MAX_BUCKETS: usize = 200_000;

impl RateLimiter {
    fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_ms: f64::from(per_minute) / 60_000.0,
            burst: f64::from(burst),
            buckets: HashMap::new(),
        }
    }

    /// Take a token for `key` at `now_ms`; `Err(seconds until one is available)`.
    fn take(&mut self, key: &str, now_ms: i64) -> Result<(), u64> {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(key) {
            let (per_ms, burst) = (self.per_ms, self.burst);
            self.buckets
                .retain(|_, (t, at)| *t + (now_ms - *at).max(0) as f64 * per_ms < burst);
        }
        let (tokens, last) = self
            .buckets
            .entry(key.to_string())
            .or_insert((self.burst, now_ms));
        let refill = (now_ms - *last).max(0) as f64 * self.per_ms;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now_ms.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / self.per_ms) / 1000.0).ceil().max(1.0) as u64)
        }
    }
}

struct AppState {
    writer: mpsc::Sender<Job>,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    limiter: Mutex<RateLimiter>,
    metrics: Arc<Metrics>,
    /// The active key's id as of the writer's last batch (for `/healthz`).
    key_id: Arc<Mutex<String>>,
}

fn json_response(status: u16, body: &impl serde::Serialize) -> Response {
    let text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn refusal(r: &Refusal) -> Response {
    json_response(r.status, &r.body)
}

async fn checkin_route(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    let resp = match tokio::time::timeout(
        s.settings.request_timeout,
        checkin_inner(&s, &headers, body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => refusal(&Refusal::new(
            503,
            "timeout",
            "the request could not be answered in time; retry later (entries are never lost: re-sending them is safe)",
        )),
    };
    s.checkin_seconds_observe(started);
    s.metrics.request("/v1/checkin", resp.status().as_u16());
    resp
}

impl AppState {
    fn checkin_seconds_observe(&self, started: std::time::Instant) {
        self.metrics
            .checkin_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

async fn checkin_inner(s: &AppState, headers: &HeaderMap, body: Body) -> Response {
    let max = s.settings.max_body_bytes;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ok = ct
            .to_str()
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !ok {
            return refusal(&Refusal::new(
                415,
                "unsupported_media_type",
                "send the request as application/json",
            ));
        }
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return too_large(max);
    }
    let bytes = match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return too_large(max);
            }
            return refusal(&Refusal::new(
                400,
                "bad_body",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    let req = match checkin::parse(&bytes) {
        Ok(r) => r,
        Err(r) => return refusal(&r),
    };
    // Rate limit on the claimed instance and the key that signed the request (one
    // verification) before the expensive checks: a request that names somebody else's
    // instance cannot use up its allowance, since it cannot be signed with its key.
    let public_key = match checkin::authenticate(&req) {
        Ok(k) => k,
        Err(r) => return refusal(&r),
    };
    let now_ms = s.clock.now().timestamp_millis();
    let bucket = format!("{}/{}", req.body.instance, hex::encode(public_key));
    let limited = match s.limiter.lock() {
        Ok(mut l) => l.take(&bucket, now_ms),
        Err(_) => Ok(()),
    };
    if let Err(retry) = limited {
        let mut r = refusal(&Refusal::new(
            429,
            "rate_limited",
            format!(
                "too many requests for instance {}; retry in {retry} s",
                req.body.instance
            ),
        ));
        if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let prepared = match checkin::prepare_authenticated(req, public_key) {
        Ok(p) => p,
        Err(r) => return refusal(&r),
    };
    let (reply, rx) = oneshot::channel();
    if s.writer.send(Job { prepared, reply }).await.is_err() {
        return unavailable("the service is shutting down");
    }
    match rx.await {
        Ok(Outcome::Accepted(a)) => {
            s.metrics.entries.inc_by(a.new_entries);
            for k in &a.verdicts {
                s.metrics
                    .verdicts
                    .get_or_create(&vec![("kind".into(), k.clone())])
                    .inc();
            }
            match Receipt::sign(a.body, &a.signer) {
                Ok(receipt) => json_response(200, &receipt),
                Err(e) => unavailable(&format!("cannot sign the receipt: {e}")),
            }
        }
        Ok(Outcome::Refused(r)) => refusal(&r),
        Ok(Outcome::Unavailable(m)) => unavailable(&m),
        Err(_) => unavailable("the writer stopped"),
    }
}

fn too_large(max: usize) -> Response {
    refusal(&Refusal::new(
        413,
        "too_large",
        format!("the request body exceeds {max} bytes; send fewer entries per request"),
    ))
}

fn unavailable(message: &str) -> Response {
    refusal(&Refusal::new(
        503,
        "unavailable",
        format!("{message}; retry later (re-sending entries is safe)"),
    ))
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let ok = !s.writer.is_closed();
    s.metrics.request("/healthz", if ok { 200 } else { 503 });
    json_response(
        if ok { 200 } else { 503 },
        &json!({
            "format": "vmledger-health/v1",
            "status": if ok { "ok" } else { "unavailable" },
            "key_id": s.key_id.lock().map(|k| k.clone()).unwrap_or_default(),
            "server_time": time::format_at(s.clock.now()),
        }),
    )
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    s.metrics.request("/metrics", 200);
    let mut r = Response::new(Body::from(s.metrics.render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn not_found() -> Response {
    refusal(&Refusal::new(
        404,
        "not_found",
        "no such endpoint; the API is POST /v1/checkin, GET /healthz, GET /metrics",
    ))
}

async fn method_not_allowed() -> Response {
    refusal(&Refusal::new(
        405,
        "method_not_allowed",
        "wrong method for this endpoint; check-ins are POST /v1/checkin",
    ))
}

#[derive(Clone)]
struct PanicToJson;

impl tower_http::catch_panic::ResponseForPanic for PanicToJson {
    type ResponseBody = Body;
    fn response_for_panic(
        &mut self,
        _err: Box<dyn std::any::Any + Send + 'static>,
    ) -> axum::http::Response<Body> {
        refusal(&Refusal::new(
            503,
            "internal",
            "the service hit an internal error; retry later and report it to the vendor",
        ))
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/checkin", post(checkin_route))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            PanicToJson,
        ))
        .with_state(state)
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServiceError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServiceError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServiceError::Tls(format!(
            "{}: no certificate found (expected PEM)",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServiceError::Tls(format!("{}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServiceError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServiceError::Tls(format!("{}: {e}", files.key.display())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    // Every key that signs must load before anything is answered.
    let mut ring = super::keyring::KeyRing::new(&config.db);
    let signers = ring.signers(&super::keyring::list(&config.db)?)?;
    let key_id = Arc::new(Mutex::new(signers.active_id().to_string()));
    let store = SqliteStore::open(&config.db)?;
    let settings = Arc::new(config.settings);
    let metrics = Arc::new(Metrics::new());
    let (writer_tx, writer_thread) = writer::spawn(
        Box::new(store),
        settings.clone(),
        config.clock.clone(),
        ring,
        key_id.clone(),
        metrics.clone(),
    )
    .map_err(|source| ServiceError::Io {
        what: "cannot start the writer thread".into(),
        source,
    })?;
    let acceptor = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let state = Arc::new(AppState {
        writer: writer_tx,
        limiter: Mutex::new(RateLimiter::new(
            settings.rate_per_minute,
            settings.rate_burst,
        )),
        settings: settings.clone(),
        clock: config.clock.clone(),
        metrics: metrics.clone(),
        key_id,
    });
    let (stop_jobs, mut jobs_stopped) = tokio::sync::watch::channel(false);
    let alert_job = if config.alerts {
        let db = config.db.clone();
        let clock = config.clock.clone();
        let settings = settings.clone();
        let metrics = metrics.clone();
        Some(tokio::spawn(async move {
            loop {
                let (d, c, s, m) = (db.clone(), clock.clone(), settings.clone(), metrics.clone());
                let _ = tokio::task::spawn_blocking(move || super::alerts::daily(&d, &*c, &s, &m))
                    .await;
                tokio::select! {
                    _ = tokio::time::sleep(settings.alert_interval) => {}
                    _ = jobs_stopped.changed() => break,
                }
            }
        }))
    } else {
        None
    };

    let app = router(state.clone());
    let graceful = GracefulShutdown::new();
    let timeout = settings.request_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of descriptors or a reset during accept: back off briefly.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(app.clone());
                let watcher = graceful.watcher();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(timeout)
                        .keep_alive(true);
                    match acceptor {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            let _ = watcher.watch(conn).await;
                        }
                        Some(acc) => {
                            let Ok(Ok(tls)) = tokio::time::timeout(timeout, acc.accept(stream)).await else {
                                return;
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls), svc);
                            let _ = watcher.watch(conn).await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    // Let requests in flight finish (bounded), then stop the writer after its last batch.
    let _ = tokio::time::timeout(timeout + Duration::from_secs(5), graceful.shutdown()).await;
    let _ = stop_jobs.send(true);
    if let Some(j) = alert_job {
        let _ = tokio::time::timeout(Duration::from_secs(30), j).await;
    }
    drop(app);
    drop(state);
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || writer_thread.join()),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_refills() {
        let mut l = RateLimiter::new(60, 20);
        for _ in 0..20 {
            assert!(l.take("i", 0).is_ok());
        }
        assert_eq!(l.take("i", 0), Err(1));
        assert!(l.take("other", 0).is_ok());
        assert!(l.take("i", 1000).is_ok());
        assert!(l.take("i", 1000).is_err());
    }
}
