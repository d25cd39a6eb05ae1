/*
 * The idefics3 connector: pixel shuffle (space-to-depth by the file's scale factor s) and the
 * bias-free projection into the text model's width. Output token (hb, wb) of a tile gathers the
 * s x s block of encoder tokens at rows hb*s+dh, cols wb*s+dw into features
 * f = dh*(s*D) + dw*D + d (smolvlm2-spec.md §1.3).
 */
#include <string.h>

#include "vision/encoder_internal.h"

void svlm_connector_shuffle_rows(const svlm_mmproj_hparams *hp, int b, int32_t *idx) {
    const int g = hp->image_size / hp->patch_size, s = hp->scale_factor, gs = g / s;
    size_t r = 0;
    for (int t = 0; t < b; t++)
        for (int hb = 0; hb < gs; hb++)
            for (int wb = 0; wb < gs; wb++)
                for (int dh = 0; dh < s; dh++)
                    for (int dw = 0; dw < s; dw++)
                        idx[r++] =
                            (int32_t)((size_t)t * g * g + (size_t)(hb * s + dh) * g + (size_t)(wb * s + dw));
}

void svlm_connector_forward(svlm_vision_ctx *c, int b) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    int s = hp->scale_factor;
    int64_t rows = (int64_t)b * hp->tokens_per_tile;
    svlm_k_gather_rows(c->k, c->shuf, c->x, c->shuffle, rows * s * s, hp->n_embd);
    svlm_vision_trace(c, "pixel_shuffle", -1, c->shuf, rows, (int64_t)hp->n_embd * s * s);
    svlm_k_matmul(c->k, &c->m->proj, c->shuf, rows, c->proj);
}
