#!/usr/bin/env bash
# The libvirt hook's start cost (issue 8: "the start costs under 100 ms for a 20 GiB
# qcow2"). Prints the time of `prepare begin` on the quick path (the disk's root was
# recorded when the domain's disk was fingerprinted at rest after `release end`, and its
# metadata has not changed since) against its peers, measured side by side in this run:
#   - `prepare begin` of the same domain when the disk has to be hashed (its metadata
#     changed: `touch`), i.e. the start cost without the quick path;
#   - a full content hash of the same image: `vmledger fingerprint image`;
#   - coreutils `sha256sum` of the image converted to raw (what a naive hook would do);
#     skipped with SHA256SUM=0 (it reads all 20 GiB).
#
#   benches/hooks.sh [WORKDIR]     (default: /var/tmp/vmledger-bench-hooks; needs ~45 GB
#                                   free with the raw conversion, ~5 GB without)
#
# The image: a 20 GiB qcow2 with DATA_GIB (default 4) GiB of allocated data written by
# qemu-io in 256 MiB pieces spread over the disk. Timings by hyperfine (median and mean
# of RUNS runs, default 10 for the quick path, 3 for the hashing ones). Everything is
# deleted at the end (KEEP=1 keeps the images for another run).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-/var/tmp/vmledger-bench-hooks}
DATA_GIB=${DATA_GIB:-4}
RUNS=${RUNS:-10}
SHA256SUM=${SHA256SUM:-1}
for t in qemu-img qemu-io hyperfine sha256sum python3; do
  command -v "$t" >/dev/null || { echo "benches/hooks.sh: needs $t" >&2; exit 2; }
done

cargo build --release --quiet
BIN=$PWD/target/release/vmledger
mkdir -p "$WORK"
cd "$WORK"
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$WORK"/state "$WORK"/disk.qcow2 "$WORK"/disk.raw "$WORK"/*.json "$WORK"/dom.xml \
      "$WORK"/between.sh
  fi
}
trap cleanup EXIT
df -h "$WORK" | sed 's/^/   /'

G=$((1 << 30))
IMG=$WORK/disk.qcow2
if [ ! -f "$IMG" ]; then
  echo "== writing a 20 GiB qcow2 with $DATA_GIB GiB of data (qemu-io)"
  qemu-img create -q -f qcow2 "$IMG" 20G
  cmds=()
  pieces=$((DATA_GIB * 4))
  stride=$((20 * G / pieces))
  for i in $(seq 0 $((pieces - 1))); do
    cmds+=(-c "write -P $((0x10 + i % 200)) $((i * stride)) 256M")
  done
  qemu-io -f qcow2 "${cmds[@]}" "$IMG" >/dev/null
fi
qemu-img info "$IMG" | grep -E 'virtual size|disk size' | sed 's/^/   /'

export VMLEDGER_STATE_DIR=$WORK/state
UUID=8e2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b
cat > dom.xml <<EOF
<domain type='qemu'>
  <name>bench</name>
  <uuid>$UUID</uuid>
  <genid>1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809</genid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$IMG'/><target dev='vda' bus='virtio'/></disk>
    <interface type='network'><mac address='52:54:00:be:0c:01'/><source network='default'/></interface>
  </devices>
</domain>
EOF
PREPARE="$BIN hook libvirt bench prepare begin - --xml $WORK/dom.xml"
RELEASE="$BIN hook libvirt bench release end - --xml $WORK/dom.xml"
SETTLE="$BIN hook settle ${UUID//-/} --wait"

echo "== first start (unknown disk: hashed at prepare), a run that writes, release, at rest"
rm -rf state
/usr/bin/time -f '   first prepare (hashes the disk): %e s' $PREPARE
qemu-io -f qcow2 -c "write -P 0xee 1G 1M" "$IMG" >/dev/null # what the guest's run wrote
$RELEASE
/usr/bin/time -f '   at-rest fingerprint after release (off the start path): %e s' \
  $SETTLE >/dev/null
cat > between.sh <<EOF
#!/bin/sh
# Untimed, between two measured starts: the previous run's release and its settle.
$RELEASE && $SETTLE >/dev/null
EOF
chmod +x between.sh

# Each measured prepare is preceded (untimed) by the release of the previous run and its
# settle, so every run starts the same stopped domain whose at-rest root is recorded.
hyperfine --style basic -N --runs "$RUNS" --warmup 2 --export-json quick.json \
  --prepare "$WORK/between.sh" -n 'prepare (quick path)' "$PREPARE"

# The measured starts really took the quick path (the last one's host_boot says so).
"$BIN" hook export bench | python3 -c '
import json, sys
boot = [e for e in json.load(sys.stdin)["entries"] if e["body"]["kind"] == "host_boot"][-1]
via = boot["body"]["data"]["disks"][0]["root_via"]
print("   last measured start: root_via =", via)
sys.exit(via != "quick")'

# The same start without the quick path: the disk's metadata changed (touch), so prepare
# hashes it (and the at-rest settle after release hashes it again, untimed).
hyperfine --style basic --runs 3 --export-json slow.json \
  --prepare "$RELEASE; $SETTLE; touch $IMG" \
  -n 'prepare (disk changed: hashed)' "$PREPARE"

hyperfine --style basic --runs 3 --warmup 1 --export-json full.json \
  -n 'vmledger fingerprint image' "$BIN fingerprint image $IMG"

if [ "$SHA256SUM" = 1 ]; then
  echo "== sha256sum of the raw conversion (reads all 20 GiB)"
  qemu-img convert -O raw "$IMG" disk.raw
  hyperfine --style basic --runs 1 --export-json sha.json -n 'sha256sum (raw)' \
    "sha256sum disk.raw"
  rm -f disk.raw
fi

python3 - <<'EOF'
import json, os
def t(name):
    if not os.path.exists(name):
        return None
    r = json.load(open(name))["results"][0]
    return r["median"], r["mean"], r["stddev"] or 0.0
rows = [("prepare, quick path", t("quick.json")),
        ("prepare, disk hashed", t("slow.json")),
        ("vmledger fingerprint image", t("full.json")),
        ("sha256sum of raw conversion", t("sha.json"))]
quick = rows[0][1][0]
print("\n== results (20 GiB qcow2)")
for name, r in rows:
    if r is None:
        continue
    med, mean, sd = r
    ratio = "" if name.startswith("prepare, quick") else f"  = {med / quick:,.0f}x the quick path"
    print(f"   {name:30} median {med * 1000:10.1f} ms  (mean {mean * 1000:.1f} ± {sd * 1000:.1f}){ratio}")
print(f"   target: quick path under 100 ms: {'met' if quick < 0.1 else 'NOT met'}")
EOF
