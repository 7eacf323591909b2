//! Test support shared by every integration test: run the real `vmledger` binary in an
//! isolated environment (its own HOME, no inherited `VMLEDGER_*` variables, an empty config
//! file so that the machine's `/etc/vmledger/config.toml` never leaks in) and inspect what
//! it printed.
#![allow(dead_code)]

pub mod images;
pub mod libvirt;
pub mod schemas;
pub mod service;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod vendor;

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmledger"))
}

/// A scratch directory that also serves as HOME for the commands run in it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let sb = Sandbox {
            dir: tempfile::Builder::new()
                .prefix("vmledger-test-")
                .tempdir()
                .expect("tempdir"),
        };
        std::fs::write(sb.empty_config(), "").expect("write the empty config file");
        sb
    }

    /// An empty config file, the default `VMLEDGER_CONFIG` of [`Sandbox::cmd`]: commands
    /// never read the machine's own config file (tests run as root read `/etc/vmledger`).
    pub fn empty_config(&self) -> PathBuf {
        self.join("empty-config.toml")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the sandbox.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The default state dir used by [`Sandbox::cmd`] (`<sandbox>/state`).
    pub fn state(&self) -> PathBuf {
        self.join("state")
    }

    /// A `vmledger` command with HOME set to the sandbox, `--state-dir <sandbox>/state` and
    /// the empty config file (both through the environment, so flags still override them).
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Cmd::new(args);
        c.cmd.env("HOME", self.path());
        c.cmd.env("VMLEDGER_STATE_DIR", self.state());
        c.cmd.env("VMLEDGER_CONFIG", self.empty_config());
        c.cmd.current_dir(self.path());
        c
    }
}

/// A command being built.
pub struct Cmd {
    pub cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// `vmledger ARGS` with a clean environment: no `VMLEDGER_*`, no XDG dirs.
    pub fn new<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("VMLEDGER_") || k.starts_with("XDG_") {
                cmd.env_remove(k);
            }
        }
        Cmd { cmd, stdin: None }
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(k, v);
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.cmd.arg(a);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// Run to completion.
    pub fn run(mut self) -> Run {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawn vmledger");
        if let Some(bytes) = self.stdin.take() {
            let mut si = child.stdin.take().expect("stdin");
            // The command may exit without reading everything; that is its business.
            let _ = si.write_all(&bytes);
        }
        let out = child.wait_with_output().expect("wait vmledger");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run and insist on exit status `code`.
    pub fn expect(self, code: i32) -> Run {
        let desc = format!("{:?}", self.cmd);
        let r = self.run();
        assert_eq!(
            r.code, code,
            "{desc}\nexit {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            r.code, r.stdout, r.stderr
        );
        r
    }

    /// Run and insist on success.
    pub fn ok(self) -> Run {
        self.expect(0)
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}), exit {}:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }
}

/// True when `prog` is on PATH. Tests that need a system tool assert this rather than
/// skipping: the test command installs the tools (see `tests/run`).
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Panic with an actionable message when a required tool is missing.
pub fn require(prog: &str) {
    assert!(
        have(prog),
        "`{prog}` is not installed; run the test suite through `tests/run`, which installs it"
    );
}

pub mod hwfix;
pub mod schema;
pub mod treefix;
pub mod watch;
