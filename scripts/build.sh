#!/usr/bin/env bash
# Configures and builds hyco into ./build (Release). Extra arguments go to CMake, e.g.
#   scripts/build.sh -DHYCO_CUDA=OFF       scripts/build.sh -DHYCO_SANITIZE=address,undefined
# BUILD_DIR overrides the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
elif (($#)); then
  cmake -S . -B "$build_dir" "$@"
fi
cmake --build "$build_dir" -j "$(nproc)"
