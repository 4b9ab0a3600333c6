// The compressed cache's per-head layout (see uncomp-layout.h) and the attention hook that reads it.
#include "uncomp-layout.h"

#include "llama-graph.h"
#include "llama-kv-cache.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <unordered_map>

namespace {

// keyed by the layer's K storage tensor (the hook sees views of it, k->view_src), then by stream
using stream_layouts = std::vector<std::vector<uint32_t>>; // [stream][KV head], empty: no layout
std::mutex g_layout_mutex;
std::unordered_map<const ggml_tensor *, stream_layouts> g_head_start;

// set while the hook builds its attention, which calls build_attn_mha again
thread_local bool t_in_hook = false;

// the layouts of streams [s0, s0 + n_stream) of a storage tensor
stream_layouts head_starts_of(const ggml_tensor * storage, int64_t s0, int64_t n_stream) {
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    stream_layouts out(n_stream);
    auto it = g_head_start.find(storage);
    for (int64_t s = 0; it != g_head_start.end() && s < n_stream; ++s) {
        if (s0 + s < (int64_t) it->second.size()) {
            out[s] = it->second[s0 + s];
        }
    }
    return out;
}

// The per-head part of the attention mask: where each query head's KV head starts, relative to row
// s_first of streams [s0, s0 + n_stream): a graph input [1, 1, n_head, n_stream] (f32; a stream without
// a layout starts at 0). The graph turns it into the bias (uncomp_build_attn_heads), so that a decoded
// token uploads n_head values per layer, not n_rows·n_head.
class head_start_input : public llm_graph_input_i {
public:
    head_start_input(const ggml_tensor * storage, stream_layouts head_start, int64_t s0, uint32_t s_first, int64_t gqa)
        : storage(storage), head_start(std::move(head_start)), s0(s0), s_first(s_first), gqa(gqa) {}

    void set_input(const llama_ubatch * /*ubatch*/) override {
        if (starts == nullptr) {
            return; // uniform starts: no bias
        }
        const int64_t n_head = starts->ne[2];
        std::vector<float> values(n_head * head_start.size(), 0.0f);
        for (size_t s = 0; s < head_start.size(); ++s) {
            for (int64_t h = 0; h < n_head && !head_start[s].empty(); ++h) {
                values[s * n_head + h] = (float) ((int64_t) head_start[s][h / gqa] - (int64_t) s_first);
            }
        }
        ggml_backend_tensor_set(starts, values.data(), 0, ggml_nbytes(starts));
    }

    // a reused graph keeps n_kv and the streams (the mask input checks them); the layout must not have
    // changed either
    bool can_reuse(const llm_graph_params & /*params*/) override {
        return head_starts_of(storage, s0, (int64_t) head_start.size()) == head_start;
    }

    ggml_tensor * starts = nullptr;
    // uniform starts: the mask's rows [s_first, n_kv), contiguous, made once per graph and mask
    const ggml_tensor * mask = nullptr;
    ggml_tensor *       mask_rows = nullptr;

    // the rows of `mask` from s_first that an earlier layer of the graph being built made, or nullptr
    static ggml_tensor * mask_rows_of(const llm_graph_result & res, const ggml_tensor * mask, uint32_t s_first) {
        for (const auto & in : res.inputs) {
            const auto * h = dynamic_cast<const head_start_input *>(in.get());
            if (h != nullptr && h->mask == mask && h->s_first == s_first && h->mask_rows != nullptr) {
                return h->mask_rows;
            }
        }
        return nullptr;
    }

private:
    const ggml_tensor * storage;
    stream_layouts      head_start;
    int64_t             s0;
    uint32_t            s_first;
    int64_t             gqa;
};

} // namespace

ggml_tensor * uncomp_build_attn_heads(
        const llm_graph_context & gctx,
        ggml_tensor * q,
        ggml_tensor * k,
        ggml_tensor * v,
        ggml_tensor * kq_b,
        ggml_tensor * kq_mask,
        ggml_tensor * sinks,
        ggml_tensor * v_mla,
        int64_t       n_kv_max,
        float         kq_scale,
        int           il) {
    if (t_in_hook || k->view_src == nullptr) {
        return nullptr;
    }
    // k views streams [s0, s0 + n_stream) of the storage, one stream apart by nb[3]
    const int64_t n_stream = k->ne[3];
    const int64_t s0       = (int64_t) (k->view_offs / k->nb[3]);
    stream_layouts start = head_starts_of(k->view_src, s0, n_stream);
    if (std::all_of(start.begin(), start.end(), [](const std::vector<uint32_t> & s) { return s.empty(); })) {
        return nullptr;
    }
    // the engine records layouts only for what this handles: no per-head bias or ALiBi, no MLA
    GGML_ASSERT(kq_b == nullptr && v_mla == nullptr && gctx.hparams.f_max_alibi_bias == 0.0f);
    GGML_ASSERT(kq_mask != nullptr && kq_mask->ne[2] == 1 && kq_mask->ne[3] == n_stream);

    ggml_context * ctx = gctx.ctx0;
    const int64_t n_head   = q->ne[1];
    const int64_t n_tokens = kq_mask->ne[1]; // per stream
    const int64_t n_kv     = k->ne[2];
    const bool    v_trans  = v->nb[1] > v->nb[2]; // [n_kv, n_head_kv, head_dim_v, n_stream] instead of [head_dim_v, n_head_kv, n_kv, n_stream]
    // the ubatch's own cells follow every head's start, so s_first < n_kv; the clamp only guards
    int64_t s_first = n_kv - 1;
    for (const auto & s : start) {
        GGML_ASSERT(s.empty() || (int64_t) s.size() == k->ne[1]);
        s_first = std::min<int64_t>(s_first, s.empty() ? 0 : *std::min_element(s.begin(), s.end()));
    }
    // start on a multiple of 256 rows: n_kv is one, and CUDA's flash-attention kernels want K rows in
    // whole 256-row tiles (the rows added are masked for every head)
    s_first -= s_first % 256;
    const int64_t n_rows = n_kv - s_first;

    // rows [s_first, n_kv) of every head and stream: k, v [head_dim, n_head_kv, n_rows, n_stream]
    // (v transposed: [n_rows, n_head_kv, head_dim_v, n_stream])
    ggml_tensor * k_rows = ggml_view_4d(ctx, k, k->ne[0], k->ne[1], n_rows, n_stream, k->nb[1], k->nb[2], k->nb[3], s_first * k->nb[2]);
    ggml_tensor * v_rows = v_trans
        ? ggml_view_4d(ctx, v, n_rows, v->ne[1], v->ne[2], n_stream, v->nb[1], v->nb[2], v->nb[3], s_first * v->nb[0])
        : ggml_view_4d(ctx, v, v->ne[0], v->ne[1], n_rows, n_stream, v->nb[1], v->nb[2], v->nb[3], s_first * v->nb[2]);

    ggml_tensor * mask_rows = ggml_view_4d(ctx, kq_mask, n_rows, n_tokens, 1, n_stream,
                                           kq_mask->nb[1], kq_mask->nb[2], kq_mask->nb[3], s_first * kq_mask->nb[0]);
    // every head of every stream starts at s_first (a pruned prefill's later layers): the rows are the
    // heads' own, llama.cpp's attention over them needs no per-head mask (but a contiguous one)
    const bool uniform = std::all_of(start.begin(), start.end(), [&](const std::vector<uint32_t> & s) {
        return !s.empty() && std::all_of(s.begin(), s.end(), [&](uint32_t c) { return (int64_t) c == s_first; });
    });
    // the input checks, when llama.cpp would reuse this graph, that the layout is still the same
    auto * input = new head_start_input(k->view_src, start, s0, (uint32_t) s_first, n_head / k->ne[1]);
    if (uniform) {
        // one copy for all the graph's layers that start there (the layers of a pruned prefill's tail)
        input->mask      = kq_mask;
        input->mask_rows = head_start_input::mask_rows_of(*gctx.res, kq_mask, (uint32_t) s_first);
        if (input->mask_rows == nullptr) {
            input->mask_rows = ggml_cont(ctx, mask_rows);
        }
    }
    gctx.res->add_input(llm_graph_input_ptr(input));
    t_in_hook = true;
    if (uniform) {
        ggml_tensor * out = gctx.build_attn_mha(q, k_rows, v_rows, nullptr, input->mask_rows, sinks, nullptr, n_kv_max, kq_scale, il);
        t_in_hook = false;
        return out;
    }

    // mask [n_rows, n_tokens, n_head, n_stream] = the layer's mask (rows [s_first, n_kv)) + the per-head
    // bias; the kernels skip -INF rows (CUDA's vector kernel whole masked tiles), so a head's work is
    // its own rows
    input->starts = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, 1, n_head, n_stream);
    ggml_set_input(input->starts);
    // bias[j, 0, h, s] = log(step(j - start + 0.5)): 0 where head h holds row s_first + j, else -INF
    ggml_tensor * rows = ggml_repeat_4d(ctx, ggml_arange(ctx, 0.0f, (float) n_rows, 1.0f), n_rows, 1, n_head, n_stream);
    ggml_tensor * bias = ggml_log(ctx, ggml_step(ctx, ggml_scale_bias(ctx, ggml_sub(ctx, rows, input->starts), 1.0f, 0.5f)));
    bias = ggml_cast(ctx, bias, kq_mask->type);
    if (n_tokens > 1) {
        bias = ggml_repeat_4d(ctx, bias, n_rows, n_tokens, n_head, n_stream);
    }
    ggml_tensor * mask_head = ggml_add(ctx, bias, mask_rows);

    ggml_tensor * out = gctx.build_attn_mha(q, k_rows, v_rows, nullptr, mask_head, sinks, nullptr, n_kv_max, kq_scale, il);
    t_in_hook = false;
    return out;
}

void uncomp_layout_set(const llama_kv_cache * cache, int32_t il, uint32_t stream, const std::vector<uint32_t> & head_start) {
    const ggml_tensor * storage = cache->get_k_storage(il);
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    const bool all_zero = std::all_of(head_start.begin(), head_start.end(), [](uint32_t s) { return s == 0; });
    auto it = g_head_start.find(storage);
    if (all_zero && (it == g_head_start.end() || stream >= it->second.size())) {
        return;
    }
    stream_layouts & layouts = g_head_start[storage];
    layouts.resize(std::max<size_t>(layouts.size(), stream + 1));
    layouts[stream] = all_zero ? std::vector<uint32_t>() : head_start;
    if (std::all_of(layouts.begin(), layouts.end(), [](const std::vector<uint32_t> & s) { return s.empty(); })) {
        g_head_start.erase(storage);
    }
}

std::vector<uint32_t> uncomp_layout_get(const llama_kv_cache * cache, int32_t il, uint32_t stream) {
    return head_starts_of(cache->get_k_storage(il), stream, 1)[0];
}

void uncomp_layout_clear(const llama_kv_cache * cache, int32_t stream) {
    for (uint32_t il : cache->get_layer_ids()) {
        if (stream >= 0) {
            uncomp_layout_set(cache, (int32_t) il, (uint32_t) stream, {});
            continue;
        }
        std::lock_guard<std::mutex> lock(g_layout_mutex);
        g_head_start.erase(cache->get_k_storage(il));
    }
}
