#!/usr/bin/env bash
# Sinks benchmark: backup transfer to a media agent's disk pool (gRPC on
# loopback) against the same dump written to the agent's own --sink-dir,
# mariadb-dump of the same data as the peer, and the peak RSS of the source
# agent and of the media agent. See tests/tests/b20_sinks_bench.rs.
#
#   bash bench/sinks.sh                       # 4M rows, 7 rounds, about 3 min after the build
#   ROWS=200000 ROUNDS=1 bash bench/sinks.sh  # quick check of the script
#
# Environment: ROWS [4000000] rows of the one table; ROUNDS [7] rounds of
# (host-local, pool, mariadb-dump), the sink order alternating per round,
# after one warm-up backup to each sink. POOL_ONLY=1: backups to the pool
# only (a long series for the source agent's memory: POOL_ONLY=1 ROUNDS=25).
#
# Builds the release binaries (nice'd) and runs the ignored bench test
# against them; the harness starts and stops (by PID) the server, the
# coordinator and both agents, and removes their temp dirs. Prints the
# markdown of the BENCHMARKS.md section "Sinks" to stdout; the full log
# goes to $LOG [/tmp/lockstep-sinks-bench.log].
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export ROWS=${ROWS:-4000000}
export ROUNDS=${ROUNDS:-7}
LOG=${LOG:-/tmp/lockstep-sinks-bench.log}
command -v mariadb-dump >/dev/null || { echo "mariadb-dump not found (apt-get install mariadb-client)" >&2; exit 1; }

echo "building release binaries" >&2
nice -n 5 cargo build --release -q --workspace --bins
export LOCKSTEP_BIN_DIR=$REPO/target/release

echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "lockstep at commit $(git rev-parse --short HEAD)$( [[ -n $(git status --porcelain -- node-agent coordinator proto) ]] && echo ' (with uncommitted changes)'); $(mariadbd --version | sed 's/^.*Ver /MariaDB /')"
start=$(date +%s)
cargo test -q --workspace --features lockstep-coordinator/failpoints --test b20_sinks_bench \
  -- --ignored --exact transfer_to_media_agent_against_host_local --nocapture --test-threads=1 \
  >"$LOG" 2>&1 || { tail -40 "$LOG" >&2; echo "bench failed; log: $LOG" >&2; exit 1; }
sed -n 's/^BENCH //p' "$LOG"
echo
echo "whole run $(( $(date +%s) - start )) s (build excluded); load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
