// KV-cache statistics: what each layer and KV head of a context's memory holds, in tokens and bytes.
#include "uncomp.h"
#include "uncomp-impl.h"
#include "uncomp-fit.h"
#include "uncomp-layout.h"

#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"

#include <algorithm>
#include <utility>
#include <vector>

std::vector<uncomp_cache_layer> uncomp_cache_layers(const llama_context * ctx) {
    std::vector<const llama_kv_cache *> caches;
    std::vector<bool> swa;
    llama_memory_i * mem = ctx->get_memory();
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        caches = { kv };
        swa    = { false };
    } else if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        caches = { iswa->get_base(), iswa->get_swa() };
        swa    = { false, true };
    }
    const auto & hparams = ctx->get_model().hparams;
    std::vector<uncomp_cache_layer> res(hparams.n_layer(), uncomp_cache_layer{ nullptr, 0, false });
    for (size_t c = 0; c < caches.size(); ++c) {
        for (uint32_t il : caches[c]->get_layer_ids()) {
            res[il] = { caches[c], il, (bool) swa[c] };
        }
    }
    std::vector<uncomp_cache_layer> present;
    for (const auto & l : res) {
        if (l.cache) {
            present.push_back(l);
        }
    }
    return present;
}

uint32_t uncomp_layer_first_row(const llama_kv_cache * cache, int32_t il) {
    // K and V of a layer are fitted alike up to the alignment unit; the larger is what is safe to write
    return std::max(uncomp_fitted_first_row(cache->get_k_storage(il)), uncomp_fitted_first_row(cache->get_v_storage(il)));
}

bool uncomp_context_fitted(const llama_context * ctx) {
    for (const auto & l : uncomp_cache_layers(ctx)) {
        if (uncomp_layer_first_row(l.cache, (int32_t) l.il) > 0) {
            return true;
        }
    }
    return false;
}

const llama_kv_cache * uncomp_cache_of_layer(const llama_context * ctx, int32_t il) {
    if (ctx == nullptr) {
        return nullptr;
    }
    for (const auto & l : uncomp_cache_layers(ctx)) {
        if ((int32_t) l.il == il) {
            return l.cache;
        }
    }
    return nullptr;
}

namespace {

uint32_t cells_of_seq(const llama_kv_cache * cache, llama_seq_id seq_id) {
    if (seq_id < 0 || seq_id >= (llama_seq_id) cache->get_n_seq_max()) {
        return 0;
    }
    return (uint32_t) cache->get_cells(seq_id).seq_pos_get(seq_id).size();
}

// held_from[i]: the cells of seq_id at index >= i in the cache, i in [0, size]; one pass counting down,
// shared by every layer of the cache. Walking seq_pos (a set of 32k entries) per layer instead made each
// stats call after a pruned 32k prefill take 9 ms (session 39, H100)
std::vector<uint32_t> held_from_cell(const llama_kv_cache * cache, llama_seq_id seq_id) {
    const llama_kv_cells & cells = cache->get_cells(seq_id);
    std::vector<uint32_t> held_from(cells.size() + 1, 0);
    for (uint32_t i = cells.size(); i-- > 0;) {
        held_from[i] = held_from[i + 1] + (cells.seq_has(i, seq_id) ? 1 : 0);
    }
    return held_from;
}

// The suffix counts of each cache that a stats call reads, counted once for all its layers
class held_counts {
public:
    explicit held_counts(llama_seq_id seq_id) : seq_id(seq_id) {}

    const std::vector<uint32_t> & of(const llama_kv_cache * cache) {
        for (const auto & c : counted) {
            if (c.first == cache) {
                return c.second;
            }
        }
        counted.emplace_back(cache, held_from_cell(cache, seq_id));
        return counted.back().second;
    }

private:
    llama_seq_id seq_id;
    std::vector<std::pair<const llama_kv_cache *, std::vector<uint32_t>>> counted;
};

// Tokens each KV head of layer il holds for seq_id: its cells from the head's first cell on
std::vector<uint32_t> rows_per_head(const llama_kv_cache * cache, llama_seq_id seq_id, int32_t il, int32_t n_head_kv,
                                    held_counts & held) {
    std::vector<uint32_t> rows(n_head_kv, 0);
    if (seq_id < 0 || seq_id >= (llama_seq_id) cache->get_n_seq_max()) {
        return rows;
    }
    const std::vector<uint32_t> start = uncomp_layout_get(cache, il, cache->get_stream(seq_id));
    if (start.empty()) { // every head holds every cell: no walk over a long prompt's cells
        rows.assign(n_head_kv, cells_of_seq(cache, seq_id));
        return rows;
    }
    const std::vector<uint32_t> & held_from = held.of(cache);
    for (int32_t h = 0; h < n_head_kv; ++h) {
        rows[h] = held_from[std::min<size_t>(start[h], held_from.size() - 1)];
    }
    return rows;
}

} // namespace

int32_t llama_uncomp_layer_stats(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
      struct llama_uncomp_layer_stats * out,
                         int32_t   n_max) {
    if (ctx == nullptr) {
        return -1;
    }
    const auto layers = uncomp_cache_layers(ctx);
    if (layers.empty()) {
        return -1;
    }
    const auto & hparams = ctx->get_model().hparams;
    held_counts held(seq_id);
    for (size_t i = 0; out != nullptr && i < layers.size() && (int32_t) i < n_max; ++i) {
        const auto & l = layers[i];
        ggml_tensor * k = l.cache->get_k_storage(l.il);
        ggml_tensor * v = l.cache->get_v_storage(l.il);
        const uint64_t per_token =
            ggml_row_size(l.cache->type_k(), hparams.n_embd_k_gqa(l.il)) +
            ggml_row_size(l.cache->type_v(), hparams.n_embd_v_gqa(l.il));
        const uint32_t n_cells = cells_of_seq(l.cache, seq_id);
        const int32_t n_head_kv = (int32_t) hparams.n_head_kv(l.il);
        uint64_t head_rows = 0; // rows held summed over heads: heads may keep different counts
        for (uint32_t r : rows_per_head(l.cache, seq_id, (int32_t) l.il, n_head_kv, held)) {
            head_rows += r;
        }

        auto & s = out[i];
        s.il              = (int32_t) l.il;
        s.n_head_kv       = (int32_t) hparams.n_head_kv(l.il);
        s.is_swa          = l.is_swa ? 1 : 0;
        s.n_cells         = (int32_t) n_cells;
        s.bytes_held      = per_token * head_rows / n_head_kv;
        const uint32_t first_k = uncomp_fitted_first_row(k), first_v = uncomp_fitted_first_row(v);
        s.bytes_alloc     = ggml_nbytes(k) - first_k * k->nb[1] + ggml_nbytes(v) - first_v * v->nb[1];
        s.bytes_per_token = per_token;
        s.n_embd_k_gqa    = (int32_t) hparams.n_embd_k_gqa(l.il);
        s.first_row       = (int32_t) uncomp_layer_first_row(l.cache, (int32_t) l.il);
    }
    return (int32_t) layers.size();
}

int32_t llama_uncomp_tokens_kept(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   il,
                         int32_t * out,
                         int32_t   n_max) {
    const llama_kv_cache * cache = uncomp_cache_of_layer(ctx, il);
    if (cache == nullptr) {
        return -1;
    }
    const int32_t n_head_kv = (int32_t) ctx->get_model().hparams.n_head_kv(il);
    held_counts held(seq_id);
    const std::vector<uint32_t> rows = rows_per_head(cache, seq_id, il, n_head_kv, held);
    for (int32_t h = 0; out != nullptr && h < n_head_kv && h < n_max; ++h) {
        out[h] = (int32_t) rows[h];
    }
    return n_head_kv;
}
