//! Hook test support: libvirt domain XML for test domains, disk images with a tiny guest
//! that writes to its disk, and the real libvirt stack.
//!
//! The real stack (`Stack`) is shared by the whole machine, so tests that use it hold an
//! exclusive `flock` for their whole run (one at a time, across test processes), install
//! the hook script with their own state dir and config baked in, restart libvirtd once per
//! test process (libvirt looks for hook scripts when it starts), and on drop, even after a
//! failed assertion, destroy and undefine their domains and remove the hook script.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::Sandbox;

/// A 16-bit boot sector (assembled from `boot.S` in this file's history; source below):
/// reads sector 1 (LBA 1) with BIOS int 13h, increments its first 32-bit word, writes it
/// back, prints `vmledger-guest: disk written` on COM1 and halts. So every run of a
/// domain changes its disk, as a real appliance's run does.
///
/// ```text
/// cli; xor ax,ax; mov ds,ax; mov es,ax; mov ss,ax; mov sp,0x7c00; sti
/// mov ax,0x0201; mov cx,2; xor dh,dh; mov bx,0x8000; int 13h     ; read LBA 1
/// inc dword [0x8000]
/// mov ax,0x0301; mov cx,2; xor dh,dh; mov bx,0x8000; int 13h     ; write it back
/// mov si,msg; next: lodsb; test al,al; jz done; mov dx,0x3f8; out dx,al; jmp next
/// done: cli; halt: hlt; jmp halt
/// msg: "vmledger-guest: disk written\r\n\0"
/// ```
pub const BOOT_SECTOR: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0xb8, 0x01, 0x02,
    0xb9, 0x02, 0x00, 0x30, 0xf6, 0xbb, 0x00, 0x80, 0xcd, 0x13, 0x66, 0xff, 0x06, 0x00, 0x80, 0xb8,
    0x01, 0x03, 0xb9, 0x02, 0x00, 0x30, 0xf6, 0xbb, 0x00, 0x80, 0xcd, 0x13, 0xbe, 0x3e, 0x7c, 0xac,
    0x84, 0xc0, 0x74, 0x06, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xf5, 0xfa, 0xf4, 0xeb, 0xfd, b'v', b'm',
    b'l', b'e', b'd', b'g', b'e', b'r', b'-', b'g', b'u', b'e', b's', b't', b':', b' ', b'd', b'i',
    b's', b'k', b' ', b'w', b'r', b'i', b't', b't', b'e', b'n', b'\r', b'\n', 0,
];

/// What the guest prints once it has written its disk.
pub const GUEST_WROTE: &str = "vmledger-guest: disk written";

/// A 64 MiB qcow2 whose first sector is [`BOOT_SECTOR`].
pub fn guest_image(path: &Path) {
    let raw = path.with_extension("boot.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut sector = [0u8; 512];
    sector[..BOOT_SECTOR.len()].copy_from_slice(BOOT_SECTOR);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    std::os::unix::fs::FileExt::write_all_at(&f, &sector, 0).unwrap();
    drop(f);
    super::images::qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    std::fs::remove_file(&raw).unwrap();
}

/// One `<disk>` of a test domain.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    pub target: String,
    pub path: Option<PathBuf>,
    pub format: &'static str,
    pub device: &'static str,
    pub readonly: bool,
    pub shareable: bool,
}

impl DiskSpec {
    pub fn qcow2(target: &str, path: &Path) -> DiskSpec {
        DiskSpec {
            target: target.into(),
            path: Some(path.to_path_buf()),
            format: "qcow2",
            device: "disk",
            readonly: false,
            shareable: false,
        }
    }
    pub fn raw(target: &str, path: &Path) -> DiskSpec {
        DiskSpec {
            format: "raw",
            ..DiskSpec::qcow2(target, path)
        }
    }
    pub fn cdrom(target: &str, path: Option<&Path>) -> DiskSpec {
        DiskSpec {
            target: target.into(),
            path: path.map(Path::to_path_buf),
            format: "raw",
            device: "cdrom",
            readonly: true,
            shareable: false,
        }
    }
    pub fn readonly(mut self) -> DiskSpec {
        self.readonly = true;
        self
    }
    pub fn shareable(mut self) -> DiskSpec {
        self.shareable = true;
        self
    }
}

/// A test domain's XML. `uuid`/`genid` `None` leave them to libvirt (`<genid/>` asks it to
/// generate one); `mac` adds a user-mode NIC; `serial_log` a serial port written to a file.
pub fn domain_xml(
    name: &str,
    uuid: Option<&str>,
    genid: Option<&str>,
    mac: Option<&str>,
    disks: &[DiskSpec],
    serial_log: Option<&Path>,
) -> String {
    let mut devs = String::new();
    for d in disks {
        let source = d
            .path
            .as_ref()
            .map(|p| format!("<source file='{}'/>", p.display()))
            .unwrap_or_default();
        devs.push_str(&format!(
            "    <disk type='file' device='{}'><driver name='qemu' type='{}'/>{source}<target dev='{}' bus='{}'/>{}{}</disk>\n",
            d.device,
            d.format,
            d.target,
            if d.device == "cdrom" { "sata" } else { "virtio" },
            if d.readonly { "<readonly/>" } else { "" },
            if d.shareable { "<shareable/>" } else { "" },
        ));
    }
    if let Some(m) = mac {
        devs.push_str(&format!(
            "    <interface type='user'><mac address='{m}'/><model type='virtio'/></interface>\n"
        ));
    }
    if let Some(log) = serial_log {
        devs.push_str(&format!(
            "    <serial type='file'><source path='{}'/><target port='0'/></serial>\n",
            log.display()
        ));
    }
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
{}{}  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_reboot>destroy</on_reboot>
  <devices>
{devs}  </devices>
</domain>
",
        uuid.map(|u| format!("  <uuid>{u}</uuid>\n"))
            .unwrap_or_default(),
        match genid {
            Some(g) => format!("  <genid>{g}</genid>\n"),
            None => "  <genid/>\n".into(),
        },
    )
}

/// Poll `cond` every 50 ms until it holds; panic after `limit` naming `what`. (Waiting for
/// an event to happen, never for time to pass.)
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ----- the real libvirt stack ----------------------------------------------------------

const URI: &str = "qemu:///system";
/// Test domains are named with this prefix, so leftovers of a crashed run are found.
pub const PREFIX: &str = "vmlt-";

/// `virsh -c qemu:///system ARGS`.
pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .expect("run virsh")
}

fn virsh_ok(args: &[&str]) -> String {
    let o = virsh(args);
    assert!(
        o.status.success(),
        "virsh {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn libvirtd_answers() -> bool {
    virsh(&["list", "--all"]).status.success()
}

fn restart_libvirtd() {
    let systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "libvirtd"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if systemd {
        let s = Command::new("systemctl")
            .args(["restart", "libvirtd"])
            .status()
            .expect("systemctl");
        assert!(s.success(), "systemctl restart libvirtd failed");
    } else {
        if let Some(pid) = std::fs::read_to_string("/run/libvirtd.pid")
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let p = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM).is_ok() {
                wait_for("libvirtd to exit", Duration::from_secs(60), || {
                    !Path::new(&format!("/proc/{pid}")).exists()
                });
            }
        }
        // Started like a service manager would: a minimal environment, so the hook is
        // tested with what libvirt really passes it.
        let s = Command::new("libvirtd")
            .arg("-d")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status()
            .expect("start libvirtd (is libvirt-daemon-system installed? run tests/run)");
        assert!(s.success(), "libvirtd -d failed");
    }
    wait_for(
        "libvirtd to answer",
        Duration::from_secs(60),
        libvirtd_answers,
    );
}

static RESTARTED: std::sync::Once = std::sync::Once::new();

/// Whether this test process may drive the system libvirtd (it installs a hook under
/// `/etc/libvirt` and restarts the daemon): call first in every test that uses [`Stack`],
/// and return at once when it says `false`.
///
/// As root: `true`. Otherwise, with passwordless sudo, the current test runs again as root
/// in a child process (its result is this test's result) and this returns `false`.
/// Without either the test is skipped with a loud message on stderr: `tests/run` says so
/// too.
pub fn as_root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let name = std::thread::current()
        .name()
        .expect("libtest names the test's thread")
        .to_string();
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !sudo {
        // Straight to the process's stderr, past libtest's capture: a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {name}: it drives the system libvirtd and needs root (or passwordless sudo); run tests/run as root ***\n"
        );
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let o = Command::new("sudo")
        .arg("-n")
        .arg(&exe)
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .output()
        .expect("run the test again through sudo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("1 passed"),
        "{name} as root (sudo) failed:\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    false
}

/// The real libvirtd with vmledger's hook installed for one test.
pub struct Stack {
    _lock: Flock<File>,
    hook: PathBuf,
    domains: Vec<String>,
}

fn cleanup_domains(names: &[String]) {
    for n in names {
        let _ = virsh(&["destroy", n]);
        let _ = virsh(&["undefine", n]);
    }
}

fn leftover_domains() -> Vec<String> {
    String::from_utf8_lossy(&virsh(&["list", "--all", "--name"]).stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

impl Stack {
    /// Take the machine-wide lock, check libvirtd answers, install the hook with
    /// `sb`'s state dir and `config` baked in, and make sure libvirtd has seen it.
    pub fn acquire(sb: &Sandbox, config: &Path) -> Stack {
        super::require("virsh");
        super::require("libvirtd");
        let lock_path = std::env::temp_dir().join("vmledger-libvirt-tests.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .expect("open the libvirt test lock");
        let lock = Flock::lock(f, FlockArg::LockExclusive).expect("lock the libvirt tests");
        assert!(
            libvirtd_answers(),
            "libvirtd does not answer on {URI}: run the tests through tests/run, which starts dbus-daemon, virtlogd and libvirtd"
        );
        cleanup_domains(&leftover_domains());
        let hook = PathBuf::from("/etc/libvirt/hooks/qemu.d/vmledger");
        let stack = Stack {
            _lock: lock,
            hook: hook.clone(),
            domains: Vec::new(),
        };
        sb.cmd(["hook", "install", "libvirt", "--json"])
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(sb.state())
            .ok();
        assert!(hook.exists());
        RESTARTED.call_once(restart_libvirtd);
        stack
    }

    /// Define a domain (undefined again on drop); returns its name.
    pub fn define(&mut self, sb: &Sandbox, name: &str, xml: &str) -> String {
        assert!(name.starts_with(PREFIX));
        let file = sb.join(format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        self.domains.push(name.to_string());
        virsh_ok(&["define", file.to_str().unwrap()]);
        name.to_string()
    }

    /// `virsh dumpxml NAME`.
    pub fn dumpxml(&self, name: &str) -> String {
        virsh_ok(&["dumpxml", name])
    }

    /// `virsh domstate NAME` (e.g. `running`, `shut off`).
    pub fn state(&self, name: &str) -> String {
        String::from_utf8_lossy(&virsh(&["domstate", name]).stdout)
            .trim()
            .to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        cleanup_domains(&self.domains);
        let _ = std::fs::remove_file(&self.hook);
    }
}

/// The text between `<tag>` and `</tag>` in XML (for `uuid`, `genid`).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

// ----- reading host ledgers ------------------------------------------------------------

/// A domain's host ledger entries, read through `vmledger hook export` (the bundle and
/// every entry validated against the schemas).
pub fn host_entries(sb: &Sandbox, domain: &str) -> Vec<serde_json::Value> {
    let bundle = sb.cmd(["hook", "export", domain]).ok().json();
    super::schemas::assert_valid("export.schema.json", &bundle);
    let entries = bundle["entries"].as_array().expect("entries").clone();
    for e in &entries {
        super::schemas::assert_valid("host-entry.schema.json", e);
    }
    entries
}

/// The `data` of the newest entry of `kind`.
pub fn latest<'a>(entries: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    &entries
        .iter()
        .rev()
        .find(|e| e["body"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no `{kind}` entry in {entries:#?}"))["body"]["data"]
}

/// Kinds of the entries, in order.
pub fn kinds(entries: &[serde_json::Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["body"]["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}
