/*
 * Tiles whose side is not a multiple of the patch size, as SmolVLM2-2.2B's (384 px, 14-px
 * patches: a 27 x 27 grid, smolvlm2-spec.md): the patch convolution is a stride-p valid one, so
 * the last S mod p pixel rows and columns are never seen. With `svlm mkmodel --shape tiny-p14`
 * (60-px tiles, 4 x 4 patches, 4 pixels left over): the mmproj loads with the floor grid, two
 * tiles that differ only in the unseen pixels encode to the same embeddings, and a change in a
 * seen pixel changes them. Needs the svlm binary (SVLM_BIN) to make the model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"
#include "test_mkmodel_run.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"

int test_main(void) {
    char mmproj[1024];
    test_mkmodel_smolvlm("geometry-p14", "--shape tiny-p14 --type f32 --seed 5", mmproj, sizeof mmproj);

    svlm_err err = {0};
    svlm_mmproj *m = NULL;
    REQUIRE(svlm_mmproj_load(mmproj, &m, &err) == SVLM_OK, "%s", err.msg);
    const svlm_mmproj_hparams *hp = &m->hp;
    const int S = hp->image_size, p = hp->patch_size, g = S / p;
    CHECK(S % p != 0, "tiny-p14 should leave pixels over (S %d, p %d)", S, p);
    CHECK(hp->n_patches == g * g, "%d patches for a %d x %d grid", hp->n_patches, g, g);
    CHECK(hp->tokens_per_tile == g * g / (hp->scale_factor * hp->scale_factor), "%d tokens per tile",
          hp->tokens_per_tile);

    svlm_kernels *k = NULL;
    REQUIRE(svlm_kernels_create_cpu(1, &k, &err) == SVLM_OK, "%s", err.msg);
    svlm_vision_ctx *vc = NULL;
    REQUIRE(svlm_vision_ctx_create(m, k, 3, &vc, &err) == SVLM_OK, "%s", err.msg);
    const size_t tile = (size_t)3 * S * S, emb = (size_t)hp->tokens_per_tile * hp->proj_dim;
    float *px = malloc(sizeof(float) * tile * 3), *out = malloc(sizeof(float) * emb * 3);
    REQUIRE(px && out, "out of memory");
    for (size_t i = 0; i < tile; i++)
        px[i] = sinf(0.013f * (float)i) * 0.8f;
    memcpy(px + tile, px, sizeof(float) * tile);
    memcpy(px + 2 * tile, px, sizeof(float) * tile);
    /* tile 1: every unseen pixel changed; tile 2: one seen pixel changed */
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++)
                if (y >= g * p || x >= g * p) px[tile + (size_t)c * S * S + (size_t)y * S + x] = -0.9f;
    px[2 * tile + (size_t)(g * p - 1) * S + 3] += 0.5f;
    /* one tile at a time: each meets the same kernels in the same row positions */
    for (int t = 0; t < 3; t++)
        REQUIRE(svlm_vision_encode(vc, px + (size_t)t * tile, 1, out + (size_t)t * emb, &err) == SVLM_OK,
                "%s", err.msg);
    double unseen = test_max_abs_diff(out, out + emb, emb), seen = test_max_abs_diff(out, out + 2 * emb, emb);
    printf("%d-px tiles of %d-px patches (%d x %d, %d px never seen): changing the unseen pixels moves the "
           "embeddings by %g, one seen pixel by %g\n",
           S, p, g, g, S - g * p, unseen, seen);
    CHECK(unseen == 0.0, "pixels outside the patch grid changed the embeddings by %g", unseen);
    CHECK(seen > 1e-6, "a pixel inside the grid did not change the embeddings (%g)", seen);

    free(px);
    free(out);
    svlm_vision_ctx_free(vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
    return 0;
}
