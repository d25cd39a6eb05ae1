#!/usr/bin/env bash
# Serve an RTSP camera: demos/rtsp.sh [rtsp://HOST:PORT/PATH]
# Without a URL, a local RTSP server (tests/tools/rtsp_server.c, gst-rtsp-server) streams a
# recording on 127.0.0.1:8554 (SVLM_RTSP_PORT) and svlm serves that; at the recording's end svlm reconnects (an
# RTSP source is live) and the server plays it again from the start.
source "$(dirname "$0")/common.sh"
URL=${1:-}
if [ -z "$URL" ]; then
  CLIP=${SVLM_CLIP:-$REPO/../shared/media/people_indoor_one_by_one.mp4}
  [ -f "$CLIP" ] || { echo "rtsp: no URL given and no recording at $CLIP (set SVLM_CLIP)" >&2; exit 1; }
  TMP=$(mktemp -d)
  # on exit (and Ctrl-C) stop both servers and wait for them, so that nothing outlives the script
  cleanup() { kill ${SERVE_PID:-} ${RTSP_PID:-} 2>/dev/null || true; wait || true; rm -rf "$TMP"; }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  cc -O2 -o "$TMP/rtsp_server" "$REPO/tests/tools/rtsp_server.c" \
    $(pkg-config --cflags --libs gstreamer-rtsp-server-1.0 gstreamer-rtsp-1.0 gstreamer-1.0)
  "$TMP/rtsp_server" --port "${SVLM_RTSP_PORT:-8554}" --file "$CLIP" > "$TMP/ready" &
  RTSP_PID=$!
  for _ in $(seq 50); do grep -q READY "$TMP/ready" 2>/dev/null && break; sleep 0.1; done
  URL=$(awk '/READY/ {print $2}' "$TMP/ready")
  [ -n "$URL" ] || { echo "rtsp: the local RTSP server did not start" >&2; exit 1; }
  echo "rtsp: local RTSP server at $URL (from $CLIP)"
  # not exec: the trap must stop the RTSP server when svlm exits
  "$SVLM" serve "${MODEL_ARGS[@]}" --listen "$LISTEN" --web "$DEMO_DIR/web" --source "cam=$URL" &
  SERVE_PID=$!
  echo "demo: open http://$LISTEN/ in a browser"
  wait "$SERVE_PID"
else
  start_server cam "$URL"
fi
