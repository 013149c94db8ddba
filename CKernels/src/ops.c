// ops.c — LayerNorm, GELU, residual: the elementwise and row-wise pieces.
#include "dr_kernels.h"
#include <math.h>
#include "dr_math.h"

void dr_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int64_t N, int64_t C, float eps) {
    for (int64_t i = 0; i < N; i++) {
        const float *x = inp + i * C;
        float *o = out + i * C;
        double m = 0.0;
        for (int64_t j = 0; j < C; j++) m += x[j];
        m /= (double)C;
        double v = 0.0;
        for (int64_t j = 0; j < C; j++) {
            double d = x[j] - m;
            v += d * d;
        }
        v /= (double)C;
        float s = (float)(1.0 / sqrt(v + (double)eps));
        float mf = (float)m;
        for (int64_t j = 0; j < C; j++) o[j] = (x[j] - mf) * s * w[j] + b[j];
        if (mean) mean[i] = mf;
        if (rstd) rstd[i] = s;
    }
}

void dr_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                           const float *inp, const float *w, const float *mean,
                           const float *rstd, int64_t N, int64_t C) {
    for (int64_t i = 0; i < N; i++) {
        const float *x = inp + i * C;
        const float *dy = dout + i * C;
        float *dx = dinp + i * C;
        float m = mean[i], s = rstd[i];
        // dnorm = dy * w; dx = s * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat))
        double sum_dn = 0.0, sum_dn_xh = 0.0;
        for (int64_t j = 0; j < C; j++) {
            float xh = (x[j] - m) * s;
            float dn = dy[j] * w[j];
            sum_dn += dn;
            sum_dn_xh += (double)dn * xh;
            if (dw) dw[j] += dy[j] * xh;
            if (db) db[j] += dy[j];
        }
        float a = (float)(sum_dn / (double)C), c = (float)(sum_dn_xh / (double)C);
        if (dinp) {
            for (int64_t j = 0; j < C; j++) {
                float xh = (x[j] - m) * s;
                dx[j] += s * (dy[j] * w[j] - a - xh * c);
            }
        }
    }
}

void dr_gelu_forward(float *restrict out, const float *restrict inp, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = dr_gelu(inp[i]);
}

void dr_gelu_backward(float *restrict dinp, const float *restrict inp, const float *restrict dout,
                      int64_t n) {
    for (int64_t i = 0; i < n; i++) dinp[i] += dout[i] * dr_gelu_grad(inp[i]);
}

void dr_residual_forward(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
