"""A live stream whose clock leaps an hour forward (an MPEG-TS whose second half is stamped 3600 s
on) goes on from its previous frame, while a replay of the same file keeps its timestamps exactly.
Read with --live, a file arrives as one burst far faster than real time (as an HLS stream starts):
the frames before the leap keep their own times, they are not squashed."""
import os

from test_ingest_common import backends, check, ffmpeg_cli, finish, make_clip, need_svlm, run_frames, skip, tmpdir

need_svlm()
if not ffmpeg_cli():
    skip("the ffmpeg CLI is needed to make the test clip")
BACKENDS = backends()
if not BACKENDS:
    skip("svlm was built without FFmpeg and GStreamer")
T = tmpdir("ingest-leap")
ENC = ("-c:v", "libx264", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p", "-f", "mpegts")
SRC = ("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=3")
first = make_clip(os.path.join(T, "first.ts"), *SRC, *ENC)
second = make_clip(os.path.join(T, "second.ts"), *SRC, *ENC, "-output_ts_offset", "3600")
CLIP = os.path.join(T, "leap.ts")
with open(CLIP, "wb") as f:
    f.write(open(first, "rb").read() + open(second, "rb").read())

for be in BACKENDS:
    # every frame (--fps 0), none dropped (a queue the whole clip fits in)
    rc, frames, _, err = run_frames(CLIP, "--live", "--backend", be, "--fps", "0", "--queue", "1024")
    pts = [f["pts"] for f in frames]
    check(rc == 0 and len(pts) == 150, f"live/{be}: rc {rc}, {len(pts)} frames {err[-300:]}")
    if len(pts) == 150:
        check(all(abs(p - 0.04 * i) < 1e-6 for i, p in enumerate(pts[:75])),
              f"live/{be}: the burst's own times were changed: {pts[:5]} .. {pts[70:75]}")
        step = pts[75] - pts[74]
        check(0 < step < 1, f"live/{be}: the clock's leap passed through: {pts[74]} -> {pts[75]}")
        check(all(0 < b - a < 1 for a, b in zip(pts[75:], pts[76:])), f"live/{be}: after the leap: {pts[75:80]}")

# a replay keeps its timestamps (GStreamer's MPEG-TS demuxer smooths the jump itself: FFmpeg only)
if "ffmpeg" in BACKENDS:
    rc, frames, _, err = run_frames(CLIP, "--replay", "--backend", "ffmpeg", "--fps", "0")
    pts = [f["pts"] for f in frames]
    check(rc == 0 and len(pts) == 150 and abs(pts[75] - 3600.0) < 1e-6,
          f"replay: rc {rc}, {pts[73:77]} (expected the leap to 3600 s) {err[-200:]}")

finish("ingest_leap")
