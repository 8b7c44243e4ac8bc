#!/usr/bin/env bash
# Packs what a GPU training run needs into one small folder (the "bundle") that scripts/gpu_train.sh
# reads: train.jsonl.xz, valid.jsonl.xz, tokenizer.model, config.json, manifest.json (the
# corpus's, when present) and bundle.json (sizes, checksums, subsampling). At most --max-mib in
# all (default 55: what may travel to the GPU machine is 64 MiB, the repository included).
# When the compressed corpus does not fit, training documents are subsampled deterministically
# (a document is kept when sha256(crate/path) falls below the kept fraction, so the same corpus
# always gives the same subset) and compressed again.
#
#   scripts/pack_corpus.sh --corpus /work/data/corpus --tokenizer /work/data/tokenizer/tokenizer.model \
#       --config models/shapes/hyco-rust.json --out gpu_bundle [--max-mib 55] [--xz-level 9]
set -euo pipefail

corpus="" tokenizer="" config="" out="" max_mib=55 level=9
while (($#)); do
  case "$1" in
    --corpus) corpus=$2; shift 2 ;;
    --tokenizer) tokenizer=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    --xz-level) level=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "pack_corpus.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n $corpus && -n $tokenizer && -n $config && -n $out ]] || {
  echo "usage: pack_corpus.sh --corpus DIR --tokenizer FILE --config FILE --out DIR [--max-mib N]" >&2
  exit 2
}
for f in "$corpus/train.jsonl" "$corpus/valid.jsonl" "$tokenizer" "$config"; do
  [[ -f $f ]] || { echo "pack_corpus.sh: $f not found" >&2; exit 1; }
done
command -v xz >/dev/null || { echo "pack_corpus.sh: needs xz (apt-get install xz-utils)" >&2; exit 1; }
PY=$(command -v python3 || echo /usr/bin/python3)

mkdir -p "$out"
rm -f "$out"/train.jsonl.xz "$out"/valid.jsonl.xz "$out"/bundle.json
cp "$tokenizer" "$out/tokenizer.model"
cp "$config" "$out/config.json"
[[ -f $corpus/manifest.json ]] && cp "$corpus/manifest.json" "$out/manifest.json"
xzc() { nice -n 15 xz -T0 "-$level" -c; }

limit=$((${max_mib%.*} * 1048576))
xzc <"$corpus/valid.jsonl" >"$out/valid.jsonl.xz"
xzc <"$corpus/train.jsonl" >"$out/train.jsonl.xz"
size_of() { stat -c %s "$1"; }
others() { local s=0 f; for f in "$out"/*; do [[ $(basename "$f") == train.jsonl.xz ]] || s=$((s + $(size_of "$f"))); done; echo $s; }
full=$(size_of "$out/train.jsonl.xz")
fraction=1
for attempt in 1 2 3 4; do
  total=$(( $(size_of "$out/train.jsonl.xz") + $(others) ))
  echo "pack_corpus: attempt $attempt, kept fraction $fraction: $(awk "BEGIN { printf \"%.1f\", $total / 1048576 }") MiB in all (limit $max_mib MiB)"
  ((total <= limit - 4096)) && break
  if ((attempt == 4)); then echo "pack_corpus.sh: does not fit after 4 attempts" >&2; exit 1; fi
  # the fraction that should fit, from what the kept fraction compressed to (3% margin)
  fraction=$("$PY" -c "print(min(1.0, $fraction * ($limit - 4096 - $(others)) / $(size_of "$out/train.jsonl.xz") * 0.97))")
  "$PY" - "$corpus/train.jsonl" "$fraction" <<'EOF' | xzc >"$out/train.jsonl.xz"
import hashlib, json, sys
path, frac = sys.argv[1], float(sys.argv[2])
out = sys.stdout.buffer
with open(path, "rb") as f:
    for line in f:
        if not line.strip():
            continue
        d = json.loads(line)
        key = f"{d.get('crate', '')}/{d.get('path', '')}".encode()
        if int.from_bytes(hashlib.sha256(key).digest()[:8], "big") < frac * 2 ** 64:
            out.write(line)
EOF
done

"$PY" - "$out" "$corpus" "$fraction" "$full" <<'EOF'
import hashlib, json, lzma, os, sys
out, corpus, frac, full = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
info = {"corpus": os.path.abspath(corpus), "train_fraction_kept": frac,
        "train_xz_bytes_before_subsampling": full, "files": {}}
for fn in sorted(os.listdir(out)):
    if fn == "bundle.json":
        continue
    p = os.path.join(out, fn)
    with open(p, "rb") as f:
        info["files"][fn] = {"bytes": os.path.getsize(p),
                             "sha256": hashlib.sha256(f.read()).hexdigest()}
for split in ("train", "valid"):
    docs = nbytes = 0
    with lzma.open(os.path.join(out, f"{split}.jsonl.xz"), "rb") as f:
        for line in f:
            if line.strip():
                docs += 1
                nbytes += len(json.loads(line)["text"].encode("utf-8"))
    info[split] = {"documents": docs, "text_bytes": nbytes}
info["total_bytes"] = sum(v["bytes"] for v in info["files"].values())
with open(os.path.join(out, "bundle.json"), "w") as f:
    json.dump(info, f, indent=1)
print(f"pack_corpus: {out}: train {info['train']['documents']:,} documents "
      f"({info['train']['text_bytes'] / 1e6:.1f} MB of text, fraction {frac:.3f}), valid "
      f"{info['valid']['documents']:,}; {info['total_bytes'] / 1048576:.1f} MiB in all")
EOF
