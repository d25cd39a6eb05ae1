"""A live camera that stops sending in the middle of a frame, its connection left open (an MJPEG
camera over HTTP that hangs mid-JPEG): the watchdog cuts the read off, and the stream must
reconnect and go on. The frame cut short still decoded from the data read so far, which cleared
the stall's reason, and the next read, still interrupted, was taken for a cancel: the stream
ended for good, a camera lost until restarted. Served from 127.0.0.1 at 10 frames a second; the
first connection hangs 2 s in, half a JPEG sent; later connections stream normally."""
import os
import time

from test_ingest_common import (Client, QuietHandler, backends, check, ffmpeg_cli, finish, make_clip, need_svlm,
                                serve_http, skip, tmpdir)

need_svlm()
if not ffmpeg_cli():
    skip("the ffmpeg CLI is needed to make the test frames")
if "ffmpeg" not in backends():
    skip("svlm was built without FFmpeg")
T = tmpdir("ingest-stall-midframe")
RATE = 10


def jpegs():
    """A second of 160x120 test pattern as separate JPEG images."""
    make_clip(os.path.join(T, "f%03d.jpg"), "-f", "lavfi", "-i", f"testsrc=size=160x120:rate={RATE}:duration=1",
              "-q:v", "5")
    return [open(os.path.join(T, n), "rb").read() for n in sorted(os.listdir(T)) if n.endswith(".jpg")]


FRAMES = jpegs()
connections = []


class Camera(QuietHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        connections.append(time.monotonic())
        first = len(connections) == 1
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        t0 = time.monotonic()
        try:
            for n in range(60 * RATE):
                wait = t0 + n / RATE - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                j = FRAMES[n % len(FRAMES)]
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j)
                if first and n == 2 * RATE:  # half a JPEG, then nothing, the socket open
                    self.wfile.write(part + j[:len(j) // 2])
                    self.wfile.flush()
                    time.sleep(20)
                    return
                self.wfile.write(part + j + b"\r\n")
                self.wfile.flush()
        except OSError:
            pass  # the client went away


server, url = serve_http(Camera, "/cam.mjpg")
try:
    c = Client(url, "--live", "--backend", "ffmpeg", "--fps", "5", "--stall-timeout", "1.5")
    check(c.frames_after(3, 15), f"no frames from the start of the stream: {c.seen[-3:]}")
    t0 = time.time()
    lost = c.wait_for(lambda o: o.get("event") in ("disconnect", "stats"), 15)
    check(lost and lost.get("event") == "disconnect", f"the hang did not disconnect the stream: {c.seen[-3:]}")
    print("disconnect after", round(time.time() - t0, 1), "s:", (lost or {}).get("detail"), flush=True)
    check(c.wait_for(lambda o: o.get("event") == "reconnect", 15), f"no reconnect after the hang: {c.seen[-3:]}")
    check(c.frames_after(3, 15), f"no frames after the reconnect: {c.seen[-3:]}")
    check(len(connections) >= 2, f"{len(connections)} connections to the camera")
    rc, err = c.stop()
    check(rc == 0, f"rc {rc} {err[-300:]}")
finally:
    server.shutdown()

finish("ingest_stall_midframe")
