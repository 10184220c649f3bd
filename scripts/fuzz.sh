#!/usr/bin/env bash
# Builds the cargo-fuzz (libFuzzer) targets in fuzz/ and runs each for a while.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGETs default to all of fuzz/fuzz_targets/.
# Each target starts from its committed corpus, fuzz/corpus/<target>/, copied to a
# temporary directory so the run does not grow the repository. Prints per target
# the executions, exec/s, coverage before → after and new corpus units, then the
# total executions. Exits non-zero if any target crashed (panic, sanitizer report,
# timeout, out-of-memory), naming the reproducer it wrote under fuzz/artifacts/.
#
# Environment:
#   FUZZ_KEEP_CORPUS=1   merge the inputs that found new coverage back into
#                        fuzz/corpus/<target>/ (libFuzzer -merge=1: only new
#                        coverage is added, so the committed corpus stays small)
#   FUZZ_SANITIZER=X     address (default), none, leak, memory, thread
#   FUZZ_TIMEOUT=S       seconds before one input counts as a hang (default 25)
#   FUZZ_RSS_MB=N        memory limit per target process (default 2048)
#   FUZZ_ARGS="..."      extra libFuzzer flags (e.g. "-max_len=65536 -jobs=2")
#   FUZZ_NO_BUILD=1      skip the build (binaries must exist)
#
# Reproduce a crash:  fuzz/target/<triple>/release/<target> <artifact>
# (or: cargo +nightly fuzz run <target> <artifact>).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
shift || true

all_targets=()
for f in fuzz/fuzz_targets/*.rs; do
    all_targets+=("$(basename "$f" .rs)")
done
if [ "$#" -gt 0 ]; then
    targets=("$@")
    for t in "${targets[@]}"; do
        if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
            echo "unknown target '$t' (have: ${all_targets[*]})" >&2
            exit 2
        fi
    done
else
    targets=("${all_targets[@]}")
fi

sanitizer="${FUZZ_SANITIZER:-address}"
timeout_s="${FUZZ_TIMEOUT:-25}"
rss_mb="${FUZZ_RSS_MB:-2048}"
read -r -a extra <<<"${FUZZ_ARGS:-}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "a nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bindir="fuzz/target/$triple/release"
# The targets fuzz fieldcrypt's Rust code. The `cc` crate instruments C built
# for a -Zsanitizer=address build too (zstd-sys), but librdkafka's own
# configure then links a zstd test program without the sanitizer runtime, the
# check fails and `--enable-zstd` aborts the build. The C libraries are not what
# is fuzzed: build them uninstrumented (a CFLAGS the caller sets wins).
export CFLAGS="${CFLAGS:--fno-sanitize=address}"
if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
    echo "== building fuzz targets (nightly, sanitizer: $sanitizer)"
    if [ "${#targets[@]}" -eq "${#all_targets[@]}" ]; then
        cargo +nightly fuzz build -s "$sanitizer"
    else
        for t in "${targets[@]}"; do
            cargo +nightly fuzz build -s "$sanitizer" "$t"
        done
    fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fieldcrypt-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

total=0
failed=0
summary=()
printf '\n%-18s %12s %9s %27s %9s  %s\n' target executions exec/s "cov (init→end)" new_units result
for t in "${targets[@]}"; do
    bin="$bindir/$t"
    if [ ! -x "$bin" ]; then
        echo "$bin: not built" >&2
        exit 2
    fi
    corpus="$work/corpus-$t"
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -R "fuzz/corpus/$t/." "$corpus/"
    fi
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$artifacts"
    log="$work/$t.log"
    set +e
    "$bin" "$corpus" \
        -max_total_time="$secs" \
        -rss_limit_mb="$rss_mb" \
        -timeout="$timeout_s" \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        ${extra[@]+"${extra[@]}"} >"$log" 2>&1
    rc=$?
    set -e

    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    if [ -z "$execs" ]; then
        # No final stats (e.g. killed): the last status line's unit count.
        execs="$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)"
    fi
    execs="${execs:-0}"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    new_units="$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)"
    cov0="$(sed -nE 's/^#[0-9]+[[:space:]]+INITED cov: ([0-9]+) ft: ([0-9]+).*/\1\/\2/p' "$log" | tail -1)"
    cov1="$(grep -E '^#[0-9]+[[:space:]]+[A-Z]+ +cov: ' "$log" | tail -1 |
        sed -nE 's/.* cov: ([0-9]+) ft: ([0-9]+).*/\1\/\2/p' || true)"
    total=$((total + execs))

    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | grep -v '/slow-unit-' | tail -1 || true)"
    slow="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | grep -c '/slow-unit-' || true)"
    if [ "$rc" -ne 0 ]; then
        failed=1
        kind="$(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|ERROR: AddressSanitizer: [a-z-]+|panicked at [^:]+:[0-9]+|out-of-memory|timeout' "$log" || true)"
        keep="$artifacts/fuzz-$(date +%Y%m%d-%H%M%S).log"
        cp "$log" "$keep"
        result="CRASH (${kind:-exit $rc}): ${artifact:-no artifact written} (log: $keep)"
    else
        result="ok"
        if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
            mkdir -p "fuzz/corpus/$t"
            before="$(ls "fuzz/corpus/$t" | wc -l)"
            "$bin" -merge=1 -rss_limit_mb="$rss_mb" -timeout="$timeout_s" \
                "fuzz/corpus/$t" "$corpus" >"$work/$t.merge.log" 2>&1 || {
                echo "$t: corpus merge failed (see below)" >&2
                tail -20 "$work/$t.merge.log" >&2
                failed=1
            }
            after="$(ls "fuzz/corpus/$t" | wc -l)"
            result="ok, corpus $before → $after files"
        fi
    fi
    if [ "${slow:-0}" -gt 0 ]; then
        result="$result; $slow slow unit(s) in $artifacts/slow-unit-*"
    fi
    printf '%-18s %12s %9s %27s %9s  %s\n' "$t" "$execs" "${rate:-?}" \
        "${cov0:-?} → ${cov1:-?}" "${new_units:-?}" "$result"
    summary+=("$t $execs")
done

echo
echo "cov is libFuzzer's 'cov/ft' (edges / features)."
echo "total executions: $total"
if [ "$failed" -ne 0 ]; then
    echo "FAILED: at least one target crashed; reproducers and logs are under fuzz/artifacts/" >&2
    exit 1
fi
