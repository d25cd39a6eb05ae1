# Shared by the demo scripts: finds svlm and the model files, starts the server, prints the page.
# Models: SVLM_MODEL and SVLM_MMPROJ (GGUF paths); without them, svlm serve --demo's generated
# random-weight stand-in (answers are noise; the page says so). SVLM_LISTEN (127.0.0.1:8080); SVLM_BIN.
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
if [ -n "${SVLM_MODEL:-}" ] && [ -n "${SVLM_MMPROJ:-}" ]; then
  MODEL_ARGS=(-m "$SVLM_MODEL" --mmproj "$SVLM_MMPROJ")
else
  echo "demo: SVLM_MODEL/SVLM_MMPROJ not set (e.g. SmolVLM2-256M-Video-Instruct-Q8_0.gguf and its mmproj):" \
       "using the random-weight stand-in model" >&2
  MODEL_ARGS=(--demo)
fi

# start_server NAME URI [extra serve args...]: runs svlm serve in the foreground.
start_server() {
  local name=$1 uri=$2
  shift 2
  echo "demo: open http://$LISTEN/ in a browser (stream '$name' from $uri)"
  exec "$SVLM" serve "${MODEL_ARGS[@]}" --listen "$LISTEN" --web "$DEMO_DIR/web" \
    --source "$name=$uri" "$@"
}
