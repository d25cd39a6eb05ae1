/* Ingest pieces that need no media library: URI parsing, sampling, output size, the
 * drop-oldest queue, the watchdog, and the built-in pattern source through the public API; and,
 * with FFmpeg or GStreamer, a camera that is down at open (keep_trying) or never answers (abort). */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pipeline/frame_queue.h"
#include "pipeline/hls_playlist.h"
#include "pipeline/source_backend.h"
#include "pipeline/timeline.h"
#include "test.h"

static void test_uri(void) {
    svlm_uri u;
    svlm_err err = {0};
    CHECK(svlm_uri_parse("/a/b.mp4", &u, &err) == SVLM_OK && u.kind == SVLM_URI_FILE &&
              !strcmp(u.target, "/a/b.mp4"),
          "plain path");
    CHECK(svlm_uri_parse("file:///a/b.mp4", &u, &err) == SVLM_OK && u.kind == SVLM_URI_FILE &&
              !strcmp(u.target, "/a/b.mp4"),
          "file://");
    CHECK(svlm_uri_parse("rtsp://u:p@h:554/x", &u, &err) == SVLM_OK && u.kind == SVLM_URI_RTSP &&
              svlm_uri_default_live(&u),
          "rtsp is live");
    CHECK(svlm_uri_parse("https://h/x.m3u8?t=1", &u, &err) == SVLM_OK && u.kind == SVLM_URI_HTTP &&
              u.is_hls && svlm_uri_default_live(&u),
          "HLS");
    CHECK(svlm_uri_parse("http://h/x.mp4", &u, &err) == SVLM_OK && !u.is_hls && !svlm_uri_default_live(&u),
          "progressive http is replay");
    CHECK(svlm_uri_parse("v4l2:///dev/video0", &u, &err) == SVLM_OK && u.kind == SVLM_URI_V4L2 &&
              !strcmp(u.target, "/dev/video0"),
          "v4l2");
    CHECK(svlm_uri_parse("gst:videotestsrc", &u, &err) == SVLM_OK && u.kind == SVLM_URI_GST &&
              !strcmp(u.target, "videotestsrc"),
          "gst:");
    CHECK(svlm_uri_parse("pattern:live,rate=5", &u, &err) == SVLM_OK && u.kind == SVLM_URI_PATTERN &&
              svlm_uri_default_live(&u),
          "pattern live");
    CHECK(svlm_uri_parse("testsrc:", &u, &err) == SVLM_OK && u.kind == SVLM_URI_PATTERN &&
              !svlm_uri_default_live(&u),
          "testsrc");
    CHECK(svlm_uri_parse("foo://x", &u, &err) == SVLM_E_INVALID &&
              strstr(err.msg, "unknown URI scheme 'foo'"),
          "unknown scheme: %s", err.msg);
    CHECK(svlm_uri_parse("rtps://bob:secret@cam/x", &u, &err) == SVLM_E_INVALID &&
              strstr(err.msg, "unknown URI scheme 'rtps'") && strstr(err.msg, "rtps://***@cam/x") &&
              !strstr(err.msg, "secret"),
          "a mistyped scheme keeps the password out: %s", err.msg);
    CHECK(svlm_uri_parse("", &u, &err) == SVLM_E_INVALID, "empty URI");
    /* no host: said so (the backends answered "connection refused"), the password kept out */
    static const char *const hostless[] = {"rtsp://", "rtsp://:554/cam", "http://?x", "https://u:secret@/x",
                                           "rtsp://u:sec@secret@:554/x"};
    for (int i = 0; i < 5; i++)
        CHECK(svlm_uri_parse(hostless[i], &u, &err) == SVLM_E_INVALID && strstr(err.msg, "names no host") &&
                  !strstr(err.msg, "secret"),
              "%s: %s", hostless[i], err.msg);
    CHECK(svlm_uri_parse("rtsp://u:p@cam:554/x", &u, &err) == SVLM_OK && u.kind == SVLM_URI_RTSP,
          "a host after user:password@");
    CHECK(svlm_uri_parse("gst:", &u, &err) == SVLM_E_INVALID, "gst: without a description");
    /* what clients see of a source's URI: no login, whatever its characters, no password-like
     * query values or gst: password properties; paths and URLs without them unchanged */
    static const char *const shown[][2] = {
        {"rtsp://admin:it's@192.0.2.1/cam", "rtsp://***@192.0.2.1/cam"},
        {"rtsp://admin:p w\"x@192.0.2.1:554/cam?a=1", "rtsp://***@192.0.2.1:554/cam?a=1"},
        {"rtsp://a@h", "rtsp://***@h"},
        {"http://cam/video.cgi?user=admin&password=hunter2&res=hi",
         "http://cam/video.cgi?user=admin&password=***&res=hi"},
        {"http://cam/v?pwd=ab", "http://cam/v?pwd=**"},
        {"https://cdn/live.m3u8?access_token=abcdef&api_key=123456&res=hi",
         "https://cdn/live.m3u8?access_token=***&api_key=***&res=hi"},
        {"gst:rtspsrc location=rtsp://u:p@cam/x user-id=u user-pw=secret ! decodebin",
         "gst:rtspsrc location=rtsp://***@cam/x user-id=u user-pw=*** ! decodebin"},
        {"/videos/a b.mp4", "/videos/a b.mp4"},
        {"rtsp://cam.lan/stream1", "rtsp://cam.lan/stream1"},
    };
    for (size_t i = 0; i < sizeof shown / sizeof shown[0]; i++) {
        char out[256];
        svlm_uri_redact_source(shown[i][0], out, sizeof out);
        CHECK(!strcmp(out, shown[i][1]), "%s shown as %s, expected %s", shown[i][0], out, shown[i][1]);
    }
    char small[12];
    svlm_uri_redact_source("rtsp://user:secret@camera/x", small, sizeof small);
    CHECK(!strstr(small, "sec") && strlen(small) < sizeof small, "cut short: %s", small);
    /* a backend's message quotes what it opened: a stream's status "reason" showed the passwords */
    static const char *const said[][2] = {
        {"rtspsrc location=rtsp://192.0.2.10/x user-id=bob user-pw=hunter2 ! decodebin: timed out while "
         "opening",
         "rtspsrc location=rtsp://192.0.2.10/x user-id=bob user-pw=*** ! decodebin: timed out while opening"},
        {"cannot open http://192.0.2.11/v.mjpg?user=bob&pwd=hunter3: Connection refused",
         "cannot open http://192.0.2.11/v.mjpg?user=bob&pwd=*** Connection refused"},
        {"cannot open rtsp://bob:hunter4@192.0.2.12/x?token=tok123: host unreachable",
         "cannot open rtsp://***@192.0.2.12/x?token=*** host unreachable"},
    };
    for (size_t i = 0; i < sizeof said / sizeof said[0]; i++) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", said[i][0]);
        svlm_redact_in_place(msg, sizeof msg);
        CHECK(!strcmp(msg, said[i][1]), "'%s' said as '%s', expected '%s'", said[i][0], msg, said[i][1]);
    }
}

/* Frames at `rate` for `seconds`, sampled at fps: the pts of the kept frames. */
static int sample_run(double rate, double seconds, double fps, double *kept, int max) {
    svlm_sampler s;
    svlm_sampler_init(&s, fps, 0);
    int n = 0;
    for (int i = 0; i < (int)llround(rate * seconds); i++) {
        double pts = i / rate;
        if (svlm_sampler_take(&s, pts, 0) && n < max) kept[n++] = pts;
    }
    return n;
}

static void test_sampler(void) {
    double kept[1000];
    /* 25 fps for 10 s at 1 fps: one frame per second, exactly on the second */
    int n = sample_run(25, 10, 1, kept, 1000);
    CHECK(n == 10, "1 fps of 10 s: %d frames", n);
    for (int i = 0; i < n; i++)
        CHECK(fabs(kept[i] - i) < 1e-9, "frame %d at %g", i, kept[i]);
    /* 29.97 fps (timestamps a hair off the grid) at 2 fps: 20 frames, each within a frame of k/2 */
    n = sample_run(30000.0 / 1001, 10, 2, kept, 1000);
    CHECK(n == 20, "2 fps of 29.97 fps: %d frames", n);
    for (int i = 0; i < n; i++)
        CHECK(kept[i] >= i * 0.5 - 1e-3 && kept[i] < i * 0.5 + 1001.0 / 30000 + 1e-9, "frame %d at %g", i,
              kept[i]);
    /* 3 fps from 25 fps: 30 frames, kept[k] is the first frame at or after k/3 */
    n = sample_run(25, 10, 3, kept, 1000);
    CHECK(n == 30, "3 fps: %d frames", n);
    for (int i = 0; i < n; i++)
        CHECK(kept[i] >= i / 3.0 - 1e-3 && kept[i] < i / 3.0 + 0.04 + 1e-9, "frame %d at %g", i, kept[i]);
    /* a rate above the source keeps every frame */
    CHECK(sample_run(10, 5, 30, kept, 1000) == 50, "30 fps of a 10 fps source keeps all 50");
    CHECK(sample_run(10, 5, 0, kept, 1000) == 50, "fps 0 keeps everything");
    /* a gap in the timestamps does not make it catch up with a burst */
    svlm_sampler s;
    svlm_sampler_init(&s, 1, 0);
    CHECK(svlm_sampler_take(&s, 0, 0) && svlm_sampler_take(&s, 10, 0) && !svlm_sampler_take(&s, 10.5, 0) &&
              svlm_sampler_take(&s, 11, 0),
          "after a 10 s gap, the grid continues from there");
    CHECK(svlm_sampler_lead(&s, 11.2, 0) > 0.79 && svlm_sampler_lead(&s, 11.2, 0) < 0.81,
          "lead to the next kept frame");
    /* timestamps that restart (a wrapped stream) start the grid over */
    CHECK(svlm_sampler_take(&s, 0, 0), "restarted timeline keeps its first frame");
}

/* The timeline: continuous across a reconnect, re-anchored when a live clock jumps back, held at
 * the last time for a recording's small steps back. */
static void test_timeline(void) {
    svlm_timeline t;
    svlm_timeline_init(&t, 1);
    double out = 0;
    for (int i = 0; i < 50; i++) /* 5 s of a 10 fps camera */
        out = svlm_timeline_place(&t, 100.0 + 0.1 * i, 1000.0 + 0.1 * i);
    CHECK(fabs(out - 104.9) < 1e-9, "steady: %.3f", out);
    /* the camera's encoder restarts: its clock is back at 2 s; the timeline goes on by the wall gap */
    out = svlm_timeline_place(&t, 2.0, 1005.0);
    CHECK(fabs(out - 105.0) < 1e-9, "a live clock 103 s back: %.3f (expected 105.0)", out);
    out = svlm_timeline_place(&t, 2.1, 1005.1);
    CHECK(fabs(out - 105.1) < 1e-9, "after the jump: %.3f", out);
    /* jitter under the threshold is held, not re-anchored */
    out = svlm_timeline_place(&t, 1.7, 1005.2);
    CHECK(fabs(out - 105.1) < 1e-9, "0.4 s back: held at %.3f", out);
    /* a reconnect: the new session's clock restarts at 0, 3 s of wall time later */
    svlm_timeline_new_session(&t);
    out = svlm_timeline_place(&t, 0.0, 1008.2);
    CHECK(fabs(out - 108.1) < 1e-9, "after a reconnect: %.3f (expected 108.1)", out);
    /* a recording holds every step back (its last frames may step back), and never jumps */
    svlm_timeline_init(&t, 0);
    svlm_timeline_place(&t, 10.0, 0.0);
    out = svlm_timeline_place(&t, 4.0, 0.1);
    CHECK(fabs(out - 10.0) < 1e-9, "a recording 6 s back: held at %.3f", out);
    out = svlm_timeline_place(&t, 10.5, 0.2);
    CHECK(fabs(out - 10.5) < 1e-9, "a recording after: %.3f", out);
}

/* The backend's clock (before sampling): a recording whose timestamps stop advancing gets its
 * frames timed by the frame rate; a small step back is left to the timeline; live clocks are
 * left alone except where a timestamp is missing. Timestamps in milliseconds here. */
static void test_frame_clock(void) {
    svlm_frame_clock c;
    svlm_frame_clock_init(&c, 1);
    int ok = 1;
    for (int i = 0; i < 5000; i++) /* every pts 0 */
        ok &= fabs(svlm_frame_clock_next(&c, 1, 0, 0.0, 0.1, 0) - 0.1 * i) < 1e-6;
    CHECK(ok && c.replaced == 4999, "all-zero pts: frames 0.1 s apart (%lld replaced)",
          (long long)c.replaced);

    svlm_frame_clock_init(&c, 1);
    double out = 0;
    for (int i = 0; i < 10; i++) /* 0.0 .. 0.9 s, then stuck at 0.9 s for 10 frames */
        out = svlm_frame_clock_next(&c, 1, 100 * i, 0.1 * i, 0.1, 0);
    CHECK(fabs(out - 0.9) < 1e-9 && c.replaced == 0, "advancing pts are kept: %g", out);
    CHECK(svlm_frame_clock_stalled(&c, 1, 900, 0.9) && !svlm_frame_clock_stalled(&c, 1, 1000, 1.0) &&
              !svlm_frame_clock_stalled(&c, 0, 0, 0),
          "a packet at the same pts is stalled, a later one or one without pts is not");
    for (int i = 0; i < 10; i++)
        out = svlm_frame_clock_next(&c, 1, 900, 0.9, 0.1, 0);
    CHECK(fabs(out - 1.9) < 1e-9 && c.replaced == 10, "stuck at 0.9 s: the 10th repeat at %g", out);
    out = svlm_frame_clock_next(&c, 1, 1500, 1.5, 0.1, 0);
    CHECK(fabs(out - 2.0) < 1e-9, "the file's clock resumes behind the synthesized time: %g", out);
    out = svlm_frame_clock_next(&c, 1, 2500, 2.5, 0.1, 0);
    CHECK(fabs(out - 2.5) < 1e-9 && !c.synth, "and is used again once past it: %g", out);

    /* a recording's last frame a frame back (box_printed_text_handheld.mp4): left to the timeline */
    out = svlm_frame_clock_next(&c, 1, 2467, 2.467, 0.1, 0);
    CHECK(fabs(out - 2.467) < 1e-9 && c.replaced == 11, "a small step back is kept: %g", out);
    /* timestamps that restart from 0 (two recordings joined) */
    svlm_frame_clock_init(&c, 1);
    svlm_frame_clock_next(&c, 1, 10000, 10.0, 0.04, 0);
    out = svlm_frame_clock_next(&c, 1, 0, 0.0, 0.04, 0);
    double out2 = svlm_frame_clock_next(&c, 1, 40, 0.04, 0.04, 0);
    CHECK(fabs(out - 10.04) < 1e-9 && fabs(out2 - 10.08) < 1e-9, "restarted pts continue: %g %g", out, out2);

    /* missing timestamps: synthesized for live and replay alike, from 0 */
    svlm_frame_clock_init(&c, 0);
    out = svlm_frame_clock_next(&c, 0, 0, 0, 0.04, 0);
    out2 = svlm_frame_clock_next(&c, 0, 0, 0, 0.04, 0);
    CHECK(out == 0 && fabs(out2 - 0.04) < 1e-9, "missing pts: %g %g", out, out2);
    /* a live clock that repeats or jumps back is the timeline's business */
    out = svlm_frame_clock_next(&c, 1, 5, 5.0, 0.04, 0);
    out2 = svlm_frame_clock_next(&c, 1, 5, 5.0, 0.04, 0);
    double out3 = svlm_frame_clock_next(&c, 1, 1, 1.0, 0.04, 0);
    CHECK(out == 5.0 && out2 == 5.0 && out3 == 1.0 && c.replaced == 0, "live: %g %g %g", out, out2, out3);
}

/* A live clock's leap forward (a camera's clock set an hour on) is taken out; a start-up burst
 * (frames far faster than real time, each a frame on), a real gap (nothing for a minute, then the
 * right time) and a replay's leap are not touched. Then, with the timeline, the camera's clock set
 * back again continues the timeline too. Times in seconds (ts in ms), wall in seconds. */
static void test_frame_clock_leap(void) {
    svlm_frame_clock c;
    svlm_frame_clock_init(&c, 0);
    c.live = 1;
    double out = 0, wall = 100;
    int own = 1;
    for (int i = 0; i < 750; i++, wall += 0.0007) /* an HLS start: 30 s of frames within 0.5 s */
        own &= svlm_frame_clock_next(&c, 1, 40 * i, 0.04 * i, 0.04, wall) == 0.04 * i;
    CHECK(own && c.leaps == 0, "a start-up burst keeps its own times (%lld leaps)", (long long)c.leaps);
    for (int i = 750; i < 800; i++, wall += 0.04) /* then real time */
        out = svlm_frame_clock_next(&c, 1, 40 * i, 0.04 * i, 0.04, wall);
    wall += 60; /* a minute without frames, then the right time */
    out = svlm_frame_clock_next(&c, 1, 40 * 2300, 92.0, 0.04, wall);
    CHECK(out == 92.0 && c.leaps == 0, "a real gap of 60 s is kept: %g", out);
    wall += 0.04; /* the camera's clock jumps an hour on */
    out = svlm_frame_clock_next(&c, 1, 3692040, 3692.04, 0.04, wall);
    CHECK(fabs(out - 92.04) < 1e-9 && c.leaps == 1, "an hour's leap: %g (expected 92.04)", out);
    wall += 0.04;
    out = svlm_frame_clock_next(&c, 1, 3692080, 3692.08, 0.04, wall);
    CHECK(fabs(out - 92.08) < 1e-9, "the frames after it keep the shift: %g", out);
    out = svlm_frame_clock_next(&c, 0, 0, 0, 0.04, wall + 0.04);
    CHECK(fabs(out - 92.12) < 1e-9, "a frame without a timestamp after it: %g", out);
    /* small leaps pass: under 10 s, or under 50 frames of a slow (1 fps) camera */
    out = svlm_frame_clock_next(&c, 1, 3701000, 3701.0, 0.04, wall + 0.08);
    CHECK(fabs(out - 101.0) < 1e-9 && c.leaps == 1, "a 9 s leap is kept: %g", out);
    out = svlm_frame_clock_next(&c, 1, 3731000, 3731.0, 1.0, wall + 1.08);
    CHECK(fabs(out - 131.0) < 1e-9 && c.leaps == 1, "30 s at 1 fps is kept: %g", out);

    /* a minute's outage whose last second of frames came late, with the first frame after it (a
     * TCP link that held them): the gap is real, not a leap */
    svlm_frame_clock_init(&c, 0);
    c.live = 1;
    for (int i = 0; i < 250; i++)
        out = svlm_frame_clock_next(&c, 1, 40 * i, 0.04 * i, 0.04, i < 225 ? 500 + 0.04 * i : 570.0);
    out = svlm_frame_clock_next(&c, 1, 70000, 70.0, 0.04, 570.001);
    CHECK(out == 70.0 && c.leaps == 0, "a gap after frames that came late is kept: %g (%lld leaps)", out,
          (long long)c.leaps);

    /* the camera's clock set back: the timeline re-anchors it (the frame clock leaves it) */
    svlm_timeline tl;
    svlm_timeline_init(&tl, 1);
    svlm_frame_clock_init(&c, 0);
    c.live = 1;
    double placed[4];
    static const double pts[4] = {0, 0.04, 3600.08, 0.12}; /* on an hour, then back */
    for (int i = 0; i < 4; i++)
        placed[i] = svlm_timeline_place(
            &tl, svlm_frame_clock_next(&c, 1, (int64_t)(pts[i] * 1000), pts[i], 0.04, 1.0 + 0.04 * i),
            1000.0 + 0.04 * i);
    CHECK(fabs(placed[2] - 0.08) < 1e-9 && fabs(placed[3] - 0.12) < 1e-9,
          "an hour on and back again: %g %g %g %g (expected 0 0.04 0.08 0.12)", placed[0], placed[1],
          placed[2], placed[3]);

    /* a replay keeps its timestamps exactly, leap or not */
    svlm_frame_clock_init(&c, 1);
    svlm_frame_clock_next(&c, 1, 2960, 2.96, 0.04, 0);
    out = svlm_frame_clock_next(&c, 1, 3600000, 3600.0, 0.04, 0);
    CHECK(out == 3600.0 && c.leaps == 0, "a replay's leap is kept: %g", out);
}

/* The GStreamer backend's uses of the clock: a decoder's input (timestamps in decode order) is
 * watched for a stall, B-frames' presentation times stepping back a frame or two are not one; and
 * the clock of its output judges repeats only once that input stalled (a decoder may give frames
 * after damaged ones the time of the next good one: kept until then). Milliseconds here. */
static void test_frame_clock_gst(void) {
    svlm_frame_clock in;
    svlm_frame_clock_init(&in, 1);
    static const int64_t bframes[] = {0, 120, 40, 80, 240, 160, 200, 360, 280, 320};
    for (int i = 0; i < 10; i++)
        svlm_frame_clock_next(&in, 1, bframes[i], bframes[i] / 1000.0, 0, 0);
    CHECK(in.replaced == 0, "B-frames' presentation times in decode order: %lld stalls",
          (long long)in.replaced);
    svlm_frame_clock_init(&in, 1);
    svlm_frame_clock_next(&in, 1, 0, 0, 0, 0);
    svlm_frame_clock_next(&in, 0, 0, 0, 0, 0); /* a packet without a timestamp is no stall */
    CHECK(in.replaced == 0, "missing timestamps: %lld stalls", (long long)in.replaced);
    svlm_frame_clock_next(&in, 1, 0, 0, 0, 0);
    svlm_frame_clock_next(&in, 1, 0, 0, 0, 0);
    CHECK(in.replaced == 1, "every timestamp 0: a stall at the second one in a row");

    svlm_frame_clock out;
    svlm_frame_clock_init(&out, 0); /* a replay whose decoder's input has not stalled (yet) */
    double t[5];
    static const int64_t box[] = {0, 101, 101, 101, 134};
    for (int i = 0; i < 5; i++)
        t[i] = svlm_frame_clock_next(&out, 1, box[i], box[i] / 1000.0, 0.04, 0);
    CHECK(t[0] == 0 && t[1] == 0.101 && t[2] == 0.101 && t[3] == 0.101 && t[4] == 0.134 && out.replaced == 0,
          "a decoder's repeated time kept: %g %g %g %g %g", t[0], t[1], t[2], t[3], t[4]);
    out.replay = 1; /* the input stalled: from now on repeats are timed by the frame rate */
    t[0] = svlm_frame_clock_next(&out, 1, 134, 0.134, 0.04, 0);
    t[1] = svlm_frame_clock_next(&out, 1, 134, 0.134, 0.04, 0);
    CHECK(fabs(t[0] - 0.174) < 1e-9 && fabs(t[1] - 0.214) < 1e-9 && out.replaced == 2,
          "then synthesized: %g %g", t[0], t[1]);
}

/* A live clock slower than real time (an MJPEG demuxer's 25 fps for a 5 fps camera: 0.04 s a
 * frame, one every 0.2 s) is held SVLM_TIMELINE_LAG_S behind its least delayed frame, from there
 * following the arrival clock, never going back. */
static void test_frame_clock_lag(void) {
    svlm_frame_clock c;
    svlm_frame_clock_init(&c, 0);
    c.live = 1;
    double wall = 100, out = 0, prev = -1;
    int mono = 1, first_held = -1;
    for (int i = 0; i < 300; i++, wall += 0.2) {
        out = svlm_frame_clock_next(&c, 1, i, 0.04 * i, 0.04, wall);
        mono &= out >= prev;
        if (first_held < 0 && c.lags) first_held = i;
        prev = out;
    }
    CHECK(mono && (first_held == 125 || first_held == 126) &&
              fabs(out - (0.2 * 299 - SVLM_TIMELINE_LAG_S)) < 1e-6,
          "a clock at 1/5 real time: held from frame %d (expected 125 or 126), last %g (expected %g)",
          first_held, out, 0.2 * 299 - SVLM_TIMELINE_LAG_S);
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    nanosleep(&ts, NULL);
}

/* In a child: the process is stopped (SIGSTOP by itself, SIGCONT from the parent 1.3 s later)
 * between two checks; exits 0 when the check after the resume saw no stall or open timeout. */
static int frozen_child(int open_timeout) {
    svlm_ingest_ctl ctl;
    svlm_ctl_init(&ctl, open_timeout ? 0 : 0.3);
    svlm_ctl_touch(&ctl);
    if (open_timeout) atomic_store(&ctl.open_deadline_ns, (long long)((svlm_mono_now() + 0.5) * 1e9));
    if (svlm_ctl_should_stop(&ctl) != SVLM_STOP_NONE) return 1;
    raise(SIGSTOP);
    if (svlm_ctl_should_stop(&ctl) != SVLM_STOP_NONE) return 2; /* right after the resume */
    double t0 = svlm_mono_now();
    svlm_stop_reason why;
    while (!(why = svlm_ctl_should_stop(&ctl)) && svlm_mono_now() - t0 < 3)
        sleep_s(0.02);
    const double took = svlm_mono_now() - t0; /* the watchdog still works afterwards */
    if (why != (open_timeout ? SVLM_STOP_OPEN_TIMEOUT : SVLM_STOP_STALL) || took < 0.1 || took > 1.2)
        return 3;
    return 0;
}

/* The watchdog counts the time a source was given to deliver: while the whole process was
 * stopped, neither a stall nor an open's time runs; a reader merely blocked in a call (which makes
 * no checks) is stalled when it comes back. */
static void test_watchdog_frozen(void) {
    svlm_ingest_ctl ctl;
    svlm_ctl_init(&ctl, 0.3);
    svlm_ctl_touch(&ctl);
    CHECK(svlm_ctl_should_stop(&ctl) == SVLM_STOP_NONE, "fresh");
    sleep_s(1.3); /* blocked (a hung resolver): the process ran meanwhile */
    CHECK(svlm_ctl_should_stop(&ctl) == SVLM_STOP_STALL, "1.3 s blocked in a call is a stall");
    for (int open_timeout = 0; open_timeout < 2; open_timeout++) {
        fflush(NULL);
        pid_t pid = fork();
        REQUIRE(pid >= 0, "fork");
        if (pid == 0) _exit(frozen_child(open_timeout));
        int st = 0;
        REQUIRE(waitpid(pid, &st, WUNTRACED) == pid && WIFSTOPPED(st), "the child did not stop");
        sleep_s(1.3);
        kill(pid, SIGCONT);
        REQUIRE(waitpid(pid, &st, 0) == pid, "waitpid");
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "%s: a process stopped for 1.3 s: child exit %d (1: fresh, 2: counted the stop, 3: no watchdog "
              "after)",
              open_timeout ? "open timeout 0.5 s" : "watchdog 0.3 s", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
}

/* A live pattern cannot stall: frames 0.5 s apart under a 0.1 s watchdog all come. */
static void test_pattern_no_stall(void) {
    svlm_source_opts o;
    svlm_source_opts_default(&o);
    o.fps = 0;
    o.stall_timeout_s = 0.1;
    svlm_source *src = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_source_open(&src, "pattern:live,rate=2,duration=0,size=32x32", &o, &err) == SVLM_OK,
            "open: %s", err.msg);
    int frames = 0, events = 0;
    svlm_source_item it;
    svlm_status st = SVLM_OK;
    while (frames < 3 && (st = svlm_source_next(src, &it, &err)) == SVLM_OK) {
        if (it.kind == SVLM_ITEM_EVENT) {
            events++;
            continue;
        }
        svlm_frame_release(&it.frame);
        frames++;
    }
    CHECK(st == SVLM_OK && frames == 3 && events == 0, "3 frames (%d), no event (%d): %s", frames, events,
          st ? err.msg : "");
    svlm_source_close(src);
}

#if defined(SVLM_HAVE_FFMPEG) || defined(SVLM_HAVE_GST)
/* keep_trying: a camera that is down at open starts reconnecting (a DISCONNECT saying why first);
 * a recording, a bad URI, or the same camera without keep_trying still fail the open. */
static void test_keep_trying(void) {
    svlm_source_opts o;
    svlm_source_opts_default(&o);
    o.keep_trying = 1;
    o.backoff_initial_s = o.backoff_max_s = 0.05;
    o.max_reconnects = 2;
    o.open_timeout_s = 3;
    svlm_source *src = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_source_open(&src, "rtsp://127.0.0.1:1/x", &o, &err) == SVLM_OK && src,
            "a camera that is down opens: %s", err.msg);
    CHECK(err.status == SVLM_E_IO && err.msg[0], "and says why: %d %s", err.status, err.msg);
    svlm_source_item it;
    svlm_err e2 = {0};
    CHECK(svlm_source_next(src, &it, &e2) == SVLM_OK && it.kind == SVLM_ITEM_EVENT &&
              it.event.kind == SVLM_EVENT_DISCONNECT && !strcmp(it.event.detail, err.msg),
          "first a DISCONNECT: kind %d '%s'", it.event.kind, it.event.detail);
    svlm_status st;
    while ((st = svlm_source_next(src, &it, &e2)) == SVLM_OK)
        if (it.kind == SVLM_ITEM_FRAME) svlm_frame_release(&it.frame);
    CHECK(st == SVLM_E_IO && strstr(e2.msg, "gave up after 2"), "then reconnects, and gives up: %s", e2.msg);
    svlm_source_close(src);
    src = NULL;
    CHECK(svlm_source_open(&src, "/nonexistent/clip.mp4", &o, &err) == SVLM_E_IO && !src,
          "a missing recording still fails: %s", err.msg);
    CHECK(svlm_source_open(&src, "bogus://x", &o, &err) == SVLM_E_INVALID && !src, "a bad URI still fails");
    o.keep_trying = 0;
    CHECK(svlm_source_open(&src, "rtsp://127.0.0.1:1/x", &o, &err) == SVLM_E_IO && !src,
          "without keep_trying the open fails: %s", err.msg);
}

typedef struct open_job {
    char uri[64];
    svlm_source_opts o;
    svlm_status st;
    double took;
} open_job;

static void *open_main(void *arg) {
    open_job *j = arg;
    svlm_source *src = NULL;
    svlm_err err = {0};
    const double t0 = svlm_mono_now();
    j->st = svlm_source_open(&src, j->uri, &j->o, &err);
    j->took = svlm_mono_now() - t0;
    svlm_source_close(src);
    return NULL;
}

/* An open of a server that accepts and never answers gives up as soon as the owner's abort_flag is
 * set (a server shutting down), not at its open timeout. */
static void test_abort_open(void) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    REQUIRE(fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) && !listen(fd, 4) &&
                !getsockname(fd, (struct sockaddr *)&a, &len),
            "a listener");
    atomic_int stop = 0;
    open_job j;
    memset(&j, 0, sizeof j);
    snprintf(j.uri, sizeof j.uri, "rtsp://127.0.0.1:%d/x", ntohs(a.sin_port));
    svlm_source_opts_default(&j.o);
    j.o.open_timeout_s = 20;
    j.o.abort_flag = &stop;
    pthread_t th;
    REQUIRE(!pthread_create(&th, NULL, open_main, &j), "thread");
    sleep_s(0.5);
    atomic_store(&stop, 1);
    pthread_join(th, NULL);
    close(fd);
    CHECK(j.st == SVLM_E_CANCELLED && j.took < 2.5, "aborted after %.2f s: status %d", j.took, j.st);
}
#endif

static void test_output_size(void) {
    svlm_source_opts o;
    svlm_source_opts_default(&o);
    int w, h;
    svlm_output_size(&o, 1920, 1080, &w, &h);
    CHECK(w == 512 && h == 288, "1080p -> %dx%d", w, h);
    svlm_output_size(&o, 360, 1080, &w, &h);
    CHECK(w == 171 && h == 512, "portrait -> %dx%d (GStreamer's videoscale gives 171x512)", w, h);
    svlm_output_size(&o, 333, 199, &w, &h);
    CHECK(w == 333 && h == 199, "small frames are not enlarged: %dx%d", w, h);
    o.max_edge = 0;
    svlm_output_size(&o, 1920, 1080, &w, &h);
    CHECK(w == 1920 && h == 1080, "native size kept");
    o.width = 64, o.height = 48;
    svlm_output_size(&o, 1920, 1080, &w, &h);
    CHECK(w == 64 && h == 48, "explicit size wins");
}

static svlm_source_item frame_item(int tag) {
    svlm_source_item it;
    memset(&it, 0, sizeof it);
    it.kind = SVLM_ITEM_FRAME;
    svlm_frame_alloc(&it.frame, 2, 2, NULL);
    it.frame.pts = tag;
    return it;
}

static void test_queue(void) {
    svlm_frame_queue q;
    REQUIRE(svlm_frame_queue_init(&q, 3) == SVLM_OK, "queue init");
    svlm_source_item it = frame_item(0);
    svlm_frame_queue_push(&q, &it);
    it.kind = SVLM_ITEM_EVENT;
    it.event.kind = SVLM_EVENT_RECONNECT;
    svlm_frame_queue_push(&q, &it);
    for (int i = 1; i <= 5; i++) {
        it = frame_item(i);
        svlm_frame_queue_push(&q, &it);
    }
    /* 6 frames into a 3-frame queue: frames 0, 1, 2 dropped, the event kept in place */
    svlm_err err;
    atomic_int cancel = 0;
    svlm_source_item out;
    CHECK(svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_OK && out.kind == SVLM_ITEM_EVENT &&
              out.event.kind == SVLM_EVENT_DROP && out.event.count == 3 && out.event.total == 3,
          "drop event first, count 3");
    CHECK(svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_OK && out.kind == SVLM_ITEM_EVENT &&
              out.event.kind == SVLM_EVENT_RECONNECT,
          "the event is never dropped");
    for (int i = 3; i <= 5; i++) {
        CHECK(svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_OK && out.kind == SVLM_ITEM_FRAME &&
                  out.frame.pts == i,
              "newest frames kept (%d)", i);
        svlm_frame_release(&out.frame);
    }
    atomic_store(&cancel, 1);
    CHECK(svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_E_CANCELLED, "cancel wakes an empty pop");
    atomic_store(&cancel, 0);
    svlm_frame_queue_finish(&q, SVLM_E_END, NULL);
    CHECK(svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_E_END,
          "finished queue returns the final status");
    CHECK(svlm_frame_queue_dropped(&q) == 3, "dropped total");
    it = frame_item(9); /* left queued: destroy frees it */
    svlm_frame_queue_push(&q, &it);
    svlm_frame_queue_destroy(&q);
}

static void push_event(svlm_frame_queue *q, svlm_source_event_kind kind, int64_t count, int64_t total,
                       double seconds) {
    svlm_source_item it;
    memset(&it, 0, sizeof it);
    it.kind = SVLM_ITEM_EVENT;
    it.event.kind = kind;
    it.event.count = count;
    it.event.total = total;
    it.event.seconds = seconds;
    snprintf(it.event.detail, sizeof it.event.detail, "event %lld", (long long)total);
    svlm_frame_queue_push(q, &it);
}

/* A camera that fails, reconnects and sends damaged data for days beside a consumer that reads
 * nothing: the waiting events stay bounded, and what the consumer reads at last adds up exactly. */
static void test_queue_events_bounded(void) {
    svlm_frame_queue q;
    REQUIRE(svlm_frame_queue_init(&q, 4) == SVLM_OK, "queue init");
    int64_t corrupt = 0, reconnects = 0, attempts = 0, frames = 0, pushed = 0;
    double downtime = 0;
    int max_events = 0, ok = 1;
    for (int i = 0; i < 200000; i++) {
        if (i % 3 == 0) { /* damaged packets, reported as they are found */
            corrupt += 1 + i % 5;
            push_event(&q, SVLM_EVENT_CORRUPT, 1 + i % 5, corrupt, 0), pushed++;
        }
        if (i % 7 == 0) { /* the stream is lost and comes back */
            push_event(&q, SVLM_EVENT_STALL, 0, 0, 5), pushed++;
            push_event(&q, SVLM_EVENT_DISCONNECT, 0, reconnects, 0), pushed++;
            attempts += 1 + i % 4;
            downtime += 0.25;
            push_event(&q, SVLM_EVENT_RECONNECT, 1 + i % 4, ++reconnects, 0.25), pushed++;
        }
        if (i % 2 == 0) {
            svlm_source_item it = frame_item(i);
            svlm_frame_queue_push(&q, &it);
            frames++;
        }
        int waiting = 0;
        svlm_frame_queue_event_counts(&q, &waiting, NULL);
        if (waiting > max_events) max_events = waiting;
        ok &= q.frames <= 4;
    }
    CHECK(ok && max_events <= SVLM_QUEUE_MAX_EVENTS,
          "%lld events, %lld frames pushed: at most %d events waiting", (long long)pushed, (long long)frames,
          max_events);
    int waiting = 0;
    int64_t merged = 0;
    svlm_frame_queue_event_counts(&q, &waiting, &merged);
    svlm_frame_queue_finish(&q, SVLM_E_END, NULL);
    /* the consumer reads everything at last */
    int64_t got_corrupt = 0, last_corrupt_total = -1, got_attempts = 0, last_reconnect_total = -1, popped = 0;
    int64_t got_frames = 0, drop_count = 0, drop_total = 0;
    double got_downtime = 0;
    svlm_source_item out;
    svlm_err err;
    atomic_int cancel = 0;
    while (svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_OK) {
        if (out.kind == SVLM_ITEM_FRAME) {
            got_frames++;
            svlm_frame_release(&out.frame);
            continue;
        }
        if (out.event.kind == SVLM_EVENT_DROP) {
            drop_count += out.event.count;
            drop_total = out.event.total;
            continue;
        }
        popped++;
        if (out.event.kind == SVLM_EVENT_CORRUPT) {
            got_corrupt += out.event.count;
            CHECK(out.event.total > last_corrupt_total, "corrupt totals rise");
            last_corrupt_total = out.event.total;
        } else if (out.event.kind == SVLM_EVENT_RECONNECT) {
            got_attempts += out.event.count;
            got_downtime += out.event.seconds;
            last_reconnect_total = out.event.total;
        }
    }
    CHECK(popped == waiting && popped + merged == pushed, "%lld events read + %lld merged = %lld pushed",
          (long long)popped, (long long)merged, (long long)pushed);
    CHECK(got_corrupt == corrupt && last_corrupt_total == corrupt,
          "corrupt: counts add up to %lld (total %lld), %lld", (long long)got_corrupt,
          (long long)last_corrupt_total, (long long)corrupt);
    CHECK(last_reconnect_total == reconnects && got_attempts == attempts &&
              fabs(got_downtime - downtime) < 1e-6,
          "reconnects: total %lld of %lld, attempts %lld of %lld, downtime %g of %g",
          (long long)last_reconnect_total, (long long)reconnects, (long long)got_attempts,
          (long long)attempts, got_downtime, downtime);
    CHECK(got_frames == 4 && drop_count == frames - 4 && drop_total == frames - 4 &&
              svlm_frame_queue_dropped(&q) == frames - 4,
          "frames: %lld kept, %lld dropped", (long long)got_frames, (long long)drop_count);
    svlm_frame_queue_destroy(&q);

    /* the same kind again and again is one waiting event */
    REQUIRE(svlm_frame_queue_init(&q, 2) == SVLM_OK, "queue init");
    for (int i = 1; i <= 10000; i++)
        push_event(&q, SVLM_EVENT_CORRUPT, 1, i, 0);
    svlm_frame_queue_event_counts(&q, &waiting, &merged);
    CHECK(waiting == 1 && merged == 9999, "10000 corrupt events: %d waiting", waiting);
    CHECK(svlm_frame_queue_pop(&q, &out, &cancel, &err) == SVLM_OK && out.kind == SVLM_ITEM_EVENT &&
              out.event.count == 10000 && out.event.total == 10000 &&
              !strcmp(out.event.detail, "event 10000"),
          "merged: count %lld total %lld detail '%s'", (long long)out.event.count, (long long)out.event.total,
          out.event.detail);
    svlm_frame_queue_destroy(&q);
}

/* Whatever the queue merges or drops, a break (DISCONNECT, RECONNECT: the engine restarts token
 * compression at the next frame) lies between two frames the consumer reads exactly when the
 * stream had one between them: never lost, never moved. A flapping camera beside a consumer that
 * reads in bursts, queues of several capacities. */
static void test_queue_breaks_kept(void) {
    static const int capacities[] = {1, 4, 32};
    for (int ci = 0; ci < 3; ci++) {
        svlm_frame_queue q;
        REQUIRE(svlm_frame_queue_init(&q, capacities[ci]) == SVLM_OK, "queue init");
        int64_t session = 0, last_session = 0, frames_read = 0, wrong = 0, first_wrong = -1, reconnects = 0;
        int break_seen = 0;
        svlm_source_item out;
        svlm_err err;
        atomic_int cancel = 0;
        unsigned seed = 7;
        for (int i = 0; i < 20000; i++) {
            const unsigned r = rand_r(&seed) % 16;
            if (r < 2) push_event(&q, SVLM_EVENT_CORRUPT, 1, i, 0);
            if (r == 2) push_event(&q, SVLM_EVENT_STALL, 0, 0, 5);
            if (r < 5) { /* lost and back: pts carries the session */
                push_event(&q, SVLM_EVENT_DISCONNECT, 0, reconnects, 0);
                push_event(&q, SVLM_EVENT_RECONNECT, 1, ++reconnects, 0.25);
                session++;
            }
            for (unsigned k = rand_r(&seed) % 3; k > 0; k--) {
                svlm_source_item it = frame_item((int)session);
                svlm_frame_queue_push(&q, &it);
            }
            /* the consumer wakes now and then and reads a few items */
            for (unsigned k = i % 53 == 0 ? 40 : 0; k > 0; k--) {
                int waiting = 0;
                svlm_frame_queue_event_counts(&q, &waiting, NULL);
                if (!waiting && !q.frames && !q.dropped_pending) break;
                if (svlm_frame_queue_pop(&q, &out, &cancel, &err) != SVLM_OK) break;
                if (out.kind == SVLM_ITEM_EVENT) {
                    break_seen |=
                        out.event.kind == SVLM_EVENT_DISCONNECT || out.event.kind == SVLM_EVENT_RECONNECT;
                    continue;
                }
                const int64_t s = (int64_t)out.frame.pts;
                if (frames_read && (s != last_session) != break_seen && !wrong++) first_wrong = frames_read;
                last_session = s, break_seen = 0, frames_read++;
                svlm_frame_release(&out.frame);
            }
        }
        CHECK(frames_read > 100 && wrong == 0,
              "capacity %d: %lld of %lld frames read with a break lost or moved before them (first: frame "
              "%lld)",
              capacities[ci], (long long)wrong, (long long)frames_read, (long long)first_wrong);
        int waiting = 0;
        svlm_frame_queue_event_counts(&q, &waiting, NULL);
        CHECK(waiting <= SVLM_QUEUE_MAX_EVENTS, "capacity %d: %d events waiting", capacities[ci], waiting);
        svlm_frame_queue_destroy(&q);
    }
}

static void test_pattern_source(void) {
    svlm_source_opts o;
    svlm_source_opts_default(&o);
    o.fps = 5;
    svlm_source *src = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_source_open(&src, "pattern:size=320x200,rate=25,duration=2", &o, &err) == SVLM_OK,
            "open pattern: %s", err.msg);
    CHECK(!strcmp(svlm_source_backend_name(src), "pattern") && !svlm_source_is_live(src),
          "pattern replay backend");
    int frames = 0, eos = 0;
    svlm_source_item it;
    svlm_status st;
    while ((st = svlm_source_next(src, &it, &err)) == SVLM_OK) {
        if (it.kind == SVLM_ITEM_EVENT) {
            eos += it.event.kind == SVLM_EVENT_EOS;
            continue;
        }
        CHECK(it.frame.width == 320 && it.frame.height == 200 && it.frame.stride == 960, "size");
        CHECK(fabs(it.frame.pts - frames * 0.2) < 1e-9 && it.frame.index == frames, "pts %g index %lld",
              it.frame.pts, (long long)it.frame.index);
        /* the frame number painted in the top-left cells (20 px wide) */
        int n = 0;
        for (int bit = 0; bit < 16; bit++)
            n = (n << 1) | (it.frame.data[3 * (bit * 20 + 10)] > 128);
        CHECK(n == frames * 5, "painted frame number %d, expected %d", n, frames * 5);
        svlm_frame_release(&it.frame);
        frames++;
    }
    CHECK(st == SVLM_E_END && frames == 10 && eos == 1, "10 frames then EOS (st %d, %d frames)", st, frames);
    svlm_source_stats stats;
    svlm_source_stats_get(src, &stats);
    CHECK(stats.decoded == 50 && stats.delivered == 10, "stats %lld/%lld", (long long)stats.decoded,
          (long long)stats.delivered);
    svlm_source_close(src);

    /* a live pattern, cancelled from this thread while the reader runs */
    REQUIRE(svlm_source_open(&src, "pattern:live,rate=50,duration=0", &o, &err) == SVLM_OK,
            "open live pattern: %s", err.msg);
    CHECK(svlm_source_is_live(src), "live");
    REQUIRE(svlm_source_next(src, &it, &err) == SVLM_OK && it.kind == SVLM_ITEM_FRAME, "first live frame");
    svlm_frame_release(&it.frame);
    svlm_source_cancel(src);
    CHECK(svlm_source_next(src, &it, &err) == SVLM_E_CANCELLED, "cancelled");
    svlm_source_close(src);

    CHECK(svlm_source_open(&src, "pattern:size=1x1", &o, &err) == SVLM_E_INVALID && !src,
          "bad pattern size: %s", err.msg);
    CHECK(svlm_source_open(&src, "/nonexistent/clip.mp4", &o, &err) == SVLM_E_IO &&
              strstr(err.msg, "no such file"),
          "missing file: %s", err.msg);
    CHECK(svlm_source_open(&src, "bogus://x", &o, &err) == SVLM_E_INVALID &&
              strstr(err.msg, "unknown URI scheme"),
          "unknown scheme");
    o.fps = -1;
    CHECK(svlm_source_open(&src, "pattern:", &o, &err) == SVLM_E_INVALID, "negative fps refused");
}

/* What a live source needs of an HLS playlist: its segments' numbers, its end, a master's variant. */
static void test_hls_playlist(void) {
    svlm_hls_playlist pl;
    svlm_err err = {0};
    const char *live =
        "\xEF\xBB\xBF#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:2\r\n"
        "#EXT-X-MEDIA-SEQUENCE:41\r\n#EXTINF:2.0,\r\nseg41.ts\r\n#EXTINF:2.0,\r\n"
        "#EXT-X-PROGRAM-DATE-TIME:2026-11-28T12:00:00Z\r\nseg42.ts\r\n\r\n#EXTINF:2.0,\nseg43.ts";
    REQUIRE(svlm_hls_parse(live, strlen(live), &pl, &err) == SVLM_OK, "live playlist: %s", err.msg);
    CHECK(pl.first_seq == 41 && pl.n_segments == 3 && svlm_hls_last_seq(&pl) == 43 && !pl.finished &&
              !pl.variant[0],
          "live: first %lld, %lld segments, finished %d", (long long)pl.first_seq, (long long)pl.n_segments,
          pl.finished);
    const char *vod = "#EXTM3U\n#EXTINF:2.0,\na.ts\n#EXTINF:2.0,\nb.ts\n#EXT-X-ENDLIST\n";
    REQUIRE(svlm_hls_parse(vod, strlen(vod), &pl, &err) == SVLM_OK, "VOD playlist");
    CHECK(pl.finished && pl.first_seq == 0 && svlm_hls_last_seq(&pl) == 1, "VOD: finished, segments 0 and 1");
    const char *master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow/index.m3u8\n"
                         "#EXT-X-STREAM-INF:BANDWIDTH=3000000\nhigh/index.m3u8\n";
    REQUIRE(svlm_hls_parse(master, strlen(master), &pl, &err) == SVLM_OK, "master playlist");
    CHECK(!strcmp(pl.variant, "low/index.m3u8") && pl.n_segments == 0, "master: first variant '%s'",
          pl.variant);
    CHECK(svlm_hls_parse("<html>", 6, &pl, &err) == SVLM_E_FORMAT, "an HTML page is no playlist");
    CHECK(svlm_hls_parse("", 0, &pl, &err) == SVLM_E_FORMAT, "empty");

    char out[256];
    static const char *const cases[][3] = {
        {"http://h:8/live/cam.m3u8?token=1", "low/i.m3u8", "http://h:8/live/low/i.m3u8"},
        {"http://h:8/live/cam.m3u8", "/other/i.m3u8", "http://h:8/other/i.m3u8"},
        {"https://h/cam.m3u8", "//cdn/i.m3u8", "https://cdn/i.m3u8"},
        {"http://h/a/cam.m3u8", "http://x/y.m3u8", "http://x/y.m3u8"},
        {"http://h?x=/a/b", "i.m3u8", "http://h/i.m3u8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(svlm_hls_resolve(cases[i][0], cases[i][1], out, sizeof out) == 0 && !strcmp(out, cases[i][2]),
              "resolve '%s' against '%s': '%s', expected '%s'", cases[i][1], cases[i][0], out, cases[i][2]);
    CHECK(svlm_hls_resolve("http://h/a.m3u8", "b.m3u8", out, 8) == -1, "a result that does not fit");
}

int test_main(void) {
    test_hls_playlist();
    test_uri();
    test_sampler();
    test_timeline();
    test_frame_clock();
    test_frame_clock_gst();
    test_frame_clock_leap();
    test_frame_clock_lag();
    test_watchdog_frozen();
    test_pattern_no_stall();
#if defined(SVLM_HAVE_FFMPEG) || defined(SVLM_HAVE_GST)
    test_keep_trying();
    test_abort_open();
#endif
    test_output_size();
    test_queue();
    test_queue_events_bounded();
    test_queue_breaks_kept();
    test_pattern_source();
    return 0;
}
