#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need (as root), only
# when some are missing, so a prepared machine does not touch the network.
# openssl: the security tests make their certificates with its CLI.
# clang, libclang-rt-14-dev, libfuzzer-14-dev: the libFuzzer builds of the
# fuzz targets (README: QMGR_LIBFUZZER; the runtimes are only recommended by
# clang, and recommends are not installed here).
set -euo pipefail
packages=(
  build-essential cmake pkg-config git
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libabsl-dev libxxhash-dev libcli11-dev libgoogle-perftools-dev librocksdb-dev
  libgtest-dev libgmock-dev prometheus-cpp-dev
  openssl
  clang libclang-rt-14-dev libfuzzer-14-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
