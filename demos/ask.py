#!/usr/bin/python3
"""Ask a running `svlm serve` about a stream with python3-websockets, printing the answer as it
streams:  demos/ask.py [--url ws://127.0.0.1:8080/v1/ws] [--token T] STREAM "QUESTION" """
import argparse
import asyncio
import json
import sys

import websockets


async def ask(url, token, stream, question):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "id": 0, "version": 1, "token": token, "status_interval": 0}))
        await ws.send(json.dumps({"type": "ask", "id": 1, "stream": stream, "question": question}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "token":
                print(msg["text"], end="", flush=True)
            elif msg["type"] == "done":
                t = msg["timings"]
                print("\n[%d tokens, first after %.0f ms, %.1f tokens/s]"
                      % (msg["tokens"]["completion"], t["client_ttft_ms"], t["tokens_per_s"]), file=sys.stderr)
                return 0
            elif msg["type"] == "error":
                print("error %s: %s" % (msg["code"], msg["message"]), file=sys.stderr)
                return 1
    print("ask.py: the server closed the connection before the answer was done", file=sys.stderr)
    return 1


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default="ws://127.0.0.1:8080/v1/ws")
    p.add_argument("--token")
    p.add_argument("stream")
    p.add_argument("question")
    a = p.parse_args()
    try:
        sys.exit(asyncio.run(ask(a.url, a.token, a.stream, a.question)))
    except OSError as e:
        sys.exit("ask.py: cannot connect to %s: %s (is svlm serve running there? see its --listen)" % (a.url, e))
    except websockets.exceptions.ConnectionClosed as e:
        sys.exit("ask.py: the server closed the connection (%s)" % e)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
