"""A named pipe (FIFO) as the input, through both backends: with no writer, `svlm frames` and
`svlm probe` fail with a clear message once the open timeout has passed (open(2) on a FIFO blocks
in the kernel until a writer comes: it used to hang there for ever); with a writer, its video is
read as from a file."""
import os
import subprocess
import threading
import time

from test_ingest_common import (backends, check, ffmpeg_cli, finish, make_clip, need_svlm, run_frames, run_svlm, skip,
                                tmpdir)

need_svlm()
if not ffmpeg_cli():
    skip("the ffmpeg CLI is needed to make a test clip")
BACKENDS = backends()
if not BACKENDS:
    skip("svlm was built without FFmpeg and GStreamer")
T = tmpdir("ingest-fifo")
FIFO = os.path.join(T, "cam.fifo")
os.mkfifo(FIFO)
CLIP = make_clip(os.path.join(T, "clip.ts"), "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=3", "-c:v",
                 "libx264", "-pix_fmt", "yuv420p", "-f", "mpegts")


def timed(*args):
    """(rc, stderr, seconds) of an svlm run that must not hang: a hang is a failure, not a stuck test."""
    t0 = time.monotonic()
    try:
        p = run_svlm(*args, timeout=20)
        return p.returncode, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return None, "hung (killed after 20 s)", time.monotonic() - t0


for be in BACKENDS:
    for cmd in ("frames", "probe"):
        rc, err, took = timed(cmd, FIFO, "--backend", be, "--open-timeout", "1.5")
        tag = f"no writer/{cmd}/{be}"
        check(rc == 1 and 1.4 <= took <= 10, f"{tag}: rc {rc} after {took:.1f} s (open timeout 1.5 s): {err[-200:]}")
        check("named pipe" in err and "nothing was written" in err, f"{tag}: unclear message: {err[-300:]!r}")

    # a writer that comes after the reader (as a camera's feeder would): the clip's 3 frames at 1 fps
    def feed():
        with open(FIFO, "wb") as w:  # blocks until svlm opens the pipe
            w.write(open(CLIP, "rb").read())

    writer = threading.Thread(target=feed, daemon=True)
    threading.Timer(0.3, writer.start).start()
    rc, frames, _, err = run_frames(FIFO, "--backend", be, "--open-timeout", "10", timeout=30)
    check(rc == 0 and [f["pts"] for f in frames] == [0.0, 1.0, 2.0], f"writer/{be}: rc {rc}, {frames} {err[-300:]}")
    writer.join(10)

finish("ingest_fifo")
