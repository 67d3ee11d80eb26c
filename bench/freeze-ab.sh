#!/usr/bin/env bash
# The cluster freeze window of two builds in one run: the cluster benchmark
# (tests/tests/b10_cluster_bench.rs, freeze_window_under_write_load) against
# release binaries of BASE (a commit) and of the working tree, alternating
# A, B, A, B ... so both see the same machine.
#
#   bash bench/freeze-ab.sh                    # BASE=HEAD~1, 3 and 9 servers
#   BASE=2f76191 ROUNDS=2 BACKUPS=30 bash bench/freeze-ab.sh
#
# Environment: BASE [HEAD~1] ROUNDS [1] (A/B pairs) BACKUPS [30] SERVERS [3,9]
# WORK [/tmp/lockstep-ab] (the BASE checkout and both builds; kept for reuse).
# Prints the benchmark's RESULT and BREAKDOWN lines, each tagged with its build.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${BASE:-HEAD~1}
ROUNDS=${ROUNDS:-1}
export BACKUPS=${BACKUPS:-30}
export SERVERS=${SERVERS:-3,9}
WORK=${WORK:-/tmp/lockstep-ab}

bash "$REPO/scripts/setup-debian.sh"
base_rev=$(git -C "$REPO" rev-parse --short "$BASE")
mkdir -p "$WORK"
if [ ! -d "$WORK/src-$base_rev" ]; then
  git -C "$REPO" worktree add --detach "$WORK/src-$base_rev" "$base_rev" >/dev/null
fi
echo "--- release build of $base_rev (A) and of the working tree (B)"
# A target dir per build: the two trees' generated protocol code differs.
(cd "$WORK/src-$base_rev" && CARGO_TARGET_DIR="$WORK/target-a" cargo build --release --workspace --bins)
export CARGO_TARGET_DIR="$WORK/target-b"
(cd "$REPO" && cargo build --release --workspace --bins)
(cd "$REPO" && cargo test --release -p lockstep-tests --test b10_cluster_bench --no-run)
bin_a="$WORK/target-a/release"
bin_b="$WORK/target-b/release"

run() {
  local tag=$1 dir=$2
  (cd "$REPO" && LOCKSTEP_BIN_DIR="$dir" cargo test --release -p lockstep-tests \
    --test b10_cluster_bench -- --ignored --nocapture --test-threads=1 \
    freeze_window_under_write_load 2>&1) |
    grep -E '^(RESULT|BREAKDOWN)' | sed "s/^/$tag /"
}
for _ in $(seq "$ROUNDS"); do
  run "A($base_rev)" "$bin_a"
  run "B(working tree)" "$bin_b"
done
