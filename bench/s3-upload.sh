#!/usr/bin/env bash
# S3 upload benchmark: the same file of MIB MiB [256] uploaded to a local
# moto server (127.0.0.1, started and stopped by PID by the test harness)
# through lockstep's S3Store writer and through `aws s3 cp`.
#
#   bash bench/s3-upload.sh            # 256 MiB
#   MIB=512 bash bench/s3-upload.sh
#
# Needs moto and awscli in /opt/lockstep-moto (scripts/setup-debian.sh).
# Prints one markdown table row per uploader (the BENCHMARKS.md format).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export LOCKSTEP_S3_BENCH_MIB=${MIB:-256}
echo "| uploader | size | time | rate |"
echo "|---|---|---|---|"
cargo test -q --workspace --features lockstep-coordinator/failpoints --test t70_s3 \
  -- --ignored --exact bench_s3_upload --nocapture --test-threads=1 2>&1 \
  | grep '^| '
