// Small deterministic generators for the memory workloads (same sequences in the guest and natively).
#pragma once

#include <stdint.h>

namespace vmmlab::guest {

// SplitMix64: a good 64-bit mix for seeding and for shuffles.
class SplitMix64 {
public:
    constexpr explicit SplitMix64(uint64_t seed) : state_(seed) {}

    constexpr uint64_t next() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

    // Uniform enough in [0, bound) for bound > 0 (multiply-high, no division).
    uint64_t below(uint64_t bound) {
        __extension__ using Wide = unsigned __int128;
        return static_cast<uint64_t>((static_cast<Wide>(next()) * bound) >> 64);
    }

private:
    uint64_t state_;
};

} // namespace vmmlab::guest
