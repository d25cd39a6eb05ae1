/*
 * A small RTSP server for the ingest tests (gst-rtsp-server), on 127.0.0.1 only.
 *
 *   rtsp_server --port P --file CLIP.mp4             serve an H.264 MP4 without re-encoding,
 *                                                     each client (or reconnect) from the start
 *   rtsp_server --port P --stamp                      a live 320x240 30 fps stream whose frames
 *                                                     carry the wall clock (see below)
 *   [--user U --pass W]                               require HTTP basic login
 *
 * Prints "READY rtsp://127.0.0.1:P/stream" on stdout once it listens.
 *
 * --stamp paints, just before encoding, the current CLOCK_REALTIME in milliseconds modulo
 * 2^24 as 24 cells 13 px wide and 32 px tall along the top (most significant bit first,
 * white = 1, black = 0), so a client can compute end-to-end latency from a decoded frame.
 */
#include <gst/gst.h>
#include <gst/rtsp-server/rtsp-server.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STAMP_BITS   24
#define STAMP_CELL_W 13
#define STAMP_CELL_H 32
#define STAMP_WIDTH  320

static GstPadProbeReturn stamp_probe(GstPad *pad, GstPadProbeInfo *info, gpointer user) {
    (void)pad, (void)user;
    GstBuffer *buf = gst_buffer_make_writable(GST_PAD_PROBE_INFO_BUFFER(info));
    GST_PAD_PROBE_INFO_DATA(info) = buf;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long ms =
        (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)ts.tv_nsec / 1000000ULL;
    unsigned stamp = (unsigned)(ms & ((1u << STAMP_BITS) - 1));
    GstMapInfo map;
    if (!gst_buffer_map(buf, &map, GST_MAP_WRITE)) return GST_PAD_PROBE_OK;
    /* I420: the Y plane comes first, STAMP_WIDTH bytes per row */
    for (int y = 0; y < STAMP_CELL_H; y++)
        for (int bit = 0; bit < STAMP_BITS; bit++) {
            unsigned char v = (stamp >> (STAMP_BITS - 1 - bit)) & 1 ? 235 : 16;
            memset(map.data + (size_t)y * STAMP_WIDTH + (size_t)bit * STAMP_CELL_W, v, STAMP_CELL_W);
        }
    gst_buffer_unmap(buf, &map);
    return GST_PAD_PROBE_OK;
}

static void on_media_configure(GstRTSPMediaFactory *factory, GstRTSPMedia *media, gpointer user) {
    (void)factory, (void)user;
    GstElement *bin = gst_rtsp_media_get_element(media);
    GstElement *stamp = gst_bin_get_by_name_recurse_up(GST_BIN(bin), "stamp");
    if (stamp) {
        GstPad *pad = gst_element_get_static_pad(stamp, "src");
        gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, stamp_probe, NULL, NULL);
        gst_object_unref(pad);
        gst_object_unref(stamp);
    }
    gst_object_unref(bin);
}

int main(int argc, char **argv) {
    const char *port = NULL, *file = NULL, *user = NULL, *pass = NULL;
    int stamp = 0;
    gst_init(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = argv[++i];
        else if (!strcmp(argv[i], "--file") && i + 1 < argc)
            file = argv[++i];
        else if (!strcmp(argv[i], "--user") && i + 1 < argc)
            user = argv[++i];
        else if (!strcmp(argv[i], "--pass") && i + 1 < argc)
            pass = argv[++i];
        else if (!strcmp(argv[i], "--stamp"))
            stamp = 1;
        else {
            fprintf(stderr, "usage: rtsp_server --port P (--file CLIP.mp4 | --stamp) [--user U --pass W]\n");
            return 2;
        }
    }
    if (!port || (!file && !stamp)) {
        fprintf(stderr, "rtsp_server: need --port and --file or --stamp\n");
        return 2;
    }
    char launch[4096];
    if (stamp)
        snprintf(launch, sizeof launch,
                 "( videotestsrc is-live=true pattern=black ! "
                 "video/x-raw,format=I420,width=%d,height=240,framerate=30/1 "
                 "! identity name=stamp ! x264enc tune=zerolatency speed-preset=ultrafast threads=1 "
                 "key-int-max=30 "
                 "! rtph264pay name=pay0 pt=96 config-interval=1 )",
                 STAMP_WIDTH);
    else
        snprintf(launch, sizeof launch,
                 "( filesrc location=\"%s\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 "
                 "config-interval=1 )",
                 file);

    GstRTSPServer *server = gst_rtsp_server_new();
    gst_rtsp_server_set_address(server, "127.0.0.1");
    gst_rtsp_server_set_service(server, port);
    GstRTSPMediaFactory *factory = gst_rtsp_media_factory_new();
    gst_rtsp_media_factory_set_launch(factory, launch);
    gst_rtsp_media_factory_set_shared(factory, TRUE);
    g_signal_connect(factory, "media-configure", G_CALLBACK(on_media_configure), NULL);

    if (user && pass) {
        GstRTSPAuth *auth = gst_rtsp_auth_new();
        GstRTSPToken *token =
            gst_rtsp_token_new(GST_RTSP_TOKEN_MEDIA_FACTORY_ROLE, G_TYPE_STRING, "viewer", NULL);
        gchar *basic = gst_rtsp_auth_make_basic(user, pass);
        gst_rtsp_auth_add_basic(auth, basic, token);
        g_free(basic);
        gst_rtsp_token_unref(token);
        gst_rtsp_server_set_auth(server, auth);
        g_object_unref(auth);
        gst_rtsp_media_factory_add_role(factory, "viewer", GST_RTSP_PERM_MEDIA_FACTORY_ACCESS, G_TYPE_BOOLEAN,
                                        TRUE, GST_RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, G_TYPE_BOOLEAN, TRUE,
                                        NULL);
    }
    GstRTSPMountPoints *mounts = gst_rtsp_server_get_mount_points(server);
    gst_rtsp_mount_points_add_factory(mounts, "/stream", factory);
    g_object_unref(mounts);

    GMainLoop *loop = g_main_loop_new(NULL, FALSE);
    if (gst_rtsp_server_attach(server, NULL) == 0) {
        fprintf(stderr, "rtsp_server: cannot listen on 127.0.0.1:%s\n", port);
        return 1;
    }
    printf("READY rtsp://127.0.0.1:%s/stream\n", port);
    fflush(stdout);
    g_main_loop_run(loop);
    return 0;
}
