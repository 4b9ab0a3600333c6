// Compression parameters: defaults, range checks and method names.
#include "uncomp.h"

#include <cmath>

static const char * const k_method_names[LLAMA_UNCOMP_METHOD_COUNT] = {
    "full", "streamingllm", "snapkv", "pyramidkv", "uncomp",
};

struct llama_uncomp_params llama_uncomp_default_params(void) {
    llama_uncomp_params p;
    p.method        = LLAMA_UNCOMP_METHOD_UNCOMP;
    p.ratio         = 1.0f;
    p.budget        = 0;
    p.window        = 8;  // the reference code's observation window
    p.pool_kernel   = 7;
    p.n_sink        = 0;
    p.n_head_groups = 2;
    return p;
}

const char * llama_uncomp_method_name(int32_t method) {
    if (method < 0 || method >= LLAMA_UNCOMP_METHOD_COUNT) {
        return nullptr;
    }
    return k_method_names[method];
}

const char * llama_uncomp_params_check(const struct llama_uncomp_params * p) {
    if (p == nullptr) {
        return "params: must not be NULL";
    }
    if (p->method < 0 || p->method >= LLAMA_UNCOMP_METHOD_COUNT) {
        return "method: must be one of full, streamingllm, snapkv, pyramidkv, uncomp";
    }
    // written so that NaN fails too
    if (!(p->ratio > 0.0f && p->ratio <= 1.0f)) {
        return "ratio: must be in (0, 1]";
    }
    if (p->budget < 0) {
        return "budget: must be >= 0 (0 means: use ratio)";
    }
    if (p->window < 1 || p->window > 4096) {
        return "window: must be in [1, 4096]";
    }
    if (p->pool_kernel < 1 || p->pool_kernel > 255 || p->pool_kernel % 2 == 0) {
        return "pool_kernel: must be odd and in [1, 255]";
    }
    if (p->n_sink < 0 || p->n_sink > 4096) {
        return "n_sink: must be in [0, 4096]";
    }
    if (p->n_head_groups < 1 || p->n_head_groups > 256) {
        return "n_head_groups: must be in [1, 256]";
    }
    return nullptr;
}
