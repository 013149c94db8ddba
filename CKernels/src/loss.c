// loss.c — cross-entropy over per-domain label ranges, MSE for logit replay and anchoring, and
// O-LoRA's orthogonality penalty. Each computes its loss and gradient in one pass.
#include "dr_kernels.h"
#include <math.h>

// One row of a softmax over [l, h): the exponentials go straight into an output row (dlogits first,
// else probs) and are normalised there; probs gets the probabilities, dlogits w · probabilities
// (the caller subtracts the target). Returns log Σ exp(x) over the range (the log-sum-exp).
static double softmax_row(float *d, float *p, const float *x, int64_t l, int64_t h, int64_t V, float w) {
    float mx = x[l];
    for (int64_t j = l + 1; j < h; j++) mx = x[j] > mx ? x[j] : mx;
    float *row = d ? d : p;
    double sum = 0.0;
    if (row) {
        for (int64_t j = l; j < h; j++) {
            row[j] = expf(x[j] - mx);
            sum += row[j];
        }
    } else {
        for (int64_t j = l; j < h; j++) sum += expf(x[j] - mx);
    }
    const float inv = (float)(1.0 / sum);
    if (p) {
        for (int64_t j = 0; j < l; j++) p[j] = 0.0f;
        for (int64_t j = l; j < h; j++) p[j] = row[j] * inv;
        for (int64_t j = h; j < V; j++) p[j] = 0.0f;
    }
    if (d) {
        const float s = w * inv;
        for (int64_t j = 0; j < l; j++) d[j] = 0.0f;
        for (int64_t j = l; j < h; j++) d[j] = row[j] * s;
        for (int64_t j = h; j < V; j++) d[j] = 0.0f;
    }
    return log(sum) + (double)mx;
}

int dr_softmax_xent_forward_backward(float *losses, float *dlogits, float *probs,
                                     const float *logits, const int32_t *labels,
                                     const int32_t *lo, const int32_t *hi, const float *weights,
                                     int64_t B, int64_t V) {
    // Validate every row first so that an error leaves the outputs untouched.
    for (int64_t b = 0; b < B; b++) {
        const int64_t l = lo ? lo[b] : 0, h = hi ? hi[b] : V;
        if (l < 0 || h > V || l >= h) return DR_ERR_RANGE;
        if (labels[b] < l || labels[b] >= h) return DR_ERR_LABEL;
    }
    const float w_default = B > 0 ? 1.0f / (float)B : 0.0f;

    for (int64_t b = 0; b < B; b++) {
        const int64_t l = lo ? lo[b] : 0, h = hi ? hi[b] : V;
        const float *x = logits + b * V;
        const float w = weights ? weights[b] : w_default;
        float *d = dlogits ? dlogits + b * V : NULL;
        losses[b] = (float)(softmax_row(d, probs ? probs + b * V : NULL, x, l, h, V, w) - (double)x[labels[b]]);
        if (d) d[labels[b]] -= w;
    }
    return DR_OK;
}

double dr_mse_forward_backward(float *dx, const float *x, const float *target, const int32_t *lo,
                               const int32_t *hi, const float *weights, int64_t B, int64_t D) {
    for (int64_t b = 0; b < B; b++) {
        const int64_t l = lo ? lo[b] : 0, h = hi ? hi[b] : D;
        if (l < 0 || h > D || l >= h) return NAN;
    }
    const double w_default = B > 0 ? 1.0 / (double)B : 0.0;
    double total = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t l = lo ? lo[b] : 0, h = hi ? hi[b] : D;
        const float *xb = x + b * D;
        const float *tb = target + b * D;
        const double w = weights ? (double)weights[b] : w_default;
        const double inv_d = 1.0 / (double)(h - l);

        double s = 0.0;
        for (int64_t j = l; j < h; j++) {
            const float e = xb[j] - tb[j];
            s += (double)(e * e);
        }
        total += w * s * inv_d;
        if (dx) {
            float *g = dx + b * D;
            const float c = (float)(2.0 * w * inv_d);
            for (int64_t j = l; j < h; j++) g[j] += c * (xb[j] - tb[j]);
        }
    }
    return total;
}

int64_t dr_olora_scratch_size(int64_t R_old, int64_t R) { return R_old * R; }

double dr_olora_penalty_forward_backward(float *dA_new, float *restrict scratch,
                                         const float *A_old, const float *A_new, float weight,
                                         int64_t R_old, int64_t R, int64_t C) {
    if (R_old == 0 || R == 0) return 0.0; // the first task has nothing to be orthogonal to
    float *M = scratch;                   // (R_old,R) = A_old · A_newᵀ, then sign(M)
    dr_sgemm(0, 1, R_old, R, C, 1.0f, A_old, C, A_new, C, 0.0f, M, R);
    double s = 0.0;
    for (int64_t i = 0; i < R_old * R; i++) {
        const float m = M[i];
        s += (double)fabsf(m);
        M[i] = (float)(m > 0.0f) - (float)(m < 0.0f);
    }
    // dA_new (R,C) += weight · sign(M)ᵀ · A_old
    if (dA_new) dr_sgemm(1, 0, R, C, R_old, weight, M, R, A_old, C, 1.0f, dA_new, C);
    return (double)weight * s;
}

int dr_softmax_set_xent_forward_backward(float *losses, float *dlogits, float *probs,
                                         const float *logits, const int64_t *set_offsets,
                                         const int32_t *set_labels, const int32_t *lo,
                                         const int32_t *hi, const float *weights, int64_t B,
                                         int64_t V) {
    // Validate every row first so that an error leaves the outputs untouched.
    if (set_offsets[0] != 0) return DR_ERR_SET;
    for (int64_t b = 0; b < B; b++) {
        const int64_t l = lo ? lo[b] : 0, h = hi ? hi[b] : V;
        if (l < 0 || h > V || l >= h) return DR_ERR_RANGE;
        const int64_t s0 = set_offsets[b], s1 = set_offsets[b + 1];
        if (s1 <= s0) return DR_ERR_SET;
        for (int64_t i = s0; i < s1; i++) {
            const int32_t t = set_labels[i];
            if (t < l || t >= h) return DR_ERR_LABEL;
            for (int64_t k = s0; k < i; k++)
                if (set_labels[k] == t) return DR_ERR_SET; // a label listed twice
        }
    }
    const float w_default = B > 0 ? 1.0f / (float)B : 0.0f;

    for (int64_t b = 0; b < B; b++) {
        const int64_t l = lo ? lo[b] : 0, h = hi ? hi[b] : V;
        const float *x = logits + b * V;
        const float w = weights ? weights[b] : w_default;
        const int64_t s0 = set_offsets[b], s1 = set_offsets[b + 1];
        const int64_t n = s1 - s0;
        float *d = dlogits ? dlogits + b * V : NULL;
        const double lse = softmax_row(d, probs ? probs + b * V : NULL, x, l, h, V, w);
        // Σ_t q_t x_t with q uniform over the set; for n == 1 this is x[label] exactly.
        double target = (double)x[set_labels[s0]];
        if (n > 1) {
            for (int64_t i = s0 + 1; i < s1; i++) target += (double)x[set_labels[i]];
            target /= (double)n;
        }
        losses[b] = (float)(lse - target);
        if (d) {
            const float wq = n == 1 ? w : w / (float)n;
            for (int64_t i = s0; i < s1; i++) d[set_labels[i]] -= wq;
        }
    }
    return DR_OK;
}
