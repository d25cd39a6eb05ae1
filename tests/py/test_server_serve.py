"""`svlm serve` itself: flag errors, the non-loopback rule, and a real run on a generated
test-pattern source: /health, a JPEG snapshot of a real frame, the stream's counters rising,
the page, and a clean exit on SIGINT."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import http, skip  # noqa: E402


def main():
    svlm = os.environ.get("SVLM_BIN") or skip("SVLM_BIN is not set")
    r = subprocess.run([svlm, "serve", "--help"], capture_output=True)
    if r.returncode == 2 and b"not built" in r.stderr:
        skip("built without libwebsockets/jansson")
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "m.gguf")
        open(model, "wb").write(b"GGUF")
        bad = [([], b"required"), (["-m", model], b"required"),
               (["-m", model, "--mmproj", "/nonexistent.gguf"], b"cannot read"),
               (["-m", model, "--mmproj", model, "--listen", "nonsense"], b"HOST:PORT"),
               (["-m", model, "--mmproj", model, "--listen", "0.0.0.0:0"], b"token"),
               (["-m", model, "--mmproj", model, "--source", "noequals"], b"NAME=URI"),
               (["-m", model, "--mmproj", model, "--bogus"], b"unknown option")]
        for args, what in bad:
            r = subprocess.run([svlm, "serve"] + args, capture_output=True, timeout=30)
            assert r.returncode in (1, 2) and what in r.stderr, (args, r)
        cfg = os.path.join(tmp, "c.json")
        open(cfg, "w").write('{"max_clients": "many"}')
        r = subprocess.run([svlm, "serve", "-m", model, "--mmproj", model, "--config", cfg], capture_output=True)
        assert r.returncode == 2 and b"max_clients" in r.stderr, r
        open(cfg, "w").write(json.dumps({"max_clients": 10, "listen": "127.0.0.1:0",
                                         "sources": {"cam": "pattern:size=160x120,rate=10,duration=0,live"}}))
        p = subprocess.Popen([svlm, "serve", "-m", model, "--mmproj", model, "--config", cfg],
                             stderr=subprocess.PIPE)
        try:
            line = p.stderr.readline().decode()
            assert "http://127.0.0.1:" in line, line
            base = line.split("http://")[1].split("/")[0]
            base = "http://" + base
            deadline = time.time() + 20
            while True:
                st, hd, body = http(base + "/v1/streams/cam/snapshot.jpg")
                if st == 200 or time.time() > deadline:
                    break
                time.sleep(0.2)
            assert st == 200 and body[:2] == b"\xff\xd8", (st, body[:50])
            s1 = json.loads(http(base + "/v1/streams/cam")[2])
            time.sleep(1.5)
            s2 = json.loads(http(base + "/v1/streams/cam")[2])
            assert s2["frames_in"] > s1["frames_in"] and s2["state"] == "running", (s1, s2)
            assert json.loads(http(base + "/health")[2])["streams"] == 1
            st, _, page = http(base + "/")
            assert st == 200 and b"svlm" in page
        finally:
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=30)
        assert rc == 0, rc
    print("svlm serve ok")


if __name__ == "__main__":
    main()
