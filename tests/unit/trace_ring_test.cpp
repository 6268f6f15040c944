#include <catch2/catch.hpp>

#include "trace/trace_ring.hpp"

using namespace vmmlab;

namespace {
ExitRecord record_at(std::uint64_t start) {
    ExitRecord record;
    record.start_ns = start;
    record.duration_ns = start * 10;
    return record;
}
} // namespace

TEST_CASE("trace ring: keeps records in order until it is full", "[trace]") {
    TraceRing ring(4);
    CHECK(ring.capacity() == 4);
    CHECK(ring.snapshot().empty());
    for (std::uint64_t i = 1; i <= 3; ++i)
        ring.push(record_at(i));
    const auto records = ring.snapshot();
    REQUIRE(records.size() == 3);
    CHECK(records[0].start_ns == 1);
    CHECK(records[2].start_ns == 3);
    CHECK(records[2].duration_ns == 30);
    CHECK(ring.dropped() == 0);
    CHECK(ring.pushed() == 3);
}

TEST_CASE("trace ring: wraps around, overwriting the oldest and counting them as dropped", "[trace]") {
    TraceRing ring(4);
    for (std::uint64_t i = 1; i <= 11; ++i)
        ring.push(record_at(i));
    CHECK(ring.size() == 4);
    CHECK(ring.pushed() == 11);
    CHECK(ring.dropped() == 7);
    const auto records = ring.snapshot();
    REQUIRE(records.size() == 4);
    for (std::size_t i = 0; i < 4; ++i)
        CHECK(records[i].start_ns == 8 + i); // 8, 9, 10, 11: oldest first

    // Exactly full: no drop yet, order from the start.
    TraceRing exact(3);
    for (std::uint64_t i = 1; i <= 3; ++i)
        exact.push(record_at(i));
    CHECK(exact.dropped() == 0);
    CHECK(exact.snapshot().front().start_ns == 1);
    exact.push(record_at(4));
    CHECK(exact.dropped() == 1);
    CHECK(exact.snapshot().front().start_ns == 2);
    CHECK(exact.snapshot().back().start_ns == 4);

    exact.clear();
    CHECK(exact.size() == 0);
    CHECK(exact.dropped() == 0);
    exact.push(record_at(9));
    CHECK(exact.snapshot().size() == 1);
}

TEST_CASE("trace ring: capacity 0 and 1", "[trace]") {
    TraceRing none(0);
    none.push(record_at(1));
    none.push(record_at(2));
    CHECK(none.size() == 0);
    CHECK(none.dropped() == 2);
    CHECK(none.snapshot().empty());

    TraceRing one(1);
    for (std::uint64_t i = 1; i <= 5; ++i)
        one.push(record_at(i));
    REQUIRE(one.snapshot().size() == 1);
    CHECK(one.snapshot()[0].start_ns == 5);
    CHECK(one.dropped() == 4);
}
