#!/usr/bin/env bash
# Image fingerprint benchmarks (issue: "Speed and memory"). Prints each figure and the
# ratio against its peer, measured side by side in the same run.
#
#   benches/image.sh [WORKDIR]       (default: /var/tmp/vmledger-bench-image; ~14 GB free)
#
# Every measured command runs once per round, all commands interleaved, for $ROUNDS rounds
# (default 5), after a warm-up that puts the files in the page cache; the median is
# reported. Interleaving keeps the comparison fair on a machine whose load drifts.
# Peers: coreutils sha256sum; the machine's parallel SHA-256 limit (`openssl speed
# -multi NPROC` over 4 MiB buffers in memory, all cores); qemu-img compare. Peak memory
# comes from GNU time (`/usr/bin/time -v`). CPU time (user + sys) of every run is also
# recorded, and an "idle projection" (bytes / (CPU seconds / cores)) shows what the same
# work gives on cores nothing else uses, since other work on a shared machine inflates wall
# times of multi-threaded runs more than single-threaded ones.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-/var/tmp/vmledger-bench-image}
ROUNDS=${ROUNDS:-5}
NPROC=$(nproc)
mkdir -p "$WORK"
for t in qemu-img openssl python3 sha256sum /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "benches/image.sh: needs $t" >&2; exit 2; }
done

cargo build --release --quiet
BIN=$PWD/target/release/vmledger
cd "$WORK"

G=$((1 << 30))
echo "== preparing images in $WORK (kept between runs)"
[ -f r2g.raw ] || head -c $((2 * G)) /dev/urandom > r2g.raw
[ -f r2g.copy.raw ] || cp r2g.raw r2g.copy.raw
[ -f r1g.raw ] || head -c $G r2g.raw > r1g.raw
if [ ! -f s8g.raw ]; then
  # 8 GiB sparse holding the same 1 GiB of data, in 8 pieces of 128 MiB spread out.
  truncate -s $((8 * G)) s8g.raw
  for i in 0 1 2 3 4 5 6 7; do
    dd if=r1g.raw of=s8g.raw bs=128M skip=$i seek=$((i * 8)) count=1 conv=notrunc,sparse \
      status=none
  done
  # The 1 GiB dense reference holds exactly the same bytes.
fi
[ -f q2g.qcow2 ] || qemu-img convert -O qcow2 r2g.raw q2g.qcow2
[ -f qc2g.qcow2 ] || qemu-img convert -c -O qcow2 r2g.raw qc2g.qcow2
if [ ! -f t2g.raw ]; then
  # 2 GiB of compressible data (words and zero runs): random data does not compress, so
  # QEMU stores its "compressed" clusters uncompressed; this shows decompression cost.
  python3 - <<'EOF'
import random
r = random.Random(42)
words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"\n", b"epsilon ", b"\0" * 200]
block = bytearray()
while len(block) < 16 << 20:
    block += r.choice(words)
block = bytes(block[:16 << 20])
with open("t2g.raw", "wb") as f:
    for i in range(128):
        f.write(i.to_bytes(8, "little") + block[8:])
EOF
fi
[ -f tz2g.qcow2 ] || qemu-img convert -c -O qcow2 -o compression_type=zlib t2g.raw tz2g.qcow2
[ -f ts2g.qcow2 ] || qemu-img convert -c -O qcow2 -o compression_type=zstd t2g.raw ts2g.qcow2
[ -f r2g.manifest.json ] || "$BIN" fingerprint image --manifest r2g.manifest.json r2g.raw >/dev/null
ls -ls --block-size=M r2g.raw r1g.raw s8g.raw q2g.qcow2 qc2g.qcow2 t2g.raw tz2g.qcow2 ts2g.qcow2 \
  r2g.manifest.json

# name -> command line (run without a shell)
declare -A CMD=(
  [sha256sum]="sha256sum r2g.raw"
  [raw2g]="$BIN fingerprint image r2g.raw"
  [dense1g]="$BIN fingerprint image r1g.raw"
  [sparse8g]="$BIN fingerprint image s8g.raw"
  [qcow2]="$BIN fingerprint image q2g.qcow2"
  [qcow2_c_random]="$BIN fingerprint image qc2g.qcow2"
  [text_raw]="$BIN fingerprint image t2g.raw"
  [text_zlib]="$BIN fingerprint image tz2g.qcow2"
  [text_zstd]="$BIN fingerprint image ts2g.qcow2"
  [diff]="$BIN diff r2g.raw r2g.manifest.json"
  [qemu_compare]="qemu-img compare r2g.raw r2g.copy.raw"
)
ORDER=(sha256sum raw2g dense1g sparse8g qcow2 qcow2_c_random text_raw text_zlib text_zstd diff
  qemu_compare)

echo "== warm-up (page cache)"
cat r2g.raw r2g.copy.raw r1g.raw q2g.qcow2 qc2g.qcow2 t2g.raw tz2g.qcow2 ts2g.qcow2 >/dev/null
"$BIN" fingerprint image s8g.raw >/dev/null

TIMES=$(mktemp)
trap 'rm -f "$TIMES" "$TIMES.one"' EXIT
now() { date +%s.%N; }
limit() {
  # GB/s of all cores hashing 4 MiB buffers in memory (wall time, like the others).
  openssl speed -elapsed -multi "$NPROC" -seconds 2 -bytes 4194304 -evp sha256 2>/dev/null |
    awk '/^sha256 /{ sub(/k$/, "", $2); printf "%.6f\n", $2 * 1000 / 1e9 }'
}
limit1() {
  # GB/s of one core hashing 4 MiB buffers in memory (per CPU second: openssl's default).
  openssl speed -seconds 2 -bytes 4194304 -evp sha256 2>/dev/null |
    awk '/^sha256 /{ sub(/k$/, "", $2); printf "%.6f\n", $2 * 1000 / 1e9 }'
}
echo "== $ROUNDS interleaved rounds (load before: $(cut -d' ' -f1-3 /proc/loadavg); other work on the machine skews absolute figures, not the side-by-side ratios as much)"
for r in $(seq "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    read -r -a argv <<<"${CMD[$name]}"
    set +e
    /usr/bin/time -f "%e %U %S" -o "$TIMES.one" "${argv[@]}" >/dev/null
    rc=$?
    set -e
    if [ "$name" = diff ] && [ $rc -ne 0 ]; then echo "diff exited $rc" >&2; exit 2; fi
    if [ "$name" = qemu_compare ] && [ $rc -ne 0 ]; then echo "compare exited $rc" >&2; exit 2; fi
    read -r wall user sys < <(tail -1 "$TIMES.one")
    echo "$name $wall" >>"$TIMES"
    echo "cpu_$name $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f", u + s }')" >>"$TIMES"
  done
  echo "limit_gbps $(limit)" >>"$TIMES"
  echo "core_gbps $(limit1)" >>"$TIMES"
  echo "  round $r done"
done

echo "== peak memory (/usr/bin/time -v, maximum resident set size)"
MEM=$(mktemp)
for name in raw2g sparse8g qcow2 text_zlib text_zstd diff; do
  read -r -a argv <<<"${CMD[$name]}"
  kb=$(/usr/bin/time -v "${argv[@]}" 2>&1 >/dev/null | awk -F: '/Maximum resident/{gsub(/ /,"",$2); print $2}')
  echo "$name $kb" >>"$MEM"
done
kb=$(/usr/bin/time -v "$BIN" fingerprint image --manifest m.tmp.json r2g.raw 2>&1 >/dev/null |
  awk -F: '/Maximum resident/{gsub(/ /,"",$2); print $2}')
echo "manifest2g $kb" >>"$MEM"
rm -f m.tmp.json

echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$TIMES" "$MEM" "$NPROC" <<'EOF'
import sys, statistics
from collections import defaultdict
t = defaultdict(list)
for line in open(sys.argv[1]):
    k, v = line.split()
    t[k].append(float(v))
m = dict(l.split() for l in open(sys.argv[2]))
med = {k: statistics.median(v) for k, v in t.items()}
G = 2**30
def gbps(name, size): return size / med[name] / 1e9
raw = gbps("raw2g", 2 * G)
print()
print(f"{'measure':44} {'median s':>9} {'GB/s':>7}")
for name, size in [("sha256sum", 2*G), ("raw2g", 2*G), ("dense1g", G), ("sparse8g", 8*G),
                   ("qcow2", 2*G), ("qcow2_c_random", 2*G), ("text_raw", 2*G),
                   ("text_zlib", 2*G), ("text_zstd", 2*G), ("diff", 2*G),
                   ("qemu_compare", 2*G)]:
    print(f"{name:44} {med[name]:9.3f} {gbps(name, size):7.2f}")
lim = med["limit_gbps"]
print(f"{'parallel SHA-256 limit (openssl, ' + sys.argv[3] + ' cores)':44} {'':9} {lim:7.2f}")
print()
def ratio(label, value, want, better):
    ok = value >= want if better == ">=" else value <= want
    print(f"{label:64} {value:6.2f}x  (target {better} {want}x) {'ok' if ok else 'MISSED'}")
ratio("content_root 2 GiB raw vs sha256sum (throughput)", raw / gbps("sha256sum", 2*G), 8, ">=")
ratio("content_root 2 GiB raw vs parallel SHA-256 limit", raw / lim, 0.75, ">=")
ratio("8 GiB sparse (1 GiB data) time vs 1 GiB dense time", med["sparse8g"] / med["dense1g"], 1.3, "<=")
ratio("qcow2 (uncompressed clusters) vs raw throughput", gbps("qcow2", 2*G) / raw, 0.8, ">=")
print(f"{'qcow2 -c of random data (QEMU stores it uncompressed) vs raw':64} {gbps('qcow2_c_random', 2*G) / raw:6.2f}x")
print(f"{'compressible data: zlib-compressed qcow2 vs its raw':64} {gbps('text_zlib', 2*G) / gbps('text_raw', 2*G):6.2f}x")
print(f"{'compressible data: zstd-compressed qcow2 vs its raw':64} {gbps('text_zstd', 2*G) / gbps('text_raw', 2*G):6.2f}x")
ratio("diff IMAGE MANIFEST time vs qemu-img compare IMAGE COPY time", med["diff"] / med["qemu_compare"], 1.5, "<=")
print()
# CPU time (user + sys) does not depend on how busy the machine's other work keeps the
# cores; "idle projection" = bytes / (CPU seconds / cores), what the same work gives when
# it has every core to itself (sha256sum and qemu-img compare use one core).
ncores = int(sys.argv[3])
core = med["core_gbps"]
def cpu(name): return med["cpu_" + name]
print(f"CPU seconds (user+sys): sha256sum {cpu('sha256sum'):.2f}, raw2g {cpu('raw2g'):.2f}, "
      f"diff {cpu('diff'):.2f}, qemu_compare {cpu('qemu_compare'):.2f}; one core hashes "
      f"{core:.2f} GB/s (openssl)")
proj = 2 * G / (cpu("raw2g") / ncores) / 1e9
print(f"{'idle projection: raw2g throughput':64} {proj:6.2f} GB/s")
print(f"{'idle projection: raw2g vs sha256sum':64} {proj / (2 * G / cpu('sha256sum') / 1e9):6.2f}x  (target >= 8x)")
print(f"{'idle projection: raw2g vs parallel limit (cores x one core)':64} {proj / (core * ncores):6.2f}x  (target >= 0.75x)")
dproj = cpu("diff") / ncores
# qemu-img may overlap I/O threads with its compare: take the smaller of its CPU and
# wall time (the comparison least favourable to vmledger).
qc = min(cpu("qemu_compare"), med["qemu_compare"])
print(f"{'idle projection: diff time vs qemu-img compare time':64} {dproj / qc:6.2f}x  (target <= 1.5x)")
print()
for k in ["raw2g", "sparse8g", "qcow2", "text_zlib", "text_zstd", "diff", "manifest2g"]:
    kb = int(m[k])
    print(f"peak RSS {k:12} {kb / 1024:7.1f} MiB  (target < 64 MiB) {'ok' if kb < 64 * 1024 else 'MISSED'}")
EOF
