// router.c — the domain router: Linear(C,Hd) -> GELU -> dropout -> Linear(Hd,K).
// The dropout mask comes from the caller, so a training step is reproducible from its seed.
#include "dr_kernels.h"
#include <math.h>

#define DR_INV_SQRT2 0.70710678118654752440f
#define DR_INV_SQRT_2PI 0.39894228040143267794f

int64_t dr_router_scratch_size(int64_t B, int64_t Hd) { return B * Hd; }

void dr_router_forward(float *logits, float *restrict h_pre, float *restrict h_act,
                       const float *inp, const float *W1, const float *b1, const float *W2,
                       const float *b2, const float *dropout_mask, int64_t B, int64_t C,
                       int64_t Hd, int64_t K) {
    dr_matmul_forward(h_pre, inp, W1, b1, B, C, Hd); // h_pre (B,Hd)
    dr_gelu_forward(h_act, h_pre, B * Hd);
    if (dropout_mask) {
        for (int64_t i = 0; i < B * Hd; i++) h_act[i] *= dropout_mask[i];
    }
    dr_matmul_forward(logits, h_act, W2, b2, B, Hd, K); // logits (B,K)
}

void dr_router_backward(float *dinp, float *dW1, float *db1, float *dW2, float *db2,
                        float *restrict scratch, const float *dlogits, const float *h_pre,
                        const float *h_act, const float *inp, const float *W1, const float *W2,
                        const float *dropout_mask, int64_t B, int64_t C, int64_t Hd,
                        int64_t K) {
    dr_matmul_backward(NULL, dW2, db2, dlogits, h_act, W2, B, Hd, K);
    if (!dinp && !dW1 && !db1) return;

    // dh (B,Hd) = dlogits · W2, then through dropout and GELU in place.
    float *dh = scratch;
    dr_sgemm(0, 0, B, Hd, K, 1.0f, dlogits, K, W2, Hd, 0.0f, dh, Hd);
    if (dropout_mask) {
        for (int64_t i = 0; i < B * Hd; i++) dh[i] *= dropout_mask[i];
    }
    for (int64_t i = 0; i < B * Hd; i++) {
        const float x = h_pre[i];
        const float cdf = 0.5f * (1.0f + erff(x * DR_INV_SQRT2));
        const float pdf = DR_INV_SQRT_2PI * expf(-0.5f * x * x);
        dh[i] *= cdf + x * pdf;
    }
    dr_matmul_backward(dinp, dW1, db1, dh, inp, W1, B, C, Hd);
}

// Prototype routing: cosine similarities by one GEMM, then per domain a max-shifted log-sum-exp
// of its classes' logits minus the log-sum-exp over all classes (exact even when a domain's
// classes are far below the best one).
int64_t dr_prototype_scratch_size(int64_t B, int64_t V, int64_t K) { return B * V + V + K; }

void dr_prototype_logprob(float *out, float *scratch, const float *x, const float *protos,
                          const int32_t *class_domain, float tau, int64_t B, int64_t C, int64_t V,
                          int64_t K) {
    float *S = scratch;              // (B,V) dot products, then logits
    float *pinv = scratch + B * V;   // (V) 1/|P_c| or 0
    float *sum = pinv + V;           // (K) per-domain Σ exp(logit - domain max)
    if (V > 0) dr_sgemm(0, 1, B, V, C, 1.0f, x, C, protos, C, 0.0f, S, V);
    for (int64_t c = 0; c < V; c++) {
        double n = 0;
        for (int64_t i = 0; i < C; i++) n += (double)protos[c * C + i] * protos[c * C + i];
        pinv[c] = n > 0 ? (float)(1.0 / sqrt(n)) : 0.0f;
    }
    const float inv_tau = 1.0f / tau;
    for (int64_t b = 0; b < B; b++) {
        double n = 0;
        for (int64_t i = 0; i < C; i++) n += (double)x[b * C + i] * x[b * C + i];
        const float xinv = n > 0 ? (float)(1.0 / sqrt(n)) : 0.0f;
        float *row = S + b * V, *o = out + b * K; // o: the domain maxima, then the result
        for (int64_t d = 0; d < K; d++) { o[d] = -INFINITY; sum[d] = 0.0f; }
        float top = -INFINITY;
        for (int64_t c = 0; c < V; c++) {
            row[c] = row[c] * xinv * pinv[c] * inv_tau;
            if (row[c] > o[class_domain[c]]) o[class_domain[c]] = row[c];
            if (row[c] > top) top = row[c];
        }
        double total = 0;
        for (int64_t c = 0; c < V; c++) {
            sum[class_domain[c]] += expf(row[c] - o[class_domain[c]]);
            total += expf(row[c] - top);
        }
        const float lz = top + (float)log(total);
        for (int64_t d = 0; d < K; d++) o[d] = sum[d] > 0 ? o[d] + logf(sum[d]) - lz : -1e30f;
    }
}
