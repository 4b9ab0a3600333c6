// Internal helpers shared by pyuncomp's native sources (not part of the C API).
#pragma once

#include "llama.h"

#include <cstdint>
#include <functional>
#include <vector>

class llama_kv_cache;
struct uncomp_device;

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

// Truncated matrix entropy of n rows of d values (row r at x + r*stride), k_trunc <= 0: all d.
float uncomp_truncated_entropy(const float * x, int64_t n, int64_t stride, int d, int k_trunc);

// The device-side steps for the cache layer of model layer il of an attached context, when that
// layer's cache lives on a device (or UNCOMP_DEVICE_PATH=1); nullptr: use the host path.
uncomp_device * uncomp_device_for(const llama_context * ctx, int32_t il);

// f(i) for i in [0, n) on every core (the per-head work of a compression: eigen-solves, selections)
void uncomp_parallel_for(size_t n, const std::function<void(size_t)> & f);
