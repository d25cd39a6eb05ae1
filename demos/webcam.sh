#!/usr/bin/env bash
# Ask questions about your webcam: demos/webcam.sh [/dev/videoN]
source "$(dirname "$0")/common.sh"
DEV=${1:-/dev/video0}
[ -e "$DEV" ] || { echo "webcam: $DEV does not exist (plug in a camera or name another device)" >&2; exit 1; }
start_server webcam "v4l2://$DEV"
