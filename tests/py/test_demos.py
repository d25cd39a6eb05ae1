"""What a user runs first, as the README gives it: demos/rtsp.sh with no URL and no model (a local
RTSP server from a recording, svlm serve --demo behind it) serves the stream, and Ctrl-C leaves
no process behind; `svlm ask` leaves at Ctrl-C even when the server never answers."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import REPO, skip  # noqa: E402

SVLM = os.environ.get("SVLM_BIN") or skip("SVLM_BIN is not set")
DATA = os.environ.get("SVLM_TEST_DATA", os.path.join(REPO, "..", "shared"))
CLIP = os.path.join(DATA, "media", "tears_of_steel_10s_cuts.mp4")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def built_with_server():
    p = subprocess.run([SVLM, "ask", "--help"], capture_output=True, text=True)
    return "not built with the server libraries" not in p.stderr


def ask_interrupted():
    """A server that takes the connection and never answers: Ctrl-C must still end svlm ask."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = "ws://127.0.0.1:%d" % silent.getsockname()[1]
        p = subprocess.Popen([SVLM, "ask", url, "cam", "hello?"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("svlm ask ignored Ctrl-C while the server said nothing")
        err = p.stderr.read()
        assert rc == 130 and "interrupted" in err, (rc, err)
    print("ask: Ctrl-C with a silent server ends it (rc 130)")


def rtsp_demo():
    if not os.path.exists(CLIP):
        print("SKIP part: no recording at %s" % CLIP)
        return
    if subprocess.run(["pkg-config", "--exists", "gstreamer-rtsp-server-1.0"]).returncode != 0:
        print("SKIP part: gst-rtsp-server is not installed (libgstrtspserver-1.0-dev)")
        return
    listen = "127.0.0.1:%d" % free_port()
    env = dict(os.environ, SVLM_BIN=SVLM, SVLM_LISTEN=listen, SVLM_CLIP=CLIP, SVLM_RTSP_PORT=str(free_port()),
               XDG_CACHE_HOME=os.path.join(os.environ.get("TMPDIR", "/tmp"), "svlm-test-demos-cache"))
    env.pop("SVLM_MODEL", None)
    env.pop("SVLM_MMPROJ", None)
    p = subprocess.Popen(["bash", os.path.join(REPO, "demos", "rtsp.sh")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, frames = time.time() + 60, 0
        while time.time() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen("http://%s/v1/streams" % listen, timeout=2) as r:
                    s = json.loads(r.read())["streams"]
                frames = s[0]["frames_in"] if s else 0
                if frames >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.25)
        assert frames >= 2, "rtsp.sh served no frames (rc %s): %s" % (p.poll(), p.stdout.read() if p.poll() is not None else "")
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        p.wait(timeout=20)
        time.sleep(0.3)
        left = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert not left, "processes left behind after Ctrl-C: %s" % left
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    print("rtsp.sh: served %d frames from the local RTSP server with the stand-in model, Ctrl-C stopped all" % frames)


def main():
    if not built_with_server():
        skip("svlm was built without the server libraries")
    ask_interrupted()
    rtsp_demo()


if __name__ == "__main__":
    main()
