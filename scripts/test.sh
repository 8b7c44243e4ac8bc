#!/usr/bin/env bash
# The whole test suite from a clean checkout: installs packages, builds, runs every CTest label
# this machine can run (unit, reference, integration; gpu tests skip themselves without a GPU).
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@"
