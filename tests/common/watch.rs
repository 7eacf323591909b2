//! A running `vmledger watch`: its stderr lines (one per event) arrive on a channel so a
//! test waits for them with a bound, and its summary document is read when it exits
//! (`--exit-after N`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for an expected line or exit before failing the test (a safety net
/// against a hang, not a timing assertion).
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines printed before `watching` (changes found at start-up), not yet waited for.
    backlog: std::collections::VecDeque<String>,
}

impl Watch {
    /// Spawn `cmd` (a `vmledger ... watch ...` command) and wait until it is watching.
    pub fn spawn(mut cmd: Command) -> Watch {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn watch");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut w = Watch {
            child,
            lines,
            backlog: Default::default(),
        };
        let mut before = Vec::new();
        loop {
            let l = w.next_line("watching");
            if l.contains("watching") {
                break;
            }
            before.push(l);
        }
        w.backlog.extend(before);
        w
    }

    fn next_line(&mut self, what: &str) -> String {
        if let Some(l) = self.backlog.pop_front() {
            return l;
        }
        match self.lines.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = self.child.kill();
                panic!("watch never printed `{what}`");
            }
        }
    }

    /// Wait for a stderr line containing `what`.
    pub fn wait_for(&mut self, what: &str) -> String {
        loop {
            let l = self.next_line(what);
            if l.contains(what) {
                return l;
            }
        }
    }

    /// Wait for the command to exit (after `--exit-after N` events) and return its
    /// summary document (`--json`).
    pub fn finish(self) -> serde_json::Value {
        let (tx, rx) = mpsc::channel();
        let mut child = self.child;
        let mut stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
            let status = child.wait().expect("wait");
            let _ = tx.send((status, s));
        });
        let (status, out) = rx
            .recv_timeout(DEADLINE)
            .expect("watch exits after --exit-after");
        assert!(status.success(), "{out}");
        serde_json::from_str(&out).expect("summary document")
    }
}
