#!/usr/bin/env bash
# Licensing service throughput benchmark (issue: "Speed").
#
# Builds the release binary, creates a service database with N serials, starts
# `vmledger serve` on loopback (durable commits: WAL + synchronous=FULL, group commit),
# and drives it with `vmledger bench checkin`: N simulated instances with real Ed25519
# keys and signed hash-chained entries, open loop at RATE check-ins/s for DURATION s.
# Prints throughput, latency percentiles, the number of acknowledged entries missing from
# the database (must be 0), and the ratio to this machine's single-core Ed25519 verify
# rate measured in the same run (a check-in costs two verifications on the server: the
# request and its new entry, plus one signature for the receipt).
#
# Usage: benches/service.sh [INSTANCES] [RATE] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
RATE=${2:-3000}
DURATION=${3:-20}

cargo build --release --quiet
BIN=target/release/vmledger
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
export HOME=$WORK
DB=$WORK/service.sqlite

"$BIN" service init --db "$DB" >/dev/null 2>&1
KEY=$("$BIN" service key --db "$DB")
{
  echo "serial,ends,contact,activation_code"
  for ((i = 0; i < N; i++)); do printf 'BENCH-%05d,2099-12-31,,BENCH-CODE\n' "$i"; done
} >"$WORK/serials.csv"
"$BIN" admin sla import --db "$DB" "$WORK/serials.csv" >/dev/null

"$BIN" serve --db "$DB" --listen 127.0.0.1:0 --no-alerts >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q 'serving on' "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/serve.out")

echo "== vmledger serve on $URL: $N instances, offered $RATE check-ins/s for $DURATION s (open loop)"
"$BIN" bench checkin --url "$URL" --instances "$N" --rate "$RATE" --duration "$DURATION" \
  --activation-code BENCH-CODE --service-key "$KEY" --db "$DB" --server-pid "$SERVER_PID" | tee "$WORK/open.txt"

echo
echo "== closed loop (as fast as 64 connections go) for 10 s: the ceiling"
"$BIN" bench checkin --url "$URL" --instances "$N" --rate 0 --duration 10 --seed 2 \
  --serial-prefix BENCH- --activation-code BENCH-CODE --service-key "$KEY" --db "$DB" --server-pid "$SERVER_PID" 2>&1 | tee "$WORK/closed.txt" || true

echo
echo "== durable commits: $(curl -s "$URL/metrics" | awk '/^vmledger_commit_batch_size_(sum|count)/ {v[$1]=$2} END {if (v["vmledger_commit_batch_size_count"]>0) printf "%d commits, %.1f check-ins per commit (group commit)", v["vmledger_commit_batch_size_count"], v["vmledger_commit_batch_size_sum"]/v["vmledger_commit_batch_size_count"]}')"
echo "== database: $(sqlite3 "$DB" 'PRAGMA journal_mode; PRAGMA synchronous;' | tr '\n' ' ')(journal_mode, synchronous=2 is FULL in the service's connections; sqlite3 shows its own default)"
