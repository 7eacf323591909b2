//! The check-in load generator behind `vmledger bench checkin`: N simulated instances
//! (real Ed25519 keys, real signed hash-chained entries built in memory) check in with a
//! running service over HTTP on loopback. Requests are signed by the agent's own request
//! builder ([`crate::checkin::sign_request`]) and answers decoded by its decoder
//! ([`crate::checkin::decode_reply`]); only the transport differs (async keep-alive
//! connections, [`super::client`]).
//!
//! Open loop: instance `i` is scheduled every `N / rate` seconds at its own phase, and
//! latency is measured from the *scheduled* time, so a slow service shows up as latency
//! instead of silently lowering the offered load (no coordinated omission). With
//! `rate = 0` the generator runs closed loop (as fast as `concurrency` connections go).
//!
//! It also measures the machine's single-core Ed25519 verification rate in the same run,
//! the bound per check-in, and (given the database) checks that every acknowledged entry
//! is stored: nothing lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Map;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::client::{ClientError, Connection, Endpoint};
use crate::checkin::{self, CHECKIN_PATH, Reply};
use crate::keys::{PUBLIC_KEY_LEN, SigningKey};
use crate::ledger::entry::{BODY_VERSION, Body, Entry, GENESIS_PREV};
use crate::protocol::Status;
use crate::time::{self, Clock, SystemClock};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub instances: usize,
    /// Offered check-ins per second (0: closed loop).
    pub rate: f64,
    pub duration: Duration,
    /// HTTP connections (keep-alive) shared by the instances.
    pub connections: usize,
    /// Serial of instance `i` is `{serial_prefix}{i:05}`.
    pub serial_prefix: String,
    pub activation_code: String,
    /// Verify every receipt's signature under this key (else the first of each instance).
    pub service_key: Option<[u8; PUBLIC_KEY_LEN]>,
    /// Service database, to check afterwards that every acknowledged entry is stored.
    pub db: Option<PathBuf>,
    pub seed: u64,
    /// The service's process id (same machine): its CPU time is reported too.
    pub server_pid: Option<u32>,
    /// Open loop: build and sign every request before the measured phase, so that the
    /// generator's own signing does not compete with the service for the CPU (the
    /// service still verifies and signs everything while measured).
    pub presign: bool,
}

/// Measured figures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub instances: usize,
    pub offered_rate: f64,
    pub duration_s: f64,
    pub checkins: u64,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    pub checkins_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub receipts_verified: u64,
    pub entries_acked: u64,
    /// Acknowledged entries missing from the database (must be 0); `null` without `--db`.
    pub lost: Option<u64>,
    /// Single-core ring Ed25519 verifications per second, measured in this run.
    pub ed25519_verify_per_s: f64,
    /// check-ins/s divided by verifications/s.
    pub ratio_to_verify: f64,
    /// CPU time per check-in during the measured phase (user + system), microseconds:
    /// the load generator itself (it signs two messages per check-in) and the service.
    pub client_cpu_us_per_checkin: Option<f64>,
    pub server_cpu_us_per_checkin: Option<f64>,
    /// 2 cores divided by the CPU both sides spend per check-in: the rate this machine
    /// sustains when nothing else runs on it.
    pub two_core_capacity_per_s: Option<f64>,
    pub first_error: Option<String>,
}

/// A request built and signed ahead of time.
struct Pre {
    body: Vec<u8>,
    nonce: String,
    head_hash: String,
    /// `entries.len()` once it is acknowledged.
    acked_len: usize,
}

struct Sim {
    queue: std::collections::VecDeque<Pre>,
    serial: String,
    instance: String,
    key: SigningKey,
    entries: Vec<Entry>,
    /// Index in `entries` of the first entry not yet acknowledged.
    unacked: usize,
    activated: bool,
    acked_hash: Option<String>,
}

impl Sim {
    fn new(i: usize, seed: u64, prefix: &str, now: &str) -> Result<Sim, ClientError> {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update((i as u64).to_le_bytes());
        let seed_bytes: [u8; 32] = h.finalize().into();
        let key = SigningKey::from_seed(&seed_bytes);
        let instance = hex::encode(&Sha256::digest(seed_bytes)[..16]);
        let serial = format!("{prefix}{i:05}");
        let mut data = Map::new();
        data.insert("serial".into(), serial.clone().into());
        data.insert("public_key".into(), key.public_key_b64().into());
        let body = Body {
            v: BODY_VERSION,
            instance: instance.clone(),
            seq: 0,
            prev: GENESIS_PREV.into(),
            kind: "genesis".into(),
            at: now.to_string(),
            boot_id: "bench".into(),
            uptime_ms: 0,
            data,
        };
        let g = Entry::seal(body, &key).map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Sim {
            queue: std::collections::VecDeque::new(),
            serial,
            instance,
            key,
            entries: vec![g],
            unacked: 0,
            activated: false,
            acked_hash: None,
        })
    }

    /// Sign a request carrying `entries` with the one request builder the agent uses.
    fn request(
        &self,
        entries: Vec<Entry>,
        activation_code: Option<String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::protocol::CheckinRequest, ClientError> {
        checkin::sign_request(
            &self.serial,
            &self.key,
            &self.instance,
            entries,
            activation_code,
            None,
            // Simulated appliances name no service key: the service signs with the oldest
            // key that signs (the active one when nothing rotates).
            None,
            now,
        )
        .map_err(|e| ClientError::Build(e.to_string()))
    }

    fn append(&mut self, kind: &str, now: &str) -> Result<(), ClientError> {
        let last = self
            .entries
            .last()
            .ok_or_else(|| ClientError::Build("empty".into()))?;
        let at = if now < last.body.at.as_str() {
            last.body.at.clone()
        } else {
            now.to_string()
        };
        let body = Body {
            v: BODY_VERSION,
            instance: self.instance.clone(),
            seq: last.body.seq + 1,
            prev: last.hash.clone(),
            kind: kind.into(),
            at,
            boot_id: "bench".into(),
            uptime_ms: 0,
            data: Map::new(),
        };
        let e = Entry::seal(body, &self.key).map_err(|e| ClientError::Build(e.to_string()))?;
        self.entries.push(e);
        // Keep memory flat: acknowledged entries are not needed any more.
        if self.unacked > 64 && self.queue.is_empty() {
            let drop = self.unacked - 1;
            self.entries.drain(..drop);
            self.unacked -= drop;
        }
        Ok(())
    }
}

/// POST a signed request's bytes on `conn` and decode the answer.
async fn post(conn: &mut Connection, body: Vec<u8>) -> Result<Reply, ClientError> {
    let (status, bytes) = conn.send("POST", CHECKIN_PATH, body).await?;
    let addr = conn.addr();
    checkin::decode_reply(status, &bytes, &addr).map_err(|f| ClientError::Unexpected {
        addr,
        message: f.detail,
    })
}

/// Single-core Ed25519 verifications per second (ring), measured for about `dur`.
pub fn ed25519_verify_rate(dur: Duration) -> f64 {
    let key = SigningKey::from_seed(&[7; 32]);
    let msg = vec![0x5a_u8; 400];
    let sig = key.sign(&msg);
    let pk = key.public_key();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            if crate::keys::verify(&pk, &msg, &sig) {
                n += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Shared {
    pool: tokio::sync::mpsc::Sender<Connection>,
    pool_rx: Mutex<tokio::sync::mpsc::Receiver<Connection>>,
    latencies: std::sync::Mutex<Vec<u32>>,
    ok: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    verified: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    endpoint: Endpoint,
}

impl Shared {
    async fn take(&self) -> Result<Connection, ClientError> {
        let mut rx = self.pool_rx.lock().await;
        rx.recv()
            .await
            .ok_or_else(|| ClientError::Build("connection pool closed".into()))
    }

    fn refused(&self, status: u16, error: Option<&crate::protocol::ServiceError>) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock()
            && f.is_none()
        {
            *f = Some(match error {
                Some(e) => format!("HTTP {status} {}: {}", e.error, e.message),
                None => format!("HTTP {status} without a service error body"),
            });
        }
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    }
}

/// Build and sign `k` check-ins of `sim` ahead of time, one new entry each.
fn presign(sim: &mut Sim, k: usize) -> Result<(), ClientError> {
    for _ in 0..k {
        let now = SystemClock.now();
        sim.append("checkin", &time::format_at(now))?;
        let e = sim
            .entries
            .last()
            .cloned()
            .ok_or_else(|| ClientError::Build("empty".into()))?;
        let req = sim.request(vec![e.clone()], None, now)?;
        sim.queue.push_back(Pre {
            body: serde_json::to_vec(&req).map_err(|x| ClientError::Build(x.to_string()))?,
            nonce: req.body.nonce,
            head_hash: e.hash,
            acked_len: sim.entries.len(),
        });
    }
    Ok(())
}

/// Send one pre-signed check-in. Returns true when acknowledged.
async fn checkin_presigned(shared: &Shared, sim: &mut Sim, pre: Pre) -> Result<bool, ClientError> {
    let mut conn = shared.take().await?;
    let result = post(&mut conn, pre.body).await;
    let reply = match result {
        Ok(r) => {
            let _ = shared.pool.send(conn).await;
            r
        }
        Err(e) => {
            if let Ok(c) = Connection::open(&shared.endpoint, Duration::from_secs(30)).await {
                let _ = shared.pool.send(c).await;
            }
            return Err(e);
        }
    };
    match reply {
        Reply::Receipt(r)
            if r.body.acked_hash == pre.head_hash
                && r.body.nonce == pre.nonce
                && r.body.status == Status::Active =>
        {
            sim.unacked = pre.acked_len;
            sim.acked_hash = Some(r.body.acked_hash);
            shared.ok.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
        Reply::Receipt(r) => {
            shared.error(format!(
                "instance {}: receipt acknowledges {} (status {:?}), expected {}",
                sim.instance, r.body.acked_hash, r.body.status, pre.head_hash
            ));
            sim.queue.clear();
            Ok(false)
        }
        Reply::Refused { status, error } => {
            shared.refused(status, error.as_ref());
            // The chain of pre-signed requests is broken: continue signing live.
            sim.queue.clear();
            Ok(false)
        }
    }
}

/// One check-in of `sim`. Returns true when acknowledged.
async fn checkin_once(
    shared: &Shared,
    sim: &mut Sim,
    opts: &Options,
    clock: &dyn Clock,
) -> Result<bool, ClientError> {
    if let Some(pre) = sim.queue.pop_front() {
        return checkin_presigned(shared, sim, pre).await;
    }
    let now = clock.now();
    if sim.activated {
        sim.append("checkin", &time::format_at(now))?;
    }
    let entries = sim.entries[sim.unacked..].to_vec();
    let code = (!sim.activated).then(|| opts.activation_code.clone());
    let req = sim.request(entries, code, now)?;
    let body = serde_json::to_vec(&req).map_err(|e| ClientError::Build(e.to_string()))?;
    let mut conn = shared.take().await?;
    let result = post(&mut conn, body).await;
    match result {
        Ok(reply) => {
            let _ = shared.pool.send(conn).await;
            match reply {
                Reply::Receipt(r) => {
                    let last = sim.entries.last().map(|e| e.hash.clone());
                    if r.body.acked_hash.as_str() != last.as_deref().unwrap_or("")
                        || r.body.nonce != req.body.nonce
                        || r.body.status != Status::Active
                    {
                        shared.error(format!(
                            "instance {}: receipt acknowledges {} (status {:?}), expected {:?}",
                            sim.instance, r.body.acked_hash, r.body.status, last
                        ));
                        return Ok(false);
                    }
                    if let Some(pk) = &opts.service_key
                        && (!sim.activated || shared.verified.load(Ordering::Relaxed) % 100 == 0)
                    {
                        if r.verify(pk).is_err() {
                            shared.error(format!("instance {}: receipt signature", sim.instance));
                            return Ok(false);
                        }
                        shared.verified.fetch_add(1, Ordering::Relaxed);
                    }
                    sim.unacked = sim.entries.len();
                    sim.acked_hash = Some(r.body.acked_hash);
                    sim.activated = true;
                    shared.ok.fetch_add(1, Ordering::Relaxed);
                    Ok(true)
                }
                Reply::Refused { status, error } => {
                    shared.refused(status, error.as_ref());
                    Ok(false)
                }
            }
        }
        Err(e) => {
            // The connection may be broken: replace it.
            if let Ok(c) = Connection::open(&shared.endpoint, Duration::from_secs(30)).await {
                let _ = shared.pool.send(c).await;
            }
            Err(e)
        }
    }
}

/// Run the load (see the module doc).
pub async fn run(opts: Options) -> Result<Report, ClientError> {
    if opts.instances == 0 {
        return Err(ClientError::Build("--instances must be at least 1".into()));
    }
    let verify_rate = tokio::task::spawn_blocking(|| ed25519_verify_rate(Duration::from_secs(1)))
        .await
        .map_err(|e| ClientError::Build(e.to_string()))?;
    let endpoint = Endpoint::parse(&opts.url)?;
    if endpoint.https {
        return Err(ClientError::Build(
            "the load generator speaks plain HTTP on loopback".into(),
        ));
    }
    let conns = opts.connections.max(1);
    let (ptx, prx) = tokio::sync::mpsc::channel(conns);
    for _ in 0..conns {
        let c = Connection::open(&endpoint, Duration::from_secs(30)).await?;
        let _ = ptx.send(c).await;
    }
    let shared = Arc::new(Shared {
        pool: ptx,
        pool_rx: Mutex::new(prx),
        latencies: std::sync::Mutex::new(Vec::new()),
        ok: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        endpoint: endpoint.clone(),
    });
    let clock = SystemClock;
    let now = time::format_at(clock.now());
    let mut sims = Vec::with_capacity(opts.instances);
    for i in 0..opts.instances {
        sims.push(Sim::new(i, opts.seed, &opts.serial_prefix, &now)?);
    }
    // Activation (first check-ins with genesis), not measured.
    let opts = Arc::new(opts);
    let mut handles = Vec::new();
    for chunk in sims
        .chunks(opts.instances.div_ceil(conns))
        .map(|c| c.len())
        .collect::<Vec<_>>()
    {
        let mine: Vec<Sim> = sims.drain(..chunk).collect();
        let (shared, opts) = (shared.clone(), opts.clone());
        handles.push(tokio::spawn(async move {
            let mut mine = mine;
            for s in mine.iter_mut() {
                if let Err(e) = checkin_once(&shared, s, &opts, &SystemClock).await {
                    shared.error(e.to_string());
                }
            }
            mine
        }));
    }
    for h in handles {
        sims.extend(h.await.map_err(|e| ClientError::Build(e.to_string()))?);
    }
    if shared.ok.load(Ordering::Relaxed) < opts.instances as u64 {
        let first = shared
            .first_error
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        return Err(ClientError::Build(format!(
            "only {} of {} instances activated; first error: {first}",
            shared.ok.load(Ordering::Relaxed),
            opts.instances
        )));
    }
    shared.ok.store(0, Ordering::Relaxed);
    shared.refused.store(0, Ordering::Relaxed);
    shared.errors.store(0, Ordering::Relaxed);
    if opts.presign && opts.rate > 0.0 {
        let k = (opts.rate * opts.duration.as_secs_f64() / sims.len() as f64).ceil() as usize + 2;
        let mut handles = Vec::new();
        let per = sims.len().div_ceil(2);
        while !sims.is_empty() {
            let mut part: Vec<Sim> = sims.drain(..per.min(sims.len())).collect();
            handles.push(tokio::task::spawn_blocking(move || {
                for s in part.iter_mut() {
                    presign(s, k)?;
                }
                Ok::<_, ClientError>(part)
            }));
        }
        for h in handles {
            sims.extend(h.await.map_err(|e| ClientError::Build(e.to_string()))??);
        }
    }

    // Measured phase.
    let cpu_before = (
        proc_cpu("self"),
        opts.server_pid.and_then(|p| proc_cpu(&p.to_string())),
    );
    let start = Instant::now();
    let n = sims.len();
    let mut handles = Vec::new();
    for (i, mut sim) in sims.into_iter().enumerate() {
        let (shared, opts) = (shared.clone(), opts.clone());
        handles.push(tokio::spawn(async move {
            let period = if opts.rate > 0.0 {
                Some(Duration::from_secs_f64(n as f64 / opts.rate))
            } else {
                None
            };
            let mut next =
                start + period.map_or(Duration::ZERO, |p| p.mul_f64(i as f64 / n as f64));
            let end = start + opts.duration;
            let mut local = Vec::new();
            while next < end {
                if let Some(_p) = period {
                    tokio::time::sleep_until(next.into()).await;
                }
                let scheduled = if period.is_some() {
                    next
                } else {
                    Instant::now()
                };
                match checkin_once(&shared, &mut sim, &opts, &SystemClock).await {
                    Ok(_) => {
                        local.push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Err(e) => shared.error(e.to_string()),
                }
                next = match period {
                    Some(p) => next + p,
                    None => Instant::now(),
                };
            }
            if let Ok(mut l) = shared.latencies.lock() {
                l.extend(local);
            }
            sim
        }));
    }
    let mut sims = Vec::with_capacity(n);
    for h in handles {
        sims.push(h.await.map_err(|e| ClientError::Build(e.to_string()))?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = (
        proc_cpu("self"),
        opts.server_pid.and_then(|p| proc_cpu(&p.to_string())),
    );
    let mut lat = shared
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (lat.len() as f64 - 1.0)).round() as usize;
        f64::from(lat[i.min(lat.len() - 1)]) / 1000.0
    };
    let ok = shared.ok.load(Ordering::Relaxed);
    let entries_acked: u64 = sims
        .iter()
        .map(|s| {
            s.entries
                .get(s.unacked.saturating_sub(1))
                .map_or(0, |e| e.body.seq + 1)
        })
        .sum();
    let lost = match &opts.db {
        Some(db) => Some(count_lost(db, &sims)?),
        None => None,
    };
    let rate = ok as f64 / elapsed;
    let per = |b: Option<f64>, a: Option<f64>| -> Option<f64> {
        Some((a? - b?) * 1e6 / (ok.max(1) as f64))
    };
    let client_cpu = per(cpu_before.0, cpu_after.0);
    let server_cpu = per(cpu_before.1, cpu_after.1);
    let capacity = match (client_cpu, server_cpu) {
        (Some(c), Some(s)) if c + s > 0.0 => Some(2e6 / (c + s)),
        _ => None,
    };
    Ok(Report {
        format: "vmledger-bench-checkin/v1",
        instances: n,
        offered_rate: opts.rate,
        duration_s: elapsed,
        checkins: ok
            + shared.refused.load(Ordering::Relaxed)
            + shared.errors.load(Ordering::Relaxed),
        ok,
        refused: shared.refused.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        checkins_per_s: rate,
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: lat.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        receipts_verified: shared.verified.load(Ordering::Relaxed),
        entries_acked,
        lost,
        ed25519_verify_per_s: verify_rate,
        ratio_to_verify: rate / verify_rate,
        client_cpu_us_per_checkin: client_cpu,
        server_cpu_us_per_checkin: server_cpu,
        two_core_capacity_per_s: capacity,
        first_error: shared.first_error.lock().ok().and_then(|f| f.clone()),
    })
}

/// CPU seconds (user + system) used so far by process `pid` (`self` for this one), from
/// `/proc/PID/stat` (clock ticks of 1/100 s, the Linux userspace ABI).
fn proc_cpu(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Acknowledged heads missing from the database, plus missing entry counts.
fn count_lost(db: &std::path::Path, sims: &[Sim]) -> Result<u64, ClientError> {
    use super::store::Store;
    let mut store = super::SqliteStore::open(db).map_err(|e| ClientError::Build(e.to_string()))?;
    let mut tx = store
        .read()
        .map_err(|e| ClientError::Build(e.to_string()))?;
    let mut lost = 0;
    for s in sims {
        let Some(head) = s.entries.get(s.unacked.saturating_sub(1)) else {
            continue;
        };
        let stored = tx
            .entry_count(&s.instance)
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let acked = head.body.seq + 1;
        let has_head = tx
            .entry(&s.instance, head.body.seq, &head.hash)
            .map_err(|e| ClientError::Build(e.to_string()))?
            .is_some();
        if !has_head || stored < acked {
            lost += acked.saturating_sub(stored).max(1);
        }
    }
    Ok(lost)
}
