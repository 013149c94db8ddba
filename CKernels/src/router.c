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
