#!/usr/bin/env bash
# The cluster freeze window with mutual TLS against plaintext, in one run
# (issue 9): tests/tests/b30_tls_bench.rs against release binaries of the
# working tree. For each size a plaintext and a TLS cluster are both up and
# take their backups in alternating blocks, so machine noise hits both.
#
#   bash bench/tls.sh                        # 3 and 9 servers, 50 backups each
#   BACKUPS=30 SERVERS=9 ROUNDS=2 bash bench/tls.sh
#
# Environment: BACKUPS [50] (per cluster) BLOCK [5] (backups per turn)
# SERVERS [3,9] ROUNDS [1] (whole runs). Prints the benchmark's RESULT,
# BREAKDOWN, BACKUP, RATIO, CONNECT and CLI lines, and the load average and
# other busy processes before and after, for the notes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-1}
export BACKUPS=${BACKUPS:-50}
export BLOCK=${BLOCK:-5}
export SERVERS=${SERVERS:-3,9}

bash "$REPO/scripts/setup-debian.sh"
cd "$REPO"
echo "--- release build"
cargo build --release --workspace --bins
cargo test --release -p lockstep-tests --test b30_tls_bench --no-run
export LOCKSTEP_BIN_DIR="$REPO/target/release"

busy() {
  echo "--- $1: $(uptime)"
  ps -eo pcpu,comm --sort=-pcpu | awk 'NR > 1 && $1 >= 5 { print "    " $0 }' | head -5
}
for round in $(seq "$ROUNDS"); do
  busy "before run $round"
  cargo test --release -p lockstep-tests --test b30_tls_bench -- \
    --ignored --nocapture --test-threads=1 2>&1 |
    grep --line-buffered -E '^(RESULT|BREAKDOWN|BACKUP|RATIO|CONNECT|CLI)|did not complete'
  busy "after run $round"
done
