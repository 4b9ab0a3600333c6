// A KV cache fitted to a compressed layout (see uncomp-fit.h).
#include "uncomp-fit.h"

#include "uncomp.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

// the plan for the caches this thread creates until it is cleared: first row of each model layer (il)
thread_local std::vector<uint32_t> t_plan;

// a fitted storage tensor carries its first row in its op_params (a leaf's op_params are unused and
// travel with the tensor, so no registry can outlive the cache)
constexpr int32_t FIT_MARK = 0x75636670; // "ucfp"

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

struct fit_tensor {
    ggml_tensor * t;
    bool          is_v;
    int           il;
    uint32_t      first_row;
    size_t        base; // offset in the buffer
};

} // namespace

uint32_t uncomp_fitted_first_row(const ggml_tensor * storage) {
    return storage != nullptr && storage->op_params[0] == FIT_MARK ? (uint32_t) storage->op_params[1] : 0;
}

int32_t llama_uncomp_fit_next_cache(const int32_t * first_row, int32_t n_layer) {
    if (n_layer < 0 || (n_layer > 0 && first_row == nullptr)) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    std::vector<uint32_t> plan(n_layer);
    for (int32_t il = 0; il < n_layer; ++il) {
        if (first_row[il] < 0) {
            return LLAMA_UNCOMP_ERR_PARAMS;
        }
        plan[il] = (uint32_t) first_row[il];
    }
    t_plan = std::move(plan);
    return 0;
}

ggml_backend_buffer_t uncomp_kv_alloc_fitted(ggml_context * ctx, ggml_backend_buffer_type_t buft, bool v_trans, uint32_t n_stream) {
    if (t_plan.empty() || v_trans || n_stream != 1) {
        return nullptr;
    }
    const size_t align = ggml_backend_buft_get_alignment(buft);

    // the storage tensors, in the order a state load writes them: every layer's K, then every layer's V
    std::vector<fit_tensor> ts;
    bool any_fitted = false;
    for (ggml_tensor * t = ggml_get_first_tensor(ctx); t != nullptr; t = ggml_get_next_tensor(ctx, t)) {
        if (t->view_src != nullptr) {
            continue;
        }
        char kind = 0;
        int  il   = -1;
        if (sscanf(ggml_get_name(t), "cache_%c_l%d", &kind, &il) != 2 || (kind != 'k' && kind != 'v') || il < 0) {
            return nullptr; // a tensor this plan does not know (another cache's naming): allocate as usual
        }
        const int64_t rows = t->ne[1];
        uint32_t first = il < (int) t_plan.size() ? std::min<uint32_t>(t_plan[il], (uint32_t) (rows - 1)) : 0;
        // the unallocated prefix must be a whole number of alignment units (the base stays aligned)
        const size_t unit = align / std::gcd(t->nb[1], align);
        first = (uint32_t) (first / unit * unit);
        any_fitted = any_fitted || first > 0;
        ts.push_back({ t, kind == 'v', il, first, 0 });
    }
    if (!any_fitted) {
        return nullptr;
    }
    std::stable_sort(ts.begin(), ts.end(), [](const fit_tensor & a, const fit_tensor & b) {
        return a.is_v != b.is_v ? !a.is_v : a.il < b.il;
    });

    // the held rows of the tensors in reverse write order, from the start of the buffer: a tensor's
    // unallocated prefix then lies on the held rows of tensors written after it (or the padding below)
    std::vector<size_t> held_at(ts.size());
    size_t end = 0;
    for (size_t i = ts.size(); i-- > 0;) {
        const fit_tensor & f = ts[i];
        held_at[i] = align_up(end, align);
        const size_t padding = ggml_backend_buft_get_alloc_size(buft, f.t) - ggml_nbytes(f.t); // past the last row
        end = held_at[i] + ggml_nbytes(f.t) - (size_t) f.first_row * f.t->nb[1] + padding;
    }
    size_t below = 0; // room under the first held rows for the prefixes that reach below them
    for (size_t i = 0; i < ts.size(); ++i) {
        below = std::max(below, ts[i].first_row * ts[i].t->nb[1] - std::min(held_at[i], (size_t) ts[i].first_row * ts[i].t->nb[1]));
    }
    below = align_up(below, align);
    const size_t size = below + end;
    if (size > ggml_backend_buft_get_max_size(buft)) {
        return nullptr;
    }
    ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(buft, size);
    if (buf == nullptr) {
        return nullptr; // llama.cpp's own allocation reports it (it needs more)
    }
    char * base = (char *) ggml_backend_buffer_get_base(buf);
    bool ok = true;
    for (size_t i = 0; ok && i < ts.size(); ++i) {
        fit_tensor & f = ts[i];
        f.base = below + held_at[i] - (size_t) f.first_row * f.t->nb[1];
        ok = ggml_backend_tensor_alloc(buf, f.t, base + f.base) == GGML_STATUS_SUCCESS;
        f.t->op_params[0] = FIT_MARK;
        f.t->op_params[1] = (int32_t) f.first_row;
    }
    for (ggml_tensor * t = ggml_get_first_tensor(ctx); ok && t != nullptr; t = ggml_get_next_tensor(ctx, t)) {
        ok = t->view_src == nullptr || t->buffer != nullptr || ggml_backend_view_init(t) == GGML_STATUS_SUCCESS;
    }
    if (!ok) { // leave the tensors as they came: llama.cpp's allocation skips tensors that have data
        for (ggml_tensor * t = ggml_get_first_tensor(ctx); t != nullptr; t = ggml_get_next_tensor(ctx, t)) {
            t->data   = nullptr;
            t->buffer = nullptr;
            t->op_params[0] = t->view_src == nullptr ? 0 : t->op_params[0];
        }
        ggml_backend_buffer_free(buf);
        return nullptr;
    }
    return buf;
}
