#!/usr/bin/env bash
# shellcheck disable=SC2016 # bash -c scripts take their arguments as $1...
# The check for a machine with an NVIDIA GPU: builds the svlm tool and the GPU tests in
# build-gpu/ with the CUDA backend (no FFmpeg, GStreamer or server libraries needed), runs the GPU
# tests (ctest -R test_cuda; when some fail, again with each measured change switched back, keeping
# the switches that fix them for the benchmarks; once they pass, again with the forms built since
# the last GPU run, which are off by default, switched on), then benchmarks the CUDA backend on a
# generated SmolVLM2-256M-shaped Q8_0 model (text pp512 / tg128, the vision encoder, 256 streams
# without and with token compression, one stream's frames through it: bench-vision) and a
# 2.2B-shaped Q4_K_M one (32 streams, text), then each
# form not yet run on a GPU and each measured change against its switch, 16 and 64 answers
# decoding together, more stream configurations, then profiles (host
# time per op of decode and of 64 streams, GPU time per kernel of decode and of the encoder), and
# last the GPU tests under compute-sanitizer's memcheck when it is installed.
#
# Everything goes to stdout (and to $OUT/gpu-check.log when $OUT names a folder); a summary comes
# last. Exit status 1 when the build, a test, memcheck or a benchmark command failed; the
# benchmarks run whatever the tests said. Each step has a timeout within an overall budget
# (SVLM_GPU_CHECK_BUDGET seconds, default 470: under 8 minutes with the summary).
#
# Environment: SVLM_TEST_DATA (default ../shared, else ./shared), SVLM_GPU_CHECK_22B=0 (skip the
# 2.2B-shaped model and its benchmarks), SVLM_GPU_CHECK_MEMCHECK=0 (skip compute-sanitizer; or
# the names of the tests to run it on),
# SVLM_GPU_CHECK_NCU=0 (skip the kernel profiles), SVLM_GPU_CHECK_AB=1 (also the comparisons
# measured before: no graphs, no flash attention, the host CPU), SVLM_GPU_CHECK_BENCH (a regular
# expression: only the benchmarks whose label matches), SVLM_CUDA_ARCH (default: the
# GPU's compute capability from nvidia-smi, e.g. 90 on an H100; "80;90" without a GPU),
# SVLM_GPU_CHECK_BUILD (the build folder, default build-gpu), SVLM_GPU_CHECK_TESTS=0 (skip the GPU
# tests: a second call on a machine still warm, for what the first one's budget left out, e.g.
# with SVLM_GPU_CHECK_BENCH and SVLM_GPU_CHECK_MEMCHECK).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
B=${SVLM_GPU_CHECK_BUILD:-build-gpu}
case $B in /*) ;; *) B=$ROOT/$B ;; esac # steps that change folder still find it
start=$(date +%s)
budget=${SVLM_GPU_CHECK_BUDGET:-470}
status=0
summary=()
tee_pid=""
if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ -w "$OUT" ]; then
  exec > >(tee -a "$OUT/gpu-check.log") 2>&1
  tee_pid=$!
fi
exec 2>&1
export PATH="/usr/local/cuda/bin:$PATH"
jobs=$(nproc)

elapsed() { echo $(($(date +%s) - start)); }

# step NAME CAP RESERVE CMD...: runs CMD with a timeout of CAP seconds, or less so that RESERVE
# seconds of the budget stay for the steps after it. Returns CMD's status (124: timed out; 125:
# not run, the budget was spent).
step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((budget - $(elapsed) - reserve))
  local t=$((cap < left ? cap : left))
  echo
  echo "==== $name (timeout ${t}s; $(elapsed)s elapsed)"
  if [ "$t" -lt 10 ]; then
    echo "skipped: out of time"
    return 125
  fi
  local t0
  t0=$(date +%s)
  timeout --kill-after=10 "$t" "$@"
  local rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "TIMED OUT after ${t}s"
  echo "---- $name: exit $rc after $(($(date +%s) - t0))s"
  return $rc
}

echo "==== svlm GPU check in $ROOT, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $jobs CPUs"
if command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1; then
  echo "commit $(git log -1 --format='%h %s' 2>/dev/null); $(git status --short 2>/dev/null | wc -l) changed files"
fi

# ---- the GPU ----
echo
echo "==== nvidia-smi -L"
gpus=0
cc=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>/dev/null
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
else
  echo "nvidia-smi not found"
fi
arch=${SVLM_CUDA_ARCH:-}
if [ -z "$arch" ]; then
  case "$cc" in
  9.*) arch=90 ;; # H100, H200: only their architecture, to compile faster
  [0-9].[0-9] | [0-9][0-9].[0-9]) arch="${cc%%.*}${cc#*.}" ;; # e.g. 8.6 -> 86
  *) arch="80;90" ;;
  esac
fi
nvcc --version 2>/dev/null | tail -n 2
echo "GPUs: $gpus; compute capability: ${cc:-unknown}; CUDA architectures: $arch"
if [ "$gpus" -gt 0 ]; then
  export SVLM_TEST_REQUIRE_GPU=1 # a GPU test that finds no usable GPU fails instead of skipping
fi

# ---- test data ----
if [ -z "${SVLM_TEST_DATA:-}" ]; then
  if [ -d ../shared ]; then
    SVLM_TEST_DATA=$(cd .. && pwd)/shared
  elif [ -d shared ]; then
    SVLM_TEST_DATA=$ROOT/shared
  else
    SVLM_TEST_DATA=$(cd .. && pwd)/shared
  fi
fi
export SVLM_TEST_DATA
echo "test data: $SVLM_TEST_DATA$([ -f "$SVLM_TEST_DATA/models/stories260K.gguf" ] || echo ' (no models/stories260K.gguf: the end-to-end test skips)')"

# ---- build ----
build_ok=0
if step "configure $B" 120 150 cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DSVLM_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DSVLM_FFMPEG=OFF -DSVLM_GSTREAMER=OFF -DSVLM_SERVER=OFF -DSVLM_WERROR=OFF \
  -DSVLM_TEST_DATA="$SVLM_TEST_DATA"; then
  # only what this check runs: the svlm tool and the GPU tests (faster, and other tests may
  # need libraries this machine lacks). A GPU test runs its own program test_cuda_X (built from
  # tests/test_cuda_X.c) when there is one, else test_X's on the GPU (test_cuda_stc_batch runs
  # test_stc_batch); the _as_cpu tests run programs already in the list.
  targets=(svlm)
  while IFS= read -r t; do
    if [ -f "tests/$t.c" ]; then targets+=("$t"); else targets+=("test_${t#test_cuda_}"); fi
  done < <(ctest --test-dir "$B" -N -R '^test_cuda' |
    sed -n -E 's/.*Test +#[0-9]+: (test_cuda[A-Za-z0-9_]*).*/\1/p' | grep -v -E '_as_cpu$')
  echo "targets: ${targets[*]}"
  # the whole log is long: warnings, errors and the last lines on failure
  step "build $B ($jobs jobs)" 330 120 bash -c 'cmake --build "$1" -j"$2" --target "${@:3}" >"$1/build.log" 2>&1
    rc=$?
    grep -E -i "warning|error" "$1/build.log" | head -n 60
    [ $rc -ne 0 ] && tail -n 60 "$1/build.log"
    exit $rc' _ "$B" "$jobs" "${targets[@]}" && build_ok=1
fi
if [ $build_ok = 1 ]; then
  summary+=("build: ok")
else
  status=1
  summary+=("build: FAILED (see above; $B/build.log)")
fi

# ---- tests ----
# Changes measured on a GPU each have a switch back to what they replaced (docs/cuda.md).
# When GPU tests fail (or hang), the ones that did not pass run again with each switch in turn; a
# switch that makes some of them pass stays exported, so the benchmarks after measure code the
# tests passed, and the summary names it.
SWITCHES_BACK=(SVLM_CUDA_LT_GELU=0 SVLM_CUDA_DECODE_AHEAD=0 SVLM_CUDA_MATVEC_TALL=0 SVLM_CUDA_FLASH_MMA=0
  SVLM_CUDA_PDL=0 SVLM_CUDA_LT=0 SVLM_CUDA_CUDNN=0 SVLM_CUDA_MATVEC_SPLIT=1 SVLM_CUDA_KQUANT_LANES=0
  SVLM_CUDA_ENCODER_F16=0 SVLM_CUDA_QKV_ROPE=0 SVLM_CUDA_ARGMAX=0)
# Forms built since the last GPU run, off by default until one has run them (docs/cuda.md): after
# the tests pass as they are, they run again with all of these on; the benchmarks compare each.
UNMEASURED=(SVLM_CUDA_MATVEC_STAGED=1 SVLM_CUDA_MATVEC_STAGED_K=1 SVLM_CUDA_DECODE_PREFETCH=1)
# the unmeasured forms whose GPU tests passed (all together, then with the word "together" too, or
# each alone when together failed)
UNMEASURED_OK=()
default_tests_ok=0
form_ok() { [[ " ${UNMEASURED_OK[*]} " == *" $1 "* ]]; }
switch_back_failed_tests() {
  local all passed failed=() t sw before after
  all=$(ctest --test-dir "$B" -N -R test_cuda | sed -n -E 's/.*Test +#[0-9]+: (test_cuda[A-Za-z0-9_]*).*/\1/p')
  passed=$(grep -E 'Test +#[0-9]+: test_cuda[A-Za-z0-9_]* \.+ *(Passed|\*+Skipped)' "$B/gpu-tests.log" 2>/dev/null |
    sed -n -E 's/.*Test +#[0-9]+: (test_cuda[A-Za-z0-9_]*).*/\1/p')
  for t in $all; do grep -qx "$t" <<<"$passed" || failed+=("$t"); done
  if [ ${#failed[@]} -eq 0 ]; then
    default_tests_ok=1
    return 0
  fi
  summary+=("  not passed: ${failed[*]}; again as they are, then with each change switched back:")
  # first as they are (SVLM_GPU_CHECK_AGAIN: a variable nothing reads): a test that passes now was flaky
  # or not reached before a timeout, and no switch takes the blame for it
  for sw in SVLM_GPU_CHECK_AGAIN=1 "${SWITCHES_BACK[@]}"; do
    [ ${#failed[@]} -gt 0 ] || break
    before=${#failed[@]}
    local re
    re="^($(IFS='|'; echo "${failed[*]}"))\$"
    if [ "$(elapsed)" -gt $((budget / 2)) ]; then # the benchmarks keep half the budget
      summary+=("  $sw and after: not tried (out of time)")
      break
    fi
    step "GPU tests that did not pass, with $sw" 90 100 bash -c 'env "$2" ctest --test-dir "$1" -R "$3" \
      --timeout 80 >"$4" 2>&1
      rc=$?
      grep -E "Test +#|tests passed" "$4"
      exit $rc' _ "$B" "$sw" "$re" "$B/gpu-tests-$sw.log"
    local still=()
    for t in "${failed[@]}"; do
      grep -qE "Test +#[0-9]+: $t \.+ *(Passed|\*+Skipped)" "$B/gpu-tests-$sw.log" || still+=("$t")
    done
    after=${#still[@]}
    if [ "$sw" = SVLM_GPU_CHECK_AGAIN=1 ]; then
      [ "$after" -lt "$before" ] && summary+=("  as they are: $((before - after)) of $before pass now (flaky, or not reached)")
      failed=("${still[@]}")
    elif [ "$after" -lt "$before" ]; then
      export "${sw?}"
      summary+=("  with $sw: $((before - after)) of $before pass; it stays set for the benchmarks")
      failed=("${still[@]}")
    else
      summary+=("  with $sw: no better")
    fi
  done
  if [ ${#failed[@]} -eq 0 ]; then
    default_tests_ok=1
  else
    summary+=("  still not passing: ${failed[*]}")
  fi
}
if [ "${SVLM_GPU_CHECK_TESTS:-1}" = 0 ]; then
  summary+=("GPU tests: skipped (SVLM_GPU_CHECK_TESTS=0)")
  # a second call on a warm machine: the first call's verdict on the unmeasured forms
  [ -f "$B/gpu-tests-unmeasured.ok" ] && read -r -a UNMEASURED_OK <"$B/gpu-tests-unmeasured.ok"
elif [ -x "$B/tests/test_cuda_backend" ] || [ -x "$B/tests/test_cuda_e2e" ]; then
  step "GPU tests: ctest -R test_cuda" 180 100 bash -c 'ctest --test-dir "$1" -R test_cuda -V >"$1/gpu-tests.log" 2>&1
    rc=$?
    cat "$1/gpu-tests.log"
    exit $rc' _ "$B"
  rc=$?
  if [ $rc -eq 0 ]; then
    default_tests_ok=1
    summary+=("GPU tests: passed")
  else
    status=1
    summary+=("GPU tests: FAILED (exit $rc)")
  fi
  # the tests' own summaries: worst margins, check counts, skips and the first failures
  while IFS= read -r line; do summary+=("  $line"); done < <(
    grep -E 'worst comparison|checks, [0-9]+ failed|SKIP|Test +#|tests passed|prompt logits|identical|part at|^[0-9]+: svlm: CUDA:|internal error' \
      "$B/gpu-tests.log" 2>/dev/null | sed -E 's/^[0-9]+: //' | head -n 30
    grep -E 'CHECK\(|REQUIRE\(' "$B/gpu-tests.log" 2>/dev/null | sed -E 's/^[0-9]+: //' | head -n 12
  )
  if [ $rc -ne 0 ] && [ $rc -ne 125 ]; then
    switch_back_failed_tests
  fi
  # the forms not yet run on a GPU, all on: the same GPU tests, once they pass as they are (so that
  # a failure here is these forms'; a switch back that made tests pass above stays set)
  rm -f "$B/gpu-tests-unmeasured.ok"
  if [ $default_tests_ok = 1 ] && [ "$(elapsed)" -gt $((budget / 2)) ]; then
    summary+=("GPU tests with the unmeasured forms on: not run (past half the budget; the benchmarks keep it)")
  elif [ $default_tests_ok = 1 ]; then
    step "GPU tests with the unmeasured forms on: ${UNMEASURED[*]}" 150 100 bash -c 'shift; env "$@" \
      ctest --test-dir "$0" -R test_cuda --timeout 100 >"$0/gpu-tests-unmeasured.log" 2>&1
      rc=$?
      grep -E "Test +#|tests passed|worst comparison|identical|recording of the one-kernel|CHECK\(|REQUIRE\(|internal error" \
        "$0/gpu-tests-unmeasured.log" | head -n 40
      exit $rc' "$B" _ "${UNMEASURED[@]}"
    case $? in
    0)
      UNMEASURED_OK=("${UNMEASURED[@]}" together)
      summary+=("GPU tests with ${UNMEASURED[*]}: passed")
      ;;
    125) summary+=("GPU tests with the unmeasured forms on: skipped (out of time)") ;;
    124 | 137) summary+=("GPU tests with the unmeasured forms on: TIMED OUT, inconclusive (they stay off)") ;;
    *)
      status=1
      summary+=("GPU tests with ${UNMEASURED[*]}: FAILED ($B/gpu-tests-unmeasured.log)")
      while IFS= read -r line; do summary+=("  $line"); done < <(
        grep -E 'Failed|CHECK\(|REQUIRE\(|internal error' "$B/gpu-tests-unmeasured.log" | sed -E 's/^[0-9]+: //' |
          head -n 12
      )
      # each form alone on the tests that failed, so that one broken form does not keep the others
      # from their benchmarks
      failed_re=$(sed -n -E 's/.*Test +#[0-9]+: (test_cuda[A-Za-z0-9_]*) .*(Failed|Timeout|Exception|Not Run).*/\1/p' \
        "$B/gpu-tests-unmeasured.log" | paste -sd'|')
      for f in "${UNMEASURED[@]}"; do
        if [ ${#UNMEASURED[@]} -lt 2 ] || [ -z "$failed_re" ]; then break; fi
        if [ "$(elapsed)" -gt $((budget / 2)) ]; then # the benchmarks keep half the budget
          summary+=("  $f and after: not tried alone (out of time; they stay off)")
          break
        fi
        step "GPU tests that failed, with $f alone" 90 100 bash -c 'env "$2" ctest --test-dir "$1" -R "$3" \
          --timeout 80 >"$1/gpu-tests-alone-$2.log" 2>&1
          rc=$?
          grep -E "Test +#|tests passed|CHECK\(|REQUIRE\(" "$1/gpu-tests-alone-$2.log" | head -n 20
          exit $rc' _ "$B" "$f" "^($failed_re)\$"
        if [ $? = 0 ]; then
          UNMEASURED_OK+=("$f")
          summary+=("  $f alone: passed (benchmarked alone)")
        else
          summary+=("  $f alone: FAILED or not run (stays off)")
        fi
      done
      ;;
    esac
    echo "${UNMEASURED_OK[*]}" >"$B/gpu-tests-unmeasured.ok"
  else
    summary+=("GPU tests with the unmeasured forms on: not run (the tests as they are did not all pass)")
  fi
else
  status=1
  summary+=("GPU tests: not built")
fi

SAN=${SVLM_COMPUTE_SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}
# memcheck TEST CAP: the sanitizer's findings on one GPU test (the comparisons are in ctest's output)
memcheck() {
  local t=$1 cap=$2
  [ -x "$B/tests/$t" ] || return 0
  case " ${SVLM_GPU_CHECK_MEMCHECK:-1} " in
  " 1 " | *" $t "*) ;;
  *)
    summary+=("memcheck $t: skipped (SVLM_GPU_CHECK_MEMCHECK=${SVLM_GPU_CHECK_MEMCHECK:-1})")
    return 0
    ;;
  esac
  if [ ! -x "$SAN" ]; then
    summary+=("memcheck $t: skipped (no $SAN)")
    return 0
  fi
  rm -f "$B/memcheck-$t.log" # no figures from an earlier run
  if [ $((budget - $(elapsed) - 20)) -lt 10 ]; then
    summary+=("memcheck $t: skipped (out of time)")
    return 0
  fi
  # from the tests' folder, as ctest runs them; the log under an absolute path
  step "compute-sanitizer memcheck: $t" "$cap" 20 bash -c 'cd "$2/tests" && "$1" --tool memcheck --leak-check full \
    --error-exitcode 99 "./$3" >"$2/memcheck-$3.log" 2>&1
    rc=$?
    grep -E "=========|checks, |SKIP" "$2/memcheck-$3.log" | tail -n 60
    exit $rc' _ "$SAN" "$B" "$t"
  local rc=$?
  local errs
  errs=$(grep -E 'ERROR SUMMARY' "$B/memcheck-$t.log" 2>/dev/null | tail -n 1)
  case $rc in
  0) summary+=("memcheck $t: clean (${errs:-no summary line})") ;;
  77) summary+=("memcheck $t: skipped (the test found no usable GPU)") ;;
  125) summary+=("memcheck $t: skipped (out of time)") ;;
  124 | 137) summary+=("memcheck $t: TIMED OUT, inconclusive (${errs:-no summary line})") ;;
  *)
    status=1
    summary+=("memcheck $t: FAILED, exit $rc (${errs:-no summary line})")
    ;;
  esac
}
# (memcheck of the tests runs after the benchmarks, at the end: their figures matter more when time
# runs out)

# ---- benchmarks ----
unset OPENBLAS_CORETYPE
S="$B/svlm"
M="$B/bench/s256-q8_0"
bench() { # bench LABEL CAP ARGS...: runs svlm ARGS as a step, keeps its result lines for the summary
  local label=$1 cap=$2
  shift 2
  # SVLM_GPU_CHECK_BENCH: an extended regular expression; only the benchmarks whose label matches
  if [ -n "${SVLM_GPU_CHECK_BENCH:-}" ] && ! [[ $label =~ $SVLM_GPU_CHECK_BENCH ]]; then return 0; fi
  local log="$B/bench/last.log"
  step "$label: svlm $*" "$cap" 0 bash -c '"$@" >"$0" 2>&1; rc=$?; cat "$0"; exit $rc' "$log" "$S" "$@"
  local rc=$?
  if [ $rc -eq 125 ]; then
    summary+=("$label: skipped (out of time)")
  elif [ $rc -ne 0 ]; then
    status=1
    summary+=("$label: FAILED (exit $rc)")
  else
    summary+=("$label:")
    while IFS= read -r line; do summary+=("  $line"); done < <(
      grep -E '^(backend|pp[0-9]|tg[0-9]|bandwidth|batch|mmproj|source|pattern|streams|fps_per|frames|ttft|questions|answer_tok|lanes|ingest|stc|keeps|memory)|no usable GPU|^svlm: CUDA:|^  [a-z]' \
        "$log" | head -n 30
    )
  fi
}
if [ -x "$S" ]; then
  mkdir -p "$B/bench"
  if [ -f "$M.gguf" ] && [ -f "$M-mmproj.gguf" ]; then
    echo
    echo "==== benchmark model: $M.gguf and $M-mmproj.gguf (already there)"
  else
    step "benchmark model (SmolVLM2-256M shape, Q8_0)" 90 0 "$S" mkmodel --arch smolvlm --shape smolvlm2-256m \
      --type q8_0 --seed 1 -o "$M" --quiet || { status=1; summary+=("mkmodel: FAILED"); }
  fi
  # In order of what matters most when the budget runs out: the issue's figures first (text, the
  # encoder, 256 streams, the 2.2B shape's 32 streams), the host's own share of them (the null
  # backend), then each form not yet run on a GPU and each measured change against its switch
  # (short runs), more
  # stream configurations, the profiles, comparisons already measured once (SVLM_GPU_CHECK_AB=1);
  # then memcheck of the tests.
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
  streams_args=(--fps 1 --warmup 4 --duration 15 --drain-max 5 --question-tokens 20 --answer-tokens 8 --backend cuda)
  have_streams=0
  "$S" bench-streams --help >/dev/null 2>&1 && have_streams=1
  if [ -f "$M.gguf" ]; then
    bench "text, cuda" 90 bench -m "$M.gguf" --pp 512 --tg 128 --backend cuda
    bench "vision encoder, cuda" 60 bench --mmproj "$M-mmproj.gguf" --batch 32 --reps 2 --backend cuda
    # the headline: many live streams at 1 fps with 20-token questions (on a GPU STC is off by
    # default: the encoder is batched across streams)
    [ $have_streams = 1 ] && bench "256 streams at 1 fps, cuda (defaults)" 60 bench-streams -m "$M.gguf" \
      --mmproj "$M-mmproj.gguf" --streams 256 "${streams_args[@]}"
    # the same with token compression, whose streams now share the encoder in batches too (only
    # the changed patches computed, fewer tokens to prefill; never measured on a GPU)
    [ $have_streams = 1 ] && bench "256 streams at 1 fps, cuda, STC on" 60 bench-streams -m "$M.gguf" \
      --mmproj "$M-mmproj.gguf" --streams 256 "${streams_args[@]}" --stc on
    # a lone frame through STC against the full encoder (run 1: 23.6 against 2.6 ms; the figure that
    # decides whether STC can be on by default on a GPU, where one stream's frames do not batch)
    bench "bench-vision, cuda (one stream's frames, STC against the full encoder)" 45 bench-vision \
      "pattern:size=640x480,rate=25,duration=4" --mmproj "$M-mmproj.gguf" --fps 5 --max-frames 20 --backend cuda
  fi
  # the 2.2B shape (Q4_K_M): the issue's 32 streams and text speed (making the model takes about
  # 100 s on one core, a few seconds on a GPU machine's cores)
  M22="$B/bench/s22-q4_k_m"
  if [ "${SVLM_GPU_CHECK_22B:-1}" = 1 ]; then
    if [ ! -f "$M22.gguf" ] || [ ! -f "$M22-mmproj.gguf" ]; then
      step "benchmark model (SmolVLM2-2.2B shape, Q4_K_M)" 150 90 "$S" mkmodel --arch smolvlm \
        --shape smolvlm2-2.2b --type q4_k_m --seed 1 -o "$M22" --quiet || summary+=("mkmodel 2.2B: not made (budget or error)")
    fi
    if [ -f "$M22.gguf" ] && [ -f "$M22-mmproj.gguf" ]; then
      [ $have_streams = 1 ] && bench "2.2B: 32 streams at 1 fps, cuda" 60 bench-streams -m "$M22.gguf" \
        --mmproj "$M22-mmproj.gguf" --streams 32 "${streams_args[@]}"
      # two repetitions: the first decodes the weights for cuBLAS once (the best one is printed)
      bench "2.2B text, cuda" 45 bench -m "$M22.gguf" --pp 512 --tg 64 --reps 2 --backend cuda
    fi
  fi
  if [ -f "$M.gguf" ]; then
    # the 256 streams on the null backend (no compute): svlm's own host work on this machine's
    # cores, the ceiling no GPU raises (at or below the CUDA figure above: that run was
    # host-bound); then the host's part of the encoder and of a decode step (seconds each)
    [ $have_streams = 1 ] && bench "256 streams at 1 fps, host work only (null backend)" 40 bench-streams \
      -m "$M.gguf" --mmproj "$M-mmproj.gguf" --streams 256 --fps 1 --warmup 3 --duration 8 --drain-max 5 \
      --question-tokens 20 --answer-tokens 8 --backend null
    bench "vision encoder, host work only (null backend)" 20 bench --mmproj "$M-mmproj.gguf" --batch 32 --reps 2 \
      --backend null
    bench "text, host work only (null backend)" 20 bench -m "$M.gguf" --pp 512 --tg 128 --backend null
    # the forms not yet run on a GPU (off by default), against "text, cuda" above, once the GPU tests
    # passed with them: the decode products one warp a row, each row copied to shared memory before
    # the kernel waits for the one ahead (SVLM_CUDA_MATVEC_STAGED=1; Q4_K and Q6_K rows
    # SVLM_CUDA_MATVEC_STAGED_K=1, the 2.2B shape's); with its kernel profile
    if form_ok together; then
      # both of this session's decode forms: the figure to hold against 1000 tok/s
      SVLM_CUDA_MATVEC_STAGED=1 SVLM_CUDA_DECODE_PREFETCH=1 bench "text, cuda, products staged, attention prefetched" \
        60 bench -m "$M.gguf" --pp 0 --tg 128 --backend cuda
    fi
    if form_ok SVLM_CUDA_DECODE_PREFETCH=1; then
      SVLM_CUDA_DECODE_PREFETCH=1 bench "text, cuda, decode attention prefetched" 60 bench -m "$M.gguf" --pp 0 \
        --tg 128 --backend cuda
      SVLM_CUDA_DECODE_PREFETCH=1 bench "text, cuda, decode attention prefetched, after 1600 tokens, f16 cache" 45 \
        bench -m "$M.gguf" --pp 0 --tg 128 --depth 1600 --kv f16 --reps 2 --backend cuda
    fi
    if form_ok SVLM_CUDA_MATVEC_STAGED=1; then
      SVLM_CUDA_MATVEC_STAGED=1 bench "text, cuda, decode products staged" 60 bench -m "$M.gguf" --pp 512 \
        --tg 128 --backend cuda
      bench "text, cuda (again, beside the staged form)" 60 bench -m "$M.gguf" --pp 0 --tg 128 --backend cuda
      SVLM_CUDA_MATVEC_STAGED=1 bench "text, cuda, decode products staged, after 1600 tokens, f16 cache" 45 \
        bench -m "$M.gguf" --pp 0 --tg 128 --depth 1600 --kv f16 --reps 2 --backend cuda
      SVLM_CUDA_MATVEC_STAGED=1 bench "text, cuda, decode products staged, 4 answers decoding together" 60 \
        bench -m "$M.gguf" --pp 0 --tg 64 --decode-batch 4 --reps 1 --backend cuda
      bench "text, cuda, 4 answers decoding together" 60 bench -m "$M.gguf" --pp 0 --tg 64 --decode-batch 4 \
        --reps 1 --backend cuda
      if [ "${SVLM_GPU_CHECK_NCU:-1}" = 1 ] && [ -n "$NCU" ] && [[ "staged ncu" =~ ${SVLM_GPU_CHECK_BENCH:-.} ]]; then
        step "ncu: kernels of decode steps, products staged" 90 0 env SVLM_CUDA_MATVEC_STAGED=1 \
          scripts/ncu-kernels.sh "$NCU" 2000 300 "$S" bench -m "$M.gguf" --pp 0 --tg 32 --reps 1 --backend cuda
      fi
      [ $have_streams = 1 ] && SVLM_CUDA_MATVEC_STAGED=1 bench "256 streams at 1 fps, cuda, decode products staged" \
        60 bench-streams -m "$M.gguf" --mmproj "$M-mmproj.gguf" --streams 256 "${streams_args[@]}"
    else
      summary+=("SVLM_CUDA_MATVEC_STAGED=1: not benchmarked (its GPU tests did not pass or did not run)")
    fi
    if form_ok SVLM_CUDA_MATVEC_STAGED_K=1 && [ "${SVLM_GPU_CHECK_22B:-1}" = 1 ] && [ -f "$M22.gguf" ]; then
      SVLM_CUDA_MATVEC_STAGED_K=1 bench "2.2B text, cuda, K-quant products staged" 45 bench -m "$M22.gguf" \
        --pp 0 --tg 64 --reps 2 --backend cuda
      form_ok together && SVLM_CUDA_MATVEC_STAGED=1 SVLM_CUDA_MATVEC_STAGED_K=1 bench \
        "2.2B text, cuda, every product staged" 45 bench -m "$M22.gguf" --pp 0 --tg 64 --reps 2 --backend cuda
      bench "2.2B text, cuda (again, beside the staged form)" 45 bench -m "$M22.gguf" --pp 0 --tg 64 --reps 2 \
        --backend cuda
    fi
    # forms measured once and left off (H100, 2026-11-28: one answer's decode 515 tok/s by default
    # then): one kernel a step (538; Q8_0 only), its greedy tokens (f32 and f16 caches) those of the
    # separate kernels; the products' sub-blocks eight at a time (495); the argmax's loads ahead (529)
    if [[ "one kernel a step" =~ ${SVLM_GPU_CHECK_BENCH:-.} ]] && [ -x "$B/tests/test_cuda_pdl" ]; then
      step "GPU test of the one-kernel step (SVLM_CUDA_PERSISTENT=1)" 60 0 bash -c 'SVLM_CUDA_PERSISTENT=1 \
        ctest --test-dir "$1" -R "^test_cuda_pdl\$" -V --timeout 50 >"$1/gpu-tests-persistent.log" 2>&1
        rc=$?
        grep -E "separate kernels|recording of the one-kernel|tests passed|CHECK\(|REQUIRE\(" "$1/gpu-tests-persistent.log"
        exit $rc' _ "$B"
      case $? in
      0) summary+=("one kernel a step, GPU test: passed (equal bit for bit to the separate kernels)") ;;
      125) summary+=("one kernel a step, GPU test: skipped (out of time)") ;;
      *)
        status=1
        summary+=("one kernel a step, GPU test: FAILED ($B/gpu-tests-persistent.log)")
        ;;
      esac
    fi
    for kv in f32 f16; do
      [[ "one kernel a step" =~ ${SVLM_GPU_CHECK_BENCH:-.} ]] || break
      gen_tokens() {
        timeout 60 "$S" generate -m "$M.gguf" -p "the quick brown fox" -n 48 --temp 0 --kv $kv --backend cuda --json \
          2>/dev/null | grep -o '"tokens":\[[^]]*\]'
      }
      one=$(SVLM_CUDA_PERSISTENT=1 gen_tokens) sep=$(SVLM_CUDA_DECODE_AHEAD=0 gen_tokens)
      if [ -n "$one" ] && [ "$one" = "$sep" ]; then
        summary+=("one kernel a step, $kv cache: the same 48 greedy tokens as the separate kernels")
      else
        status=1
        summary+=("one kernel a step, $kv cache: greedy tokens DIFFER from the separate kernels (or none)")
      fi
    done
    SVLM_CUDA_PERSISTENT=1 bench "text, cuda, one kernel a step" 60 bench -m "$M.gguf" --pp 0 --tg 128 \
      --backend cuda
    SVLM_CUDA_MATVEC_AHEAD=1 bench "text, cuda, decode products eight sub-blocks at a time" 60 bench \
      -m "$M.gguf" --pp 0 --tg 128 --backend cuda
    SVLM_CUDA_ARGMAX_AHEAD=1 bench "text, cuda, argmax loads ahead" 60 bench -m "$M.gguf" --pp 0 --tg 128 \
      --backend cuda
    # the measured changes of 2026-11-28 switched back: decode attention's loads after their sums,
    # the output product four warps a row, the encoder's GELU as a pass of its own
    SVLM_CUDA_DECODE_AHEAD=0 bench "text, cuda, decode attention loads after the sums" 60 bench -m "$M.gguf" \
      --pp 0 --tg 128 --backend cuda
    SVLM_CUDA_MATVEC_TALL=0 bench "text, cuda, output product four warps a row" 60 bench -m "$M.gguf" --pp 0 \
      --tg 128 --backend cuda
    SVLM_CUDA_LT_GELU=0 bench "vision encoder, cuda, GELU as a pass" 60 bench --mmproj "$M-mmproj.gguf" \
      --batch 32 --reps 2 --backend cuda
    # the decode step's kernels without programmatic dependent launch (each waits for the one before
    # to end before it starts; default on from compute capability 9.0)
    SVLM_CUDA_PDL=0 bench "text, cuda, no PDL" 60 bench -m "$M.gguf" --pp 0 --tg 128 --backend cuda
    # greedy tokens searched on the host after the logits cross (197 KB a token), as before the
    # argmax kernel
    SVLM_CUDA_ARGMAX=0 bench "text, cuda, logits to the host" 60 bench -m "$M.gguf" --pp 0 --tg 128 --backend cuda
    # a step's q/k/v products and its RoPE + cache stores as two kernels, as before their fusion
    SVLM_CUDA_QKV_ROPE=0 bench "text, cuda, q/k/v and RoPE as two kernels" 60 bench -m "$M.gguf" --pp 0 --tg 128 \
      --backend cuda
    # decode products with one warp per weight row, as before the split (default: up to 4 warps a row)
    SVLM_CUDA_MATVEC_SPLIT=1 bench "text, cuda, one warp per weight row" 60 bench -m "$M.gguf" --pp 0 --tg 128 \
      --backend cuda
    # one answer after 1600 tokens already in the cache (a stream's window), f32 and f16 keys and
    # values: what decode attention over a long window adds to the empty cache's figure
    for kv in f32 f16; do
      bench "text, cuda, after 1600 tokens, $kv cache" 45 bench -m "$M.gguf" --pp 0 --tg 128 --depth 1600 \
        --kv $kv --reps 2 --backend cuda
    done
    # the flash kernel's WMMA form, the default before its mma.sync form (test_cuda_backend checks both)
    SVLM_CUDA_FLASH_MMA=0 bench "vision encoder, cuda, flash on WMMA" 60 bench --mmproj "$M-mmproj.gguf" \
      --batch 32 --reps 2 --backend cuda
    # the encoder's products with their biases and residuals as separate passes (before cuBLASLt)
    SVLM_CUDA_LT=0 bench "vision encoder, cuda, no cuBLASLt epilogues" 60 bench --mmproj "$M-mmproj.gguf" \
      --batch 32 --reps 2 --backend cuda
    # the patch embedding as im2col + GEMM instead of cuDNN's convolution
    SVLM_CUDA_CUDNN=0 bench "vision encoder, cuda, patch embedding without cuDNN" 60 bench \
      --mmproj "$M-mmproj.gguf" --batch 32 --reps 2 --backend cuda
    # the prompt alone on each form, back to back (the last run measured the mma.sync form slower
    # on a 512-token prompt than the run before, while faster on the encoder)
    bench "text prefill, cuda" 60 bench -m "$M.gguf" --pp 512 --tg 0 --backend cuda
    SVLM_CUDA_FLASH_MMA=0 bench "text prefill, cuda, flash on WMMA" 60 bench -m "$M.gguf" --pp 512 --tg 0 \
      --backend cuda
    # an F16 mmproj (published beside the Q8_0 one): f16 operands, and as before (TF32 on f32 copies)
    MF="$B/bench/s256-f16proj"
    if [ ! -f "$MF-mmproj.gguf" ] && { [ -z "${SVLM_GPU_CHECK_BENCH:-}" ] || [[ "F16 mmproj" =~ $SVLM_GPU_CHECK_BENCH ]]; }; then
      step "benchmark model (SmolVLM2-256M shape, F16 mmproj)" 60 60 "$S" mkmodel --arch smolvlm \
        --shape smolvlm2-256m --type q8_0 --mmproj-type f16 --seed 1 -o "$MF" --quiet
    fi
    if [ -f "$MF-mmproj.gguf" ]; then
      bench "vision encoder, cuda, F16 mmproj" 60 bench --mmproj "$MF-mmproj.gguf" --batch 32 --reps 2 --backend cuda
      SVLM_CUDA_ENCODER_F16=0 bench "vision encoder, cuda, F16 mmproj in TF32" 60 bench --mmproj "$MF-mmproj.gguf" \
        --batch 32 --reps 2 --backend cuda
    fi
    if [ -f "$M22.gguf" ]; then
      # its Q4_K and Q6_K rows one element a lane, as before their lane form
      SVLM_CUDA_KQUANT_LANES=0 bench "2.2B text, cuda, K-quants one element a lane" 45 bench -m "$M22.gguf" \
        --pp 0 --tg 64 --reps 2 --backend cuda
      # f16 keys and values: half the device memory a stream holds (897 -> 498 MiB on the null
      # backend), half the attention's reads; answers copy their stream's window in either type
      [ $have_streams = 1 ] && bench "2.2B: 32 streams at 1 fps, cuda, f16 KV" 60 bench-streams -m "$M22.gguf" \
        --mmproj "$M22-mmproj.gguf" --streams 32 "${streams_args[@]}" --kv f16
    fi
    bench "text, cuda, 16 answers decoding together" 60 bench -m "$M.gguf" --pp 0 --tg 64 --decode-batch 16 \
      --reps 1 --backend cuda
    SVLM_CUDA_ARGMAX=0 bench "text, cuda, 16 answers decoding together, logits to the host" 60 bench -m "$M.gguf" \
      --pp 0 --tg 64 --decode-batch 16 --reps 1 --backend cuda
    # the fused decode kernels for all 16 rows of the engine's decode batch (default: up to 8)
    SVLM_CUDA_MATVEC_ROWS=16 bench "text, cuda, 16 answers decoding together, matvec up to 16 rows" 60 \
      bench -m "$M.gguf" --pp 0 --tg 64 --decode-batch 16 --reps 1 --backend cuda
    bench "text, cuda, 64 answers decoding together" 60 bench -m "$M.gguf" --pp 0 --tg 64 --decode-batch 64 \
      --reps 1 --backend cuda
    # more stream configurations: encoder batches of 32 instead of 16 (where the encoder measured
    # fastest), the frames' prefill as before its two changes (the window's rows brought over from
    # the pages at every eviction, one attention launch per stream), fewer streams, STC on one frame
    # at a time (as before its batches).
    # SVLM_GPU_CHECK_STREAMS: entries N:FLAGS, the flags' words joined by commas.
    if [ $have_streams = 1 ]; then
      bench "256 streams at 1 fps, cuda, encoder batches of 32" 60 bench-streams -m "$M.gguf" \
        --mmproj "$M-mmproj.gguf" --streams 256 "${streams_args[@]}" --ingest-batch 32
      SVLM_KV_SHIFT=0 SVLM_CUDA_FLASH_ITEMS=0 bench "256 streams at 1 fps, cuda, rows from the pages, attention per stream" \
        60 bench-streams -m "$M.gguf" --mmproj "$M-mmproj.gguf" --streams 256 "${streams_args[@]}"
      for cfg in ${SVLM_GPU_CHECK_STREAMS:-128: 64:--stc,on,--ingest-batch,1}; do
        n=${cfg%%:*} flags=${cfg#*:}
        flags=${flags//,/ }
        # shellcheck disable=SC2086 # flags are words
        bench "$n streams at 1 fps, cuda ${flags:-(defaults)}" 60 bench-streams -m "$M.gguf" --mmproj "$M-mmproj.gguf" \
          --streams "$n" "${streams_args[@]}" $flags
      done
    fi
  fi
  if [ -f "$M.gguf" ]; then
    # where the time goes: host time per op of decode steps and of 64 streams' lanes, and the GPU
    # time per kernel of decode steps (Nsight Compute: 300 launches after the first 2000, i.e. steps
    # well after the recording) and of an encoder batch; SVLM_GPU_CHECK_NCU=0 skips the latter
    SVLM_CUDA_PROFILE=1 bench "text, cuda, profiled decode" 60 bench -m "$M.gguf" --pp 0 --tg 64 --reps 1 \
      --backend cuda
    if "$S" bench-streams --help >/dev/null 2>&1; then
      SVLM_CUDA_PROFILE=1 bench "64 streams at 1 fps, cuda, profiled ops" 60 bench-streams -m "$M.gguf" \
        --mmproj "$M-mmproj.gguf" --streams 64 --fps 1 --warmup 2 --duration 8 --drain-max 5 --question-tokens 20 \
        --answer-tokens 8 --backend cuda
    fi
    if [ "${SVLM_GPU_CHECK_NCU:-1}" = 1 ] && [ -n "$NCU" ]; then
      step "ncu: kernels of decode steps" 90 0 scripts/ncu-kernels.sh "$NCU" 2000 300 "$S" bench -m "$M.gguf" \
        --pp 0 --tg 32 --reps 1 --backend cuda
      step "ncu: kernels of the vision encoder, batch 32" 90 0 scripts/ncu-kernels.sh "$NCU" 400 400 "$S" bench \
        --mmproj "$M-mmproj.gguf" --batch 32 --reps 2 --backend cuda
    fi
    # SVLM_GPU_CHECK_NSYS=1: GPU time per kernel of a decode run (Nsight Systems, when installed)
    NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
    if [ "${SVLM_GPU_CHECK_NSYS:-0}" = 1 ] && [ -n "$NSYS" ]; then
      step "nsys: kernels of 64 decode steps" 60 0 bash -c '"$1" profile -o "$2/bench/decode" --force-overwrite true \
        "$3" bench -m "$4" --pp 0 --tg 64 --reps 1 --backend cuda >/dev/null 2>&1
        "$1" stats --report cuda_gpu_kern_sum --format table "$2/bench/decode.nsys-rep" 2>/dev/null | head -n 40' \
        _ "$NSYS" "$B" "$S" "$M.gguf"
    fi
    # comparisons measured before (SVLM_GPU_CHECK_AB=1): graphs, flash attention, the host CPU
    if [ "${SVLM_GPU_CHECK_AB:-0}" = 1 ]; then
      SVLM_CUDA_GRAPHS=0 bench "text, cuda, no graphs" 60 bench -m "$M.gguf" --pp 0 --tg 128 --backend cuda
      SVLM_CUDA_GRAPHS=0 bench "text, cuda, 16 answers decoding together, no graphs" 60 bench -m "$M.gguf" \
        --pp 0 --tg 64 --decode-batch 16 --reps 1 --backend cuda
      SVLM_CUDA_FLASH=0 bench "vision encoder, cuda, no flash attention" 60 bench --mmproj "$M-mmproj.gguf" \
        --batch 32 --reps 2 --backend cuda
      SVLM_CUDA_FLASH=0 bench "text, cuda, prefill without flash attention" 60 bench -m "$M.gguf" --pp 512 \
        --tg 0 --backend cuda
      bench "text, cpu ($jobs threads)" 90 bench -m "$M.gguf" --pp 512 --tg 128 --backend cpu --threads "$jobs"
    fi
  fi
else
  summary+=("benchmarks: skipped (no $S)")
fi

memcheck test_cuda_backend 90
memcheck test_cuda_data 60
memcheck test_cuda_stream 60
# the forms not yet measured whose GPU tests passed: the decode steps' test under memcheck with them
# on (the tests above run with the defaults)
forms=()
for f in "${UNMEASURED_OK[@]}"; do [ "$f" = together ] || forms+=("$f"); done
if [ ${#forms[@]} -gt 0 ]; then
  summary+=("memcheck test_cuda_pdl below ran with ${forms[*]}")
  for f in "${forms[@]}"; do export "${f?}"; done
  memcheck test_cuda_pdl 60
  for f in "${forms[@]}"; do unset "${f%%=*}"; done
fi

# Last, what budget is left: why the decode kernels and a prompt's flash kernel take the time they
# do (Nsight Compute's speed-of-light, occupancy and warp-stall sections for one launch of each;
# SVLM_GPU_CHECK_NCU=0 skips them)
if [ -x "$S" ] && [ -f "$M.gguf" ] && [ "${SVLM_GPU_CHECK_NCU:-1}" = 1 ] && [ -n "${NCU:-}" ]; then
  ncu_detail() { # LABEL REGEX SKIP ARGS...: the sections for one launch of the kernels matching REGEX
    local label=$1 re=$2 skip=$3
    shift 3
    step "ncu detail: $label" 40 0 bash -c '"$1" --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats -k "regex:$2" --launch-skip "$3" --launch-count 1 "${@:4}" 2>/dev/null |
      grep -E "^  [A-Za-z]|Duration|Registers|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles|Throughput|Block Size|Grid Size" |
      head -n 40' _ "$NCU" "$re" "$skip" "$@"
  }
  for kern in swiglu_kernel matvec_kernel decode_kernel qkv_rope_kernel; do
    ncu_detail "$kern (decode)" "$kern" 60 "$S" bench -m "$M.gguf" --pp 0 --tg 32 --reps 1 --backend cuda
  done
  ncu_detail "mma_kernel (512-token prompt)" mma_kernel 10 "$S" bench -m "$M.gguf" --pp 512 --tg 0 --reps 1 \
    --backend cuda
fi

echo
echo "==== summary ($(elapsed)s)"
for line in "${summary[@]}"; do echo "$line"; done
echo "gpu-check: $([ $status = 0 ] && echo OK || echo FAILED)"
if [ -n "$tee_pid" ]; then # let tee write the last lines before the script ends
  exec >&- 2>&-
  wait "$tee_pid"
fi
exit $status
