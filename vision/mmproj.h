/*
 * The SmolVLM (idefics3) projector file: a SigLIP ViT and a pixel-shuffle + linear connector,
 * as llama.cpp writes it (general.architecture = clip; clip.* metadata; v.* and mm.* tensors).
 * Matrices stay in the file's mapping in whatever type they are stored; small vectors (biases,
 * norms, the position table) are F32 in every published file and converted once otherwise.
 */
#ifndef SVLM_VISION_MMPROJ_H
#define SVLM_VISION_MMPROJ_H

#include "kernels/kernels.h"
#include "llm/gguf.h"
#include "svlm.h"

typedef struct svlm_mmproj_hparams {
    int image_size; /* S: tile side in pixels */
    int patch_size; /* p */
    int n_embd;     /* D: encoder width */
    int n_ff, n_layer, n_head, head_dim;
    int n_patches;          /* (S/p)^2 tokens per tile inside the encoder */
    int scale_factor;       /* s: pixel-shuffle factor */
    int tokens_per_tile;    /* n_patches / s^2 */
    int proj_dim;           /* output width = the text model's n_embd */
    int preproc_image_size; /* L: longest edge before tiling (0 if absent) */
    float eps;
    float image_mean[3], image_std[3];
} svlm_mmproj_hparams;

typedef struct svlm_vit_layer {
    svlm_weight q, k, v, o; /* [D][D] */
    svlm_weight up, down;   /* [n_ff][D] (fc1), [D][n_ff] (fc2) */
    const float *q_b, *k_b, *v_b, *o_b, *up_b, *down_b;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
} svlm_vit_layer;

typedef struct svlm_mmproj {
    gguf_file *file;
    svlm_mmproj_hparams hp;
    svlm_weight patch;    /* [D][3*p*p], columns in (channel, ky, kx) order */
    const float *patch_b; /* [D] */
    const float *pos;     /* [n_patches][D] */
    const float *post_ln_w, *post_ln_b;
    svlm_vit_layer *layers; /* [n_layer] */
    svlm_weight proj;       /* [proj_dim][D*s*s] */
    int ffn_swapped;        /* the file stores fc1 as ffn_down (older converters) */
    float **owned;          /* vectors converted to F32 here */
    int n_owned;
} svlm_mmproj;

svlm_status svlm_mmproj_load(const char *path, svlm_mmproj **out, svlm_err *err);
/* Same, from an opened file (takes ownership of f, also on failure). */
svlm_status svlm_mmproj_from_gguf(gguf_file *f, svlm_mmproj **out, svlm_err *err);
void svlm_mmproj_free(svlm_mmproj *m);

#endif
