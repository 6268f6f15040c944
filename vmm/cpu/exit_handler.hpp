// Handling one decoded exit: a free function over a value and one context, so tests drive it with
// synthetic exits. Bus lookups take no lock; nothing here allocates on the way of a claimed access.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "bus/bus.hpp"
#include "cpu/exit.hpp"

namespace vmmlab {

// Guest accesses nothing claims: counted, the first few logged, answered as an empty bus would
// (reads return all ones, writes are dropped).
struct UnclaimedAccesses {
    std::atomic<std::uint64_t> pio{0};
    std::atomic<std::uint64_t> mmio{0};
};

// Exits of one vCPU, by kind (the VcpuExit alternative's index). Written by that vCPU's thread only.
struct ExitCounts {
    std::array<std::uint64_t, std::variant_size_v<VcpuExit>> by_kind{};
};
// The name of alternative `index` of VcpuExit: "io-in", "io-out", "mmio-read", ...
const char* exit_kind_name(std::size_t index);

struct ExitContext {
    const PioBus& pio;
    const MmioBus& mmio;
    UnclaimedAccesses& unclaimed;
    unsigned vcpu;
};

ExitAction handle_exit(const VcpuExit& exit, ExitContext& context);

} // namespace vmmlab
