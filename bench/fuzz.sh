#!/usr/bin/env bash
# Runs every cargo-fuzz target of udpreach for a set time and prints, per
# target, the executions libFuzzer made and whether it found a crash.
#
#   bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer builds need a
# nightly compiler for -Zsanitizer; on a stable toolchain RUSTC_BOOTSTRAP=1
# lets stable accept the nightly flags (set here unless already set).
# Crashing inputs land in fuzz/artifacts/TARGET/; corpora in fuzz/corpus/TARGET/.
set -euo pipefail

secs="${1:-60}"
shift || true
cd "$(dirname "$0")/../fuzz"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
# Seeds: a few valid inputs so the fuzzer starts from the formats, not from nothing.
seed() {
    local t="$1" name="$2"
    mkdir -p "corpus/$t"
    cat > "corpus/$t/$name"
}
printf 'UDPR\001\001\000\000%056d' 0 | seed probe_decode request
printf '5000,6000,7000-8000' | seed portspec_parse seed-example
printf '1-65535' | seed portspec_parse all
printf '{"proto":"udpping","server":"198.18.0.2","port":5000,"available":false}' | seed legacy_decode seed-object
body='{"type":"hello","version":1,"capabilities":["ports"],"software":"x","nonce":"00"}'
{ printf 'UDPREACH'; printf "\\x00\\x00\\x00\\x$(printf %02x ${#body})"; printf '%s' "$body"; } | seed control_decode hello
{ printf "\\x00\\x00\\x00\\x$(printf %02x ${#body})"; printf '%s' "$body"; } | seed control_decode hello-frame
printf 'UDPR\001\001\000\001%072d' 0 | seed auth_verify flagged
obj='{"proto":"udpping","server":"198.18.0.2","port":5000,"available":false}'
{ printf '\x3f%s\x8f%s' "${obj:0:63}" "${obj:63}"; } | seed legacy_session two-chunks
hs='{"type":"hello","version":1,"capabilities":[],"software":"x"}'
{ printf '\x00\x00\x40'; printf "\\x00\\x00\\x00\\x$(printf %02x ${#hs})"; printf '%s' "$hs"; printf '\xc0'; } | seed handshake hello-admit

status=0
printf '%-16s %14s %10s  %s\n' target executions exec/s result
for t in "${targets[@]}"; do
    log="$(mktemp)"
    # -print_final_stats: libFuzzer's own count of executions at the end.
    if cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        result="no crash"
    else
        result="CRASH or build failure: see fuzz/artifacts/$t and $log"
        status=1
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    execs="${execs:-0}"
    printf '%-16s %14s %10s  %s\n' "$t" "$execs" "$((execs / (secs > 0 ? secs : 1)))" "$result"
    [ "$status" -ne 0 ] || rm -f "$log"
done
exit "$status"
