// Internal helpers shared by pyuncomp's native sources (not part of the C API).
#pragma once

#include "llama.h"
#include "uncomp.h"
#include "ggml-backend.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

class llama_kv_cache;
struct uncomp_device;
struct uncomp_prefill;

// one cache layer of a context's memory
struct uncomp_cache_layer {
    const llama_kv_cache * cache;
    uint32_t               il;
    bool                   is_swa;
};

// The KV caches behind a context's memory with their layers, ordered by model layer; empty when
// the memory is not a KV cache (recurrent, hybrid).
std::vector<uncomp_cache_layer> uncomp_cache_layers(const llama_context * ctx);

// The cache holding model layer il, or nullptr (no such cache layer, or ctx is NULL).
const llama_kv_cache * uncomp_cache_of_layer(const llama_context * ctx, int32_t il);

// The first row layer il of a cache has memory of its own for (uncomp-fit.h; 0: not fitted).
uint32_t uncomp_layer_first_row(const llama_kv_cache * cache, int32_t il);

// Whether any cache layer of the context is fitted (rows below its first row must not be written).
bool uncomp_context_fitted(const llama_context * ctx);

// Truncated matrix entropy of n rows of d values (row r at x + r*stride), k_trunc <= 0: all d.
float uncomp_truncated_entropy(const float * x, int64_t n, int64_t stride, int d, int k_trunc);

// The device-side steps for the cache layer of model layer il of an attached context (the CPU backend's
// for a host cache), unless UNCOMP_DEVICE_PATH=0 keeps a host cache on the host path: nullptr.
uncomp_device * uncomp_device_for(const llama_context * ctx, int32_t il);

// Starts, on the devices holding the cache's layers, the window scoring that compressing seq_id now
// needs (every head of every layer still holding every token, window queries observed), so that it
// runs while the caller works on the host; the next compression of seq_id reads it when the sequence's
// cells and the window queries are still the same. Does nothing when any of that does not hold, for
// recency scoring, or on the host path.
void uncomp_start_scores(const llama_context * ctx, llama_seq_id seq_id);

// The engine's side of a pruned prefill (uncomp-prefill.cpp), for an attached context:
// observe window queries (on: forgets those of layers >= il_clear_from) or stop; 0 or < 0
int32_t uncomp_observe(llama_context * ctx, bool on, int32_t il_clear_from);
// layer il observes its last max(window, n_rows) queries, which uncomp_rank_tokens ranks by;
// n_rows = 0 ends that, leaving it the last `window` as every layer. 0 or < 0.
int32_t uncomp_rank_window(llama_context * ctx, int32_t il, int32_t n_rows);
// the attached context's parameters, nullptr when not attached
const llama_uncomp_params * uncomp_params_of(const llama_context * ctx);
// the context's prefill state, nullptr when not attached
uncomp_prefill * uncomp_prefill_of(const llama_context * ctx);
// the prefill state of the attached context whose graphs run on this scheduler (a graph being built
// knows only that of its context), else nullptr
uncomp_prefill * uncomp_prefill_of_sched(const ggml_backend_sched * sched);
// the next graphs are built afresh (a phase changed), with the callback installed while it has work
void uncomp_refresh_graphs(llama_context * ctx);
// sequence 0's tokens (indices in position order) that n_keep keeps when ranked by the attention of layer
// il's observed queries (its window's, or uncomp_rank_window's) summed over its KV heads, pooled as SnapKV
// does; the observed queries' tokens and the sinks always in. 0 or < 0.
int32_t uncomp_rank_tokens(llama_context * ctx, int32_t il, int64_t n_keep, std::vector<uint32_t> & kept);

// f(i) for i in [0, n) on every core (the per-head work of a compression: eigen-solves, selections)
void uncomp_parallel_for(size_t n, const std::function<void(size_t)> & f);

// UNCOMP_TIMING=1: a step of the engine prints the milliseconds of its parts to stderr when it ends (to
// find where a compression's time goes; not llama's log, which quiet models drop)
struct uncomp_step_timer {
    const char * name;
    const bool   on = std::getenv("UNCOMP_TIMING") != nullptr;
    std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
    std::string  line;

    explicit uncomp_step_timer(const char * name) : name(name) {}
    void step(const char * part) {
        if (!on) return;
        const auto now = std::chrono::steady_clock::now();
        char buf[64];
        snprintf(buf, sizeof(buf), " %s %.1f ms", part, std::chrono::duration<double, std::milli>(now - t).count());
        line += buf;
        t = now;
    }
    ~uncomp_step_timer() {
        if (on && !line.empty()) fprintf(stderr, "uncomp %s:%s\n", name, line.c_str());
    }
};

// UNCOMP_CHECK_FINITE: prints the non-finite K/V values of layers il0.. in cells [c0, c1) (a diagnosis; a no-op
// unless the environment variable is set)
void uncomp_check_finite(llama_context * ctx, const char * where, int32_t il0, uint32_t c0, uint32_t c1);
