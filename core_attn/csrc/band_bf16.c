/* The sliding-window kernel of band.c for bf16 inputs, on CPUs with AVX512-BF16.
 *
 * Products run on vdpbf16ps: each instruction multiplies pairs of bf16 numbers along the summed dimension
 * and adds them to fp32 accumulators, so an operand whose rows are summed over ("B") is packed as 32-bit
 * words holding two consecutive k (keys transposed, value rows interleaved two by two), and the other
 * ("A") is read as words of two consecutive k along its rows. Scores, softmax, the row log-sum-exp and
 * the key/value gradient accumulators are fp32; probabilities and score gradients are rounded to bf16
 * before they enter a product, as torch's bf16 matmuls round their inputs. Training keeps the probabilities
 * as those bf16 values (half the memory and traffic of fp32); the backward reads them for dS = P (dP - D)
 * too. dK and dV are products down the columns of the pair-packed P and dS (dV += P^T dO) into fp32 rows
 * that are zeroed as the block spans reach them and written out once no later block can: while in cache.
 *
 * Built together with band.c (this file includes it) for AVX-512 CPUs; the Python side calls these
 * functions only where the CPU reports AVX512-BF16.
 */
#include "band.c"

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

typedef uint16_t bf16;

static inline __m512 bf16x16(const bf16 *p) { /* 16 bf16 -> fp32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p)), 16));
}

static inline void store_bf16x16(bf16 *p, __m512 x) {
    _mm256_storeu_si256((void *)p, (__m256i)_mm512_cvtneps_pbh(x));
}

/* C[MRc x 16 NVc] (=|+=) alpha * sum_kp A[i, kp] . B[kp, :], A[i, kp] = a[i * lda + kp * aks] (a word of
 * two bf16 of consecutive k), B[kp, :] = b + kp * ldb (16 words per vector: two k for each column) */
#define KERNEL_BF16(MRc, NVc)                                                                                \
    static void kb_##MRc##_##NVc(int KP, const uint32_t *restrict a, long lda, long aks,                 \
                                 const uint32_t *restrict b, long ldb, float *restrict c, long ldc, int add, \
                                 float alpha) {                                                              \
        __m512 acc[MRc][NVc];                                                                                \
        _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) acc[i][j] = _mm512_setzero_ps();           \
        for (int kp = 0; kp < KP; kp++) {                                                                    \
            const uint32_t *bk = b + kp * ldb, *ak = a + kp * aks;                                           \
            __m512bh bv[NVc];                                                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) bv[j] =                                    \
                (__m512bh)_mm512_loadu_si512((const void *)(bk + 16 * j));                                   \
            _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++) {                                          \
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[i * lda]);                                  \
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

typedef void (*kbfn)(int, const uint32_t *, long, long, const uint32_t *, long, float *, long, int, float);
#define ROWS_BF16(NVc) KERNEL_BF16(1, NVc) KERNEL_BF16(2, NVc) KERNEL_BF16(3, NVc) KERNEL_BF16(4, NVc) \
    KERNEL_BF16(5, NVc) KERNEL_BF16(6, NVc)
#define ROWTAB_BF16(NVc) {0, kb_1_##NVc, kb_2_##NVc, kb_3_##NVc, kb_4_##NVc, kb_5_##NVc, kb_6_##NVc}
ROWS_BF16(1)
ROWS_BF16(2)
ROWS_BF16(3)
ROWS_BF16(4)
static const kbfn KB[5][7] = {{0}, ROWTAB_BF16(1), ROWTAB_BF16(2), ROWTAB_BF16(3), ROWTAB_BF16(4)};

/* C (M x N) (=|+=) alpha * A (M x 2 KP) B (2 KP x N) in the packed layouts above; N a multiple of 16 */
static void gemm_bf16(int M, int N, int KP, const uint32_t *a, long lda, long aks, const uint32_t *b, long ldb,
                      float *c, long ldc, int add, float alpha) {
    int nvec = N / 16;
    for (int j0 = 0; j0 < nvec; j0 += 4) {
        int nv = nvec - j0 < 4 ? nvec - j0 : 4;
        int calls = (M + MR - 1) / MR, base = M / calls, extra = M % calls;
        for (int t = 0, i0 = 0; t < calls; t++) {
            int mr = base + (t < extra);
            KB[nv][mr](KP, a + (long)i0 * lda, lda, aks, b + 16 * j0, ldb, c + (long)i0 * ldc + 16 * j0, ldc, add,
                       alpha);
            i0 += mr;
        }
    }
}

/* dst[kp * ld + i] = the word (src[i][2 kp], src[i][2 kp + 1]) for i < n, 0 for n <= i < npad: keys transposed
 * two channels at a time (src rows of d bf16, row stride s, even) */
static void tpack(int n, int d, const bf16 *src, long s, uint32_t *dst, long ld, int npad) {
    transpose32(n, d / 2, (const uint32_t *)src, s / 2, dst, ld, npad);
}

/* dst[(i / 2) * d + c] = the word (src[i][c], src[i + 1][c]): rows interleaved two by two, rows n .. rows zero
 * (rows even) */
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

static void rows_to_bf16(int m, int N, const float *t, long lt, bf16 *dst, long ld) {
    for (int i = 0; i < m; i++)
        for (int c = 0; c < N; c += 16) store_bf16x16(dst + (long)i * ld + c, _mm512_loadu_ps(t + (long)i * lt + c));
}

/* softmax_row of band.c that leaves the row's exponentials in s and writes the probabilities as bf16 */
static float softmax_row_bf16(float *s, int L, int a, int b, bf16 *out) {
    if (a >= b) {
        memset(out, 0, 2 * (size_t)L);
        return -INFINITY;
    }
    int v0, v1;
    hide_edges(s, a, b, &v0, &v1);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int c = v0; c < v1; c += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + c));
    float m = _mm512_reduce_max_ps(mx);
    __m512 sum = _mm512_setzero_ps(), mv = _mm512_set1_ps(m);
    for (int c = v0; c < v1; c += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + c), mv));
        _mm512_storeu_ps(s + c, e);
        sum = _mm512_add_ps(sum, e);
    }
    float l = _mm512_reduce_add_ps(sum);
    __m512 inv = _mm512_set1_ps(1.0f / l);
    for (int c = v0; c < v1; c += 16) store_bf16x16(out + c, _mm512_mul_ps(_mm512_loadu_ps(s + c), inv));
    memset(out, 0, 2 * (size_t)v0);
    memset(out + v1, 0, 2 * (size_t)(L - v1));
    return m + logf(l);
}

/* probs_row of band.c (the forward's probabilities from the row log-sum-exp), written as bf16 */
static void probs_row_bf16(float *s, int L, int a, int b, float lse, bf16 *out) {
    if (a >= b || isinf(lse)) {
        memset(out, 0, 2 * (size_t)L);
        return;
    }
    int v0, v1;
    hide_edges(s, a, b, &v0, &v1);
    __m512 lv = _mm512_set1_ps(lse);
    for (int c = v0; c < v1; c += 16) store_bf16x16(out + c, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + c), lv)));
    memset(out, 0, 2 * (size_t)v0);
    memset(out + v1, 0, 2 * (size_t)(L - v1));
}

long band_scratch_bf16(int n, int d, int dv, int qb, int width, int backward) {
    long npad = (n + 15) & ~15, tile = (long)qb * width, qp = (qb + 1) / 2;
    if (!backward) /* KTp, Vp, scores, probabilities (bf16), output accumulator: in 4-byte units */
        return d / 2 * npad + npad / 2 * dv + tile + tile / 2 + (long)qb * dv;
    /* KTp, VTp, Kp, scores, dP, P and dS rows (bf16), Pp, dSp, dOp, Qp, dK and dV accumulators, dq accumulator */
    return (d + dv) / 2 * npad + npad / 2 * d + 2 * tile + tile + 2 * qp * width + qp * (d + dv) +
           (long)(d + dv) * npad + (long)qb * d;
}

/* Forward of one slice (as band_forward). probs: NULL, or room for the bf16 probabilities of every block
 * (band_probs_size(...)), which the backward then reads. */
void band_forward_bf16(int n, int d, int dv, const bf16 *q, long qs, const bf16 *k, long ks, const bf16 *v, long vs,
                       const int32_t *lo, const int32_t *hi, float scale, int qb, bf16 *o, long os, float *lse,
                       void *scratch, bf16 *probs, const int32_t *segs, int nseg) {
    int npad = (n + 15) & ~15, width = band_tile_width(n, lo, hi, qb, segs, nseg);
    long kept = 0;
    uint32_t *ktp = scratch, *vp = ktp + (long)d / 2 * npad;
    float *tile = (float *)(vp + (long)npad / 2 * dv);
    bf16 *pb = (bf16 *)(tile + (long)qb * width);
    float *oacc = (float *)(pb + (long)qb * width);
    tpack(n, d, k, ks, ktp, npad, npad);
    ipack(n, npad, dv, v, vs, vp);
    for (int r0 = 0; r0 < n; r0 += qb) {
        int r1 = r0 + qb < n ? r0 + qb : n, m = r1 - r0, first = 1;
        plan_t p = block_plan(lo, hi, r0, r1, segs, nseg, qb);
        if (p.L == 0) {
            for (int i = r0; i < r1; i++) {
                memset(o + (long)i * os, 0, 2 * (size_t)dv);
                lse[i] = -INFINITY;
            }
            continue;
        }
        if (probs) pb = probs + kept;
        kept += (long)qb * p.L;
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
            if (seg_len(&p, j))
                gemm_bf16(m, seg_len(&p, j), d / 2, (const uint32_t *)(q + (long)r0 * qs), qs / 2, 1,
                          ktp + seg_start(&p, j), npad, tile + off, p.L, 0, scale);
        for (int i = r0; i < r1; i++) {
            int a, b;
            row_columns(&p, tile + (long)(i - r0) * p.L, lo[i], hi[i], &a, &b);
            lse[i] = softmax_row_bf16(tile + (long)(i - r0) * p.L, p.L, a, b, pb + (long)(i - r0) * p.L);
        }
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
            if (seg_len(&p, j)) { /* whole ranges: their hidden columns hold zeros */
                gemm_bf16(m, dv, seg_len(&p, j) / 2, (const uint32_t *)(pb + off), p.L / 2, 1,
                          vp + (long)seg_start(&p, j) / 2 * dv, dv, oacc, dv, !first, 1.0f);
                first = 0;
            }
        rows_to_bf16(m, dv, oacc, dv, o + (long)r0 * os, os);
    }
}

/* whether the blocks' key spans only move forward (a sliding window's do): then dK and dV rows before the
 * current block's span are final and leave the accumulators while they are still in cache */
static int spans_advance(int n, const int32_t *lo, const int32_t *hi, int qb) {
    int last = 0;
    for (int r0 = 0; r0 < n; r0 += qb) {
        span_t s = block_span(lo, hi, r0, r0 + qb < n ? r0 + qb : n);
        if (s.L == 0) continue;
        if (s.ks < last) return 0;
        last = s.ks;
    }
    return 1;
}

/* Backward of one slice (as band_backward): dK and dV accumulate in fp32 rows, zeroed as the block spans
 * reach them and (for one range per block) written out as bf16 once no later block reaches them. */
void band_backward_bf16(int n, int d, int dv, const bf16 *q, long qs, const bf16 *k, long ks, const bf16 *v,
                        long vs, const bf16 *o, long os, const bf16 *dout, long dos, const float *lse,
                        const int32_t *lo, const int32_t *hi, float scale, int qb, bf16 *dq, long dqs, bf16 *dk,
                        long dks, bf16 *dvv, long dvs, void *scratch, const bf16 *probs, const int32_t *segs,
                        int nseg) {
    int npad = (n + 15) & ~15, width = band_tile_width(n, lo, hi, qb, segs, nseg), qp = (qb + 1) / 2;
    long tile = (long)qb * width, kept = 0;
    uint32_t *ktp = scratch, *vtp = ktp + (long)d / 2 * npad, *kp = vtp + (long)dv / 2 * npad;
    float *t1 = (float *)(kp + (long)npad / 2 * d), *t2 = t1 + tile;
    bf16 *pr = (bf16 *)(t2 + tile), *dsb = pr + tile;
    uint32_t *pp = (uint32_t *)(dsb + tile), *dsp = pp + (long)qp * width, *dop = dsp + (long)qp * width;
    uint32_t *qpk = dop + (long)qp * dv;
    float *dka = (float *)(qpk + (long)qp * d), *dva = dka + (long)npad * d, *dqa = dva + (long)npad * dv;
    int advance = !segs && spans_advance(n, lo, hi, qb), zeroed = 0, flushed = 0;
    if (!probs) tpack(n, d, k, ks, ktp, npad, npad); /* only to recompute the probabilities */
    tpack(n, dv, v, vs, vtp, npad, npad);
    ipack(n, npad, d, k, ks, kp);
    for (int r0 = 0; r0 < n; r0 += qb) {
        int r1 = r0 + qb < n ? r0 + qb : n, m = r1 - r0, mp = (m + 1) / 2, end = 0;
        plan_t p = block_plan(lo, hi, r0, r1, segs, nseg, qb);
        if (p.L == 0) {
            for (int i = r0; i < r1; i++) memset(dq + (long)i * dqs, 0, 2 * (size_t)d);
            continue;
        }
        if (advance && flushed < p.ks) { /* rows no later block reaches */
            rows_to_bf16(p.ks - flushed, d, dka + (long)flushed * d, d, dk + (long)flushed * dks, dks);
            rows_to_bf16(p.ks - flushed, dv, dva + (long)flushed * dv, dv, dvv + (long)flushed * dvs, dvs);
            flushed = p.ks;
        }
        for (int j = 0; j < p.nseg; j++)
            if (seg_len(&p, j) && seg_start(&p, j) + seg_len(&p, j) > end) end = seg_start(&p, j) + seg_len(&p, j);
        if (zeroed < end) { /* rows 0 .. zeroed hold sums (or zeros) already */
            memset(dka + (long)zeroed * d, 0, 4 * (size_t)(end - zeroed) * d);
            memset(dva + (long)zeroed * dv, 0, 4 * (size_t)(end - zeroed) * dv);
            zeroed = end;
        }
        const bf16 *qb_ = q + (long)r0 * qs, *db = dout + (long)r0 * dos, *pk;
        int L = p.L;
        if (probs) { /* kept by the forward */
            pk = probs + kept;
            kept += (long)qb * L;
        } else {
            for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
                if (seg_len(&p, j))
                    gemm_bf16(m, seg_len(&p, j), d / 2, (const uint32_t *)qb_, qs / 2, 1, ktp + seg_start(&p, j),
                              npad, t1 + off, L, 0, scale);
            for (int i = r0; i < r1; i++) {
                int a, b;
                row_columns(&p, t1 + (long)(i - r0) * L, lo[i], hi[i], &a, &b);
                probs_row_bf16(t1 + (long)(i - r0) * L, L, a, b, lse[i], pr + (long)(i - r0) * L);
            }
            pk = pr;
        }
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
            if (seg_len(&p, j))
                gemm_bf16(m, seg_len(&p, j), dv / 2, (const uint32_t *)db, dos / 2, 1, vtp + seg_start(&p, j), npad,
                          t2 + off, L, 0, 1.0f);
        for (int i = r0; i < r1; i++) { /* dS = P * (dP - D), D = rowsum(dO * O) */
            __m512 acc = _mm512_setzero_ps();
            for (int c = 0; c < dv; c += 16)
                acc = _mm512_fmadd_ps(bf16x16(db + (long)(i - r0) * dos + c), bf16x16(o + (long)i * os + c), acc);
            __m512 di = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
            const bf16 *pi = pk + (long)(i - r0) * L;
            const float *g = t2 + (long)(i - r0) * L;
            bf16 *out = dsb + (long)(i - r0) * L;
            for (int c = 0; c < L; c += 16)
                store_bf16x16(out + c, _mm512_mul_ps(bf16x16(pi + c), _mm512_sub_ps(_mm512_loadu_ps(g + c), di)));
        }
        ipack(m, 2 * mp, L, pk, L, pp);
        ipack(m, 2 * mp, L, dsb, L, dsp);
        ipack(m, 2 * mp, dv, db, dos, dop);
        ipack(m, 2 * mp, d, qb_, qs, qpk);
        /* dQ = dS K; dV += P^T dO and dK += dS^T Q per range: A is the pair-packed P (dS) read down its columns */
        for (int j = 0, off = 0, first = 1; j < p.nseg; off += seg_len(&p, j), j++) {
            int st = seg_start(&p, j), len = seg_len(&p, j);
            if (!len) continue;
            gemm_bf16(m, d, len / 2, (const uint32_t *)(dsb + off), L / 2, 1, kp + (long)st / 2 * d, d, dqa, d, !first,
                      scale);
            gemm_bf16(len, dv, mp, pp + off, 1, L, dop, dv, dva + (long)st * dv, dv, 1, 1.0f);
            gemm_bf16(len, d, mp, dsp + off, 1, L, qpk, d, dka + (long)st * d, d, 1, scale);
            first = 0;
        }
        rows_to_bf16(m, d, dqa, d, dq + (long)r0 * dqs, dqs);
    }
    if (zeroed < n) {
        memset(dka + (long)zeroed * d, 0, 4 * (size_t)(n - zeroed) * d);
        memset(dva + (long)zeroed * dv, 0, 4 * (size_t)(n - zeroed) * dv);
    }
    rows_to_bf16(n - flushed, d, dka + (long)flushed * d, d, dk + (long)flushed * dks, dks);
    rows_to_bf16(n - flushed, dv, dva + (long)flushed * dv, dv, dvv + (long)flushed * dvs, dvs);
}

#pragma GCC pop_options
