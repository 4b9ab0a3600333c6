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
#include <future>
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

    // A = ZᵀZ (upper triangle): rank-1 updates in float over blocks of rows, summed in double
    constexpr int64_t block = 256;
    std::vector<double> a(d * d, 0.0);
    std::vector<float> acc_buf(d * d, 0.0f), z_buf(d);
    float * __restrict acc = acc_buf.data();
    float * __restrict z   = z_buf.data();
    for (int64_t r = 0; r < n; ++r) {
        double norm = 0.0;
        for (int j = 0; j < d; ++j) { z[j] = (float) (x[r*stride + j] - mean[j]); norm += (double) z[j] * z[j]; }
        if (norm > 0.0) {
            const float inv = (float) (1.0 / std::sqrt(norm));
            for (int j = 0; j < d; ++j) z[j] *= inv;
            for (int i = 0; i < d; ++i) {
                const float zi = z[i];
                float * __restrict row = acc + i * d;
                for (int j = i; j < d; ++j) row[j] += zi * z[j];
            }
        }
        if ((r + 1) % block == 0 || r + 1 == n) {
            for (int i = 0; i < d; ++i) {
                for (int j = i; j < d; ++j) { a[i*d + j] += acc[i*d + j]; acc[i*d + j] = 0.0f; }
            }
        }
    }
    for (int i = 0; i < d; ++i) for (int j = 0; j < i; ++j) a[i*d + j] = a[j*d + i];
    double trace = 0.0;
    for (auto & v : a) v /= (double) n;
    for (int i = 0; i < d; ++i) trace += a[i*d + i];
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
    // head h holds the last rows[h] of the rows (a compressed head that keeps fewer starts later)
    std::vector<int32_t> rows(n_head_kv);
    llama_uncomp_tokens_kept(ctx, seq_id, il, rows.data(), n_head_kv);
    // heads in parallel: this runs right after prefill, when the cores are otherwise idle
    std::vector<std::future<float>> head_entropy;
    for (int32_t h = 0; h < n_head_kv && h < n_max; ++h) {
        const float * first = keys.data() + (n - rows[h]) * n_embd + h * head_dim;
        const int64_t n_rows = rows[h];
        head_entropy.push_back(std::async(h == 0 ? std::launch::deferred : std::launch::async, [=] {
            return n_rows > 0 ? uncomp_truncated_entropy(first, n_rows, n_embd, head_dim, k_trunc) : 0.0f;
        }));
    }
    for (size_t h = 0; h < head_entropy.size(); ++h) {
        out[h] = head_entropy[h].get();
    }
    return n_head_kv;
}
