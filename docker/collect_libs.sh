#!/usr/bin/env bash
# Copies the shared libraries a binary needs (except the C library and the GPU driver, which the
# runtime image or host provides) next to it, so the runtime image needs no -dev packages.
#   docker/collect_libs.sh BINARY DEST_DIR
set -euo pipefail
bin=$1 dest=$2
mkdir -p "$dest"
ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
    *) cp -L "$lib" "$dest/" ;;
  esac
done
