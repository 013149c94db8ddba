// blas.c — the one file that talks to OpenBLAS.
#include "dr_kernels.h"
#include <cblas.h>

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

void dr_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int64_t N, int64_t C, int64_t OC) {
    // out (N,OC) = inp (N,C) · weightᵀ (C,OC)
    int small = __atomic_load_n(&small_matmul_state, __ATOMIC_RELAXED);
    if (small < 0) {
        small = dr_small_matmul_available();
        __atomic_store_n(&small_matmul_state, small, __ATOMIC_RELAXED);
    }
    if (small && N <= DR_SMALL_MATMUL_ROWS && dr_small_matmul(out, inp, weight, bias, N, C, OC)) return;
    if (bias) {
        for (int64_t i = 0; i < N; i++) {
            float *o = out + i * OC;
            for (int64_t j = 0; j < OC; j++) o[j] = bias[j];
        }
    }
    dr_sgemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, bias ? 1.0f : 0.0f, out, OC);
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
