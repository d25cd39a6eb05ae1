"""Harness for the server tests: runs tests/test_server_host (the real server over the
deterministic fake engine of tests/test_server_fake.h) and talks to it. Run on its own it
checks the harness: the host starts, answers /health and exits cleanly (0 also means no
sanitizer report in the ASan build)."""
import asyncio
import json
import os
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def skip(why):
    print("SKIP:", why)
    sys.exit(77)


def host_binary():
    svlm = os.environ.get("SVLM_BIN")
    if not svlm:
        skip("SVLM_BIN is not set")
    path = os.path.join(os.path.dirname(svlm), "tests", "test_server_host")
    if not os.path.exists(path):
        skip("test_server_host was not built (no libwebsockets/jansson?)")
    return path


class Host:
    def __init__(self, token=None, limits=None, streams="cam=pattern:", tick_ms=None, web=True, port=0,
                 allow_origin=None, local_open=False):
        env = dict(os.environ, SVLM_SERVER_HOST="1", SVLM_SERVER_PORT=str(port))
        if token:
            env["SVLM_SERVER_TOKEN"] = token
        if allow_origin:
            env["SVLM_SERVER_ALLOW_ORIGIN"] = allow_origin
        if local_open:
            env["SVLM_SERVER_LOCAL_OPEN"] = "1"
        if limits:
            env["SVLM_SERVER_LIMITS"] = limits
        if streams:
            env["SVLM_SERVER_STREAMS"] = streams
        if tick_ms is not None:
            env["SVLM_FAKE_TICK_MS"] = str(tick_ms)
        if web:
            env["SVLM_SERVER_WEB"] = os.path.join(REPO, "demos", "web")
        self.proc = subprocess.Popen([host_binary()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError("host did not start: %r" % line)
        self.port = int(line.split()[1])
        self.base = "http://127.0.0.1:%d" % self.port
        self.ws_url = "ws://127.0.0.1:%d/v1/ws" % self.port

    def stop(self):
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=60)
        assert rc == 0, "server host exited with %d" % rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop()
        else:
            self.proc.kill()
            self.proc.wait()


def fixture_models():
    """The tiny SmolVLM2 fixture pair (text, mmproj), or a skip."""
    data = os.environ.get("SVLM_TEST_DATA", os.path.join(REPO, "..", "shared"))
    d = os.path.join(data, "fixtures", "vision-tiny", "models")
    text, mmproj = (os.path.join(d, "tiny-smolvlm-%s-f32.gguf" % k) for k in ("text", "mmproj"))
    if not (os.path.exists(text) and os.path.exists(mmproj)):
        skip("the vision-tiny fixture models are absent")
    return text, mmproj


class Serve:
    """`svlm serve` itself (the real engine) on a free loopback port; args after `serve`."""

    def __init__(self, args):
        svlm = os.environ.get("SVLM_BIN") or skip("SVLM_BIN is not set")
        self.proc = subprocess.Popen([svlm, "serve", "--listen", "127.0.0.1:0", "--web",
                                      os.path.join(REPO, "demos", "web")] + args, stderr=subprocess.PIPE)
        self.log = []
        while True:
            line = self.proc.stderr.readline().decode()
            if not line:
                if "not built with the server libraries" in "".join(self.log):
                    self.proc.wait(timeout=10)
                    self.proc.stderr.close()
                    skip("svlm was built without the server (libwebsockets-dev, libjansson-dev)")
                raise RuntimeError("svlm serve did not start: %s" % "".join(self.log))
            self.log.append(line)
            if "http://127.0.0.1:" in line:
                break
        self.base = "http://" + line.split("http://")[1].split("/")[0]
        self.ws_url = self.base.replace("http://", "ws://") + "/v1/ws"

    def stop(self):
        import signal
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=60)
        self.proc.stderr.close()
        assert rc == 0, "svlm serve exited with %d" % rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop()
        else:
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()


def wait_frames(base, stream, n, timeout=30):
    """Waits until the stream has ingested at least n frames; returns its status."""
    import time
    deadline = time.time() + timeout
    while True:
        st, _, body = http(base + "/v1/streams/" + stream)
        s = json.loads(body) if st == 200 else {}
        if s.get("frames_in", 0) >= n:
            return s
        if time.time() > deadline:
            raise AssertionError("stream %s has not ingested %d frames: %r" % (stream, n, s))
        time.sleep(0.1)


def http(url, data=None, headers=None, method=None):
    """Returns (status, headers, body bytes) without raising on HTTP errors."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def parse_prometheus(text):
    """{(name, frozenset(labels)): value}; raises on any line that is not valid exposition."""
    import re
    out = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = line_re.match(line)
        if not m:
            raise ValueError("bad metrics line: %r" % line)
        labels = frozenset(label_re.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def recv_until_closed(sock):
    """Every byte a socket receives until the peer closes it (its timeout raises)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


async def recv_json(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(ws, pred, timeout=10):
    """Receives messages until pred(msg) holds; returns (that message, all before it)."""
    seen = []
    while True:
        m = await recv_json(ws, timeout)
        if pred(m):
            return m, seen
        seen.append(m)


def main():
    with Host() as h:
        status, _, body = http(h.base + "/health")
        assert status == 200, status
        health = json.loads(body)
        assert health["status"] == "ok" and health["streams"] == 1, health
    print("harness ok")


if __name__ == "__main__":
    main()
