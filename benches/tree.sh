#!/usr/bin/env bash
# Benchmark: `vmledger fingerprint tree` against `find DIR -type f -print0 | xargs -0
# sha256sum` over a generated tree of 50,000 files holding 2 GiB, page cache warm, both
# measured side by side in this run (interleaved rounds, GNU time). Prints both times and
# the ratio, and exits 1 when vmledger is not at least 4x faster.
#
# Usage: benches/tree.sh [DIR]   (default: target/bench/tree; generated once, reused)
# Env:   FILES (50000), BYTES (2147483648), RUNS (5)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "GNU time is not installed (apt-get install time)" >&2; exit 2; }

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

# Side by side, interleaved: each round times vmledger then the peer, so load from other
# processes on a shared machine falls on both alike. Wall time and CPU time (user+sys)
# are recorded for each; the verdict uses the median wall times.
round() {
  local label=$1; shift
  /usr/bin/time -f "$label %e %U %S" -a -o "$times" "$@" > /dev/null
}
times=$(mktemp)
trap 'rm -f "$times"' EXIT
echo "warm-up round ..." >&2
"$BIN" fingerprint tree "$DIR" > /dev/null
for r in $(seq 1 "$RUNS"); do
  echo "round $r/$RUNS ..." >&2
  round vmledger "$BIN" fingerprint tree "$DIR"
  round peer sh -c "find '$DIR' -type f -print0 | xargs -0 sha256sum"
done

python3 - "$times" <<'PY'
import statistics, sys
rows = {"vmledger": [], "peer": []}
for line in open(sys.argv[1]):
    label, wall, user, sys_ = line.split()
    rows[label].append((float(wall), float(user) + float(sys_)))
def med(label, i):
    return statistics.median(r[i] for r in rows[label])
ow, pw = med("vmledger", 0), med("peer", 0)
oc, pc = med("vmledger", 1), med("peer", 1)
for (a, b), n in zip(zip(rows["vmledger"], rows["peer"]), range(1, 99)):
    print(f"round {n}: vmledger {a[0]:.2f} s wall / {a[1]:.2f} s CPU;  find|xargs sha256sum {b[0]:.2f} s wall / {b[1]:.2f} s CPU;  ratio {b[0]/a[0]:.2f}x")
print(f"vmledger fingerprint tree: median {ow:.3f} s wall, {oc:.2f} s CPU (user+sys)")
print(f"find | xargs sha256sum:    median {pw:.3f} s wall, {pc:.2f} s CPU (user+sys)")
print(f"CPU-time ratio: {pc/oc:.2f}x")
ratio = pw / ow
print(f"ratio: vmledger is {ratio:.2f}x faster in wall time (target: at least 4x) -> {'PASS' if ratio >= 4 else 'FAIL'}")
sys.exit(0 if ratio >= 4 else 1)
PY
