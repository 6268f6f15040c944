#include "guest/workloads/gups.hpp"

#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/random.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace gups {
namespace {

// Independent update streams in flight at once, so that the CPU can overlap their cache misses.
constexpr unsigned kStreams = 32;

} // namespace

void init_table(uint64_t* table, uint64_t entries) {
    for (uint64_t i = 0; i < entries; ++i)
        table[i] = i;
}

void update_table(uint64_t* table, uint64_t entries, uint64_t updates, uint64_t seed) {
    const uint64_t mask = entries - 1;
    uint64_t random[kStreams];
    SplitMix64 seeds(seed);
    for (unsigned s = 0; s < kStreams; ++s)
        random[s] = seeds.next() | 1; // 0 is a fixed point of the generator
    const uint64_t rounds = updates / kStreams;
    for (uint64_t round = 0; round < rounds; ++round) {
        for (unsigned s = 0; s < kStreams; ++s) {
            random[s] = next_random(random[s]);
            table[random[s] & mask] ^= random[s];
        }
    }
    for (uint64_t rest = rounds * kStreams; rest < updates; ++rest) {
        random[0] = next_random(random[0]);
        table[random[0] & mask] ^= random[0];
    }
}

uint64_t count_errors(const uint64_t* table, uint64_t entries) {
    uint64_t errors = 0;
    for (uint64_t i = 0; i < entries; ++i)
        errors += table[i] != i ? 1 : 0;
    return errors;
}

} // namespace gups

int run_gups(const Args& args) {
    constexpr Text kOptions[] = {"size", "updates", "seed"};
    uint64_t size = 0;
    uint64_t updates = 0;
    uint64_t seed = 0;
    if (!args.only(kOptions) || !args.size("size", 64ULL << 20, size) || !args.count("updates", 0, updates) ||
        !args.count("seed", 1, seed))
        return kExitUsage;
    uint64_t bytes = 1;
    while (bytes <= size / 2)
        bytes <<= 1; // the largest power of two <= size
    if (bytes < 1024) {
        args.error("size too small: the table needs at least 1K");
        return kExitUsage;
    }
    const uint64_t entries = bytes / sizeof(uint64_t);
    if (updates == 0) updates = 4 * entries; // as in HPCC
    auto* table = static_cast<uint64_t*>(platform::allocate(static_cast<size_t>(bytes), 4096));
    if (table == nullptr) {
        Line line;
        line.put("size=").put_u64(bytes).put(" does not fit: largest free block ");
        line.put_u64(platform::largest_free_block()).put(" bytes");
        args.error(line.text());
        return kExitUsage;
    }
    Line line;
    line.put("gups: table of ")
        .put_u64(entries)
        .put(" entries (")
        .put_bytes(bytes)
        .put("), ")
        .put_u64(updates);
    line.put(" updates");
    print_line(line);

    gups::init_table(table, entries);
    const uint64_t start = read_ticks();
    gups::update_table(table, entries, updates, seed);
    const uint64_t ticks = read_ticks() - start;
    gups::update_table(table, entries, updates, seed); // XOR again: back to table[i] == i
    const uint64_t errors = gups::count_errors(table, entries);
    platform::release(table);

    const double seconds = ticks_to_seconds(ticks == 0 ? 1 : ticks);
    const double giga_updates = static_cast<double>(updates) / seconds / 1e9;
    line.clear();
    line.put("gups: ").put_fixed(giga_updates, 6).put(" GUPS (").put_fixed(seconds * 1e3, 1).put(" ms, ");
    line.put_fixed(seconds * 1e9 / static_cast<double>(updates), 2).put(" ns per update), verification ");
    line.put(errors == 0 ? "ok" : "FAILED");
    print_line(line);
    report("gups", "gups", ResultValue::fixed(giga_updates, 6), "GUPS");
    report("gups", "errors", ResultValue::whole(errors), "count");
    return errors == 0 ? kExitOk : kExitFailed;
}

} // namespace vmmlab::guest
