"""`svlm serve` itself: flag errors, the non-loopback rule, and `svlm serve --demo` as a fresh
machine runs it (the random-weight model generated into an empty cache folder, a config file,
a test-pattern source): /health, a JPEG snapshot of a real frame, the stream's counters rising,
the page, the stand-in flag the page's banner shows, an answer over websocket and over the
OpenAI endpoint, a second start reusing the cached model, and a clean exit on SIGINT."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import http, recv_json, until, skip  # noqa: E402

try:
    import websockets
except ImportError:
    skip("python3-websockets is not installed")


def start(svlm, args):
    p = subprocess.Popen([svlm, "serve"] + args, stderr=subprocess.PIPE)
    log = ""
    while "http://127.0.0.1:" not in log and "http://localhost:" not in log:
        line = p.stderr.readline().decode()
        assert line, "svlm serve did not start: " + log
        log += line
    base = "http://" + log.split("http://")[1].split("/")[0]
    return p, base, log


async def ask_ws(base):
    async with websockets.connect(base.replace("http://", "ws://") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "id": 1, "version": 1}))
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["stand_in"] is True and "random" in hello["model"], hello
        await ws.send(json.dumps({"type": "ask", "id": "q", "stream": "cam", "question": "What do you see?",
                                  "max_tokens": 8}))
        done, toks = await until(ws, lambda m: m["type"] in ("done", "error"), timeout=30)
        # a random-weight stand-in on a live stream may end an answer at once (0 tokens)
        assert done["type"] == "done" and done["tokens"]["completion"] >= 0 and not done["cancelled"], done
        assert done["text"] == "".join(t["text"] for t in toks if t["type"] == "token")
        return done


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
               (["-m", model, "--mmproj", model, "--live"], b"--live applies to the --source before it"),
               (["-m", model, "--mmproj", model, "--replay", "--source", "a=pattern:"], b"--replay applies"),
               (["-m", model, "--mmproj", model, "--source", "a=pattern:", "--live", "--replay"], b"already"),
               (["-m", model, "--mmproj", model, "--bogus"], b"unknown option"),
               (["-m", model, "--mmproj", model, "--backend", "tpu"], b"--backend expects"),
               (["-m", model, "--mmproj", model, "--answer-threads", "0"], b"--answer-threads"),
               (["-m", model, "--mmproj", model, "--ingest-batch", "65"], b"--ingest-batch"),
               (["--demo", "-m", model], b"--demo"),
               (["-m", model, "--mmproj", model, "--stc", "maybe"], b"on or off"),
               (["-m", model, "--mmproj", model, "--stc-keep-ratio", "2"], b"keep-ratio"),
               (["-m", model, "--mmproj", model, "--stc-bogus", "1"], b"unknown control 'bogus'"),
               (["-m", model, "--mmproj", model, "--memory-budget", "0"], b"--memory-budget"),
               (["-m", model, "--mmproj", model, "--no-memory", "--memory-dir", tmp], b"--memory-dir"),
               (["-m", model, "--mmproj", model, "--frames-window", "0"], b"--frames-window"),
               (["-m", model, "--mmproj", model, "--kv", "q8"], b"--kv expects f32 or f16"),
               (["-m", model, "--mmproj", model, "--web", tmp], b"has no readable index.html"),
               (["-m", model, "--mmproj", model, "--source", "a b=pattern:"], b"may hold only letters"),
               (["-m", model, "--mmproj", model, "--source", "a=pattern:", "--source", "a=pattern:"],
                b"given twice"),
               (["-m", model, "--mmproj", model, "--allow-origin", "evil.example"], b"--allow-origin expects"),
               (["-m", model, "--mmproj", model, "--listen", "127.0.0.1:0"], b"m.gguf")]
        for args, what in bad:
            r = subprocess.run([svlm, "serve"] + args, capture_output=True, timeout=30)
            assert r.returncode in (1, 2) and what in r.stderr, (args, r)
        # --listen's address is resolved and bound as the server will bind it, before the models
        # load: each failure says why (a name or a foreign address made libwebsockets listen
        # nowhere while svlm printed the page's address; a port in use was a libwebsockets log line)
        token = os.path.join(tmp, "token")
        open(token, "w").write("a-token-for-the-listen-cases")
        os.chmod(token, 0o600)
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        for listen, what in [("127.0.0.1:%d" % held.getsockname()[1], b"already in use"),
                             ("192.0.2.7:8080", b"not an address of this machine"),
                             ("nosuchhost.invalid:8080", b"cannot listen on nosuchhost.invalid"),
                             ("[::1]:8080", b"IPv6 addresses are not supported")]:
            r = subprocess.run([svlm, "serve", "-m", model, "--mmproj", model, "--token-file", token, "--listen",
                                listen], capture_output=True, timeout=30)
            assert r.returncode == 1 and what in r.stderr and b"m.gguf" not in r.stderr, (listen, r)
        held.close()
        # --config: a folder or a missing file, named (a folder read as empty JSON)
        for path, what in [(tmp, b"not a file"), (os.path.join(tmp, "none.json"), b"No such file")]:
            r = subprocess.run([svlm, "serve", "-m", model, "--mmproj", model, "--config", path], capture_output=True)
            assert r.returncode == 2 and b"--config " + path.encode() + b": " + what in r.stderr, r
        cfg = os.path.join(tmp, "c.json")
        open(cfg, "w").write('{"max_clients": "many"}')
        r = subprocess.run([svlm, "serve", "-m", model, "--mmproj", model, "--config", cfg], capture_output=True)
        assert r.returncode == 2 and b"max_clients" in r.stderr, r
        # the stream sections: each bad value is named
        for section, what in [({"stc": {"keep_ratio": 5}}, b"keep-ratio"), ({"stc": {"nosuch": 1}}, b"nosuch"),
                              ({"stc": {"stc": "maybe"}}, b"on or off"), ({"stc": 1}, b"'stc'"),
                              ({"memory": {"budget_mib": "x"}}, b"memory.budget_mib"),
                              ({"memory": {"on": 1}}, b"memory.on"), ({"stream": {"bogus": 1}}, b"stream.bogus"),
                              ({"stream": {"frames_window": 0.5}}, b"stream.frames_window"),
                              ({"stream": {"kv": "q8"}}, b"stream.kv"), ({"stream": {"kv": 16}}, b"stream.kv"),
                              ({"sources": {"a": {"uri": "pattern:", "live": "yes"}}}, b"sources.a.live"),
                              ({"sources": {"a": {"live": True}}}, b"sources.a must be"),
                              ({"sources": {"a": 5}}, b"sources.a must be"),
                              ({"sources": {"a": ""}}, b"c.json: sources.a: a source needs"),
                              ({"sources": {"n" * 70: "pattern:"}}, b"c.json: sources.nnnn"),
                              ({"web": tmp}, b"has no readable index.html"),
                              ({"allowed_origins": [5]}, b"allowed_origins holds strings"),
                              ({"allowed_origins": ["a,b"]}, b"--allow-origin expects")]:
            open(cfg, "w").write(json.dumps(section))
            r = subprocess.run([svlm, "serve", "-m", model, "--mmproj", model, "--config", cfg], capture_output=True)
            assert r.returncode == 2 and what in r.stderr, (section, r)
        # a source the engine cannot open: the config file and the source named, the password not
        open(cfg, "w").write(json.dumps({"sources": {"cam": "rtps://bob:secret@cam/x"}}))
        r = subprocess.run([svlm, "serve", "--demo", "--cache-dir", os.path.join(tmp, "cache0"), "--config", cfg,
                            "--listen", "127.0.0.1:0"], capture_output=True, timeout=120)
        assert (r.returncode == 1 and b"c.json: sources.cam (rtps://***@cam/x): unknown URI scheme" in r.stderr
                and b"secret" not in r.stderr), r
        open(cfg, "w").write(json.dumps({"max_clients": 10, "listen": "127.0.0.1:0",
                                         "sources": {"cam": "pattern:size=160x120,rate=10,duration=0,live"},
                                         "stc": {"stc": "on", "keep-ratio": 0.3, "cache": 1},
                                         "memory": {"on": True, "budget_mib": 8, "tokens": 32},
                                         "stream": {"frames_window": 6, "queue": 3, "answer_threads": 4,
                                                    "kv": "f32"}}))
        cache = os.path.join(tmp, "cache")
        t0 = time.time()
        p, base, log = start(svlm, ["--demo", "--cache-dir", cache, "--config", cfg])
        try:
            assert "generating" in log and "random-weight stand-in" in p.stderr.readline().decode(), log
            assert sorted(os.listdir(cache)) == ["svlm-demo-tiny-f32-s8080-mmproj.gguf", "svlm-demo-tiny-f32-s8080.gguf"]
            deadline = time.time() + 20
            while True:
                st, hd, body = http(base + "/v1/streams/cam/snapshot.jpg")
                if st == 200 or time.time() > deadline:
                    break
                time.sleep(0.2)
            assert st == 200 and body[:2] == b"\xff\xd8", (st, body[:50])
            s1 = json.loads(http(base + "/v1/streams/cam")[2])
            done = asyncio.run(ask_ws(base))
            time.sleep(1.5)
            s2 = json.loads(http(base + "/v1/streams/cam")[2])
            assert s2["frames_in"] > s1["frames_in"] and s2["state"] == "running" and s2["drops"] == 0, (s1, s2)
            assert s2.get("kv_type") == "f32", s2  # the config's stream.kv (the CPU's default: f16)
            assert json.loads(http(base + "/health")[2])["streams"] == 1
            st, _, page = http(base + "/")
            assert st == 200 and b"svlm" in page and b"random-weight stand-in" in page
            body = json.dumps({"model": "cam", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi?"}]})
            st, _, r = http(base + "/v1/chat/completions", body.encode(), {"Content-Type": "application/json"})
            r = json.loads(r) if st == 200 else r
            assert st == 200 and r["object"] == "chat.completion" and r["usage"]["prompt_tokens"] > 5, (st, r)
            assert (r["usage"]["completion_tokens"] == 0) <= (r["choices"][0]["message"]["content"] == ""), r
        finally:
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=30)
            p.stderr.close()
        assert rc == 0, rc
        print("svlm serve --demo: up and answering %.1f s after start (model generated), first answer %r"
              % (time.time() - t0, done["text"]))
        # the second start finds the model in the cache, and opens its built-in pattern itself; it
        # listens on a name, which must reach the server (libwebsockets took names as interfaces)
        p, base, log = start(svlm, ["--demo", "--cache-dir", cache, "--listen", "localhost:0"])
        try:
            assert "generating" not in log, log
            streams = json.loads(http(base + "/v1/streams")[2])["streams"]
            assert [s["stream"] for s in streams] == ["demo"], streams
        finally:
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=30)
            p.stderr.close()
        assert rc == 0, rc
        # --live / --replay after a --source, and "live" in the config's sources, override the URI's
        # kind (a pattern is live when its URI says "live"): /v1/streams shows each stream's
        cfg3 = os.path.join(tmp, "c3.json")
        pat = "pattern:size=64x48,rate=2,duration=0"
        open(cfg3, "w").write(json.dumps({"sources": {"door": {"uri": pat, "live": True},
                                                      "yard": {"uri": pat + ",live", "live": False}}}))
        p, base, log = start(svlm, ["--demo", "--cache-dir", cache, "--listen", "127.0.0.1:0", "--no-memory",
                                    "--source", "cam=" + pat, "--live", "--source", "rec=" + pat + ",live",
                                    "--replay", "--source", "auto=" + pat + ",live", "--config", cfg3])
        try:
            streams = json.loads(http(base + "/v1/streams")[2])["streams"]
            live = {s["stream"]: s["live"] for s in streams}
            assert live == {"cam": True, "rec": False, "auto": True, "door": True, "yard": False}, streams
        finally:
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=30)
            p.stderr.close()
        assert rc == 0, rc
    print("svlm serve ok")


if __name__ == "__main__":
    main()
