#!/usr/bin/env bash
# One call on the GPU machine for both things a session has it for: a training run of the default
# model (scripts/gpu_train.sh) and the GPU check (scripts/gpu_check.sh). The gpu tests and
# compute-sanitizer run beside the training (they need little of the GPU); the benchmarks run
# once the training has ended, so that their timings have the GPU to themselves. Reads what
# scripts/gpu_prepare.sh put in CARRY (prebuilt binaries, their libraries, the training bundle).
#
#   scripts/gpu_session.sh OUT --carry DIR [--train-minutes 6] [--seconds 570]
#                          [--no-train] [-- more gpu_train.sh arguments]
#
# --seconds: the whole call's budget; the benchmarks get what the training and the tests leave of
# it, less 20 s to pack. OUT receives at most 8 files (what the device tool brings back): the
# trained model as tar parts of <= 15 MiB with their index (scripts/split_join.py join OUT DIR
# gives the folder back), and results.tar.gz: the check's status, logs and benchmark JSON, and the
# training's log and train_log.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_session.sh OUT --carry DIR [--train-minutes M] [--seconds S]}
shift
carry="" minutes=6 total=570 train=1
extra=()
while (($#)); do
  case "$1" in
    --carry) carry=$(cd "$2" && pwd); shift 2 ;;
    --train-minutes) minutes=$2; shift 2 ;;
    --seconds) total=$2; shift 2 ;;
    --no-train) train=0; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu_session.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n $carry ]] || { echo "gpu_session.sh: --carry DIR is required (scripts/gpu_prepare.sh makes it)" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d /tmp/hyco-gpu-session.XXXX)
mkdir -p "$work/check" "$work/transfer"
t0=$SECONDS
say() { echo "[gpu_session $((SECONDS - t0))s] $*"; }
export PYTHONUNBUFFERED=1

train_pid=""
if ((train)) && [[ -f $carry/bundle/train.jsonl.xz ]]; then
  say "training for $minutes minutes in the background"
  bash scripts/gpu_train.sh --bundle "$carry/bundle" --results "$work/train" --minutes "$minutes" \
    --transfer "$work/transfer" --model-only "${extra[@]}" > "$work/train.out" 2>&1 &
  train_pid=$!
else
  say "no training (--no-train, or no bundle in $carry)"
fi

# The tests beside the training. Each compute-sanitizer stage is bounded so that the tests are
# done before the training is.
say "gpu tests"
# With a training run they get its minutes (they should be done when it is); without, all but
# 200 s, which the benchmarks keep.
tests_seconds=$((total - 200))
[[ -n $train_pid ]] && tests_seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 20 }')
SANITIZER_SECONDS=${SANITIZER_SECONDS:-100} CHECK_SECONDS=$tests_seconds \
  bash scripts/gpu_check.sh "$work/check" --no-bench --prebuilt "$carry"
say "gpu tests done"

if [[ -n $train_pid ]]; then
  while kill -0 "$train_pid" 2>/dev/null; do
    sleep 5
    ((SECONDS - t0 > total - 60)) && { say "training past its time: stopping it"; kill -TERM "$train_pid"; break; }
  done
  wait "$train_pid"
  say "training ended (exit $?): $(tail -n 1 "$work/train.out")"
fi

left=$((total - 20 - (SECONDS - t0)))
say "benchmarks, $left s"
mv "$work/check/status.txt" "$work/check/status-tests.txt"
CHECK_SECONDS=$left CODELLAMA_SECONDS=${CODELLAMA_SECONDS:-240} \
  bash scripts/gpu_check.sh "$work/check" --bench-only --prebuilt "$carry"
say "benchmarks done"

# What comes back: the model parts (the index last), and one tar of everything else.
cp "$work/transfer"/model.* "$out/" 2>/dev/null
mv "$work/transfer/train_log.jsonl" "$work/transfer/gpu_train.log" "$work/check/" 2>/dev/null
cp "$work/train.out" "$work/check/train.out" 2>/dev/null
for f in "$work"/check/*.log "$work"/check/*.out; do  # a sanitizer's report can run to megabytes
  [[ -f $f ]] && (($(stat -c %s "$f") > 2097152)) && { head -c 1048576 "$f"; echo; echo "[... cut ...]"; tail -c 1048576 "$f"; } > "$f.cut" && mv "$f.cut" "$f"
done
tar czf "$out/results.tar.gz" -C "$work" check
say "in $out: $(ls "$out" | tr '\n' ' ')($(du -sh "$out" | cut -f1))"
cat "$work/check/status-tests.txt" "$work/check/status.txt" 2>/dev/null
exit 0
