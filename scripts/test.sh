#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, format, lints, unit and
# integration tests against real MariaDB servers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh

echo "--- cargo fmt --check"
cargo fmt --all -- --check
echo "--- cargo clippy"
cargo clippy --workspace --all-targets --features lockstep-coordinator/failpoints -- -D warnings
echo "--- build binaries (the integration tests run them as processes)"
cargo build --workspace --bins --features lockstep-coordinator/failpoints
echo "--- cargo test"
cargo test --workspace -- --test-threads=2
