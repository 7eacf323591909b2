//! The systemd units in `hooks/systemd/` parse cleanly (`systemd-analyze verify`, with the
//! built binary's path substituted for `/usr/local/bin/vmledger`: verify checks that
//! `ExecStart=` is executable) and carry the settings the lifecycle relies on.

mod common;

use std::path::Path;
use std::process::Command;

const UNITS: [&str; 4] = [
    "vmledger-boot.service",
    "vmledger-checkin.service",
    "vmledger-checkin.timer",
    "vmledger-watch.service",
];

fn unit(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("hooks/systemd")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn units_verify_without_warnings() {
    common::require("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let bin = common::bin();
    for name in UNITS {
        let text = unit(name).replace("/usr/local/bin/vmledger", bin.to_str().unwrap());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.iter().map(|u| dir.path().join(u)))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or malformed settings are only warnings to systemd: none are allowed.
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| UNITS.iter().any(|u| l.contains(u)))
        .collect();
    assert!(own.is_empty(), "{}", own.join("\n"));
}

#[test]
fn units_have_the_lifecycle_settings() {
    let boot = unit("vmledger-boot.service");
    assert!(boot.contains("Type=oneshot"));
    assert!(boot.contains("RemainAfterExit=yes"));
    assert!(boot.contains("ExecStart=/usr/local/bin/vmledger boot"));
    let timer = unit("vmledger-checkin.timer");
    assert!(timer.contains("OnCalendar=daily"));
    assert!(timer.contains("Persistent=true"));
    assert!(timer.contains("RandomizedDelaySec="));
    assert!(unit("vmledger-checkin.service").contains("vmledger checkin"));
    assert!(unit("vmledger-watch.service").contains("vmledger watch"));
}
