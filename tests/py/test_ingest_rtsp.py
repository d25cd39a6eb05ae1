"""RTSP against a real server (tests/tools/rtsp_server.c, gst-rtsp-server on 127.0.0.1, built
here with cc and pkg-config): TCP and UDP through both backends, end-to-end latency read
from the wall clock the server paints into each frame, a killed and restarted server
(reconnect, frames again), a frozen server (SIGSTOP: the watchdog fires) and a refused login."""
import os
import signal
import statistics
import subprocess
import time

from test_ingest_common import (MEDIA, Client, backends, check, finish, free_port, need_svlm, read_cells, read_png,
                                run_frames, skip, tmpdir)

need_svlm()
BACKENDS = backends()
if not BACKENDS:
    skip("svlm was built without FFmpeg and GStreamer")
T = tmpdir("ingest-rtsp")
SERVER = os.path.join(T, "rtsp_server")
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "rtsp_server.c")
try:
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "gstreamer-rtsp-server-1.0", "gstreamer-rtsp-1.0", "gstreamer-1.0"],
                           capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["cc", "-O1", "-o", SERVER, SRC, *flags], check=True, capture_output=True, timeout=120)
except (OSError, subprocess.CalledProcessError) as e:
    skip(f"cannot build the RTSP test server (gst-rtsp-server dev files?): {e}")
CLIP = os.path.join(MEDIA, "tears_of_steel_10s_cuts.mp4")


class Server:
    def __init__(self, *args, port=None):
        self.port = port or free_port()
        self.args = args
        self.start()

    def start(self):
        self.proc = subprocess.Popen([SERVER, "--port", str(self.port), *self.args], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"rtsp_server did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def latencies_ms(frames):
    """Arrival wall clock minus the server's painted send time, for each frame."""
    out = []
    for f in frames:
        _, _, rows = read_png(f["file"])
        sent = read_cells(rows, 24, 13, 16)
        out.append(((int(round(f["wall"] * 1000)) - sent) % (1 << 24)))
    return out


# ---- TCP and UDP, both backends, latency ------------------------------------------------------
stamp = Server("--stamp")
figures = {}
try:
    for be in BACKENDS:
        for transport in ("tcp", "udp"):
            out = os.path.join(T, f"lat-{be}-{transport}")
            tag = f"{be}/{transport}"
            t0 = time.time()
            rc, frames, events, err = run_frames(stamp.url, "--backend", be, "--transport", transport, "--fps", "0",
                                                 "--max-frames", "40", "--out", out, timeout=30)
            check(rc == 0 and len(frames) == 40, f"{tag}: rc {rc}, {len(frames)} frames: {err[-300:]}")
            check(all((f["width"], f["height"]) == (320, 240) for f in frames), f"{tag}: frame size")
            check(all(b["pts"] >= a["pts"] for a, b in zip(frames, frames[1:])), f"{tag}: pts went backwards")
            if len(frames) == 40:
                # pts come from RTP timestamps at 30 fps: steps of about one frame interval or more
                # (a dropped or lost frame). The server stamps frames from its clock, so a loaded
                # machine gives fractional steps: only steps far below one interval are wrong.
                steps = [(b["pts"] - a["pts"]) * 30 for a, b in zip(frames, frames[1:])]
                bad = [round(x, 2) for x in steps[10:] if x < 0.5]
                check(not bad, f"{tag}: pts steps far below the 1/30 s frame interval: {bad}")
                drops = sum(e.get("count", 0) for e in events if e["event"] == "drop")
                check(sum(round(x) for x in steps) - 39 <= drops + 6, f"{tag}: more frames missing than dropped ({drops})")
                lat = latencies_ms(frames[10::3])  # the first frames can be a burst of buffered ones
                med = statistics.median(lat)
                figures[tag] = (med, min(lat), max(lat), time.time() - t0)
                check(0 <= med < 2000, f"{tag}: median latency {med} ms")  # a sanity bound; the figure is printed
    # the default settings: 1 frame per second, longest edge 512 (a 320x240 stream is not enlarged)
    for be in BACKENDS:
        out = os.path.join(T, f"lat-{be}-default")
        rc, frames, _, err = run_frames(stamp.url, "--backend", be, "--max-frames", "3", "--out", out, timeout=30)
        check(rc == 0 and len(frames) == 3, f"{be} default: rc {rc} {err[-200:]}")
        if len(frames) == 3:
            check(all(abs(b["wall"] - a["wall"] - 1.0) < 0.5 for a, b in zip(frames, frames[1:])), f"{be} default: not 1 frame per second")
            lat = latencies_ms(frames[1:])
            figures[f"{be}/default"] = (statistics.median(lat), min(lat), max(lat), 0)
    for tag, (med, lo, hi, took) in figures.items():
        print(f"latency {tag}: median {med:.0f} ms (min {lo}, max {hi})" + (f", run {took:.1f} s" if took else ""), flush=True)

    # ---- a frozen server: the watchdog notices, and frames flow again after it thaws -----------
    for be in BACKENDS:
        c = Client(stamp.url, "--backend", be, "--fps", "5", "--stall-timeout", "1.5", "--transport", "tcp")
        ok = c.frames_after(3, 15)
        check(ok, f"frozen/{be}: no frames before freezing")
        stamp.proc.send_signal(signal.SIGSTOP)
        t0 = time.time()
        stall = c.wait_for(lambda o: o.get("event") == "stall", 12)
        # 1.5 s watchdog; the upper bound leaves room for a loaded 2-core CI machine
        check(stall and 1.3 <= time.time() - t0 <= 10, f"frozen/{be}: no stall event ({time.time() - t0:.1f} s)")
        stamp.proc.send_signal(signal.SIGCONT)
        rec = c.wait_for(lambda o: o.get("event") == "reconnect", 15)
        check(rec, f"frozen/{be}: no reconnect after the server thawed")
        check(c.frames_after(2, 10), f"frozen/{be}: no frames after the reconnect")
        rc, err = c.stop()
        check(rc == 0, f"frozen/{be}: rc {rc} {err[-300:]}")
finally:
    stamp.stop()

# ---- a killed server, restarted on the same port: reconnect, frames again ----------------------
if os.path.exists(CLIP):
    for be in BACKENDS:
        srv = Server("--file", CLIP)
        try:
            # FFmpeg joins this stream mid-GOP and shows nothing until the next key frame (~3 s
            # into the clip), so the watchdog keeps its default of 5 s here
            c = Client(srv.url, "--backend", be, "--fps", "5", "--transport", "tcp")
            check(c.frames_after(3, 15), f"restart/{be}: no frames from the clip server")
            srv.proc.kill()
            srv.proc.wait()
            disc = c.wait_for(lambda o: o.get("event") in ("disconnect", "stall"), 8)
            check(disc, f"restart/{be}: the dead server went unnoticed")
            srv.start()
            rec = c.wait_for(lambda o: o.get("event") == "reconnect", 15)
            check(rec and rec.get("attempts", 0) >= 1, f"restart/{be}: no reconnect event: {c.seen[-3:]}")
            check(c.frames_after(3, 15), f"restart/{be}: no frames after the reconnect")
            pts = [o["pts"] for o in c.seen if "index" in o]
            check(all(b >= a for a, b in zip(pts, pts[1:])), f"restart/{be}: pts went backwards across the reconnect")
            rc, err = c.stop()
            check(rc == 0, f"restart/{be}: rc {rc} {err[-300:]}")
        finally:
            srv.stop()
else:
    print("no ../shared/media: the restart test serves nothing and is skipped", flush=True)

# ---- login --------------------------------------------------------------------------------------
auth = Server("--stamp", "--user", "viewer", "--pass", "s3cret")
try:
    for be in BACKENDS:
        rc, frames, _, err = run_frames(auth.url, "--backend", be, "--max-frames", "1", "--open-timeout", "5", timeout=30)
        check(rc == 1 and ("login" in err or "Unauthorized" in err or "authoriz" in err.lower()), f"login/{be}: rc {rc} {err[-300:]!r}")
        check("s3cret" not in err, f"login/{be}: the password leaked into a message")
        good = auth.url.replace("rtsp://", "rtsp://viewer:s3cret@")
        rc, frames, _, err = run_frames(good, "--backend", be, "--max-frames", "2", timeout=30)
        check(rc == 0 and len(frames) == 2, f"login/{be} with credentials: rc {rc} {err[-300:]}")
        bad = auth.url.replace("rtsp://", "rtsp://viewer:wrong@")
        rc, frames, _, err = run_frames(bad, "--backend", be, "--max-frames", "1", "--open-timeout", "5", timeout=30)
        check(rc == 1 and "wrong" not in err, f"login/{be} wrong password: rc {rc} {err[-300:]!r}")
finally:
    auth.stop()

finish("ingest_rtsp")
