//! Fixture guest roots for hardware fingerprint tests: sysfs/proc/etc trees laid out as a
//! real guest of each kind has them (relative sysfs symlinks, root-only DMI serials with
//! mode 0400), plus helpers to run the binary as an unprivileged user with `setpriv`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Run, bin};

/// A guest root being built.
pub struct Fx {
    pub root: PathBuf,
}

impl Fx {
    pub fn new(root: &Path) -> Fx {
        fs::create_dir_all(root).unwrap();
        Fx {
            root: root.to_path_buf(),
        }
    }

    pub fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Fx {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
        self
    }

    /// A root-only file (mode 0400), as the kernel makes DMI serials and product_uuid.
    pub fn secret(&self, rel: &str, content: impl AsRef<[u8]>) -> &Fx {
        self.file(rel, content);
        fs::set_permissions(self.root.join(rel), fs::Permissions::from_mode(0o400)).unwrap();
        self
    }

    pub fn dir(&self, rel: &str) -> &Fx {
        fs::create_dir_all(self.root.join(rel)).unwrap();
        self
    }

    pub fn link(&self, rel: &str, target: &str) -> &Fx {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        symlink(target, &p).unwrap();
        self
    }

    /// DMI attributes; uuid and serials root-only, as on a real kernel. Empty values are
    /// written empty (as QEMU leaves unset serials).
    pub fn dmi(&self, vendor: &str, product: &str, uuid: &str, serials: [&str; 3]) -> &Fx {
        let d = "sys/devices/virtual/dmi/id";
        self.file(&format!("{d}/sys_vendor"), format!("{vendor}\n"))
            .file(&format!("{d}/product_name"), format!("{product}\n"))
            .secret(&format!("{d}/product_uuid"), format!("{uuid}\n"))
            .secret(&format!("{d}/product_serial"), format!("{}\n", serials[0]))
            .secret(&format!("{d}/board_serial"), format!("{}\n", serials[1]))
            .secret(&format!("{d}/chassis_serial"), format!("{}\n", serials[2]))
            .link("sys/class/dmi/id", "../../devices/virtual/dmi/id")
    }

    /// A NIC backed by a device at sysfs path `dev` (e.g. `pci0000:00/0000:01:00.0/virtio0`).
    pub fn nic(&self, ifname: &str, dev: &str, mac: &str) -> &Fx {
        let d = format!("sys/devices/{dev}/net/{ifname}");
        self.file(&format!("{d}/address"), format!("{mac}\n"))
            .file(&format!("{d}/addr_assign_type"), "0\n")
            .file(&format!("{d}/type"), "1\n")
            .link(&format!("{d}/device"), "../../../")
            .link(
                &format!("sys/class/net/{ifname}"),
                &format!("../../devices/{dev}/net/{ifname}"),
            )
    }

    /// A virtual interface (no device): loopback, bridge or veth.
    pub fn virtual_nic(&self, ifname: &str, mac: &str, assign: &str, kind: &str) -> &Fx {
        let d = format!("sys/devices/virtual/net/{ifname}");
        self.file(&format!("{d}/address"), format!("{mac}\n"))
            .file(&format!("{d}/addr_assign_type"), format!("{assign}\n"))
            .file(
                &format!("{d}/type"),
                if kind == "loopback" { "772\n" } else { "1\n" },
            );
        if kind == "bridge" {
            self.file(&format!("{d}/bridge/forward_delay"), "1500\n");
        }
        self.link(
            &format!("sys/class/net/{ifname}"),
            &format!("../../devices/virtual/net/{ifname}"),
        )
    }

    /// A block device with an optional `serial` file and optional SCSI VPD page 0x80.
    pub fn disk(&self, name: &str, dev: &str, serial: Option<&str>, vpd80: Option<&str>) -> &Fx {
        let d = format!("sys/devices/{dev}/block/{name}");
        self.file(&format!("{d}/size"), "67108864\n");
        if let Some(s) = serial {
            self.file(&format!("{d}/serial"), s);
        }
        if let Some(s) = vpd80 {
            let mut page = vec![0x00, 0x80, 0x00, s.len() as u8];
            page.extend_from_slice(s.as_bytes());
            self.file(&format!("{d}/device/vpd_pg80"), page);
        } else {
            self.dir(&format!("{d}/device"));
        }
        self.link(
            &format!("sys/block/{name}"),
            &format!("../devices/{dev}/block/{name}"),
        )
    }

    pub fn cpus(&self, model: &str, n: usize, hypervisor_flag: bool) -> &Fx {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: fpu vme de pse tsc msr{}\n\n",
                if hypervisor_flag { " hypervisor" } else { "" }
            ));
        }
        self.file("proc/cpuinfo", s)
    }

    pub fn memory_kib(&self, kib: u64) -> &Fx {
        self.file(
            "proc/meminfo",
            format!("MemTotal:       {kib} kB\nMemFree:         123456 kB\n"),
        )
    }

    pub fn root_fs(&self, dev: &str, uuid: &str) -> &Fx {
        self.file(
            "proc/self/mountinfo",
            format!("22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/{dev} rw,errors=remount-ro\n23 22 0:21 / /proc rw,nosuid - proc proc rw\n"),
        )
        .link(&format!("dev/disk/by-uuid/{uuid}"), &format!("../../{dev}"))
    }

    /// QEMU's `etc/vmgenid_guid` fw_cfg blob: 4096 bytes, the GUID at offset 40 in
    /// little-endian (Microsoft) layout. Root-only.
    pub fn vmgenid(&self, uuid: &str) -> &Fx {
        let hexes: String = uuid.chars().filter(|c| *c != '-').collect();
        let be: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hexes[i * 2..i * 2 + 2], 16).unwrap())
            .collect();
        let mut le = be.clone();
        le[0..4].reverse();
        le[4..6].reverse();
        le[6..8].reverse();
        let mut blob = vec![0u8; 4096];
        blob[40..56].copy_from_slice(&le);
        self.secret(
            "sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid/raw",
            blob,
        )
    }
}

pub const KVM_UUID: &str = "6f1c3d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f";
pub const KVM_GENID: &str = "11111111-2222-4333-8444-555555555555";
pub const KVM_MAC: &str = "52:54:00:aa:bb:01";
pub const KVM_SERIAL: &str = "APP-0001";
pub const KVM_DISK_SERIAL: &str = "APPDISK01";
pub const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

/// A KVM/QEMU guest (libvirt, q35), matching [`kvm_domain_xml`].
pub fn kvm(root: &Path) -> Fx {
    let f = Fx::new(root);
    f.dmi(
        "QEMU",
        "Standard PC (Q35 + ICH9, 2009)",
        KVM_UUID,
        [KVM_SERIAL, "", ""],
    )
    .nic(
        "enp1s0",
        "pci0000:00/0000:00:02.0/0000:01:00.0/virtio0",
        KVM_MAC,
    )
    .virtual_nic("lo", "00:00:00:00:00:00", "0", "loopback")
    .virtual_nic("docker0", "02:42:ac:11:00:01", "3", "bridge")
    .virtual_nic("veth1a2b3c", "9a:3c:11:22:33:44", "3", "veth")
    .disk(
        "vda",
        "pci0000:00/0000:00:04.0/virtio2",
        Some(KVM_DISK_SERIAL),
        None,
    )
    .disk(
        "sr0",
        "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
        None,
        None,
    )
    .disk("loop0", "virtual", None, None)
    .file("etc/machine-id", format!("{MACHINE_ID}\n"))
    .cpus("QEMU Virtual CPU version 2.5+", 2, true)
    .memory_kib(2014936)
    .root_fs("vda1", "0b3c9f5e-8e2a-4d7c-9a3b-1c2d3e4f5a6b")
    .file(
        "sys/devices/system/clocksource/clocksource0/available_clocksource",
        "kvm-clock tsc acpi_pm \n",
    )
    .vmgenid(KVM_GENID);
    f
}

/// The libvirt domain XML of the VM that [`kvm`] is the inside of.
pub fn kvm_domain_xml(name: &str, uuid: &str, genid: &str, macs: &[&str], disk: &str) -> String {
    let nics: String = macs
        .iter()
        .map(|m| format!("    <interface type='network'><mac address='{m}'/><source network='default'/><model type='virtio'/></interface>\n"))
        .collect();
    format!(
        "<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <genid>{genid}</genid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <sysinfo type='smbios'><system><entry name='serial'>{KVM_SERIAL}</entry></system></sysinfo>
  <os><type arch='x86_64' machine='q35'>hvm</type><smbios mode='sysinfo'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/><serial>{KVM_DISK_SERIAL}</serial></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
{nics}  </devices>
</domain>
"
    )
}

/// A VMware guest: serials in DMI, a vmxnet3 NIC, a SCSI disk with a VPD serial.
pub fn vmware(root: &Path) -> Fx {
    let f = Fx::new(root);
    f.dmi(
        "VMware, Inc.",
        "VMware7,1",
        "564d1b2c-3d4e-5f60-7182-93a4b5c6d7e8",
        [
            "VMware-56 4d 1b 2c 3d 4e 5f 60-71 82 93 a4 b5 c6 d7 e8",
            "None",
            "None",
        ],
    )
    .nic(
        "ens192",
        "pci0000:00/0000:00:15.0/0000:0b:00.0",
        "00:50:56:8A:12:34",
    )
    .virtual_nic("lo", "00:00:00:00:00:00", "0", "loopback")
    .disk(
        "sda",
        "pci0000:00/0000:00:10.0/host2/target2:0:0/2:0:0:0",
        None,
        Some("6000c29a1b2c3d4e5f60718293a4b5c6"),
    )
    .file("etc/machine-id", "fedcba9876543210fedcba9876543210\n")
    .cpus("Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", 4, true)
    .memory_kib(8131540)
    .file(
        "sys/devices/system/clocksource/clocksource0/available_clocksource",
        "tsc hpet acpi_pm \n",
    );
    f
}

/// A Hyper-V guest: Microsoft DMI with serials, a netvsc NIC on VMBus.
pub fn hyperv(root: &Path) -> Fx {
    let f = Fx::new(root);
    f.dmi(
        "Microsoft Corporation",
        "Virtual Machine",
        "d2a1c3b4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        [
            "0000-0014-9163-5071-6342-0826-53",
            "0000-0001-2345-6789-0123-4567-89",
            "0000-0011-2233-4455-6677-8899-00",
        ],
    )
    .nic("eth0", "LNXSYSTM:00/LNXSYBUS:00/ACPI0004:00/VMBUS:00/f8615163-df3e-46c5-913f-f2d2f965ed0e", "00:15:5d:01:02:03")
    .virtual_nic("lo", "00:00:00:00:00:00", "0", "loopback")
    .disk("sda", "LNXSYSTM:00/LNXSYBUS:00/ACPI0004:00/VMBUS:00/00000000-0000-8899-0000-000000000000/host0/target0:0:0/0:0:0:0", None, None)
    .file("etc/machine-id", "aaaabbbbccccddddeeeeffff00001111\n")
    .cpus("Intel(R) Xeon(R) Platinum 8272CL CPU @ 2.60GHz", 2, true)
    .memory_kib(4026256)
    .root_fs("sda1", "6a2b4c8d-1e3f-4a5b-9c7d-2e4f6a8b0c1d");
    f
}

/// A container: no DMI, only a veth, no machine-id.
pub fn container(root: &Path) -> Fx {
    let f = Fx::new(root);
    f.virtual_nic("lo", "00:00:00:00:00:00", "0", "loopback")
        .virtual_nic("eth0", "02:42:ac:11:00:02", "3", "veth")
        .cpus("AMD EPYC 7B13", 2, true)
        .memory_kib(24576000)
        .file(".dockerenv", "")
        .file(
            "proc/self/mountinfo",
            "500 400 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/x\n",
        );
    f
}

/// Make `dir` and its ancestors up to `/tmp`-level traversable by any user.
pub fn open_up(dir: &Path) {
    let mut p = Some(dir);
    while let Some(d) = p {
        if d == Path::new("/") || d == Path::new("/tmp") {
            break;
        }
        let mode = fs::metadata(d).unwrap().permissions().mode();
        fs::set_permissions(d, fs::Permissions::from_mode(mode | 0o755)).unwrap();
        p = d.parent();
    }
}

/// Run `vmledger ARGS` as user/group 65534 (nobody) through `setpriv`, with HOME=`home`.
/// The binary is copied into `home` first: the build directory may not be reachable by
/// other users (a CI clone under /root).
pub fn run_as_nobody(home: &Path, args: &[&str]) -> Run {
    super::require("setpriv");
    let exe = home.join("vmledger-as-nobody");
    if !exe.exists() {
        fs::copy(bin(), &exe).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    }
    open_up(home);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(args)
        .env("HOME", home)
        .env_remove("VMLEDGER_STATE_DIR")
        .env_remove("VMLEDGER_CONFIG")
        .output()
        .expect("run setpriv");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
