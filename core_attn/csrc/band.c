/* Sliding-window attention over one (batch, head) slice, forward and backward, fp32.
 *
 * Query i sees the keys lo[i] <= j < hi[i] (a contiguous range per row: a sliding window, causal or
 * not). Queries go in blocks of `qb` rows; a block computes its scores against the keys from the first
 * key any of its rows sees to the last, rounded out to 16 columns, so a block of 32 rows in a window of
 * 2 w + 1 keys computes 2 w + 32 (+ < 32) columns: ~6 % beyond the visible pairs at w = 256, where 128-row
 * blocks over whole key blocks compute 25 %. The products are register-blocked micro-kernels (GCC vector
 * extensions: 16 floats under AVX-512, 8 under AVX2) in the manner of BLIS; softmax, mask and exp are
 * fused per row. The backward recomputes the probabilities from the row log-sum-exp (FlashAttention-2),
 * so nothing of size N x w is kept between the passes.
 *
 * Built by core_attn/native.py with the system C compiler on first use; the reference it is tested
 * against is core_attn.reference.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VL 16
#define NV 4 /* vectors per micro-kernel row: 64 columns */
#else
#define VL 8
#define NV 2 /* 16 columns: 6 x 2 accumulators fit AVX2's 16 registers */
#endif
#define MR 6 /* rows per micro-kernel */

typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

static inline vf ld(const float *p) { return *(const vfu *)p; }
static inline void st(float *p, vf x) { *(vfu *)p = x; }
static inline vf bc(float x) { return (vf){} + x; }
static inline vf sel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp(x) for x <= 88 (here x <= 0: scores minus their row maximum or log-sum-exp): Cephes' expf polynomial
 * after x = n ln2 + r (about 1 ulp), the power of two applied by vscalefps, 0 below -87.3 (and for -inf) */
static inline __m512 exp512(__m512 x) {
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps(keep, p, n);
}

static inline vf vexp(vf x) { return (vf)exp512((__m512)x); }
#else
/* exp for x in float range: Cephes' expf polynomial after x = n ln2 + r (about 1 ulp) */
static inline vf vexp(vf x) {
    vi under = x < bc(-87.3f); /* exp underflows: 0, as for x = -inf */
    x = sel(under, bc(-87.3f), x);
    x = sel(x > bc(88.3f), bc(88.3f), x);
    vf t = x * 1.44269504088896341f + 12582912.0f; /* round to nearest by the 1.5 * 2^23 shift */
    vf n = t - 12582912.0f;
    vi ni = (vi)t - 0x4B400000;
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = bc(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return sel(under, (vf){}, p * (vf)((ni + 127) << 23));
}
#endif

static inline float hmax(vf x) {
    float m = x[0];
    for (int l = 1; l < VL; l++) m = x[l] > m ? x[l] : m;
    return m;
}

static inline float hsum(vf x) {
    float s = 0.0f;
    for (int l = 0; l < VL; l++) s += x[l];
    return s;
}

/* C[MRc x NVc*VL] (=|+=) alpha * sum_k A[i, k] B[k, :], A[i, k] = a[i * lda + k * aks], B[k, :] = b + k * ldb */
#define KERNEL(MRc, NVc)                                                                                     \
    static void mk_##MRc##_##NVc(int K, const float *restrict a, long lda, long aks, const float *restrict b, \
                                 long ldb, float *restrict c, long ldc, int add, float alpha) {             \
        vf acc[MRc][NVc];                                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) acc[i][j] = (vf){};                        \
        for (int k = 0; k < K; k++) {                                                                        \
            const float *bk = b + k * ldb;                                                                   \
            const float *ak = a + k * aks;                                                                   \
            vf bv[NVc];                                                                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) bv[j] = ld(bk + j * VL);                   \
            _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++) {                                          \
                vf av = bc(ak[i * lda]);                                                                     \
                _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) acc[i][j] += av * bv[j];               \
            }                                                                                                \
        }                                                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < MRc; i++)                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NVc; j++) {                                          \
                float *cp = c + i * ldc + j * VL;                                                            \
                vf r = acc[i][j] * alpha;                                                                    \
                st(cp, add ? r + ld(cp) : r);                                                                \
            }                                                                                                \
    }

typedef void (*mkfn)(int, const float *, long, long, const float *, long, float *, long, int, float);

#define ROWS(NVc) KERNEL(1, NVc) KERNEL(2, NVc) KERNEL(3, NVc) KERNEL(4, NVc) KERNEL(5, NVc) KERNEL(6, NVc)
#define ROWTAB(NVc) {0, mk_1_##NVc, mk_2_##NVc, mk_3_##NVc, mk_4_##NVc, mk_5_##NVc, mk_6_##NVc}
ROWS(1)
ROWS(2)
#if NV == 4
ROWS(3)
ROWS(4)
static const mkfn MK[NV + 1][MR + 1] = {{0}, ROWTAB(1), ROWTAB(2), ROWTAB(3), ROWTAB(4)};
#else
static const mkfn MK[NV + 1][MR + 1] = {{0}, ROWTAB(1), ROWTAB(2)};
#endif

/* C (M x N) (=|+=) alpha * A (M x K) B (K x N); N a multiple of VL; B rows contiguous */
static void gemm(int M, int N, int K, const float *a, long lda, long aks, const float *b, long ldb, float *c,
                 long ldc, int add, float alpha) {
    int nvec = N / VL;
    if (K <= 0) {
        if (!add)
            for (int i = 0; i < M; i++) memset(c + i * ldc, 0, sizeof(float) * N);
        return;
    }
    for (int j0 = 0; j0 < nvec; j0 += NV) {
        int nv = nvec - j0 < NV ? nvec - j0 : NV;
        /* rows split evenly (32 = 6 + 6 + 5 + 5 + 5 + 5, not 6 x 5 + 2): a short call streams B for little work */
        int calls = (M + MR - 1) / MR, base = M / calls, extra = M % calls;
        for (int t = 0, i0 = 0; t < calls; t++) {
            int mr = base + (t < extra);
            MK[nv][mr](K, a + (long)i0 * lda, lda, aks, b + j0 * VL, ldb, c + (long)i0 * ldc + j0 * VL, ldc, add,
                       alpha);
            i0 += mr;
        }
    }
}

#if defined(__AVX512F__)
/* r[i][j] <- r[j][i] for a 16 x 16 block of 32-bit lanes, in registers */
static inline void tr16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), e = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
        t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
        t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
        r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
        r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
    }
}
#endif

/* dst (d x npad, row stride ld) = src (n x d 32-bit elements, row stride s) transposed, columns n .. npad
 * zero (floats, or the bf16 kernel's pairs of bf16 as words) */
static void transpose32(int n, int d, const uint32_t *src, long s, uint32_t *dst, long ld, int npad) {
    int full = 0;
    for (int c = 0; c < d; c++) memset(dst + (long)c * ld + n, 0, 4 * (size_t)(npad - n));
#if defined(__AVX512F__)
    if (d % 16 == 0) { /* 16 x 16 blocks in registers */
        full = n / 16 * 16;
        for (int i0 = 0; i0 < full; i0 += 16)
            for (int c0 = 0; c0 < d; c0 += 16) {
                __m512 r[16];
                for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_ps((const float *)(src + (long)(i0 + j) * s + c0));
                tr16(r);
                for (int j = 0; j < 16; j++) _mm512_storeu_ps((float *)(dst + (long)(c0 + j) * ld + i0), r[j]);
            }
    }
#endif
    for (int i0 = full; i0 < n; i0 += 16) {
        int i1 = i0 + 16 < n ? i0 + 16 : n;
        for (int c = 0; c < d; c++)
            for (int i = i0; i < i1; i++) dst[(long)c * ld + i] = src[(long)i * s + c];
    }
}

/* dst (d x npad) = src (n x d, row stride s) transposed, columns n .. npad zero */
static void transpose(int n, int d, const float *src, long s, float *dst, int npad) {
    transpose32(n, d, (const uint32_t *)src, s, (uint32_t *)dst, npad, npad);
}

typedef struct {
    int lo, hi, ks, L; /* visible keys of the block, first column and width of its score tile */
} span_t;

static span_t block_span(const int32_t *lo, const int32_t *hi, int r0, int r1) {
    span_t s = {1 << 30, -1, 0, 0};
    for (int i = r0; i < r1; i++)
        if (lo[i] < hi[i]) {
            s.lo = lo[i] < s.lo ? lo[i] : s.lo;
            s.hi = hi[i] > s.hi ? hi[i] : s.hi;
        }
    if (s.hi < 0) {
        s.lo = s.hi = 0;
        return s;
    }
    s.ks = s.lo & ~15;
    s.L = ((s.hi + 15) & ~15) - s.ks;
    return s;
}

/* The keys a block of queries scores: one range (a sliding window: the block's span) or, given `segs`, the
 * block's list of nseg (start, length) key ranges, lengths multiples of 16 (0: unused), ranges disjoint and
 * within the transposed keys' npad columns (block-sparse patterns: BigBird's window, global and random
 * blocks). The score tile holds the ranges side by side; row i still sees only keys lo[i] <= j < hi[i]. */
typedef struct {
    int lo, hi;         /* keys some row of the block sees: lo <= j < hi */
    int L, nseg;        /* tile width, ranges */
    int ks;             /* one range: its first key */
    const int32_t *seg; /* or nseg (start, length) pairs */
} plan_t;

static plan_t block_plan(const int32_t *lo, const int32_t *hi, int r0, int r1, const int32_t *segs, int nseg,
                         int qb) {
    span_t s = block_span(lo, hi, r0, r1);
    plan_t p = {s.lo, s.hi, s.L, 1, s.ks, 0};
    if (segs && s.L) {
        p.seg = segs + 2L * nseg * (r0 / qb);
        p.nseg = nseg;
        p.L = 0;
        for (int j = 0; j < nseg; j++) p.L += p.seg[2 * j + 1];
    }
    return p;
}

static inline int seg_start(const plan_t *p, int j) { return p->seg ? p->seg[2 * j] : p->ks; }
static inline int seg_len(const plan_t *p, int j) { return p->seg ? p->seg[2 * j + 1] : p->L; }

/* the keys of range j some row sees: [*a, *b) (empty when *b <= *a) */
static inline void seg_keys(const plan_t *p, int j, int *a, int *b) {
    int st = seg_start(p, j), en = st + seg_len(p, j);
    *a = st > p->lo ? st : p->lo;
    *b = en < p->hi ? en : p->hi;
}

/* Row i's visible columns of the score row s as the [*a, *b) that softmax_row and probs_row take: for one
 * range directly; for a list, the hidden columns set to -inf and [0, L) (or [0, 0) when none is visible) */
static void row_columns(const plan_t *p, float *s, int lo, int hi, int *a, int *b) {
    if (!p->seg) {
        *a = lo - p->ks;
        *b = hi - p->ks;
        return;
    }
    int any = 0;
    for (int j = 0, off = 0; j < p->nseg; off += p->seg[2 * j + 1], j++) {
        int st = p->seg[2 * j], len = p->seg[2 * j + 1];
        int x = lo - st, y = hi - st;
        x = x < 0 ? 0 : x > len ? len : x;
        y = y < x ? x : y > len ? len : y;
        for (int c = 0; c < x; c++) s[off + c] = -INFINITY;
        for (int c = y; c < len; c++) s[off + c] = -INFINITY;
        any |= y > x;
    }
    *a = 0;
    *b = any ? p->L : 0;
}

/* widest score tile of any block: the caller sizes the scratch with it */
int band_tile_width(int n, const int32_t *lo, const int32_t *hi, int qb, const int32_t *segs, int nseg) {
    int w = 0;
    for (int r0 = 0; r0 < n; r0 += qb) {
        plan_t p = block_plan(lo, hi, r0, r0 + qb < n ? r0 + qb : n, segs, nseg, qb);
        w = p.L > w ? p.L : w;
    }
    return w;
}

/* elements of the probabilities training keeps: qb x L per block, block after block */
long band_probs_size(int n, const int32_t *lo, const int32_t *hi, int qb, const int32_t *segs, int nseg) {
    long size = 0;
    for (int r0 = 0; r0 < n; r0 += qb)
        size += (long)qb * block_plan(lo, hi, r0, r0 + qb < n ? r0 + qb : n, segs, nseg, qb).L;
    return size;
}

static inline vf vmax(vf a, vf b) { return sel(a > b, a, b); }

/* -inf in the columns of s outside [a, b) that share a vector with [a, b); returns the vector range */
static inline void hide_edges(float *s, int a, int b, int *v0, int *v1) {
    *v0 = a / VL * VL;
    *v1 = (b + VL - 1) / VL * VL;
    for (int c = *v0; c < a; c++) s[c] = -INFINITY;
    for (int c = b; c < *v1; c++) s[c] = -INFINITY;
}

/* row of scaled scores s[0 .. L) -> probabilities, zero outside [a, b); returns the log-sum-exp */
static float softmax_row(float *s, int L, int a, int b) {
    if (a >= b) {
        memset(s, 0, sizeof(float) * L);
        return -INFINITY;
    }
    int v0, v1;
    hide_edges(s, a, b, &v0, &v1);
    vf mx = bc(-INFINITY);
    for (int c = v0; c < v1; c += VL) mx = vmax(mx, ld(s + c));
    float m = hmax(mx);
    vf sum = (vf){}, mv = bc(m);
    for (int c = v0; c < v1; c += VL) {
        vf e = vexp(ld(s + c) - mv);
        st(s + c, e);
        sum += e;
    }
    float l = hsum(sum);
    vf inv = bc(1.0f / l);
    for (int c = v0; c < v1; c += VL) st(s + c, ld(s + c) * inv);
    memset(s, 0, sizeof(float) * v0);
    memset(s + v1, 0, sizeof(float) * (L - v1));
    return m + logf(l);
}

/* row of scaled scores -> exp(s - lse), zero outside [a, b) (the forward's probabilities) */
static void probs_row(float *s, int L, int a, int b, float lse) {
    if (a >= b || isinf(lse)) {
        memset(s, 0, sizeof(float) * L);
        return;
    }
    int v0, v1;
    hide_edges(s, a, b, &v0, &v1);
    vf lv = bc(lse);
    for (int c = v0; c < v1; c += VL) st(s + c, vexp(ld(s + c) - lv));
    memset(s, 0, sizeof(float) * v0);
    memset(s + v1, 0, sizeof(float) * (L - v1));
}

/* dst (n x d, contiguous) = src (n x d, row stride s) */
static void pack(int n, int d, const float *src, long s, float *dst) {
    for (int i = 0; i < n; i++) memcpy(dst + (long)i * d, src + (long)i * s, sizeof(float) * d);
}

/* floats of scratch one slice needs (per thread), for the forward or the backward */
long band_scratch(int n, int d, int dv, int qb, int width, int backward) {
    long npad = (n + 15) & ~15;
    if (!backward) /* kt, vc, tile */
        return d * npad + (long)n * dv + (long)qb * width;
    /* kt, vt, kc, t1, t2, qblk, doblk */
    return (d + dv) * npad + (long)n * d + 2L * qb * width + (long)qb * (d + dv);
}

/* Forward of one slice. q, k, v, o: rows of d (dv) floats with row strides qs, ks, vs, os;
 * scratch: band_scratch(n, d, dv, qb, band_tile_width(...), 0) floats. probs: NULL, or room for the
 * probabilities of every block (band_probs_size(...) floats), which the backward then reads.
 * segs, nseg: NULL, or the key ranges of every block (see plan_t). */
void band_forward(int n, int d, int dv, const float *q, long qs, const float *k, long ks, const float *v, long vs,
                  const int32_t *lo, const int32_t *hi, float scale, int qb, float *o, long os, float *lse,
                  float *scratch, float *probs, const int32_t *segs, int nseg) {
    int npad = (n + 15) & ~15;
    long kept = 0;
    float *kt = scratch, *vc = kt + (long)d * npad, *tile = vc + (long)n * dv;
    pack(n, dv, v, vs, vc);
    transpose(n, d, k, ks, kt, npad);
    for (int r0 = 0; r0 < n; r0 += qb) {
        int r1 = r0 + qb < n ? r0 + qb : n, m = r1 - r0, first = 1;
        plan_t p = block_plan(lo, hi, r0, r1, segs, nseg, qb);
        if (p.L == 0) {
            for (int i = r0; i < r1; i++) {
                memset(o + (long)i * os, 0, sizeof(float) * dv);
                lse[i] = -INFINITY;
            }
            continue;
        }
        if (probs) tile = probs + kept;
        kept += (long)qb * p.L;
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
            if (seg_len(&p, j))
                gemm(m, seg_len(&p, j), d, q + (long)r0 * qs, qs, 1, kt + seg_start(&p, j), npad, tile + off, p.L, 0,
                     scale);
        for (int i = r0; i < r1; i++) {
            int a, b;
            row_columns(&p, tile + (long)(i - r0) * p.L, lo[i], hi[i], &a, &b);
            lse[i] = softmax_row(tile + (long)(i - r0) * p.L, p.L, a, b);
        }
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++) {
            int a, b;
            seg_keys(&p, j, &a, &b);
            if (b <= a) continue;
            gemm(m, dv, b - a, tile + off + (a - seg_start(&p, j)), p.L, 1, vc + (long)a * dv, dv, o + (long)r0 * os,
                 os, !first, 1.0f);
            first = 0;
        }
        if (first)
            for (int i = r0; i < r1; i++) memset(o + (long)i * os, 0, sizeof(float) * dv);
    }
}

/* Backward of one slice: dq, dk, dv written (dk and dv accumulated in place);
 * scratch: band_scratch(n, d, dv, qb, band_tile_width(...), 1) floats. */
void band_backward(int n, int d, int dv, const float *q, long qs, const float *k, long ks, const float *v, long vs,
                   const float *o, long os, const float *dout, long dos, const float *lse, const int32_t *lo,
                   const int32_t *hi, float scale, int qb, float *dq, long dqs, float *dk, long dks, float *dvv,
                   long dvs, float *scratch, const float *probs, const int32_t *segs, int nseg) {
    int npad = (n + 15) & ~15, width = band_tile_width(n, lo, hi, qb, segs, nseg);
    long kept = 0;
    float *kt = scratch, *vt = kt + (long)d * npad, *kc = vt + (long)dv * npad, *t1 = kc + (long)n * d;
    float *t2 = t1 + (long)qb * width, *qblk = t2 + (long)qb * width, *doblk = qblk + (long)qb * d;
    pack(n, d, k, ks, kc);
    transpose(n, d, kc, d, kt, npad);
    transpose(n, dv, v, vs, vt, npad);
    for (int i = 0; i < n; i++) { /* dk and dv accumulate in place */
        memset(dk + (long)i * dks, 0, sizeof(float) * d);
        memset(dvv + (long)i * dvs, 0, sizeof(float) * dv);
    }
    for (int r0 = 0; r0 < n; r0 += qb) {
        int r1 = r0 + qb < n ? r0 + qb : n, m = r1 - r0, first = 1;
        plan_t p = block_plan(lo, hi, r0, r1, segs, nseg, qb);
        if (p.L == 0) {
            for (int i = r0; i < r1; i++) memset(dq + (long)i * dqs, 0, sizeof(float) * d);
            continue;
        }
        pack(m, d, q + (long)r0 * qs, qs, qblk);
        pack(m, dv, dout + (long)r0 * dos, dos, doblk);
        if (probs) { /* kept by the forward */
            t1 = (float *)probs + kept;
            kept += (long)qb * p.L;
        } else {
            for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
                if (seg_len(&p, j))
                    gemm(m, seg_len(&p, j), d, qblk, d, 1, kt + seg_start(&p, j), npad, t1 + off, p.L, 0, scale);
            for (int i = r0; i < r1; i++) {
                int a, b;
                row_columns(&p, t1 + (long)(i - r0) * p.L, lo[i], hi[i], &a, &b);
                probs_row(t1 + (long)(i - r0) * p.L, p.L, a, b, lse[i]);
            }
        }
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++)
            if (seg_len(&p, j))
                gemm(m, seg_len(&p, j), dv, doblk, dv, 1, vt + seg_start(&p, j), npad, t2 + off, p.L, 0, 1.0f);
        for (int i = r0; i < r1; i++) { /* dS = P * (dP - D), D = rowsum(dO * O) */
            const float *a = doblk + (long)(i - r0) * dv, *b = o + (long)i * os;
            vf acc = (vf){};
            for (int c = 0; c < dv; c += VL) acc += ld(a + c) * ld(b + c);
            vf di = bc(hsum(acc));
            float *pr = t1 + (long)(i - r0) * p.L, *g = t2 + (long)(i - r0) * p.L;
            for (int c = 0; c < p.L; c += VL) st(g + c, ld(pr + c) * (ld(g + c) - di));
        }
        for (int j = 0, off = 0; j < p.nseg; off += seg_len(&p, j), j++) {
            int a, b;
            seg_keys(&p, j, &a, &b);
            if (b <= a) continue;
            int c0 = off + (a - seg_start(&p, j)), nk = b - a;
            gemm(m, d, nk, t2 + c0, p.L, 1, kc + (long)a * d, d, dq + (long)r0 * dqs, dqs, !first, scale);
            gemm(nk, dv, m, t1 + c0, 1, p.L, doblk, dv, dvv + (long)a * dvs, dvs, 1, 1.0f);
            gemm(nk, d, m, t2 + c0, 1, p.L, qblk, d, dk + (long)a * dks, dks, 1, scale);
            first = 0;
        }
        if (first)
            for (int i = r0; i < r1; i++) memset(dq + (long)i * dqs, 0, sizeof(float) * d);
    }
}
