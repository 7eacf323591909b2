#!/usr/bin/env bash
# Benchmark: `vmledger fingerprint hardware` (target: under 20 ms) on this machine's own
# root, on a generated KVM/QEMU guest tree, on libvirt domain XML and on a Proxmox config,
# measured with hyperfine side by side with `systemd-detect-virt` (which reads a subset of
# the same files) when it is installed. Exits 1 when any vmledger mean is 20 ms or more.
#
# Usage: benches/hardware.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "hyperfine is not installed (apt-get install hyperfine)" >&2; exit 2; }
cargo build --release --quiet
BIN=$PWD/target/release/vmledger
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# A KVM guest root: DMI, 4 virtio NICs, 4 virtio disks, 8 vCPUs, machine-id, fw_cfg genid.
G=$W/guest
mkdir -p "$G/sys/class/dmi/id" "$G/etc" "$G/proc/self" "$G/sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid"
echo QEMU > "$G/sys/class/dmi/id/sys_vendor"
echo "Standard PC (Q35 + ICH9, 2009)" > "$G/sys/class/dmi/id/product_name"
echo 6f1c3d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f > "$G/sys/class/dmi/id/product_uuid"
echo APP-0001 > "$G/sys/class/dmi/id/product_serial"
for i in 0 1 2 3; do
  d=$G/sys/class/net/enp${i}s0; mkdir -p "$d/device"
  echo "52:54:00:aa:bb:0$i" > "$d/address"; echo 0 > "$d/addr_assign_type"; echo 1 > "$d/type"
  b=$G/sys/block/vd$(printf "\\x$(printf %x $((97 + i)))"); mkdir -p "$b/device"; echo "DISK$i" > "$b/serial"
done
for i in $(seq 0 7); do printf 'processor\t: %d\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu hypervisor\n\n' "$i"; done > "$G/proc/cpuinfo"
echo "MemTotal:        8131540 kB" > "$G/proc/meminfo"
echo 0123456789abcdef0123456789abcdef > "$G/etc/machine-id"
head -c 4096 /dev/urandom > "$G/sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid/raw"
echo "22 1 252:1 / / rw - ext4 /dev/vda1 rw" > "$G/proc/self/mountinfo"

cat > "$W/domain.xml" <<'XML'
<domain type='kvm'><name>app</name><uuid>6f1c3d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f</uuid>
<genid>11111111-2222-4333-8444-555555555555</genid><memory unit='KiB'>8388608</memory><vcpu>8</vcpu>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/><serial>DISK0</serial></disk>
<interface type='network'><mac address='52:54:00:aa:bb:00'/><source network='default'/></interface>
</devices></domain>
XML
printf 'cores: 4\nmemory: 8192\nnet0: virtio=BC:24:11:2A:3B:4C,bridge=vmbr0\nscsi0: local-lvm:vm-100-disk-0,size=32G,serial=D1\nsmbios1: uuid=5c0e8c4e-6a9e-4b43-9c47-7e3b0c1d2e3f\nvmgenid: 2f8a5e1c-1b2d-4c3e-8f9a-0b1c2d3e4f50\n' > "$W/100.conf"

json=$W/h.json
peer=()
if command -v systemd-detect-virt >/dev/null; then peer=(-n "systemd-detect-virt (peer)" "systemd-detect-virt"); fi
# Every vmledger command must succeed before it is timed (-i below only tolerates the
# peer's exit 1 on bare metal).
"$BIN" fingerprint hardware --json --root / > /dev/null
"$BIN" fingerprint hardware --json --root "$G" > /dev/null
"$BIN" fingerprint hardware --json --libvirt-xml "$W/domain.xml" > /dev/null
"$BIN" fingerprint hardware --json --proxmox-conf "$W/100.conf" > /dev/null
hyperfine -N -i --warmup 20 --runs 200 --export-json "$json" --style none \
  -n "guest root /" "$BIN fingerprint hardware --json --root /" \
  -n "guest fixture (KVM)" "$BIN fingerprint hardware --json --root $G" \
  -n "libvirt XML" "$BIN fingerprint hardware --json --libvirt-xml $W/domain.xml" \
  -n "Proxmox conf" "$BIN fingerprint hardware --json --proxmox-conf $W/100.conf" \
  "${peer[@]}" > "$W/hyperfine.txt" || { cat "$W/hyperfine.txt"; exit 2; }

python3 - "$json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
peer = next((r for r in res if "peer" in r["command"]), None)
ok = True
for r in res:
    ms = r["mean"] * 1000
    line = f"{r['command']:28} mean {ms:6.2f} ms  median {r['median']*1000:5.2f}  (min {r['min']*1000:5.2f}, max {r['max']*1000:6.2f})"
    if "peer" not in r["command"]:
        line += f"  {'PASS' if ms < 20 else 'FAIL'} (< 20 ms)"
        if peer:
            line += f"  {r['mean']/peer['mean']:.2f}x systemd-detect-virt"
        ok &= ms < 20
    print(line)
sys.exit(0 if ok else 1)
PY
