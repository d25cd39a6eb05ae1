"""Shared helpers of the ingest tests (imported by test_ingest_*.py), and, run on its own, a
test of `svlm frames --out` PNGs: the built-in pattern paints each frame's number as 16
black/white cells, which must read back as the frame numbers the sampler chose."""
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SVLM = os.environ.get("SVLM_BIN", "")
DATA = os.environ.get("SVLM_TEST_DATA", os.path.join(os.path.dirname(__file__), "../../../shared"))
MEDIA = os.path.join(DATA, "media")

failures = []


def svlm_env():
    """Environment for svlm runs. Under LeakSanitizer, GLib's library constructor leaves one
    block that GStreamer's first use exposes; it is not ours, so it is suppressed."""
    env = dict(os.environ)
    supp = os.path.join(tempfile.gettempdir(), "svlm-ingest-lsan.supp")
    with open(supp, "w") as f:
        f.write("leak:libglib-2.0.so\n")
    env["LSAN_OPTIONS"] = "suppressions=" + supp + (":" + env["LSAN_OPTIONS"] if env.get("LSAN_OPTIONS") else "")
    return env


ENV = svlm_env()


def run_svlm(*args, timeout=60):
    return subprocess.run([SVLM, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def finish(name):
    if failures:
        print(f"{name}: {len(failures)} failed", flush=True)
        sys.exit(1)
    print(f"{name}: all passed", flush=True)
    sys.exit(0)


def skip(why):
    print("SKIP:", why, flush=True)
    sys.exit(77)


def need_svlm():
    if not SVLM or not os.path.exists(SVLM):
        skip("SVLM_BIN not set")


def tmpdir(tag):
    base = os.environ.get("SVLM_TEST_TMP", tempfile.gettempdir())
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=tag + "-", dir=base)


def run_frames(source, *args, timeout=60):
    """Runs `svlm frames SOURCE --json ARGS`; returns (rc, frames, events, stderr)."""
    p = run_svlm("frames", source, "--json", *args, timeout=timeout)
    frames, events = [], []
    for line in p.stdout.splitlines():
        obj = json.loads(line)
        (events if "event" in obj else frames).append(obj)
    return p.returncode, frames, events, p.stderr


class Client:
    """svlm frames --json in the background; lines arrive on a queue."""

    def __init__(self, url, *args):
        self.proc = subprocess.Popen([SVLM, "frames", url, "--json", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def wait_for(self, pred, timeout):
        """Collects lines until pred(line) holds; returns that line or None on timeout/exit."""
        end = time.time() + timeout
        while time.time() < end:
            try:
                obj = self.lines.get(timeout=max(0.01, end - time.time()))
            except queue.Empty:
                break
            if obj is None:
                return None
            self.seen.append(obj)
            if pred(obj):
                return obj
        return None

    def frames_after(self, n, timeout):
        count = [0]

        def pred(o):
            count[0] += "index" in o
            return count[0] >= n
        return self.wait_for(pred, timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.wait_for(lambda o: False, 1)
        return rc, self.proc.stderr.read()


def backends():
    """The backends this svlm build has: a build without one says "built without"."""
    have = []
    for be in ("ffmpeg", "gst"):
        p = run_svlm("probe", "/dev/null", "--backend", be, "--open-timeout", "5", timeout=30)
        if "built without" not in p.stderr:
            have.append(be)
    return have


def ffmpeg_cli():
    from shutil import which
    return which("ffmpeg")


def make_clip(path, *args):
    """ffmpeg -f lavfi ... ARGS PATH (quiet); returns path."""
    cmd = ["ffmpeg", "-v", "error", "-y", *args, path]
    subprocess.run(cmd, check=True, timeout=120)
    return path


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (a test camera's own requests are noise)."""

    def log_message(self, *args):
        pass


def serve_http(handler, path):
    """A threaded HTTP server for handler on 127.0.0.1 (a free port), running in the background:
    (server, the URL of path on it). server.shutdown() stops it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}{path}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_png(path):
    """(width, height, rows of RGB bytes) for 8-bit RGB PNGs, any filter."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        assert zlib.crc32(typ + body) & 0xFFFFFFFF == crc, "bad chunk CRC"
        if typ == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype == 2, "expected RGB8"
        elif typ == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride, rows, prev = 3 * w, [], bytearray(3 * w)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def read_cells(rows, n_bits, cell_w, y):
    """Reads n_bits black/white cells (most significant first) at row y, cell centres."""
    v = 0
    for bit in range(n_bits):
        x = bit * cell_w + cell_w // 2
        px = rows[y][3 * x:3 * x + 3]
        v = (v << 1) | (1 if sum(px) > 3 * 128 else 0)
    return v


if __name__ == "__main__":
    need_svlm()
    out = tmpdir("ingest-png")
    # 640x480 at 25 fps for 4 s, sampled at 2 fps: frames 0, 13 (0.52 s >= 0.5), 25, 38, ...
    rc, frames, events, err = run_frames("pattern:size=640x480,rate=25,duration=4", "--fps", "2", "--out", out)
    check(rc == 0, f"pattern run failed: {err}")
    check(len(frames) == 8, f"expected 8 frames at 2 fps over 4 s, got {len(frames)}")
    for i, fr in enumerate(frames):
        expected_n = round(fr["pts"] * 25)
        check(abs(fr["pts"] - i * 0.5) <= 0.04 + 1e-6, f"frame {i} pts {fr['pts']} not within one frame of {i * 0.5}")
        w, h, rows = read_png(fr["file"])
        check((w, h) == (512, 384), f"PNG size {w}x{h}, expected 512x384 (longest edge 512)")
        check((fr["width"], fr["height"]) == (w, h), "JSON size differs from the PNG")
        n = read_cells(rows, 16, 512 // 16, 4)
        check(n == expected_n, f"frame {i}: painted number {n}, expected {expected_n} (pts {fr['pts']})")
    check(events and events[-1]["event"] == "stats", "last line is the stats event")
    check(any(e["event"] == "eos" for e in events), "an eos event")
    finish("ingest_common")
