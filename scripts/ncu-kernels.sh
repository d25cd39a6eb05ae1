#!/usr/bin/env bash
# GPU time per kernel of a command, summed by kernel name (Nsight Compute, base units: ns):
#   scripts/ncu-kernels.sh NCU SKIP COUNT COMMAND...
# profiles COUNT kernel launches after the first SKIP (graph nodes count one each).
set -uo pipefail
ncu=$1 skip=$2 count=$3
shift 3
"$ncu" --metrics gpu__time_duration.sum --print-units base --launch-skip "$skip" --launch-count "$count" \
  --csv "$@" 2>/dev/null |
  awk -F'","' '/gpu__time_duration.sum/ {
      name = $5; gsub(/\(anonymous namespace\)::/, "", name); sub(/\(.*/, "", name); sub(/^void /, "", name)
      v = $NF; gsub(/[",]/, "", v)
      t[name] += v; n[name]++; all += v; calls++
    }
    END {
      for (k in t) printf "%10.1f us %5d calls %7.2f us/call  %s\n", t[k] / 1000, n[k], t[k] / n[k] / 1000, k
      printf "%10.1f us in all, %d kernels\n", all / 1000, calls
    }' | sort -rn | head -n 25
