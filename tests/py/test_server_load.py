"""Many clients at once over the fake engine: 50 clients asking at once while a 1 frame per
second stream ingests (every answer right, no frame dropped, the stream's frame count keeps
rising), then the benchmark shape of issue 8: 100 concurrent clients asking 5 questions each,
reporting p50/p99 time to first token as clients see it, answer tokens per second and drops.
These figures measure the server and protocol path (the fake engine's 5 ms token tick), not a
model."""
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import Host, http, parse_prometheus, until, skip  # noqa: E402
from test_server_protocol import expected_answer  # noqa: E402

try:
    import websockets
except ImportError:
    skip("python3-websockets is not installed")


async def client(url, n_questions, k, ttfts, tps):
    async with websockets.connect(url, max_size=1 << 22) as ws:
        for i in range(n_questions):
            q = "client %d question %d" % (k, i)
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "ask", "id": i, "stream": "cam", "question": q}))
            first, _ = await until(ws, lambda m: m["type"] in ("token", "error"), timeout=30)
            assert first["type"] == "token", first
            ttfts.append(time.perf_counter() - t0)
            done, _ = await until(ws, lambda m: m["type"] in ("done", "error"), timeout=30)
            assert done["type"] == "done" and done["text"] == expected_answer(q), done
            tps.append(done["timings"]["tokens_per_s"])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def stream_status(h):
    return json.loads(http(h.base + "/v1/streams/cam")[2])


async def run(h, n_clients, n_questions):
    ttfts, tps = [], []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(h.ws_url, n_questions, k, ttfts, tps) for k in range(n_clients)))
    return ttfts, tps, time.perf_counter() - t0


def main():
    with Host(limits="total=600,clients=300") as h:
        before = stream_status(h)
        ttfts, tps, wall = asyncio.run(run(h, 50, 2))
        time.sleep(1.1)
        after = stream_status(h)
        assert len(ttfts) == 100
        assert after["drops"] == 0 and after["frames_in"] > before["frames_in"], (before, after)
        print("50 clients x 2 questions: %.2f s, ttft p50 %.1f ms p99 %.1f ms, frames %d -> %d, dropped %d"
              % (wall, pct(ttfts, 50) * 1e3, pct(ttfts, 99) * 1e3, before["frames_in"], after["frames_in"],
                 after["drops"]))

        ttfts, tps, wall = asyncio.run(run(h, 100, 5))
        m = parse_prometheus(http(h.base + "/metrics")[2].decode())
        drops = m[("svlm_frames_dropped_total", frozenset({("stream", "cam")}))]
        assert len(ttfts) == 500 and drops == 0
        assert m[("svlm_questions_total", frozenset({("outcome", "ok")}))] == 600
        assert m[("svlm_ttft_seconds_count", frozenset())] == 600
        print("benchmark, 100 clients x 5 questions (fake engine, 5 ms/token): %.2f s; ttft p50 %.1f ms p99 %.1f ms;"
              " answer tokens/s per question p50 %.0f; frames dropped %d"
              % (wall, pct(ttfts, 50) * 1e3, pct(ttfts, 99) * 1e3, pct(tps, 50), drops))


if __name__ == "__main__":
    main()
