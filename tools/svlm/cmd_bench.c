/* svlm bench: prompt-processing and generation speed, and how close generation is to the
 * memory-bandwidth bound (every weight byte is read once per generated token). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_batch.h"
#include "cli.h"
#include "common/bandwidth.h"
#include "llm/llama_internal.h"
#include "text_model.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"

static void usage(FILE *f) {
    fprintf(
        f, "usage: svlm bench [-m MODEL] [--mmproj MMPROJ] [--pp N] [--tg N] [--depth D] [--decode-batch S]\n"
           "                  [--batch B] [--reps R] [--threads K] [--kv f32|f16] [--backend B] [--json]\n"
           "  -m MODEL          text model: prompt processing and generation speed\n"
           "  --mmproj MMPROJ   vision encoder: ms per tile at batch 1 and at --batch B (default 4)\n"
           "  --pp N    prompt tokens processed in one batch (default 512; 0 skips)\n"
           "  --tg N    tokens generated one at a time (default 128; 0 skips)\n"
           "  --depth D  the generation starts after D tokens already in the cache (default 0): how\n"
           "            attention over a long window (a stream's memory) slows each token\n"
           "  --decode-batch S  also S sequences (128-token prompts) decoding N steps together, as\n"
           "                    the server's answers do: aggregate tokens per second\n"
           "  --reps R  repetitions; the best is reported (default 3)\n" CLI_BACKEND_HELP
           "The backend that ran is printed. On a GPU the host-bandwidth bound is not measured.\n"
           "Set OPENBLAS_CORETYPE explicitly (or unset it) when benchmarking.\n");
}

/* Bytes of weights the decoder reads for one token: every layer matrix plus the output head. */
static double weight_bytes_per_token(const svlm_llama *m) {
    double b = (double)m->output.rows * m->output.row_bytes;
    for (int l = 0; l < m->hp.n_layer; l++) {
        const svlm_llama_layer *L = &m->layers[l];
        const svlm_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            b += (double)ws[i]->rows * ws[i]->row_bytes;
        b += 2.0 * m->hp.n_embd * sizeof(float);
    }
    return b;
}

/* Encoder speed for an mmproj file; prints its own report. Returns the exit code. */
static int bench_vision(const char *path, const char *backend, int threads, int batch, int reps, int json) {
    svlm_err err = {0};
    svlm_kernels *k = NULL;
    svlm_mmproj *mm = NULL;
    svlm_vision_bench_result r;
    int rc = 1;
    if (svlm_kernels_create_named(backend, threads, &k, &err) || svlm_mmproj_load(path, &mm, &err) ||
        svlm_vision_bench(mm, k, batch, reps, &r, &err)) {
        fprintf(stderr, "svlm bench: %s\n", err.msg);
        goto done;
    }
    if (json) {
        printf("{\"mmproj\":");
        cli_json_str(stdout, path, strlen(path));
        printf(",\"backend\":\"%s\",\"threads\":%d,\"image_size\":%d,\"tokens_per_tile\":%d,"
               "\"ms_per_tile_b1\":%.2f,\"tiles_per_s_b1\":%.3f,\"batch\":%d,\"ms_per_tile_batched\":%.2f,"
               "\"tiles_per_s_batched\":%.3f}\n",
               svlm_kernels_name(k), svlm_kernels_threads(k), r.image_size, r.tokens_per_tile,
               r.ms_per_tile_b1, r.tiles_per_s_b1, r.batch, r.ms_per_tile_batched, r.tiles_per_s_batched);
    } else {
        printf("mmproj      %s (%d px tiles, %d tokens each)\nbackend     %s\n", path, r.image_size,
               r.tokens_per_tile, svlm_kernels_name(k));
        printf("batch 1     %.1f ms per tile, %.2f tiles/s\n", r.ms_per_tile_b1, r.tiles_per_s_b1);
        printf("batch %-5d %.1f ms per tile, %.2f tiles/s\n", r.batch, r.ms_per_tile_batched,
               r.tiles_per_s_batched);
    }
    rc = 0;
done:
    svlm_mmproj_free(mm);
    svlm_kernels_destroy(k);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    const char *model_path = NULL, *mmproj_path = NULL, *backend = NULL;
    long long pp = 512, tg = 128, depth = 0, threads = 0, reps = 3, batch = 4, decode_batch = 0;
    int json = 0;
    svlm_dtype kv_type = SVLM_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!(v = cli_value(argc, argv, &i))) {
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            model_path = v;
        } else if (!strcmp(a, "--mmproj")) {
            mmproj_path = v;
        } else if (!strcmp(a, "--batch")) {
            if (cli_int(a, v, 1, 256, &batch)) return 2;
        } else if (!strcmp(a, "--decode-batch")) {
            if (cli_int(a, v, 1, 1024, &decode_batch)) return 2;
        } else if (!strcmp(a, "--pp")) {
            if (cli_int(a, v, 0, 1 << 16, &pp)) return 2;
        } else if (!strcmp(a, "--tg")) {
            if (cli_int(a, v, 0, 1 << 16, &tg)) return 2;
        } else if (!strcmp(a, "--depth")) {
            if (cli_int(a, v, 0, 1 << 20, &depth)) return 2;
        } else if (!strcmp(a, "--reps")) {
            if (cli_int(a, v, 1, 1000, &reps)) return 2;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (cli_int(a, v, 1, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--kv")) {
            if (cli_kv_type(a, v, &kv_type)) return 2;
        } else if (!strcmp(a, "--backend")) {
            if (cli_backend(a, v)) return 2;
            backend = v;
        } else {
            fprintf(stderr, "svlm bench: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path && !mmproj_path) {
        fprintf(stderr, "svlm bench: -m MODEL and/or --mmproj MMPROJ is required\n");
        usage(stderr);
        return 2;
    }
    if (model_path && pp == 0 && tg == 0) {
        fprintf(stderr, "svlm bench: --pp 0 and --tg 0 leave nothing to measure\n");
        return 2;
    }
    if (mmproj_path) {
        int vrc = bench_vision(mmproj_path, backend, (int)threads, (int)batch, (int)reps, json);
        if (vrc || !model_path) return vrc;
    }
    cli_text_model tm;
    if (cli_text_model_open(&tm, model_path, backend, (int)threads)) return 1;
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(tm.model);
    int n_ctx = (int)(pp > depth + tg ? pp : depth + tg);
    if (depth + tg > hp->n_ctx_train) /* (the timing holds: positions are computed, not tabled) */
        fprintf(stderr,
                "svlm bench: note: --depth %lld + --tg %lld passes the model's trained context (%d)\n", depth,
                tg, hp->n_ctx_train);
    if (n_ctx < 1) n_ctx = 1;
    svlm_err err = {0};
    svlm_llama_ctx *ctx = NULL;
    int rc = 1;
    int32_t *ids = NULL;
    if (!cli_kv_fits(hp, n_ctx, kv_type, "--depth, --pp or --tg")) goto done;
    if (!(ids = malloc((size_t)n_ctx * sizeof(int32_t)))) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    if (svlm_llama_ctx_create(tm.model, tm.kernels, n_ctx, kv_type, &ctx, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < n_ctx; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)hp->n_vocab);
    }
    double best_pp = 0, best_tg = 0;
    for (int r = 0; r < reps; r++) {
        if (pp > 0) {
            svlm_llama_ctx_reset(ctx);
            double t0 = cli_now();
            int32_t next = 0;
            if (svlm_llama_eval_greedy(ctx, ids, NULL, (int)pp, &next, &err)) goto eval_fail;
            double tps = pp / (cli_now() - t0);
            if (tps > best_pp) best_pp = tps;
        }
        if (tg > 0) {
            svlm_llama_ctx_reset(ctx);
            int32_t tok = ids[0], next = 0; /* greedy decoding, as an answer runs */
            if (depth > 0 && svlm_llama_eval_greedy(ctx, ids, NULL, (int)depth, &tok, &err)) goto eval_fail;
            double t0 = cli_now();
            for (int i = 0; i < tg; i++, tok = next)
                if (svlm_llama_eval_greedy(ctx, &tok, NULL, 1, &next, &err)) goto eval_fail;
            double tps = tg / (cli_now() - t0);
            if (tps > best_tg) best_tg = tps;
        }
        if (!json) /* rewritten in place on a terminal, a line each in a log */
            fprintf(stderr,
                    isatty(2) ? "\rsvlm bench: repetition %d/%lld" : "svlm bench: repetition %d/%lld\n",
                    r + 1, reps);
    }
    double batch_tps = 0;
    if (decode_batch > 0 && tg > 0 &&
        cli_bench_decode_batch(tm.model, tm.kernels, (int)decode_batch, 128, (int)tg, (int)reps, &batch_tps,
                               &err))
        goto eval_fail;
    if (!json && isatty(2)) fprintf(stderr, "\n");
    /* the host's read bandwidth bounds generation on the CPU only */
    const int gpu = svlm_kernels_is_gpu(tm.kernels);
    svlm_pool *pool = NULL;
    double bw = 0;
    if (!gpu && svlm_pool_create(svlm_kernels_threads(tm.kernels), &pool, &err) == SVLM_OK) {
        bw = svlm_measure_read_bandwidth(pool, (size_t)1 << 30, 3);
        svlm_pool_destroy(pool);
    }
    double wb = weight_bytes_per_token(tm.model);
    double bound = bw > 0 ? bw / wb : 0;
    double share = bound > 0 ? best_tg / bound : 0;
    if (json) {
        printf("{\"model\":");
        cli_json_str(stdout, model_path, strlen(model_path));
        printf(
            ",\"backend\":\"%s\",\"gpu\":%s,\"threads\":%d,\"pp\":%lld,\"tg\":%lld,\"pp_tps\":%.2f,"
            "\"depth\":%lld,\"tg_tps\":%.2f,\"weight_bytes_per_token\":%.0f,\"tg_weight_gbs\":%.2f,"
            "\"bandwidth_gbs\":%.2f,"
            "\"tg_bound_tps\":%.2f,\"tg_share_of_bound\":%.4f,\"decode_batch\":%lld,\"decode_batch_tps\":%."
            "2f}\n",
            svlm_kernels_name(tm.kernels), gpu ? "true" : "false", svlm_kernels_threads(tm.kernels), pp, tg,
            best_pp, depth, best_tg, wb, wb * best_tg / 1e9, bw / 1e9, bound, share, decode_batch, batch_tps);
    } else {
        printf("model       %s\nbackend     %s\n", model_path, svlm_kernels_name(tm.kernels));
        if (pp > 0) printf("pp%-8lld  %.1f tok/s\n", pp, best_pp);
        if (tg > 0 && !svlm_kernels_computes(tm.kernels))
            printf("tg%-8lld  %.1f tok/s (host work only: nothing computed)\n", tg, best_tg);
        else if (tg > 0 && depth > 0)
            printf("tg%lld@d%lld  %.1f tok/s after %lld tokens of context (weights read at %.1f GB/s)\n", tg,
                   depth, best_tg, depth, wb * best_tg / 1e9);
        else if (tg > 0)
            printf("tg%-8lld  %.1f tok/s (weights read at %.1f GB/s)\n", tg, best_tg, wb * best_tg / 1e9);
        if (batch_tps > 0)
            printf("tg%lld x%-4lld %.1f tok/s aggregate, %lld sequences decoding together (%.1f each)\n", tg,
                   decode_batch, batch_tps, decode_batch, batch_tps / (double)decode_batch);
        if (gpu)
            printf(
                "bandwidth   weights %.1f MB per token; the host-bandwidth bound applies to the CPU only\n",
                wb / 1e6);
        else if (tg > 0)
            printf("bandwidth   %.1f GB/s measured; weights %.1f MB per token -> bound %.1f tok/s; "
                   "generation reaches %.0f%% of it\n",
                   bw / 1e9, wb / 1e6, bound, share * 100);
        else /* nothing generated: there is no share of the bound to report */
            printf("bandwidth   %.1f GB/s measured; weights %.1f MB per token -> bound %.1f tok/s\n",
                   bw / 1e9, wb / 1e6, bound);
    }
    rc = 0;
    goto done;
eval_fail:
    fprintf(stderr, "svlm: %s\n", err.msg);
done:
    free(ids);
    svlm_llama_ctx_free(ctx);
    cli_text_model_close(&tm);
    return rc;
}
