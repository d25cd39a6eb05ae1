"""The web page in headless Chromium, driven through chromedriver's W3C WebDriver over HTTP:
the page loads, shows a stream's frame, and a question typed into it gets a streamed answer
(several growing partial texts seen before the final one)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import Host, skip  # noqa: E402
from test_server_protocol import expected_answer  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port
        self.session = None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def s(self, method, path, body=None):
        return self.call(method, "/session/%s%s" % (self.session, path), body)

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        v = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(v.values()))

    def wait(self, script, timeout=20, what=""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.js(script)
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError("timed out waiting for " + (what or script))


def reconnect(d):
    """The server goes away in the middle of an answer and comes back on the same port: the cut
    answer says so, a question asked meanwhile says it was not sent, and the page reconnects by
    itself and answers again."""
    port = free_port()
    answer = "const a = [...document.querySelectorAll('.answer')].pop(); "
    h = Host(tick_ms=250, port=port)  # 12 tokens: 3 s an answer
    try:
        d.s("POST", "/url", {"url": h.base + "/"})
        d.wait("return document.getElementById('conn').textContent === 'connected'", what="connection")
        d.js("document.getElementById('question').value = 'what is on the screen?';"
             "document.getElementById('ask').click()")
        d.wait(answer + "return a && a.querySelector('.text').textContent.length > 0", what="a first token")
    finally:
        h.proc.kill()
        h.proc.wait()
    cut = d.wait(answer + "return a.classList.contains('error') && a.textContent", what="the cut answer marked")
    assert "connection lost" in cut, cut
    d.wait("return document.getElementById('conn').textContent.startsWith('disconnected')", what="disconnected")
    d.js("document.getElementById('question').value = 'anyone there?'; document.getElementById('ask').click()")
    down = d.wait(answer + "return a.classList.contains('error') && a.textContent", what="the unsent question")
    assert "not sent" in down, down
    with Host(tick_ms=5, port=port):
        d.wait("return document.getElementById('conn').textContent === 'connected'", timeout=30, what="reconnection")
        q = "what is on the screen?"
        d.js("document.getElementById('question').value = arguments[0]; document.getElementById('ask').click()", q)
        final = d.wait(answer + "return a.classList.contains('done') && a.querySelector('.text').textContent",
                       what="an answer after the restart")
        assert final == expected_answer(q), final
    print("browser ok: a cut answer and a question asked while down are shown, the page reconnected")


def main():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="svlm-chromium-")
    drv_proc = subprocess.Popen([DRIVER, "--port=%d" % port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = Driver(port)
    try:
        deadline = time.time() + 20
        while True:
            try:
                if d.call("GET", "/status").get("ready"):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError("chromedriver did not start")
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--user-data-dir=" + profile]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        d.session = d.call("POST", "/session", caps)["sessionId"]
        with Host(tick_ms=40) as h:
            d.s("POST", "/url", {"url": h.base + "/"})
            d.wait("return document.getElementById('conn').textContent === 'connected'", what="connection")
            assert d.js("return !document.getElementById('banner').hidden"), "stand-in banner hidden"
            w = d.wait("const i = document.querySelector('#stream-list img');"
                       "return i && i.complete && i.naturalWidth", what="a frame")
            assert w == 64, w
            # record every text the answer shows while it streams
            d.js("window.seen = []; new MutationObserver(() => { const a = document.querySelector('.answer .text');"
                 " if (a) window.seen.push(a.textContent); }).observe(document.getElementById('chat'),"
                 " {subtree: true, childList: true, characterData: true});")
            q = "what is on the screen?"
            d.s("POST", "/element/%s/value" % d.find("#question"), {"text": q})
            d.s("POST", "/element/%s/click" % d.find("#ask"), {})
            final = d.wait("const a = document.querySelector('.answer');"
                           "return a && a.classList.contains('done') && a.querySelector('.text').textContent",
                           what="the answer")
            assert final == expected_answer(q), final
            seen = [s for s in d.js("return window.seen") if s]
            partial = sorted({s for s in seen if s != final and final.startswith(s)}, key=len)
            assert len(partial) >= 3, "answer did not stream: %r" % seen
            stats = d.js("return document.querySelector('.answer .stats').textContent")
            assert "12 tokens" in stats, stats
        print("browser ok: frame shown, %d partial answers before the final one" % len(partial))
        reconnect(d)
    finally:
        if d.session:
            try:
                d.call("DELETE", "/session/" + d.session)
            except OSError:
                pass
        drv_proc.terminate()
        drv_proc.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
