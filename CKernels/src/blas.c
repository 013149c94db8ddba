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

void dr_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int64_t N, int64_t C, int64_t OC) {
    // out (N,OC) = inp (N,C) · weightᵀ (C,OC)
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
