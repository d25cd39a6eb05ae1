#!/usr/bin/python3
"""Issue 8's serving benchmark against the real engine: `svlm serve` with a model pair (default:
the tiny fixture models), one live test-pattern stream sampled at 1 frame per second, N
concurrent websocket clients asking Q questions each (one after another per client). Reports
p50/p99 time to first token as clients see it (send to first `token`), the engine's TTFT and
queue wait from `done`, answer tokens per second (per answer, and over the whole run), and the
frames ingested and dropped meanwhile.

usage: scripts/bench_serve.py [--clients 100] [--questions 5] [--max-tokens 16] [-m TEXT --mmproj MMPROJ]
                              [--json]     (SVLM_BIN: the svlm binary; default build/svlm)"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "py"))
from test_server_harness import Serve, http, parse_prometheus, recv_json, wait_frames  # noqa: E402

import websockets  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def client(url, k, n_questions, max_tokens, out):
    async with websockets.connect(url, max_size=1 << 22) as ws:
        for i in range(n_questions):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "ask", "id": i, "stream": "cam", "max_tokens": max_tokens,
                                      "question": "Client %d, question %d: what is in the picture?" % (k, i)}))
            first = None
            while True:
                m = await recv_json(ws, 120)
                if m["type"] == "token" and first is None:
                    first = time.perf_counter() - t0
                elif m["type"] in ("done", "error"):
                    break
            if m["type"] == "error":
                raise RuntimeError(m)
            out.append((first if first is not None else float("nan"), m))


async def run(url, n_clients, n_questions, max_tokens):
    out = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(url, k, n_questions, max_tokens, out) for k in range(n_clients)))
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("-m", dest="text")
    ap.add_argument("--mmproj")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("SVLM_BIN", os.path.join(REPO, "build", "svlm"))
    models = os.path.join(REPO, "..", "shared", "fixtures", "vision-tiny", "models")
    text = a.text or os.path.join(models, "tiny-smolvlm-text-f32.gguf")
    mmproj = a.mmproj or os.path.join(models, "tiny-smolvlm-mmproj-f32.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "bench.json")
        with open(cfg, "w") as f:
            json.dump({"max_clients": a.clients + 16, "max_questions_total": a.clients + 16,
                       "max_messages_per_s": 1000}, f)
        with Serve(["-m", text, "--mmproj", mmproj, "--config", cfg,
                    "--source", "cam=pattern:size=320x240,rate=5,duration=0,live"]) as s:
            before = wait_frames(s.base, "cam", 2)
            out, wall = asyncio.run(run(s.ws_url, a.clients, a.questions, a.max_tokens))
            after = json.loads(http(s.base + "/v1/streams/cam")[2])
            m = parse_prometheus(http(s.base + "/metrics")[2].decode())
    client_ttft = [o[0] * 1e3 for o in out]
    done = [o[1] for o in out]
    ttft = [d["timings"]["ttft_ms"] for d in done]
    wait = [d["timings"]["queue_wait_ms"] for d in done]
    tps = [d["timings"]["tokens_per_s"] for d in done if d["tokens"]["completion"] > 1]
    tokens = sum(d["tokens"]["completion"] for d in done)
    r = {"clients": a.clients, "questions": len(done), "max_tokens": a.max_tokens, "wall_s": round(wall, 2),
         "client_ttft_ms": {"p50": round(pct(client_ttft, 50), 1), "p99": round(pct(client_ttft, 99), 1)},
         "engine_ttft_ms": {"p50": round(pct(ttft, 50), 1), "p99": round(pct(ttft, 99), 1)},
         "queue_wait_ms": {"p50": round(pct(wait, 50), 1), "p99": round(pct(wait, 99), 1)},
         "answer_tokens_per_s": {"p50": round(pct(tps, 50)), "aggregate": round(tokens / wall)},
         "frames_in": after["frames_in"] - before["frames_in"], "video_s": round(after["video_time"] - before["video_time"], 1),
         "frames_dropped": after["drops"],
         "dropped_metric": m[("svlm_frames_dropped_total", frozenset({("stream", "cam")}))]}
    if a.json:
        print(json.dumps(r))
    else:
        print("%d clients x %d questions (max %d tokens) in %.2f s on the real engine (%s)"
              % (a.clients, a.questions, a.max_tokens, wall, os.path.basename(text)))
        print("  TTFT as clients see it: p50 %.1f ms, p99 %.1f ms; engine TTFT p50 %.1f ms, p99 %.1f ms;"
              " queue wait p50 %.1f ms, p99 %.1f ms" % (r["client_ttft_ms"]["p50"], r["client_ttft_ms"]["p99"],
                                                        r["engine_ttft_ms"]["p50"], r["engine_ttft_ms"]["p99"],
                                                        r["queue_wait_ms"]["p50"], r["queue_wait_ms"]["p99"]))
        print("  answer tokens/s: p50 per answer %d, all answers together %d" %
              (r["answer_tokens_per_s"]["p50"], r["answer_tokens_per_s"]["aggregate"]))
        print("  stream: %d frames ingested over %.1f s of video meanwhile, %d dropped"
              % (r["frames_in"], r["video_s"], r["frames_dropped"]))


if __name__ == "__main__":
    main()
