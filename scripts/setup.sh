#!/usr/bin/env bash
# Installs every Debian package hyco needs to build, test, train and benchmark.
# Idempotent and non-interactive: README, .ci/run and the Dockerfiles all call this one script.
# --build-only: only what the build needs; --with-fuzz: also clang 14 and libFuzzer (scripts/fuzz.sh).
set -euo pipefail

build_only=false with_fuzz=false
for arg in "$@"; do
  [[ "$arg" == --build-only ]] && build_only=true
  [[ "$arg" == --with-fuzz ]] && with_fuzz=true
done

# What the build needs (also all a Docker image needs: `scripts/setup.sh --build-only`).
pkgs=(
  build-essential cmake ninja-build pkg-config ca-certificates
  libcpp-httplib-dev nlohmann-json3-dev libspdlog-dev libcli11-dev
  libsentencepiece-dev
)
# What the tests and the Python tooling (reference model, training, benchmarks) need.
if ! $build_only; then
  pkgs+=(catch2 git xz-utils curl sentencepiece python3-sentencepiece
         libopenblas0-pthread python3-torch python3-numpy)
fi
# The fuzz targets (fuzz/): clang 14 and its runtime libraries (libFuzzer, ASan, UBSan).
if $with_fuzz; then
  pkgs+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "setup: all ${#pkgs[@]} packages present"
