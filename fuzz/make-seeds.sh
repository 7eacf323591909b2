#!/usr/bin/env bash
# Seed corpora for the fuzz targets, made with qemu-img/qemu-io (small images covering
# v2/v3, cluster sizes, deflate/zstd compression, extended L2, backing names, data files).
set -euo pipefail
cd "$(dirname "$0")"
Q=corpus/qcow2
D=corpus/decompress
mkdir -p "$Q" "$D"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/data.raw" <<'PY'
import sys, random
r = random.Random(1)
out = bytearray()
while len(out) < 1 << 20:
    out += r.choice([b"alpha ", b"beta ", b"\0" * 64, bytes(r.randrange(256) for _ in range(16))])
open(sys.argv[1], "wb").write(out[:1 << 20])
PY
i=0
for opts in "cluster_size=512" "cluster_size=4096" "compat=0.10" "cluster_size=65536" \
  "extended_l2=on,cluster_size=16384" "compression_type=zstd,cluster_size=4096"; do
  for c in "" "-c"; do
    i=$((i + 1))
    qemu-img convert $c -O qcow2 -o "$opts" "$tmp/data.raw" "$Q/seed$i.qcow2"
  done
done
qemu-img create -q -f qcow2 -b seed1.qcow2 -F qcow2 "$Q/overlay.qcow2"
qemu-io -c "write -P 7 4096 8192" "$Q/overlay.qcow2" >/dev/null
# Decompression seeds: raw deflate and zstd streams of one cluster (selector byte first).
python3 - "$D" <<'PY'
import sys, zlib, os
d = sys.argv[1]
data = (b"alpha beta " * 400)[:4096]
c = zlib.compressobj(6, zlib.DEFLATED, -12)
open(os.path.join(d, "deflate-4k"), "wb").write(bytes([2 * 3]) + c.compress(data) + c.flush())
PY
echo "seeds: $(ls "$Q" | wc -l) qcow2, $(ls "$D" | wc -l) decompress"
