"""Recordings through both backends: clips made here with the ffmpeg CLI (H.264 with B-frames,
MJPEG, VP9, an odd size), the real footage in ../shared/media, HTTP and HLS from a local
server, GStreamer launch descriptions, damaged files, and clear errors for bad sources."""
import functools
import http.server
import json
import math
import os
import random
import subprocess
import threading
import time

from test_ingest_common import (MEDIA, backends, check, ffmpeg_cli, finish, free_port, make_clip, need_svlm,
                                read_png, run_frames, run_svlm, skip, tmpdir)

need_svlm()
if not ffmpeg_cli():
    skip("the ffmpeg CLI is needed to make test clips")
BACKENDS = backends()
if not BACKENDS:
    skip("svlm was built without FFmpeg and GStreamer")
print("backends:", BACKENDS, flush=True)
T = tmpdir("ingest-files")

# ---- synthetic clips: name -> (path, width, height, rate, frames) --------------------------
CLIPS = {
    "h264": (make_clip(os.path.join(T, "h264.mp4"), "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=6",
                       "-c:v", "libx264", "-g", "25", "-bf", "2", "-pix_fmt", "yuv420p", "-movflags", "+faststart"), 320, 240, 25, 150),
    "mjpeg": (make_clip(os.path.join(T, "mjpeg.avi"), "-f", "lavfi", "-i", "testsrc=size=176x144:rate=15:duration=4",
                        "-c:v", "mjpeg", "-q:v", "5"), 176, 144, 15, 60),
    "vp9": (make_clip(os.path.join(T, "vp9.webm"), "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3",
                      "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k"), 160, 120, 10, 30),
    "odd": (make_clip(os.path.join(T, "odd.mkv"), "-f", "lavfi", "-i", "testsrc=size=333x199:rate=12:duration=3",
                      "-c:v", "libx264", "-pix_fmt", "yuv444p"), 333, 199, 12, 36),
}


def expected_grid(n_frames, rate, fps):
    """pts the sampler must keep: the first frame at or after each k/fps (frames at i/rate)."""
    pts = [i / rate for i in range(n_frames)]
    if fps == 0:
        return pts
    kept, due = [], None
    for p in pts:
        if due is None or p >= due - 1e-3:
            kept.append(p)
            due = (math.floor((p + 1e-3) * fps) + 1) / fps if due is not None else p + 1 / fps
    return kept


for name, (path, w, h, rate, n) in CLIPS.items():
    for be in BACKENDS:
        for fps in (0, 1, 2.5):
            rc, frames, events, err = run_frames(path, "--backend", be, "--fps", str(fps))
            tag = f"{name}/{be}/fps={fps}"
            check(rc == 0, f"{tag}: rc {rc}: {err.strip()[:300]}")
            want = expected_grid(n, rate, fps)
            check(len(frames) == len(want), f"{tag}: {len(frames)} frames, expected {len(want)}")
            worst = max((abs(f["pts"] - p) for f, p in zip(frames, want)), default=0)
            # the two decoders may start B-frame streams one frame apart (docs/environment.md)
            check(worst <= 1.0 / rate + 1e-3, f"{tag}: pts off the expected grid by {worst:.4f} s")
            check(all((f["width"], f["height"]) == (w, h) for f in frames), f"{tag}: sizes {set((f['width'], f['height']) for f in frames)}")
            check([f["index"] for f in frames] == list(range(len(frames))), f"{tag}: indexes")
            check(any(e["event"] == "eos" for e in events), f"{tag}: eos event")
            if fps == 0:
                stats = [e for e in events if e["event"] == "stats"][-1]
                check(stats["corrupt"] == 0, f"{tag}: a clean clip reports corrupt data: {stats}")
                # the testsrc picture is colourful: a broken colour conversion shows up in the mean
                check(all(30 < f["mean"][c] < 230 for f in frames for c in range(3)), f"{tag}: implausible frame means")

# scaling: explicit size, longest edge, both backends agree on the size
for be in BACKENDS:
    rc, frames, _, err = run_frames(CLIPS["odd"][0], "--backend", be, "--max-edge", "100", "--max-frames", "2")
    check(rc == 0 and frames and (frames[0]["width"], frames[0]["height"]) == (100, 60), f"odd/{be}: --max-edge 100 gave {frames[:1]} {err[:200]}")
    rc, frames, _, err = run_frames(CLIPS["h264"][0], "--backend", be, "--size", "64x32", "--max-frames", "2")
    check(rc == 0 and frames and (frames[0]["width"], frames[0]["height"]) == (64, 32), f"h264/{be}: --size 64x32 gave {frames[:1]}")

# the two backends deliver the same pictures (means within a few levels)
if len(BACKENDS) == 2:
    a = run_frames(CLIPS["h264"][0], "--backend", "ffmpeg")[1]
    b = run_frames(CLIPS["h264"][0], "--backend", "gst")[1]
    diff = max((abs(x["mean"][c] - y["mean"][c]) for x, y in zip(a, b) for c in range(3)), default=99)
    check(len(a) == len(b) and diff < 4, f"ffmpeg and gst frames differ: mean diff {diff:.2f}")

# probe
if "ffmpeg" in BACKENDS:
    p = run_svlm("probe", CLIPS["h264"][0], "--json")
    info = json.loads(p.stdout) if p.returncode == 0 else {}
    v = info.get("streams", [{}])[0]
    check(v.get("codec") == "h264" and (v.get("width"), v.get("height")) == (320, 240) and abs(v.get("fps", 0) - 25) < 0.01
          and abs(info.get("duration", 0) - 6) < 0.1, f"probe h264: {p.stdout.strip()} {p.stderr.strip()}")
    p = run_svlm("probe", CLIPS["vp9"][0])
    check(p.returncode == 0 and "vp9" in p.stdout and "160x120" in p.stdout, f"probe text vp9: {p.stdout} {p.stderr}")

# real-time replay pacing: the 6th frame at 4 fps (pts 1.25 s) arrives about 1.25 s after the first
rc, frames, _, err = run_frames(CLIPS["h264"][0], "--fps", "4", "--max-frames", "6", "--speed", "realtime")
if rc == 0 and len(frames) == 6:
    took = frames[5]["wall"] - frames[0]["wall"]
    check(1.2 <= took <= 1.8, f"realtime pacing: 1.25 s of video took {took:.3f} s")
else:
    check(False, f"realtime run: rc {rc} {len(frames)} frames {err[:200]}")

# ---- the real recordings (../shared/media/README.md): frames ffmpeg 5.1 decodes ----------------
REAL = {  # file: (frames, duration, rate)
    "tears_of_steel_10s_cuts.mp4": (240, 10.0, 24),
    "person_bicycle_car_overhead.mp4": (459, 38.25, 12),  # 8 pre-roll frames with decode errors are skipped
    "tree_window_cinepak.avi": (68, None, None),          # sparse AVI index: 68 stored frames over 29.6 s
    "box_printed_text_handheld.mp4": (455, None, None),   # the damaged first frame is not delivered
}
if os.path.isdir(MEDIA):
    for fname, (count, dur, rate) in REAL.items():
        path = os.path.join(MEDIA, fname)
        for be in BACKENDS:
            rc, frames, events, err = run_frames(path, "--backend", be, "--fps", "0", "--max-edge", "48")
            tag = f"{fname}/{be}"
            # GStreamer's decoder shows one more frame of the damaged pre-roll of the bicycle clip
            slack = 1 if be == "gst" else 0
            check(rc == 0 and abs(len(frames) - count) <= slack, f"{tag}: {len(frames)} frames, expected {count} (rc {rc}) {err[:200]}")
            # never backwards (this clip's own last timestamps step back; the source clamps them)
            check(all(b["pts"] >= a["pts"] for a, b in zip(frames, frames[1:])), f"{tag}: pts went backwards")
            check(frames and frames[0]["pts"] < 0.1, f"{tag}: first pts {frames[0]['pts'] if frames else None}")
            if dur:
                rc, frames, events, err = run_frames(path, "--backend", be)  # default: 1 fps, longest edge 512
                want = math.ceil(dur - 1e-6)
                check(rc == 0 and len(frames) == want, f"{tag} 1 fps: {len(frames)} frames, expected {want}")
                worst = max((abs(f["pts"] - i) for i, f in enumerate(frames)), default=9)
                check(worst <= 1.0 / rate + 1e-3, f"{tag} 1 fps: pts off whole seconds by {worst:.3f}")
                check(all(f["width"] == 512 and f["height"] == 288 for f in frames), f"{tag}: not scaled to 512x288")
else:
    print("no ../shared/media: real-footage checks skipped", flush=True)

# ---- damaged files: errors or skipped frames, never a crash ------------------------------------
raw = open(CLIPS["h264"][0], "rb").read()
damaged = {}
damaged["truncated.mp4"] = raw[: len(raw) * 6 // 10]
rng = random.Random(4)
flipped = bytearray(raw)
for _ in range(60):
    flipped[rng.randrange(len(raw) // 10, len(raw))] ^= 1 << rng.randrange(8)
damaged["flipped.mp4"] = bytes(flipped)
damaged["garbage.mp4"] = bytes(rng.randrange(256) for _ in range(20000))
for fname, data in damaged.items():
    path = os.path.join(T, fname)
    open(path, "wb").write(data)
    for be in BACKENDS:
        rc, frames, events, err = run_frames(path, "--backend", be, "--fps", "0")
        tag = f"{fname}/{be}"
        check(rc in (0, 1) and "Sanitizer" not in err, f"{tag}: crashed (rc {rc}) {err[-300:]}")
        if fname == "garbage.mp4":
            check(rc == 1 and "svlm:" in err, f"{tag}: expected a clear error, rc {rc} {err[:200]}")
        else:
            check(rc == 0 and 0 < len(frames) <= 150, f"{tag}: rc {rc}, {len(frames)} frames {err[:200]}")
            if fname == "truncated.mp4":
                check(len(frames) < 150 and any(e["event"] == "eos" for e in events), f"{tag}: truncated file ends cleanly")
# a file with nothing decodable is an error, not an empty video (rc 0, "eos: 0 decoded"): text named
# .jpg, a PNG cut short, a Matroska file with a video track and no frame
open(os.path.join(T, "text.jpg"), "w").write("this is text\n")
open(os.path.join(T, "cut.png"), "wb").write(open(make_clip(os.path.join(T, "whole.png"), "-f", "lavfi", "-i",
                                                            "testsrc=size=320x240", "-frames:v", "1"), "rb").read()[:2000])
make_clip(os.path.join(T, "no-frames.mkv"), "-f", "lavfi", "-i", "testsrc=size=64x64", "-t", "0", "-c:v", "ffv1")
for fname in ("text.jpg", "cut.png", "no-frames.mkv"):
    for be in BACKENDS:
        rc, frames, events, err = run_frames(os.path.join(T, fname), "--backend", be)
        check(rc == 1 and not frames and "svlm: " in err and not any(e["event"] == "eos" for e in events)
              and "End of file" not in err, f"{fname}/{be}: rc {rc}, {len(frames)} frames, {events} {err[-300:]}")
if "ffmpeg" in BACKENDS:
    rc, frames, events, err = run_frames(os.path.join(T, "flipped.mp4"), "--backend", "ffmpeg", "--fps", "0")
    corrupt = [e for e in events if e["event"] == "corrupt"]
    check(corrupt and len(frames) < 150, f"flipped.mp4/ffmpeg: expected skipped corrupt frames, got {len(frames)} frames, {corrupt[:2]}")

# ---- an animated GIF: GStreamer's pipeline never ends (avdemux_gif): after 6 stall timeouts with
# no frame the recording is taken as ended (it waited for ever, a thread at 100%)
if "gst" in BACKENDS:
    gif = make_clip(os.path.join(T, "anim.gif"), "-f", "lavfi", "-i", "testsrc=size=80x60:rate=10:duration=1")
    t0 = time.time()
    try:
        rc, frames, events, err = run_frames(gif, "--backend", "gst", "--fps", "0", "--stall-timeout", "0.5",
                                             timeout=40)
        check(rc == 0 and len(frames) == 10 and time.time() - t0 < 20 and events[-1]["event"] == "stats",
              f"anim.gif/gst: rc {rc}, {len(frames)} frames in {time.time() - t0:.1f} s {err[-300:]}")
    except subprocess.TimeoutExpired:
        check(False, "anim.gif/gst: still running after 40 s")

# ---- timestamps that never advance (FFmpeg): timed by the frame rate, said once on stderr -------
# Matroska keeps what the setts filter writes: every pts 0 (MJPEG, H.264 with B-frames), or a pts
# stuck at 1 s from the 11th frame on (10 fps for 4 s, time base 1 ms).
SRC = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=4"]
STUCK = {
    "zero_mjpeg.mkv": ["-c:v", "mjpeg", "-bsf:v", "setts=pts=0:dts=0"],
    "zero_h264.mkv": ["-c:v", "libx264", "-bf", "2", "-bsf:v", "setts=pts=0:dts=0"],
    "stuck_1s.mkv": ["-c:v", "mjpeg", "-bsf:v", "setts=pts=min(PTS\\,1000):dts=min(DTS\\,1000)"],
}
STUCK_PATHS = {fname: make_clip(os.path.join(T, fname), *SRC, *enc) for fname, enc in STUCK.items()}
def check_stuck(backend, quiet_ok=()):
    """Every stuck clip through backend: 40 frames 0.1 s apart, one notice (none allowed for quiet_ok),
    1 fps keeps 0, 1, 2, 3 s, every frame decoded (times by count)."""
    for fname, path in STUCK_PATHS.items():
        tag = f"{fname}/{backend}"
        rc, frames, events, err = run_frames(path, "--backend", backend, "--fps", "0", "--max-edge", "48")
        pts = [f["pts"] for f in frames]
        check(rc == 0 and len(frames) == 40, f"{tag}: rc {rc}, {len(frames)} frames {err[:200]}")
        check(all(abs(p - i / 10) < 1e-3 for i, p in enumerate(pts)), f"{tag}: pts {pts[:12]} not 0.1 s apart")
        notices = err.count("timestamps do not advance")
        check(notices == 1 or (fname in quiet_ok and notices == 0),
              f"{tag}: expected one notice on stderr, got {err[:300]!r}")
        rc, frames, events, err = run_frames(path, "--backend", backend, "--fps", "1", "--max-edge", "48")
        pts = [f["pts"] for f in frames]
        check(rc == 0 and len(pts) == 4 and all(abs(p - i) < 1e-3 for i, p in enumerate(pts)),
              f"{tag} 1 fps: pts {pts}, expected 0, 1, 2, 3")
        stats = [e for e in events if e["event"] == "stats"]
        check(stats and stats[-1]["decoded"] == 40, f"{tag} 1 fps: every frame decoded (time by count): {stats}")


if "ffmpeg" in BACKENDS:
    check_stuck("ffmpeg")
    # the clips above with their timestamps intact say nothing
    rc, frames, events, err = run_frames(CLIPS["h264"][0], "--backend", "ffmpeg", "--fps", "1")
    check(rc == 0 and "timestamps do not advance" not in err, f"h264/ffmpeg: a notice for a valid clip: {err[:200]!r}")

# ---- the same through GStreamer (replay): timed by the decoded caps' frame rate, said once ------
# (GStreamer's H.264 parser already gives zero_h264.mkv's frames times 0.1 s apart: no notice needed)
if "gst" in BACKENDS:
    check_stuck("gst", quiet_ok=("zero_h264.mkv",))
    # a launch description's decoder is watched too; the caps' frame rate comes first, a rate above
    # 500 fps is a guess and ignored (then the buffers' own duration, 0.1 s here)
    zero = STUCK_PATHS["zero_mjpeg.mkv"]
    for rate, step in (("5/1", 0.2), ("1000/1", 0.1), ("0/1", 0.1)):
        launch = f"gst:filesrc location={zero} ! matroskademux ! jpegdec ! capssetter caps=video/x-raw,framerate={rate}"
        rc, frames, events, err = run_frames(launch, "--fps", "0", "--max-edge", "48")
        if 'no element "capssetter"' in err:
            print("no capssetter element: the frame-rate rule checks skipped", flush=True)
            break
        pts = [f["pts"] for f in frames]
        tag = f"zero_mjpeg.mkv, caps framerate {rate}/gst"
        check(rc == 0 and len(pts) == 40 and all(abs(p - i * step) < 1e-3 for i, p in enumerate(pts)),
              f"{tag}: pts {pts[:6]}, expected {step} s apart {err[:200]}")
        check(err.count(f"{step:.4g} s a frame") == 1, f"{tag}: notice {err[:300]!r}")
    # a live source's clock is left as it is (repeats are the timeline's business): no notice
    rc, frames, events, err = run_frames(f"gst:filesrc location={zero} ! matroskademux ! jpegdec", "--live",
                                         "--fps", "0", "--max-edge", "48")
    pts = [f["pts"] for f in frames]
    check(rc == 0 and pts and "timestamps do not advance" not in err and max(pts) < 0.05,
          f"zero_mjpeg.mkv live/gst: rc {rc}, pts {pts[:6]}, {err[:200]!r}")
    # valid clips say nothing; GStreamer's H.264 decoder gives three frames after the damaged first
    # ones of this real clip the same time: its stored timestamps advance, so they are kept as they are
    rc, frames, events, err = run_frames(CLIPS["h264"][0], "--backend", "gst", "--fps", "1")
    check(rc == 0 and "timestamps do not advance" not in err, f"h264/gst: a notice for a valid clip: {err[:200]!r}")
    box = os.path.join(MEDIA, "box_printed_text_handheld.mp4")
    if os.path.exists(box):
        rc, frames, events, err = run_frames(box, "--backend", "gst", "--fps", "0", "--max-edge", "48")
        pts = [f["pts"] for f in frames]
        check(rc == 0 and "timestamps do not advance" not in err and len(pts) == 455 and abs(pts[-1] - 15.151) < 1e-3,
              f"box_printed_text_handheld.mp4/gst: {len(pts)} frames, last pts {pts[-1:]}, {err[:200]!r}")

# ---- clear errors ---------------------------------------------------------------------------
unk = os.path.join(T, "unknown_codec.avi")
make_clip(unk, "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=1", "-c:v", "mpeg4", "-f", "avi")
avi = open(unk, "rb").read()
open(unk, "wb").write(avi.replace(b"FMP4", b"XVQZ"))  # a FourCC no decoder knows
aud = make_clip(os.path.join(T, "audio_only.m4a"), "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac")
closed = free_port()
ERRORS = [  # (source, backend or None, words the message must contain)
    ("/nonexistent/clip.mp4", None, "no such file"),
    ("bogus://host/x", None, "unknown URI scheme 'bogus'"),
    (f"rtsp://127.0.0.1:{closed}/stream", "ffmpeg", "connection refused"),
    (f"rtsp://127.0.0.1:{closed}/stream", "gst", "Failed to connect"),
    (f"http://127.0.0.1:{closed}/x.mp4", "ffmpeg", "connection refused"),
    (unk, "ffmpeg", "unsupported video codec"),
    (unk, "gst", "unsupported codec"),
    (aud, "ffmpeg", "no video stream"),
    (aud, "gst", "no video stream"),
    (T, None, "directory"),
    ("v4l2:///dev/video99", "gst", "no camera at /dev/video99: plug one in"),
    ("v4l2:///dev/video0", "ffmpeg", "need the gst backend"),
    ("gst:nosuchelement", "gst", "no element \"nosuchelement\""),
    ("gst:videotestsrc ! fakesink", "gst", "must end in raw or decodable video, without a sink"),
    ("pattern:size=0x0", None, "pattern: size"),
]
for src, be, words in ERRORS:
    if be and be not in BACKENDS:
        continue
    t0 = time.time()
    p = run_svlm("frames", src, *(["--backend", be] if be else []), "--open-timeout", "5")
    check(p.returncode == 1 and words in p.stderr and "Sanitizer" not in p.stderr,
          f"{src} ({be}): rc {p.returncode}, stderr {p.stderr.strip()[:300]!r} lacks {words!r}")
    check(time.time() - t0 < 8, f"{src} ({be}): the error took {time.time() - t0:.1f} s")
# a server that takes the connection and says nothing: the error names the timeout, not the media
if "ffmpeg" in BACKENDS:
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        for scheme in ("rtsp", "http"):
            src = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}/stream"
            p = run_svlm("frames", src, "--backend", "ffmpeg", "--open-timeout", "1")
            check(p.returncode == 1 and "no answer within 1 s" in p.stderr,
                  f"silent {scheme} server: rc {p.returncode}, stderr {p.stderr.strip()[:300]!r}")
for args in (["--fps", "-1"], ["--size", "10"], ["--speed", "fast"], ["--backend", "vlc"], ["--bogus"]):
    p = run_svlm("frames", "pattern:", *args)
    check(p.returncode == 2 and "svlm:" in p.stderr, f"bad flag {args}: rc {p.returncode} {p.stderr[:200]}")
# --out naming a file: refused before any frame, with the reason (it failed at the first PNG)
not_dir = os.path.join(T, "not-a-folder")
open(not_dir, "w").close()
p = run_svlm("frames", "pattern:", "--max-frames", "1", "--out", not_dir)
check(p.returncode == 1 and "Not a directory" in p.stderr and "frame 0" not in p.stdout,
      f"--out a file: rc {p.returncode} {p.stderr[:200]}")

# ---- HTTP (progressive) and HLS from a local server ---------------------------------------------
hls_dir = os.path.join(T, "hls")
os.makedirs(hls_dir, exist_ok=True)
make_clip(os.path.join(hls_dir, "index.m3u8"), "-i", CLIPS["h264"][0], "-c", "copy", "-f", "hls", "-hls_time", "2",
          "-hls_playlist_type", "vod")


requests = []  # (monotonic time, path) of each GET


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        requests.append((time.monotonic(), self.path))
        if self.path == "/cam.mjpg":
            return self.camera()
        super().do_GET()

    def camera(self):
        """An MJPEG camera over HTTP: 5 frames a second for 12 s (more than the client stays: a slow
        open must not cut the span it measures), no timestamps of its own."""
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        t0 = time.monotonic()
        try:
            for n in range(60):
                time.sleep(max(0.0, t0 + n / 5 - time.monotonic()))
                j = CAM_JPEGS[n % len(CAM_JPEGS)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j)
                                 + j + b"\r\n")
                self.wfile.flush()
        except OSError:
            pass  # the client went away


# a playlist from the network whose segment is a local file: refused by both backends (FFmpeg's
# network whitelist has no file:; GStreamer followed it and read the file)
segs = sorted(f for f in os.listdir(hls_dir) if f.endswith(".ts"))
with open(os.path.join(hls_dir, "local.m3u8"), "w") as f:
    f.write("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\n"
            "file://%s\n#EXT-X-ENDLIST\n" % os.path.join(hls_dir, segs[0]))
make_clip(os.path.join(T, "cam%02d.jpg"), "-f", "lavfi", "-i", "testsrc=size=160x120:rate=5:duration=1", "-q:v", "5")
CAM_JPEGS = [open(os.path.join(T, "cam%02d.jpg" % i), "rb").read() for i in range(1, 6)]
handler = functools.partial(QuietHandler, directory=T)
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{httpd.server_address[1]}"
for be in BACKENDS:
    rc, frames, _, err = run_frames(f"{base}/h264.mp4", "--backend", be, "--fps", "2")
    check(rc == 0 and len(frames) == 12, f"http/{be}: rc {rc}, {len(frames)} frames (expected 12) {err[:200]}")
    # HLS is live by default; --replay makes a VOD playlist lossless
    rc, frames, _, err = run_frames(f"{base}/hls/index.m3u8", "--backend", be, "--fps", "2", "--replay")
    check(rc == 0 and len(frames) == 12, f"hls/{be}: rc {rc}, {len(frames)} frames (expected 12) {err[:200]}")
    # a finished (VOD) playlist is a recording without --replay too: every frame, then the end (as
    # a live source it played again from its start at every end, for ever)
    try:
        rc, frames, _, err = run_frames(f"{base}/hls/index.m3u8", "--backend", be, "--fps", "2", timeout=40)
        check(rc == 0 and len(frames) == 12,
              f"hls VOD, no --replay/{be}: rc {rc}, {len(frames)} frames (expected 12) {err[:200]}")
    except subprocess.TimeoutExpired:
        check(False, f"hls VOD, no --replay/{be}: still running after 40 s (played again as a live source)")
    # a live playlist (no end) whose encoder stops: #EXT-X-ENDLIST appears 2 s in, and the stream
    # ends there (it was reopened about four times a second for ever, its old frames delivered as
    # new ones)
    index = open(os.path.join(hls_dir, "index.m3u8")).read()
    live = os.path.join(hls_dir, "live.m3u8")
    open(live, "w").write(index.replace("#EXT-X-PLAYLIST-TYPE:VOD\n", "").replace("#EXT-X-ENDLIST\n", ""))
    # probe tells them apart as opening does: the finished playlist is not live (it said live)
    for name, want in (("index", False), ("live", True)):
        p = run_svlm("probe", f"{base}/hls/{name}.m3u8", "--backend", be, "--json")
        got = json.loads(p.stdout).get("live") if p.returncode == 0 else None
        check(got is want, f"probe hls {name}/{be}: live {got}, expected {want}: {p.stdout} {p.stderr[-200:]}")
    ended = threading.Timer(2.0, lambda: open(live, "w").write(index.replace("#EXT-X-PLAYLIST-TYPE:VOD\n", "")))
    ended.start()
    rc, frames, events, err = run_frames(f"{base}/hls/live.m3u8", "--backend", be, "--fps", "2", "--duration", "20",
                                         timeout=60)
    ended.join()
    stats = [e for e in events if e.get("event") == "stats"]
    # sampled by their timestamps, 2 a second of its 6 s (by their arrival, a segment's frames came
    # at once and only one of them was kept, 3 in all)
    check(rc == 0 and stats and stats[-1]["reason"] == "eos" and stats[-1]["reconnects"] <= 1 and
          len(frames) >= 10, f"hls live then finished/{be}: rc {rc}, {len(frames)} frames, {stats} {err[:200]}")
    # a live playlist whose encoder died (no new segment, no end): played once, then the stream
    # waits for a new segment (reopened as it was, it played its last segments again, old frames
    # as new ones, every few seconds); the one added 10 s in is what the reopened stream fetches.
    # Then the encoder starts over, numbering from 0 (16 s in): a new stream, fetched at once (it
    # was waited on until the new numbers passed the old). (FFmpeg; GStreamer waits too, then
    # starts a few segments before the new one: not run, 25 s.)
    def playlist(names, first=0):
        return "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:%d\n" % first + "".join(
            "#EXTINF:2.0,\n%s\n" % n for n in names)
    if be == "ffmpeg":
        stale = os.path.join(hls_dir, "stale.m3u8")
        open(stale, "w").write(playlist(segs[:2]))
        added = threading.Timer(10.0, lambda: open(stale, "w").write(playlist(segs[:3])))
        restarted = threading.Timer(16.0, lambda: open(stale, "w").write(playlist(segs[:1])))
        del requests[:]
        added.start()
        restarted.start()
        t_added, t_restarted = time.monotonic() + 10.0, time.monotonic() + 16.0
        rc, frames, events, err = run_frames(f"{base}/hls/stale.m3u8", "--backend", be, "--fps", "2",
                                             "--duration", "25", "--stall-timeout", "2", timeout=60)
        added.join()
        restarted.join()
        stats = [e for e in events if e.get("event") == "stats"]
        later = [p.rsplit("/", 1)[-1] for t, p in requests if t_added < t < t_restarted and p.endswith(".ts")]
        again = [p.rsplit("/", 1)[-1] for t, p in requests if t > t_restarted and p.endswith(".ts")]
        # while it waits, each attempt says why it is still down (the disconnect's reason stayed)
        retries = [e.get("detail", "") for e in events if e.get("event") == "retry"]
        check(any("no segment after #1" in r for r in retries), f"hls live, encoder stopped: retries {retries}")
        check(rc == 0 and stats and stats[-1]["reconnects"] == 2 and later == [segs[2]] and segs[0] in again,
              f"hls live, encoder stopped/{be}: rc {rc}, {stats}, segments fetched once one was added: {later}, "
              f"once it started over: {again} {[e for e in events if e.get('event') == 'disconnect']} {err[-200:]}")
    # an MJPEG camera (no timestamps of its own) is timed by the frames' arrival: GStreamer's
    # decoder counted them at a guessed 25 fps, a 5 fps camera's 3 s became 0.6 s
    cam = f"{base}/cam.mjpg" if be == "ffmpeg" else \
        f"gst:souphttpsrc location={base}/cam.mjpg ! multipartdemux ! jpegdec"
    rc, frames, _, err = run_frames(cam, "--backend", be, "--live", "--fps", "0", "--duration", "3.2")
    span = (frames[-1]["pts"] - frames[0]["pts"], frames[-1]["wall"] - frames[0]["wall"]) if len(frames) > 5 else None
    check(span and abs(span[0] - span[1]) < 0.5 and span[0] > 2,
          f"mjpeg camera/{be}: rc {rc}, {len(frames)} frames, pts span vs arrival span {span} {err[-200:]}")
    # a notice that names the URL leaves its password out
    login = base.replace("http://", "http://viewer:s3cret@")
    rc, frames, _, err = run_frames(f"{login}/zero_mjpeg.mkv", "--backend", be, "--fps", "1")
    check(rc == 0 and len(frames) == 4 and "s3cret" not in err and "http://***@" in err,
          f"http with a login/{be}: rc {rc}, {len(frames)} frames, {err[:300]!r}")
    # nor a password with a space in it, nor one in the query
    p = run_svlm("frames", "rtsp://bob:pa ss@127.0.0.1:1/x?password=zz9", "--backend", be, "--open-timeout", "2")
    check(p.returncode == 1 and "pa ss" not in p.stderr and "zz9" not in p.stderr,
          f"rtsp password in a message/{be}: {p.stderr[-300:]!r}")
    rc, frames, _, err = run_frames(f"{base}/hls/local.m3u8", "--backend", be, "--fps", "2", "--replay")
    check(rc == 1 and not frames, f"hls naming a local file/{be}: rc {rc}, {len(frames)} frames {err[:200]}")
    p = run_svlm("frames", f"{base}/missing.mp4", "--backend", be, "--open-timeout", "5")
    check(p.returncode == 1 and "svlm:" in p.stderr, f"http 404/{be}: rc {p.returncode} {p.stderr[:200]}")
httpd.shutdown()

# ---- GStreamer launch descriptions and appsink row padding --------------------------------------
if "gst" in BACKENDS:
    rc, frames, _, err = run_frames("gst:videotestsrc num-buffers=50 ! video/x-raw,width=200,height=150,framerate=25/1", "--fps", "5")
    check(rc == 0 and len(frames) == 10 and all((f["width"], f["height"]) == (200, 150) for f in frames),
          f"gst:videotestsrc: rc {rc}, {len(frames)} frames {err[:200]}")
    # width 222: appsink pads RGB rows to 668 bytes; a stride bug would shear the vertical bars
    out = os.path.join(T, "pad")
    rc, frames, _, err = run_frames("gst:videotestsrc num-buffers=3 pattern=smpte ! video/x-raw,width=222,height=100", "--fps", "0", "--out", out)
    check(rc == 0 and len(frames) == 3, f"gst width 222: rc {rc} {err[:200]}")
    if frames:
        w, h, rows = read_png(frames[0]["file"])
        check(w == 222 and rows[0] == rows[40], "width 222: rows 0 and 40 of the SMPTE bars differ (row padding mishandled)")
    # images without timestamps (multifilesrc, no frame rate): consecutive times 40 ms apart, so
    # sampling at 2 fps keeps 3 of 30 (with every frame at 0 s it kept the first only)
    img_dir = os.path.join(T, "imgs")
    os.makedirs(img_dir, exist_ok=True)
    make_clip(os.path.join(img_dir, "img%d.png"), "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-frames:v", "30")
    rc, frames, _, err = run_frames(f"gst:multifilesrc location={img_dir}/img%d.png start-index=1 stop-index=30 ! pngdec",
                                    "--fps", "2")
    pts = [f["pts"] for f in frames]
    check(rc == 0 and len(frames) == 3 and pts == sorted(pts) and pts[-1] > 0.9,
          f"untimestamped images: rc {rc}, pts {pts} (expected 3 frames over about 1 s) {err[:200]}")

finish("ingest_files")
