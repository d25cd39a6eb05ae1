#!/usr/bin/env bash
# Serve a recording, played in real time. As a recording no frame is dropped (it falls behind the
# clock when the engine is slower); --live makes it a camera's stand-in (the oldest frames dropped):
#   demos/replay.sh [VIDEO [--live]]   (default: ../shared/media/people_indoor_one_by_one.mp4, else a
#   test pattern)
source "$(dirname "$0")/common.sh"
VIDEO=${1:-$REPO/../shared/media/people_indoor_one_by_one.mp4}
if [ -f "$VIDEO" ]; then
  start_server replay "$VIDEO" "${@:2}"
else
  echo "replay: $VIDEO not found, serving the built-in test pattern" >&2
  start_server replay "pattern:size=640x360,rate=25,duration=0,live"
fi
