"""A live stream whose data keeps arriving but whose frames all fail to decode (a camera sending
damaged H.264) must trip the watchdog like a silent server: a stall event that says the frames
failed to decode, then a reconnect. Served over HTTP from 127.0.0.1 in real time: 2 s of good
frames, then frames cut short (FFmpeg conceals and flags every one of them: none is delivered)."""
import os
import time

from test_ingest_common import (Client, QuietHandler, backends, check, ffmpeg_cli, finish, make_clip, need_svlm,
                                serve_http, skip, tmpdir)

need_svlm()
if not ffmpeg_cli():
    skip("the ffmpeg CLI is needed to make the test stream")
if "ffmpeg" not in backends():
    # (the GStreamer backend shows concealed frames as frames: only FFmpeg flags them damaged)
    skip("svlm was built without FFmpeg")
T = tmpdir("ingest-damaged")
RATE, GOOD_S, TOTAL_S = 25, 2, 40


def damaged_frames():
    """The stream's frames (H.264 Annex B, one access unit each): GOOD_S s intact, then every frame's
    slice cut to its first 30 %: the decoder conceals the missing part and flags each one damaged."""
    src = f"testsrc=size=160x120:rate={RATE}:duration={TOTAL_S}"
    es = make_clip(os.path.join(T, "clip.h264"), "-f", "lavfi", "-i", src, "-c:v", "libx264", "-g", str(RATE),
                   "-bf", "0", "-pix_fmt", "yuv420p", "-f", "h264")
    data = open(es, "rb").read()
    starts, i = [], 0
    while (j := data.find(b"\x00\x00\x01", i)) >= 0:
        starts.append(j)
        i = j + 3
    frames, unit = [], b""
    for k, s in enumerate(starts):
        nal = data[s:starts[k + 1] if k + 1 < len(starts) else len(data)]
        if nal[3] & 31 in (1, 5):  # a slice (one per frame here) ends the access unit
            if len(frames) >= GOOD_S * RATE:
                nal = nal[:max(12, len(nal) * 3 // 10)]
            frames.append(unit + nal)
            unit = b""
        else:  # SPS, PPS, SEI stay intact
            unit += nal
    return frames


FRAMES = damaged_frames()


class Camera(QuietHandler):
    """Each connection gets the stream from its start, a frame every 1/RATE s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "video/h264")
        self.end_headers()
        t0 = time.monotonic()
        try:
            for n, frame in enumerate(FRAMES):
                wait = t0 + n / RATE - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.wfile.write(frame)
                self.wfile.flush()
        except OSError:
            pass  # the client went away


server, url = serve_http(Camera, "/cam.h264")
try:
    c = Client(url, "--live", "--backend", "ffmpeg", "--fps", "5", "--stall-timeout", "1.5")
    check(c.frames_after(3, 15), f"no frames from the good start of the stream: {c.seen[-3:]}")
    t0 = time.time()
    stall = c.wait_for(lambda o: o.get("event") == "stall", 15)
    # the good frames end about 2 s in; the watchdog fires 1.5 s later (room for a loaded machine)
    check(stall and time.time() - t0 <= 12,
          f"damaged frames kept the watchdog quiet ({time.time() - t0:.1f} s): {c.seen[-3:]}")
    detail = (stall or {}).get("detail", "")
    print("stall after", round(time.time() - t0, 1), "s:", detail, flush=True)
    check("failed to decode" in detail, f"the stall does not say the frames failed to decode: {detail!r}")
    check(c.wait_for(lambda o: o.get("event") == "reconnect", 15), f"no reconnect after the stall: {c.seen[-3:]}")
    check(c.frames_after(2, 15), "no frames after the reconnect")
    rc, err = c.stop()
    check(rc == 0, f"rc {rc} {err[-300:]}")
finally:
    server.shutdown()

finish("ingest_damaged")
