#include "trace/histogram.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace vmmlab {

std::uint64_t LatencyHistogram::bucket_lower(std::size_t index) noexcept {
    if (index >= kBucketCount) index = kBucketCount - 1;
    if (index < kSubBuckets) return index;
    const std::uint64_t group = index / kSubBuckets;
    const std::uint64_t sub = index % kSubBuckets;
    return (kSubBuckets + sub) << (group - 1);
}

std::uint64_t LatencyHistogram::bucket_width(std::size_t index) noexcept {
    if (index >= kBucketCount) index = kBucketCount - 1;
    if (index < kSubBuckets) return 1;
    return std::uint64_t{1} << (index / kSubBuckets - 1);
}

void LatencyHistogram::merge(const LatencyHistogram& other) noexcept {
    if (other.count_ == 0) return;
    for (std::size_t i = 0; i < kBucketCount; ++i)
        buckets_[i] += other.buckets_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
}

std::uint64_t LatencyHistogram::percentile(double p) const noexcept {
    if (count_ == 0) return 0;
    if (!(p > 0.0)) return min_; // also NaN
    if (p >= 100.0) return max_;
    const double wanted = std::ceil(p * static_cast<double>(count_) / 100.0);
    const std::uint64_t rank = std::clamp<std::uint64_t>(static_cast<std::uint64_t>(wanted), 1, count_);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBucketCount; ++i) {
        seen += buckets_[i];
        if (seen >= rank) {
            const std::uint64_t middle = bucket_lower(i) + (bucket_width(i) - 1) / 2;
            return std::clamp(middle, min_, max_);
        }
    }
    return max_; // unreachable: the buckets add up to count_
}

std::string format_nanoseconds(double nanoseconds) {
    const double magnitude = std::fabs(nanoseconds);
    const auto three_digits = [](double value, const char* unit) {
        if (std::fabs(value) >= 100.0) return fmt::format("{:.0f} {}", value, unit);
        if (std::fabs(value) >= 10.0) return fmt::format("{:.1f} {}", value, unit);
        return fmt::format("{:.2f} {}", value, unit);
    };
    if (magnitude < 1e3) return fmt::format("{:.0f} ns", nanoseconds);
    if (magnitude < 1e6) return three_digits(nanoseconds / 1e3, "us");
    if (magnitude < 1e9) return three_digits(nanoseconds / 1e6, "ms");
    return three_digits(nanoseconds / 1e9, "s");
}

} // namespace vmmlab
