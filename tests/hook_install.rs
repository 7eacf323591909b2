//! `vmledger hook install|uninstall libvirt`: idempotent, never overwrites a file it did
//! not write, says libvirtd must be restarted; and the installed script works the way
//! libvirt runs it (an empty environment, the domain XML on stdin).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::libvirt::{DiskSpec, domain_xml};
use common::{Sandbox, bin, images::qemu_img, schemas};

fn install(sb: &Sandbox, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut c = sb
        .cmd(["--json", "hook", "install", "libvirt", "--dir"])
        .arg(dir);
    for e in extra {
        c = c.arg(e);
    }
    let d = c.ok().json();
    schemas::assert_valid("hook-install.schema.json", &d);
    d
}

/// Run a hook script as libvirt does: no environment but a PATH, XML on stdin.
fn run_script(script: &Path, args: &[&str], xml: &str) -> (i32, String, String) {
    let mut child = Command::new(script)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(xml.as_bytes());
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn install_is_idempotent_and_says_to_restart_libvirtd() {
    let sb = Sandbox::new();
    let dir = sb.join("hooks/qemu.d");
    let d = install(&sb, &dir, &["--bin", "/opt/vmledger/bin/vmledger"]);
    assert_eq!(d["outcome"], "installed");
    assert_eq!(d["restart_libvirtd"], true);
    assert!(d["message"].as_str().unwrap().contains("restart"), "{d}");
    let script = dir.join("vmledger");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(
        text.contains("VMLEDGER='/opt/vmledger/bin/vmledger'"),
        "{text}"
    );
    assert!(text.contains("hook libvirt \"$@\""), "{text}");
    let mode = std::fs::metadata(&script).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    let d = install(&sb, &dir, &["--bin", "/opt/vmledger/bin/vmledger"]);
    assert_eq!(d["outcome"], "unchanged");
    assert_eq!(d["restart_libvirtd"], false);
    // The state dir comes from the sandbox's VMLEDGER_STATE_DIR: baked in.
    assert_eq!(d["state_dir"], sb.state().to_str().unwrap());

    let d = install(&sb, &dir, &["--bin", "/usr/bin/vmledger"]);
    assert_eq!(d["outcome"], "updated");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("VMLEDGER='/usr/bin/vmledger'"), "{text}");

    // Text output says the same in words.
    let r = sb
        .cmd([
            "hook",
            "install",
            "libvirt",
            "--bin",
            "/usr/bin/vmledger",
            "--dir",
        ])
        .arg(&dir)
        .ok();
    assert!(r.stdout.contains("already installed"), "{}", r.stdout);
}

#[test]
fn a_foreign_file_is_never_overwritten_or_removed() {
    let sb = Sandbox::new();
    let dir = sb.join("qemu.d");
    std::fs::create_dir_all(&dir).unwrap();
    let theirs = dir.join("vmledger");
    std::fs::write(&theirs, "#!/bin/sh\n# the admin's own hook\nexit 0\n").unwrap();
    let r = sb
        .cmd(["hook", "install", "libvirt", "--dir"])
        .arg(&dir)
        .expect(2);
    assert!(r.stderr.contains(theirs.to_str().unwrap()), "{}", r.stderr);
    assert!(
        r.stderr.contains("not installed by vmledger"),
        "{}",
        r.stderr
    );
    let r = sb
        .cmd(["hook", "uninstall", "libvirt", "--dir"])
        .arg(&dir)
        .expect(2);
    assert!(
        r.stderr.contains("not installed by vmledger"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "#!/bin/sh\n# the admin's own hook\nexit 0\n"
    );
    // Under another name it installs beside it.
    let d = install(&sb, &dir, &["--name", "50-vmledger"]);
    assert_eq!(d["outcome"], "installed");
    let uninstall = || {
        sb.cmd([
            "--json",
            "hook",
            "uninstall",
            "libvirt",
            "--name",
            "50-vmledger",
            "--dir",
        ])
        .arg(&dir)
        .ok()
        .json()
    };
    let d = uninstall();
    schemas::assert_valid("hook-install.schema.json", &d);
    assert_eq!(d["outcome"], "removed");
    let d = uninstall();
    assert_eq!(d["outcome"], "absent");
    sb.cmd(["hook", "install", "libvirt", "--name", "../x", "--dir"])
        .arg(&dir)
        .expect(2);
}

#[test]
fn the_installed_script_runs_with_libvirts_minimal_environment() {
    let sb = Sandbox::new();
    let dir = sb.join("qemu.d");
    let config = sb.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[hooks]\nlibvirt_run_dir = \"{}\"\n",
            sb.join("run").display()
        ),
    )
    .unwrap();
    install(
        &sb,
        &dir,
        &[
            "--bin",
            bin().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let script = dir.join("vmledger");
    let img = sb.join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"]);
    let a = domain_xml(
        "app-a",
        Some("aaaaaaaa-0000-4000-8000-00000000000a"),
        None,
        None,
        &[DiskSpec::qcow2("vda", &img)],
        None,
    );
    let (code, out, err) = run_script(&script, &["app-a", "prepare", "begin", "-"], &a);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    // The baked state dir got the host ledger, though the environment named none.
    assert!(
        sb.state()
            .join("host/domains/aaaaaaaa00004000800000000000000a/ledger.sqlite")
            .exists()
    );
    // A refusal reaches libvirt as a non-zero exit with the line on stderr.
    let c = domain_xml(
        "app-c",
        Some("cccccccc-0000-4000-8000-00000000000c"),
        None,
        None,
        &[DiskSpec::qcow2("vda", &img)],
        None,
    );
    let (code, out, err) = run_script(&script, &["app-c", "prepare", "begin", "-"], &c);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("refusing to start app-c"), "{err}");

    // With the binary gone, the script lets domains start and says why.
    install(&sb, &dir, &["--bin", "/nonexistent/vmledger"]);
    let (code, _, err) = run_script(&script, &["app-c", "prepare", "begin", "-"], &c);
    assert_eq!(code, 0);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn the_repository_script_is_what_install_writes_for_usr_local_bin() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/libvirt/qemu.d/vmledger");
    let sb = Sandbox::new();
    let dir = sb.join("qemu.d");
    let d = Command::new(bin())
        .args([
            "--json",
            "hook",
            "install",
            "libvirt",
            "--bin",
            "/usr/local/bin/vmledger",
            "--dir",
        ])
        .arg(&dir)
        .env_remove("VMLEDGER_STATE_DIR")
        .env_remove("VMLEDGER_CONFIG")
        .output()
        .unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    assert_eq!(
        std::fs::read(dir.join("vmledger")).unwrap(),
        std::fs::read(&repo).unwrap()
    );
    let mode = std::fs::metadata(&repo).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "the repository script is executable");
}
