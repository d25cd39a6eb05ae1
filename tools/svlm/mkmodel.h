/*
 * `svlm mkmodel`: random-weight GGUF models with the exact layout llama.cpp's converter
 * writes for SmolVLM2 (text model + mmproj), for tests without downloads and benchmarks at
 * real sizes. Split into: shapes and quantization mixes (mkmodel_plan.c), a synthetic
 * byte-level BPE vocabulary (mkmodel_vocab.c), the seeded generator (mkmodel_rng.c) and the
 * file writers (mkmodel_write.c).
 */
#ifndef SVLM_TOOLS_MKMODEL_H
#define SVLM_TOOLS_MKMODEL_H

#include <stdint.h>
#include <stdio.h>

#include "kernels/dtype.h"
#include "svlm.h"

typedef struct mk_text_shape {
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx;
    float rope_theta, rms_eps;
    int tied; /* no output.weight: the head reuses token_embd.weight */
} mk_text_shape;

typedef struct mk_vision_shape {
    int image_size, patch_size, n_embd, n_ff, n_layer, n_head, scale_factor, preproc_image_size;
    float eps;
} mk_vision_shape;

typedef struct mk_shape {
    const char *name;       /* --shape value */
    const char *model_name; /* general.name */
    const char *size_label; /* general.size_label */
    int real_vocab;         /* 1: the 49280-token SmolVLM2 layout; 0: the tiny 1024 layout */
    mk_text_shape text;
    mk_vision_shape vision;
} mk_shape;

/* A --type value: the default tensor type and llama.cpp's file type (general.file_type). */
typedef struct mk_ftype {
    const char *name;
    svlm_dtype base;
    uint32_t file_type;
    int quantized_mix; /* llama-quantize rules: output → Q6_K/Q8_0, K-mix rules (see plan) */
    int k_medium;      /* q4_k_m: attn_v / ffn_down in "more bits" layers get Q6_K */
    int k_small;       /* q4_k (Q4_K_S): attn_v of layers < 4 and ffn_down of layers < n/8 → Q5_K */
} mk_ftype;

/* general.quantization_version: the block layouts of llama.cpp's ggml this writes. */
#define GGML_QUANT_VERSION 2
/* llama.cpp's general.file_type for a file whose matrices are all of type t (the K types: their
 * "small" mix). */
uint32_t mk_file_type_of(svlm_dtype t);

const mk_shape *mk_shape_find(const char *name);
const mk_ftype *mk_ftype_find(const char *name);
/* Comma-separated lists of accepted names, for help and error messages. */
const char *mk_shape_names(void);
const char *mk_ftype_names(void);

/* One planned tensor: name, type, shape and how to draw its values. */
typedef enum { MK_INIT_NORMAL, MK_INIT_ONES } mk_init;
typedef struct mk_tensor {
    char name[64];
    svlm_dtype type;
    int n_dims;
    int64_t ne[4];
    mk_init init;
    float std; /* normal(0, std) or 1 + normal(0, std) */
} mk_tensor;

typedef struct mk_plan {
    mk_tensor *t;
    int n, cap;
} mk_plan;

/* Tensor tables. mmproj_type: the type for the projector's 2-D weights. */
svlm_status mk_plan_text(const mk_shape *s, const mk_ftype *ft, mk_plan *out, svlm_err *err);
svlm_status mk_plan_mmproj(const mk_shape *s, svlm_dtype mmproj_type, mk_plan *out, svlm_err *err);
void mk_plan_free(mk_plan *p);

/* Vocabulary: tokens in GPT-2 byte-to-unicode form, their types and the merges. */
enum { MK_TOK_NORMAL = 1, MK_TOK_CONTROL = 3 };
typedef struct mk_vocab {
    char **tokens;
    int32_t *types;
    int n_tokens;
    char **merges;
    int n_merges, n_learned; /* learned from the corpus; the rest are fillers */
    uint32_t bos, eos, unk, pad;
} mk_vocab;

/* Builds the vocabulary for a shape; corpus_path NULL uses a built-in English text. */
svlm_status mk_vocab_build(const mk_shape *s, const char *corpus_path, mk_vocab *out, svlm_err *err);
void mk_vocab_free(mk_vocab *v);

/* Seeded generator (xoshiro256**, seeded by splitmix64). */
typedef struct mk_rng {
    uint64_t s[4];
} mk_rng;
void mk_rng_seed(mk_rng *r, uint64_t seed, uint64_t stream);
uint64_t mk_rng_next(mk_rng *r);
/* Approximately standard normal (sum of four uniforms, rescaled): cheap and bounded. */
float mk_rng_normal(mk_rng *r);

typedef struct mk_options {
    const mk_shape *shape;
    const mk_ftype *ftype;
    svlm_dtype mmproj_type;
    uint64_t seed;
    int progress; /* report on stderr */
} mk_options;

/* Writes one file from a plan; text files carry the vocabulary, mmproj files the clip keys. */
svlm_status mk_write_text(const char *path, const mk_options *o, const mk_vocab *v, const mk_plan *p,
                          svlm_err *err);
svlm_status mk_write_mmproj(const char *path, const mk_options *o, const mk_plan *p, svlm_err *err);

/* Prints a plan as "name type ne0 ne1 ..." lines. */
void mk_plan_print(FILE *f, const char *file_label, const mk_plan *p);

#endif
