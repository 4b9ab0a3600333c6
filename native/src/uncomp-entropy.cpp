// Truncated matrix entropy of each KV head's cached keys (../shared/uncomp-spec.md, section 1):
// centre over tokens, scale rows to unit norm, Gram A = ZᵀZ / n, normalise by its trace, take the
// eigenvalues σ₁ ≥ … ≥ σ_d and return -Σ_{i≤k} σᵢ log(σᵢ + 1e-10) / log(d).
#include "uncomp.h"
#include "uncomp-impl.h"

#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-model.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

// Eigenvalues of the symmetric d×d matrix a (row-major, destroyed), by cyclic Jacobi rotations:
// d is a head dimension (64–256), small enough that robustness beats speed here.
static std::vector<double> symmetric_eigenvalues(std::vector<double> & a, int d) {
    for (int sweep = 0; sweep < 100; ++sweep) {
        double off = 0.0;
        for (int p = 0; p < d; ++p) for (int q = p + 1; q < d; ++q) off += a[p*d + q] * a[p*d + q];
        if (off < 1e-22) break;
        for (int p = 0; p < d; ++p) {
            for (int q = p + 1; q < d; ++q) {
                const double apq = a[p*d + q];
                if (std::fabs(apq) < 1e-300) continue;
                const double theta = (a[q*d + q] - a[p*d + p]) / (2.0 * apq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta*theta + 1.0));
                const double c = 1.0 / std::sqrt(t*t + 1.0), s = t * c;
                for (int k = 0; k < d; ++k) { // columns p, q
                    const double akp = a[k*d + p], akq = a[k*d + q];
                    a[k*d + p] = c*akp - s*akq;
                    a[k*d + q] = s*akp + c*akq;
                }
                for (int k = 0; k < d; ++k) { // rows p, q
                    const double apk = a[p*d + k], aqk = a[q*d + k];
                    a[p*d + k] = c*apk - s*aqk;
                    a[q*d + k] = s*apk + c*aqk;
                }
            }
        }
    }
    std::vector<double> ev(d);
    for (int i = 0; i < d; ++i) ev[i] = a[i*d + i];
    std::sort(ev.begin(), ev.end(), std::greater<double>());
    return ev;
}

float uncomp_truncated_entropy(const float * x, int64_t n, int64_t stride, int d, int k_trunc) {
    // x: n rows of d values, row r at x + r*stride
    std::vector<double> mean(d, 0.0);
    for (int64_t r = 0; r < n; ++r) for (int j = 0; j < d; ++j) mean[j] += x[r*stride + j];
    for (int j = 0; j < d; ++j) mean[j] /= (double) n;

    std::vector<double> a(d * d, 0.0), z(d);
    for (int64_t r = 0; r < n; ++r) {
        double norm = 0.0;
        for (int j = 0; j < d; ++j) { z[j] = x[r*stride + j] - mean[j]; norm += z[j] * z[j]; }
        norm = std::sqrt(norm);
        if (norm == 0.0) continue;
        for (int j = 0; j < d; ++j) z[j] /= norm;
        for (int i = 0; i < d; ++i) for (int j = i; j < d; ++j) a[i*d + j] += z[i] * z[j];
    }
    double trace = 0.0;
    for (int i = 0; i < d; ++i) {
        for (int j = i; j < d; ++j) { a[i*d + j] /= (double) n; a[j*d + i] = a[i*d + j]; }
        trace += a[i*d + i];
    }
    if (trace <= 0.0) return 0.0f;
    for (auto & v : a) v /= trace;
    for (int i = 0; i < d; ++i) a[i*d + i] += 1e-10;

    const auto ev = symmetric_eigenvalues(a, d);
    const int k = k_trunc <= 0 ? d : std::min(k_trunc, d);
    double h = 0.0;
    for (int i = 0; i < k; ++i) {
        const double s = std::max(ev[i], 0.0);
        h -= s * std::log(s + 1e-10);
    }
    return (float) (h / std::log((double) d));
}

int32_t llama_uncomp_key_entropy(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   il,
                         int32_t   k_trunc,
                           float * out,
                         int32_t   n_max) {
    std::vector<float> keys;
    const int32_t n = llama_uncomp_read_keys(ctx, seq_id, il, nullptr, 0);
    if (n < 0) return n;
    const auto & hp = ctx->get_model().hparams;
    const int64_t n_embd = hp.n_embd_k_gqa(il);
    keys.resize((size_t) n * n_embd);
    llama_uncomp_read_keys(ctx, seq_id, il, keys.data(), (int64_t) keys.size());
    const int32_t n_head_kv = (int32_t) hp.n_head_kv(il);
    const int     head_dim  = (int) hp.n_embd_head_k(il);
    for (int32_t h = 0; h < n_head_kv && h < n_max && n > 0; ++h) {
        out[h] = uncomp_truncated_entropy(keys.data() + h * head_dim, n, n_embd, head_dim, k_trunc);
    }
    return n_head_kv;
}
