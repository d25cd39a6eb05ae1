/* GET /v1/streams/NAME/snapshot.jpg: the stream's latest frame as a JPEG, encoded with
 * FFmpeg's mjpeg encoder when the backend hands over RGB, and cached per frame so a page
 * polling once a second from many browsers costs one encode per frame. */
#include <stdlib.h>
#include <string.h>

#include "pipeline/server/server_internal.h"

#ifdef SVLM_HAVE_FFMPEG
#include <libavcodec/avcodec.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>

static srv_msg *encode_jpeg(const svlm_backend_frame *f, char *why, size_t cap) {
    const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_MJPEG);
    AVCodecContext *cc = codec ? avcodec_alloc_context3(codec) : NULL;
    AVFrame *yuv = av_frame_alloc();
    AVPacket *pkt = av_packet_alloc();
    struct SwsContext *sws = NULL;
    srv_msg *out = NULL;
    if (!cc || !yuv || !pkt) {
        snprintf(why, cap, "no mjpeg encoder in this FFmpeg");
        goto done;
    }
    cc->width = f->width;
    cc->height = f->height;
    cc->pix_fmt = AV_PIX_FMT_YUVJ420P;
    cc->time_base = (AVRational){1, 25};
    cc->flags |= AV_CODEC_FLAG_QSCALE;
    cc->global_quality = FF_QP2LAMBDA * 4; /* q 4: good quality, ~20-60 KB at 512 px */
    if (avcodec_open2(cc, codec, NULL) < 0) {
        snprintf(why, cap, "could not open the mjpeg encoder");
        goto done;
    }
    yuv->format = AV_PIX_FMT_YUVJ420P;
    yuv->width = f->width;
    yuv->height = f->height;
    yuv->quality = cc->global_quality;
    if (av_frame_get_buffer(yuv, 0) < 0) goto done;
    /* YUV420P with full-range output is YUVJ420P's layout, without swscale's warning about
     * the deprecated J formats. */
    sws = sws_getContext(f->width, f->height, AV_PIX_FMT_RGB24, f->width, f->height, AV_PIX_FMT_YUV420P,
                         SWS_BILINEAR, NULL, NULL, NULL);
    if (!sws) goto done;
    const int *coefs = sws_getCoefficients(SWS_CS_ITU601);
    sws_setColorspaceDetails(sws, coefs, 1, coefs, 1, 0, 1 << 16, 1 << 16);
    const uint8_t *src[1] = {f->data};
    int stride[1] = {f->stride};
    sws_scale(sws, src, stride, 0, f->height, yuv->data, yuv->linesize);
    if (avcodec_send_frame(cc, yuv) < 0 || avcodec_send_frame(cc, NULL) < 0) goto done;
    if (avcodec_receive_packet(cc, pkt) < 0) goto done;
    out = srv_msg_new(pkt->data, (size_t)pkt->size);
done:
    if (!out && !why[0]) snprintf(why, cap, "JPEG encoding failed");
    sws_freeContext(sws);
    av_packet_free(&pkt);
    av_frame_free(&yuv);
    avcodec_free_context(&cc);
    return out;
}
#else
static srv_msg *encode_jpeg(const svlm_backend_frame *f, char *why, size_t cap) {
    (void)f;
    snprintf(why, cap, "this build has no FFmpeg to encode JPEG snapshots");
    return NULL;
}
#endif

void srv_snapshots_free(svlm_server *srv) {
    for (size_t i = 0; i < sizeof srv->snaps / sizeof srv->snaps[0]; i++) {
        free(srv->snaps[i].jpeg);
        srv->snaps[i].jpeg = NULL;
    }
}

int srv_snapshot(svlm_server *srv, srv_conn *c, const char *stream) {
    svlm_backend_frame f = {0};
    svlm_err err = {0};
    svlm_status st = srv->be.latest_frame(srv->be.ctx, stream, &f, &err);
    if (st == SVLM_E_AGAIN) return srv_http_error(c, 503, "no_frame_yet", "the stream has no frame yet");
    if (st != SVLM_OK)
        return srv_http_error(c, 404, "unknown_stream", err.msg[0] ? err.msg : "no such stream");
    if (f.is_jpeg) {
        int rc = srv_http_respond(c, 200, "image/jpeg", f.data, f.size);
        free(f.data);
        return rc;
    }
    size_t n_slots = sizeof srv->snaps / sizeof srv->snaps[0], slot = n_slots;
    for (size_t i = 0; i < n_slots && slot == n_slots; i++)
        if (!strcmp(srv->snaps[i].name, stream)) slot = i;
    if (slot == n_slots) { /* a free slot, else the first one */
        slot = 0;
        for (size_t i = 0; i < n_slots; i++)
            if (!srv->snaps[i].jpeg) {
                slot = i;
                break;
            }
        free(srv->snaps[slot].jpeg);
        srv->snaps[slot].jpeg = NULL;
        snprintf(srv->snaps[slot].name, sizeof srv->snaps[slot].name, "%s", stream);
    }
    if (!srv->snaps[slot].jpeg || srv->snaps[slot].index != f.index) {
        char why[160] = "";
        if (f.width <= 0 || f.height <= 0 || f.stride < 3 * f.width || !f.data) {
            free(f.data);
            return srv_http_error(c, 500, "backend_error", "the engine gave an invalid frame");
        }
        srv_msg *jpeg = encode_jpeg(&f, why, sizeof why);
        if (!jpeg) {
            free(f.data);
            return srv_http_error(c, 501, "unsupported", why);
        }
        free(srv->snaps[slot].jpeg);
        srv->snaps[slot].jpeg = jpeg;
        srv->snaps[slot].index = f.index;
    }
    free(f.data);
    srv_msg *j = srv->snaps[slot].jpeg;
    return srv_http_respond(c, 200, "image/jpeg", j->buf + LWS_PRE, j->len);
}
