/* The sliding-window kernel of band.c for bf16 inputs, on CPUs with AVX512-BF16.
 *
 * Products run on vdpbf16ps: each instruction multiplies pairs of bf16 numbers along the summed dimension
 * and adds them to fp32 accumulators, so an operand whose rows are summed over ("B") is packed as 32-bit
 * words holding two consecutive k (keys transposed, value rows interleaved two by two), and the other
 * ("A") is read as words of two consecutive k along its rows. Scores, softmax, the row log-sum-exp and
 * the key/value gradient accumulators are fp32; probabilities and score gradients are rounded to bf16
 * before they enter a product, as torch's bf16 matmuls round their inputs.
 *
 * Built together with band.c (this file includes it) for AVX-512 CPUs; the Python side calls these
 * functions only where the CPU reports AVX512-BF16.
 */
#include "band.c"

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

typedef uint16_t bf16;

static inline bf16 to_bf16(float x) { /* round to nearest even, as torch converts */
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40); /* NaN stays NaN */
    return (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline __m512 bf16x16(const bf16 *p) { /* 16 bf16 -> fp32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p)), 16));
}

static inline void store_bf16x16(bf16 *p, __m512 x) {
    _mm256_storeu_si256((void *)p, (__m256i)_mm512_cvtneps_pbh(x));
}

/* C[MRc x 16 NVc] (=|+=) alpha * sum_kp A[i, kp] . B[kp, :], A[i, kp] = a[i * lda + kp] (two bf16 of
 * consecutive k), B[kp, :] = b + kp * ldb (16 words per vector: two k for each column) */
#define KERNEL_BF16(MRc, NVc)                                                                                \
    static void kb_##MRc##_##NVc(int KP, const uint32_t *restrict a, long lda, const uint32_t *restrict b,   \
                                 long ldb, float *restrict c, long ldc, int add, float alpha) {             \
        __m512 acc[MRc][NVc];                                                                                \
        _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) acc[i][j] = _mm512_setzero_ps();           \
        for (int kp = 0; kp < KP; kp++) {                                                                    \
            const uint32_t *bk = b + kp * ldb;                                                               \
            __m512bh bv[NVc];                                                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) bv[j] =                                    \
                (__m512bh)_mm512_loadu_si512((const void *)(bk + 16 * j));                                   \
            _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++) {                                          \
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i * lda + kp]);                             \
                _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) acc[i][j] =                            \
                    _mm512_dpbf16_ps(acc[i][j], av, bv[j]);                                                  \
            }                                                                                                \
        }                                                                                                    \
        __m512 al = _mm512_set1_ps(alpha);                                                                   \
        _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) {                                          \
                float *cp = c + i * ldc + 16 * j;                                                            \
                __m512 r = _mm512_mul_ps(acc[i][j], al);                                                     \
                _mm512_storeu_ps(cp, add ? _mm512_add_ps(r, _mm512_loadu_ps(cp)) : r);                       \
            }                                                                                                \
    }

typedef void (*kbfn)(int, const uint32_t *, long, const uint32_t *, long, float *, long, int, float);
#define ROWS_BF16(NVc) KERNEL_BF16(1, NVc) KERNEL_BF16(2, NVc) KERNEL_BF16(3, NVc) KERNEL_BF16(4, NVc) \
    KERNEL_BF16(5, NVc) KERNEL_BF16(6, NVc)
#define ROWTAB_BF16(NVc) {0, kb_1_##NVc, kb_2_##NVc, kb_3_##NVc, kb_4_##NVc, kb_5_##NVc, kb_6_##NVc}
ROWS_BF16(1)
ROWS_BF16(2)
ROWS_BF16(3)
ROWS_BF16(4)
static const kbfn KB[5][7] = {{0}, ROWTAB_BF16(1), ROWTAB_BF16(2), ROWTAB_BF16(3), ROWTAB_BF16(4)};

/* C (M x N) (=|+=) alpha * A (M x 2 KP) B (2 KP x N) in the packed layouts above; N a multiple of 16 */
static void gemm_bf16(int M, int N, int KP, const uint32_t *a, long lda, const uint32_t *b, long ldb, float *c,
                      long ldc, int add, float alpha) {
    int nvec = N / 16;
    for (int j0 = 0; j0 < nvec; j0 += 4) {
        int nv = nvec - j0 < 4 ? nvec - j0 : 4;
        int calls = (M + MR - 1) / MR, base = M / calls, extra = M % calls;
        for (int t = 0, i0 = 0; t < calls; t++) {
            int mr = base + (t < extra);
            KB[nv][mr](KP, a + (long)i0 * lda, lda, b + 16 * j0, ldb, c + (long)i0 * ldc + 16 * j0, ldc, add, alpha);
            i0 += mr;
        }
    }
}

/* dst[kp * ld + i] = the word (src[i][2 kp], src[i][2 kp + 1]) for i < n, 0 for n <= i < npad: keys transposed
 * two channels at a time (src rows of d bf16, row stride s, even) */
static void tpack(int n, int d, const bf16 *src, long s, uint32_t *dst, long ld, int npad) {
    transpose32(n, d / 2, (const uint32_t *)src, s / 2, dst, ld, npad);
}

/* dst[(i / 2) * d + c] = the word (src[i][c], src[i + 1][c]): rows interleaved two by two, rows n .. rows zero */
static void ipack(int n, int rows, int d, const bf16 *src, long s, uint32_t *dst) {
    for (int i = 0; i < rows; i += 2) {
        uint32_t *out = dst + (long)(i / 2) * d;
        for (int c = 0; c < d; c += 16) {
            __m512i lo = i < n ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(src + (long)i * s + c)))
                               : _mm512_setzero_si512();
            __m512i hi = i + 1 < n
                             ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(src + (long)(i + 1) * s + c)))
                             : _mm512_setzero_si512();
            _mm512_storeu_si512((void *)(out + c), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

/* the same from fp32 rows (m x L, row stride L), rounded to bf16 */
static void ipack_f32(int m, int L, const float *t, uint32_t *dst) {
    for (int i = 0; i < m; i += 2) {
        uint32_t *out = dst + (long)(i / 2) * L;
        const float *r0 = t + (long)i * L, *r1 = i + 1 < m ? r0 + L : 0;
        for (int c = 0; c < L; c += 16) {
            __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + c)));
            __m512i hi = r1 ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + c)))
                            : _mm512_setzero_si512();
            _mm512_storeu_si512((void *)(out + c), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

/* dst[c * mp + i / 2] = the word (src[i][c], src[i + 1][c]) for a block of m rows (mp = ceil(m / 2)): the
 * block transposed, two rows at a time (the A operand of dO^T P and Q^T dS) */
static void tpack_block(int m, int d, const bf16 *src, long s, uint32_t *dst) {
    int mp = (m + 1) / 2;
    for (int i = 0; i < m; i += 2) {
        const bf16 *r0 = src + (long)i * s, *r1 = i + 1 < m ? r0 + s : 0;
        for (int c = 0; c < d; c++) dst[(long)c * mp + i / 2] = r0[c] | (uint32_t)(r1 ? r1[c] : 0) << 16;
    }
}

static void rows_to_bf16(int m, int N, const float *t, long lt, bf16 *dst, long ld) {
    for (int i = 0; i < m; i++)
        for (int c = 0; c < N; c += 16) store_bf16x16(dst + (long)i * ld + c, _mm512_loadu_ps(t + (long)i * lt + c));
}

long band_scratch_bf16(int n, int d, int dv, int qb, int width, int backward) {
    long npad = (n + 15) & ~15, tile = (long)qb * width;
    if (!backward) /* KTp, Vp, scores, probabilities (bf16), output accumulator: in 4-byte units */
        return d / 2 * npad + npad / 2 * dv + tile + tile / 2 + (long)qb * dv;
    /* KTp, VTp, Kp, t1, t2, dS rows (bf16), Pp, dSp, dOTp, QTp, dkaT, dvaT, dq accumulator */
    return (d + dv) / 2 * npad + npad / 2 * d + 2 * tile + tile / 2 + 2 * ((qb + 1) / 2) * (long)width +
           (long)(d + dv) * ((qb + 1) / 2) + (long)(d + dv) * npad + (long)qb * d;
}

void band_forward_bf16(int n, int d, int dv, const bf16 *q, long qs, const bf16 *k, long ks, const bf16 *v, long vs,
                       const int32_t *lo, const int32_t *hi, float scale, int qb, bf16 *o, long os, float *lse,
                       void *scratch, float *probs) {
    int npad = (n + 15) & ~15, width = band_tile_width(n, lo, hi, qb);
    uint32_t *ktp = scratch, *vp = ktp + (long)d / 2 * npad;
    float *tile = (float *)(vp + (long)npad / 2 * dv);
    bf16 *pb = (bf16 *)(tile + (long)qb * width);
    float *oacc = (float *)(pb + (long)qb * width);
    tpack(n, d, k, ks, ktp, npad, npad);
    ipack(n, npad, dv, v, vs, vp);
    for (int r0 = 0; r0 < n; r0 += qb) {
        int r1 = r0 + qb < n ? r0 + qb : n, m = r1 - r0;
        span_t s = block_span(lo, hi, r0, r1);
        if (s.L == 0) {
            for (int i = r0; i < r1; i++) {
                memset(o + (long)i * os, 0, 2 * (size_t)dv);
                lse[i] = -INFINITY;
            }
            continue;
        }
        if (probs) tile = probs + (long)(r0 / qb) * qb * width;
        gemm_bf16(m, s.L, d / 2, (const uint32_t *)(q + (long)r0 * qs), qs / 2, ktp + s.ks, npad, tile, s.L, 0,
                  scale);
        for (int i = r0; i < r1; i++)
            lse[i] = softmax_row(tile + (long)(i - r0) * s.L, s.L, lo[i] - s.ks, hi[i] - s.ks);
        rows_to_bf16(m, s.L, tile, s.L, pb, s.L);
        gemm_bf16(m, dv, s.L / 2, (const uint32_t *)pb, s.L / 2, vp + (long)s.ks / 2 * dv, dv, oacc, dv, 0, 1.0f);
        rows_to_bf16(m, dv, oacc, dv, o + (long)r0 * os, os);
    }
}

/* dst (n x d bf16, row stride s) = the transpose of a (d x n, row stride ld) fp32 accumulator */
static void untranspose_bf16(int n, int d, const float *a, long ld, bf16 *dst, long s) {
    int full = n / 16 * 16;
    for (int i0 = 0; i0 < full; i0 += 16)
        for (int c0 = 0; c0 < d; c0 += 16) {
            __m512 r[16];
            for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_ps(a + (long)(c0 + j) * ld + i0);
            tr16(r);
            for (int j = 0; j < 16; j++) store_bf16x16(dst + (long)(i0 + j) * s + c0, r[j]);
        }
    for (int i = full; i < n; i++)
        for (int c = 0; c < d; c++) dst[(long)i * s + c] = to_bf16(a[(long)c * ld + i]);
}

void band_backward_bf16(int n, int d, int dv, const bf16 *q, long qs, const bf16 *k, long ks, const bf16 *v,
                        long vs, const bf16 *o, long os, const bf16 *dout, long dos, const float *lse,
                        const int32_t *lo, const int32_t *hi, float scale, int qb, bf16 *dq, long dqs, bf16 *dk,
                        long dks, bf16 *dvv, long dvs, void *scratch, const float *probs) {
    int npad = (n + 15) & ~15, width = band_tile_width(n, lo, hi, qb), qp = (qb + 1) / 2;
    long tile = (long)qb * width;
    uint32_t *ktp = scratch, *vtp = ktp + (long)d / 2 * npad, *kp = vtp + (long)dv / 2 * npad;
    float *t1 = (float *)(kp + (long)npad / 2 * d), *t2 = t1 + tile;
    bf16 *dsb = (bf16 *)(t2 + tile);
    uint32_t *pp = (uint32_t *)(dsb + tile), *dsp = pp + (long)qp * width, *dotp = dsp + (long)qp * width;
    uint32_t *qtp = dotp + (long)dv * qp;
    float *dka = (float *)(qtp + (long)d * qp), *dva = dka + (long)d * npad, *dqa = dva + (long)dv * npad;
    tpack(n, d, k, ks, ktp, npad, npad);
    tpack(n, dv, v, vs, vtp, npad, npad);
    ipack(n, npad, d, k, ks, kp);
    memset(dka, 0, 4 * (size_t)d * npad);
    memset(dva, 0, 4 * (size_t)dv * npad);
    for (int r0 = 0; r0 < n; r0 += qb) {
        int r1 = r0 + qb < n ? r0 + qb : n, m = r1 - r0, mp = (m + 1) / 2;
        span_t s = block_span(lo, hi, r0, r1);
        if (s.L == 0) {
            for (int i = r0; i < r1; i++) memset(dq + (long)i * dqs, 0, 2 * (size_t)d);
            continue;
        }
        const bf16 *qb_ = q + (long)r0 * qs, *db = dout + (long)r0 * dos;
        if (probs) { /* kept by the forward */
            t1 = (float *)probs + (long)(r0 / qb) * qb * width;
        } else {
            gemm_bf16(m, s.L, d / 2, (const uint32_t *)qb_, qs / 2, ktp + s.ks, npad, t1, s.L, 0, scale);
            for (int i = r0; i < r1; i++)
                probs_row(t1 + (long)(i - r0) * s.L, s.L, lo[i] - s.ks, hi[i] - s.ks, lse[i]);
        }
        gemm_bf16(m, s.L, dv / 2, (const uint32_t *)db, dos / 2, vtp + s.ks, npad, t2, s.L, 0, 1.0f);
        for (int i = r0; i < r1; i++) { /* dS = P * (dP - D), D = rowsum(dO * O) */
            __m512 acc = _mm512_setzero_ps();
            for (int c = 0; c < dv; c += 16)
                acc = _mm512_fmadd_ps(bf16x16(db + (long)(i - r0) * dos + c), bf16x16(o + (long)i * os + c), acc);
            __m512 di = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
            float *p = t1 + (long)(i - r0) * s.L, *g = t2 + (long)(i - r0) * s.L;
            for (int c = 0; c < s.L; c += 16)
                _mm512_storeu_ps(g + c, _mm512_mul_ps(_mm512_loadu_ps(p + c), _mm512_sub_ps(_mm512_loadu_ps(g + c), di)));
        }
        rows_to_bf16(m, s.L, t2, s.L, dsb, s.L);
        ipack_f32(m, s.L, t1, pp);
        ipack_f32(m, s.L, t2, dsp);
        tpack_block(m, dv, db, dos, dotp);
        tpack_block(m, d, qb_, qs, qtp);
        gemm_bf16(m, d, s.L / 2, (const uint32_t *)dsb, s.L / 2, kp + (long)s.ks / 2 * d, d, dqa, d, 0, scale);
        rows_to_bf16(m, d, dqa, d, dq + (long)r0 * dqs, dqs);
        gemm_bf16(dv, s.L, mp, dotp, mp, pp, s.L, dva + s.ks, npad, 1, 1.0f);
        gemm_bf16(d, s.L, mp, qtp, mp, dsp, s.L, dka + s.ks, npad, 1, scale);
    }
    untranspose_bf16(n, d, dka, npad, dk, dks);
    untranspose_bf16(n, dv, dva, npad, dvv, dvs);
}

#pragma GCC pop_options
