// Parses a KVM binary stats file (KVM_GET_STATS_FD's content) from arbitrary bytes. The parser must
// never read outside the input, and either succeed with values shaped like their descriptors or fail with
// a message; whatever parses must also survive difference, formatting and JSON.
#include <cstddef>
#include <cstdint>
#include <span>

#include "trace/kvm_stats.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto bytes = std::as_bytes(std::span(data, size));
    const auto layout = vmmlab::parse_kvm_stats_layout(bytes);
    if (!layout && layout.error().message.empty()) __builtin_trap();
    const auto stats = vmmlab::parse_kvm_stats(bytes);
    if (!stats) {
        if (stats.error().message.empty()) __builtin_trap();
        return 0;
    }
    if (!layout || layout->descriptors.size() != stats->layout.descriptors.size()) __builtin_trap();
    const auto& descriptors = stats->layout.descriptors;
    const auto& values = stats->snapshot.values;
    if (values.size() != descriptors.size()) __builtin_trap();
    for (std::size_t i = 0; i < values.size(); ++i)
        if (values[i].size() != descriptors[i].size || descriptors[i].name.empty()) __builtin_trap();

    const auto same = vmmlab::kvm_stats_difference(stats->layout, stats->snapshot, stats->snapshot);
    for (std::size_t i = 0; i < descriptors.size(); ++i)
        if (descriptors[i].type == vmmlab::KvmStatType::Cumulative)
            for (const std::uint64_t value : same.values[i])
                if (value != 0) __builtin_trap();
    if (vmmlab::format_kvm_stats(stats->layout, stats->snapshot).empty()) __builtin_trap();
    (void)vmmlab::kvm_stats_json(stats->layout, stats->snapshot).dump();
    return 0;
}
