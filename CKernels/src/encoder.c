// encoder.c — embeddings, pooling and the BERT encoder forward over packed sequences.
#include "dr_kernels.h"
#include <math.h>
#include <string.h>

void dr_embeddings_forward(float *out, const int32_t *ids, const int32_t *type_ids,
                           const int64_t *cu_seqlens, int64_t B, const float *wte,
                           const float *wpe, const float *wtt, int64_t C) {
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = cu_seqlens[b]; t < cu_seqlens[b + 1]; t++) {
            const float *we = wte + (int64_t)ids[t] * C;
            const float *pe = wpe + (t - cu_seqlens[b]) * C;
            const float *te = wtt + (int64_t)(type_ids ? type_ids[t] : 0) * C;
            float *o = out + t * C;
            for (int64_t c = 0; c < C; c++) o[c] = we[c] + pe[c] + te[c];
        }
    }
}

void dr_embeddings_backward(float *dwte, float *dwpe, float *dwtt, const float *dout,
                            const int32_t *ids, const int32_t *type_ids,
                            const int64_t *cu_seqlens, int64_t B, int64_t C) {
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = cu_seqlens[b]; t < cu_seqlens[b + 1]; t++) {
            const float *d = dout + t * C;
            if (dwte) {
                float *g = dwte + (int64_t)ids[t] * C;
                for (int64_t c = 0; c < C; c++) g[c] += d[c];
            }
            if (dwpe) {
                float *g = dwpe + (t - cu_seqlens[b]) * C;
                for (int64_t c = 0; c < C; c++) g[c] += d[c];
            }
            if (dwtt) {
                float *g = dwtt + (int64_t)(type_ids ? type_ids[t] : 0) * C;
                for (int64_t c = 0; c < C; c++) g[c] += d[c];
            }
        }
    }
}

void dr_mean_pool_forward(float *out, const float *inp, const int64_t *cu_seqlens, int64_t B,
                          int64_t C) {
    for (int64_t b = 0; b < B; b++) {
        float *o = out + b * C;
        for (int64_t c = 0; c < C; c++) o[c] = 0.0f;
        const int64_t T = cu_seqlens[b + 1] - cu_seqlens[b];
        for (int64_t t = cu_seqlens[b]; t < cu_seqlens[b + 1]; t++) {
            const float *x = inp + t * C;
            for (int64_t c = 0; c < C; c++) o[c] += x[c];
        }
        const float inv = T > 0 ? 1.0f / (float)T : 0.0f;
        for (int64_t c = 0; c < C; c++) o[c] *= inv;
    }
}

void dr_mean_pool_backward(float *dinp, const float *dout, const int64_t *cu_seqlens,
                           int64_t B, int64_t C) {
    for (int64_t b = 0; b < B; b++) {
        const int64_t T = cu_seqlens[b + 1] - cu_seqlens[b];
        if (T == 0) continue;
        const float inv = 1.0f / (float)T;
        const float *d = dout + b * C;
        for (int64_t t = cu_seqlens[b]; t < cu_seqlens[b + 1]; t++) {
            float *g = dinp + t * C;
            for (int64_t c = 0; c < C; c++) g[c] += d[c] * inv;
        }
    }
}

void dr_cls_pool_forward(float *out, const float *inp, const int64_t *cu_seqlens, int64_t B,
                         int64_t C) {
    for (int64_t b = 0; b < B; b++) memcpy(out + b * C, inp + cu_seqlens[b] * C, C * sizeof(float));
}

void dr_l2_normalize_forward(float *out, const float *inp, int64_t B, int64_t C) {
    for (int64_t b = 0; b < B; b++) {
        const float *x = inp + b * C;
        double s = 0.0;
        for (int64_t c = 0; c < C; c++) s += (double)x[c] * x[c];
        double n = sqrt(s);
        float inv = (float)(1.0 / (n > 1e-12 ? n : 1e-12));
        for (int64_t c = 0; c < C; c++) out[b * C + c] = x[c] * inv;
    }
}

// ---------------------------------------------------------------------------------------------

size_t dr_bert_param_sizes(const dr_bert_config *cfg, size_t *s) {
    const size_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    s[0] = cfg->vocab * C;
    s[1] = cfg->max_positions * C;
    s[2] = cfg->type_vocab * C;
    s[3] = C;
    s[4] = C;
    s[5] = L * 3 * C * C;
    s[6] = L * 3 * C;
    s[7] = L * C * C;
    s[8] = L * C;
    s[9] = L * C;
    s[10] = L * C;
    s[11] = L * I * C;
    s[12] = L * I;
    s[13] = L * C * I;
    s[14] = L * C;
    s[15] = L * C;
    s[16] = L * C;
    size_t total = 0;
    for (int i = 0; i < DR_BERT_NUM_PARAMS; i++) total += s[i];
    return total;
}

void dr_bert_params_point(dr_bert_params *p, float *base, const dr_bert_config *cfg) {
    size_t s[DR_BERT_NUM_PARAMS];
    dr_bert_param_sizes(cfg, s);
    float **ptrs[DR_BERT_NUM_PARAMS] = {
        &p->wte,  &p->wpe,  &p->wtt,   &p->ln_e_w, &p->ln_e_b, &p->qkv_w,  &p->qkv_b, &p->ao_w, &p->ao_b,
        &p->ln1_w, &p->ln1_b, &p->fc_w, &p->fc_b,   &p->proj_w, &p->proj_b, &p->ln2_w, &p->ln2_b};
    for (int i = 0; i < DR_BERT_NUM_PARAMS; i++) {
        *ptrs[i] = base;
        base += s[i];
    }
    p->packed = NULL;
    p->packed_rows = 0;
}

size_t dr_bert_packed_size(const dr_bert_config *cfg) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    return (size_t)(L * (dr_packed_linear_size(C, 3 * C) + dr_packed_linear_size(C, C) +
                         dr_packed_linear_size(C, I) + dr_packed_linear_size(I, C)));
}

void dr_bert_pack(dr_bert_packed *pk, float *dst, const dr_bert_params *p, const dr_bert_config *cfg) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    const int64_t sq = dr_packed_linear_size(C, 3 * C), so = dr_packed_linear_size(C, C),
                  sf = dr_packed_linear_size(C, I), sp = dr_packed_linear_size(I, C);
    float *q = dst, *o = q + L * sq, *f = o + L * so, *r = f + L * sf;
    for (int64_t l = 0; l < L; l++) {
        dr_pack_linear(q + l * sq, p->qkv_w + l * 3 * C * C, C, 3 * C);
        dr_pack_linear(o + l * so, p->ao_w + l * C * C, C, C);
        dr_pack_linear(f + l * sf, p->fc_w + l * I * C, C, I);
        dr_pack_linear(r + l * sp, p->proj_w + l * C * I, I, C);
    }
    pk->qkv = q; pk->ao = o; pk->fc = f; pk->proj = r;
}

size_t dr_bert_packed_t_size(const dr_bert_config *cfg) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    return (size_t)(L * (dr_packed_linear_size(3 * C, C) + dr_packed_linear_size(C, C) +
                         dr_packed_linear_size(I, C) + dr_packed_linear_size(C, I)));
}

void dr_bert_pack_t(dr_bert_packed *pk, float *dst, const dr_bert_params *p, const dr_bert_config *cfg) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    const int64_t sq = dr_packed_linear_size(3 * C, C), so = dr_packed_linear_size(C, C),
                  sf = dr_packed_linear_size(I, C), sp = dr_packed_linear_size(C, I);
    float *q = dst, *o = q + L * sq, *f = o + L * so, *r = f + L * sf;
    for (int64_t l = 0; l < L; l++) {
        dr_pack_linear_t(q + l * sq, p->qkv_w + l * 3 * C * C, C, 3 * C);
        dr_pack_linear_t(o + l * so, p->ao_w + l * C * C, C, C);
        dr_pack_linear_t(f + l * sf, p->fc_w + l * I * C, C, I);
        dr_pack_linear_t(r + l * sp, p->proj_w + l * C * I, I, C);
    }
    pk->qkv_t = q; pk->ao_t = o; pk->fc_t = f; pk->proj_t = r;
}

size_t dr_bert_packed_bf16_size(const dr_bert_config *cfg) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    return (size_t)(L * (dr_packed_linear_size_bf16(C, 3 * C) + dr_packed_linear_size_bf16(C, C) +
                         dr_packed_linear_size_bf16(C, I) + dr_packed_linear_size_bf16(I, C) +
                         dr_packed_linear_size_bf16(3 * C, C) + dr_packed_linear_size_bf16(C, C) +
                         dr_packed_linear_size_bf16(I, C) + dr_packed_linear_size_bf16(C, I)));
}

void dr_bert_pack_bf16(dr_bert_packed *pk, uint32_t *dst, const dr_bert_params *p, const dr_bert_config *cfg) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    const int64_t sq = dr_packed_linear_size_bf16(C, 3 * C), so = dr_packed_linear_size_bf16(C, C),
                  sf = dr_packed_linear_size_bf16(C, I), sp = dr_packed_linear_size_bf16(I, C);
    const int64_t tq = dr_packed_linear_size_bf16(3 * C, C), to = dr_packed_linear_size_bf16(C, C),
                  tf = dr_packed_linear_size_bf16(I, C), tp = dr_packed_linear_size_bf16(C, I);
    uint32_t *q = dst, *o = q + L * sq, *f = o + L * so, *r = f + L * sf;
    uint32_t *qt = r + L * sp, *ot = qt + L * tq, *ft = ot + L * to, *rt = ft + L * tf;
    for (int64_t l = 0; l < L; l++) {
        dr_pack_linear_bf16(q + l * sq, p->qkv_w + l * 3 * C * C, C, 3 * C);
        dr_pack_linear_bf16(o + l * so, p->ao_w + l * C * C, C, C);
        dr_pack_linear_bf16(f + l * sf, p->fc_w + l * I * C, C, I);
        dr_pack_linear_bf16(r + l * sp, p->proj_w + l * C * I, I, C);
        dr_pack_linear_t_bf16(qt + l * tq, p->qkv_w + l * 3 * C * C, C, 3 * C);
        dr_pack_linear_t_bf16(ot + l * to, p->ao_w + l * C * C, C, C);
        dr_pack_linear_t_bf16(ft + l * tf, p->fc_w + l * I * C, C, I);
        dr_pack_linear_t_bf16(rt + l * tp, p->proj_w + l * C * I, I, C);
    }
    pk->qkv16 = q; pk->ao16 = o; pk->fc16 = f; pk->proj16 = r;
    pk->qkv_t16 = qt; pk->ao_t16 = ot; pk->fc_t16 = ft; pk->proj_t16 = rt;
}

size_t dr_bert_act_sizes(const dr_bert_config *cfg, int64_t N, int64_t PS, size_t *s) {
    const size_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate;
    s[0] = N * C;            // emb
    s[1] = N;                // emb_mean
    s[2] = N;                // emb_rstd
    s[3] = (L + 1) * N * C;  // hidden
    s[4] = L * N * 3 * C;    // qkv
    s[5] = L * PS;           // probs
    s[6] = L * N * C;        // atty
    s[7] = L * N * C;        // res1
    s[8] = L * N * C;        // ln1
    s[9] = L * N;            // ln1_mean
    s[10] = L * N;           // ln1_rstd
    s[11] = L * N * I;       // fch
    s[12] = L * N * I;       // fch_gelu
    s[13] = L * N * C;       // res2
    s[14] = L * N * C;       // ln2
    s[15] = L * N;           // ln2_mean
    s[16] = L * N;           // ln2_rstd
    size_t total = 0;
    for (int i = 0; i < DR_BERT_NUM_ACTS; i++) total += s[i];
    return total;
}

void dr_bert_acts_point(dr_bert_acts *a, float *base, const dr_bert_config *cfg, int64_t N,
                        int64_t PS) {
    size_t s[DR_BERT_NUM_ACTS];
    dr_bert_act_sizes(cfg, N, PS, s);
    float **ptrs[DR_BERT_NUM_ACTS] = {
        &a->emb,  &a->emb_mean, &a->emb_rstd, &a->hidden,   &a->qkv,      &a->probs,
        &a->atty, &a->res1,     &a->ln1,      &a->ln1_mean, &a->ln1_rstd, &a->fch,
        &a->fch_gelu, &a->res2, &a->ln2,      &a->ln2_mean, &a->ln2_rstd};
    for (int i = 0; i < DR_BERT_NUM_ACTS; i++) {
        *ptrs[i] = base;
        base += s[i];
    }
}

