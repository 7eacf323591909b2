#!/usr/bin/env bash
# Accuracy of the cross-check on a simulated fleet: every violation flagged with the right
# verdict, no false positive on legitimate behaviour, printed as confusion matrices.
#
#   benches/accuracy.sh [APPLIANCES] [DAYS] [SEED]     (default 10000 90 1)
#
# The fleet is generated once under target/bench-fleets/ and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; D=${2:-90}; S=${3:-1}
cargo build --release --quiet
BIN=target/release/vmledger
DIR=target/bench-fleets/accuracy-$N-$D-$S
if [ ! -f "$DIR/labels.json" ]; then
  rm -rf "$DIR"
  echo "generating $N appliances x $D days (seed $S) into $DIR ..." >&2
  "$BIN" simulate --instances "$N" --days "$D" --seed "$S" --out "$DIR" >&2
fi
set +e
/usr/bin/time -f "crosscheck: %e s wall, %U s user, %S s sys, %M KiB peak RSS" \
  "$BIN" crosscheck "$DIR/exports" --policy "$DIR/policy.json" --json --html "$DIR/report.html" \
  > "$DIR/report.json"
rc=$?
set -e
echo "crosscheck exit status: $rc (1 = violations found, as expected)"
"$BIN" simulate score --labels "$DIR/labels.json" "$DIR/report.json"
