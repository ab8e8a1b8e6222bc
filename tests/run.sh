#!/usr/bin/env bash
# The test command of sov (README: "Run the tests"). CI's .ci/run calls exactly this.
#
# Runs, in order: formatting and lint gates, a build of every binary (the end-to-end tests start
# the real sov-scheduler and sovctl processes), then every test of the workspace:
#   - pure core unit + property tests (scheduler/src/state),
#   - openraft's storage conformance suite on the redb stores,
#   - in-process clusters on real redb files and loopback gRPC (scheduler/tests/cluster.rs),
#   - real processes on loopback: kill -9, restart, dev cluster, backup and restore
#     (tests/tests/*.rs),
#   - real hosts: containers of deploy/compose.yaml on private Docker networks, with partitions
#     and node loss (tests/tests/containers.rs; SKIPPED where no Docker engine answers),
#   - the systemd units of deploy/systemd (systemd-analyze verify and security),
#   - then the fuzz targets of fuzz/ for 20 s each (fuzz/README.md).
# Needs the Rust toolchain: protoc is vendored, redb is pure Rust. The container suite also
# needs Docker Compose and `ps`, the unit checks systemd-analyze, the reviewer pages' browser test
# Chromium: on Debian, as root, this script installs whichever is missing.
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

step "test prerequisites: Docker, Compose, ps, systemd-analyze, Chromium"
missing=()
if docker info >/dev/null 2>&1; then
    echo "Docker engine $(docker info --format '{{.ServerVersion}}'): the container suite runs"
    docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null ||
        missing+=(docker-compose)
    # `docker top`, which the container tests use to look inside agents, runs ps.
    command -v ps >/dev/null || missing+=(procps)
else
    echo "no Docker engine reachable: the container suite will print SKIPPED and not run"
fi
command -v systemd-analyze >/dev/null || missing+=(systemd)
# libFuzzer (fuzz/run.sh) is C++.
command -v g++ >/dev/null || missing+=(g++)
# Headless Chromium renders the reviewer pages (tests/tests/reviewer_pages.rs: DOM and screenshot
# of the placement timeline).
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "missing: ${missing[*]} (sudo apt-get install -y ${missing[*]}); tests that need them fail or skip"
        if [[ " ${missing[*]} " == *" chromium "* ]]; then
            echo "without chromium the browser half of tests/tests/reviewer_pages.rs prints SKIPPED"
        fi
    fi
fi

step "cargo test --workspace"
cargo test --workspace

step "fuzz targets: spec requests, spec files, policy bundles, the history verifier (fuzz/run.sh, 20 s each)"
fuzz/run.sh 20

step "all checks passed in $((SECONDS - started)) s"
