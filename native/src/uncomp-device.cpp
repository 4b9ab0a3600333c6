// The engine's device-side steps as ggml graphs (see uncomp-device.h).
#include "uncomp-device.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace {

// rows [0, kv_size) of KV head h of one stream of a K or untransposed V storage [n_embd, kv_size, n_stream]:
// [head_dim, kv_size], typed as the storage
ggml_tensor * head_rows(ggml_context * ctx, ggml_tensor * storage, uint32_t stream, int64_t head_dim, int64_t h) {
    return ggml_view_2d(ctx, storage, head_dim, storage->ne[1], storage->nb[1],
                        stream * storage->nb[2] + h * ggml_row_size(storage->type, head_dim));
}

ggml_tensor * cell_index(ggml_context * ctx, const std::vector<uint32_t> & cells) {
    ggml_tensor * idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, (int64_t) cells.size());
    ggml_set_input(idx);
    return idx;
}

} // namespace

ggml_backend_dev_t uncomp_device_of(const ggml_tensor * storage) {
    ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(storage->buffer);
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    // ggml's plain CPU buffer type names no device
    if (dev == nullptr && ggml_backend_buft_is_host(buft)) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    return dev;
}

bool uncomp_device_wanted(const ggml_tensor * storage) {
    static const bool forced = [] {
        const char * v = std::getenv("UNCOMP_DEVICE_PATH");
        return v != nullptr && std::strcmp(v, "1") == 0;
    }();
    return forced || (storage->buffer != nullptr && !ggml_backend_buffer_is_host(storage->buffer));
}

uncomp_device::uncomp_device(const ggml_tensor * storage) {
    ggml_backend_dev_t dev = uncomp_device_of(storage);
    backend = dev ? ggml_backend_dev_init(dev, nullptr) : nullptr;
    if (backend == nullptr) {
        throw std::runtime_error("uncomp: no backend for the cache's device");
    }
    // a CPU backend starts with a few threads; give it the machine (the host path's work moves here)
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    if (auto set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads")) {
        set_threads(backend, (int) std::max(1u, std::thread::hardware_concurrency()));
    }
    galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend));
}

uncomp_device::~uncomp_device() {
    ggml_gallocr_free(galloc);
    ggml_backend_free(backend);
}

ggml_context * uncomp_device::begin(size_t n_tensors) {
    ggml_init_params ip = { n_tensors * ggml_tensor_overhead() + ggml_graph_overhead_custom(n_tensors, false), nullptr, true };
    return ggml_init(ip);
}

void uncomp_device::allocate(ggml_context * ctx, ggml_cgraph * gf) {
    if (!ggml_gallocr_alloc_graph(galloc, gf)) {
        ggml_free(ctx);
        throw std::runtime_error("uncomp: out of device memory for a compression step");
    }
}

std::vector<std::vector<float>> uncomp_device::attention_mass(
        ggml_tensor * k_storage, uint32_t stream, int64_t head_dim,
        const std::vector<std::vector<uint32_t>> & held, const std::vector<float> & q,
        int64_t wq, int64_t n_head, float scale) {
    const int64_t n_head_kv = (int64_t) held.size();
    const int64_t gqa       = n_head / n_head_kv;
    ggml_context * ctx = begin(16 * n_head_kv + 16);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 16 * n_head_kv + 16, false);
    // q: [head_dim, wq, n_head]; the query heads of KV head h are [h*gqa, (h+1)*gqa)
    ggml_tensor * q_in = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_dim, wq, n_head);
    ggml_set_input(q_in);
    std::vector<ggml_tensor *> idx(n_head_kv, nullptr), mass(n_head_kv, nullptr);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        const int64_t n_h = (int64_t) held[h].size();
        if (n_h == 0) {
            continue;
        }
        idx[h] = cell_index(ctx, held[h]);
        ggml_tensor * k  = ggml_get_rows(ctx, head_rows(ctx, k_storage, stream, head_dim, h), idx[h]); // [head_dim, n_h] f32
        ggml_tensor * qg = ggml_view_3d(ctx, q_in, head_dim, wq, gqa, q_in->nb[1], q_in->nb[2], h * gqa * q_in->nb[2]);
        ggml_tensor * kq = ggml_mul_mat(ctx, k, qg);                               // [n_h, wq, gqa]
        kq = ggml_diag_mask_inf(ctx, kq, (int) (n_h - wq));                        // window row t sees cells < n_h - wq + t + 1
        kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
        kq = ggml_cont(ctx, ggml_permute(ctx, kq, 2, 0, 1, 3));                   // [wq, gqa, n_h]
        mass[h] = ggml_sum_rows(ctx, ggml_reshape_2d(ctx, kq, wq * gqa, n_h)); // [1, n_h]
        ggml_set_output(mass[h]);
        ggml_build_forward_expand(gf, mass[h]);
    }
    allocate(ctx, gf);
    // q arrives as [n_head][wq][head_dim]: already q_in's layout
    ggml_backend_tensor_set(q_in, q.data(), 0, ggml_nbytes(q_in));
    for (int64_t h = 0; h < n_head_kv; ++h) {
        if (idx[h]) {
            ggml_backend_tensor_set(idx[h], held[h].data(), 0, ggml_nbytes(idx[h]));
        }
    }
    ggml_backend_graph_compute(backend, gf);
    std::vector<std::vector<float>> out(n_head_kv);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        if (mass[h]) {
            out[h].resize(held[h].size());
            ggml_backend_tensor_get(mass[h], out[h].data(), 0, ggml_nbytes(mass[h]));
        }
    }
    ggml_free(ctx);
    return out;
}

std::vector<std::vector<double>> uncomp_device::key_gram(
        ggml_tensor * k_storage, uint32_t stream, int64_t head_dim,
        const std::vector<std::vector<uint32_t>> & held) {
    const int64_t n_head_kv = (int64_t) held.size();
    ggml_context * ctx = begin(16 * n_head_kv + 16);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 16 * n_head_kv + 16, false);
    std::vector<ggml_tensor *> idx(n_head_kv, nullptr), gram(n_head_kv, nullptr);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        const int64_t n_h = (int64_t) held[h].size();
        if (n_h == 0) {
            continue;
        }
        idx[h] = cell_index(ctx, held[h]);
        ggml_tensor * k    = ggml_get_rows(ctx, head_rows(ctx, k_storage, stream, head_dim, h), idx[h]); // [head_dim, n_h]
        ggml_tensor * mean = ggml_mean(ctx, ggml_cont(ctx, ggml_transpose(ctx, k)));                      // [1, head_dim]
        ggml_tensor * z    = ggml_sub(ctx, k, ggml_reshape_2d(ctx, mean, head_dim, 1));
        // unit rows: rms_norm gives rms 1, i.e. norm sqrt(head_dim); a zero row stays zero
        z = ggml_scale(ctx, ggml_rms_norm(ctx, z, 1e-30f), 1.0f / std::sqrt((float) head_dim));
        ggml_tensor * zt = ggml_cont(ctx, ggml_transpose(ctx, z));                                        // [n_h, head_dim]
        gram[h] = ggml_mul_mat(ctx, zt, zt);                                                             // [head_dim, head_dim]
        ggml_set_output(gram[h]);
        ggml_build_forward_expand(gf, gram[h]);
    }
    allocate(ctx, gf);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        if (idx[h]) {
            ggml_backend_tensor_set(idx[h], held[h].data(), 0, ggml_nbytes(idx[h]));
        }
    }
    ggml_backend_graph_compute(backend, gf);
    std::vector<std::vector<double>> out(n_head_kv);
    std::vector<float> g(head_dim * head_dim);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        if (gram[h]) {
            ggml_backend_tensor_get(gram[h], g.data(), 0, ggml_nbytes(gram[h]));
            out[h].assign(g.begin(), g.end());
        }
    }
    ggml_free(ctx);
    return out;
}

bool uncomp_device::compact(ggml_tensor * storage, uint32_t stream, int64_t head_dim,
                            const std::vector<std::vector<uint32_t>> & src, size_t n_kept) {
    const size_t head_bytes = ggml_row_size(storage->type, head_dim);
    if (head_bytes % 4 != 0 || storage->nb[1] % 4 != 0 || storage->nb[2] % 4 != 0) {
        return false;
    }
    const int64_t n_head_kv = (int64_t) src.size();
    ggml_context * ctx = begin(8 * n_head_kv + 8);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, 8 * n_head_kv + 8, false);
    // the storage seen as 32-bit words, so that rows move bit for bit whatever their type
    ggml_tensor * words = ggml_new_tensor_3d(ctx, GGML_TYPE_I32, storage->nb[1] / 4, storage->ne[1], storage->ne[2]);
    words->data   = storage->data;
    words->buffer = storage->buffer;
    const int64_t head_words = (int64_t) head_bytes / 4;
    std::vector<ggml_tensor *> idx(n_head_kv, nullptr);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        if (src[h].empty()) {
            continue;
        }
        // a head's rows are gathered into a buffer, then written: its destinations overlap its sources;
        // heads occupy disjoint words of a row, so one head's writes never touch another's sources
        idx[h] = cell_index(ctx, src[h]);
        ggml_tensor * rows = ggml_get_rows(ctx, head_rows(ctx, words, stream, head_words, h), idx[h]); // [head_words, n_h]
        const size_t first = n_kept - src[h].size();
        ggml_tensor * dst = ggml_view_2d(ctx, words, head_words, (int64_t) src[h].size(), words->nb[1],
                                         stream * words->nb[2] + h * head_bytes + first * words->nb[1]);
        ggml_build_forward_expand(gf, ggml_cpy(ctx, rows, dst));
    }
    allocate(ctx, gf);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        if (idx[h]) {
            ggml_backend_tensor_set(idx[h], src[h].data(), 0, ggml_nbytes(idx[h]));
        }
    }
    ggml_backend_graph_compute(backend, gf);
    ggml_free(ctx);
    return true;
}
