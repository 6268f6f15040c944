#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "guest/abi/boot_abi.hpp"
#include "guest/kernel/memory_map.hpp"

using vmmlab::abi::MemoryRange;
using vmmlab::abi::MemoryType;
using vmmlab::guest::FreeMemory;

namespace {

constexpr uint64_t kMiB = 1ULL << 20;

bool overlaps(uint64_t a, uint64_t a_size, uint64_t b, uint64_t b_size) {
    return a < b + b_size && b < a + a_size;
}

} // namespace

TEST_CASE("guest memory excludes low memory, the image and reserved ranges", "[guest][memory]") {
    const MemoryRange ranges[] = {
        {0, 256 * kMiB, MemoryType::Usable, 0},
        {0x1000, 0x1000, MemoryType::Reserved, 0},       // GDT
        {100 * kMiB, 4 * kMiB, MemoryType::Reserved, 0}, // stacks, page tables
        {255 * kMiB, 1 * kMiB, MemoryType::Reserved, 0}, // at the top
    };
    FreeMemory memory;
    memory.build(ranges, 4, 0x200000, 0x20d000);
    CHECK(memory.usable_bytes() == 256 * kMiB);
    CHECK(memory.free_bytes() == 256 * kMiB - 1 * kMiB - 0xd000 - 4 * kMiB - 1 * kMiB);
    CHECK(memory.largest_block() == 255 * kMiB - 104 * kMiB);

    // Everything handed out stays clear of what is not usable, and nothing is handed out twice.
    std::vector<uint64_t> handed_out;
    for (int i = 0; i < 6; ++i) {
        const uint64_t address = memory.allocate(40 * kMiB, 4096);
        REQUIRE(address != 0);
        CHECK(address % 4096 == 0);
        CHECK(address >= FreeMemory::kLowLimit);
        CHECK_FALSE(overlaps(address, 40 * kMiB, 0x200000, 0xd000));
        CHECK_FALSE(overlaps(address, 40 * kMiB, 100 * kMiB, 4 * kMiB));
        CHECK_FALSE(overlaps(address, 40 * kMiB, 255 * kMiB, 1 * kMiB));
        CHECK(address + 40 * kMiB <= 255 * kMiB);
        for (uint64_t other : handed_out)
            CHECK_FALSE(overlaps(address, 40 * kMiB, other, 40 * kMiB));
        handed_out.push_back(address);
        if (memory.largest_block() < 40 * kMiB) break;
    }
    CHECK(memory.allocate(200 * kMiB, 4096) == 0); // does not fit
}

TEST_CASE("guest memory: overlapping usable ranges, bad alignment, wrapping sizes", "[guest][memory]") {
    const MemoryRange ranges[] = {
        {16 * kMiB, 16 * kMiB, MemoryType::Usable, 0},
        {24 * kMiB, 16 * kMiB, MemoryType::Usable, 0}, // overlaps the first: counted once
        {UINT64_MAX - 4095, 1ULL << 20, MemoryType::Usable, 0},
        {0, 0, MemoryType::Reserved, 0},
    };
    FreeMemory memory;
    memory.build(ranges, 4, 0x200000, 0x210000);
    CHECK(memory.free_bytes() == 24 * kMiB + 4095);
    CHECK(memory.allocate(4096, 3) == 0);
    CHECK(memory.allocate(0, 4096) == 0);
    CHECK(memory.allocate(UINT64_MAX, 4096) == 0);
    const uint64_t a = memory.allocate(1, 1ULL << 24);
    CHECK(a == 16 * kMiB);
    CHECK(memory.allocate(1, 1ULL << 63) == 0);
}

TEST_CASE("guest memory ignores ranges past the BootInfo array", "[guest][memory]") {
    MemoryRange ranges[vmmlab::abi::kMaxMemoryRanges + 1] = {};
    for (auto& range : ranges)
        range = {0, 0, MemoryType::Reserved, 0};
    ranges[vmmlab::abi::kMaxMemoryRanges] = {16 * kMiB, 16 * kMiB, MemoryType::Usable, 0};
    FreeMemory memory;
    memory.build(ranges, vmmlab::abi::kMaxMemoryRanges + 1, 0x200000, 0x210000);
    CHECK(memory.free_bytes() == 0);
}
