// adamw.c — the optimizer and the gradient utilities around it. Parameters, gradients and both
// moments share one layout, so each of these is one flat loop over the whole arena.
#include "dr_kernels.h"
#include <math.h>
#include <string.h>

// sqrtf may set errno, which keeps the compiler from vectorising a loop around it unless built
// with -fno-math-errno; clang's elementwise builtin has no errno and means the same here (v >= 0).
#if defined(__has_builtin)
#if __has_builtin(__builtin_elementwise_sqrt)
#define DR_SQRTF(x) __builtin_elementwise_sqrt(x)
#endif
#endif
#ifndef DR_SQRTF
#define DR_SQRTF(x) sqrtf(x)
#endif

void dr_adamw_update(float *restrict params, const float *restrict grads, float *restrict m,
                     float *restrict v, int64_t n, float lr, float beta1, float beta2, float eps,
                     float weight_decay, int64_t t) {
    // Bias corrections in double: beta2^t stays close to 1 for thousands of steps.
    const float inv_bc1 = (float)(1.0 / (1.0 - pow((double)beta1, (double)t)));
    const float inv_bc2 = (float)(1.0 / (1.0 - pow((double)beta2, (double)t)));
    const float one_minus_b1 = 1.0f - beta1, one_minus_b2 = 1.0f - beta2;
    for (int64_t i = 0; i < n; i++) {
        const float g = grads[i];
        const float mi = beta1 * m[i] + one_minus_b1 * g;
        const float vi = beta2 * v[i] + one_minus_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi * inv_bc1;
        const float vhat = vi * inv_bc2;
        params[i] -= lr * (mhat / (DR_SQRTF(vhat) + eps) + weight_decay * params[i]);
    }
}

double dr_sum_squares(const float *restrict x, int64_t n) {
    // Eight independent double lanes: exact enough for a norm and still vectorisable without
    // letting the compiler reassociate a single sum.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; k++) acc[k] += (double)x[i + k] * (double)x[i + k];
    }
    double s = 0.0;
    for (; i < n; i++) s += (double)x[i] * (double)x[i];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}

void dr_scale(float *restrict x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

int dr_all_finite(const float *restrict x, int64_t n) {
    // NaN and ±Inf are exactly the floats whose exponent bits are all ones; testing the bits
    // keeps the check valid even under -ffast-math and lets it vectorise as an OR-reduction.
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}
