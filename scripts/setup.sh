#!/usr/bin/env bash
# Installs every Debian package hyco needs to build, test, train and benchmark.
# Idempotent and non-interactive: README, .ci/run and the Dockerfiles all call this one script.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config git xz-utils curl ca-certificates
  libcpp-httplib-dev nlohmann-json3-dev libspdlog-dev libcli11-dev catch2
  libsentencepiece-dev sentencepiece python3-sentencepiece
  libopenblas0-pthread
  python3-torch python3-numpy
)
# Optional extras: `--with-corpus` adds the Rust sources the default model is trained on.
if [[ "${1:-}" == "--with-corpus" ]]; then
  pkgs+=(rust-src)
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
