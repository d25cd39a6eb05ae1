#!/usr/bin/env bash
# Fuzzes svlm's parsers of outside input with libFuzzer: GGUF files and the model loaders behind
# them (gguf), the built-in PNG/PNM decoders (image), the tokenizers (tokenizer: the vocabularies
# of $SVLM_TEST_DATA/models), the server's websocket and HTTP messages (server), persisted memory
# banks (memory) and the settings' text parsers: source URIs, stream options, STC controls, time
# anchors of questions, the stream flags (options). Builds
# build-fuzz/ with clang, ASan + UBSan and coverage hooks (SVLM_FUZZ=ON), then runs each target for
# SECONDS (default 300) from tests/fuzz/corpus/<target>/ with its dictionary. New inputs go to
# build-fuzz/corpus/<target>/ (the committed corpus is only read); a crash, leak, sanitizer report,
# timeout or out-of-memory input is written to build-fuzz/crashes/<target>/ and ends that target's
# run with a failure. A fixed crash's input belongs in tests/fuzz/corpus/<target>/ as regress-*,
# where every build's ctest replays it (test_fuzz_<target>).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(gguf image tokenizer server memory options)
export SVLM_TEST_DATA="${SVLM_TEST_DATA:-$(cd .. && pwd)/shared}"
if ! command -v clang >/dev/null; then
  echo "fuzz.sh: needs clang with libFuzzer (Debian: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi
B=build-fuzz
CC=clang cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSVLM_FUZZ=ON -DSVLM_SANITIZE=ON \
  -DSVLM_FFMPEG=OFF -DSVLM_GSTREAMER=OFF -DSVLM_TEST_DATA="$SVLM_TEST_DATA" >/dev/null || exit 1
names=()
for t in "${targets[@]}"; do names+=("fuzz_$t"); done
cmake --build "$B" -j"$(nproc)" --target "${names[@]}" || exit 1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for t in "${targets[@]}"; do
  mkdir -p "$B/corpus/$t" "$B/crashes/$t"
  echo "== fuzz_$t for ${secs}s"
  dict=()
  [ -f "tests/fuzz/dict/$t.dict" ] && dict=(-dict="tests/fuzz/dict/$t.dict")
  max_len=16384
  case $t in gguf) max_len=65536 ;; tokenizer) max_len=4096 ;; esac
  if ! "$B/tests/fuzz_$t" "$B/corpus/$t" "tests/fuzz/corpus/$t" "${dict[@]}" -max_len=$max_len \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -artifact_prefix="$B/crashes/$t/" -print_final_stats=1 2>"$B/fuzz_$t.log"; then
    status=1
    grep -E "ERROR|SUMMARY|Test unit written" "$B/fuzz_$t.log" | head -n 20
  fi
  grep -E "stat::number_of_executed_units|cov: " "$B/fuzz_$t.log" | tail -n 2
done
[ $status = 0 ] && echo "fuzz.sh: no faults" || echo "fuzz.sh: FAULTS: see $B/crashes/"
exit $status
