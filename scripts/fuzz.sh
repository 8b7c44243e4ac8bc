#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang 14, ASan + UBSan, into build-fuzz/) when needed and
# runs each of them, or one, for a given number of seconds with its seed corpus (fuzz/corpus/<t>,
# read only), its dictionary (fuzz/<t>.dict, if any) and a working corpus outside the repository.
# Prints per target the seconds run, the executions and whether it crashed; exits 1 when any
# target crashed, keeping the crash file (a target stops at its first crash).
#
#   scripts/fuzz.sh                      every target, 60 s each
#   scripts/fuzz.sh all 600              every target, 10 minutes each (one CPU core at a time)
#   scripts/fuzz.sh fuzz_requests 120    one target
#   build-fuzz/fuzz/fuzz_requests CRASH  replays a crash file (prints the sanitizer's report)
#
# Environment: FUZZ_WORK (default /tmp/hyco-fuzz) holds corpus/<t>/ and crashes/<t>/;
# BUILD_DIR (default build-fuzz); FUZZ_BUILD_JOBS (default nproc) compile jobs; FUZZ_NICE (default
# 0) niceness of builds and runs; FUZZ_ARGS extra libFuzzer flags (e.g. "-max_len=8192").
# Needs clang-14 and libclang-rt-14-dev: scripts/setup.sh --with-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(fuzz_requests fuzz_text_stream fuzz_tokenizer fuzz_spm_proto fuzz_model_config fuzz_safetensors)
which=${1:-all}
seconds=${2:-60}
build_dir=${BUILD_DIR:-build-fuzz}
work=${FUZZ_WORK:-/tmp/hyco-fuzz}
nice_cmd=(nice -n "${FUZZ_NICE:-0}")

if [[ "$which" != all ]]; then
  [[ " ${targets[*]} " == *" $which "* ]] || { echo "fuzz.sh: unknown target '$which' (${targets[*]})" >&2; exit 2; }
  targets=("$which")
fi
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: seconds must be a whole number, got '$seconds'" >&2; exit 2; }

# ---- build (incremental; only the fuzz targets and the libraries they need) --------------------
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  command -v clang++-14 >/dev/null || { echo "fuzz.sh: clang++-14 not found (scripts/setup.sh --with-fuzz)" >&2; exit 2; }
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  "${nice_cmd[@]}" cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHYCO_FUZZ=ON -DHYCO_CUDA=OFF -DHYCO_TESTS=OFF
fi
"${nice_cmd[@]}" cmake --build "$build_dir" -j "${FUZZ_BUILD_JOBS:-$(nproc)}" --target "${targets[@]}"

# ---- run -----------------------------------------------------------------------------------------
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
read -r -a extra <<<"${FUZZ_ARGS:-}"
status=0
summary=()
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t" crashes="$work/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  log="$work/$t.log"
  echo "== $t: ${seconds} s (log $log)"
  dict=()
  [[ -f "fuzz/$t.dict" ]] && dict=(-dict="fuzz/$t.dict")
  start=$(date +%s)
  rc=0
  # -timeout: one input running this long is a hang, reported like a crash.
  "${nice_cmd[@]}" "$build_dir/fuzz/$t" -max_total_time="$seconds" -timeout=25 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "${dict[@]}" "${extra[@]}" "$corpus" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  took=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  if ((rc != 0)); then
    status=1
    line="$t: ${took} s, ${execs:-?} executions, CRASHED (exit $rc): ${artifact:-see $log}"
    grep -m1 -E "ERROR: |runtime error|fuzz invariant failed|uncaught exception|terminate called" "$log" || tail -5 "$log"
  else
    line="$t: ${took} s, ${execs:-?} executions, no crash"
  fi
  echo "$line"
  summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
