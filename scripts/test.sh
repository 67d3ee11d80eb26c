#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, format, lints, unit and
# integration tests against real MariaDB servers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh

echo "--- cargo fmt --check"
cargo fmt --all -- --check
# The coordinator is built with its fail points (FAILPOINTS, used by the
# fault tests); one feature set for every step, so nothing builds twice.
echo "--- cargo clippy"
cargo clippy --workspace --all-targets --features lockstep-coordinator/failpoints -- -D warnings
echo "--- build binaries (the integration tests run them as processes)"
cargo build --workspace --bins --features lockstep-coordinator/failpoints
# The loop-mounted btrfs/XFS tests (tests/src/loopfs.rs) need root; CI runs
# as root. Elsewhere they skip with a line saying so.
if [ "$(id -u)" -eq 0 ]; then
  export LOCKSTEP_LOOPFS_TESTS=1
fi
echo "--- cargo test"
cargo test --workspace --features lockstep-coordinator/failpoints -- --test-threads=2
