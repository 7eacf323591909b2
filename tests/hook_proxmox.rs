//! The Proxmox VE hookscript: `vmledger hook proxmox VMID PHASE` (and the repository's
//! `hooks/proxmox/vmledger-hookscript`) on fixture `VMID.conf` files and a fixture
//! `storage.cfg` whose `dir` storage holds real qcow2 volumes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::images::{qemu_img, qemu_io};
use common::libvirt::{host_entries, kinds, latest};
use common::{Sandbox, bin};

const U100: &str = "5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f";
const U101: &str = "6d1f9d5f-7b0f-4c54-8d58-8f4c1d2e3f40";
const GEN100: &str = "2f8a5e1c-1b2d-4c3e-8f9a-0b1c2d3e4f50";

struct Pve {
    sb: Sandbox,
    config: PathBuf,
}

impl Pve {
    fn new() -> Pve {
        let sb = Sandbox::new();
        for d in ["pve/qemu-server", "vz/images/100", "vz/images/101", "run"] {
            std::fs::create_dir_all(sb.join(d)).unwrap();
        }
        std::fs::write(
            sb.join("pve/storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent iso,vztmpl,backup,images\n\n\
                 lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n\
                 rbd: ceph\n\tpool vms\n",
                sb.join("vz").display()
            ),
        )
        .unwrap();
        let config = sb.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[hooks]\nproxmox_config_dir = \"{}\"\nproxmox_storage_cfg = \"{}\"\nproxmox_run_dir = \"{}\"\n",
                sb.join("pve/qemu-server").display(),
                sb.join("pve/storage.cfg").display(),
                sb.join("run").display()
            ),
        )
        .unwrap();
        Pve { sb, config }
    }

    fn volume(&self, vmid: u32) -> PathBuf {
        let p = self
            .sb
            .join(format!("vz/images/{vmid}/vm-{vmid}-disk-0.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "32M"]);
        qemu_io(&p, "qcow2", &["write -P 0x11 0 1M"]);
        p
    }

    fn conf(&self, vmid: u32, uuid: Option<&str>, extra: &str) {
        let smbios = uuid
            .map(|u| format!("smbios1: uuid={u}\n"))
            .unwrap_or_default();
        std::fs::write(
            self.sb.join(format!("pve/qemu-server/{vmid}.conf")),
            format!(
                "boot: order=scsi0;net0\ncores: 1\nmemory: 512\nname: edge-{vmid}\n\
                 net0: virtio=BC:24:11:00:01:{:02X},bridge=vmbr0\n\
                 ide2: local:iso/installer.iso,media=cdrom\n\
                 scsi0: local:{vmid}/vm-{vmid}-disk-0.qcow2,size=32M\n{smbios}{extra}",
                vmid % 256
            ),
        )
        .unwrap();
    }

    fn hook(&self, vmid: &str, phase: &str) -> common::Cmd {
        self.sb.cmd([
            "--config",
            self.config.to_str().unwrap(),
            "hook",
            "proxmox",
            vmid,
            phase,
        ])
    }

    fn settle(&self, uuid: &str) {
        self.sb
            .cmd(["--config", self.config.to_str().unwrap(), "hook", "settle"])
            .arg(uuid.replace('-', ""))
            .arg("--wait")
            .ok();
    }
}

fn fake_qemu(pid_file: &Path) -> Child {
    let child = Command::new("bash")
        .args(["-c", "exec -a /usr/bin/kvm sleep 600"])
        .spawn()
        .unwrap();
    std::fs::write(pid_file, format!("{}\n", child.id())).unwrap();
    child
}

#[test]
fn pre_start_records_the_vm_and_post_stop_fingerprints_it_at_rest() {
    let p = Pve::new();
    let vol = p.volume(100);
    p.conf(100, Some(U100), &format!("vmgenid: {GEN100}\n"));
    let r = p.hook("100", "pre-start").ok();
    assert_eq!(r.stdout, "");
    let mut qemu = fake_qemu(&p.sb.join("run/100.pid"));
    p.hook("100", "post-start").ok();
    p.hook("100", "pre-stop").ok();
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    qemu_io(&vol, "qcow2", &["write -P 0x22 2M 64k"]);
    p.hook("100", "post-stop").ok();
    p.settle(U100);

    let e = host_entries(&p.sb, "100");
    assert_eq!(
        kinds(&e),
        [
            "genesis",
            "host_boot",
            "host_started",
            "host_stop",
            "disk_at_rest"
        ]
    );
    assert_eq!(e[0]["body"]["data"]["hypervisor"], "proxmox");
    assert_eq!(e[0]["body"]["data"]["vmid"], "100");
    let boot = latest(&e, "host_boot");
    assert_eq!(boot["uuid"], U100);
    assert_eq!(boot["genid"], GEN100);
    assert_eq!(boot["name"], "edge-100");
    assert_eq!(boot["phase"], "pre-start");
    assert_eq!(boot["disks"][0]["target"], "scsi0");
    assert_eq!(boot["disks"][0]["file"]["path"], vol.to_str().unwrap());
    assert_eq!(boot["disks"][0]["root_via"], "hashed");
    assert_eq!(boot["ignored"][0]["reason"], "cdrom");
    assert!(latest(&e, "host_started")["pid"].is_u64());
    assert_eq!(latest(&e, "host_stop")["phase"], "post-stop");
    assert_eq!(latest(&e, "disk_at_rest")["disks"][0]["changed"], true);
    // The VM is found by its VMID, name or uuid.
    for q in ["100", "edge-100", U100] {
        p.sb.cmd(["hook", "show", q]).ok();
    }
}

#[test]
fn a_copied_volume_is_refused_while_its_vm_runs() {
    let p = Pve::new();
    let vol = p.volume(100);
    p.conf(100, Some(U100), "");
    p.hook("100", "pre-start").ok();
    qemu_io(&vol, "qcow2", &["write -P 0x22 2M 64k"]);
    p.hook("100", "post-stop").ok();
    p.settle(U100);
    std::fs::copy(&vol, p.sb.join("vz/images/101/vm-101-disk-0.qcow2")).unwrap();
    p.conf(101, Some(U101), "");
    p.hook("100", "pre-start").ok();
    let r = p.hook("101", "pre-start").expect(1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("refusing to start edge-101"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("edge-100"), "{}", r.stderr);
    p.hook("100", "post-stop").ok();
    let r = p.hook("101", "pre-start").ok();
    assert!(r.stderr.contains("restore"), "{}", r.stderr);
}

#[test]
fn the_repository_hookscript_runs_the_hook() {
    let p = Pve::new();
    p.volume(100);
    p.conf(100, None, "");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/proxmox/vmledger-hookscript");
    let o = Command::new(&script)
        .args(["100", "pre-start"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("VMLEDGER", bin())
        .env("VMLEDGER_STATE_DIR", p.sb.state())
        .env("VMLEDGER_CONFIG", &p.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Without smbios1 the VM still gets a stable identity, derived from its VMID.
    let e = host_entries(&p.sb, "100");
    let uuid = e[0]["body"]["data"]["uuid"].as_str().unwrap().to_string();
    assert_eq!(uuid, vmledger::hooks::proxmox::fallback_uuid(100));
    let o = Command::new(&script)
        .args(["100", "pre-snapshot"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("VMLEDGER", bin())
        .env("VMLEDGER_STATE_DIR", p.sb.state())
        .env("VMLEDGER_CONFIG", &p.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_arguments_and_configs_are_errors_naming_them() {
    let p = Pve::new();
    p.volume(100);
    p.conf(100, Some(U100), "");
    let r = p.hook("100", "post-snapshot").expect(2);
    assert!(r.stderr.contains("post-snapshot"), "{}", r.stderr);
    let r = p.hook("10x", "pre-start").expect(2);
    assert!(r.stderr.contains("10x"), "{}", r.stderr);
    let r = p.hook("102", "pre-start").expect(2);
    assert!(r.stderr.contains("102.conf"), "{}", r.stderr);
    std::fs::write(
        p.sb.join("pve/qemu-server/103.conf"),
        "name: x\nnot a line\n",
    )
    .unwrap();
    let r = p.hook("103", "pre-start").expect(2);
    assert!(
        r.stderr.contains("103.conf") && r.stderr.contains("line 2"),
        "{}",
        r.stderr
    );
    std::fs::write(p.sb.join("pve/storage.cfg"), "\tpath /x\n").unwrap();
    let r = p.hook("100", "pre-start").expect(2);
    assert!(
        r.stderr.contains("storage.cfg") && r.stderr.contains("line 1"),
        "{}",
        r.stderr
    );
    // The config dir can also be given on the command line.
    let other = p.sb.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(p.sb.join("pve/storage.cfg"), "").unwrap();
    std::fs::copy(
        p.sb.join("pve/qemu-server/100.conf"),
        other.join("100.conf"),
    )
    .unwrap();
    std::fs::remove_file(p.sb.join("pve/qemu-server/100.conf")).unwrap();
    p.hook("100", "pre-start")
        .arg("--conf-dir")
        .arg(&other)
        .ok();
    // pre-stop has nothing to do, whatever the state.
    p.hook("999", "pre-stop").ok();
}
