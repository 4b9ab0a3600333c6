// The compressed cache's per-head layout (see uncomp-layout.h) and the attention hook that reads it.
#include "uncomp-layout.h"

#include "llama-cparams.h"
#include "llama-graph.h"
#include "llama-kv-cache.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace {

// keyed by the layer's K storage tensor (the hook sees views of it, k->view_src), then by stream
using stream_layouts = std::vector<std::vector<uint32_t>>; // [stream][KV head], empty: no layout
std::mutex g_layout_mutex;
std::unordered_map<const ggml_tensor *, stream_layouts> g_head_start;

// The per-head biases of every layer of a cache, one tensor [kv_size, 1, n_head, n_stream * n_layer] f16
// (layer slot l, stream s at index l * n_stream + s): 0 in the cells query head h's KV head holds,
// -INF below its start. It lives in a buffer of the storage's own type (the cache's device), is
// allocated when a layout is first recorded (uncomp_layout_reserve, where running out of memory can
// still be reported) and rewritten per layer and stream when a layout changes, so nothing is uploaded
// per token (building the masks in every graph from the starts cost ~7 small kernels and one upload per
// layer). One tensor for all layers lets a decoded token's graph add the layer mask to every layer's
// bias in one op instead of one small kernel per layer. f16 whatever the mask's type: its values are
// 0 and -INF only.
struct head_bias {
    ggml_context *        ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor *         t   = nullptr;
    uint64_t              generation = 0; // tells a reused graph whether it still points at this one
    int64_t               n_stream   = 0; // the cache's streams
    std::vector<const ggml_tensor *> storages; // the layers' K storage, by slot
    std::vector<int64_t>             n_head;   // the layers' query heads, by slot (t->ne[2] is the most)

    ~head_bias() {
        ggml_backend_buffer_free(buf);
        ggml_free(ctx);
    }
    int64_t slot_of(const ggml_tensor * storage) const {
        return std::find(storages.begin(), storages.end(), storage) - storages.begin();
    }
    size_t offset(int64_t slot, int64_t stream) const { return (size_t) (slot * n_stream + stream) * t->nb[3]; }
};

// keyed by the cache; dropped when no layer of the cache has a layout left. Never destroyed: a bias still
// held at exit (a context freed without llama_uncomp_detach) must not free its device buffer after the
// device's runtime has shut down.
auto & g_head_bias = *new std::unordered_map<const llama_kv_cache *, std::unique_ptr<head_bias>>();
// a layer's K storage -> its cache's bias (the hook sees only the storage)
std::unordered_map<const ggml_tensor *, head_bias *> g_bias_of;
uint64_t g_bias_generation = 0;

void drop_bias(const llama_kv_cache * cache) {
    auto it = g_head_bias.find(cache);
    if (it == g_head_bias.end()) return;
    for (const auto * storage : it->second->storages) g_bias_of.erase(storage);
    g_head_bias.erase(it);
}

head_bias * bias_of(const ggml_tensor * storage) {
    auto it = g_bias_of.find(storage);
    return it == g_bias_of.end() ? nullptr : it->second;
}

// set while the hook builds its attention, which calls build_attn_mha again
thread_local bool t_in_hook = false;

// rewrites one stream's rows of a bias from that stream's layout `before` to `after` (empty: every cell
// valid). Only cells [0, the largest start of either) can change, so only they are written (one 2D copy:
// a few hundred KiB per layer where the whole rows are MiBs at long context). Caller holds g_layout_mutex.
void write_bias_stream(const head_bias & bias, int64_t slot, int64_t stream, const std::vector<uint32_t> & before, const std::vector<uint32_t> & after) {
    const int64_t kv_size = bias.t->ne[0];
    const int64_t n_head  = bias.n_head[slot];
    int64_t extent = 0;
    for (const auto * start : { &before, &after }) {
        for (uint32_t s : *start) extent = std::max<int64_t>(extent, s);
    }
    extent = std::min(extent, kv_size);
    if (extent == 0) {
        return;
    }
    // kept between calls: a compression writes every layer's rows, and fresh memory for each would be
    // touched page by page
    static std::vector<ggml_fp16_t> rows;
    rows.assign((size_t) (extent * n_head), ggml_fp32_to_fp16(0.0f));
    const ggml_fp16_t masked = ggml_fp32_to_fp16(-INFINITY);
    const int64_t gqa = after.empty() ? 1 : n_head / (int64_t) after.size();
    for (int64_t h = 0; h < n_head && !after.empty(); ++h) {
        ggml_fp16_t * row = rows.data() + h * extent;
        std::fill(row, row + std::min<int64_t>(after[h / gqa], extent), masked);
    }
    ggml_backend_tensor_set_2d(bias.t, rows.data(), bias.offset(slot, stream), extent * sizeof(ggml_fp16_t), n_head,
                               bias.t->nb[2], extent * sizeof(ggml_fp16_t));
}

uint64_t head_bias_generation(const ggml_tensor * storage) {
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    const head_bias * hb = bias_of(storage);
    return hb == nullptr ? 0 : hb->generation;
}

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

// Lets llama.cpp reuse a graph only while the layers' layouts (and their bias) are the ones it was built for.
class head_start_input : public llm_graph_input_i {
public:
    head_start_input(const ggml_tensor * storage, stream_layouts head_start, int64_t s0, uint32_t s_first)
        : storage(storage), head_start(std::move(head_start)), s0(s0), s_first(s_first) {}

    void set_input(const llama_ubatch * /*ubatch*/) override {}

    // a reused graph keeps n_kv and the streams (the mask input checks them); the layout must not have
    // changed either, nor the bias it reads
    bool can_reuse(const llm_graph_params & /*params*/) override {
        return head_starts_of(storage, s0, (int64_t) head_start.size()) == head_start &&
               (bias_generation == 0 || head_bias_generation(storage) == bias_generation);
    }

    uint64_t bias_generation = 0;
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
};

// A decoded token's per-head masks for every layer of a cache, [n_rows, 1, n_head, n_slots * n_stream]:
// rows [s_first, n_kv) of the layer mask added to each layer's bias, in one op. Made by the graph's first
// compressed layer of that cache; the layers view their own slot and rows. Each layer's head_start_input
// already tells when the layouts or the bias changed, so this input never blocks a reuse by itself.
class decode_masks : public llm_graph_input_i {
public:
    const head_bias *   bias;
    const ggml_tensor * mask;
    ggml_tensor *       t       = nullptr;
    int64_t             s_first = 0;

    decode_masks(const head_bias * bias, const ggml_tensor * mask) : bias(bias), mask(mask) {}
    void set_input(const llama_ubatch * /*ubatch*/) override {}
    bool can_reuse(const llm_graph_params & /*params*/) override { return true; }

    // streams [s0, s0 + n_stream): one stream, or every stream of the cache (a 4-d view can't take others)
    static const decode_masks & of(const llm_graph_context & gctx, const head_bias * hb, ggml_tensor * kq_mask,
                                   int64_t s0, int64_t n_stream, int64_t n_kv) {
        for (const auto & in : gctx.res->inputs) {
            const auto * dm = dynamic_cast<const decode_masks *>(in.get());
            if (dm != nullptr && dm->bias == hb && dm->mask == kq_mask) {
                return *dm;
            }
        }
        auto * dm = new decode_masks(hb, kq_mask);
        // from the first row any layer of the cache reads, on a 256-row boundary like each layer's view
        int64_t s_first = n_kv - 1;
        for (const ggml_tensor * storage : hb->storages) {
            const stream_layouts start = head_starts_of(storage, s0, n_stream);
            for (const auto & st : start) {
                if (!st.empty()) s_first = std::min<int64_t>(s_first, *std::min_element(st.begin(), st.end()));
            }
            if (std::any_of(start.begin(), start.end(), [](const std::vector<uint32_t> & st) { return st.empty(); }) &&
                std::any_of(start.begin(), start.end(), [](const std::vector<uint32_t> & st) { return !st.empty(); })) {
                s_first = 0; // a stream without a layout beside one with: the layer reads from row 0
            }
        }
        dm->s_first = s_first - s_first % 256;
        const int64_t n_rows = n_kv - dm->s_first;
        const int64_t n_slot = (int64_t) hb->storages.size();
        ggml_context * ctx = gctx.ctx0;
        ggml_tensor * bias = ggml_view_4d(ctx, hb->t, n_rows, 1, hb->t->ne[2], n_slot * n_stream, hb->t->nb[1], hb->t->nb[2],
                                          hb->t->nb[3] * (hb->n_stream / n_stream), hb->offset(0, s0) + dm->s_first * hb->t->nb[0]);
        ggml_tensor * rows = ggml_view_4d(ctx, kq_mask, n_rows, 1, 1, n_stream, kq_mask->nb[1], kq_mask->nb[2], kq_mask->nb[3],
                                          dm->s_first * kq_mask->nb[0]);
        dm->t = ggml_add(ctx, bias, rows); // rows repeat over heads and, stream by stream, over the slots
        gctx.res->add_input(llm_graph_input_ptr(dm));
        return *dm;
    }
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
    auto * input = new head_start_input(k->view_src, start, s0, (uint32_t) s_first);
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
    head_bias * hb = nullptr;
    {
        std::lock_guard<std::mutex> lock(g_layout_mutex);
        hb = bias_of(k->view_src);
    }
    // the engine reserves a layer's bias before it records any layout of the layer
    GGML_ASSERT(hb != nullptr && hb->t->ne[2] >= n_head && "uncomp: a per-head layout without its bias");
    input->bias_generation = hb->generation;
    const int64_t slot = hb->slot_of(k->view_src);
    ggml_tensor * mask_head = nullptr;
    if (gctx.cparams.flash_attn && n_tokens == 1 && (n_stream == 1 || (s0 == 0 && n_stream == hb->n_stream))) {
        // a decoded token: the masks of every layer of the cache come from one add, made by the graph's
        // first compressed layer (one small kernel per layer was 107 us of a decoded token on an 8B model,
        // H200). The layer's rows are a view whose heads lie the graph's longest span apart: flash
        // attention reads the mask through its strides (patch 0006 lets it take rows-contiguous masks;
        // the soft_max path without it needs a contiguous one, so it keeps the add per layer below)
        const decode_masks & dm = decode_masks::of(gctx, hb, kq_mask, s0, n_stream, n_kv);
        mask_head = ggml_view_4d(ctx, dm.t, n_rows, 1, n_head, n_stream, dm.t->nb[1], dm.t->nb[2], dm.t->nb[3],
                                 slot * n_stream * dm.t->nb[3] + (s_first - dm.s_first) * dm.t->nb[0]);
    } else {
        ggml_tensor * bias = ggml_view_4d(ctx, hb->t, n_rows, 1, n_head, n_stream, hb->t->nb[1], hb->t->nb[2],
                                          hb->t->nb[3], hb->offset(slot, s0) + s_first * hb->t->nb[0]);
        if (n_tokens > 1) {
            bias = ggml_repeat_4d(ctx, bias, n_rows, n_tokens, n_head, n_stream);
        }
        mask_head = ggml_add(ctx, bias, mask_rows);
    }

    ggml_tensor * out = gctx.build_attn_mha(q, k_rows, v_rows, nullptr, mask_head, sinks, nullptr, n_kv_max, kq_scale, il);
    t_in_hook = false;
    return out;
}

bool uncomp_layout_reserve(const llama_kv_cache * cache, int32_t il, int64_t n_head) {
    const ggml_tensor * storage = cache->get_k_storage(il);
    std::vector<const ggml_tensor *> storages;
    for (uint32_t l : cache->get_layer_ids()) storages.push_back(cache->get_k_storage((int32_t) l));
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    auto it = g_head_bias.find(cache);
    head_bias * old = it == g_head_bias.end() ? nullptr : it->second.get();
    if (old != nullptr && old->storages != storages) {
        drop_bias(cache); // a cache freed and another made at its address
        old = nullptr;
    }
    const int64_t slot = std::find(storages.begin(), storages.end(), storage) - storages.begin();
    if (old != nullptr && old->t->ne[2] >= n_head) {
        old->n_head[slot] = n_head;
        return true;
    }
    auto bias = std::make_unique<head_bias>();
    bias->storages = storages;
    bias->n_stream = storage->ne[2];
    bias->n_head   = old != nullptr ? old->n_head : std::vector<int64_t>(storages.size(), 0);
    bias->n_head[slot] = n_head;
    ggml_init_params params = { ggml_tensor_overhead(), nullptr, true };
    bias->ctx = ggml_init(params);
    bias->t   = ggml_new_tensor_4d(bias->ctx, GGML_TYPE_F16, storage->ne[1], 1,
                                   *std::max_element(bias->n_head.begin(), bias->n_head.end()),
                                   bias->n_stream * (int64_t) storages.size());
    bias->buf = ggml_backend_alloc_ctx_tensors_from_buft(bias->ctx, ggml_backend_buffer_get_type(storage->buffer));
    if (bias->buf == nullptr) {
        return false; // the cache keeps the bias (or none) it had
    }
    // f16 0 is all-zero bits: every cell valid, then the layers and streams that already have a layout
    ggml_backend_buffer_clear(bias->buf, 0);
    for (size_t l = 0; l < storages.size(); ++l) {
        auto layouts = g_head_start.find(storages[l]);
        for (size_t s = 0; layouts != g_head_start.end() && s < layouts->second.size(); ++s) {
            write_bias_stream(*bias, (int64_t) l, (int64_t) s, {}, layouts->second[s]);
        }
    }
    bias->generation = ++g_bias_generation;
    drop_bias(cache);
    for (const auto * st : storages) g_bias_of[st] = bias.get();
    g_head_bias[cache] = std::move(bias);
    return true;
}

void uncomp_layout_set(const llama_kv_cache * cache, int32_t il, uint32_t stream, const std::vector<uint32_t> & head_start) {
    const ggml_tensor * storage = cache->get_k_storage(il);
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    const bool all_zero = std::all_of(head_start.begin(), head_start.end(), [](uint32_t s) { return s == 0; });
    auto it = g_head_start.find(storage);
    if (all_zero && (it == g_head_start.end() || stream >= it->second.size())) {
        return;
    }
    // a layer with a layout has its bias: any stream's layout may meet another's in one ubatch
    head_bias * bias = bias_of(storage);
    GGML_ASSERT((all_zero || bias != nullptr) && "uncomp_layout_set: reserve the layer's bias first");
    stream_layouts & layouts = g_head_start[storage];
    layouts.resize(std::max<size_t>(layouts.size(), stream + 1));
    std::vector<uint32_t> before = std::move(layouts[stream]);
    layouts[stream] = all_zero ? std::vector<uint32_t>() : head_start;
    if (std::all_of(layouts.begin(), layouts.end(), [](const std::vector<uint32_t> & s) { return s.empty(); })) {
        g_head_start.erase(storage);
    }
    if (bias == nullptr) {
        return;
    }
    if (std::none_of(bias->storages.begin(), bias->storages.end(), [](const ggml_tensor * st) { return g_head_start.count(st) > 0; })) {
        drop_bias(cache);
    } else {
        write_bias_stream(*bias, bias->slot_of(storage), stream, before, all_zero ? std::vector<uint32_t>() : head_start);
    }
}

std::vector<uint32_t> uncomp_layout_get(const llama_kv_cache * cache, int32_t il, uint32_t stream) {
    return head_starts_of(cache->get_k_storage(il), stream, 1)[0];
}

bool uncomp_swa_cell_reusable(const llama_kv_cache * cache, uint32_t stream) {
    const std::vector<uint32_t> layer_ids = cache->get_layer_ids();
    return std::none_of(layer_ids.begin(), layer_ids.end(),
                        [&](uint32_t il) { return !uncomp_layout_get(cache, (int32_t) il, stream).empty(); });
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
    if (stream < 0) {
        std::lock_guard<std::mutex> lock(g_layout_mutex);
        drop_bias(cache);
    }
}
