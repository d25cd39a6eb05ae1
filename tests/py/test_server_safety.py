"""Who may do what: web pages of other sites may not use the server, without a token clients may
not open gst: pipelines or local files, and a camera's password never leaves the server. Browsers let any page open a websocket to
127.0.0.1 and send it requests, so before this check a page the user merely visited could ask
about the cameras of a server without a token (the default on loopback), or `open` a gst:
pipeline that wrote a file. Browsers send Origin with every websocket handshake: a handshake or
request is taken without one (svlm ask, scripts), from the server's own page (Origin = Host), or
from an origin in allowed_origins. Without a token the Host must also be loopback, which stops a
page whose own name was pointed at 127.0.0.1 (DNS rebinding). And loopback is every local user's:
without a token, `open` takes network cameras and patterns, while gst: pipelines (which can write
files) and local files (any the server's user can read) come from the operator's --source, a
token holder, or a server started with --allow-local-open."""
import asyncio
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server_harness import Host, http, recv_json, recv_until_closed, skip  # noqa: E402

try:
    import websockets
except ImportError:
    skip("python3-websockets is not installed")

EVIL = "http://evil.example"


async def handshake(url, origin=None, extra_headers=None):
    """'ok' after a hello answered, else 'refused'."""
    try:
        async with websockets.connect(url, origin=origin, extra_headers=extra_headers, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "id": 1, "version": 1, "token": "s3cret-token"}))
            reply = await recv_json(ws)
            return "ok" if reply["type"] == "hello" else "refused"
    except (websockets.exceptions.InvalidHandshake, websockets.exceptions.ConnectionClosed, OSError, EOFError):
        return "refused"


def raw_request(port, path, host, origin=None, extra="", method="GET"):
    """(status, header bytes, body) of a request with exactly these Host and Origin headers (and
    extra header lines)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        req = "%s %s HTTP/1.1\r\nHost: %s\r\n%s%sConnection: close\r\n\r\n" % (
            method, path, host, "Origin: %s\r\n" % origin if origin else "", extra)
        s.sendall(req.encode())
        data = recv_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(data.split(b" ", 2)[1]), head.lower(), body


def raw_get(port, path, host, origin=None, extra=""):
    """(status, body) of a GET with exactly these Host and Origin headers (and extra header lines)."""
    st, _, body = raw_request(port, path, host, origin, extra)
    return st, body


def main():
    with Host() as h:
        own = "http://127.0.0.1:%d" % h.port
        assert asyncio.run(handshake(h.ws_url)) == "ok"  # no Origin: not a browser
        assert asyncio.run(handshake(h.ws_url, origin=own)) == "ok"  # the server's own page
        assert asyncio.run(handshake(h.ws_url, origin=EVIL)) == "refused"
        assert asyncio.run(handshake(h.ws_url, origin="null")) == "refused"  # sandboxed frames, file://
        # the same checks over HTTP: another site's page gets 403 with a reason
        host = "127.0.0.1:%d" % h.port
        assert raw_get(h.port, "/v1/streams", host)[0] == 200
        assert raw_get(h.port, "/v1/streams", host, own)[0] == 200
        assert raw_get(h.port, "/v1/streams", "localhost:%d" % h.port, "http://localhost:%d" % h.port)[0] == 200
        st, body = raw_get(h.port, "/v1/streams", host, EVIL)
        assert st == 403 and json.loads(body)["error"]["code"] == "forbidden_origin", (st, body)
        # DNS rebinding: evil.example resolved to 127.0.0.1 is its own origin, but not loopback
        st, body = raw_get(h.port, "/v1/streams", "evil.example:%d" % h.port, "http://evil.example:%d" % h.port)
        assert st == 403 and b"DNS rebinding" in body, (st, body)
        assert raw_get(h.port, "/health", "evil.example:%d" % h.port)[0] == 403
        # loopback in plain decimal only ("127.0.0.+1" is a name to a browser), any case of
        # localhost; two Host headers (joined by libwebsockets) are not loopback
        assert raw_get(h.port, "/health", "127.0.0.+1:%d" % h.port)[0] == 403
        assert raw_get(h.port, "/health", "127.000.0.1:%d" % h.port)[0] == 403
        assert raw_get(h.port, "/health", "LocalHost:%d" % h.port)[0] == 200
        assert raw_get(h.port, "/health", "127.0.0.1:%d\r\nHost: evil.example" % h.port)[0] == 403
        # another site's <img> sends no Origin but Sec-Fetch-Site; a link followed to the page is fine
        img = "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n"
        assert raw_get(h.port, "/v1/streams/cam/snapshot.jpg", host, extra=img)[0] == 403
        assert raw_get(h.port, "/", host, extra="Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n")[0] == 200
        assert raw_get(h.port, "/health", host, extra="Sec-Fetch-Site: same-origin\r\n")[0] == 200
        st, _, _ = http(h.base + "/metrics")
        assert st == 200
        _, _, metrics = http(h.base + "/metrics")
        assert b"svlm_clients_refused_total 2" in metrics, metrics[-400:]
    # an allowed origin; and with a token, other host names are served (the token is the check)
    with Host(token="s3cret-token", allow_origin="http://dash.example, http://evil.example:8443") as h:
        assert asyncio.run(handshake(h.ws_url, origin="http://dash.example")) == "ok"
        assert asyncio.run(handshake(h.ws_url, origin="http://evil.example:8443")) == "ok"
        assert asyncio.run(handshake(h.ws_url, origin=EVIL)) == "refused"
        st, _ = raw_get(h.port, "/health", "camera-box.lan:%d" % h.port)
        assert st == 200, st
        # the allowed site's scripts may read the HTTP endpoints too (CORS): its preflight is
        # answered, and answers name it; the server's own page and other sites get no such header
        host = "127.0.0.1:%d" % h.port
        pre = "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n"
        st, head, _ = raw_request(h.port, "/v1/chat/completions", host, "http://dash.example", pre, "OPTIONS")
        assert st == 204 and b"access-control-allow-origin: http://dash.example" in head, (st, head)
        assert b"access-control-allow-headers: authorization, content-type" in head, head
        # the headers the OpenAI JS SDK asks for (its x-stainless-* ones) are allowed: the list is
        # echoed when it is one of header names; anything else gets the fixed pair
        asked = "authorization,content-type,x-stainless-arch,x-stainless-os, x-stainless-retry-count"
        pre = "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: %s\r\n" % asked
        st, head, _ = raw_request(h.port, "/v1/chat/completions", host, "http://dash.example", pre, "OPTIONS")
        assert head.startswith(b"http/1.1 204 no content\r\n"), head
        assert b"access-control-allow-headers: " + asked.encode() + b"\r\n" in head, head
        assert b"access-control-max-age: " in head, head
        for odd in ("x-a b", "x-a,,x-b", "x-\"a\"", "x" * 2000):
            st, head, _ = raw_request(h.port, "/v1/chat/completions", host, "http://dash.example",
                                      "Access-Control-Request-Headers: %s\r\n" % odd, "OPTIONS")
            assert st == 204 and b"access-control-allow-headers: authorization, content-type\r\n" in head, (odd, head)
        st, head, _ = raw_request(h.port, "/v1/streams", host, "http://dash.example",
                                  "Authorization: Bearer s3cret-token\r\n")
        assert st == 200 and b"access-control-allow-origin: http://dash.example" in head, (st, head)
        st, head, _ = raw_request(h.port, "/v1/streams", host, "http://" + host, "Authorization: Bearer s3cret-token\r\n")
        assert st == 200 and b"access-control-allow-origin" not in head, (st, head)
        st, head, _ = raw_request(h.port, "/v1/streams", host, EVIL, "", "OPTIONS")
        assert st == 403 and b"access-control-allow-origin" not in head, (st, head)
    with Host(allow_origin="*") as h:
        assert asyncio.run(handshake(h.ws_url, origin=EVIL)) == "ok"
    # what a client may open
    for kw, allowed in (({}, False), ({"local_open": True}, True), ({"token": "s3cret-token"}, True)):
        with Host(**kw) as h:
            got = asyncio.run(opens(h.ws_url, ["gst:videotestsrc ! filesink location=/tmp/x", "/tmp/clip.mp4",
                                               "file:///tmp/clip.mp4", "v4l2:///dev/ttyACM0", "v4l2:///etc/x",
                                               "rtsp://192.0.2.1/cam", "pattern:", "v4l2:///dev/video0"]))
            want = ["opened"] * 8 if allowed else ["not_allowed"] * 5 + ["opened"] * 3
            assert got == want, (kw, got)
    # a camera's password: not in list, status, /v1/streams or /metrics
    with Host() as h:
        got = asyncio.run(opens(h.ws_url, ["rtsp://bob:secret@192.0.2.1/cam", "rtsp://bob:it's secret@192.0.2.2/c",
                                           "http://192.0.2.3/v.cgi?user=bob&password=secret"], listing=True))
        assert got[:3] == ["opened"] * 3 and "secret" not in got[3] and "rtsp://***@192.0.2.1/cam" in got[3], got
        assert "rtsp://***@192.0.2.2/c" in got[3] and "password=***" in got[3], got
        for path in ("/v1/streams", "/v1/streams/s0", "/metrics", "/v1/models"):
            st, _, body = http(h.base + path)
            assert st == 200 and b"secret" not in body, (path, body[:300])
    print("origin, open and password checks ok")


async def opens(url, uris, listing=False):
    """The reply type (or error code) to opening each URI as a stream of its own (listing: then the
    text of a `list` reply)."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "id": 1, "version": 1, "token": "s3cret-token"}))
        await recv_json(ws)
        out = []
        for i, uri in enumerate(uris):
            await ws.send(json.dumps({"type": "open", "id": "o%d" % i, "stream": "s%d" % i, "uri": uri}))
            while True:
                m = await recv_json(ws)
                if m.get("id") == "o%d" % i:
                    out.append(m["code"] if m["type"] == "error" else m["type"])
                    break
        if listing:
            await ws.send(json.dumps({"type": "list", "id": "l"}))
            while True:
                m = await recv_json(ws)
                if m.get("id") == "l":
                    out.append(json.dumps(m))
                    break
        return out


if __name__ == "__main__":
    main()
