/*
 * The idefics3 connector: pixel shuffle (space-to-depth by the file's scale factor s) and the
 * bias-free projection into the text model's width. Output token (hb, wb) of a tile gathers the
 * s x s block of encoder tokens at rows hb*s+dh, cols wb*s+dw into features
 * f = dh*(s*D) + dw*D + d (smolvlm2-spec.md §1.3).
 */
#include <string.h>

#include "vision/encoder_internal.h"

static void pixel_shuffle(const float *x, int b, int g, int s, int64_t D, float *out) {
    int gs = g / s;
    size_t in_tile = (size_t)g * g * (size_t)D, out_row = (size_t)s * s * (size_t)D;
    for (int t = 0; t < b; t++)
        for (int hb = 0; hb < gs; hb++)
            for (int wb = 0; wb < gs; wb++) {
                float *dst = out + ((size_t)t * gs * gs + (size_t)hb * gs + wb) * out_row;
                for (int dh = 0; dh < s; dh++)
                    for (int dw = 0; dw < s; dw++) {
                        size_t tok = (size_t)(hb * s + dh) * g + (size_t)(wb * s + dw);
                        memcpy(dst + ((size_t)dh * s + dw) * (size_t)D, x + t * in_tile + tok * (size_t)D,
                               sizeof(float) * (size_t)D);
                    }
            }
}

void svlm_connector_forward(svlm_vision_ctx *c, int b) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    int g = hp->image_size / hp->patch_size, s = hp->scale_factor;
    int64_t rows = (int64_t)b * hp->tokens_per_tile;
    pixel_shuffle(c->x, b, g, s, hp->n_embd, c->shuf);
    svlm_vision_trace(c, "pixel_shuffle", -1, c->shuf, rows, (int64_t)hp->n_embd * s * s);
    svlm_k_matmul(c->k, &c->m->proj, c->shuf, rows, c->proj);
}
