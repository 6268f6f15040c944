// A latency histogram with log-linear buckets, cheap enough to update on every VM exit.
//
// Buckets: values below 16 each have their own bucket (exact). Above that, every power of two
// [2^k, 2^(k+1)) (k >= 4) is split into 16 equal sub-buckets of width 2^(k-4). A bucket is therefore at
// most 1/16 of its lower bound wide. Values are meant to be nanoseconds; every value up to
// kMaxTrackable = 2^40 - 1 (about 18 minutes) has a bucket, larger ones are counted in the last bucket.
// count, sum, min and max are exact for every value.
//
// percentile(p) uses the nearest-rank definition: the smallest recorded value v such that at least p% of
// all recorded values are <= v (rank = ceil(p / 100 * count), at least 1). The histogram finds the
// bucket holding that rank and answers the middle of the bucket, clamped to [min, max]. So for a true
// answer t <= kMaxTrackable the reported value r satisfies |r - t| <= t / 32 (3.125%); values below 16
// are exact. percentile(0) is min() and percentile(100) is max(), both exact.
//
// Threading: single writer, no locks, no atomics. record() is meant for one vCPU thread; other threads
// read (or merge) only after that thread has been joined or otherwise synchronised with. The buckets live
// inside the object (no allocation, ever): about 4.7 KiB each.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

namespace vmmlab {

class LatencyHistogram {
public:
    static constexpr unsigned kSubBucketBits = 4;
    static constexpr std::uint64_t kSubBuckets = std::uint64_t{1} << kSubBucketBits; // 16
    static constexpr unsigned kMaxValueBits = 40;
    static constexpr std::uint64_t kMaxTrackable = (std::uint64_t{1} << kMaxValueBits) - 1;
    // Group 0 holds the exact values [0, 16); group g >= 1 holds [2^(g+3), 2^(g+4)).
    static constexpr std::size_t kBucketCount = (kMaxValueBits - kSubBucketBits + 1) * kSubBuckets; // 592

    // O(1): a count-leading-zeros, a shift, and five plain updates. Never allocates, never fails.
    void record(std::uint64_t value) noexcept {
        ++buckets_[bucket_index(value)];
        ++count_;
        sum_ += value;
        if (value < min_) min_ = value;
        if (value > max_) max_ = value;
    }

    // Adds every value `other` recorded, as if they had been recorded here.
    void merge(const LatencyHistogram& other) noexcept;
    void reset() noexcept { *this = LatencyHistogram{}; }

    std::uint64_t count() const noexcept { return count_; }
    std::uint64_t sum() const noexcept { return sum_; } // wraps after 2^64 ns (584 years)
    double mean() const noexcept {
        return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_);
    }
    std::uint64_t min() const noexcept { return count_ == 0 ? 0 : min_; } // 0 when empty
    std::uint64_t max() const noexcept { return max_; }                   // 0 when empty
    // p in [0, 100] (clamped); 0 when empty. See the header comment for the error bound.
    std::uint64_t percentile(double p) const noexcept;

    // Bucket arithmetic, public so tests and exporters can reason about it.
    static constexpr std::size_t bucket_index(std::uint64_t value) noexcept {
        if (value > kMaxTrackable) return kBucketCount - 1;
        if (value < kSubBuckets) return static_cast<std::size_t>(value);
        const auto top_bit = static_cast<unsigned>(std::bit_width(value)) - 1; // >= kSubBucketBits
        const unsigned shift = top_bit - kSubBucketBits;
        const std::uint64_t group = shift + 1;
        const std::uint64_t sub = (value >> shift) - kSubBuckets; // the 4 bits below the top bit
        return static_cast<std::size_t>(group * kSubBuckets + sub);
    }
    static std::uint64_t bucket_lower(std::size_t index) noexcept; // first value of the bucket
    static std::uint64_t bucket_width(std::size_t index) noexcept; // number of values it holds
    std::uint64_t bucket_count(std::size_t index) const noexcept {
        return index < kBucketCount ? buckets_[index] : 0;
    }

private:
    std::array<std::uint64_t, kBucketCount> buckets_{};
    std::uint64_t count_ = 0;
    std::uint64_t sum_ = 0;
    std::uint64_t min_ = UINT64_MAX;
    std::uint64_t max_ = 0;
};

// "850 ns", "12.3 us", "4.56 ms", "1.20 s": three significant digits, for tables.
std::string format_nanoseconds(double nanoseconds);

} // namespace vmmlab
