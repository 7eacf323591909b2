//! SLA expiry e-mail over real SMTP: Debian's aiosmtpd on loopback (plain and STARTTLS)
//! receives what `vmledger admin alerts` and the daily job in `vmledger serve` send;
//! each alert goes out once, survives restarts, and a failed send is retried.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::Sandbox;
use common::service::{ServeProc, init_db, sla_set, validate};

/// A real SMTP server writing every message into a Maildir.
struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Smtp {
    fn start(port: u16, maildir: &Path, tls: Option<(&Path, &Path)>) -> Smtp {
        let python = Path::new("/usr/bin/python3");
        assert!(
            python.exists(),
            "/usr/bin/python3 with python3-aiosmtpd is needed (tests/run installs it)"
        );
        let mut cmd = Command::new(python);
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        if let Some((cert, key)) = tls {
            cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
        }
        cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(maildir);
        Smtp::spawn(cmd, port, maildir)
    }

    /// Start `cmd` (an SMTP server on `port` delivering into `maildir`) and wait until it
    /// accepts connections.
    fn spawn(mut cmd: Command, port: u16, maildir: &Path) -> Smtp {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let smtp = Smtp {
            child: cmd.spawn().expect("start the SMTP server"),
            maildir: maildir.to_path_buf(),
        };
        // Wait until it accepts connections (bounded); Drop reaps it either way.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return smtp;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("aiosmtpd did not start on port {port}");
    }

    fn messages(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Wait (bounded) until `n` messages arrived.
    fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..400 {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.messages()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests pick free ports and start SMTP servers on them: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn day(offset: i64) -> String {
    (Utc::now().date_naive() + chrono::Duration::days(offset))
        .format("%Y-%m-%d")
        .to_string()
}

fn setup(sb: &Sandbox, smtp_port: u16, extra: &str) -> (PathBuf, PathBuf) {
    let (db, _) = init_db(sb);
    for (serial, ends, contact) in [
        ("SN-SOON", day(5), "soon@example.com"),
        ("SN-MONTH", day(20), "month@example.com"),
        ("SN-OVER", day(-1), "over@example.com"),
        ("SN-FAR", day(200), "far@example.com"),
    ] {
        sla_set(sb, &db, serial, &ends, None, Some(contact));
    }
    let config = sb.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nalert_from = \"Vendor licensing <licensing@vendor.example>\"\n[server.smtp]\nhost = \"{}\"\nport = {smtp_port}\ntimeout_secs = 10\n{extra}",
            if extra.contains("starttls") { "localhost" } else { "127.0.0.1" }
        ),
    )
    .unwrap();
    (db, config)
}

#[test]
fn alerts_are_sent_once_and_failed_sends_are_retried() {
    let _guard = one_at_a_time();
    let sb = Sandbox::new();
    let port = free_port();
    let (db, config) = setup(&sb, port, "");
    let alerts = |args: &[&str], code: i32| {
        let mut c = sb
            .cmd(["admin", "alerts", "--json", "--db"])
            .arg(&db)
            .arg("--config")
            .arg(&config);
        for a in args {
            c = c.arg(a);
        }
        c.expect(code)
    };
    // Dry run: what is due, nothing sent, nothing recorded.
    let doc = alerts(&["--dry-run"], 0).json();
    validate("admin-alerts", &doc);
    let due: Vec<(String, String)> = doc["due"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["serial"].as_str().unwrap().into(),
                a["stage"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        due,
        vec![
            ("SN-MONTH".to_string(), "30".to_string()),
            ("SN-OVER".to_string(), "ended".to_string()),
            ("SN-SOON".to_string(), "7".to_string()),
        ]
    );
    // The SMTP server is down: every send fails, exit 2, nothing recorded.
    let r = alerts(&[], 2);
    assert!(
        r.stderr.contains("3 of 3 alert(s) could not be sent"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("retried on the next run"), "{}", r.stderr);
    assert!(
        r.stderr.contains("SN-SOON -> soon@example.com (7)"),
        "{}",
        r.stderr
    );
    // It comes up: the next run sends all three.
    let smtp = Smtp::start(port, &sb.join("maildir"), None);
    let doc = alerts(&[], 0).json();
    assert_eq!(doc["sent"].as_array().unwrap().len(), 3);
    let mails = smtp.wait_for(3);
    assert_eq!(mails.len(), 3);
    let soon = mails
        .iter()
        .find(|m| m.contains("soon@example.com"))
        .unwrap();
    assert!(
        soon.contains("Subject: SLA for serial SN-SOON ends on"),
        "{soon}"
    );
    assert!(
        soon.contains("From: \"Vendor licensing\" <licensing@vendor.example>"),
        "{soon}"
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: SLA for serial SN-OVER has ended"))
    );
    // Each alert once: a second run (a restart changes nothing) sends nothing.
    let doc = alerts(&[], 0).json();
    assert!(doc["sent"].as_array().unwrap().is_empty());
    assert_eq!(smtp.messages().len(), 3);
    // Extending an SLA starts its sequence afresh.
    sb.cmd(["admin", "sla", "set", "SN-OVER", "--ends", &day(3), "--db"])
        .arg(&db)
        .ok();
    let doc = alerts(&[], 0).json();
    assert_eq!(doc["sent"][0]["stage"], "7");
    assert_eq!(smtp.wait_for(4).len(), 4);
}

#[test]
fn serve_runs_the_daily_alert_job_in_process() {
    let _guard = one_at_a_time();
    let sb = Sandbox::new();
    let port = free_port();
    let (db, config) = setup(&sb, port, "");
    let smtp = Smtp::start(port, &sb.join("maildir"), None);
    let p = ServeProc::start(&sb, &db, None, &["--config", config.to_str().unwrap()]);
    assert_eq!(smtp.wait_for(3).len(), 3);
    assert_eq!(p.terminate(), 0);
    // A restart does not send them again.
    let p = ServeProc::start(&sb, &db, None, &["--config", config.to_str().unwrap()]);
    let (s, b) = common::service::http(&p.url, "GET", "/metrics", vec![]);
    assert_eq!(s, 200);
    let text = String::from_utf8(b).unwrap();
    assert!(text.contains("vmledger_alerts_sent_total"), "{text}");
    assert_eq!(p.terminate(), 0);
    assert_eq!(smtp.messages().len(), 3);
}

#[test]
fn alerts_over_starttls() {
    let _guard = one_at_a_time();
    let sb = Sandbox::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(sb.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(sb.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let (db, config) = setup(
        &sb,
        port,
        &format!(
            "starttls = true\ntls_ca = \"{}\"\n",
            sb.join("cert.pem").display()
        ),
    );
    let smtp = Smtp::start(
        port,
        &sb.join("maildir"),
        Some((&sb.join("cert.pem"), &sb.join("key.pem"))),
    );
    let doc = sb
        .cmd(["admin", "alerts", "--json", "--db"])
        .arg(&db)
        .arg("--config")
        .arg(&config)
        .ok()
        .json();
    assert_eq!(doc["sent"].as_array().unwrap().len(), 3, "{doc:#}");
    assert_eq!(smtp.wait_for(3).len(), 3);
}

/// A mail server that requires STARTTLS and then login (aiosmtpd with an authenticator,
/// which logs every attempt): the configured `username`/`password` are used, a wrong
/// password is a send failure that is retried, and the 1-day alert goes out too.
#[test]
fn alerts_log_in_when_credentials_are_configured() {
    let _guard = one_at_a_time();
    let sb = Sandbox::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (sb.join("cert.pem"), sb.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let tls = format!("starttls = true\ntls_ca = \"{}\"\n", cert_pem.display());
    let (db, config) = setup(
        &sb,
        port,
        &format!("{tls}username = \"vendor-alerts\"\npassword = \"wrong\"\n"),
    );
    sla_set(
        &sb,
        &db,
        "SN-TODAY",
        &day(0),
        None,
        Some("today@example.com"),
    );
    let maildir = sb.join("maildir");
    let auth_log = sb.join("auth.log");
    let script = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
port, maildir, cert, key, user, password, log = sys.argv[1:]
def authenticate(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
    with open(log, "a") as f:
        f.write(f"{mechanism} {data.login.decode(errors='replace')} {'ok' if ok else 'refused'}\n")
    return AuthResult(success=ok)
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
Controller(Mailbox(maildir), hostname="127.0.0.1", port=int(port), tls_context=tls,
           require_starttls=True, authenticator=authenticate, auth_required=True).start()
while True:
    time.sleep(1)
"#;
    let mut server = Command::new("/usr/bin/python3");
    server
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(&maildir)
        .arg(&cert_pem)
        .arg(&key_pem)
        .args(["vendor-alerts", "s3cret"])
        .arg(&auth_log);
    let smtp = Smtp::spawn(server, port, &maildir);
    let alerts = |code: i32| {
        sb.cmd(["admin", "alerts", "--json", "--db"])
            .arg(&db)
            .arg("--config")
            .arg(&config)
            .expect(code)
    };
    // The wrong password: refused by the server, nothing sent, nothing recorded.
    let r = alerts(2);
    assert!(
        r.stderr.contains("4 of 4 alert(s) could not be sent"),
        "{}",
        r.stderr
    );
    assert!(smtp.messages().is_empty());
    let log = std::fs::read_to_string(&auth_log).unwrap_or_default();
    assert!(log.contains("vendor-alerts refused"), "{log}");
    // The right one: all four go out, each after a successful login.
    let fixed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("password = \"wrong\"", "password = \"s3cret\"");
    std::fs::write(&config, fixed).unwrap();
    let doc = alerts(0).json();
    let mut stages: Vec<String> = doc["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["serial"].as_str().unwrap(),
                a["stage"].as_str().unwrap()
            )
        })
        .collect();
    stages.sort();
    assert_eq!(
        stages,
        ["SN-MONTH 30", "SN-OVER ended", "SN-SOON 7", "SN-TODAY 1"],
        "{doc:#}"
    );
    assert_eq!(smtp.wait_for(4).len(), 4);
    let log = std::fs::read_to_string(&auth_log).unwrap();
    assert!(log.contains("vendor-alerts ok"), "{log}");
}
