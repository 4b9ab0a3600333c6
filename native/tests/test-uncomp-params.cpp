// Range checks of llama_uncomp_params: every field, its edges, NaN and garbage values.
#include "uncomp.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>

static int n_fail = 0;

#define EXPECT(cond) do { if (!(cond)) { std::fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); ++n_fail; } } while (0)

// the check must reject p and name `field` at the start of its message
static void expect_rejected(const llama_uncomp_params & p, const char * field) {
    const char * msg = llama_uncomp_params_check(&p);
    EXPECT(msg != nullptr);
    if (msg) {
        EXPECT(std::strncmp(msg, field, std::strlen(field)) == 0);
    }
}

int main() {
    const llama_uncomp_params def = llama_uncomp_default_params();
    EXPECT(llama_uncomp_params_check(&def) == nullptr);
    EXPECT(llama_uncomp_params_check(nullptr) != nullptr);

    llama_uncomp_params p = def;
    for (float r : { 0.0f, -0.5f, 1.0001f, 1.5f, NAN, INFINITY }) { p = def; p.ratio = r; expect_rejected(p, "ratio"); }
    for (float r : { 1e-6f, 0.05f, 1.0f }) { p = def; p.ratio = r; EXPECT(llama_uncomp_params_check(&p) == nullptr); }
    for (int m : { -1, (int) LLAMA_UNCOMP_METHOD_COUNT, 1 << 30 }) { p = def; p.method = m; expect_rejected(p, "method"); }
    for (int m = 0; m < LLAMA_UNCOMP_METHOD_COUNT; ++m) {
        p = def; p.method = m;
        EXPECT(llama_uncomp_params_check(&p) == nullptr);
        EXPECT(llama_uncomp_method_name(m) != nullptr);
    }
    EXPECT(llama_uncomp_method_name(-1) == nullptr);
    EXPECT(llama_uncomp_method_name(LLAMA_UNCOMP_METHOD_COUNT) == nullptr);
    EXPECT(std::strcmp(llama_uncomp_method_name(LLAMA_UNCOMP_METHOD_UNCOMP), "uncomp") == 0);
    for (int w : { 0, -3, 4097 }) { p = def; p.window = w; expect_rejected(p, "window"); }
    for (int k : { 0, 2, 4, 257, -1 }) { p = def; p.pool_kernel = k; expect_rejected(p, "pool_kernel"); }
    p = def; p.budget = -1; expect_rejected(p, "budget");
    p = def; p.n_sink = -1; expect_rejected(p, "n_sink");
    p = def; p.n_head_groups = 0; expect_rejected(p, "n_head_groups");

    if (n_fail) {
        std::fprintf(stderr, "%d check(s) failed\n", n_fail);
        return 1;
    }
    std::printf("test-uncomp-params: all checks passed\n");
    return 0;
}
