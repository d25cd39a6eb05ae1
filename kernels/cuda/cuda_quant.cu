/*
 * The entry points of the quantized-weight kernels (cuda_ops.h): arguments checked, then the
 * type's launchers (cuda_quant.cuh; each type compiled in its own cuda_quant_*.cu).
 */
#include "kernels/cuda/cuda_quant_table.cuh"

namespace {

bool is_blocked(int type) {
    return type != 0 && type != 1 && type != 30; /* F32, F16, BF16 */
}

/* Columns a row of the type cannot have: a partial block (32 elements; 256 for the K-quants). */
bool bad_cols(int type, int64_t cols) {
    const int64_t block = type == 12 || type == 13 || type == 14 ? 256 : 32;
    return is_blocked(type) && cols % block;
}

const svlm_quant_ops *ops_of(int type) {
#define CASE(ID, FN)                                                                                         \
    case ID: return &svlm_quant_ops_##ID;
    switch (type) { SVLM_QD_TYPES(CASE) default : return nullptr; }
#undef CASE
}

} // namespace

extern "C" int svlm_cu_type_supported(int type) {
#define CASE(T, FN)                                                                                          \
    case T: return 1;
    switch (type) { SVLM_QD_TYPES(CASE) default : return 0; }
#undef CASE
}

extern "C" int svlm_cu_matvec(cudaStream_t s, int type, const void *w, size_t row_bytes, int64_t rows,
                              int64_t cols, const float *x, int64_t n, float *y, int accumulate, int pdl) {
    if (rows <= 0 || n <= 0) return 0;
    if (n > SVLM_CU_MATVEC_MAX || bad_cols(type, cols)) return (int)cudaErrorInvalidValue;
    const svlm_quant_ops *ops = ops_of(type);
    return ops ? ops->matvec(s, w, row_bytes, rows, cols, x, n, y, accumulate, pdl != 0)
               : (int)cudaErrorInvalidValue;
}

extern "C" int svlm_cu_norm_fits(int64_t cols, int64_t n) {
    return cols > 0 && n > 0 && n <= SVLM_CU_MATVEC_MAX &&
           sizeof(float) * (size_t)(n * cols) <= SVLM_CU_NORM_SMEM;
}

extern "C" int svlm_cu_matvec_multi(cudaStream_t s, int type, const svlm_cu_matvec_set *set, int64_t cols,
                                    const float *x, int64_t n, const float *norm_w, float eps, int pdl) {
    if (set->n <= 0 || n <= 0) return 0;
    if (set->n > SVLM_CU_MULTI_MAX || n > SVLM_CU_MATVEC_MAX || bad_cols(type, cols) ||
        (norm_w && !svlm_cu_norm_fits(cols, n)))
        return (int)cudaErrorInvalidValue;
    const svlm_quant_ops *ops = ops_of(type);
    return ops ? ops->matvec_multi(s, set, cols, x, n, norm_w, eps, pdl != 0) : (int)cudaErrorInvalidValue;
}

extern "C" int svlm_cu_matvec_qkv_rope(cudaStream_t s, int type, const svlm_cu_matvec_set *set, int64_t cols,
                                       const float *x, int64_t n, const float *norm_w, float eps,
                                       const svlm_cu_rope_pairs *rp, int pdl) {
    if (n <= 0) return 0;
    const int hd = rp->head_dim;
    if (set->n != 3 || n > SVLM_CU_MATVEC_MAX || bad_cols(type, cols) ||
        (norm_w && !svlm_cu_norm_fits(cols, n)) || hd <= 0 || hd % 2 || rp->n_rot < 0 || rp->n_rot % 2 ||
        rp->n_rot > hd || set->rows[0] <= 0 || set->rows[0] % hd || set->rows[1] <= 0 || set->rows[1] % hd ||
        set->rows[2] != set->rows[1] || !rp->pos || !rp->dsts)
        return (int)cudaErrorInvalidValue;
    const svlm_quant_ops *ops = ops_of(type);
    return ops ? ops->qkv_rope(s, set, cols, x, n, norm_w, eps, rp, pdl != 0) : (int)cudaErrorInvalidValue;
}

extern "C" int svlm_cu_matvec_swiglu(cudaStream_t s, int type, const void *wg, const void *wu,
                                     size_t row_bytes, int64_t rows, int64_t cols, const float *x, int64_t n,
                                     const float *norm_w, float eps, float *gate, int pdl) {
    if (rows <= 0 || n <= 0) return 0;
    if (n > SVLM_CU_MATVEC_MAX || bad_cols(type, cols) || (norm_w && !svlm_cu_norm_fits(cols, n)))
        return (int)cudaErrorInvalidValue;
    const svlm_quant_ops *ops = ops_of(type);
    return ops ? ops->swiglu(s, wg, wu, row_bytes, rows, cols, x, n, norm_w, eps, gate, pdl != 0)
               : (int)cudaErrorInvalidValue;
}

extern "C" int svlm_cu_dequant(cudaStream_t s, int type, const void *w, size_t row_bytes, int64_t rows,
                               int64_t cols, void *out, int out_bf16) {
    if (rows <= 0) return 0;
    if (bad_cols(type, cols)) return (int)cudaErrorInvalidValue;
    const svlm_quant_ops *ops = ops_of(type);
    return ops ? ops->dequant(s, w, row_bytes, rows, cols, out, out_bf16) : (int)cudaErrorInvalidValue;
}
