#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <vector>

#include "memory/page_tables.hpp"

using namespace vmmlab;
using WalkKind = WalkError::Kind;

namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t GiB = 1024 * MiB;
constexpr std::uint64_t kPresentWritable = 0x3;
constexpr std::uint64_t kLeafFlags = 0x83; // Present | Writable | PS
constexpr std::byte kFill{0xa5};           // stale bytes in RAM: unused entries must be written as zero

// 4 MiB of guest RAM at 0; the tables go to the area [1 MiB, 3 MiB). The mapped range is much larger
// than RAM, which is fine: only the tables need to be in RAM.
struct TableRam {
    std::vector<std::byte> bytes = std::vector<std::byte>(4 * MiB, kFill);
    GuestMemory memory{{GuestMemory::Region{GuestAddress{0}, bytes.size(), bytes.data()}}};
    static constexpr GuestAddress kArea{1 * MiB};
    static constexpr std::uint64_t kAreaSize = 2 * MiB;

    std::uint64_t entry(std::uint64_t table_address, std::uint64_t index) const {
        auto value = memory.read_object<std::uint64_t>(GuestAddress{table_address + index * 8});
        REQUIRE(value.has_value());
        return *value;
    }
};

std::uint64_t round_up(std::uint64_t value, std::uint64_t to) {
    return (value + to - 1) / to * to;
}

// Identity for [0, limit) with `leaf` pages, checked at the edges, at every leaf boundary near both ends,
// and at a thousand random addresses.
void check_identity(const GuestMemory& memory, std::uint64_t cr3, std::uint64_t limit, PageSize leaf) {
    const std::uint64_t size = page_size_bytes(leaf);
    std::vector<std::uint64_t> addresses{0,    1,        0xfff,     0x1000,      size - 1,
                                         size, size + 1, limit - 1, limit - size};
    for (std::uint64_t i = 0; i < 8 && i * size < limit; ++i) {
        addresses.push_back(i * size);
        addresses.push_back(limit - 1 - i * size);
    }
    std::mt19937_64 random(42);
    std::uniform_int_distribution<std::uint64_t> anywhere(0, limit - 1);
    for (int i = 0; i < 1000; ++i)
        addresses.push_back(anywhere(random));
    for (const std::uint64_t address : addresses) {
        INFO("virtual address " << std::hex << address);
        auto translation = walk(memory, cr3, address);
        REQUIRE(translation.has_value());
        CHECK(translation->address == GuestAddress{address});
        CHECK(translation->page_size == leaf);
        auto physical = translate(memory, cr3, address);
        REQUIRE(physical.has_value());
        CHECK(*physical == GuestAddress{address});
    }
}

void check_not_present(const GuestMemory& memory, std::uint64_t cr3, std::uint64_t address, int level) {
    INFO("virtual address " << std::hex << address);
    auto result = translate(memory, cr3, address);
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().kind == WalkKind::NotPresent);
    CHECK(result.error().level == level);
}

} // namespace

TEST_CASE("page-table sizes for each leaf size", "[page-tables]") {
    CHECK(page_table_bytes_needed(4 * GiB, PageSize::k1G) == 2 * 4096);              // PML4, PDPT
    CHECK(page_table_bytes_needed(4 * GiB, PageSize::k2M) == (2 + 4) * 4096);        // + 4 PDs
    CHECK(page_table_bytes_needed(4 * GiB, PageSize::k4K) == (2 + 4 + 2048) * 4096); // + 2048 PTs
    CHECK(page_table_bytes_needed(64 * MiB, PageSize::k4K) == (3 + 32) * 4096);
    CHECK(page_table_bytes_needed(4 * GiB + 1, PageSize::k1G) == 2 * 4096);
    CHECK(page_table_bytes_needed(4 * GiB + 1, PageSize::k2M) == (2 + 5) * 4096);
    CHECK(page_table_bytes_needed(64 * MiB + 1, PageSize::k4K) == (3 + 33) * 4096);
    CHECK(page_table_bytes_needed(1024 * GiB, PageSize::k1G) == (1 + 2) * 4096);
    CHECK(page_table_bytes_needed(0, PageSize::k4K) == 4096);
    CHECK(page_table_bytes_needed(~std::uint64_t{0}, PageSize::k4K) > 0); // no overflow trap
    CHECK(page_size_bytes(PageSize::k4K) == 4096);
    CHECK(page_size_bytes(PageSize::k2M) == 2 * MiB);
    CHECK(page_size_bytes(PageSize::k1G) == GiB);
}

TEST_CASE("an identity map with 1 GiB leaves", "[page-tables]") {
    TableRam ram;
    auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 4 * GiB, PageSize::k1G);
    REQUIRE(map.has_value());
    CHECK(map->cr3 == TableRam::kArea.value);
    CHECK(map->bytes_used == page_table_bytes_needed(4 * GiB, PageSize::k1G));
    check_identity(ram.memory, map->cr3, 4 * GiB, PageSize::k1G);

    const std::uint64_t pdpt = map->cr3 + 4096;
    CHECK(ram.entry(map->cr3, 0) == (pdpt | kPresentWritable));
    CHECK(ram.entry(map->cr3, 1) == 0);
    CHECK(ram.entry(pdpt, 0) == (0 | kLeafFlags));
    CHECK(ram.entry(pdpt, 3) == (3 * GiB | kLeafFlags));
    CHECK(ram.entry(pdpt, 4) == 0);
    CHECK(ram.entry(pdpt, 511) == 0);

    check_not_present(ram.memory, map->cr3, 4 * GiB, 3);
    check_not_present(ram.memory, map->cr3, 512 * GiB, 4);
    check_not_present(ram.memory, map->cr3, 0xffffffff80000000, 4);
    // Nothing is written past the tables.
    CHECK(ram.bytes[TableRam::kArea.value + map->bytes_used] == kFill);
}

TEST_CASE("an identity map with 2 MiB leaves", "[page-tables]") {
    TableRam ram;
    auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 4 * GiB, PageSize::k2M);
    REQUIRE(map.has_value());
    CHECK(map->bytes_used == 6 * 4096);
    check_identity(ram.memory, map->cr3, 4 * GiB, PageSize::k2M);

    const std::uint64_t pdpt = map->cr3 + 4096;
    const std::uint64_t first_pd = pdpt + 4096;
    CHECK(ram.entry(pdpt, 0) == (first_pd | kPresentWritable));
    CHECK(ram.entry(pdpt, 3) == ((first_pd + 3 * 4096) | kPresentWritable));
    CHECK(ram.entry(pdpt, 4) == 0);
    CHECK(ram.entry(first_pd, 0) == (0 | kLeafFlags));
    CHECK(ram.entry(first_pd, 3) == (6 * MiB | kLeafFlags));
    CHECK(ram.entry(first_pd + 3 * 4096, 511) == ((4 * GiB - 2 * MiB) | kLeafFlags));

    check_not_present(ram.memory, map->cr3, 4 * GiB, 3);
    CHECK(ram.bytes[TableRam::kArea.value + map->bytes_used] == kFill);
}

TEST_CASE("an identity map with 4 KiB leaves", "[page-tables]") {
    TableRam ram;
    auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 64 * MiB, PageSize::k4K);
    REQUIRE(map.has_value());
    CHECK(map->bytes_used == 35 * 4096);
    check_identity(ram.memory, map->cr3, 64 * MiB, PageSize::k4K);

    const std::uint64_t pdpt = map->cr3 + 4096;
    const std::uint64_t pd = pdpt + 4096;
    const std::uint64_t first_pt = pd + 4096;
    CHECK(ram.entry(pdpt, 0) == (pd | kPresentWritable));
    CHECK(ram.entry(pdpt, 1) == 0);
    CHECK(ram.entry(pd, 0) == (first_pt | kPresentWritable)); // no PS: points to a PT
    CHECK(ram.entry(pd, 31) == ((first_pt + 31 * 4096) | kPresentWritable));
    CHECK(ram.entry(pd, 32) == 0);
    CHECK(ram.entry(first_pt, 5) == (0x5000 | kPresentWritable)); // no PS on 4K leaves (bit 7 is PAT there)

    check_not_present(ram.memory, map->cr3, 64 * MiB, 2);
    check_not_present(ram.memory, map->cr3, 1 * GiB, 3);
}

TEST_CASE("4 KiB leaves below the small-leaf limit, 2 MiB leaves above it", "[page-tables]") {
    TableRam ram;
    // 64 MiB + 1 byte of "RAM" in 4K pages (rounded up to 66 MiB: 33 PTs), the rest of 4 GiB in 2M pages.
    auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 4 * GiB, PageSize::k4K,
                                  64 * MiB + 1);
    REQUIRE(map.has_value());
    CHECK(map->bytes_used == (2 + 4 + 33) * 4096);
    CHECK(map->bytes_used == page_table_bytes_needed(4 * GiB, PageSize::k4K, 64 * MiB + 1));

    for (std::uint64_t address : {std::uint64_t{0}, std::uint64_t{0x5123}, 64 * MiB, 66 * MiB - 1}) {
        auto walked = walk(ram.memory, map->cr3, address);
        REQUIRE(walked.has_value());
        CHECK(walked->address.value == address);
        CHECK(walked->page_size == PageSize::k4K);
    }
    for (std::uint64_t address : {66 * MiB, 3 * GiB + 0x1234, 4 * GiB - 1}) {
        auto walked = walk(ram.memory, map->cr3, address);
        REQUIRE(walked.has_value());
        CHECK(walked->address.value == address);
        CHECK(walked->page_size == PageSize::k2M);
    }
    check_not_present(ram.memory, map->cr3, 4 * GiB, 3);
    CHECK(ram.bytes[TableRam::kArea.value + map->bytes_used] == kFill);

    // The limit does not change 2M or 1G maps.
    CHECK(page_table_bytes_needed(4 * GiB, PageSize::k2M, 64 * MiB) ==
          page_table_bytes_needed(4 * GiB, PageSize::k2M));
}

TEST_CASE("the limit is rounded up to the leaf size", "[page-tables]") {
    TableRam ram;
    SECTION("4K") {
        auto map =
            build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 64 * MiB + 1, PageSize::k4K);
        REQUIRE(map.has_value());
        CHECK(translate(ram.memory, map->cr3, 64 * MiB + 0xfff) == GuestAddress{64 * MiB + 0xfff});
        check_not_present(ram.memory, map->cr3, 64 * MiB + 0x1000, 1);
    }
    SECTION("2M") {
        auto map =
            build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 3 * GiB + 5, PageSize::k2M);
        REQUIRE(map.has_value());
        CHECK(translate(ram.memory, map->cr3, 3 * GiB + 2 * MiB - 1) == GuestAddress{3 * GiB + 2 * MiB - 1});
        check_not_present(ram.memory, map->cr3, 3 * GiB + 2 * MiB, 2);
    }
    SECTION("1G, across a PDPT boundary") {
        const std::uint64_t limit = 512 * GiB + 1;
        auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, limit, PageSize::k1G);
        REQUIRE(map.has_value());
        CHECK(map->bytes_used == 3 * 4096);
        check_identity(ram.memory, map->cr3, round_up(limit, GiB), PageSize::k1G);
        check_not_present(ram.memory, map->cr3, 513 * GiB, 3);
    }
}

TEST_CASE("page tables that do not fit, or sit badly, are refused before anything is written",
          "[page-tables]") {
    TableRam ram;
    const std::uint64_t needed = page_table_bytes_needed(64 * MiB, PageSize::k4K);
    using Kind = PageTableError::Kind;

    SECTION("exactly enough room") {
        CHECK(build_identity_map(ram.memory, TableRam::kArea, needed, 64 * MiB, PageSize::k4K).has_value());
        return;
    }
    SECTION("one page short") {
        auto map = build_identity_map(ram.memory, TableRam::kArea, needed - 4096, 64 * MiB, PageSize::k4K);
        REQUIRE_FALSE(map.has_value());
        CHECK(map.error().kind == Kind::DoesNotFit);
        CHECK(map.error().message == "page tables for [0, 0x4000000) with 4K pages need 0x23000 bytes; the "
                                     "area at 0x100000 has 0x22000");
    }
    SECTION("4 GiB of 4K pages in a 2 MiB area") {
        auto map =
            build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 4 * GiB, PageSize::k4K);
        REQUIRE_FALSE(map.has_value());
        CHECK(map.error().kind == Kind::DoesNotFit);
    }
    SECTION("unaligned area") {
        auto map = build_identity_map(ram.memory, GuestAddress{1 * MiB + 0x800}, TableRam::kAreaSize,
                                      64 * MiB, PageSize::k4K);
        REQUIRE_FALSE(map.has_value());
        CHECK(map.error().kind == Kind::AreaNotAligned);
        CHECK(map.error().message == "page-table area 0x100800 is not 4 KiB aligned");
    }
    SECTION("area running past the end of RAM") {
        auto map =
            build_identity_map(ram.memory, GuestAddress{4 * MiB - 0x10000}, 1 * MiB, 64 * MiB, PageSize::k4K);
        REQUIRE_FALSE(map.has_value());
        CHECK(map.error().kind == Kind::AreaOutsideRam);
    }
    SECTION("area at the top of the address space") {
        auto map = build_identity_map(ram.memory, GuestAddress{~std::uint64_t{0xfff}}, 1 * MiB, 4 * GiB,
                                      PageSize::k1G);
        REQUIRE_FALSE(map.has_value());
        CHECK(map.error().kind == Kind::AreaOutsideRam);
    }
    SECTION("limit beyond the lower canonical half") {
        auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize,
                                      kMaxIdentityMapLimit + 1, PageSize::k1G);
        REQUIRE_FALSE(map.has_value());
        CHECK(map.error().kind == Kind::LimitTooLarge);
    }
    CHECK(std::ranges::all_of(ram.bytes, [](std::byte b) { return b == kFill; }));
}

TEST_CASE("the largest identity map: the whole lower half with 1G leaves", "[page-tables]") {
    TableRam ram;
    auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, kMaxIdentityMapLimit,
                                  PageSize::k1G);
    REQUIRE(map.has_value());
    CHECK(map->bytes_used == 257 * 4096);
    check_identity(ram.memory, map->cr3, kMaxIdentityMapLimit, PageSize::k1G);
    auto upper = translate(ram.memory, map->cr3, 0xffff800000000000);
    REQUIRE_FALSE(upper.has_value());
    CHECK(upper.error().kind == WalkKind::NotPresent);
}

TEST_CASE("the walker reports non-canonical addresses", "[page-tables]") {
    TableRam ram;
    auto map = build_identity_map(ram.memory, TableRam::kArea, TableRam::kAreaSize, 4 * GiB, PageSize::k1G);
    REQUIRE(map.has_value());
    for (const std::uint64_t address :
         {0x0000800000000000ULL, 0x7fff000000000000ULL, 0xffff7fffffffffffULL, 0x8000000000000000ULL}) {
        INFO(std::hex << address);
        auto result = translate(ram.memory, map->cr3, address);
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().kind == WalkKind::NonCanonical);
        CHECK(result.error().level == 0);
    }
    CHECK(translate(ram.memory, map->cr3, 0x00007fffffffffffULL).error().kind == WalkKind::NotPresent);
    CHECK(translate(ram.memory, map->cr3, 0x0000800000000000ULL).error().message ==
          "virtual address 0x800000000000 is not canonical");
}

TEST_CASE("the walker follows hand-made tables: upper half, large-page PAT bit, CR3 control bits",
          "[page-tables]") {
    TableRam ram;
    std::ranges::fill(ram.bytes, std::byte{0});
    const std::uint64_t pml4 = 0x10000, pdpt = 0x11000, pd = 0x12000, pt = 0x13000;
    auto set = [&](std::uint64_t table, std::uint64_t index, std::uint64_t value) {
        REQUIRE(ram.memory.write_object(GuestAddress{table + index * 8}, value).has_value());
    };
    // Kernel-style mapping: 0xffffffff80000000 (PML4 511, PDPT 510) -> 1 GiB page at 0x40000000.
    set(pml4, 511, pdpt | 0x3);
    set(pdpt, 510, 0x40000000 | 0x83);
    // PDPT 0 -> PD; PD 1 is a 2M leaf at 0x600000 with PAT (bit 12) and NX set; PD 2 -> PT.
    set(pml4, 0, pdpt | 0x7);
    set(pdpt, 0, pd | 0x3);
    set(pd, 1, 0x600000 | 0x1000 | 0x83 | (1ULL << 63));
    set(pd, 2, pt | 0x3);
    set(pt, 7, 0x1234000 | 0x1 | (1ULL << 63));
    set(pt, 8, 0x1235000); // not present

    const std::uint64_t cr3 = pml4 | 0x18; // PWT | PCD: ignored
    auto kernel = walk(ram.memory, cr3, 0xffffffff80123456);
    REQUIRE(kernel.has_value());
    CHECK(kernel->address == GuestAddress{0x40123456});
    CHECK(kernel->page_size == PageSize::k1G);

    auto large = walk(ram.memory, cr3, 0x200000 + 0x1abcd);
    REQUIRE(large.has_value());
    CHECK(large->address == GuestAddress{0x600000 + 0x1abcd});
    CHECK(large->page_size == PageSize::k2M);

    CHECK(translate(ram.memory, cr3, 0x400000 + 7 * 4096 + 0x321) == GuestAddress{0x1234321});
    auto missing = translate(ram.memory, cr3, 0x400000 + 8 * 4096);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().kind == WalkKind::NotPresent);
    CHECK(missing.error().level == 1);
    CHECK(missing.error().message == "virtual address 0x408000: PT entry 8 at 0x13040 is not present");

    SECTION("a PML4 entry with PS set") {
        set(pml4, 1, 0x80 | 0x3);
        auto result = translate(ram.memory, cr3, 512 * GiB);
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().kind == WalkKind::ReservedBit);
        CHECK(result.error().level == 4);
    }
    SECTION("a table outside RAM") {
        set(pd, 3, 0x7ff000000 | 0x3);
        auto result = translate(ram.memory, cr3, 0x600000);
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().kind == WalkKind::TableOutsideRam);
        CHECK(result.error().level == 1);
    }
    SECTION("CR3 outside RAM") {
        auto result = translate(ram.memory, 0x100000000, 0);
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().kind == WalkKind::TableOutsideRam);
        CHECK(result.error().level == 4);
    }
}
