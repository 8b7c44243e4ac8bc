#!/usr/bin/env bash
# One command for a training run on the GPU machine (no network, nothing to install: it uses the
# PyTorch 2.x, numpy and sentencepiece found there): train scripts/train.py for --minutes on the
# bundle made by scripts/pack_corpus.sh, export the model, and leave under --results:
#   model/                 the exported model (bf16 shards of <= 16 MiB, config, tokenizer,
#                          loss.png, MODEL_CARD.md)
#   checkpoint_parts/      the checkpoint (weights + AdamW state, f32) as tar parts of <= 15 MiB
#                          (scripts/split_join.py join checkpoint_parts OUT gives it back)
#   run/                   train.py's output (train_log.jsonl, checkpoint/, token cache)
#   gpu_train.log          everything printed
# With --transfer DIR it also puts what fits the way back from the GPU machine (8 files of at
# most 16 MiB) into DIR: model.tar.NNN + model.parts.json (the model folder, split),
# train_log.jsonl and gpu_train.log.
#
#   bash scripts/gpu_train.sh --bundle BUNDLE --results RESULTS [--minutes 8] [--resume CKPT]
#        [--transfer DIR] [--model-only] [--cpu] [--name NAME] [-- more train.py arguments]
#
# --model-only: no checkpoint during the run and no checkpoint_parts/ (for a run whose checkpoint
# cannot come back anyway: 12 bytes per parameter is over what the GPU machine returns).
# --resume CKPT: a checkpoint folder (state.pt) or a folder of split parts (*.parts.json).
# --cpu: force the CPU (for testing this script without a GPU; give a tiny model in the bundle).
# Defaults on CUDA: --ctx 2048 --batch 64 --lr 1.5e-3 --warmup 100 --val-every 500; any of them
# can be overridden after `--`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle="" results="" minutes=8 resume="" transfer="" cpu=0 name="hyco-rust" model_only=0
extra=()
while (($#)); do
  case "$1" in
    --bundle) bundle=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --resume) resume=$2; shift 2 ;;
    --transfer) transfer=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --model-only) model_only=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_train.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n $bundle && -n $results ]] || { echo "usage: gpu_train.sh --bundle DIR --results DIR [--minutes N]" >&2; exit 2; }
for f in train.jsonl.xz valid.jsonl.xz tokenizer.model config.json; do
  [[ -f $bundle/$f ]] || { echo "gpu_train.sh: $bundle/$f not found (make the bundle with scripts/pack_corpus.sh)" >&2; exit 1; }
done

mkdir -p "$results"
results=$(cd "$results" && pwd)
exec > >(tee -a "$results/gpu_train.log") 2>&1
t0=$(date +%s)
stamp() { echo "[gpu_train $(( $(date +%s) - t0 ))s] $*"; }

# A Python that has torch, numpy and sentencepiece (Debian's is /usr/bin/python3).
PY=""
for cand in "${PYTHON:-}" python3 /usr/bin/python3; do
  [[ -n $cand ]] || continue
  if "$cand" -c "import torch, numpy, sentencepiece" 2>/dev/null; then PY=$cand; break; fi
done
[[ -n $PY ]] || { echo "gpu_train.sh: no python with torch, numpy and sentencepiece" >&2; exit 1; }
export PYTHONUNBUFFERED=1
stamp "python: $PY; $("$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "python", sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
stamp "bundle: $(du -sh "$bundle" | cut -f1) ($(ls "$bundle" | tr '\n' ' '))"

if ((cpu)); then
  dev_args=(--device cpu --threads "$(nproc)")
else
  dev_args=(--device cuda --ctx 2048 --batch 64 --lr 1.5e-3 --warmup 100 --val-every 500)
fi

resume_args=()
if [[ -n $resume ]]; then
  if [[ -f $resume/state.pt ]]; then
    resume_args=(--resume "$resume")
  elif compgen -G "$resume/*.parts.json" >/dev/null; then
    rm -rf "$results/resume"
    ckpt=$("$PY" "$here/split_join.py" join "$resume" "$results/resume" | sed -n 's/^joined .* -> //p')
    resume_args=(--resume "$ckpt")
  else
    echo "gpu_train.sh: --resume $resume holds neither state.pt nor *.parts.json" >&2; exit 1
  fi
  stamp "resuming from ${resume_args[1]}"
fi

run="$results/run"
mkdir -p "$run"
stamp "training for $minutes minutes"
config_args=(--config "$bundle/config.json")
((${#resume_args[@]})) && config_args=()
# train.py keeps to --minutes by itself (tokenization, compile and the final checkpoint
# included); the timeout only guards against a hang: SIGTERM makes it checkpoint and stop.
ckpt_minutes=4
((model_only)) && ckpt_minutes=0
# A SIGTERM to this script (scripts/gpu_session.sh sends one when the training runs past its
# time) is passed on to train.py through timeout, which forwards it: train.py checkpoints and
# stops, and the export below still runs.
child="" stopped=0
on_term() { stopped=1; [[ -n $child ]] && kill -TERM "$child" 2>/dev/null; }
trap on_term TERM INT
train() {  # train MINUTES [more train.py arguments]: sets rc
  local m=$1 limit
  shift
  limit=$("$PY" -c "print(int($m * 60 + 60))")
  rc=0
  timeout -k 60 "$limit" "$PY" "$here/train.py" "${config_args[@]}" \
    --train "$bundle/train.jsonl.xz" --valid "$bundle/valid.jsonl.xz" \
    --tokenizer "$bundle/tokenizer.model" --out "$run" --minutes "$m" \
    --workers "$(nproc)" --ckpt-minutes "$ckpt_minutes" "${dev_args[@]}" "${resume_args[@]}" "${extra[@]}" "$@" &
  child=$!
  # wait returns early (status > 128) when the trap runs; wait again until the child has ended.
  while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=""
}
train "$minutes"
if [[ ! -f $run/checkpoint/state.pt ]] && ((!cpu && !stopped)); then
  # A failure of the fast path (torch.compile, fused attention) on a PyTorch this script has not
  # met yet should not cost the run: once more, eagerly, with what time is left.
  left=$("$PY" -c "print(round($minutes - ($(date +%s) - $t0) / 60 - 0.2, 2))")
  if "$PY" -c "import sys; sys.exit(0 if $left >= 1.5 else 1)"; then
    stamp "train.py failed (exit $rc) before its first checkpoint: again without torch.compile and SDPA, $left minutes"
    rm -rf "$run"; mkdir -p "$run"
    train "$left" --no-compile --no-sdpa
  fi
fi
if [[ ! -f $run/checkpoint/state.pt ]]; then
  stamp "train.py failed (exit $rc) before its first checkpoint"; exit 1
fi
stamp "training done (exit $rc)"

manifest_args=()
[[ -f $bundle/manifest.json ]] && manifest_args=(--manifest "$bundle/manifest.json")
rm -rf "$results/model"
"$PY" "$here/export_model.py" --checkpoint "$run/checkpoint" --out "$results/model" \
  --name "$name" --max-shard-mib 16 "${manifest_args[@]}"
rm -rf "$results/checkpoint_parts"
if ((model_only)); then
  stamp "exported: $(du -sh "$results/model" | cut -f1) model"
else
  "$PY" "$here/split_join.py" split "$run/checkpoint" "$results/checkpoint_parts" --part-mib 15
  stamp "exported: $(du -sh "$results/model" | cut -f1) model, $(du -sh "$results/checkpoint_parts" | cut -f1) checkpoint parts"
fi

if [[ -n $transfer ]]; then
  mkdir -p "$transfer"
  "$PY" "$here/split_join.py" split "$results/model" "$transfer" --part-mib 15 --name model
  cp "$run/train_log.jsonl" "$transfer/"
  n=$(ls "$transfer" | wc -l)
  bytes=$(du -cb "$transfer"/* | tail -1 | cut -f1)
  stamp "transfer: $n files (+ gpu_train.log), $((bytes / 1048576)) MiB in $transfer"
  ((n + 1 <= 8)) || echo "gpu_train.sh: warning: more than 8 files in $transfer"
  ((bytes <= 62 * 1048576)) || echo "gpu_train.sh: warning: over 62 MiB in $transfer"
fi
stamp "all done"
[[ -n $transfer ]] && cp "$results/gpu_train.log" "$transfer/gpu_train.log"
exit 0
