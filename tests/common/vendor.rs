//! The test vendor: plays the licensing service's side of the air-gapped exchange. It reads
//! the request file the real binary wrote, verifies it with `CheckinRequest::verify` and
//! checks that it carries exactly the entries after the head it acknowledged last, then
//! signs receipts with a fixed test service key (`Receipt::sign`). Also: running the binary
//! under the real `faketime`, and running a command with a safety deadline.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use vmledger::keys::SigningKey;
use vmledger::protocol::{CheckinRequest, Receipt, ReceiptBody, Status, key_id};

use super::{Cmd, Run, Sandbox};

/// The vendor's signing key and what it has acknowledged per instance.
pub struct Vendor {
    pub key: SigningKey,
    pub acked: Option<(u64, String)>,
}

/// How to answer a request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: Status,
    pub reason: Option<String>,
    pub verdict: Option<String>,
    pub sla_ends: Option<String>,
    /// Default: `server_time` + 24 h.
    pub next_checkin_before: Option<String>,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            status: Status::Active,
            reason: None,
            verdict: None,
            sla_ends: Some("2031-12-31".into()),
            next_checkin_before: None,
        }
    }
}

impl Vendor {
    pub fn new() -> Vendor {
        Vendor::with_seed(42)
    }

    pub fn with_seed(seed: u8) -> Vendor {
        Vendor {
            key: SigningKey::from_seed(&[seed; 32]),
            acked: None,
        }
    }

    pub fn public_key_b64(&self) -> String {
        self.key.public_key_b64()
    }

    /// Read and verify a request file; check its entries continue the acknowledged head.
    pub fn read_request(&self, path: &Path) -> CheckinRequest {
        let text = std::fs::read_to_string(path).expect("request file");
        let req: CheckinRequest = serde_json::from_str(&text).expect("request parses");
        let pk = req.verify().expect("request verifies");
        assert_eq!(
            pk.to_vec(),
            vmledger::keys::b64_decode(&req.body.public_key).unwrap()
        );
        let expected_first = self.acked.as_ref().map_or(0, |(s, _)| s + 1);
        if let Some(first) = req.body.entries.first() {
            assert_eq!(
                first.body.seq, expected_first,
                "request starts after the acked head"
            );
            if let Some((_, h)) = &self.acked {
                assert_eq!(&first.body.prev, h, "request links to the acked head");
            }
        }
        for w in req.body.entries.windows(2) {
            assert_eq!(w[1].body.seq, w[0].body.seq + 1);
            assert_eq!(w[1].body.prev, w[0].hash);
        }
        for e in &req.body.entries {
            e.check(Some(&pk)).expect("every entry verifies");
        }
        req
    }

    /// Sign a receipt answering `req` at `server_time`, acknowledging its last entry.
    pub fn answer(&mut self, req: &CheckinRequest, server_time: &str, a: Answer) -> Receipt {
        if let Some(last) = req.body.entries.last() {
            self.acked = Some((last.body.seq, last.hash.clone()));
        }
        let (acked_seq, acked_hash) = self.acked.clone().expect("something acknowledged");
        let next = a.next_checkin_before.unwrap_or_else(|| {
            let t = vmledger::time::parse_at(server_time).unwrap() + chrono::Duration::hours(24);
            vmledger::time::format_at(t)
        });
        let body = ReceiptBody {
            v: 1,
            key_id: key_id(&self.key.public_key()),
            serial: req.body.serial.clone(),
            instance: req.body.instance.clone(),
            nonce: req.body.nonce.clone(),
            server_time: server_time.into(),
            acked_seq,
            acked_hash,
            status: a.status,
            reason: a.reason,
            verdict: a.verdict,
            sla_ends: a.sla_ends,
            next_checkin_before: next,
            announce_key: None,
        };
        Receipt::sign(body, &self.key).expect("sign receipt")
    }
}

/// Write a JSON document to `path`.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// `vmledger ARGS` run under the real libfaketime with the clock starting at `when`
/// (`YYYY-MM-DD hh:mm:ss`, UTC), in the sandbox's environment.
pub fn faked<I, S>(sb: &Sandbox, when: &str, args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let base = sb.cmd(args);
    let mut cmd = super::service::faked_bin(when);
    cmd.args(base.cmd.get_args());
    for (k, v) in base.cmd.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.current_dir(sb.path());
    Cmd { cmd, stdin: None }
}

/// Run `cmd` to completion, killing it and failing the test if it is still running after
/// `deadline` (a safety net against a hang, not a timing assertion).
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => {
            let out = out.expect("wait");
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{cmd:?} still running after {deadline:?}");
        }
    }
}

/// All ledger entries (through `ledger show --json`).
pub fn entries(sb: &Sandbox) -> Vec<Value> {
    let doc = sb.cmd(["ledger", "show", "--json"]).ok().json();
    doc["entries"].as_array().cloned().unwrap_or_default()
}

/// Entries of one kind.
pub fn entries_of(sb: &Sandbox, kind: &str) -> Vec<Value> {
    entries(sb)
        .into_iter()
        .filter(|e| e["body"]["kind"] == kind)
        .collect()
}
