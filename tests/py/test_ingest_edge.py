"""Recordings at the edges, through both backends: clips whose display matrix asks players to turn
them (phone footage shot in portrait) come out upright, as the ffmpeg CLI shows them."""
import array
import json
import os

from test_ingest_common import (DATA, backends, check, ffmpeg_cli, finish, make_clip, need_svlm, read_png, run_frames,
                                run_svlm, skip, tmpdir)

need_svlm()
if not ffmpeg_cli():
    skip("the ffmpeg CLI is needed to make test clips")
BACKENDS = backends()
if not BACKENDS:
    skip("svlm was built without FFmpeg and GStreamer")
T = tmpdir("ingest-edge")


def red_corners(w, h, rows):
    """The corners (TL, TR, BL, BR) whose pixel, an eighth in from each edge, is red."""
    out = []
    for name, x, y in (("TL", w // 8, h // 8), ("TR", w - 1 - w // 8, h // 8), ("BL", w // 8, h - 1 - h // 8),
                       ("BR", w - 1 - w // 8, h - 1 - h // 8)):
        r, g, b = rows[y][3 * x:3 * x + 3]
        if r > 150 and g < 100 and b < 100:
            out.append(name)
    return out


# ---- rotation: a 320x240 picture, red in its top-left corner, tagged to be shown turned ----------
plain = make_clip(os.path.join(T, "plain.mp4"), "-f", "lavfi", "-i",
                  "color=black:s=320x240:r=10:d=1,drawbox=x=0:y=0:w=80:h=60:color=red:t=fill", "-c:v", "libx264",
                  "-pix_fmt", "yuv420p")
# the mov muxer's "rotate" tag: degrees clockwise; the ffmpeg CLI (autorotate) shows the picture so
# that the red corner is at BL after 90, BR after 180, TR after 270
WANT = {90: ((240, 320), ["BL"]), 180: ((320, 240), ["BR"]), 270: ((240, 320), ["TR"])}
for deg, (size, corners) in WANT.items():
    clip = make_clip(os.path.join(T, f"rot{deg}.mp4"), "-i", plain, "-c", "copy", "-metadata:s:v:0", f"rotate={deg}")
    # the ffmpeg CLI is the reference: check the clip says what this test believes
    ref = os.path.join(T, f"ref{deg}.png")
    make_clip(ref, "-i", clip, "-frames:v", "1", "-pix_fmt", "rgb24")
    w, h, rows = read_png(ref)
    if ((w, h), red_corners(w, h, rows)) != (size, corners):
        skip(f"this ffmpeg CLI shows rotate={deg} as {w}x{h} {red_corners(w, h, rows)}")
    for be in BACKENDS:
        # probe says the size frames come out at (it said the stored 320x240)
        p = run_svlm("probe", clip, "--backend", be, "--json")
        try:
            v = json.loads(p.stdout.strip().splitlines()[-1])["streams"][0]
            got = (v["width"], v["height"])
        except (ValueError, IndexError, KeyError):
            got = None
        check(p.returncode == 0 and got == size, f"probe rotate={deg}/{be}: {got}, expected {size} {p.stderr[-200:]}")
        for sizing in (("--native",), ("--max-edge", "160")):
            out = os.path.join(T, f"out-{deg}-{be}-{sizing[0][2:]}")
            rc, frames, _, err = run_frames(clip, "--backend", be, "--max-frames", "1", "--out", out, *sizing)
            tag = f"rotate={deg}/{be}/{' '.join(sizing)}"
            if rc != 0 or not frames:
                check(False, f"{tag}: rc {rc}: {err[-300:]}")
                continue
            want = size if sizing == ("--native",) else (size[0] // 2, size[1] // 2)
            w, h, rows = read_png(frames[0]["file"])
            check((w, h) == want and (frames[0]["width"], frames[0]["height"]) == want,
                  f"{tag}: {w}x{h}, expected {want[0]}x{want[1]} (shown turned)")
            check(red_corners(w, h, rows) == corners, f"{tag}: red at {red_corners(w, h, rows)}, expected {corners}")

# ---- an anamorphic picture (480x360 stored, pixels 4:3 wide: shown 16:9, as DVD, DVB and HDV are):
# widened to square pixels, as players show it (FFmpeg delivered it squeezed, 4:3)
sar = make_clip(os.path.join(T, "sar.mp4"), "-f", "lavfi", "-i", "testsrc=size=480x360:rate=10:d=1,setsar=4/3",
                "-c:v", "libx264", "-pix_fmt", "yuv420p")
for be in BACKENDS:
    for sizing in (("--native",), ()):
        rc, frames, _, err = run_frames(sar, "--backend", be, "--max-frames", "1", *sizing)
        got = (frames[0]["width"], frames[0]["height"]) if rc == 0 and frames else None
        # --native: 640x360 in both; within --max-edge 512 FFmpeg gives 512x288 and GStreamer's
        # videoscale keeps the width, 480x270: the same shape
        ok = got == (640, 360) if sizing else got and max(got) <= 512 and abs(got[0] / got[1] - 16 / 9) < 0.01
        check(ok, f"anamorphic {' '.join(sizing) or 'max-edge 512'}/{be}: {got} {err[-200:]}")
    if be == "ffmpeg":
        p = run_svlm("probe", sar, "--backend", be, "--json")
        v = json.loads(p.stdout.strip().splitlines()[-1])["streams"][0] if p.returncode == 0 else {}
        check((v.get("width"), v.get("height")) == (640, 360), f"probe anamorphic/{be}: {v}")

# ---- the same clips as a still (describe --image, an OpenAI image_url): upright too (they came
# sideways: only a photo's EXIF orientation was applied)
TINY = os.path.join(DATA, "fixtures", "vision-tiny", "models")
if "ffmpeg" in BACKENDS and os.path.isdir(TINY):
    for deg, (size, corners) in WANT.items():
        dump = os.path.join(T, f"dump{deg}")
        os.makedirs(dump, exist_ok=True)
        p = run_svlm("describe", "-m", os.path.join(TINY, "tiny-smolvlm-text-f32.gguf"), "--mmproj",
                     os.path.join(TINY, "tiny-smolvlm-mmproj-f32.gguf"), "--image", os.path.join(T, f"rot{deg}.mp4"),
                     "-p", "hi", "-n", "1", "--json", "--dump-dir", dump)
        try:
            img = json.loads(p.stdout)["image"]
            got = (img["width"], img["height"])
            # the whole picture, resized to a square tile, is the last chunk; normalised to [-1, 1]
            px = array.array("f")
            px.frombytes(open(os.path.join(dump, f"pixels_{img['tiles'] - 1}.f32"), "rb").read())
            S = int(round((len(px) / 3) ** 0.5))
            red = [name for name, x, y in (("TL", S // 8, S // 8), ("TR", S - 1 - S // 8, S // 8),
                                           ("BL", S // 8, S - 1 - S // 8), ("BR", S - 1 - S // 8, S - 1 - S // 8))
                   if px[y * S + x] > 0.5 and px[S * S + y * S + x] < -0.5]
        except (ValueError, KeyError, OSError):
            got, red = None, None
        check(p.returncode == 0 and got == size and red == corners,
              f"describe rotate={deg}: {got}, red at {red}, expected {size} {corners} {p.stderr[-200:]}")
else:
    print("describe of rotated clips skipped: no FFmpeg or no tiny fixture models", flush=True)

# ---- where a recording starts: its first frame is 0 s in both backends ---------------------------
# (MPEG-TS starts its timestamps at 1.4 s and GStreamer's segment at the first PCR; an MP4 made with
# an offset starts with an empty edit)
for name, args in (("ts", ("-f", "mpegts")), ("offset.mp4", ("-output_ts_offset", "5"))):
    clip = make_clip(os.path.join(T, f"start-{name}" + ("" if "." in name else ".ts")), "-f", "lavfi", "-i",
                     "testsrc=size=160x120:rate=10:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", *args)
    for be in BACKENDS:
        rc, frames, _, err = run_frames(clip, "--backend", be, "--fps", "2")
        pts = [f["pts"] for f in frames]
        want = [0.0, 0.5, 1.0, 1.5]
        check(rc == 0 and len(pts) == 4 and all(abs(a - b) < 1e-3 for a, b in zip(pts, want)),
              f"start/{name}/{be}: rc {rc}, pts {pts}, expected {want} {err[-200:]}")

# ---- widths that are no multiple of 8: FFmpeg's converter wrote past the frame ------------------
# (swscale's unscaled yuv420p -> RGB24 path writes 8 pixels at a time: up to 21 bytes past the last
# row; glibc caught the damaged heap: "double free or corruption", "malloc(): corrupted top size")
for size, pix, extra in (("426x240", "yuv420p", ()), ("90x160", "yuv420p", ()), ("6x6", "yuv420p", ()),
                         ("2x2", "yuv420p", ()), ("426x240", "yuv422p", ()),
                         ("426x240", "yuv420p", ("-metadata:s:v:0", "rotate=90"))):
    name = f"odd-{size}-{pix}{'-rot' if extra else ''}.mp4"
    src = make_clip(os.path.join(T, "src-" + name), "-f", "lavfi", "-i", f"color=red:s={size}:r=10:d=1", "-c:v",
                    "libx264", "-pix_fmt", pix)
    clip = make_clip(os.path.join(T, name), "-i", src, "-c", "copy", *extra) if extra else src
    w, h = map(int, size.split("x"))
    want = (h, w) if extra else (w, h)
    for be in BACKENDS:
        rc, frames, _, err = run_frames(clip, "--backend", be, "--fps", "0", "--native")
        sizes = {(f["width"], f["height"]) for f in frames}
        red = all(f["mean"][0] > 200 and f["mean"][1] < 60 for f in frames)
        check(rc == 0 and len(frames) == 10 and sizes == {want} and red,
              f"{name}/{be}: rc {rc}, {len(frames)} frames {sizes} (expected 10 at {want}), red {red} {err[-300:]}")

finish("ingest_edge")
