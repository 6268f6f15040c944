#include "guest/workloads/latency.hpp"

#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/random.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace latency {

void build_cycle(uint64_t* words, size_t n, size_t stride, uint64_t seed) {
    for (size_t i = 0; i < n; ++i)
        words[i * stride] = i;
    SplitMix64 random(seed);
    for (size_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<size_t>(random.below(i)); // j < i: that is what makes it one cycle
        const uint64_t swap = words[i * stride];
        words[i * stride] = words[j * stride];
        words[j * stride] = swap;
    }
}

namespace {

// Follows `loads` pointers from `start`; returns where it ended so the loop cannot be optimised away.
[[gnu::noinline]] const void* chase(const void* start, uint64_t loads) {
    const void* p = start;
    for (uint64_t i = 0; i < loads; ++i)
        p = *static_cast<const void* const*>(p);
    return p;
}

} // namespace
} // namespace latency

int run_latency(const Args& args) {
    constexpr Text kOptions[] = {"size", "loads", "seed"};
    uint64_t size = 0;
    uint64_t loads = 0;
    uint64_t seed = 0;
    if (!args.only(kOptions) || !args.size("size", 64ULL << 20, size) || !args.count("loads", 0, loads) ||
        !args.count("seed", 1, seed))
        return kExitUsage;
    const uint64_t lines = size / latency::kLineBytes;
    if (lines < 2) {
        args.error("size too small: at least two 64-byte lines");
        return kExitUsage;
    }
    if (loads == 0) {
        loads = 2 * lines;
        loads = loads < (1U << 20) ? (1U << 20) : loads;
        loads = loads > (1U << 25) ? (1U << 25) : loads;
    }
    const uint64_t bytes = lines * latency::kLineBytes;
    auto* words = static_cast<uint64_t*>(platform::allocate(static_cast<size_t>(bytes), 4096));
    if (words == nullptr) {
        Line line;
        line.put("size=").put_u64(bytes).put(" does not fit: largest free block ");
        line.put_u64(platform::largest_free_block()).put(" bytes");
        args.error(line.text());
        return kExitUsage;
    }
    constexpr size_t kStride = latency::kLineBytes / sizeof(uint64_t);
    latency::build_cycle(words, static_cast<size_t>(lines), kStride, seed);
    for (size_t i = 0; i < lines; ++i) // indices -> addresses
        words[i * kStride] = reinterpret_cast<uint64_t>(&words[words[i * kStride] * kStride]);

    Line line;
    line.put("latency: ")
        .put_u64(lines)
        .put(" lines of 64 bytes (")
        .put_bytes(bytes)
        .put("), ")
        .put_u64(loads);
    line.put(" dependent loads");
    print_line(line);

    const void* p = latency::chase(words, lines); // one untimed lap: warm caches and TLBs, fault pages in
    const uint64_t start = read_ticks();
    p = latency::chase(p, loads);
    const uint64_t ticks = read_ticks() - start;
    const bool on_cycle =
        p >= static_cast<const void*>(words) && p < static_cast<const void*>(words + lines * kStride);
    platform::release(words);

    const double cycles = static_cast<double>(ticks) / static_cast<double>(loads);
    const double ns = ticks_to_seconds(ticks) * 1e9 / static_cast<double>(loads);
    line.clear();
    line.put("latency: ").put_fixed(ns, 2).put(" ns (").put_fixed(cycles, 1).put(" cycles) per load");
    print_line(line);
    report("latency", "ns_per_load", ResultValue::fixed(ns, 2), "ns");
    report("latency", "cycles_per_load", ResultValue::fixed(cycles, 1), "cycles");
    if (!on_cycle) platform::fail("latency: the pointer chase left the array");
    return kExitOk;
}

} // namespace vmmlab::guest
