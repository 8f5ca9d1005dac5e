#!/usr/bin/env bash
# Build prerequisites of dllm's CUDA backend, on a Debian/Ubuntu machine with or without a GPU:
# - nvcc 13.0 (+ CCCL) from PyPI into .toolchain/cuda (≈105 MB download; no root; build.rs finds
#   it there). 13.0 matches the driver of our GPU hosts; a newer nvcc emits PTX they cannot load.
# - libclang for bindgen (apt; root or sudo).
# Idempotent: skips what is already there. The CPU-only build (--no-default-features) needs none
# of it.
set -euo pipefail
cd "$(dirname "$0")/.."

nvcc=.toolchain/cuda/nvidia/cu13/bin/nvcc
if [ ! -x "$nvcc" ]; then
  echo "setup: installing nvcc 13.0 from PyPI into .toolchain/cuda"
  python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --target .toolchain/cuda \
    "cuda-toolkit[nvcc,cccl]==13.0.3.0"
fi
"$nvcc" --version | tail -n 1

# What bindgen (clang-sys) loads: libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*,
# but never libclang-cpp (the C++ library of another package, present on images without libclang),
# in $LIBCLANG_PATH or the standard library directories.
have_libclang() {
  local dir file
  for dir in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib /usr/lib64 \
    /usr/local/lib /usr/local/llvm*/lib; do
    for file in "$dir"/libclang.so "$dir"/libclang-*.so "$dir"/libclang.so.* "$dir"/libclang-*.so.*; do
      [ -e "$file" ] && [[ "${file##*/}" != *-cpp.* ]] && { echo "$file"; return 0; }
    done
  done
  return 1
}

if ! have_libclang >/dev/null; then
  echo "setup: installing libclang (for bindgen)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get install -y --no-install-recommends libclang-dev >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends libclang-dev >/dev/null; }
fi
libclang=$(have_libclang) || { echo "setup: no libclang after the install (bindgen needs it)" >&2; exit 1; }
echo "setup: libclang $libclang"
echo "setup: ok"
