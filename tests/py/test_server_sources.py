"""`svlm serve`'s sources when things go wrong (over the tiny fixture models, a few seconds each):
- a live --source whose camera is down at start starts `reconnecting`, with a line on stderr saying
  why; a recording that cannot be opened still stops the start; --open-timeout and --stall-timeout
  are serve's flags;
- the whole process stopped for 2 s (SIGSTOP: a VM paused, a starved host) under --stall-timeout 1
  leaves a live test pattern running (it cannot stall);
- fps_in is 0 once a stream ended, and falls while a stream delivers nothing;
- a local file opened with {"live": true} plays in real time, not at decode speed;
- SIGINT while an open of a server that accepts and never answers is pending exits at once (not at
  the open timeout)."""
import asyncio
import http.server as http_server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import REPO, Serve, fixture_models, http, recv_json, until, wait_frames, skip  # noqa: E402

try:
    import websockets
except ImportError:
    skip("python3-websockets is not installed")

PAT = "pattern:size=64x48,rate=5,duration=0,live"
DATA = os.environ.get("SVLM_TEST_DATA", os.path.join(REPO, "..", "shared"))
CLIP = os.path.join(DATA, "media", "people_indoor_one_by_one.mp4")
JPEG = os.path.join(DATA, "media", "rocket_falcon9_launchpad.jpg")


def status(base, name):
    st, _, body = http(base + "/v1/streams/" + name)
    assert st == 200, (st, body)
    return json.loads(body)


async def open_live_file(url):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "id": "o", "stream": "rec", "uri": CLIP, "fps": 5,
                                  "options": {"live": True}}))
        m, _ = await until(ws, lambda m: m.get("id") == "o", timeout=30)
        assert m["type"] == "opened", m


async def open_twice(url):
    """Two opens of one name sent at once: one opens, the other is told the name is in use (both
    passed the server's check; the backend's refusal came back as open_failed)."""
    async with websockets.connect(url) as ws:
        for i in (1, 2):
            await ws.send(json.dumps({"type": "open", "id": "d%d" % i, "stream": "dup", "uri": PAT}))
        got = {}
        while len(got) < 2:
            m = await recv_json(ws, 30)
            if m.get("id") in ("d1", "d2"):
                got[m["id"]] = m
        kinds = sorted((m["type"], m.get("code")) for m in got.values())
        assert kinds == [("error", "stream_exists"), ("opened", None)], got
        await ws.send(json.dumps({"type": "close", "id": "c", "stream": "dup"}))
        m, _ = await until(ws, lambda m: m.get("id") == "c", timeout=30)
        assert m["type"] == "closed", m


async def open_pending(url, port):
    ws = await websockets.connect(url)
    await ws.send(json.dumps({"type": "open", "id": "h", "stream": "hang", "uri": "rtsp://127.0.0.1:%d/x" % port}))
    await asyncio.sleep(0.5)
    return ws


def main():
    text, mmproj = fixture_models()
    svlm = os.environ.get("SVLM_BIN") or skip("SVLM_BIN is not set")
    models = ["-m", text, "--mmproj", mmproj, "--no-memory"]
    # a recording that cannot be opened stops the start; the new flags check their values
    for args, rc, what in [(["--source", "rec=/nonexistent/clip.mp4"], 1, b"--source rec=/nonexistent/clip.mp4: no such file"),
                           (["--open-timeout", "0"], 2, b"--open-timeout"),
                           (["--stall-timeout", "-1"], 2, b"--stall-timeout"),
                           (["--max-answer-tokens", "0"], 2, b"--max-answer-tokens"),
                           (["--max-answer-tokens", "4097"], 2, b"--max-answer-tokens")]:
        r = subprocess.run([svlm, "serve"] + models + ["--listen", "127.0.0.1:0"] + args, capture_output=True,
                           timeout=60)
        assert r.returncode == rc and what in r.stderr, (args, r)
    hang = socket.socket()  # accepts (the kernel's backlog) and never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(4)
    s = Serve(models + ["--open-timeout", "20", "--stall-timeout", "1", "--allow-local-open",
                        "--source", "cam=rtsp://127.0.0.1:1/x", "--source", "pat=" + PAT,
                        "--source", "sec=rtsp://bob:hunter2@127.0.0.1:1/y?user=bob&password=hunter3",
                        "--source", "short=" + PAT.replace("duration=0", "duration=1")])
    try:
        log = "".join(s.log)
        assert "--source cam=rtsp://127.0.0.1:1/x: " in log and "the stream is reconnecting" in log, log
        cam = status(s.base, "cam")
        assert cam["state"] == "reconnecting" and cam["fps_in"] == 0, cam
        assert "connection refused" in cam.get("reason", ""), cam  # why it is down, as stderr says
        # the reason quotes the URL without its passwords, as the uri and stderr do
        sec = status(s.base, "sec")
        assert "connection refused" in sec.get("reason", "") and "hunter" not in json.dumps(sec), sec
        assert "hunter" not in log, log
        wait_frames(s.base, "pat", 2)
        s.proc.send_signal(signal.SIGSTOP)
        time.sleep(2)
        s.proc.send_signal(signal.SIGCONT)
        n = status(s.base, "pat")["frames_in"]
        time.sleep(1.5)
        pat = status(s.base, "pat")
        assert pat["state"] == "running" and pat["frames_in"] > n and "reason" not in pat, pat
        short = status(s.base, "short")
        assert short["state"] == "ended" and short["fps_in"] == 0, short
        asyncio.run(open_twice(s.ws_url))
        if os.path.exists(CLIP):  # 139 s: at decode speed it ended within 2 s
            asyncio.run(open_live_file(s.ws_url))
            time.sleep(2)
            rec = status(s.base, "rec")
            assert rec["state"] == "running" and rec["live"] and 1 <= rec["video_time"] < 5, rec
        loop = asyncio.new_event_loop()
        ws = loop.run_until_complete(open_pending(s.ws_url, hang.getsockname()[1]))
        t0 = time.time()
        s.proc.send_signal(signal.SIGINT)
        rest = s.proc.stderr.read().decode()
        rc = s.proc.wait(timeout=30)
        took = time.time() - t0
        s.proc.stderr.close()
        assert rc == 0 and took < 5, (rc, took, rest)
        assert "stalled" not in rest, rest
        loop.run_until_complete(ws.close())
        loop.close()
    except BaseException:
        s.proc.kill()
        s.proc.wait()
        raise
    finally:
        hang.close()
    print("svlm serve sources ok: shutdown with an open pending took %.2f s" % took)


class StallingCamera(http_server.BaseHTTPRequestHandler):
    """An MJPEG camera over HTTP: its first connection sends frames for 1.5 s, then nothing, the
    socket left open; later ones answer nothing at all (a camera that froze)."""
    protocol_version = "HTTP/1.0"
    connections = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        StallingCamera.connections += 1
        if StallingCamera.connections > 1:
            time.sleep(30)
            return
        jpeg = open(JPEG, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for _ in range(6):
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + b"\r\n")
                self.wfile.flush()
                time.sleep(0.25)
            time.sleep(30)
        except OSError:
            pass  # the server went away


async def open_camera(url, uri):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "id": "o", "stream": "mj", "uri": uri, "fps": 4,
                                  "options": {"live": True}}))
        m, _ = await until(ws, lambda m: m.get("id") == "o", timeout=30)
        assert m["type"] == "opened", m


def stalled_camera(models):
    """A camera that froze is `reconnecting`, and its `reason` says it stalled: the stall and the
    disconnect that follows it at once left only "reconnecting", with nothing saying why."""
    if not os.path.exists(JPEG):
        print("stalled camera: skipped, %s is missing" % JPEG)
        return
    cam = http_server.ThreadingHTTPServer(("127.0.0.1", 0), StallingCamera)
    cam.daemon_threads = True
    threading.Thread(target=cam.serve_forever, daemon=True).start()
    with Serve(models + ["--open-timeout", "20", "--stall-timeout", "1"]) as s:
        asyncio.run(open_camera(s.ws_url, "http://127.0.0.1:%d/cam.mjpg" % cam.server_address[1]))
        wait_frames(s.base, "mj", 1)
        deadline = time.time() + 20
        while True:
            mj = status(s.base, "mj")
            if mj["state"] == "reconnecting" or time.time() > deadline:
                break
            time.sleep(0.2)
        assert mj["state"] == "reconnecting" and "stalled" in mj.get("reason", ""), mj
    cam.shutdown()
    print("stalled camera: %s (%s)" % (mj["state"], mj["reason"]))


if __name__ == "__main__":
    main()
    text, mmproj = fixture_models()
    stalled_camera(["-m", text, "--mmproj", mmproj, "--no-memory"])
