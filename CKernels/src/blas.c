// blas.c — the one file that talks to OpenBLAS.
#include "dr_kernels.h"
#include "dr_packed.h"
#include <cblas.h>
#include <math.h>

// OpenBLAS's own thread control (declared in its cblas.h on Debian, but not everywhere).
extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);

void dr_blas_set_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }
int dr_blas_get_threads(void) { return openblas_get_num_threads(); }

void dr_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K, alpha, A,
                (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

// ---------------------------------------------------------------------------------------------
// Few rows (the single-utterance path): OpenBLAS packs the whole weight panel on every call, which
// costs more than the arithmetic when N is a handful of tokens. The small kernel streams each
// weight row once per block of three input rows and keeps the dot products in registers. Every
// output element is the same sequence of operations whatever N and the row's position (eight-lane
// FMA partial sums over C in order, then one fixed reduction tree), so its rows do not depend on
// the rows beside them. AVX2+FMA only, chosen at run time (cpuid); otherwise OpenBLAS.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

static int cpu_has_avx2_fma(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!fma || !osxsave || !avx) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0; // the OS saves XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 5) & 1;
}

// Σ of the eight lanes of a, b, c, d: lanes 0..3 of the result, one fixed tree.
__attribute__((target("avx2,fma"))) static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// out (N,OC) = inp (N,C) · weightᵀ + bias, C a multiple of 8. Columns in fours (the last OC % 4 as
// a four with repeated rows, stored partially); input rows in threes, then ones.
__attribute__((target("avx2,fma")))
static void small_matmul_avx2(float *out, const float *inp, const float *weight, const float *bias,
                              int64_t N, int64_t C, int64_t OC) {
    for (int64_t j = 0; j < OC; j += 4) {
        const int64_t nj = OC - j < 4 ? OC - j : 4;
        const float *w[4];
        for (int q = 0; q < 4; q++) w[q] = weight + (j + (q < nj ? q : nj - 1)) * C;
        float bv[4] = {0, 0, 0, 0};
        if (bias) for (int q = 0; q < nj; q++) bv[q] = bias[j + q];
        const __m128 b = _mm_loadu_ps(bv);
        int64_t i = 0;
        for (; i + 3 <= N; i += 3) {
            const float *x0 = inp + i * C, *x1 = x0 + C, *x2 = x1 + C;
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                   a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            for (int64_t c = 0; c < C; c += 8) {
                const __m256 X0 = _mm256_loadu_ps(x0 + c), X1 = _mm256_loadu_ps(x1 + c), X2 = _mm256_loadu_ps(x2 + c);
                __m256 W = _mm256_loadu_ps(w[0] + c);
                a00 = _mm256_fmadd_ps(X0, W, a00); a10 = _mm256_fmadd_ps(X1, W, a10); a20 = _mm256_fmadd_ps(X2, W, a20);
                W = _mm256_loadu_ps(w[1] + c);
                a01 = _mm256_fmadd_ps(X0, W, a01); a11 = _mm256_fmadd_ps(X1, W, a11); a21 = _mm256_fmadd_ps(X2, W, a21);
                W = _mm256_loadu_ps(w[2] + c);
                a02 = _mm256_fmadd_ps(X0, W, a02); a12 = _mm256_fmadd_ps(X1, W, a12); a22 = _mm256_fmadd_ps(X2, W, a22);
                W = _mm256_loadu_ps(w[3] + c);
                a03 = _mm256_fmadd_ps(X0, W, a03); a13 = _mm256_fmadd_ps(X1, W, a13); a23 = _mm256_fmadd_ps(X2, W, a23);
            }
            float r[4];
            _mm_storeu_ps(r, _mm_add_ps(hsum4(a00, a01, a02, a03), b));
            for (int q = 0; q < nj; q++) out[i * OC + j + q] = r[q];
            _mm_storeu_ps(r, _mm_add_ps(hsum4(a10, a11, a12, a13), b));
            for (int q = 0; q < nj; q++) out[(i + 1) * OC + j + q] = r[q];
            _mm_storeu_ps(r, _mm_add_ps(hsum4(a20, a21, a22, a23), b));
            for (int q = 0; q < nj; q++) out[(i + 2) * OC + j + q] = r[q];
        }
        for (; i < N; i++) {
            const float *x0 = inp + i * C;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t c = 0; c < C; c += 8) {
                const __m256 X0 = _mm256_loadu_ps(x0 + c);
                a0 = _mm256_fmadd_ps(X0, _mm256_loadu_ps(w[0] + c), a0);
                a1 = _mm256_fmadd_ps(X0, _mm256_loadu_ps(w[1] + c), a1);
                a2 = _mm256_fmadd_ps(X0, _mm256_loadu_ps(w[2] + c), a2);
                a3 = _mm256_fmadd_ps(X0, _mm256_loadu_ps(w[3] + c), a3);
            }
            float r[4];
            _mm_storeu_ps(r, _mm_add_ps(hsum4(a0, a1, a2, a3), b));
            for (int q = 0; q < nj; q++) out[i * OC + j + q] = r[q];
        }
    }
}
#define DR_HAVE_SMALL_MATMUL 1
#endif

static int small_matmul_state = -1; // -1: not probed yet; 0 off; 1 on

int dr_small_matmul_available(void) {
#ifdef DR_HAVE_SMALL_MATMUL
    static int probed = -1;
    if (probed < 0) probed = cpu_has_avx2_fma();
    return probed;
#else
    return 0;
#endif
}

void dr_set_small_matmul(int enabled) { __atomic_store_n(&small_matmul_state, enabled && dr_small_matmul_available(), __ATOMIC_RELAXED); }

int dr_small_matmul(float *out, const float *inp, const float *weight, const float *bias,
                    int64_t N, int64_t C, int64_t OC) {
#ifdef DR_HAVE_SMALL_MATMUL
    if (!dr_small_matmul_available() || C % 8 != 0 || N < 0 || OC < 0) return 0;
    small_matmul_avx2(out, inp, weight, bias, N, C, OC);
    return 1;
#else
    (void)out; (void)inp; (void)weight; (void)bias; (void)N; (void)C; (void)OC;
    return 0;
#endif
}

static int small_matmul_on(void) {
    int small = __atomic_load_n(&small_matmul_state, __ATOMIC_RELAXED);
    if (small < 0) {
        small = dr_small_matmul_available();
        __atomic_store_n(&small_matmul_state, small, __ATOMIC_RELAXED);
    }
    return small;
}

void dr_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int64_t N, int64_t C, int64_t OC) {
    // out (N,OC) = inp (N,C) · weightᵀ (C,OC)
    if (small_matmul_on() && N <= DR_SMALL_MATMUL_ROWS && dr_small_matmul(out, inp, weight, bias, N, C, OC)) return;
    if (bias) {
        for (int64_t i = 0; i < N; i++) {
            float *o = out + i * OC;
            for (int64_t j = 0; j < OC; j++) o[j] = bias[j];
        }
    }
    dr_sgemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, bias ? 1.0f : 0.0f, out, OC);
}

// ---------------------------------------------------------------------------------------------
// Packed few-rows path for FROZEN weights (the encoder's single-utterance path). The weight is
// packed once into panels of 16 output columns, each panel (C, 16) row-major: panel p holds
// weight[16p + q][c] at [c][q], zero past OC. The kernel broadcasts one input value and multiplies
// it into a panel row, so each output element is ONE fused multiply-add chain over c in order
// from 0, then + bias, then + resid: no horizontal sums, no dependence on N, on the row's position
// or on the instruction set (AVX-512 and AVX2 give the same bits as the plain reference
// dr_linear_reference, since every step is one correctly rounded operation).

int64_t dr_packed_linear_size(int64_t C, int64_t OC) { return (OC + 15) / 16 * 16 * C; }

// Element (j, c) of the weight (output j, input c) is w[j * sj + c * sc].
static void pack_f32(float *packed, const float *w, int64_t sj, int64_t sc, int64_t C, int64_t OC) {
    const int64_t P = (OC + 15) / 16;
    for (int64_t p = 0; p < P; p++) {
        float *dst = packed + p * 16 * C;
        for (int64_t c = 0; c < C; c++)
            for (int64_t q = 0; q < 16; q++) {
                const int64_t j = p * 16 + q;
                dst[c * 16 + q] = j < OC ? w[j * sj + c * sc] : 0.0f;
            }
    }
}

void dr_pack_linear(float *packed, const float *weight, int64_t C, int64_t OC) { pack_f32(packed, weight, C, 1, C, OC); }

// weightᵀ as a (C outputs, OC inputs) linear weight: element (c, o) is weight[o * C + c].
void dr_pack_linear_t(float *packed, const float *weight, int64_t C, int64_t OC) { pack_f32(packed, weight, 1, C, OC, C); }

void dr_linear_reference(float *out, const float *inp, const float *weight, const float *bias,
                         const float *resid, int64_t N, int64_t C, int64_t OC) {
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < OC; j++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < C; c++) acc = fmaf(inp[i * C + c], weight[j * C + c], acc);
            if (bias) acc = acc + bias[j];
            if (resid) acc = acc + resid[i * OC + j];
            out[i * OC + j] = acc;
        }
}

#ifdef DR_HAVE_SMALL_MATMUL
static int cpu_has_avx512f(void) {
    unsigned a, b, c, d;
    if (!cpu_has_avx2_fma()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((b >> 16) & 1)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xE6) == 0xE6; // XMM, YMM, opmask, ZMM upper halves, ZMM16-31 saved by the OS
}

#define DR_T512 __attribute__((target("avx512f,avx2,fma")))
#define DR_T256 __attribute__((target("avx2,fma")))
#define DR_INLINE static inline __attribute__((always_inline))
// The row loops must unroll completely so that the accumulator arrays become registers.
#if defined(__clang__)
#define DR_UNROLL _Pragma("clang loop unroll(full)")
#else
#define DR_UNROLL _Pragma("GCC unroll 12")
#endif

// The row block's input, transposed: xt[c * 12 + r] = x[r][c]. The broadcasts then read one
// pointer at constant offsets (twelve row pointers would not fit in the general registers).
// Thread-local, so the kernels still never allocate; C above DR_PACKED_MAX_C goes to OpenBLAS.
static _Thread_local float packed_xt[DR_PACKED_MAX_C * 12];

static void transpose_block(float *xt, const float *x, int64_t nr, int64_t C) {
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < 12; r++) xt[c * 12 + r] = r < nr ? x[r * C + c] : 0.0f;
}

// nr (1..12) rows × np (1, 2, 4 or 8) panels, nr × np <= 24; nr and np are constants at every
// call site, so the accumulators live in registers. Few rows take more panels, so that there are
// enough independent FMA chains to hide the FMA latency.
DR_INLINE DR_T512 void pk512(const int nr, const int np, float *out, const float *xt, const float *pa,
                             const float *bias, const float *resid, int64_t j, int64_t C, int64_t OC) {
    __m512 acc[8][12];
    DR_UNROLL for (int q = 0; q < np; q++)
        DR_UNROLL for (int r = 0; r < nr; r++) acc[q][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c++) {
        __m512 w[8];
        DR_UNROLL for (int q = 0; q < np; q++) w[q] = _mm512_loadu_ps(pa + q * 16 * C + c * 16);
        DR_UNROLL for (int r = 0; r < nr; r++) {
            const __m512 xv = _mm512_set1_ps(xt[c * 12 + r]);
            DR_UNROLL for (int q = 0; q < np; q++) acc[q][r] = _mm512_fmadd_ps(xv, w[q], acc[q][r]);
        }
    }
    DR_UNROLL for (int q = 0; q < np; q++) {
        const int64_t jj = j + 16 * q;
        const int64_t nv = OC - jj < 16 ? OC - jj : 16;
        const __mmask16 m = (__mmask16)((1u << nv) - 1u);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(m, bias + jj) : _mm512_setzero_ps();
        DR_UNROLL for (int r = 0; r < nr; r++) {
            __m512 v = acc[q][r];
            if (bias) v = _mm512_add_ps(v, bv);
            if (resid) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, resid + r * OC + jj));
            _mm512_mask_storeu_ps(out + r * OC + jj, m, v);
        }
    }
}

// One row block (nr rows, constant) over every panel: the widest panel group its registers allow,
// then narrower ones for the last panels.
#define DR_PK512_ROW(nr, NPMAX)                                                                     \
    static DR_T512 void pk512_rows_##nr(float *o, const float *xt, const float *packed,               \
                                        const float *bias, const float *rs, int64_t p, int64_t P,     \
                                        int64_t C, int64_t OC) {                                      \
        for (; p + NPMAX <= P; p += NPMAX) pk512(nr, NPMAX, o, xt, packed + p * 16 * C, bias, rs, p * 16, C, OC); \
        if (NPMAX > 2) for (; p + 2 <= P; p += 2) pk512(nr, NPMAX > 2 ? 2 : 1, o, xt, packed + p * 16 * C, bias, rs, p * 16, C, OC); \
        for (; p < P; p++) pk512(nr, 1, o, xt, packed + p * 16 * C, bias, rs, p * 16, C, OC);      \
    }
DR_PK512_ROW(1, 8) DR_PK512_ROW(2, 8) DR_PK512_ROW(3, 4) DR_PK512_ROW(4, 4) DR_PK512_ROW(5, 4)
DR_PK512_ROW(6, 4) DR_PK512_ROW(7, 2) DR_PK512_ROW(8, 2) DR_PK512_ROW(9, 2) DR_PK512_ROW(10, 2)
DR_PK512_ROW(11, 2) DR_PK512_ROW(12, 2)
#undef DR_PK512_ROW

// Panels [p0, p1) of the output: columns [16 p0, min(16 p1, OC)).
DR_T512 static void packed_matmul_avx512(float *out, const float *inp, const float *packed,
                                         const float *bias, const float *resid, int64_t N,
                                         int64_t C, int64_t OC, int64_t p0, int64_t P) {
    float *xt = packed_xt;
    const int64_t pb = dr_panel_block(N, C, P - p0);
    for (int64_t q0 = p0; q0 < P; q0 += pb) {
        const int64_t q1 = q0 + pb < P ? q0 + pb : P;
        for (int64_t i = 0; i < N;) {
            const int64_t nr = dr_even_block(N - i, 12);
            transpose_block(xt, inp + i * C, nr, C);
            float *o = out + i * OC;
            const float *rs = resid ? resid + i * OC : NULL;
#define PK512(n) case n: pk512_rows_##n(o, xt, packed, bias, rs, q0, q1, C, OC); break;
            switch (nr) { PK512(1) PK512(2) PK512(3) PK512(4) PK512(5) PK512(6) PK512(7) PK512(8) PK512(9) PK512(10) PK512(11) PK512(12) }
#undef PK512
            i += nr;
        }
    }
}

// nr (1..6) rows × one panel as two ymm: 12 accumulators of the 16 ymm. xt as above, from row r0.
DR_INLINE DR_T256 void pk256(const int nr, float *out, const float *xt, const float *pa,
                             const float *bias, const float *resid, int64_t j, int64_t C, int64_t OC) {
    __m256 acc0[6], acc1[6];
    DR_UNROLL for (int r = 0; r < nr; r++) { acc0[r] = _mm256_setzero_ps(); acc1[r] = acc0[r]; }
    for (int64_t c = 0; c < C; c++) {
        const __m256 w0 = _mm256_loadu_ps(pa + c * 16), w1 = _mm256_loadu_ps(pa + c * 16 + 8);
        DR_UNROLL for (int r = 0; r < nr; r++) {
            const __m256 xv = _mm256_broadcast_ss(xt + c * 12 + r);
            acc0[r] = _mm256_fmadd_ps(xv, w0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(xv, w1, acc1[r]);
        }
    }
    const int64_t nv = OC - j < 16 ? OC - j : 16;
    DR_UNROLL for (int r = 0; r < nr; r++) {
        float v[16];
        _mm256_storeu_ps(v, acc0[r]);
        _mm256_storeu_ps(v + 8, acc1[r]);
        float *o = out + r * OC + j;
        const float *rs = resid ? resid + r * OC + j : NULL;
        for (int64_t q = 0; q < nv; q++) {
            float s = v[q];
            if (bias) s = s + bias[j + q];
            if (rs) s = s + rs[q];
            o[q] = s;
        }
    }
}

DR_T256 static void packed_matmul_avx2(float *out, const float *inp, const float *packed,
                                       const float *bias, const float *resid, int64_t N, int64_t C,
                                       int64_t OC, int64_t p0, int64_t P) {
    float *xt = packed_xt;
    const int64_t pb = dr_panel_block(N, C, P - p0);
    for (int64_t q0 = p0; q0 < P; q0 += pb) {
        const int64_t q1 = q0 + pb < P ? q0 + pb : P;
        for (int64_t i = 0; i < N;) {
            const int64_t nr = dr_even_block(N - i, 12);
            transpose_block(xt, inp + i * C, nr, C);
            for (int64_t p = q0; p < q1; p++) {
                const float *pa = packed + p * 16 * C;
                const int64_t j = p * 16;
                for (int64_t h = 0, nh; h < nr; h += nh) {
                    nh = dr_even_block(nr - h, 6);
                    float *o = out + (i + h) * OC;
                    const float *rs = resid ? resid + (i + h) * OC : NULL;
#define PK256(n) case n: pk256(n, o, xt + h, pa, bias, rs, j, C, OC); break;
                    switch (nh) { PK256(1) PK256(2) PK256(3) PK256(4) PK256(5) PK256(6) }
#undef PK256
                }
            }
            i += nr;
        }
    }
}
#endif

int dr_packed_matmul_isa(void) {
#ifdef DR_HAVE_SMALL_MATMUL
    static int probed = -1;
    if (probed < 0) probed = cpu_has_avx512f() ? DR_ISA_AVX512 : cpu_has_avx2_fma() ? DR_ISA_AVX2 : 0;
    return probed;
#else
    return 0;
#endif
}

// One task of a split call: panels [p0, p1) of every row.
typedef struct {
    float *out;
    const float *inp, *packed, *bias, *resid;
    int64_t N, C, OC, P, tasks;
    int isa, by_rows;
} packed_job;

static void packed_panels(const packed_job *j, int64_t p0, int64_t p1) {
#ifdef DR_HAVE_SMALL_MATMUL
    if (p0 >= p1) return;
    if (j->isa == DR_ISA_AVX512) packed_matmul_avx512(j->out, j->inp, j->packed, j->bias, j->resid, j->N, j->C, j->OC, p0, p1);
    else packed_matmul_avx2(j->out, j->inp, j->packed, j->bias, j->resid, j->N, j->C, j->OC, p0, p1);
#else
    (void)j; (void)p0; (void)p1;
#endif
}

// Task t: an even share of the rows (every panel) or of the panels (dr_packed_task_range).
static void packed_task(void *arg, int64_t t) {
    const packed_job *j = (const packed_job *)arg;
    int64_t a, b;
    dr_packed_task_range(t, j->tasks, j->by_rows, j->N, j->P, &a, &b);
    if (!j->by_rows) { packed_panels(j, a, b); return; }
    packed_job s = *j;
    s.out = j->out + a * j->OC;
    s.inp = j->inp + a * j->C;
    s.resid = j->resid ? j->resid + a * j->OC : NULL;
    s.N = b - a;
    packed_panels(&s, 0, j->P);
}

static _Thread_local const dr_executor *thread_executor = NULL;
void dr_set_thread_executor(const dr_executor *ex) { thread_executor = ex; }
const dr_executor *dr_thread_executor(void) { return thread_executor; }

int dr_packed_matmul(float *out, const float *inp, const float *packed, const float *bias,
                     const float *resid, int64_t N, int64_t C, int64_t OC, int isa) {
    const int best = dr_packed_matmul_isa();
    if (isa == 0) isa = best;
    if (isa <= 0 || isa > best || N < 0 || C < 0 || C > DR_PACKED_MAX_C || OC < 0) return 0;
    packed_job j = {out, inp, packed, bias, resid, N, C, OC, (OC + 15) / 16, 1, isa, 0};
    const dr_executor *ex = thread_executor;
    if ((j.tasks = dr_packed_split(ex, N, C, OC, j.P, &j.by_rows)) > 1) {
        ex->run(ex->ctx, j.tasks, packed_task, &j);
    } else {
        packed_panels(&j, 0, j.P);
    }
    return isa;
}

static int packed_matmul_state = 1;
void dr_set_packed_matmul(int enabled) { __atomic_store_n(&packed_matmul_state, enabled != 0, __ATOMIC_RELAXED); }

int dr_linear_forward_packed_ok(void) {
    return small_matmul_on() && __atomic_load_n(&packed_matmul_state, __ATOMIC_RELAXED);
}

void dr_linear_forward(float *out, const float *inp, const float *weight, const float *packed,
                       const float *bias, const float *resid, int64_t N, int64_t C, int64_t OC) {
    if (packed && small_matmul_on() && __atomic_load_n(&packed_matmul_state, __ATOMIC_RELAXED) &&
        dr_packed_matmul(out, inp, packed, bias, resid, N, C, OC, 0))
        return;
    if (!resid) { dr_matmul_forward(out, inp, weight, bias, N, C, OC); return; }
    // out = resid + bias, then += inp · weightᵀ (OpenBLAS accumulates into it)
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < OC; j++) out[i * OC + j] = resid[i * OC + j] + (bias ? bias[j] : 0.0f);
    dr_sgemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, 1.0f, out, OC);
}

void dr_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int64_t N, int64_t C, int64_t OC) {
    // dinp (N,C) += dout (N,OC) · weight (OC,C)
    if (dinp) dr_sgemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    // dweight (OC,C) += doutᵀ (OC,N) · inp (N,C)
    if (dweight) dr_sgemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) {
        for (int64_t i = 0; i < N; i++) {
            const float *d = dout + i * OC;
            for (int64_t j = 0; j < OC; j++) dbias[j] += d[j];
        }
    }
}
