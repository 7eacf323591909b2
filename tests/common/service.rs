//! Test support for the licensing service: a real service on 127.0.0.1:0 (in-process via
//! `vmledger::service::launch` with an injected clock, or the real `vmledger serve`
//! binary), appliance copies made with the real binary (`init`, `boot`, state dirs copied
//! to simulate VM copies), and a minimal agent that checks a copy in the way the
//! appliance does: entries after the last acknowledged one, signed with the copy's real
//! key; on a receipt it records a `checkin` entry citing it; on 409 it re-sends from the
//! service's acknowledged head.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use vmledger::identity::{Instance, StateDir};
use vmledger::keys::PUBLIC_KEY_LEN;
use vmledger::protocol::{CheckinRequest, Receipt, ServiceError, Status};
use vmledger::service::client::{self, Reply};
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
    sb.cmd([
        "admin",
        "sla",
        "set",
        serial,
        "--ends",
        ends,
        "--activation-code",
        code,
        "--json",
        "--db",
    ])
    .arg(db)
    .ok()
    .json()
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

impl ServeProc {
    /// Start `vmledger serve --db DB --listen 127.0.0.1:0 EXTRA...`, optionally under
    /// `faketime SPEC`, and wait for its "serving on" line.
    pub fn start(sb: &Sandbox, db: &Path, faketime: Option<&str>, extra: &[&str]) -> ServeProc {
        let mut cmd = Command::new(bin());
        if let Some(spec) = faketime {
            // Preload libfaketime directly (not through the `faketime` wrapper) so that
            // signals reach the service itself.
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", format!("@{spec}"))
                // Timers (tokio) need a real monotonic clock.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra)
            .env("HOME", sb.path())
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

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(mut self) -> i32 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// One appliance copy: a state dir made by the real binary.
#[derive(Debug, Clone)]
pub struct Copy {
    pub dir: PathBuf,
}

/// The agent's bookkeeping, kept in the state dir so that copies carry it.
const ACKED: &str = "test-acked.json";

impl Copy {
    /// `vmledger init --serial SERIAL` (under faketime at `at`).
    pub fn init(sb: &Sandbox, name: &str, serial: &str, at: &str) -> Copy {
        let c = Copy { dir: sb.join(name) };
        c.run(sb, at, &["init", "--serial", serial]);
        c
    }

    /// The real binary on this state dir, with the clock faked to `at`.
    pub fn run(&self, sb: &Sandbox, at: &str, args: &[&str]) -> super::Run {
        super::require("faketime");
        let mut c = super::Cmd::new(Vec::<&str>::new());
        let mut cmd = Command::new("faketime");
        cmd.arg(at)
            .arg(bin())
            .arg("--state-dir")
            .arg(&self.dir)
            .args(args)
            .env("HOME", sb.path())
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("VMLEDGER_") || k.starts_with("XDG_") {
                cmd.env_remove(k);
            }
        }
        c.cmd = cmd;
        c.ok()
    }

    /// `vmledger boot` with the clock at `clock`'s time.
    pub fn boot(&self, sb: &Sandbox, clock: &TestClock) {
        self.run(sb, &clock.faketime(), &["boot"]);
    }

    /// Copy the whole state dir (a VM copy or backup).
    pub fn copy_to(&self, sb: &Sandbox, name: &str) -> Copy {
        let dir = sb.join(name);
        copy_dir(&self.dir, &dir);
        Copy { dir }
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

    fn acked(&self) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(self.dir.join(ACKED)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some((v["seq"].as_u64()?, v["hash"].as_str()?.to_string()))
    }

    fn set_acked(&self, acked: Option<(u64, String)>) {
        match acked {
            Some((seq, hash)) => std::fs::write(
                self.dir.join(ACKED),
                json!({"seq": seq, "hash": hash}).to_string(),
            )
            .unwrap(),
            None => {
                let _ = std::fs::remove_file(self.dir.join(ACKED));
            }
        }
    }

    /// The signed request this copy would send now (entries after its acknowledged head).
    pub fn request(&self, code: Option<&str>, clock: &dyn Clock) -> CheckinRequest {
        let from = self.acked().map_or(0, |(s, _)| s + 1);
        client::request_from_state(&self.instance(), from, code, clock).unwrap()
    }

    /// Check in with `url` at `clock`'s time the way the agent does. Returns the final
    /// reply; on a receipt the copy records a `checkin` entry citing it.
    pub fn checkin(
        &self,
        url: &str,
        service_key: &[u8; 32],
        code: Option<&str>,
        clock: &dyn Clock,
    ) -> Reply {
        let mut last = None;
        for _ in 0..3 {
            let req = self.request(code, clock);
            let reply = client::checkin_blocking(url, None, &req, Duration::from_secs(30)).unwrap();
            match &reply {
                Reply::Receipt(r) => {
                    r.verify(service_key)
                        .expect("receipt signed by the service key");
                    assert_eq!(r.body.nonce, req.body.nonce, "nonce echoed");
                    assert_eq!(r.body.instance, req.body.instance);
                    self.set_acked(Some((r.body.acked_seq, r.body.acked_hash.clone())));
                    self.record_receipt(r, clock);
                    return reply;
                }
                Reply::Refused { status: 409, error } if error.error == "unknown_prev" => {
                    // Re-send from the service's acknowledged head when it is ours.
                    let ours = error.acked_seq.and_then(|s| {
                        let e = self.instance().ledger().unwrap().entry(s).unwrap()?;
                        (Some(&e.hash) == error.acked_hash.as_ref()).then_some((s, e.hash))
                    });
                    self.set_acked(ours);
                    last = Some(reply);
                }
                _ => return reply,
            }
        }
        last.unwrap()
    }

    fn record_receipt(&self, r: &Receipt, clock: &dyn Clock) {
        let inst = self.instance();
        let mut data = Map::new();
        data.insert("receipt".into(), json!(r.hash().unwrap()));
        data.insert(
            "status".into(),
            serde_json::to_value(r.body.status).unwrap(),
        );
        inst.ledger()
            .unwrap()
            .append(&inst.key, "test_receipt_noted", data, clock)
            .unwrap();
    }

    /// Number of ledger entries.
    pub fn len(&self) -> u64 {
        self.instance().ledger().unwrap().count().unwrap()
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

/// The receipt in a reply, or a panic naming the refusal.
pub fn receipt(reply: &Reply) -> &Receipt {
    match reply {
        Reply::Receipt(r) => r,
        Reply::Refused { status, error } => panic!("refused {status}: {error:?}"),
    }
}

/// The refusal in a reply, or a panic.
pub fn refused(reply: &Reply) -> (u16, &ServiceError) {
    match reply {
        Reply::Refused { status, error } => (*status, error),
        Reply::Receipt(r) => panic!("expected a refusal, got a receipt: {:?}", r.body),
    }
}

/// Assert a receipt's status and reason.
pub fn assert_status(reply: &Reply, status: Status, reason: Option<&str>) {
    let r = receipt(reply);
    assert_eq!(r.body.status, status, "{:?}", r.body);
    assert_eq!(r.body.reason.as_deref(), reason, "{:?}", r.body);
}

/// Validate `doc` against `schemas/NAME.schema.json` (resolving references by `$id`).
pub fn validate(name: &str, doc: &Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let load = |n: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.join(n)).unwrap_or_else(|e| panic!("{n}: {e}")),
        )
        .unwrap()
    };
    let mut opts = jsonschema::options();
    for e in std::fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if n.ends_with(".schema.json") {
            let s = load(&n);
            let id = s["$id"].as_str().unwrap().to_string();
            opts = opts.with_resource(id, jsonschema::Resource::from_contents(s).unwrap());
        }
    }
    let schema = load(&format!("{name}.schema.json"));
    let v = opts
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"));
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{doc:#}");
}
