# Shared by the demo scripts: finds svlm and the model files, starts the server, prints the page.
# Models: SVLM_MODEL and SVLM_MMPROJ (GGUF paths); SVLM_LISTEN (127.0.0.1:8080); SVLM_BIN.
set -euo pipefail
DEMO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEMO_DIR")
SVLM=${SVLM_BIN:-}
if [ -z "$SVLM" ]; then
  for c in "$REPO"/build/svlm "$REPO"/build-*/svlm "$(command -v svlm || true)"; do
    if [ -x "$c" ]; then SVLM=$c; break; fi
  done
fi
[ -n "$SVLM" ] || { echo "demo: build svlm first (cmake -S . -B build && cmake --build build)" >&2; exit 1; }
LISTEN=${SVLM_LISTEN:-127.0.0.1:8080}
: "${SVLM_MODEL:?set SVLM_MODEL to the text GGUF (e.g. SmolVLM2-256M-Video-Instruct-Q8_0.gguf)}"
: "${SVLM_MMPROJ:?set SVLM_MMPROJ to the mmproj GGUF (e.g. mmproj-SmolVLM2-256M-Video-Instruct-Q8_0.gguf)}"

# start_server NAME URI [extra serve args...]: runs svlm serve in the foreground.
start_server() {
  local name=$1 uri=$2
  shift 2
  echo "demo: open http://$LISTEN/ in a browser (stream '$name' from $uri)"
  exec "$SVLM" serve -m "$SVLM_MODEL" --mmproj "$SVLM_MMPROJ" --listen "$LISTEN" --web "$DEMO_DIR/web" \
    --source "$name=$uri" "$@"
}
