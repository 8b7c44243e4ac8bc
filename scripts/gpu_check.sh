#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and no network, builds the CUDA backend and
# `hyco bench` (Release, sm_90 unless CUDA_ARCH says otherwise) with what that machine has, runs
# the `gpu` tests (plus compute-sanitizer's memcheck and racecheck), then the benchmarks of
# issue 4, and writes logs and JSON results to the directory given as the first argument. Needs
# no Debian package: the HTTP server (cpp-httplib) is left out of this build. Each stage has a
# time limit so the whole check stays within a few minutes; a stage that fails is recorded and
# the next one still runs.
#   scripts/gpu_check.sh OUT_DIR [--quick] [--no-bench | --bench-only] [--prebuilt DIR]
# --no-bench: build and test only; --bench-only: only the benchmarks, with the build already there
# (so the tests can run beside a training run and the benchmarks once the GPU is free).
# --prebuilt DIR: use DIR/bin/{hyco,test_gpu} built elsewhere (scripts/gpu_prepare.sh makes them,
# with the shared libraries they need in DIR/lib) instead of building here; when they do not run
# on this machine, the check builds as usual.
# SANITIZER_SECONDS (default 150) bounds each compute-sanitizer stage (memcheck, racecheck).
# CHECK_SECONDS (default 540) bounds the whole check: each stage gets at most what is left, and a
# stage with under 10 s left is skipped (recorded as rc=skipped), so that one call on the GPU
# machine (10 minutes at most) always returns its results.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [--quick] [--no-bench | --bench-only]}
shift
quick="" build_and_test=1 benchmarks=1 prebuilt=""
while (($#)); do
  case "$1" in
    --quick) quick=--quick ;;
    --no-bench) benchmarks=0 ;;
    --bench-only) build_and_test=0 ;;
    --prebuilt)
      [[ -d ${2:-} ]] || { echo "gpu_check.sh: --prebuilt needs a folder (scripts/gpu_prepare.sh makes it), got '${2:-}'" >&2; exit 2; }
      prebuilt=$(cd "$2" && pwd); shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
arch=${CUDA_ARCH:-90}
build=${BUILD_DIR:-build-gpu}
status="$out/status.txt"
((build_and_test)) && : > "$status"
export HYCO_REQUIRE_GPU=1  # a gpu test fails, rather than skips, when the GPU is not usable
deadline=$((SECONDS + ${CHECK_SECONDS:-540}))
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 secs=$2
  shift 2
  local t0=$SECONDS left=$((deadline - SECONDS))
  if ((left < 10)); then
    echo "$name rc=skipped (the check's time is spent)" | tee -a "$status"
    return 124
  fi
  ((secs > left)) && secs=$left
  timeout "$secs" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$status"
  return $rc
}

# The binaries: prebuilt ones when they start here, else built here.
hyco="$build/cli/hyco" test_gpu="$build/tests/test_gpu"
if [[ -n $prebuilt ]]; then
  # CUDA's runtime and cuBLAS from this machine's toolkit (wherever the loader does not look), else
  # from PyTorch's CUDA wheels.
  # The sonames are the ones the binary was linked against (libcublas.so.13 with CUDA 13).
  cublas=$(readelf -d "$prebuilt/bin/hyco" 2>/dev/null | sed -n 's/.*\[\(libcublas\.so\.[0-9]*\)\].*/\1/p' | head -1)
  cudart=$(readelf -d "$prebuilt/bin/hyco" 2>/dev/null | sed -n 's/.*\[\(libcudart\.so\.[0-9]*\)\].*/\1/p' | head -1)
  cublas=${cublas:-libcublas.so.13} cudart=${cudart:-libcudart.so.13}
  cuda_libs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -e $d/$cublas ]] && cuda_libs+=":$d"
  done
  if [[ -z $cuda_libs ]] && ! ldconfig -p 2>/dev/null | grep -q "$cublas "; then
    for f in $(find /opt /usr/local /usr/lib -name "$cublas" -o -name "$cudart" 2>/dev/null); do
      cuda_libs+=":$(dirname "$f")"
    done
  fi
  saved_ld_path=${LD_LIBRARY_PATH-}
  export LD_LIBRARY_PATH="$prebuilt/lib$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if "$prebuilt/bin/hyco" --version > "$out/prebuilt.log" 2>&1 && "$prebuilt/bin/test_gpu" --help >> "$out/prebuilt.log" 2>&1; then
    hyco="$prebuilt/bin/hyco" test_gpu="$prebuilt/bin/test_gpu"
    ((build_and_test)) && echo "prebuilt rc=0 ($prebuilt/bin)" | tee -a "$status"
  else
    ((build_and_test)) && echo "prebuilt rc=1 (does not start here: building)" | tee -a "$status"
    prebuilt=""
    # The build below links against this machine's own libraries, not the carried ones.
    if [[ -n $saved_ld_path ]]; then export LD_LIBRARY_PATH=$saved_ld_path; else unset LD_LIBRARY_PATH; fi
  fi
fi

if ((build_and_test)); then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1
  # A Python with numpy and torch for the reference suite (python3 on PATH may lack them).
  python=""
  for cand in "${HYCO_PYTHON:-}" python3 /usr/bin/python3; do
    [[ -n $cand ]] && "$cand" -c "import numpy, torch" 2>/dev/null && { python=$(command -v "$cand"); break; }
  done
  [[ -n $python ]] || { echo "gpu_check.sh: no python with numpy and torch (set HYCO_PYTHON)" | tee -a "$status"; python=python3; }
  if [[ -n $prebuilt ]]; then
    # The suite the gpu tests compare with (what ctest's fixture does), then the tests themselves.
    export HYCO_REFERENCE_DIR="$out/reference"
    stage reference 180 "$python" scripts/reference.py suite --out "$HYCO_REFERENCE_DIR"
    stage tests 240 "$test_gpu" --durations yes
  else
    gen=()
    command -v ninja > /dev/null && gen=(-G Ninja)
    stage configure 120 cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DHYCO_CUDA=ON -DHYCO_SERVER=OFF \
      -DCMAKE_CUDA_ARCHITECTURES="$arch" -DHYCO_PYTHON="$python" || { cat "$out/configure.log"; exit 1; }
    stage build 360 cmake --build "$build" -j "$(nproc)" --target hyco test_gpu test_backend_ops test_consistency || {
      tail -50 "$out/build.log"; exit 1; }
    # Tests: the gpu label (with the reference-suite fixture).
    stage tests 240 ctest --test-dir "$build" -L gpu --output-on-failure
  fi
  # The same binary under compute-sanitizer's memcheck.
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
  stage sanitizer "${SANITIZER_SECONDS:-150}" "${sanitizer:-compute-sanitizer}" --tool memcheck --error-exitcode 9 "$test_gpu"
  # Shared-memory races in the attention kernels (which the emulated GPU of the CPU tests cannot
  # show): the op cases under racecheck.
  stage racecheck "${SANITIZER_SECONDS:-150}" "${sanitizer:-compute-sanitizer}" --tool racecheck --error-exitcode 9 \
    "$test_gpu" "every op on the GPU matches the CPU backend"
  rm -rf "$out/reference"
fi
((benchmarks)) || { cat "$status"; exit 0; }

bench() {  # bench NAME SECONDS ARGS...
  local name=$1 secs=$2
  shift 2
  # --repeat 2: the first timing of a run also pays for cuBLAS set-up and graph capture.
  stage "bench-$name" "$secs" "$hyco" bench --device cuda --repeat 2 --json "$out/bench-$name.json" "$@"
}
shapes=models/shapes
if [[ "$quick" == "--quick" ]]; then
  bench tiny 60 --preset $shapes/tinyllama-1.1b.json --contexts 1024 --decode-tokens 16
else
  # CodeLlama-7B shape: all-global vs hybrid (3 local : 1 global, window 4096).
  bench codellama "${CODELLAMA_SECONDS:-300}" --preset $shapes/codellama-7b.json \
    --configs 'global;pattern=LLLG,window=4096' --contexts 1024,8192,32768 --decode-tokens 32 --chunk 8192
  # Windowed prefill attention alone (32K tokens, window 1024, 32 heads x 128): one layer, two
  # windows; the difference of the prefill times is attention's (scripts/attention_tflops.py).
  bench attention 60 --preset $shapes/attention-32x128.json --contexts 32768 --chunk 8192 --decode-tokens 1 \
    --configs 'pattern=L,window=1024;pattern=L,window=16' &&
    python3 scripts/attention_tflops.py "$out/bench-attention.json" | tee "$out/attention.json"
  # TinyLlama-1.1B shape: 64 concurrent sequences, 512-token prompts.
  bench tinyllama-64 120 --preset $shapes/tinyllama-1.1b.json --contexts 512 --decode-tokens 64 --batch 64 --chunk 512
  bench tinyllama 120 --preset $shapes/tinyllama-1.1b.json --contexts 1024,32768 --decode-tokens 32 --chunk 8192
fi
echo "results in $out"
cat "$status"
