//! The duplicate-start guard and the host ledger, driven through `vmledger hook libvirt`
//! exactly as libvirt calls it (arguments, domain XML on stdin), on real qcow2 images
//! made and modified with qemu-img/qemu-io. "Running" comes from the hooks' own records
//! and the pid files in a sandboxed run dir (`[hooks] libvirt_run_dir`); the real
//! libvirtd scenarios are in `hook_libvirt.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::images::{qemu_img, qemu_io};
use common::libvirt::{DiskSpec, domain_xml, host_entries, kinds, latest};
use common::{Run, Sandbox, schemas};
use serde_json::Value;

const UA: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const UB: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const UC: &str = "cccccccc-0000-4000-8000-00000000000c";
const GA: &str = "a1a1a1a1-1111-4111-8111-111111111111";

/// A sandboxed host: state dir, config, run dir for pid files.
struct Host {
    sb: Sandbox,
    config: PathBuf,
}

impl Host {
    fn new() -> Host {
        Host::with_config("")
    }

    fn with_config(extra: &str) -> Host {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.join("run")).unwrap();
        let config = sb.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[hooks]\nlibvirt_run_dir = \"{}\"\n{extra}",
                sb.join("run").display()
            ),
        )
        .unwrap();
        Host { sb, config }
    }

    /// A 64 MiB qcow2 with some data.
    fn image(&self, name: &str) -> PathBuf {
        let p = self.sb.join(name);
        qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "64M"]);
        qemu_io(&p, "qcow2", &["write -P 0x11 0 1M"]);
        p
    }

    fn hook(&self, xml: &str, op: &str, sub: &str, extra: &[&str]) -> common::Cmd {
        self.hook_with(xml, op, sub, "-").cmd_args(extra)
    }

    /// `NAME OP SUB EXTRA`, libvirt's argv.
    fn hook_with(&self, xml: &str, op: &str, sub: &str, extra: &str) -> common::Cmd {
        let name = common::libvirt::xml_text(xml, "name").unwrap();
        self.sb
            .cmd(["--config", self.config.to_str().unwrap(), "hook", "libvirt"])
            .arg(&name)
            .arg(op)
            .arg(sub)
            .arg(extra)
            .stdin(xml.as_bytes().to_vec())
    }

    fn prepare(&self, xml: &str) -> common::Cmd {
        self.hook(xml, "prepare", "begin", &[])
    }

    /// What libvirt runs when a domain shuts down: `stopped end -`, then `release end`
    /// with the shutoff reason.
    fn stop(&self, xml: &str) {
        for (op, sub, extra) in [("stopped", "end", "-"), ("release", "end", "shutdown")] {
            let r = self.hook_with(xml, op, sub, extra).ok();
            assert_eq!(r.stdout, "");
        }
    }

    /// Wait for (or take) the at-rest fingerprint the release hook started.
    fn settle(&self, uuid: &str) -> Value {
        let instance = uuid.replace('-', "");
        let d = self
            .sb
            .cmd(["--config", self.config.to_str().unwrap(), "--json"])
            .args(["hook", "settle", &instance, "--wait"])
            .ok()
            .json();
        schemas::assert_valid("hook-settle.schema.json", &d);
        d
    }

    fn entries(&self, domain: &str) -> Vec<Value> {
        host_entries(&self.sb, domain)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.sb.state().join("host/hook.log")).unwrap_or_default()
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.sb.join("run").join(format!("{name}.pid"))
    }
}

trait CmdExt {
    fn cmd_args(self, a: &[&str]) -> Self;
    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(self, a: I) -> Self;
}

impl CmdExt for common::Cmd {
    fn cmd_args(mut self, a: &[&str]) -> Self {
        for x in a {
            self = self.arg(x);
        }
        self
    }
    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, a: I) -> Self {
        for x in a {
            self = self.arg(x);
        }
        self
    }
}

fn xml(name: &str, uuid: &str, disk: &Path) -> String {
    domain_xml(
        name,
        Some(uuid),
        Some(GA),
        Some("52:54:00:00:00:01"),
        &[DiskSpec::qcow2("vda", disk)],
        None,
    )
}

fn root_of(path: &Path) -> String {
    let sb = Sandbox::new();
    sb.cmd(["fingerprint", "image", "--json"])
        .arg(path)
        .ok()
        .json()["content_root"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A fake QEMU process (its command line says qemu) whose pid goes in a pid file.
fn fake_qemu(pid_file: &Path) -> Child {
    let child = Command::new("bash")
        .args(["-c", "exec -a qemu-system-x86_64 sleep 600"])
        .spawn()
        .unwrap();
    std::fs::write(pid_file, child.id().to_string()).unwrap();
    child
}

/// Domain app-a ran on a.qcow2 (its guest wrote to it), stopped, and its disk was
/// fingerprinted at rest; b.qcow2 is a copy of that state; app-a runs again.
fn a_ran_and_runs_again(h: &Host) -> (String, String, PathBuf) {
    let a_img = h.image("a.qcow2");
    let a = xml("app-a", UA, &a_img);
    h.prepare(&a).ok();
    qemu_io(&a_img, "qcow2", &["write -P 0x22 1M 64k"]); // the appliance writes
    h.stop(&a);
    // Settled by this call, or already by the stop's detached settle: either way recorded.
    h.settle(UA);
    let rest = latest(&h.entries("app-a"), "disk_at_rest").clone();
    assert_eq!(rest["disks"][0]["changed"], true, "{rest}");
    let b_img = h.sb.join("b.qcow2");
    std::fs::copy(&a_img, &b_img).unwrap();
    h.prepare(&a).ok();
    (a, xml("app-b", UB, &b_img), b_img)
}

#[test]
fn a_start_records_host_boot_with_identity_hardware_and_disks() {
    let h = Host::new();
    let img = h.image("a.qcow2");
    let iso = h.sb.join("cd.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let shared = h.image("shared.qcow2");
    let ro = h.image("ro.qcow2");
    let x = domain_xml(
        "app-a",
        Some(UA),
        Some(GA),
        Some("52:54:00:00:00:01"),
        &[
            DiskSpec::qcow2("vda", &img),
            DiskSpec::qcow2("vdb", &shared).shareable(),
            DiskSpec::qcow2("vdc", &ro).readonly(),
            DiskSpec::cdrom("sda", Some(&iso)),
        ],
        None,
    );
    let r = h.prepare(&x).ok();
    assert_eq!(r.stdout, "", "a hook prints nothing on stdout");
    // `start begin` right after is the same start: nothing more is recorded.
    h.hook(&x, "start", "begin", &[]).ok();
    let e = h.entries("app-a");
    assert_eq!(kinds(&e), ["genesis", "host_boot"]);
    let g = &e[0]["body"]["data"];
    assert_eq!(g["uuid"], UA);
    assert_eq!(g["hypervisor"], "libvirt");
    assert_eq!(g["serial"], Value::Null);
    assert_eq!(e[0]["body"]["instance"], UA.replace('-', ""));
    let b = latest(&e, "host_boot");
    assert_eq!(b["name"], "app-a");
    assert_eq!(b["uuid"], UA);
    assert_eq!(b["genid"], GA);
    assert_eq!(b["phase"], "prepare");
    assert_eq!(b["guard"]["decision"], "allowed");
    // The hardware fingerprint: digests only; the genid's digest is the value digest.
    let comps = b["hardware"]["components"].as_array().unwrap();
    let genid = comps.iter().find(|c| c["name"] == "vmgenid").unwrap();
    assert_eq!(
        genid["digest"],
        vmledger::fingerprint::hardware::value_digest(GA)
    );
    assert!(comps.iter().any(|c| c["name"] == "net.0.mac"));
    assert!(!b.to_string().contains("52:54:00:00:00:01"), "MAC in clear");
    // Only the writable disk is guarded; its identity and content root are recorded.
    let disks = b["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0]["target"], "vda");
    assert_eq!(disks[0]["root_via"], "hashed");
    assert_eq!(disks[0]["content_root"], root_of(&img));
    assert_eq!(disks[0]["file"]["path"], img.to_str().unwrap());
    let meta = std::fs::metadata(&img).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        disks[0]["file"]["id"],
        format!("{}:{}", meta.dev(), meta.ino())
    );
    let ignored: Vec<(String, String)> = b["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["target"].as_str().unwrap().into(),
                i["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        ignored,
        [
            ("vdb".to_string(), "shareable".to_string()),
            ("vdc".into(), "read-only".into()),
            ("sda".into(), "cdrom".into())
        ]
    );
    // Progress of the hashing is in the hook log.
    assert!(h.log().contains("hashing disk vda"), "{}", h.log());
    assert!(h.log().contains("100%"), "{}", h.log());
    // Status shows it running.
    let s =
        h.sb.cmd([
            "--config",
            h.config.to_str().unwrap(),
            "--json",
            "hook",
            "status",
        ])
        .ok()
        .json();
    schemas::assert_valid("hook-status.schema.json", &s);
    assert_eq!(s["domains"][0]["running"], true);
    assert_eq!(s["domains"][0]["name"], "app-a");
}

#[test]
fn a_copy_of_a_running_appliance_is_refused_and_after_it_stops_starts_as_a_restore() {
    let h = Host::new();
    let (a, b, _) = a_ran_and_runs_again(&h);

    // The second start of app-a took the quick path: its disk is as it was at rest.
    let e = h.entries("app-a");
    assert_eq!(
        kinds(&e),
        [
            "genesis",
            "host_boot",
            "host_stop",
            "disk_at_rest",
            "host_boot"
        ]
    );
    // Recorded once, at `release end`, with the shutoff reason libvirt passes there.
    let stop = latest(&e, "host_stop");
    assert_eq!(stop["phase"], "release");
    assert_eq!(stop["reason"], "shutdown");
    let at_rest = latest(&e, "disk_at_rest");
    assert_eq!(at_rest["disks"][0]["changed"], true);
    assert_eq!(at_rest["disks"][0]["root_via"], "hashed");
    let second = latest(&e, "host_boot");
    assert_eq!(second["disks"][0]["root_via"], "quick");
    assert_eq!(
        second["disks"][0]["content_root"],
        at_rest["disks"][0]["content_root"]
    );

    // The copy is refused while app-a runs: exit 1, one line on stderr, nothing on stdout.
    let r = h.prepare(&b).expect(1);
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("refusing to start app-b"), "{}", r.stderr);
    assert!(r.stderr.contains("app-a") && r.stderr.contains("is running now"));
    assert!(
        r.stderr.contains("vmledger hook allow app-b"),
        "{}",
        r.stderr
    );
    // libvirt then runs the stop hooks for the refused start: nothing is recorded.
    h.stop(&b);
    let eb = h.entries("app-b");
    assert_eq!(kinds(&eb), ["genesis", "start_refused"]);
    let refused = latest(&eb, "start_refused");
    assert_eq!(refused["guard"]["decision"], "refused");
    let f = &refused["guard"]["findings"][0];
    assert_eq!(f["kind"], "duplicate_of_running");
    assert_eq!(f["other"]["uuid"], UA);
    assert_eq!(
        f["state"]["content_root"],
        at_rest["disks"][0]["content_root"]
    );

    // app-a stops: the copy may start, as a restore, with a warning.
    h.stop(&a);
    let r = h.prepare(&b).ok();
    assert!(r.stderr.contains("restore"), "{}", r.stderr);
    assert!(r.stderr.contains("must not run again"), "{}", r.stderr);
    let boot = latest(&h.entries("app-b"), "host_boot").clone();
    assert_eq!(boot["guard"]["decision"], "allowed_with_warnings");
    assert_eq!(boot["guard"]["findings"][0]["kind"], "restore");
    assert!(h.log().contains("WARNING"), "{}", h.log());

    // And now the original is the copy of a running appliance's state.
    let r = h.prepare(&a).expect(1);
    assert!(r.stderr.contains("app-b"), "{}", r.stderr);
}

#[test]
fn domains_deployed_from_one_pristine_template_both_start() {
    let h = Host::new();
    let t = h.image("template.qcow2");
    let mut xmls = Vec::new();
    for (name, uuid) in [("c1", UA), ("c2", UB)] {
        let p = h.sb.join(format!("{name}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            t.to_str().unwrap(),
            "-F",
            "qcow2",
            p.to_str().unwrap(),
        ]);
        xmls.push((name, xml(name, uuid, &p)));
    }
    for (name, x) in &xmls {
        let r = h.prepare(x).ok();
        assert_eq!(r.stderr, "", "{name}: {}", r.stderr);
        let b = latest(&h.entries(name), "host_boot").clone();
        assert_eq!(b["guard"]["decision"], "allowed");
        assert_eq!(b["disks"][0]["content_root"], root_of(&t));
        // The overlay's backing file is part of the disk's identity.
        assert_eq!(b["disks"][0]["backing"][0]["path"], t.to_str().unwrap());
    }
}

#[test]
fn the_same_file_open_in_a_running_domain_is_refused() {
    let h = Host::new();
    let img = h.image("a.qcow2");
    h.prepare(&xml("app-a", UA, &img)).ok();
    let r = h.prepare(&xml("app-c", UC, &img)).expect(1);
    assert!(r.stderr.contains("is open by domain app-a"), "{}", r.stderr);
    let e = h.entries("app-c");
    let f = &latest(&e, "start_refused")["guard"]["findings"][0];
    assert_eq!(f["kind"], "open_elsewhere");
}

#[test]
fn shareable_read_only_and_cdrom_disks_are_ignored_by_the_guard() {
    let h = Host::new();
    let shared = h.image("shared.qcow2");
    let ro = h.image("ro.qcow2");
    let iso = h.sb.join("cd.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let dom = |name: &str, uuid: &str, own: &Path| {
        domain_xml(
            name,
            Some(uuid),
            None,
            None,
            &[
                DiskSpec::qcow2("vda", own),
                DiskSpec::qcow2("vdb", &shared).shareable(),
                DiskSpec::qcow2("vdc", &ro).readonly(),
                DiskSpec::cdrom("sda", Some(&iso)),
            ],
            None,
        )
    };
    h.prepare(&dom("app-a", UA, &h.image("a.qcow2"))).ok();
    h.prepare(&dom("app-c", UC, &h.image("c.qcow2"))).ok();
}

#[test]
fn an_admin_override_lets_one_start_through_and_is_used_up() {
    let h = Host::new();
    let (_a, b, _) = a_ran_and_runs_again(&h);
    h.prepare(&b).expect(1);
    let t =
        h.sb.cmd(["--config", h.config.to_str().unwrap(), "--json"])
            .args(["hook", "allow", "app-b", "--reason", "DR test"])
            .env("USER", "alice")
            .ok()
            .json();
    schemas::assert_valid("hook-allow.schema.json", &t);
    assert_eq!(t["by"], "alice");
    assert_eq!(t["instance"], UB.replace('-', ""));
    let r = h.prepare(&b).ok();
    assert!(r.stderr.contains("OVERRIDDEN"), "{}", r.stderr);
    let boot = latest(&h.entries("app-b"), "host_boot").clone();
    assert_eq!(boot["guard"]["decision"], "overridden");
    assert_eq!(boot["guard"]["override"]["by"], "alice");
    assert_eq!(boot["guard"]["override"]["reason"], "DR test");
    assert_eq!(
        std::fs::read_dir(h.sb.state().join("host/allow"))
            .unwrap()
            .count(),
        0,
        "the override is used up"
    );
    h.stop(&b);
    h.prepare(&b).expect(1);
}

#[test]
fn policy_warn_lets_the_start_through_with_a_warning() {
    for (flag, config) in [(true, ""), (false, "policy = \"warn\"\n")] {
        let h = Host::with_config(config);
        let (_a, b, _) = a_ran_and_runs_again(&h);
        let cmd = if flag {
            h.hook(&b, "prepare", "begin", &["--policy", "warn"])
        } else {
            h.prepare(&b)
        };
        let r = cmd.ok();
        assert!(r.stderr.contains("WARNING (policy warn"), "{}", r.stderr);
        let boot = latest(&h.entries("app-b"), "host_boot").clone();
        assert_eq!(boot["guard"]["decision"], "warned");
        assert_eq!(boot["guard"]["policy"], "warn");
    }
    let h = Host::new();
    let x = xml("app-a", UA, &h.image("a.qcow2"));
    let r = h
        .hook(&x, "prepare", "begin", &["--policy", "sometimes"])
        .expect(2);
    assert!(r.stderr.contains("sometimes"), "{}", r.stderr);
}

#[test]
fn unknown_disks_are_not_hashed_when_asked() {
    for (flag, config) in [(true, ""), (false, "hash_unknown = false\n")] {
        let h = Host::with_config(config);
        let x = xml("app-a", UA, &h.image("a.qcow2"));
        let cmd = if flag {
            h.hook(&x, "prepare", "begin", &["--no-hash-unknown"])
        } else {
            h.prepare(&x)
        };
        cmd.ok();
        let b = latest(&h.entries("app-a"), "host_boot").clone();
        assert_eq!(b["disks"][0]["root_via"], "not_hashed");
        assert_eq!(b["disks"][0]["content_root"], Value::Null);
        assert!(b["disks"][0]["file"]["id"].is_string());
        assert!(!h.log().contains("hashing disk"));
    }
}

#[test]
fn a_domain_that_vanished_is_reconciled_from_its_pid_file() {
    let h = Host::new();
    let (a, b, _) = a_ran_and_runs_again(&h);
    let mut qemu = fake_qemu(&h.pid_file("app-a"));
    h.hook(&a, "started", "begin", &[]).ok();
    let started = latest(&h.entries("app-a"), "host_started").clone();
    assert_eq!(started["pid"], qemu.id());
    h.prepare(&b).expect(1);
    // QEMU dies without libvirt running the stop hooks (a crash of the host or daemon).
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    let r = h.prepare(&b).ok();
    assert!(r.stderr.contains("restore"), "{}", r.stderr);
    let e = h.entries("app-a");
    let stop = latest(&e, "host_stop");
    assert_eq!(stop["phase"], "vanished");
    assert!(
        stop["reason"].as_str().unwrap().contains("is gone"),
        "{stop}"
    );
    assert!(h.log().contains("reconcile"), "{}", h.log());
}

#[test]
fn a_new_start_of_a_domain_still_marked_running_records_the_lost_stop() {
    let h = Host::new();
    let x = xml("app-a", UA, &h.image("a.qcow2"));
    h.prepare(&x).ok();
    let mut qemu = fake_qemu(&h.pid_file("app-a"));
    h.hook(&x, "started", "begin", &[]).ok();
    // QEMU is still alive, but libvirt starts the domain again: it lost track of it.
    h.prepare(&x).ok();
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    assert_eq!(
        kinds(&h.entries("app-a")),
        [
            "genesis",
            "host_boot",
            "host_started",
            "host_stop",
            "disk_at_rest",
            "host_boot"
        ]
    );
}

#[test]
fn migrate_and_reconnect_never_refuse_and_print_nothing() {
    let h = Host::new();
    let (_a, b, _) = a_ran_and_runs_again(&h);
    let r = h.hook(&b, "migrate", "begin", &[]).ok();
    assert_eq!(
        r.stdout, "",
        "libvirt reads a migrate hook's stdout as replacement XML"
    );
    // The prepare and start of an incoming migration are part of it: not checked again.
    h.prepare(&b).ok();
    h.hook(&b, "start", "begin", &[]).ok();
    // libvirtd restarts while it runs.
    let r = h.hook(&b, "reconnect", "begin", &[]).ok();
    assert_eq!(r.stdout, "");
    let e = h.entries("app-b");
    assert_eq!(kinds(&e), ["genesis", "host_running", "host_running"]);
    assert_eq!(e[1]["body"]["data"]["phase"], "migrate");
    assert_eq!(latest(&e, "host_running")["phase"], "reconnect");
    // Even broken input never fails these operations.
    let r =
        h.sb.cmd(["--config", h.config.to_str().unwrap()])
            .args(["hook", "libvirt", "app-b", "reconnect", "begin", "-"])
            .stdin("<domain><oops")
            .ok();
    assert!(r.stderr.contains("not failing"), "{}", r.stderr);
}

#[test]
fn restore_begin_is_checked_like_a_start() {
    let h = Host::new();
    let (a, b, _) = a_ran_and_runs_again(&h);
    let r = h.hook(&b, "restore", "begin", &[]).expect(1);
    assert_eq!(r.stdout, "");
    h.stop(&a);
    h.hook(&b, "restore", "begin", &[]).ok();
    // libvirt's prepare for the restored domain continues the checked start.
    h.prepare(&b).ok();
    let e = h.entries("app-b");
    assert_eq!(kinds(&e), ["genesis", "start_refused", "host_boot"]);
    assert_eq!(latest(&e, "host_boot")["phase"], "restore");
}

#[test]
fn two_copies_starting_at_once_cannot_both_pass() {
    let h = Host::new();
    let (a, _b, b_img) = a_ran_and_runs_again(&h);
    h.stop(&a);
    let c_img = h.sb.join("c.qcow2");
    std::fs::copy(&b_img, &c_img).unwrap();
    let b = xml("app-b", UB, &b_img);
    let c = xml("app-c", UC, &c_img);
    let (rb, rc) = std::thread::scope(|s| {
        let tb = s.spawn(|| h.prepare(&b).run());
        let tc = s.spawn(|| h.prepare(&c).run());
        (tb.join().unwrap(), tc.join().unwrap())
    });
    let mut codes = [rb.code, rc.code];
    codes.sort();
    assert_eq!(codes, [0, 1], "b: {}\nc: {}", rb.stderr, rc.stderr);
}

#[test]
fn bad_input_is_an_error_naming_it_and_loses_nothing() {
    let h = Host::new();
    let x = xml("app-a", UA, &h.image("a.qcow2"));
    h.prepare(&x).ok();
    let run = |name: &str, stdin: &str| -> Run {
        h.sb.cmd(["--config", h.config.to_str().unwrap()])
            .args(["hook", "libvirt", name, "prepare", "begin", "-"])
            .stdin(stdin.as_bytes().to_vec())
            .expect(2)
    };
    let r = run("x", "<domain><name>x</name");
    assert!(
        r.stderr.contains("could not check the start of x"),
        "{}",
        r.stderr
    );
    let r = run("x", "<domain><name>x</name></domain>");
    assert!(r.stderr.contains("/domain/uuid"), "{}", r.stderr);
    let r = run(
        "x",
        "<!DOCTYPE d [<!ENTITY a 'aaaa'>]><domain><name>x</name></domain>",
    );
    assert!(
        r.stderr.contains("libvirt domain XML") || r.stderr.contains("DTD"),
        "{}",
        r.stderr
    );
    let big = format!(
        "<domain><name>x</name><description>{}</description></domain>",
        "a".repeat(5 << 20)
    );
    let r = run("x", &big);
    assert!(
        r.stderr.contains("larger") || r.stderr.contains("limit"),
        "{}",
        r.stderr
    );
    // Operations vmledger does not know are not its business.
    h.hook(&x, "frobnicate", "begin", &[]).ok();
    // A damaged state file stops starts with a message naming it.
    let marker =
        h.sb.state()
            .join(format!("host/running/{}.json", UA.replace('-', "")));
    std::fs::write(&marker, "{not json").unwrap();
    let r = h.prepare(&xml("app-b", UB, &h.image("b.qcow2"))).expect(2);
    assert!(r.stderr.contains(marker.to_str().unwrap()), "{}", r.stderr);
    // Nothing recorded was lost: the ledger verifies, entries intact.
    let l = vmledger::ledger::Ledger::open(&h.sb.state().join(format!(
        "host/domains/{}/ledger.sqlite",
        UA.replace('-', "")
    )))
    .unwrap();
    let report = vmledger::ledger::verify::verify(&l, None).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(l.count().unwrap(), 2);
}

/// `vmledger backup manifest IMG -o OUT --domain DOMAIN --json`, schema-checked.
fn backup_manifest(h: &Host, img: &Path, out: &Path, domain: &str) -> Value {
    let d =
        h.sb.cmd(["--config", h.config.to_str().unwrap(), "--json"])
            .args(["backup", "manifest", "--domain", domain])
            .arg(img)
            .arg("-o")
            .arg(out)
            .ok()
            .json();
    schemas::assert_valid("backup-manifest-written.schema.json", &d);
    d
}

#[test]
fn a_restored_backup_taken_while_the_original_runs_is_its_state() {
    let h = Host::new();
    let a_img = h.image("a.qcow2");
    let a = xml("app-a", UA, &a_img);
    h.prepare(&a).ok();
    qemu_io(&a_img, "qcow2", &["write -P 0x22 1M 64k"]); // the appliance writes
    // A live backup: copied while app-a runs, then manifested with its domain.
    let backup = h.sb.join("backup.qcow2");
    std::fs::copy(&a_img, &backup).unwrap();
    let d = backup_manifest(&h, &backup, &h.sb.join("backup.json"), "app-a");
    let rec = &d["recorded"];
    assert_eq!(rec["running"], true, "{d}");
    assert_eq!(rec["state"], true, "{d}");
    assert_eq!(
        d["host_ledger"]["seq"], rec["seq"],
        "the signed head is the record"
    );
    let e = h.entries("app-a"); // every entry schema-checked
    let b = latest(&e, "backup_manifest");
    assert_eq!(b["content_root"], root_of(&backup));
    assert_eq!(b["running"], true);
    qemu_io(&a_img, "qcow2", &["write -P 0x23 9M 64k"]); // app-a runs on

    // The backup restored as another domain: refused while app-a runs.
    let restored = h.sb.join("restored.qcow2");
    std::fs::copy(&backup, &restored).unwrap();
    let b_xml = xml("app-b", UB, &restored);
    let r = h.prepare(&b_xml).expect(1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("refusing to start app-b"), "{}", r.stderr);
    assert!(
        r.stderr.contains("app-a") && r.stderr.contains("is running now"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("backup"), "{}", r.stderr);
    h.stop(&b_xml);
    let f = latest(&h.entries("app-b"), "start_refused")["guard"]["findings"][0].clone();
    assert_eq!(f["kind"], "duplicate_of_running");
    assert_eq!(f["state"]["source"], "backup");
    assert_eq!(f["state"]["seq"], rec["seq"]);

    // app-a stops (its at-rest state is newer than the backup): the restored copy starts
    // with the restore warning, never silently.
    h.stop(&a);
    h.settle(UA);
    // backup verify says the same: a restore, app-a having run on past the backup.
    let v =
        h.sb.cmd(["--config", h.config.to_str().unwrap(), "--json"])
            .args(["backup", "verify", "--manifest"])
            .arg(h.sb.join("backup.json"))
            .arg(&backup)
            .ok()
            .json();
    schemas::assert_valid("backup-verify.schema.json", &v);
    assert_eq!(v["licensing"]["state"]["source"], "backup");
    assert_eq!(v["licensing"]["meaning"], "restore", "{v}");
    assert_eq!(v["licensing"]["runs_since"], 1, "{v}");
    let r = h.prepare(&b_xml).ok();
    assert!(r.stderr.contains("restore"), "{}", r.stderr);
    assert!(r.stderr.contains("must not run again"), "{}", r.stderr);
    let boot = latest(&h.entries("app-b"), "host_boot").clone();
    assert_eq!(boot["guard"]["decision"], "allowed_with_warnings");
    assert_eq!(boot["guard"]["findings"][0]["kind"], "restore");
}

#[test]
fn a_backup_of_pristine_content_is_no_state() {
    let h = Host::new();
    let t = h.image("template.qcow2");
    let mut xmls = Vec::new();
    for (name, uuid) in [("c1", UA), ("c2", UB)] {
        let p = h.sb.join(format!("{name}.qcow2"));
        std::fs::copy(&t, &p).unwrap();
        xmls.push(xml(name, uuid, &p));
    }
    h.prepare(&xmls[0]).ok();
    // c1 runs but has not changed its disk: a backup of it is the template's content.
    let d = backup_manifest(&h, &t, &h.sb.join("t.json"), "c1");
    assert_eq!(d["recorded"]["state"], false, "{d}");
    assert!(
        d["recorded"]["why"]
            .as_str()
            .unwrap()
            .contains("started from"),
        "{d}"
    );
    // So a second domain deployed from the template still starts next to c1.
    let r = h.prepare(&xmls[1]).ok();
    assert_eq!(r.stderr, "", "{}", r.stderr);
}
