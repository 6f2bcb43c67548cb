#!/usr/bin/env bash
# Copies the shared libraries that binaries built here need and the GPU machine's image may lack
# (cJSON, PCRE2, OpenMPI, zlib, libgomp, ...) into DEST: everything ldd resolves outside glibc,
# the C++/GCC runtime and CUDA/cuBLAS/NCCL (those the device has). Run the binaries there with
# LD_LIBRARY_PATH=DEST. A library ldd cannot find here is an error.
#   scripts/carry_libs.sh DEST BIN...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: scripts/carry_libs.sh DEST BIN..." >&2; exit 2; }
dest=$1; shift
mkdir -p "$dest"
for bin in "$@"; do
    [ -f "$bin" ] || { echo "carry_libs: $bin: no such file" >&2; exit 2; }
    deps=$(ldd "$bin")
    if grep -q "not found" <<<"$deps"; then
        echo "carry_libs: $bin: ldd finds no $(awk '/not found/ {print $1}' <<<"$deps" | tr '\n' ' ')" >&2
        exit 1
    fi
    awk '$3 ~ /^\// {print $3}' <<<"$deps" |
        { grep -Ev '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|cuda|cublas|nccl' || true; } |
        while read -r lib; do cp -Lu "$lib" "$dest/"; done
done
