#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "trace/histogram.hpp"

using namespace vmmlab;
using H = LatencyHistogram;

namespace {

// The nearest-rank percentile of sorted values, as LatencyHistogram documents it.
std::uint64_t reference_percentile(const std::vector<std::uint64_t>& sorted, double p) {
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size()) / 100.0));
    return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

void check_against_reference(std::vector<std::uint64_t> values) {
    H histogram;
    std::uint64_t sum = 0;
    for (const auto value : values) {
        histogram.record(value);
        sum += value;
    }
    std::ranges::sort(values);
    CHECK(histogram.count() == values.size());
    CHECK(histogram.sum() == sum);
    CHECK(histogram.min() == values.front());
    CHECK(histogram.max() == values.back());
    CHECK(histogram.mean() == Approx(static_cast<double>(sum) / static_cast<double>(values.size())));
    for (const double p : {0.0, 0.1, 1.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 100.0}) {
        const std::uint64_t truth = reference_percentile(values, p);
        const std::uint64_t reported = histogram.percentile(p);
        INFO("p" << p << " truth " << truth << " reported " << reported);
        // The documented bound: |reported - truth| <= truth / 32.
        const std::uint64_t error = reported > truth ? reported - truth : truth - reported;
        CHECK(error * 32 <= truth);
        if (truth < H::kSubBuckets) CHECK(reported == truth);
    }
    CHECK(histogram.percentile(0) == values.front());
    CHECK(histogram.percentile(100) == values.back());
}

} // namespace

TEST_CASE("histogram: buckets tile the value range with at most 1/16 relative width", "[trace]") {
    for (std::uint64_t value = 0; value < H::kSubBuckets; ++value) {
        CHECK(H::bucket_index(value) == value);
        CHECK(H::bucket_width(value) == 1);
    }
    CHECK(H::bucket_lower(0) == 0);
    for (std::size_t i = 0; i + 1 < H::kBucketCount; ++i) {
        INFO("bucket " << i);
        REQUIRE(H::bucket_lower(i + 1) == H::bucket_lower(i) + H::bucket_width(i));
        REQUIRE(H::bucket_index(H::bucket_lower(i)) == i);
        REQUIRE(H::bucket_index(H::bucket_lower(i) + H::bucket_width(i) - 1) == i);
        if (i >= H::kSubBuckets) REQUIRE(H::bucket_width(i) * 16 <= H::bucket_lower(i));
    }
    const std::size_t last = H::kBucketCount - 1;
    CHECK(H::bucket_lower(last) + H::bucket_width(last) - 1 == H::kMaxTrackable);
    CHECK(H::bucket_index(H::kMaxTrackable) == last);
    CHECK(H::bucket_index(H::kMaxTrackable + 1) == last);
    CHECK(H::bucket_index(UINT64_MAX) == last);
    // A few by hand: 16..31 exact, 32 and 33 share a bucket of width 2, 1000 sits in [992, 1024).
    CHECK(H::bucket_index(31) == 31);
    CHECK(H::bucket_index(32) == H::bucket_index(33));
    CHECK(H::bucket_index(33) != H::bucket_index(34));
    CHECK(H::bucket_lower(H::bucket_index(1000)) == 992);
    CHECK(H::bucket_width(H::bucket_index(1000)) == 32);
}

TEST_CASE("histogram: percentiles match a sorted-array reference within 1/32 on random data", "[trace]") {
    std::mt19937_64 random(20240611);
    SECTION("uniform nanoseconds up to 1 ms") {
        std::uniform_int_distribution<std::uint64_t> uniform(0, 1'000'000);
        std::vector<std::uint64_t> values(20000);
        for (auto& value : values)
            value = uniform(random);
        check_against_reference(values);
    }
    SECTION("log-uniform over the whole trackable range") {
        std::uniform_real_distribution<double> exponent(0.0, 40.0);
        std::vector<std::uint64_t> values(20000);
        for (auto& value : values)
            value = static_cast<std::uint64_t>(std::exp2(exponent(random)));
        check_against_reference(values);
    }
    SECTION("exit-like: a tight mode around 1.2 us and a long tail") {
        std::normal_distribution<double> fast(1200.0, 60.0);
        std::exponential_distribution<double> slow(1.0 / 50000.0);
        std::bernoulli_distribution tail(0.02);
        std::vector<std::uint64_t> values(50000);
        for (auto& value : values)
            value = static_cast<std::uint64_t>(std::max(0.0, tail(random) ? slow(random) : fast(random)));
        check_against_reference(values);
    }
    SECTION("small exact values") {
        std::uniform_int_distribution<std::uint64_t> small(0, 15);
        std::vector<std::uint64_t> values(1000);
        for (auto& value : values)
            value = small(random);
        check_against_reference(values);
    }
    SECTION("a single value") {
        check_against_reference({777});
    }
}

TEST_CASE("histogram: values above the trackable range keep exact min, max and sum", "[trace]") {
    H histogram;
    histogram.record(5);
    histogram.record(H::kMaxTrackable + 1000);
    CHECK(histogram.count() == 2);
    CHECK(histogram.max() == H::kMaxTrackable + 1000);
    CHECK(histogram.sum() == H::kMaxTrackable + 1005);
    CHECK(histogram.percentile(100) == H::kMaxTrackable + 1000);
    CHECK(histogram.percentile(50) == 5);
    CHECK(histogram.bucket_count(H::kBucketCount - 1) == 1);
}

TEST_CASE("histogram: empty answers zero everywhere", "[trace]") {
    H histogram;
    CHECK(histogram.count() == 0);
    CHECK(histogram.min() == 0);
    CHECK(histogram.max() == 0);
    CHECK(histogram.mean() == 0.0);
    CHECK(histogram.percentile(50) == 0);
    CHECK(histogram.percentile(100) == 0);
}

TEST_CASE("histogram: merge equals recording everything into one histogram", "[trace]") {
    std::mt19937_64 random(7);
    std::uniform_int_distribution<std::uint64_t> values(0, 5'000'000);
    H first, second, both;
    for (int i = 0; i < 5000; ++i) {
        const auto value = values(random);
        (i % 3 == 0 ? first : second).record(value);
        both.record(value);
    }
    H merged = first;
    merged.merge(second);
    CHECK(merged.count() == both.count());
    CHECK(merged.sum() == both.sum());
    CHECK(merged.min() == both.min());
    CHECK(merged.max() == both.max());
    for (std::size_t i = 0; i < H::kBucketCount; ++i)
        REQUIRE(merged.bucket_count(i) == both.bucket_count(i));
    for (const double p : {50.0, 90.0, 99.0})
        CHECK(merged.percentile(p) == both.percentile(p));

    H empty;
    merged.merge(empty);
    CHECK(merged.count() == both.count());
    CHECK(merged.min() == both.min());
    empty.merge(first);
    CHECK(empty.min() == first.min());
    CHECK(empty.count() == first.count());
    merged.reset();
    CHECK(merged.count() == 0);
    CHECK(merged.bucket_count(H::bucket_index(both.max())) == 0);
}

TEST_CASE("histogram: durations print with units and three significant digits", "[trace]") {
    CHECK(format_nanoseconds(850) == "850 ns");
    CHECK(format_nanoseconds(1234) == "1.23 us");
    CHECK(format_nanoseconds(12345) == "12.3 us");
    CHECK(format_nanoseconds(4'560'000) == "4.56 ms");
    CHECK(format_nanoseconds(1.2e9) == "1.20 s");
}
