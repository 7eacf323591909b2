//! Test support for the licensing service and the agent together: a real service on
//! 127.0.0.1:0 (in-process via `vmledger::service::launch` with an injected clock, or the
//! real `vmledger serve` binary, under libfaketime when its clock must move), and
//! appliance copies that are state dirs driven by the real agent binary (`init --service
//! ... --activation-code ...`, `boot`, `checkin`, `status`, under `faketime` at the test's
//! simulated instant so that the agent's clock agrees with the service's). State dirs are
//! copied to simulate VM copies, backups and snapshots. What a check-in came to is read
//! back from what the agent recorded (its `checkin` entry and stored receipt, or its
//! `checkin_failed` entry). Raw-protocol tests build requests with the agent's own
//! `vmledger::checkin::prepare` and post them with `vmledger::checkin::post` or
//! [`http`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use vmledger::checkin;
use vmledger::identity::{Instance, StateDir};
use vmledger::keys::PUBLIC_KEY_LEN;
use vmledger::protocol::{CheckinRequest, Receipt, Status};
use vmledger::service::{self, ServiceConfig, Settings};
use vmledger::time::{self, Clock, KernelClock};

use super::{Sandbox, bin};

/// A clock the test moves.
#[derive(Debug)]
pub struct TestClock {
    now: Mutex<DateTime<Utc>>,
}

impl TestClock {
    pub fn at(at: &str) -> Arc<TestClock> {
        Arc::new(TestClock {
            now: Mutex::new(time::parse_rfc3339(at).expect("RFC 3339 time")),
        })
    }
    pub fn set(&self, at: &str) {
        *self.now.lock().unwrap() = time::parse_rfc3339(at).expect("RFC 3339 time");
    }
    pub fn advance(&self, d: chrono::Duration) {
        *self.now.lock().unwrap() += d;
    }
    pub fn get(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }
    /// `YYYY-MM-DD HH:MM:SS` for faketime.
    pub fn faketime(&self) -> String {
        self.get().format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        time::truncate_ms(self.get())
    }
    fn kernel(&self) -> KernelClock {
        time::read_kernel_clock()
    }
}

/// Create a service database in the sandbox; returns its path and public key.
pub fn init_db(sb: &Sandbox) -> (PathBuf, [u8; PUBLIC_KEY_LEN]) {
    let db = sb.join("service.sqlite");
    let out = sb
        .cmd(["service", "init", "--json", "--db"])
        .arg(&db)
        .ok()
        .json();
    let pk = vmledger::keys::decode_public_key(out["public_key"].as_str().unwrap(), "pk").unwrap();
    (db, pk)
}

/// `vmledger admin sla set SERIAL --ends ENDS --activation-code CODE` through the binary.
pub fn sla(sb: &Sandbox, db: &Path, serial: &str, ends: &str, code: &str) -> Value {
    sla_set(sb, db, serial, ends, Some(code), None)
}

/// `vmledger admin sla set SERIAL --ends ENDS [--activation-code CODE] [--contact EMAIL]
/// --json` through the binary (the output checked against its schema).
pub fn sla_set(
    sb: &Sandbox,
    db: &Path,
    serial: &str,
    ends: &str,
    code: Option<&str>,
    contact: Option<&str>,
) -> Value {
    let mut c = sb.cmd(["admin", "sla", "set", serial, "--ends", ends, "--json"]);
    if let Some(code) = code {
        c = c.arg("--activation-code").arg(code);
    }
    if let Some(contact) = contact {
        c = c.arg("--contact").arg(contact);
    }
    let doc = c.arg("--db").arg(db).ok().json();
    validate("admin-sla", &doc);
    doc
}

/// `vmledger admin show WHAT --json`.
pub fn show(sb: &Sandbox, db: &Path, what: &str) -> Value {
    sb.cmd(["admin", "show", what, "--json", "--db"])
        .arg(db)
        .ok()
        .json()
}

/// An in-process service with an injected clock.
pub struct Svc {
    pub url: String,
    pub db: PathBuf,
    pub key: [u8; PUBLIC_KEY_LEN],
    pub clock: Arc<TestClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Svc {
    /// Start on `db` (created by [`init_db`]) with default settings.
    pub fn start(db: &Path, key: [u8; PUBLIC_KEY_LEN], clock: Arc<TestClock>) -> Svc {
        Svc::start_with(db, key, clock, Settings::default())
    }

    pub fn start_with(
        db: &Path,
        key: [u8; PUBLIC_KEY_LEN],
        clock: Arc<TestClock>,
        settings: Settings,
    ) -> Svc {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let config = ServiceConfig {
            db: db.to_path_buf(),
            settings,
            clock: clock.clone(),
            tls: None,
            alerts: false,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                service::launch(l, config, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("service started");
        Svc {
            url: format!("http://{addr}"),
            db: db.to_path_buf(),
            key,
            clock,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stop gracefully and wait.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The real `vmledger serve` binary on 127.0.0.1:0.
pub struct ServeProc {
    pub child: Child,
    pub url: String,
}

/// The clock a `vmledger serve` process reads.
pub enum ServeTime<'a> {
    Real,
    /// libfaketime: starts at this instant (`YYYY-MM-DD hh:mm:ss`) and runs.
    From(&'a str),
    /// libfaketime reading its spec from this file at every clock call, so the test moves
    /// the service's clock by rewriting the file (see [`set_time_file`]).
    File(&'a Path),
}

/// Write a libfaketime spec for a service started with [`ServeTime::File`]: its clock
/// reads `at` (`YYYY-MM-DD hh:mm:ss`) from now on and runs from there.
pub fn set_time_file(file: &Path, at: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("@{at}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

impl ServeProc {
    /// Start `vmledger serve --db DB --listen 127.0.0.1:0 EXTRA...`, optionally under
    /// `faketime SPEC`, and wait for its "serving on" line.
    pub fn start(sb: &Sandbox, db: &Path, faketime: Option<&str>, extra: &[&str]) -> ServeProc {
        let time = faketime.map_or(ServeTime::Real, ServeTime::From);
        ServeProc::start_on(sb, db, time, "127.0.0.1:0", extra)
    }

    /// Start `vmledger serve --db DB --listen LISTEN EXTRA...` with the given clock.
    pub fn start_on(
        sb: &Sandbox,
        db: &Path,
        time: ServeTime<'_>,
        listen: &str,
        extra: &[&str],
    ) -> ServeProc {
        let mut cmd = Command::new(bin());
        // Preload libfaketime directly (not through the `faketime` wrapper) so that
        // signals reach the service itself; timers (tokio) keep a real monotonic clock.
        match time {
            ServeTime::Real => {}
            ServeTime::From(spec) => {
                cmd.env("LD_PRELOAD", libfaketime())
                    .env("FAKETIME", format!("@{spec}"))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            ServeTime::File(file) => {
                cmd.env("LD_PRELOAD", libfaketime())
                    .env("FAKETIME_TIMESTAMP_FILE", file)
                    .env("FAKETIME_NO_CACHE", "1")
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
        }
        cmd.args(["serve", "--listen", listen, "--db"])
            .arg(db)
            .args(extra)
            .env("HOME", sb.path())
            .env("TZ", "UTC")
            .env_remove("VMLEDGER_DB")
            .env_remove("VMLEDGER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vmledger serve");
        let stdout = child.stdout.take().unwrap();
        // The first line with a URL: the text line, or the `url` member of `--json`.
        let mut reader = BufReader::new(stdout);
        let mut url = None;
        let mut seen = String::new();
        for _ in 0..20 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(w) = line
                .split(|c: char| c.is_whitespace() || c == '"')
                .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            {
                url = Some(w.trim_end_matches(',').to_string());
                break;
            }
        }
        let url = url.unwrap_or_else(|| panic!("no URL in serve's output: {seen:?}"));
        ServeProc { child, url }
    }

    /// Send `sig` to the service process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(mut self) -> i32 {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vmledger` with its clock faked from `when` (`YYYY-MM-DD hh:mm:ss`, UTC) onwards, the
/// monotonic clock left real (timers and network timeouts keep working). libfaketime is
/// preloaded directly, not through the `faketime` wrapper: the wrapper names a semaphore
/// after its pid and leaves it behind when it is killed, so a later wrapper given the
/// same pid fails ("sem_open: File exists") before running anything (seen in CI).
pub fn faked_bin(when: &str) -> Command {
    let mut c = Command::new(super::bin());
    c.env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", format!("@{when}"))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("TZ", "UTC");
    c
}

/// Path of libfaketime (installed with the `faketime` package).
pub fn libfaketime() -> PathBuf {
    super::require("faketime");
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/usr/local/lib",
    ] {
        let p = Path::new(dir).join("faketime/libfaketime.so.1");
        if p.exists() {
            return p;
        }
    }
    panic!("libfaketime.so.1 not found; install the `faketime` package (tests/run does)");
}

/// When a command runs: under `faketime` at a given instant, or on the real clock.
pub trait At {
    /// The `faketime` start time (`YYYY-MM-DD hh:mm:ss`, UTC), or `None` for the real clock.
    fn spec(&self) -> Option<String>;
}

impl At for TestClock {
    fn spec(&self) -> Option<String> {
        Some(self.faketime())
    }
}

impl At for str {
    fn spec(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// The real clock (no `faketime`).
pub struct RealTime;

impl At for RealTime {
    fn spec(&self) -> Option<String> {
        None
    }
}

/// What one check-in by the real agent came to, read back from what it recorded: the
/// `checkin` entry and the receipt it stored (signature verified with the service key), or
/// the `checkin_failed` entry.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The agent accepted a receipt.
    Receipt(Box<Receipt>),
    /// The service answered non-2xx (`error` is its `vmledger-service-error/v1` code).
    Refused {
        status: u16,
        error: String,
        message: String,
    },
    /// Any other failure (transport, or a receipt the agent rejected), with the reason
    /// word the agent recorded.
    Failed { reason: String, detail: String },
}

/// What `vmledger boot --json` did.
#[derive(Debug)]
pub struct Boot {
    pub code: i32,
    pub doc: Value,
    /// The boot-time check-in, when one was attempted.
    pub checkin: Option<Reply>,
}

/// One appliance copy: a state dir made by the real binary, configured to check in with a
/// service (`init --service URL --service-key KEY --activation-code CODE`). Every command
/// runs the real `vmledger` with `--state-dir` on it, under `faketime` when asked.
#[derive(Debug, Clone)]
pub struct Copy {
    pub dir: PathBuf,
    /// HOME of the commands (the sandbox).
    home: PathBuf,
    /// The service key its receipts must verify under.
    pub service_key: [u8; PUBLIC_KEY_LEN],
}

impl Copy {
    /// `vmledger init --serial SERIAL --service URL --service-key KEY [--activation-code
    /// CODE]` at `at`.
    pub fn init(
        sb: &Sandbox,
        name: &str,
        serial: &str,
        url: &str,
        service_key: &[u8; PUBLIC_KEY_LEN],
        code: Option<&str>,
        at: &(impl At + ?Sized),
    ) -> Copy {
        Copy::init_with(sb, name, serial, Some(url), service_key, code, at)
    }

    /// An air-gapped copy: `init` with the pinned service key (and code) but no URL; it
    /// checks in through request and response files only.
    pub fn init_air_gapped(
        sb: &Sandbox,
        name: &str,
        serial: &str,
        service_key: &[u8; PUBLIC_KEY_LEN],
        code: Option<&str>,
        at: &(impl At + ?Sized),
    ) -> Copy {
        Copy::init_with(sb, name, serial, None, service_key, code, at)
    }

    fn init_with(
        sb: &Sandbox,
        name: &str,
        serial: &str,
        url: Option<&str>,
        service_key: &[u8; PUBLIC_KEY_LEN],
        code: Option<&str>,
        at: &(impl At + ?Sized),
    ) -> Copy {
        let c = Copy {
            dir: sb.join(name),
            home: sb.path().to_path_buf(),
            service_key: *service_key,
        };
        let key = vmledger::keys::b64_encode(service_key);
        let mut args = vec!["init", "--serial", serial, "--service-key", &key];
        if let Some(url) = url {
            args.extend(["--service", url]);
        }
        if let Some(code) = code {
            args.extend(["--activation-code", code]);
        }
        c.ok(at, &args);
        c
    }

    /// The real binary on this state dir (any exit status).
    pub fn run(&self, at: &(impl At + ?Sized), args: &[&str]) -> super::Run {
        super::vendor::run_with_deadline(self.command(at, args), Duration::from_secs(120))
    }

    /// The command [`Copy::run`] runs (for long-running ones such as `watch`).
    pub fn command(&self, at: &(impl At + ?Sized), args: &[&str]) -> Command {
        let mut cmd = match at.spec() {
            Some(spec) => faked_bin(&spec),
            None => Command::new(bin()),
        };
        cmd.arg("--state-dir")
            .arg(&self.dir)
            .args(args)
            .env("HOME", &self.home)
            .env("TZ", "UTC")
            // Timers and network timeouts keep a real monotonic clock.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("VMLEDGER_") || k.starts_with("XDG_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// The real binary on this state dir; insists on exit 0.
    pub fn ok(&self, at: &(impl At + ?Sized), args: &[&str]) -> super::Run {
        let r = self.run(at, args);
        assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
        r
    }

    /// `vmledger checkin --json`: what the agent does daily. Returns what it recorded.
    pub fn checkin(&self, at: &(impl At + ?Sized)) -> Reply {
        let r = self.run(at, &["checkin", "--json"]);
        assert!(
            matches!(r.code, 0 | 1 | 3 | 4),
            "checkin exit {}: {}{}",
            r.code,
            r.stdout,
            r.stderr
        );
        let doc = r.json();
        validate("checkin", &doc);
        let seq = doc["seq"].as_u64().expect("checkin --json names its entry");
        let reply = self.outcome(seq);
        match &reply {
            Reply::Receipt(rc) => {
                assert_eq!(doc["ok"], true);
                assert_eq!(doc["acked_hash"], rc.body.acked_hash);
                let want = match doc["state"].as_str() {
                    Some("locked") => 3,
                    Some("disabled") => 4,
                    _ => 0,
                };
                assert_eq!(r.code, want, "{doc}");
            }
            _ => {
                assert_eq!(doc["ok"], false);
                assert_eq!(r.code, 1, "{doc}");
            }
        }
        reply
    }

    /// `vmledger boot --json` (which checks in when a service is configured).
    pub fn boot(&self, at: &(impl At + ?Sized)) -> Boot {
        let r = self.run(at, &["boot", "--json"]);
        assert!(
            matches!(r.code, 0 | 4),
            "boot exit {}: {}{}",
            r.code,
            r.stdout,
            r.stderr
        );
        let doc = r.json();
        let checkin = doc["checkin"]["seq"].as_u64().map(|s| self.outcome(s));
        Boot {
            code: r.code,
            doc,
            checkin,
        }
    }

    /// `vmledger boot --offline --json`: a boot without the boot-time check-in (the copy
    /// runs cut off from the service).
    pub fn boot_offline(&self, at: &(impl At + ?Sized)) -> Boot {
        let r = self.run(at, &["boot", "--offline", "--json"]);
        assert!(
            matches!(r.code, 0 | 4),
            "boot exit {}: {}",
            r.code,
            r.stderr
        );
        Boot {
            code: r.code,
            doc: r.json(),
            checkin: None,
        }
    }

    /// `vmledger status --json`.
    pub fn status(&self, at: &(impl At + ?Sized)) -> Value {
        let doc = self.ok(at, &["status", "--json"]).json();
        validate("status", &doc);
        doc
    }

    /// Point this copy at another service URL (`init --service URL` on the initialised
    /// copy, as an admin would after the service moved).
    pub fn point_to(&self, at: &(impl At + ?Sized), url: &str) {
        self.ok(at, &["init", "--service", url]);
    }

    /// What the ledger entry at `seq` (a `checkin` or `checkin_failed`) recorded.
    pub fn outcome(&self, seq: u64) -> Reply {
        let ledger = self.instance().ledger().unwrap();
        let e = ledger
            .entry(seq)
            .unwrap()
            .unwrap_or_else(|| panic!("no entry {seq}"));
        let d = &e.body.data;
        let text = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match e.body.kind.as_str() {
            "checkin" => {
                let hash = text("receipt");
                let r = vmledger::checkin::stored_receipt(&ledger, &hash)
                    .unwrap()
                    .unwrap_or_else(|| panic!("receipt {hash} not stored"));
                r.verify(&self.service_key)
                    .expect("the stored receipt verifies under the service key");
                assert_eq!(r.hash().unwrap(), hash);
                assert_eq!(text("acked_hash"), r.body.acked_hash);
                Reply::Receipt(Box::new(r))
            }
            "checkin_failed" => match d.get("http_status").and_then(Value::as_u64) {
                Some(status) => Reply::Refused {
                    status: status as u16,
                    error: text("service_error"),
                    message: text("service_message"),
                },
                None => Reply::Failed {
                    reason: text("reason"),
                    detail: text("detail"),
                },
            },
            other => panic!("entry {seq} is a `{other}`, not a check-in outcome"),
        }
    }

    /// A signed request this copy would send now, built by the agent's own
    /// [`vmledger::checkin::prepare`] (for raw-protocol tests): entries after its
    /// acknowledged head, with `code` as activation code while it never checked in.
    pub fn request(&self, code: Option<&str>, clock: &dyn Clock) -> CheckinRequest {
        let inst = self.instance();
        let ledger = inst.ledger().unwrap();
        let from = checkin::acknowledged(&ledger)
            .unwrap()
            .map_or(0, |(s, _)| s + 1);
        let service = checkin::Service {
            activation_code: code.map(str::to_string),
            ..Default::default()
        };
        checkin::prepare(&inst, &ledger, &service, from, None, clock)
            .unwrap()
            .request
    }

    /// Copy the whole state dir (a VM copy or backup).
    pub fn copy_to(&self, sb: &Sandbox, name: &str) -> Copy {
        let dir = sb.join(name);
        copy_dir(&self.dir, &dir);
        Copy {
            dir,
            ..self.clone()
        }
    }

    /// Replace this copy's state with `other`'s (restore a backup or snapshot in place).
    pub fn restore_from(&self, other: &Copy) {
        std::fs::remove_dir_all(&self.dir).unwrap();
        copy_dir(&other.dir, &self.dir);
    }

    pub fn instance(&self) -> Instance {
        Instance::open(&StateDir::new(&self.dir)).unwrap()
    }

    pub fn instance_id(&self) -> String {
        self.instance().settings.instance
    }

    /// Number of ledger entries.
    pub fn len(&self) -> u64 {
        self.instance().ledger().unwrap().count().unwrap()
    }

    /// Kinds of every ledger entry, in order.
    pub fn kinds(&self) -> Vec<String> {
        let ledger = self.instance().ledger().unwrap();
        ledger
            .entries_from(0)
            .unwrap()
            .into_iter()
            .map(|e| e.body.kind)
            .collect()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The receipt in a reply, or a panic naming the failure.
pub fn receipt(reply: &Reply) -> &Receipt {
    match reply {
        Reply::Receipt(r) => r,
        other => panic!("expected a receipt, got {other:?}"),
    }
}

/// The refusal in a reply (HTTP status and error code), or a panic.
pub fn refused(reply: &Reply) -> (u16, &str) {
    match reply {
        Reply::Refused { status, error, .. } => (*status, error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Assert a receipt's status and reason.
pub fn assert_status(reply: &Reply, status: Status, reason: Option<&str>) {
    let r = receipt(reply);
    assert_eq!(r.body.status, status, "{:?}", r.body);
    assert_eq!(r.body.reason.as_deref(), reason, "{:?}", r.body);
}

/// POST a hand-built request with the agent's own HTTP client
/// ([`vmledger::checkin::post`]), for raw-protocol tests; nothing is recorded.
pub fn post(url: &str, req: &CheckinRequest) -> Reply {
    match checkin::post(url, req, Duration::from_secs(30)) {
        Ok(checkin::Reply::Receipt(r)) => Reply::Receipt(r),
        Ok(checkin::Reply::Refused { status, error }) => {
            let e = error.expect("a vmledger-service-error/v1 body");
            Reply::Refused {
                status,
                error: e.error,
                message: e.message,
            }
        }
        Err(f) => Reply::Failed {
            reason: f.reason.to_string(),
            detail: f.detail,
        },
    }
}

/// One raw HTTP request (any method, path and body) with `ureq`; returns the status and
/// the body. `ca` trusts a PEM certificate for https.
pub fn http(url: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    http_with(url, None, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`] with an optional CA certificate (PEM) for https; transport errors returned.
pub fn http_with(
    url: &str,
    ca: Option<&Path>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), ureq::Error> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .proxy(None);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let uri = format!("{}{path}", url.trim_end_matches('/'));
    let builder = ureq::http::Request::builder()
        .method(method)
        .uri(&uri)
        .header("content-type", "application/json");
    let response = if body.is_empty() && method == "GET" {
        agent.run(builder.body(()).unwrap())?
    } else {
        agent.run(builder.body(body).unwrap())?
    };
    let status = response.status().as_u16();
    let bytes = response.into_body().read_to_vec()?;
    Ok((status, bytes))
}

/// Validate `doc` against `schemas/NAME.schema.json` (references resolved by `$id`).
pub fn validate(name: &str, doc: &Value) {
    super::schema::assert_valid(name, doc);
}
