// uncomp_parallel_for (uncomp-impl.h): per-head work of a compression spread over the cores.
#include "uncomp-impl.h"

#include <algorithm>
#include <atomic>
#include <thread>

void uncomp_parallel_for(size_t n, const std::function<void(size_t)> & f) {
    const size_t n_threads = std::min<size_t>(n, std::max(1u, std::thread::hardware_concurrency()));
    std::atomic<size_t> next{0};
    auto work = [&] { for (size_t i; (i = next++) < n;) f(i); };
    std::vector<std::thread> workers;
    for (size_t t = 1; t < n_threads; ++t) workers.emplace_back(work);
    work();
    for (auto & w : workers) w.join();
}
