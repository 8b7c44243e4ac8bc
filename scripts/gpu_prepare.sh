#!/usr/bin/env bash
# Prepares, on this machine, what one call on the GPU machine needs beside the repository
# (scripts/gpu_session.sh reads it), in one folder that the device tool carries (default
# gpu_carry/, ignored by git):
#   bin/hyco, bin/test_gpu   built here (Release, CUDA for sm_90, no HTTP server), so that the
#                            GPU machine's time is not spent compiling and its packages do not
#                            matter; scripts/gpu_check.sh builds there when these do not start
#   lib/                     the shared libraries they need that are not glibc's or CUDA's
#                            (sentencepiece, spdlog, fmt, ...), as found by ldd here
#   bundle/                  the training bundle (scripts/pack_corpus.sh), when --corpus is given
#
#   scripts/gpu_prepare.sh [--out gpu_carry] [--corpus DIR --tokenizer FILE --config FILE]
#                          [--max-mib 40] [--drop-model]
# The device tool carries at most 64 MiB with the repository: the script prints the total and
# fails when it is over. The shipped model's weights (~60 MiB, tracked in git) are most of the
# repository and nothing on the GPU machine reads them: --drop-model deletes them from the
# working tree (`git checkout -- models` brings them back; gpu_session.sh's own training exports
# elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu_carry corpus="" tokenizer=models/hyco-rust/tokenizer.model config=models/shapes/hyco-rust.json max_mib=40 drop_model=0
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --corpus) corpus=$2; shift 2 ;;
    --tokenizer) tokenizer=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    --drop-model) drop_model=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_prepare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

build=${BUILD_DIR:-build-gpu}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DHYCO_CUDA=ON -DHYCO_SERVER=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" > /dev/null
cmake --build "$build" -j "$(nproc)" --target hyco test_gpu

mkdir -p "$out/bin" "$out/lib"
rm -f "$out"/bin/* "$out"/lib/*
cp "$build/cli/hyco" "$build/tests/test_gpu" "$out/bin/"
strip "$out"/bin/*
# Every shared library the two binaries load, except the C library's own, the C++ runtime and
# CUDA's (the GPU machine has newer ones of each).
skip='^(linux-vdso|/lib64/ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libnvrtc)'
for bin in "$out"/bin/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  [[ $name =~ $skip ]] && continue
  cp -L "$path" "$out/lib/$name"
done
echo "gpu_prepare: libraries carried: $(ls "$out/lib" | tr '\n' ' ')"

if [[ -n $corpus ]]; then
  bash scripts/pack_corpus.sh --corpus "$corpus" --tokenizer "$tokenizer" --config "$config" \
    --out "$out/bundle" --max-mib "$max_mib"
fi
if ((drop_model)); then
  git ls-files -z -- 'models/*.safetensors' | xargs -0 rm -f
  echo "gpu_prepare: the shipped model's weights are deleted from the working tree (git checkout -- models restores them)"
fi
# What travels: the tracked files still in the working tree, untracked ones git does not ignore,
# and this folder.
repo=$( (git ls-files -z; git ls-files -z --others --exclude-standard) |
  while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
mine=$(du -sb "$out" | cut -f1)
total=$(((mine + repo) / 1048576))
echo "gpu_prepare: $out $((mine / 1048576)) MiB + repository $((repo / 1048576)) MiB = $total MiB" \
  "(the device tool carries at most 64)"
if ((mine + repo > 64 * 1048576)); then
  echo "gpu_prepare: over the device tool's 64 MiB: --drop-model, or a smaller --max-mib bundle" >&2
  exit 1
fi
