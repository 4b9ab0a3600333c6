// Truncated matrix entropy of each KV head's cached keys (../shared/uncomp-spec.md, section 1):
// centre over tokens, scale rows to unit norm, Gram A = ZᵀZ / n, normalise by its trace, take the
// eigenvalues σ₁ ≥ … ≥ σ_d and return -Σ_{i≤k} σᵢ log(σᵢ + 1e-10) / log(d).
#include "uncomp.h"
#include "uncomp-device.h"
#include "uncomp-impl.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-kv-cache.h"
#include "llama-model.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <map>
#include <vector>

// Eigenvalues of the symmetric d×d matrix a (row-major, destroyed), largest first: Householder
// reduction to tridiagonal form, then implicit QL with Wilkinson shifts (eigenvalues only, O(d³)).
static std::vector<double> symmetric_eigenvalues(std::vector<double> & a, int d) {
    std::vector<double> diag(d), off(d, 0.0); // off[i]: the (i, i-1) element of the tridiagonal form
    for (int i = d - 1; i > 0; --i) {
        const int l = i - 1;
        double scale = 0.0;
        for (int k = 0; k <= l; ++k) scale += std::fabs(a[i*d + k]);
        if (l == 0 || scale == 0.0) {
            off[i] = a[i*d + l];
            diag[i] = 0.0;
            continue;
        }
        double h = 0.0;
        for (int k = 0; k <= l; ++k) { a[i*d + k] /= scale; h += a[i*d + k] * a[i*d + k]; }
        const double f = a[i*d + l];
        const double g = f >= 0.0 ? -std::sqrt(h) : std::sqrt(h);
        off[i] = scale * g;
        h -= f * g;
        a[i*d + l] = f - g;
        // p = A u over rows 0..l, u = row i's first l+1 values: the symmetric product from the lower
        // triangle alone, read row by row (a column walk strides d doubles per element; ~1.45x slower at d = 128)
        const double * u = &a[i*d];
        std::fill(off.begin(), off.begin() + l + 1, 0.0);
        for (int j = 0; j <= l; ++j) {
            const double * row = &a[j*d];
            const double uj = u[j];
            double acc = row[j] * uj;
            for (int k = 0; k < j; ++k) {
                acc    += row[k] * u[k];
                off[k] += row[k] * uj;
            }
            off[j] += acc;
        }
        double ff = 0.0;
        for (int j = 0; j <= l; ++j) {
            off[j] /= h;
            ff += off[j] * u[j];
        }
        const double hh = ff / (h + h);
        for (int j = 0; j <= l; ++j) {
            const double fj = a[i*d + j];
            const double gj = off[j] - hh * fj;
            off[j] = gj;
            for (int k = 0; k <= j; ++k) a[j*d + k] -= fj * off[k] + gj * a[i*d + k];
        }
        diag[i] = h;
    }
    for (int i = 0; i < d; ++i) diag[i] = a[i*d + i];
    // implicit QL on (diag, off): off[i] couples i-1 and i; shift it to couple i and i+1
    for (int i = 1; i < d; ++i) off[i - 1] = off[i];
    off[d - 1] = 0.0;
    for (int l = 0; l < d; ++l) {
        for (int iter = 0; iter < 60; ++iter) {
            int m = l;
            for (; m < d - 1; ++m) {
                const double dd = std::fabs(diag[m]) + std::fabs(diag[m + 1]);
                if (std::fabs(off[m]) <= 1e-15 * dd) break;
            }
            if (m == l) break;
            double g = (diag[l + 1] - diag[l]) / (2.0 * off[l]);
            // sqrt of the squares, not std::hypot: its overflow guard is needless for a trace-1 matrix, and
            // slow (the 256 solves of an 8B model went from 18.7 to 14.0 ms on an H200 host)
            double r = std::sqrt(g * g + 1.0);
            g = diag[m] - diag[l] + off[l] / (g + (g >= 0.0 ? r : -r));
            double s = 1.0, c = 1.0, p = 0.0;
            int i = m - 1;
            for (; i >= l; --i) {
                double f = s * off[i];
                const double b = c * off[i];
                r = std::sqrt(f * f + g * g);
                off[i + 1] = r;
                if (r == 0.0) { diag[i + 1] -= p; off[m] = 0.0; break; }
                s = f / r;
                c = g / r;
                g = diag[i + 1] - p;
                r = (diag[i] - g) * s + 2.0 * c * b;
                p = s * r;
                diag[i + 1] = g + p;
                g = c * r - b;
            }
            if (r == 0.0 && i >= l) continue;
            diag[l] -= p;
            off[l] = g;
            off[m] = 0.0;
        }
    }
    std::sort(diag.begin(), diag.end(), std::greater<double>());
    return diag;
}

// The spec's entropy from a = Σ z zᵀ over the n unit rows z (d×d, row-major, destroyed)
static float entropy_of_gram(std::vector<double> & a, int64_t n, int d, int k_trunc) {
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
    return entropy_of_gram(a, n, d, k_trunc);
}

// start_scores: once the Gram matrices are read, start the window scoring of the compression that
// follows on the device, to run beside the eigen-solves (uncomp_start_scores)
static int32_t key_entropy(const llama_context * ctx, llama_seq_id seq_id, int32_t k_trunc, float * out, int64_t n_max,
                           bool start_scores) {
    const auto layers = uncomp_cache_layers(ctx);
    if (layers.empty() || seq_id < 0 || out == nullptr) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const auto & hp = ctx->get_model().hparams;
    int64_t n_values = 0;
    for (const auto & l : layers) {
        if (seq_id >= (llama_seq_id) l.cache->get_n_seq_max()) {
            return LLAMA_UNCOMP_ERR_PARAMS;
        }
        n_values += hp.n_head_kv(l.il);
    }
    if (n_max < n_values) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    uncomp_step_timer timer("entropy");
    // one task per KV head, in output order: a Gram matrix made on the device, or the head's rows on the host
    struct head_task {
        int64_t n_rows;
        int     head_dim;
        const uncomp_values * gram;
        const float * rows;
        int64_t stride;
    };
    std::vector<head_task> tasks;
    std::vector<std::vector<float>> host_keys;
    host_keys.reserve(layers.size()); // rows point into these
    std::vector<uncomp_head_cells> device_cells;
    std::vector<size_t> device_first_task;
    // each cache's cells of the sequence in position order (the layers of a cache share them), and the
    // tails of them that compressed heads hold
    std::map<const llama_kv_cache *, std::vector<uint32_t>> cache_cells;
    std::deque<std::vector<uint32_t>> tails;
    uncomp_device * dev = nullptr;
    for (const auto & l : layers) {
        const int32_t il = (int32_t) l.il;
        const int32_t n_head_kv = (int32_t) hp.n_head_kv(il);
        const int     head_dim  = (int) hp.n_embd_head_k(il);
        // head h holds the last rows[h] of the sequence's cells (a compressed head starts later)
        std::vector<int32_t> rows(n_head_kv);
        llama_uncomp_tokens_kept(ctx, seq_id, il, rows.data(), n_head_kv);
        auto [it, fresh] = cache_cells.try_emplace(l.cache);
        std::vector<uint32_t> & cells = it->second;
        if (fresh) {
            for (const auto & pc : l.cache->get_cells(seq_id).seq_pos_get(seq_id)) cells.push_back(pc.second);
        }
        uncomp_device * layer_dev = uncomp_device_for(ctx, il);
        if (layer_dev != nullptr && (dev == nullptr || dev == layer_dev)) {
            dev = layer_dev;
            device_first_task.push_back(tasks.size());
            device_cells.push_back({ l.cache->get_k_storage(il), l.cache->get_stream(seq_id), head_dim,
                                     std::vector<const std::vector<uint32_t> *>(n_head_kv) });
            for (int32_t h = 0; h < n_head_kv; ++h) {
                device_cells.back().cells[h] = (size_t) rows[h] == cells.size() ? &cells
                                             : &tails.emplace_back(cells.end() - rows[h], cells.end());
                tasks.push_back({ rows[h], head_dim, nullptr, nullptr, 0 });
            }
            continue;
        }
        // the host path (also the layers of a second device, with a partial offload)
        const int64_t n_embd = hp.n_embd_k_gqa(il);
        host_keys.emplace_back((size_t) cells.size() * n_embd);
        llama_uncomp_read_keys(ctx, seq_id, il, host_keys.back().data(), (int64_t) host_keys.back().size());
        for (int32_t h = 0; h < n_head_kv; ++h) {
            const float * first = host_keys.back().data() + (int64_t) (cells.size() - rows[h]) * n_embd + h * head_dim;
            tasks.push_back({ rows[h], head_dim, nullptr, first, n_embd });
        }
    }
    timer.step("plan");
    uncomp_step_values grams;
    if (dev != nullptr) {
        try {
            grams = dev->key_gram(device_cells);
            timer.step("gram");
        } catch (const std::exception & e) {
            LLAMA_LOG_ERROR("%s\n", e.what());
            return LLAMA_UNCOMP_ERR_DEVICE;
        }
        for (size_t j = 0; j < grams.size(); ++j) {
            for (size_t h = 0; h < grams[j].size(); ++h) tasks[device_first_task[j] + h].gram = &grams[j][h];
        }
    }
    if (start_scores) {
        uncomp_start_scores(ctx, seq_id);
        timer.step("start scores");
    }
    // this runs right after prefill, when the cores are otherwise idle
    uncomp_parallel_for(tasks.size(), [&](size_t i) {
        const head_task & t = tasks[i];
        if (t.n_rows <= 0) {
            out[i] = 0.0f;
        } else if (t.gram != nullptr) {
            thread_local std::vector<double> a; // one per thread, reused across its heads
            a.assign(t.gram->begin(), t.gram->end());
            out[i] = entropy_of_gram(a, t.n_rows, t.head_dim, k_trunc);
        } else {
            out[i] = uncomp_truncated_entropy(t.rows, t.n_rows, t.stride, t.head_dim, k_trunc);
        }
    });
    timer.step("eigen");
    return (int32_t) n_values;
}

int32_t llama_uncomp_key_entropy(const struct llama_context * ctx, llama_seq_id seq_id, int32_t k_trunc, float * out, int64_t n_max) {
    return key_entropy(ctx, seq_id, k_trunc, out, n_max, false);
}

int32_t llama_uncomp_key_entropy_for_compress(const struct llama_context * ctx, llama_seq_id seq_id, int32_t k_trunc, float * out,
                                              int64_t n_max) {
    return key_entropy(ctx, seq_id, k_trunc, out, n_max, true);
}
