#!/usr/bin/env bash
# Benchmark: `vmledger fingerprint tree` against `find DIR -type f -print0 | xargs -0
# sha256sum` over a generated tree of 50,000 files holding 2 GiB, page cache warm, both
# measured side by side in this run with hyperfine. Prints both times and the ratio, and
# exits 1 when vmledger is not at least 4x faster.
#
# Usage: benches/tree.sh [DIR]   (default: target/bench/tree; generated once, reused)
# Env:   FILES (50000), BYTES (2147483648), RUNS (5)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "hyperfine is not installed (apt-get install hyperfine)" >&2; exit 2; }

DIR=${1:-target/bench/tree}
FILES=${FILES:-50000}
BYTES=${BYTES:-2147483648}
RUNS=${RUNS:-5}

cargo build --release --quiet
BIN=target/release/vmledger

if [ ! -f "$DIR/.complete" ] || [ "$(cat "$DIR/.complete")" != "$FILES $BYTES" ]; then
  echo "generating $FILES files, $BYTES bytes in $DIR ..." >&2
  rm -rf "$DIR"
  python3 - "$DIR" "$FILES" "$BYTES" <<'PY'
import os, sys
root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pool = os.urandom(1 << 22)
mean = total // files
sizes = [(i * 7919) % (2 * mean - 2000) + 1000 for i in range(files)]
sizes[-1] += total - sum(sizes)  # exact total
off = 0
for i, size in enumerate(sizes):
    d = os.path.join(root, f"d{i % 250:03d}", f"s{i % 7}")
    if i < 250 * 7:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        left = size
        while left:
            n = min(left, len(pool) - off)
            f.write(pool[off:off + n])
            off = (off + n) % len(pool)
            left -= n
PY
  echo "$FILES $BYTES" > "$DIR/.complete"
fi

nfiles=$(find "$DIR" -type f ! -name .complete | wc -l)
nbytes=$(du -sb --exclude=.complete "$DIR" | cut -f1)
echo "tree: $DIR: $nfiles files, $nbytes bytes (du); $(nproc) CPUs"
echo "warming the page cache ..." >&2
find "$DIR" -type f -print0 | xargs -0 cat > /dev/null

json=$(mktemp)
trap 'rm -f "$json"' EXIT
hyperfine --warmup 1 --runs "$RUNS" --export-json "$json" \
  -n vmledger "$BIN fingerprint tree $DIR > /dev/null" \
  -n "find|xargs sha256sum" "find $DIR -type f -print0 | xargs -0 sha256sum > /dev/null"

python3 - "$json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ours, peer = r["vmledger"]["mean"], r["find|xargs sha256sum"]["mean"]
ratio = peer / ours
print(f"vmledger fingerprint tree: {ours:.3f} s (min {r['vmledger']['min']:.3f})")
print(f"find | xargs sha256sum:    {peer:.3f} s (min {r['find|xargs sha256sum']['min']:.3f})")
print(f"ratio: vmledger is {ratio:.2f}x faster (target: at least 4x) -> {'PASS' if ratio >= 4 else 'FAIL'}")
sys.exit(0 if ratio >= 4 else 1)
PY
