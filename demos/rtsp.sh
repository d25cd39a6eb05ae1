#!/usr/bin/env bash
# Serve an RTSP camera: demos/rtsp.sh [rtsp://HOST:PORT/PATH]
# Without a URL, a local RTSP server (tests/tools/rtsp_server.c, gst-rtsp-server) streams a
# recording in a loop on 127.0.0.1:8554 and svlm serves that.
source "$(dirname "$0")/common.sh"
URL=${1:-}
if [ -z "$URL" ]; then
  CLIP=${SVLM_CLIP:-$REPO/../shared/media/people_indoor_one_by_one.mp4}
  [ -f "$CLIP" ] || { echo "rtsp: no URL given and no recording at $CLIP (set SVLM_CLIP)" >&2; exit 1; }
  TMP=$(mktemp -d)
  trap 'kill "${RTSP_PID:-}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
  cc -O2 -o "$TMP/rtsp_server" "$REPO/tests/tools/rtsp_server.c" \
    $(pkg-config --cflags --libs gstreamer-rtsp-server-1.0 gstreamer-rtsp-1.0 gstreamer-1.0)
  "$TMP/rtsp_server" --port 8554 --file "$CLIP" --loop > "$TMP/ready" &
  RTSP_PID=$!
  for _ in $(seq 50); do grep -q READY "$TMP/ready" 2>/dev/null && break; sleep 0.1; done
  URL=$(awk '/READY/ {print $2}' "$TMP/ready")
  [ -n "$URL" ] || { echo "rtsp: the local RTSP server did not start" >&2; exit 1; }
  echo "rtsp: local RTSP server at $URL (from $CLIP)"
  # not exec: the trap must stop the RTSP server when svlm exits
  "$SVLM" serve -m "$SVLM_MODEL" --mmproj "$SVLM_MMPROJ" --listen "$LISTEN" --web "$DEMO_DIR/web" --source "cam=$URL" &
  SERVE_PID=$!
  echo "demo: open http://$LISTEN/ in a browser"
  trap 'kill "$SERVE_PID" "$RTSP_PID" 2>/dev/null || true; rm -rf "$TMP"' EXIT INT TERM
  wait "$SERVE_PID"
else
  start_server cam "$URL"
fi
