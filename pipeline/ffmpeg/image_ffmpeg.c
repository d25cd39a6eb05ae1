/*
 * Still-image decoding through FFmpeg (JPEG, WebP, BMP, TIFF, interlaced PNG, ... and the first
 * frame of a video file): libavformat's image2 demuxer finds the codec, libswscale converts to
 * packed RGB24. This is the fallback decoder svlm_image_load takes (vision/image.h).
 */
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/ffmpeg/ffmpeg_input.h"
#include "vision/image.h"

static svlm_status av_fail(svlm_err *err, svlm_status st, const char *what, int rc) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(rc, buf, sizeof buf);
    return svlm_fail(err, st, "%s: %s", what, buf);
}

/* Reads packets until the decoder hands back one frame. */
static svlm_status first_frame(AVFormatContext *fmt, AVCodecContext *dec, int stream, AVFrame *frame,
                               svlm_err *err) {
    AVPacket *pkt = av_packet_alloc();
    if (!pkt) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    int flushing = 0;
    for (;;) {
        int rc = avcodec_receive_frame(dec, frame);
        if (rc == 0) break;
        if (rc != AVERROR(EAGAIN) || flushing) {
            av_packet_free(&pkt);
            return rc == AVERROR_EOF ? svlm_fail(err, SVLM_E_FORMAT,
                                                 "no picture could be decoded (truncated or damaged file)")
                                     : av_fail(err, SVLM_E_FORMAT, "decoding failed", rc);
        }
        rc = av_read_frame(fmt, pkt);
        if (rc < 0) {
            flushing = 1;
            avcodec_send_packet(dec, NULL);
            continue;
        }
        if (pkt->stream_index == stream) {
            rc = avcodec_send_packet(dec, pkt);
            if (rc < 0 && rc != AVERROR(EAGAIN) && rc != AVERROR_INVALIDDATA) {
                av_packet_unref(pkt);
                av_packet_free(&pkt);
                return av_fail(err, SVLM_E_FORMAT, "decoding failed", rc);
            }
        }
        av_packet_unref(pkt);
    }
    av_packet_free(&pkt);
    return SVLM_OK;
}

/* The EXIF orientation (1 to 8) FFmpeg's JPEG decoder read into the frame's metadata; 1 (as
 * stored) when there is none or it is not one of the eight. */
static int exif_orientation(const AVFrame *frame) {
    const AVDictionaryEntry *e = av_dict_get(frame->metadata, "Orientation", NULL, 0);
    int o = e ? atoi(e->value) : 1; /* (FFmpeg pads the value with spaces; atoi skips them) */
    return o >= 1 && o <= 8 ? o : 1;
}

/* img turned upright as its EXIF orientation asks, as viewers and Hugging Face's image loader
 * (PIL's exif_transpose) show it: a phone's portrait photo is stored sideways with orientation 6.
 * Source pixel (x, y) of output pixel (u, v), per orientation: 2 mirror, 3 half turn, 4 flip,
 * 5 transpose, 6 quarter turn clockwise, 7 transverse, 8 quarter turn anticlockwise. */
static svlm_status orient(svlm_image *img, int o, svlm_err *err) {
    if (o == 1) return SVLM_OK;
    const int w = img->w, h = img->h, swap = o >= 5;
    svlm_image out;
    svlm_status st = svlm_image_alloc(&out, swap ? h : w, swap ? w : h, err);
    if (st) return st;
    for (int v = 0; v < out.h; v++)
        for (int u = 0; u < out.w; u++) {
            int x = u, y = v;
            switch (o) {
            case 2: x = w - 1 - u; break;
            case 3: x = w - 1 - u, y = h - 1 - v; break;
            case 4: y = h - 1 - v; break;
            case 5: x = v, y = u; break;
            case 6: x = v, y = h - 1 - u; break;
            case 7: x = w - 1 - v, y = h - 1 - u; break;
            case 8: x = w - 1 - v, y = u; break;
            }
            memcpy(out.rgb + ((size_t)v * out.w + u) * 3, img->rgb + ((size_t)y * w + x) * 3, 3);
        }
    svlm_image_free(img);
    *img = out;
    return SVLM_OK;
}

static svlm_status to_rgb(const AVFrame *frame, svlm_image *out, svlm_err *err) {
    svlm_status st = svlm_image_alloc(out, frame->width, frame->height, err);
    if (st) return st;
    struct SwsContext *sws = sws_getContext(
        frame->width, frame->height, frame->format, frame->width, frame->height, AV_PIX_FMT_RGB24,
        SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, NULL, NULL, NULL);
    if (!sws) {
        svlm_image_free(out);
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "cannot convert pixel format %s to RGB",
                         av_get_pix_fmt_name(frame->format) ? av_get_pix_fmt_name(frame->format) : "?");
    }
    uint8_t *dst[4] = {out->rgb, NULL, NULL, NULL};
    int dst_stride[4] = {out->w * 3, 0, 0, 0};
    sws_scale(sws, (const uint8_t *const *)frame->data, frame->linesize, 0, frame->height, dst, dst_stride);
    sws_freeContext(sws);
    return SVLM_OK;
}

svlm_status svlm_image_decode_ffmpeg(const char *path, svlm_image *out, svlm_err *err) {
    out->w = out->h = 0;
    out->rgb = NULL;
    AVFormatContext *fmt = NULL;
    AVCodecContext *dec = NULL;
    AVFrame *frame = NULL;
    svlm_status st;
    /* The bytes may come from a client (the server's image_url parts): only pictures and plain video
     * containers, never playlists or concat scripts that would make FFmpeg open other files. */
    AVDictionary *opts = NULL;
    av_dict_set(&opts, "protocol_whitelist", "file", 0);
    av_dict_set(
        &opts, "format_whitelist",
        "image2,gif,bmp_pipe,cri_pipe,dds_pipe,dpx_pipe,exr_pipe,gem_pipe,gif_pipe,j2k_pipe,jpeg_pipe,"
        "jpegls_pipe,jpegxl_pipe,pam_pipe,pbm_pipe,pcx_pipe,pfm_pipe,pgm_pipe,pgmyuv_pipe,pgx_pipe,phm_pipe,"
        "photocd_pipe,pictor_pipe,png_pipe,ppm_pipe,psd_pipe,qdraw_pipe,qoi_pipe,sgi_pipe,sunrast_pipe,"
        "svg_pipe,tiff_pipe,vbn_pipe,webp_pipe,xbm_pipe,xpm_pipe,xwd_pipe,mov,matroska,avi,mpegts,flv",
        0);
    int rc = avformat_open_input(&fmt, path, NULL, &opts);
    av_dict_free(&opts);
    if (rc < 0) return av_fail(err, SVLM_E_UNSUPPORTED, "FFmpeg cannot open it as an image", rc);
    /* the decoders that find_stream_info runs refuse pictures past the limit before decoding them
     * (a small file may declare a huge one: a 137 KB interlaced PNG of 12000 x 12000 took 6.5 s) */
    AVDictionary **sopts = calloc(fmt->nb_streams ? fmt->nb_streams : 1, sizeof *sopts);
    if (!sopts) {
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        goto done;
    }
    for (unsigned i = 0; i < fmt->nb_streams; i++)
        av_dict_set_int(&sopts[i], "max_pixels", (int64_t)SVLM_IMAGE_MAX_PIXELS, 0);
    rc = avformat_find_stream_info(fmt, sopts);
    for (unsigned i = 0; i < fmt->nb_streams; i++)
        av_dict_free(&sopts[i]);
    free(sopts);
    if (rc < 0) {
        st = av_fail(err, SVLM_E_FORMAT, "FFmpeg cannot read it", rc);
        goto done;
    }
    const AVCodec *codec = NULL;
    int stream = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (stream < 0 || !codec) {
        st = svlm_fail(err, SVLM_E_UNSUPPORTED, "FFmpeg finds no picture in it");
        goto done;
    }
    dec = avcodec_alloc_context3(codec);
    frame = av_frame_alloc();
    if (!dec || !frame) {
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        goto done;
    }
    const AVCodecParameters *par = fmt->streams[stream]->codecpar;
    if (par->width > 0 && par->height > 0 && (st = svlm_image_check_size(par->width, par->height, err)))
        goto done;
    avcodec_parameters_to_context(dec, par);
    dec->thread_count = 1;
    dec->max_pixels = (int64_t)SVLM_IMAGE_MAX_PIXELS;
    if ((rc = avcodec_open2(dec, codec, NULL)) < 0) {
        st = av_fail(err, SVLM_E_UNSUPPORTED, "FFmpeg cannot open its decoder", rc);
        goto done;
    }
    st = first_frame(fmt, dec, stream, frame, err);
    /* a picture past the pixel limit is refused inside the decoder, its size unknown here */
    if (st == SVLM_E_FORMAT && !(par->width > 0 && par->height > 0) && err) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        svlm_fail(err, st, "%.300s, or larger than svlm takes (%d pixels per side, %zu in all)", why,
                  SVLM_IMAGE_MAX_SIDE, (size_t)SVLM_IMAGE_MAX_PIXELS);
    }
    if (!st) st = to_rgb(frame, out, err);
    /* a photo's EXIF orientation, or a clip's display matrix (a phone's portrait video): upright */
    int o = exif_orientation(frame);
    if (o == 1) o = (const int[]){1, 6, 3, 8}[svlm_ff_stream_turns(fmt->streams[stream])];
    if (!st && (st = orient(out, o, err))) svlm_image_free(out);
done:
    av_frame_free(&frame);
    avcodec_free_context(&dec);
    avformat_close_input(&fmt);
    return st;
}
