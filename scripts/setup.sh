#!/usr/bin/env bash
# Installs svlm's Debian 12 build and test dependencies and builds two trees:
#   build/       the optimised build (the `svlm` binary is build/svlm), with the CUDA backend
#                when nvcc is found (/usr/local/cuda or PATH); it runs without a GPU too
#   build-asan/  the same with AddressSanitizer + UndefinedBehaviorSanitizer, for the tests
#   build-tsan/  ThreadSanitizer: svlm and the tests whose threads share streams, lanes, pools and
#                the server
#   build-arm64/ a cross build for 64-bit ARM (the NEON kernels), its kernel and model tests run
#                under qemu-user; built when the cross compiler and qemu are installed
# Usage: scripts/setup.sh [--no-install] [--no-asan] [--no-tsan] [--no-arm64]
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
asan=1
tsan=1
arm64=1
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    --no-asan) asan=0 ;;
    --no-tsan) tsan=0 ;;
    --no-arm64) arm64=0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

if [ "$install" = 1 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "== installing Debian packages"
  $SUDO apt-get update -qq
  cross=()
  [ "$arm64" = 1 ] && [ "$(uname -m)" = x86_64 ] && cross=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${cross[@]}" \
    build-essential cmake pkg-config ninja-build zlib1g-dev libopenblas-dev \
    ffmpeg libavformat-dev libavcodec-dev libavutil-dev libswscale-dev libswresample-dev \
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
    gstreamer1.0-tools libgstrtspserver-1.0-dev libwebsockets-dev libjansson-dev \
    python3 python3-numpy python3-websockets chromium chromium-driver >/dev/null
fi

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cuda=(-DSVLM_CUDA=OFF)
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null; then
  cuda=(-DSVLM_CUDA=ON)
fi
echo "== building build/ (Release, ${cuda[0]#-D})"
cmake -S . -B build "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "${cuda[@]}" >/dev/null
cmake --build build -j"$(nproc)"
if [ "$asan" = 1 ]; then
  echo "== building build-asan/ (ASan + UBSan)"
  cmake -S . -B build-asan "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSVLM_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$(nproc)"
fi
if [ "$tsan" = 1 ]; then
  echo "== building build-tsan/ (ThreadSanitizer: svlm and the threaded tests)"
  cmake -S . -B build-tsan "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSVLM_TSAN=ON >/dev/null
  targets=(svlm test_engine_batch test_engine_race test_engine_stc_reconnect test_engine_pages test_stream
    test_stream_memory test_stream_take test_llama_multi test_kernels test_kernels_null test_cpu_packed)
  # (the server's host test exists only where libwebsockets and jansson were found)
  cmake --build build-tsan --target help 2>/dev/null | grep -q 'test_server_host' && targets+=(test_server_host)
  cmake --build build-tsan -j"$(nproc)" --target "${targets[@]}"
fi
if [ "$arm64" = 1 ] && [ "$(uname -m)" = x86_64 ] && command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  echo "== building build-arm64/ (64-bit ARM cross build: svlm and the kernel and model tests)"
  cmake -S . -B build-arm64 "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$PWD/scripts/aarch64-linux-gnu.cmake" >/dev/null
  mapfile -t arm64_tests < <(grep -v '^#' scripts/arm64-tests.txt)
  cmake --build build-arm64 -j"$(nproc)" --target svlm "${arm64_tests[@]}"
fi
echo "== done: build/svlm"
