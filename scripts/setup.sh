#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine (run as root, or with
# sudo available). The CUDA toolkit (nvcc, cuBLAS, NCCL) is expected at /usr/local/cuda.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS="build-essential make gcc libcjson-dev libpcre2-dev zlib1g-dev openmpi-bin libopenmpi-dev
      xz-utils perl ca-certificates python3-matplotlib"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# Tools are checked by command, not by package: a machine may already carry them from another
# source (NodeSource's nodejs bundles npm and conflicts with Debian's npm package).
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
if ! command -v node >/dev/null 2>&1; then missing="$missing nodejs npm"
elif ! command -v npm >/dev/null 2>&1; then missing="$missing npm"; fi
if [ -n "$missing" ]; then
    echo "installing:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if [ ! -x "${NVCC:-/usr/local/cuda/bin/nvcc}" ]; then
    echo "warning: nvcc not found at /usr/local/cuda/bin/nvcc: 'make test' compiles the CUDA code and needs it" >&2
fi
echo "dependencies ready"
