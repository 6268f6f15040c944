// The blk workload's latency histogram, here so the host unit tests can check it.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace vmmlab::guest::blk {

inline constexpr unsigned kSubBuckets = 32;
inline constexpr unsigned kSubBits = 5;

// Log-linear: values below 32 exactly, above that 32 buckets per power of two (within 3%). No allocation.
class LatencyHistogram {
public:
    void add(uint64_t value) {
        ++counts_[index(value)];
        ++total_;
        if (value > max_) max_ = value;
    }
    uint64_t max() const { return max_; }
    // The middle of the bucket that holds the p-th fraction of the values (capped at the maximum).
    uint64_t percentile(double p) const {
        if (total_ == 0) return 0;
        auto rank = static_cast<uint64_t>(p * static_cast<double>(total_));
        if (static_cast<double>(rank) < p * static_cast<double>(total_)) ++rank;
        if (rank == 0) rank = 1;
        uint64_t seen = 0;
        for (size_t i = 0; i < kBuckets; ++i) {
            seen += counts_[i];
            if (seen >= rank) {
                const uint64_t middle = (lower(i) + lower(i + 1) - 1) / 2;
                return middle < max_ ? middle : max_;
            }
        }
        return max_;
    }

private:
    static constexpr size_t kBuckets = 64 * kSubBuckets;
    static size_t index(uint64_t v) {
        if (v < kSubBuckets) return static_cast<size_t>(v);
        const unsigned exponent = 63U - static_cast<unsigned>(__builtin_clzll(v)); // >= kSubBits
        const uint64_t sub = (v >> (exponent - kSubBits)) & (kSubBuckets - 1);
        return static_cast<size_t>((exponent - kSubBits + 1) * kSubBuckets + sub);
    }
    static uint64_t lower(size_t i) {
        if (i < kSubBuckets) return i;
        const unsigned exponent = static_cast<unsigned>(i / kSubBuckets) + kSubBits - 1;
        if (exponent >= 63) return ~0ULL;
        return (kSubBuckets + i % kSubBuckets) << (exponent - kSubBits);
    }

    uint64_t counts_[kBuckets] = {};
    uint64_t total_ = 0;
    uint64_t max_ = 0;
};

} // namespace vmmlab::guest::blk
