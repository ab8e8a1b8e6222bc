#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on stable Rust: builds them with libFuzzer's
# coverage instrumentation (what cargo-fuzz does, minus the sanitizer, which needs nightly),
# seeds the corpora from the repository, and fails on the first crash, leaving the input in
# fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh [SECONDS]        # per target; default 20 (the test command's budget)
#   fuzz/run.sh 3600             # a longer hunt; or, with nightly: cargo fuzz run TARGET
#
# Runs of up to 60 s a target build the `quick` profile (nothing optimized but libFuzzer: the
# build is most of such a run), longer ones `release` (optimized: more executions a second);
# SOV_FUZZ_PROFILE=release|quick chooses.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
if [ -n "${SOV_FUZZ_PROFILE:-}" ]; then
    profile="$SOV_FUZZ_PROFILE"
elif [ "$seconds" -le 60 ]; then
    profile=quick
else
    profile=release
fi
case "$profile" in
release | quick) ;;
*)
    echo "SOV_FUZZ_PROFILE must be release or quick, not '$profile'" >&2
    exit 2
    ;;
esac
targets=(deployment_spec spec_file policy_bundle history_verifier)

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps these flags off build scripts and proc macros (as cargo-fuzz does).
host="$(rustc -vV | sed -n 's/^host: //p')"
echo "building the fuzz targets (profile $profile)"
cargo build --profile "$profile" --bins --quiet --target "$host"
bin="target/$host/$profile"

# Seeds: the shipped policy bundle (files joined name\0content\0...), the example spec files
# for sovctl's reader (the API takes protobuf, so the request target starts from nothing and
# the decoder's structure), and a few evidence lines.
mkdir -p corpus/policy_bundle corpus/deployment_spec corpus/spec_file corpus/history_verifier
cp -n ../deploy/examples/*.toml ../deploy/docker/tiny-echo.toml corpus/spec_file/ 2>/dev/null || true
seed=corpus/policy_bundle/shipped
if [ ! -f "$seed" ]; then
    for f in ../deploy/policies/*.cedar ../deploy/policies/*.cedarschema ../deploy/policies/*.json; do
        printf '%s\0' "$(basename "$f")"
        cat "$f"
        printf '\0'
    done > "$seed"
fi
printf '{"type":"event","seq":0,"leaf":"00","event":{}}\n{"type":"seal","root":"00"}\n' \
    > corpus/history_verifier/lines

for t in "${targets[@]}"; do
    mkdir -p "artifacts/$t"
    echo "fuzzing $t for ${seconds}s"
    "$bin/$t" "corpus/$t" -max_total_time="$seconds" -max_len=65536 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)' || true
    if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/timeout-*" >/dev/null; then
        echo "fuzz target $t failed: see fuzz/artifacts/$t/ (reproduce: fuzz/$bin/$t FILE)" >&2
        exit 1
    fi
done
echo "fuzz targets ran clean for ${seconds}s each"
