#!/usr/bin/env bash
# The test command of sov (README: "Run the tests"). CI's .ci/run calls exactly this.
#
# Runs, in order: formatting and lint gates, a build of every binary (the end-to-end tests start
# the real sov-scheduler and sovctl processes), then every test of the workspace:
#   - pure core unit + property tests (scheduler/src/state),
#   - openraft's storage conformance suite on the redb stores,
#   - in-process clusters on real redb files and loopback gRPC (scheduler/tests/cluster.rs),
#   - real processes on loopback: kill -9, restart, dev cluster (tests/tests/*.rs).
# Needs only the Rust toolchain: protoc is vendored, redb is pure Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace"
cargo test --workspace

step "all checks passed in $((SECONDS - started)) s"
