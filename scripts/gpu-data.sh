#!/usr/bin/env bash
# Copies what the GPU tests read from the shared test data (SVLM_TEST_DATA, default ../shared) into
# gpu-data/ (ignored by git), for a GPU machine that has no ../shared: carry gpu-data there and run
#   SVLM_TEST_DATA=$PWD/gpu-data scripts/gpu-check.sh
# (about 28 MB: models/stories260K.gguf and the stories260K, stories260K-stream and vision-tiny
# fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${SVLM_TEST_DATA:-../shared}
if [ ! -f "$src/models/stories260K.gguf" ]; then
  echo "gpu-data.sh: no $src/models/stories260K.gguf (set SVLM_TEST_DATA to the shared/ folder)" >&2
  exit 1
fi
rm -rf gpu-data
mkdir -p gpu-data/models gpu-data/fixtures
cp "$src/models/stories260K.gguf" gpu-data/models/
for f in stories260K stories260K-stream vision-tiny; do
  cp -r "$src/fixtures/$f" gpu-data/fixtures/
done
chmod -R u+w gpu-data
echo "gpu-data: $(du -sh gpu-data | cut -f1)"
