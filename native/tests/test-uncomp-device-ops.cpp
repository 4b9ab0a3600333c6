// The engine's device steps (uncomp-device.h: window attention mass, key Gram matrices, compaction of
// kept rows) on every ggml device present (the CPU here; CUDA too in a CUDA build), against references
// computed here in double precision from the same random inputs. Every step runs several times in one
// uncomp_device on fresh inputs of different sizes (its allocator reuses buffers: stale values would
// show), for f16 and q8_0 storage; the rows compaction must not write are poisoned and must stay as
// they were, bit for bit.
//
//     test-uncomp-device-ops        (prints "all checks passed", exit status 1 on a failure)
#include "uncomp-device.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

static int n_fail = 0;

#define EXPECT(cond, ...) do { if (!(cond)) { std::fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond); \
    std::fprintf(stderr, __VA_ARGS__); std::fprintf(stderr, "\n"); ++n_fail; } } while (0)

namespace {

constexpr int64_t k_head_dim  = 64;
constexpr int64_t k_n_head_kv = 3;
constexpr int64_t k_n_embd    = k_head_dim * k_n_head_kv;
constexpr int64_t k_gqa       = 2; // query heads per KV head of the score jobs

// one K-like storage [n_embd, kv_size, 1] on a device, with its host copy (raw bytes and as floats)
struct storage {
    ggml_context *        ctx    = nullptr;
    ggml_backend_buffer_t buffer = nullptr;
    ggml_tensor *         t      = nullptr;
    std::vector<uint8_t>  bytes;
    std::vector<float>    values; // [kv_size][n_embd], dequantised

    storage(ggml_backend_dev_t dev, ggml_type type, int64_t kv_size, std::mt19937 & rng) {
        ggml_init_params ip = { ggml_tensor_overhead() * 2, nullptr, true };
        ctx = ggml_init(ip);
        t = ggml_new_tensor_3d(ctx, type, k_n_embd, kv_size, 1);
        buffer = ggml_backend_alloc_ctx_tensors_from_buft(ctx, ggml_backend_dev_buffer_type(dev));
        refill(rng);
    }
    // fresh random rows (a round's inputs; the last compaction left poisoned rows behind)
    void refill(std::mt19937 & rng) {
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> f(k_n_embd * t->ne[1]);
        for (auto & v : f) v = normal(rng);
        bytes.resize(ggml_nbytes(t));
        ggml_quantize_chunk(t->type, f.data(), bytes.data(), 0, t->ne[1], k_n_embd, nullptr);
        ggml_backend_tensor_set(t, bytes.data(), 0, bytes.size());
        values.resize(f.size());
        ggml_get_type_traits(t->type)->to_float(bytes.data(), values.data(), (int64_t) values.size());
    }
    ~storage() {
        ggml_backend_buffer_free(buffer);
        ggml_free(ctx);
    }
    const float * row(int64_t cell, int64_t h) const { return &values[cell * k_n_embd + h * k_head_dim]; }
};

// the larger of worst and e, NaN counting as infinitely wrong (std::max would drop it)
double worse(double worst, double e) {
    return std::isnan(e) ? INFINITY : std::max(worst, e);
}

// n distinct cells of [0, kv_size), increasing
std::vector<uint32_t> random_cells(int64_t n, int64_t kv_size, std::mt19937 & rng) {
    std::vector<uint32_t> all(kv_size);
    for (int64_t i = 0; i < kv_size; ++i) all[i] = (uint32_t) i;
    std::shuffle(all.begin(), all.end(), rng);
    all.resize(n);
    std::sort(all.begin(), all.end());
    return all;
}

// a job's window queries (k_gqa per KV head of the storage), each value normal(0, q_sigma)
void set_queries(uncomp_score_job & job, int64_t wq, std::mt19937 & rng, float q_sigma) {
    job.wq = wq;
    job.n_head = k_gqa * k_n_head_kv;
    job.scale = 1.0f / std::sqrt((float) k_head_dim);
    std::normal_distribution<float> normal(0.0f, q_sigma);
    job.q.resize(job.n_head * wq * k_head_dim);
    for (auto & v : job.q) v = normal(rng);
}

void check_attention_mass(uncomp_device & dev, const storage & s, std::mt19937 & rng, int64_t kv_size, int round) {
    const int64_t gqa = k_gqa, wq = 3 + round;
    std::vector<std::vector<uint32_t>> cells(k_n_head_kv);
    uncomp_score_job job;
    job.keys = { s.t, 0, k_head_dim, {} };
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        cells[h] = random_cells(wq + 5 + (int64_t) (rng() % (kv_size - wq - 5)), kv_size, rng);
    }
    for (const auto & c : cells) job.keys.cells.push_back(&c);
    if (round == 1) { // every head holds the same cells: the batched product over gathered rows
        job.keys.cells.assign(k_n_head_kv, &cells[0]);
    }
    if (round == 2) { // every head holds the same consecutive cells (a prompt just evaluated): f16 rows read in place
        const int64_t n = (int64_t) cells[0].size(), first = (int64_t) (rng() % (kv_size - n + 1));
        std::iota(cells[0].begin(), cells[0].end(), (uint32_t) first);
        job.keys.cells.assign(k_n_head_kv, &cells[0]);
    }
    set_queries(job, wq, rng, 1.0f);

    const auto got = dev.attention_mass({ job });
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        const std::vector<uint32_t> & mine = *job.keys.cells[h];
        const int64_t n_h = (int64_t) mine.size();
        std::vector<double> want(n_h, 0.0);
        for (int64_t t = 0; t < wq; ++t) {
            for (int64_t qh = h * gqa; qh < (h + 1) * gqa; ++qh) {
                const float * q = &job.q[(qh * wq + t) * k_head_dim];
                const int64_t visible = n_h - wq + t + 1; // causal inside the window
                std::vector<double> logit(visible);
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j < visible; ++j) {
                    const float * k = s.row(mine[j], h);
                    double dot = 0.0;
                    for (int64_t d = 0; d < k_head_dim; ++d) dot += (double) q[d] * k[d];
                    logit[j] = dot * job.scale;
                    mx = std::max(mx, logit[j]);
                }
                for (auto & l : logit) sum += (l = std::exp(l - mx));
                for (int64_t j = 0; j < visible; ++j) want[j] += logit[j] / sum;
            }
        }
        EXPECT((int64_t) got[0][h].size() == n_h, "head %lld: %zu values for %lld cells", (long long) h, got[0][h].size(), (long long) n_h);
        double worst = 0.0;
        for (int64_t j = 0; j < std::min<int64_t>(n_h, (int64_t) got[0][h].size()); ++j) {
            worst = worse(worst, std::fabs(got[0][h][j] - want[j]) / (1e-3 + std::fabs(want[j])));
        }
        EXPECT(worst < 2e-2, "attention mass, %s, head %lld: relative error %g", ggml_type_name(s.t->type), (long long) h, worst);
    }
}

// Logits far beyond f16's range (|q·k| up to ~1e5; the 8B-shaped random model's layer 8 at 32k gave such
// keys and queries): cuBLAS's default f16 accumulation overflowed there and every window score came back
// NaN on CUDA (session 38). The mass of each window row still sums to 1, so each head's total is wq·gqa.
void check_attention_mass_range(uncomp_device & dev, const storage & s, std::mt19937 & rng, int64_t kv_size) {
    const int64_t gqa = k_gqa, wq = 4, n = kv_size / 2;
    std::vector<uint32_t> cells(n);
    std::iota(cells.begin(), cells.end(), (uint32_t) (kv_size - n)); // consecutive: f16 rows read in place
    uncomp_score_job job;
    job.keys = { s.t, 0, k_head_dim, std::vector<const std::vector<uint32_t> *>(k_n_head_kv, &cells) };
    set_queries(job, wq, rng, 4000.0f);
    const auto got = dev.attention_mass({ job });
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        double total = 0.0;
        for (float v : got[0][h]) total += v; // a NaN or inf makes the total so
        EXPECT(std::fabs(total - (double) (wq * gqa)) < 1e-2, "attention mass, %s, large logits, head %lld: total %g, want %lld",
               ggml_type_name(s.t->type), (long long) h, total, (long long) (wq * gqa));
    }
}

// min_cells: the fewest cells a head holds (at least 2)
void check_key_gram(uncomp_device & dev, const storage & s, std::mt19937 & rng, int64_t kv_size, int round, int64_t min_cells = 2) {
    std::vector<std::vector<uint32_t>> cells(k_n_head_kv);
    uncomp_head_cells job = { s.t, 0, k_head_dim, {} };
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        cells[h] = random_cells(min_cells + (int64_t) (rng() % (kv_size - min_cells)), kv_size, rng);
    }
    cells[1] = cells[0]; // two heads with equal lists (the engine shares one then): one upload, two results
    for (const auto & c : cells) job.cells.push_back(&c);
    job.cells[2] = nullptr; // a head not part of the step
    const bool shared = round == 1; // every head holds the same cells (a prompt just evaluated): the batched product
    if (shared) {
        job.cells.assign(k_n_head_kv, &cells[0]);
        for (auto & c : cells) c = cells[0];
    }
    const auto got = dev.key_gram({ job });
    for (int64_t h = 0; h < (shared ? k_n_head_kv : 2); ++h) {
        const int64_t n = (int64_t) cells[h].size();
        std::vector<double> mean(k_head_dim, 0.0), z(n * k_head_dim), want(k_head_dim * k_head_dim, 0.0);
        for (int64_t i = 0; i < n; ++i) for (int64_t d = 0; d < k_head_dim; ++d) mean[d] += s.row(cells[h][i], h)[d] / n;
        for (int64_t i = 0; i < n; ++i) {
            double norm = 0.0;
            for (int64_t d = 0; d < k_head_dim; ++d) norm += std::pow(z[i * k_head_dim + d] = s.row(cells[h][i], h)[d] - mean[d], 2);
            for (int64_t d = 0; d < k_head_dim; ++d) z[i * k_head_dim + d] /= std::sqrt(norm);
        }
        for (int64_t i = 0; i < n; ++i)
            for (int64_t a = 0; a < k_head_dim; ++a)
                for (int64_t b = 0; b < k_head_dim; ++b) want[a * k_head_dim + b] += z[i * k_head_dim + a] * z[i * k_head_dim + b];
        EXPECT(got[0][h].size() == want.size(), "gram head %lld: %zu values", (long long) h, got[0][h].size());
        double worst = 0.0;
        for (size_t i = 0; i < std::min(want.size(), got[0][h].size()); ++i) worst = worse(worst, std::fabs(got[0][h][i] - want[i]));
        EXPECT(worst < 1e-3 * n, "key gram, %s, head %lld (%lld rows): abs error %g", ggml_type_name(s.t->type), (long long) h, (long long) n, worst);
    }
    EXPECT(shared || got[0][2].empty(), "a head not part of the step got %zu values", got[0][2].size());
}

void check_compact(uncomp_device & dev, const storage & s, std::mt19937 & rng, int64_t kv_size) {
    const size_t row_bytes  = s.t->nb[1];
    const size_t head_bytes = ggml_row_size(s.t->type, k_head_dim);
    std::vector<std::vector<uint32_t>> cells(k_n_head_kv);
    size_t n_kept = 0;
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        cells[h] = random_cells(1 + (int64_t) (rng() % (kv_size / 2)), kv_size, rng);
        n_kept = std::max(n_kept, cells[h].size());
    }
    // the rows end at n_kept, which another layer's longest head may set beyond this one's
    n_kept = std::min<size_t>((size_t) kv_size, n_kept + rng() % 8);
    // poison every byte that is neither a source nor a destination (0xFF: a NaN in f16, -0.0078 in the
    // q8_0 scale's f16): those must come back as they went
    std::vector<uint8_t> before = s.bytes;
    std::vector<char> used(kv_size * k_n_head_kv, 0);
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        for (uint32_t c : cells[h]) used[c * k_n_head_kv + h] = 1;
        for (size_t r = n_kept - cells[h].size(); r < n_kept; ++r) used[r * k_n_head_kv + h] = 1;
    }
    for (int64_t c = 0; c < kv_size; ++c)
        for (int64_t h = 0; h < k_n_head_kv; ++h)
            if (!used[c * k_n_head_kv + h]) std::memset(&before[c * row_bytes + h * head_bytes], 0xFF, head_bytes);
    ggml_backend_tensor_set(s.t, before.data(), 0, before.size());

    uncomp_head_cells job = { s.t, 0, k_head_dim, {} };
    for (const auto & c : cells) job.cells.push_back(&c);
    const bool moved = dev.compact({ job }, n_kept);
    EXPECT(moved, "compact refused %s storage", ggml_type_name(s.t->type));
    std::vector<uint8_t> after(before.size());
    ggml_backend_tensor_get(s.t, after.data(), 0, after.size());
    std::vector<uint8_t> want = before;
    for (int64_t h = 0; h < k_n_head_kv; ++h) {
        const size_t first = n_kept - cells[h].size();
        for (size_t i = 0; i < cells[h].size(); ++i) {
            std::memcpy(&want[(first + i) * row_bytes + h * head_bytes], &before[cells[h][i] * row_bytes + h * head_bytes], head_bytes);
        }
    }
    int64_t wrong = 0;
    for (int64_t c = 0; c < kv_size; ++c)
        for (int64_t h = 0; h < k_n_head_kv; ++h)
            wrong += std::memcmp(&after[c * row_bytes + h * head_bytes], &want[c * row_bytes + h * head_bytes], head_bytes) != 0;
    EXPECT(wrong == 0, "compact, %s: %lld of %lld head rows differ from the expected bytes", ggml_type_name(s.t->type),
           (long long) wrong, (long long) (kv_size * k_n_head_kv));
}

} // namespace

int main() {
    ggml_backend_load_all();
    int n_devices = 0;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const auto type = ggml_backend_dev_type(dev);
        if (type != GGML_BACKEND_DEVICE_TYPE_CPU && type != GGML_BACKEND_DEVICE_TYPE_GPU) {
            continue;
        }
        ++n_devices;
        std::printf("device %s (%s)\n", ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
        std::mt19937 rng(1234 + (unsigned) i);
        for (ggml_type type : { GGML_TYPE_F16, GGML_TYPE_Q8_0 }) {
            // a second, larger round: the allocator's buffers grow (and each uncomp_device takes the
            // staging memory the one before left); the third: Gram sums over several chunks of rows
            // (k_gram_chunk), the last one short
            for (int64_t kv_size : { 96, 300, 1300 }) {
                storage s(dev, type, kv_size, rng);
                uncomp_device d(s.t);
                for (int round = 0; round < 3; ++round) {
                    if (round > 0) s.refill(rng);
                    check_attention_mass(d, s, rng, kv_size, round);
                    check_key_gram(d, s, rng, kv_size, round);
                    check_compact(d, s, rng, kv_size);
                }
                s.refill(rng);
                check_attention_mass_range(d, s, rng, kv_size);
                std::printf("  %s, %lld cells: 3 rounds of scores, Gram matrices, compaction; scores of large logits\n", ggml_type_name(type), (long long) kv_size);
            }
        }
        // over 65535 rows per head: a GPU kernel that puts rows on a grid's y or z dimension stops there
        // (a 64k prompt's Gram graph aborted on CUDA); the CPU has no such limit and is spared the time
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU) {
            storage s(dev, GGML_TYPE_F16, 70000, rng);
            uncomp_device d(s.t);
            for (int round = 0; round < 2; ++round) {
                check_key_gram(d, s, rng, 70000, round, 66000);
            }
            std::printf("  f16, 70000 cells, over 65535 per head: Gram matrices, per head and batched\n");
        }
    }
    if (n_devices == 0) {
        std::fprintf(stderr, "no device\n");
        return 1;
    }
    if (n_fail > 0) {
        std::fprintf(stderr, "%d checks failed\n", n_fail);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
