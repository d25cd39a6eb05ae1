#!/usr/bin/env bash
# Runs svlm's whole test suite: every test on the optimised build, then the unit tests (label
# "unit", i.e. all but the long end-to-end ones) and the CLI/server tests that feed svlm outside
# input again under ASan + UBSan, and the threaded tests (engine, streams, pools, bench-streams,
# the server) under ThreadSanitizer.
# Test data comes from SVLM_TEST_DATA (default ../shared); tests that need it skip without it.
set -uo pipefail
cd "$(dirname "$0")/.."
export SVLM_TEST_DATA="${SVLM_TEST_DATA:-$(cd .. && pwd)/shared}"
jobs=$(nproc)
# ctest hands SVLM_TEST_DATA to every test from the build's cache: point it at this folder.
for b in build build-asan build-tsan build-arm64; do
  [ -d "$b" ] && cmake -S . -B "$b" -DSVLM_TEST_DATA="$SVLM_TEST_DATA" >/dev/null
done
status=0
echo "== tests (build/)"
ctest --test-dir build --output-on-failure -j"$jobs" || status=1
if [ -d build-asan ]; then
  echo "== tests under ASan + UBSan (build-asan/)"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export LSAN_OPTIONS=suppressions="$PWD/tests/lsan.supp"
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -L unit || status=1
  # the CLI and server tests that feed svlm outside input (files, media, JSON, websocket frames)
  ctest --test-dir build-asan --output-on-failure -j"$jobs" \
    -R 'py_test_(server_protocol|server_engine|server_serve|generate|vision_describe|tokenize_fixtures|quantize|cli_info|ingest_files)$' || status=1
fi
if [ -d build-tsan ]; then
  echo "== threaded tests under ThreadSanitizer (build-tsan/)"
  # some kernels place mappings where TSan's runtime cannot start: say so rather than fail
  if [ ! -x build-tsan/svlm ]; then
    echo "FAIL: build-tsan/svlm is missing: run scripts/setup.sh (or delete build-tsan/)"
    status=1
  elif ! TSAN_OPTIONS= build-tsan/svlm --version >/dev/null 2>&1; then
    echo "SKIP: ThreadSanitizer's runtime does not start on this machine (try: setarch -R, or sysctl vm.mmap_rnd_bits=28)"
  else
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
    ctest --test-dir build-tsan --output-on-failure -j"$jobs" \
      -R '^(test_(engine_batch|engine_race|engine_stc_reconnect|engine_pages|stream|stream_memory|stream_take|llama_multi|kernels|kernels_null|cpu_packed|server_host)|py_test_(bench_streams|server_engine|server_protocol|server_serve))$' ||
      status=1
  fi
fi
# the 64-bit ARM cross build (scripts/setup.sh): its kernel and model tests under qemu-user
if [ -d build-arm64 ]; then
  echo "== 64-bit ARM tests under qemu-user (build-arm64/)"
  arm64_tests=$(grep -v '^#' scripts/arm64-tests.txt | paste -s -d '|')
  ctest --test-dir build-arm64 --output-on-failure -j"$jobs" -R "^($arm64_tests)\$" || status=1
fi
exit $status
