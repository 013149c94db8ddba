// dr_math.h — private inline math shared by the kernels (not part of the public API).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#define DR_INV_SQRT_2PI 0.39894228040143267794f

// ---------------------------------------------------------------------------------------------
// A GELU the compiler can vectorise. libm's erff/expf are opaque calls that keep the N·R loops
// scalar (about as slow as the adapter's GEMMs); these are branch-free float arithmetic with the
// same accuracy as 0.5·x·(1 + erff(x/√2)) in float (max error ~1e-7 for GELU and GELU').

// exp(x) for x <= 0: 2^n · e^r with n = round(x / ln 2), |r| <= ln2/2, e^r by its degree-7
// Taylor polynomial (relative error < 1e-8). Below -87 the result stays at ~1e-38, which is 0
// for every use here. NaN propagates (and is never converted to an integer).
static inline float dr_exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float t = x * 1.44269504088896341f;                  // x · log2(e)
    float n = (t + 12582912.0f) - 12582912.0f;                 // round to nearest (1.5·2^23)
    n = n > -127.0f ? n : -127.0f;                             // also maps NaN to a valid int
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f; // x - n·ln2, ln2 split in two
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// Φ(x), the standard normal CDF, given e = exp(-x²/2). Φ(-y) = e · m(y) for y >= 0, where
// m(y) = Φ(-y)·exp(y²/2) is smooth and in [0.064, 0.5] on [0, 6]; it is evaluated as a degree-16
// polynomial in u = y/3 - 1, a Chebyshev least-squares fit (weighted by 1/m) converted to
// powers of u. Computing the lower tail as a product keeps it accurate relative to its size.
// Past |x| = 6 the tail e·m is below 1e-9 and m is held at m(6).
static inline float dr_normal_cdf(float x, float e) {
    static const float M[17] = {
        1.855561114e-04f, -4.431138586e-04f, 1.166947493e-04f, 8.167988164e-05f,
        1.025025967e-03f, -2.279925257e-03f, 2.986016170e-03f, -4.735386352e-03f,
        8.303097673e-03f, -1.346751284e-02f, 2.080094778e-02f, -3.118065916e-02f,
        4.505138410e-02f, -6.238413224e-02f, 8.240698392e-02f, -1.032012894e-01f,
        1.215139476e-01f,
    };
    float y = fabsf(x);
    y = y > 6.0f ? 6.0f : y;
    const float u = y * (1.0f / 3.0f) - 1.0f;
    float m = M[0];
    for (int k = 1; k < 17; k++) m = m * u + M[k];
    const float tail = e * m; // Φ(-|x|)
    return x < 0.0f ? tail : 1.0f - tail;
}


// Exact-erf GELU and its derivative, vectorisable (max error ~1e-7 against libm's erff form).
static inline float dr_gelu(float x) { return x * dr_normal_cdf(x, dr_exp_nonpositive(-0.5f * x * x)); }
static inline float dr_gelu_grad(float x) {
    const float e = dr_exp_nonpositive(-0.5f * x * x);
    return dr_normal_cdf(x, e) + x * (DR_INV_SQRT_2PI * e);
}
