//! The libvirt hook under the real hypervisor stack: libvirtd 9 with QEMU (TCG), domains
//! started and destroyed with `virsh`, the hook installed with `vmledger hook install
//! libvirt` and run by libvirtd with its minimal environment. The guests are 64 MiB qcow2
//! disks whose boot sector writes to the disk (see `common::libvirt::BOOT_SECTOR`), so each
//! run changes the disk as an appliance's run does.
//!
//! One test at a time, machine-wide (`Stack` holds a lock); every domain and the hook
//! script are removed again even when a test fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::libvirt::{
    DiskSpec, GUEST_WROTE, Stack, as_root_or_skip, domain_xml, guest_image, host_entries, kinds,
    latest, virsh, wait_for, xml_text,
};
use common::{Sandbox, images::qemu_img};

/// A sandbox QEMU can read: libvirt runs it as another user.
fn sandbox() -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = sb.join("config.toml");
    std::fs::write(&config, "[hooks]\npolicy = \"refuse\"\n").unwrap();
    (sb, config)
}

fn start(name: &str) -> std::process::Output {
    virsh(&["start", name])
}

fn wait_written(log: &Path) {
    wait_for(
        &format!("the guest to write its disk ({})", log.display()),
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(log)
                .map(|s| s.contains(GUEST_WROTE))
                .unwrap_or(false)
        },
    );
}

fn settle(sb: &Sandbox, config: &Path, uuid: &str) {
    sb.cmd(["--config", config.to_str().unwrap(), "hook", "settle"])
        .arg(uuid.replace('-', ""))
        .arg("--wait")
        .ok();
}

#[test]
fn a_copy_is_refused_while_the_original_runs_and_starts_as_a_restore_after() {
    if !as_root_or_skip() {
        return;
    }
    let (sb, config) = sandbox();
    let mut stack = Stack::acquire(&sb, &config);

    let a_img = sb.join("a.qcow2");
    guest_image(&a_img);
    let a_log = sb.join("a.serial");
    let a = stack.define(
        &sb,
        "vmlt-a",
        &domain_xml(
            "vmlt-a",
            None,
            None,
            Some("52:54:00:6c:74:01"),
            &[DiskSpec::qcow2("vda", &a_img)],
            Some(&a_log),
        ),
    );
    let defined = stack.dumpxml(&a);
    let uuid = xml_text(&defined, "uuid").expect("libvirt gave the domain a uuid");
    let genid = xml_text(&defined, "genid").expect("libvirt generated a genid");

    // 1. Start: the hook records host_boot with the real XML's uuid and genid.
    let o = start(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_written(&a_log);
    let e = host_entries(&sb, &a);
    assert_eq!(kinds(&e), ["genesis", "host_boot", "host_started"]);
    let boot = latest(&e, "host_boot");
    assert_eq!(boot["uuid"], uuid.as_str());
    assert_eq!(boot["genid"], genid.as_str());
    assert_eq!(boot["phase"], "prepare");
    assert_eq!(boot["disks"][0]["root_via"], "hashed");
    let pid = latest(&e, "host_started")["pid"]
        .as_u64()
        .expect("QEMU pid");
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .contains("qemu")
    );

    // 2. It stops; its disk (which the guest changed) is fingerprinted at rest.
    let o = virsh(&["destroy", &a]);
    assert!(o.status.success());
    settle(&sb, &config, &uuid);
    let e = host_entries(&sb, &a);
    let stop = latest(&e, "host_stop");
    // Recorded at `release end`, with the shutoff reason where libvirtd passes one there
    // (the libvirt 9.0 of these machines passes `-`; later ones `destroyed`).
    assert_eq!(stop["phase"], "release", "{stop}");
    assert!(
        stop["reason"].is_null() || stop["reason"] == "destroyed",
        "{stop}"
    );
    let rest = latest(&e, "disk_at_rest");
    assert_eq!(rest["disks"][0]["changed"], true);
    let state = rest["disks"][0]["content_root"].clone();

    // 3. A copy of that state, in a second domain.
    let b_img = sb.join("b.qcow2");
    std::fs::copy(&a_img, &b_img).unwrap();
    let b_log = sb.join("b.serial");
    let b = stack.define(
        &sb,
        "vmlt-b",
        &domain_xml(
            "vmlt-b",
            None,
            None,
            Some("52:54:00:6c:74:02"),
            &[DiskSpec::qcow2("vda", &b_img)],
            Some(&b_log),
        ),
    );

    // 4. The original starts again: the quick path (its disk is as it was at rest).
    let o = start(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let boot = latest(&host_entries(&sb, &a), "host_boot").clone();
    assert_eq!(boot["disks"][0]["root_via"], "quick");
    assert_eq!(boot["disks"][0]["content_root"], state);

    // 5. The copy is refused while the original runs, and virsh shows why.
    let o = start(&b);
    assert!(!o.status.success(), "the copy started");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refusing to start vmlt-b"), "{err}");
    assert!(
        err.contains("vmlt-a") && err.contains("is running now"),
        "{err}"
    );
    assert_eq!(stack.state(&b), "shut off");
    let eb = host_entries(&sb, &b);
    assert_eq!(kinds(&eb), ["genesis", "start_refused"]);
    assert_eq!(
        latest(&eb, "start_refused")["guard"]["findings"][0]["state"]["content_root"],
        state
    );

    // 6. After the original is destroyed, the copy starts, with the restore warning.
    assert!(virsh(&["destroy", &a]).status.success());
    let o = start(&b);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_written(&b_log);
    let boot = latest(&host_entries(&sb, &b), "host_boot").clone();
    assert_eq!(boot["guard"]["decision"], "allowed_with_warnings");
    assert_eq!(boot["guard"]["findings"][0]["kind"], "restore");
    let log = std::fs::read_to_string(sb.state().join("host/hook.log")).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("vmlt-b") && l.contains("WARNING"))
        .unwrap_or_else(|| panic!("no restore warning in the hook log:\n{log}"));
    assert!(warning.contains("must not run again"), "{warning}");
    drop(stack);
}

#[test]
fn two_domains_deployed_from_one_pristine_template_both_start() {
    if !as_root_or_skip() {
        return;
    }
    let (sb, config) = sandbox();
    let mut stack = Stack::acquire(&sb, &config);
    let template = sb.join("template.qcow2");
    guest_image(&template);
    let mut names = Vec::new();
    for (i, name) in ["vmlt-c1", "vmlt-c2"].iter().enumerate() {
        let overlay = sb.join(format!("{name}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            template.to_str().unwrap(),
            "-F",
            "qcow2",
            overlay.to_str().unwrap(),
        ]);
        let log = sb.join(format!("{name}.serial"));
        stack.define(
            &sb,
            name,
            &domain_xml(
                name,
                None,
                None,
                Some(&format!("52:54:00:6c:74:1{i}")),
                &[DiskSpec::qcow2("vda", &overlay)],
                Some(&log),
            ),
        );
        let o = start(name);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        wait_written(&log);
        names.push(name.to_string());
    }
    for name in &names {
        assert_eq!(stack.state(name), "running");
        let boot = latest(&host_entries(&sb, name), "host_boot").clone();
        assert_eq!(boot["guard"]["decision"], "allowed", "{name}: {boot}");
        assert_eq!(
            boot["disks"][0]["backing"][0]["path"],
            template.to_str().unwrap()
        );
    }
    // A third appliance deployed as a full copy of the template (same content as the
    // overlays started from) also starts while the other two run: the template's content
    // is no appliance's state.
    let full = sb.join("vmlt-c3.qcow2");
    std::fs::copy(&template, &full).unwrap();
    let log = sb.join("vmlt-c3.serial");
    let c3 = stack.define(
        &sb,
        "vmlt-c3",
        &domain_xml(
            "vmlt-c3",
            None,
            None,
            Some("52:54:00:6c:74:13"),
            &[DiskSpec::qcow2("vda", &full)],
            Some(&log),
        ),
    );
    let o = start(&c3);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_written(&log);
    let boot = latest(&host_entries(&sb, &c3), "host_boot").clone();
    assert_eq!(boot["guard"]["decision"], "allowed", "{boot}");
    let c1 = latest(&host_entries(&sb, "vmlt-c1"), "host_boot").clone();
    assert_eq!(
        boot["disks"][0]["content_root"],
        c1["disks"][0]["content_root"]
    );
    for name in &names {
        assert_eq!(stack.state(name), "running");
    }
    drop(stack);
}

#[test]
fn a_live_backup_restored_as_another_domain_is_refused_while_the_original_runs() {
    if !as_root_or_skip() {
        return;
    }
    let (sb, config) = sandbox();
    let mut stack = Stack::acquire(&sb, &config);
    let a_img = sb.join("a.qcow2");
    guest_image(&a_img);
    let a_log = sb.join("a.serial");
    let a = stack.define(
        &sb,
        "vmlt-la",
        &domain_xml(
            "vmlt-la",
            None,
            None,
            Some("52:54:00:6c:74:21"),
            &[DiskSpec::qcow2("vda", &a_img)],
            Some(&a_log),
        ),
    );
    let uuid = xml_text(&stack.dumpxml(&a), "uuid").unwrap();
    let o = start(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_written(&a_log);

    // A backup copied while vmlt-la runs (its state was never recorded at a stop), and its
    // signed manifest made with the domain named.
    let backup = sb.join("backup.qcow2");
    std::fs::copy(&a_img, &backup).unwrap();
    let d = sb
        .cmd(["--config", config.to_str().unwrap(), "--json"])
        .arg("backup")
        .arg("manifest")
        .arg("--domain")
        .arg(&a)
        .arg(&backup)
        .arg("-o")
        .arg(sb.join("backup.json"))
        .ok()
        .json();
    assert_eq!(d["recorded"]["running"], true, "{d}");
    assert_eq!(d["recorded"]["state"], true, "{d}");

    // Restored as another domain: virsh start is refused while vmlt-la runs.
    let restored = sb.join("restored.qcow2");
    std::fs::copy(&backup, &restored).unwrap();
    std::fs::set_permissions(&restored, std::fs::Permissions::from_mode(0o644)).unwrap();
    let b_log = sb.join("b.serial");
    let b = stack.define(
        &sb,
        "vmlt-lb",
        &domain_xml(
            "vmlt-lb",
            None,
            None,
            Some("52:54:00:6c:74:22"),
            &[DiskSpec::qcow2("vda", &restored)],
            Some(&b_log),
        ),
    );
    let o = start(&b);
    assert!(!o.status.success(), "the restored backup started");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refusing to start vmlt-lb"), "{err}");
    assert!(
        err.contains("vmlt-la") && err.contains("is running now") && err.contains("backup"),
        "{err}"
    );
    assert_eq!(stack.state(&b), "shut off");

    // vmlt-la destroyed: the restored copy starts, with a warning. The test guest writes
    // its disk once, before the backup, so vmlt-la stopped with the backup's content: its
    // at-rest record now says so, and starting the copy takes over its latest state (a
    // guest that ran on would make it a restore, as tests/hook_guard.rs shows).
    assert!(virsh(&["destroy", &a]).status.success());
    settle(&sb, &config, &uuid);
    let o = start(&b);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let boot = latest(&host_entries(&sb, &b), "host_boot").clone();
    assert_eq!(boot["guard"]["decision"], "allowed_with_warnings", "{boot}");
    assert_eq!(boot["guard"]["findings"][0]["kind"], "takeover", "{boot}");
    let log = std::fs::read_to_string(sb.state().join("host/hook.log")).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("vmlt-lb") && l.contains("WARNING"))
        .unwrap_or_else(|| panic!("no warning in the hook log:\n{log}"));
    assert!(warning.contains("must not run again"), "{warning}");
    drop(stack);
}
