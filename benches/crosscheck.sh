#!/usr/bin/env bash
# Scale of the cross-check (release binary): entries judged per second at 1M, 3M and 10M
# entries (100 entries per instance, 100,000 instances at 10M), peak RSS with GNU time,
# and `--full` (every signature checked) as a ratio of this machine's bare Ed25519 verify
# rate measured in the same run (ring, one core, `cargo bench --bench ledger`'s peer).
#
#   benches/crosscheck.sh [MAX_MILLIONS]    (default 10; 1, 3 and 10 are run when <= MAX)
#   SIZES="1 3 10" FLEET=DIR benches/crosscheck.sh   (judge the first 1, 3, 10 directories
#                                                    of an existing simulated fleet)
#
# The fleet (about 110 distinct entries per appliance over 90 days, ~1.1 KB each on disk)
# is generated once under target/bench-fleets/scale and reused; subsets are its first
# directories of 1,000 appliances (~110,000 entries) each. Generation refuses to start
# when the disk lacks the space (10M entries need ~11 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=${1:-10}
cargo build --release --quiet
BIN=target/release/vmledger
DIR=${FLEET:-target/bench-fleets/scale}
APPL=$(( MAX * 1000000 / 100 ))
need_kb=$(( MAX * 1100000 ))
free_kb=$(df -Pk "$(dirname "$DIR")" 2>/dev/null | awk 'NR==2 {print $4}' || echo 0)
if [ -z "${FLEET:-}" ] && [ ! -f "$DIR/labels.json" ] && [ "${free_kb:-0}" -lt "$need_kb" ]; then
  echo "benches/crosscheck.sh: a ${MAX}M-entry fleet needs ~$((need_kb / 1048576)) GiB, the disk has $((free_kb / 1048576)) GiB free; run with a smaller MAX or FLEET=DIR" >&2
  exit 2
fi
if [ -z "${FLEET:-}" ] && { [ ! -f "$DIR/labels.json" ] || [ "$(jq -r .appliances "$DIR/labels.json" 2>/dev/null || echo 0)" -lt "$APPL" ]; }; then
  rm -rf "$DIR"
  echo "generating $APPL appliances x 90 days into $DIR (once) ..." >&2
  /usr/bin/time -f "simulate: %e s wall" "$BIN" simulate --instances "$APPL" --days 90 --seed 42 --out "$DIR" >&2
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run() { # name, dirs...
  local name=$1; shift
  local t; t=$(mktemp)
  /usr/bin/time -v "$BIN" crosscheck "$@" --json > "$t.json" 2> "$t.time" || true
  local entries wall user sys rss
  entries=$(tail -c 2000 "$t.json" | grep -o '"entries":[0-9]*' | tail -1 | cut -d: -f2)
  wall=$(grep "Elapsed (wall" "$t.time" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  user=$(grep "User time" "$t.time" | awk '{print $NF}')
  sys=$(grep "System time" "$t.time" | awk '{print $NF}')
  rss=$(grep "Maximum resident" "$t.time" | awk '{print $NF}')
  awk -v n="$name" -v e="$entries" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" 'BEGIN {
    printf "%-14s %10d entries  %7.1f s wall  %7.1f s CPU  %9.0f entries/s wall  %9.0f entries/CPU-s  peak RSS %d MiB\n",
      n, e, w, u+s, e/w, e/(u+s), r/1024 }'
  awk -v e="$entries" -v w="$wall" 'BEGIN { printf "%d", e/w }' > /tmp/crosscheck-last-rate
  rm -f "$t" "$t.json" "$t.time"
}
dirs() { local n=$1; for i in $(seq 0 $((n - 1))); do printf "%s/exports/%04d " "$DIR" "$i"; done; }
if [ -n "${SIZES:-}" ]; then
  for n in $SIZES; do run "${n} dirs" $(dirs "$n"); done
  FULL_DIRS=$(echo "$SIZES" | awk '{print $NF}')
else
  for m in 1 3 10; do
    [ "$m" -le "$MAX" ] || continue
    run "${m}M" $(dirs $((m * 10)))
  done
  FULL_DIRS=10
fi
# --full against bare Ed25519 verification, same run, on the 1M subset.
ed=$(cargo bench --quiet --bench verify_rate 2>/dev/null | grep -o 'rate: [0-9]*' | cut -d' ' -f2)
run "--full" --full $(dirs "$FULL_DIRS")
full=$(cat /tmp/crosscheck-last-rate 2>/dev/null || echo 0)
awk -v ed="$ed" -v f="$full" 'BEGIN { printf "bare ring Ed25519 verify, 1 core, same run: %d/s; --full judged %d entries/s wall = %.2fx the single-core verify rate\n", ed, f, f/ed }'

