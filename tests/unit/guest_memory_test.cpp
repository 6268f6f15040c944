#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <vector>

#include <unistd.h>

#include "base/error.hpp"
#include "memory/backing.hpp"
#include "memory/guest_memory.hpp"

using namespace vmmlab;

namespace {
// Two regions with a gap: [0x0, 0x2000) and [0x3000, 0x4000), backed by plain vectors.
struct TwoRegions {
    std::vector<std::byte> low = std::vector<std::byte>(0x2000);
    std::vector<std::byte> high = std::vector<std::byte>(0x1000);
    GuestMemory memory{{{GuestAddress{0x3000}, 0x1000, high.data()}, {GuestAddress{0}, 0x2000, low.data()}}};
};
} // namespace

TEST_CASE("slices are bounded by their region, first and last byte", "[memory]") {
    TwoRegions ram;
    REQUIRE(ram.memory.slice(GuestAddress{0x1ff0}, 0x10));
    CHECK(ram.memory.slice(GuestAddress{0x1ff0}, 0x10)->data() == ram.low.data() + 0x1ff0);
    CHECK_FALSE(ram.memory.slice(GuestAddress{0x1ff0}, 0x11)); // last byte in the gap
    CHECK_FALSE(ram.memory.slice(GuestAddress{0x2000}, 1));    // first byte in the gap
    CHECK_FALSE(ram.memory.slice(GuestAddress{0x3fff}, 2));    // past the end of RAM
    CHECK_FALSE(ram.memory.slice(GuestAddress{~0ULL}, 2));     // wraps
    auto fault = ram.memory.slice(GuestAddress{0x2000}, 4).error();
    CHECK(fault.describe() == "guest range 0x2000+0x4 is outside RAM");
}

TEST_CASE("reads and writes round-trip and refuse ranges touching the gap", "[memory]") {
    TwoRegions ram;
    const std::uint64_t value = 0x1122334455667788;
    REQUIRE(ram.memory.write_object(GuestAddress{0x3008}, value));
    CHECK(ram.memory.read_object<std::uint64_t>(GuestAddress{0x3008}).value() == value);
    CHECK(ram.high[8] == std::byte{0x88});
    CHECK_FALSE(ram.memory.write_object(GuestAddress{0x1ffc}, value));
    CHECK(ram.low[0x1ffc] == std::byte{0}); // nothing written on failure
    CHECK_FALSE(ram.memory.read_object<std::uint64_t>(GuestAddress{0x3ffc}));
    CHECK(ram.memory.total_size() == 0x3000);
}

TEST_CASE("copies may cross into an adjacent region", "[memory]") {
    std::vector<std::byte> a(0x1000), b(0x1000);
    GuestMemory memory({{GuestAddress{0}, 0x1000, a.data()}, {GuestAddress{0x1000}, 0x1000, b.data()}});
    const std::uint32_t value = 0xaabbccdd;
    REQUIRE(memory.write_object(GuestAddress{0xffe}, value));
    CHECK(a[0xfff] == std::byte{0xcc});
    CHECK(b[0] == std::byte{0xbb});
    CHECK(memory.read_object<std::uint32_t>(GuestAddress{0xffe}).value() == value);
    CHECK_FALSE(memory.slice(GuestAddress{0xffe}, 4)); // a slice never spans two host mappings
}

TEST_CASE("overlapping or empty regions are refused", "[memory]") {
    std::vector<std::byte> a(0x2000);
    CHECK_THROWS_WITH(
        GuestMemory({{GuestAddress{0}, 0x2000, a.data()}, {GuestAddress{0x1000}, 0x1000, a.data()}}),
        "guest memory regions overlap at 0x1000");
    CHECK_THROWS(GuestMemory({{GuestAddress{0}, 0, a.data()}}));
}

TEST_CASE("RAM is split around the 32-bit PCI hole", "[memory]") {
    auto small = ram_layout(256ULL << 20);
    REQUIRE(small.size() == 1);
    CHECK(small[0].size == 256ULL << 20);
    auto large = ram_layout(4ULL << 30);
    REQUIRE(large.size() == 2);
    CHECK(large[0].start == GuestAddress{0});
    CHECK(large[0].size == kPciHoleStart);
    CHECK(large[1].start == GuestAddress{kPciHoleEnd});
    CHECK(large[1].size == (4ULL << 30) - kPciHoleStart);
}

TEST_CASE("anonymous and THP backings map writable RAM", "[memory]") {
    for (auto backing : {Backing::Anonymous4K, Backing::Thp}) {
        for (bool prefault : {false, true}) {
            auto memory = allocate_guest_ram(8ULL << 20, {.backing = backing, .prefault = prefault});
            REQUIRE(memory.regions().size() == 1);
            REQUIRE(memory.write_object(GuestAddress{(8ULL << 20) - 8}, std::uint64_t{42}));
            CHECK(memory.read_object<std::uint64_t>(GuestAddress{(8ULL << 20) - 8}).value() == 42);
            if (backing == Backing::Thp)
                CHECK(reinterpret_cast<std::uintptr_t>(memory.regions()[0].host) % (2U << 20) == 0);
        }
    }
}

TEST_CASE("a hugetlbfs pool too small is refused with the fix named", "[memory]") {
    namespace fs = std::filesystem;
    std::string pattern = (fs::temp_directory_path() / "vmmlab-pools-XXXXXX").string();
    fs::path root = ::mkdtemp(pattern.data());
    fs::create_directories(root / "hugepages-2048kB");
    std::ofstream(root / "hugepages-2048kB/nr_hugepages") << "16\n";
    std::ofstream(root / "hugepages-2048kB/free_hugepages") << "16\n";
    std::ofstream(root / "hugepages-2048kB/resv_hugepages") << "0\n";

    CHECK_NOTHROW(check_hugepage_pool(Backing::Hugetlb2M, 32ULL << 20, root));
    CHECK_THROWS_WITH(check_hugepage_pool(Backing::Hugetlb2M, 64ULL << 20, root),
                      Catch::StartsWith("hugetlbfs 2m pool has 16 free pages, the guest needs 32") &&
                          Catch::Contains("echo 32 >") && Catch::Contains("--hugepages-2m 32"));
    CHECK_THROWS_WITH(check_hugepage_pool(Backing::Hugetlb1G, 1ULL << 30, root),
                      Catch::StartsWith("hugetlbfs 1g pool absent") && Catch::Contains("hugepagesz=1G"));
    CHECK_NOTHROW(check_hugepage_pool(Backing::Thp, 1ULL << 40, root));
    fs::remove_all(root);
}

TEST_CASE("a RAM size that is not whole pages is refused", "[memory]") {
    CHECK_THROWS_AS(allocate_guest_ram(4097, {}), SystemError);
}
