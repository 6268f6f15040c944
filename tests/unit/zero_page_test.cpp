#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "arch/x86/zero_page.hpp"
#include "linux_test_support.hpp"

using namespace vmmlab;
using namespace vmmlab::x86;
using vmmlab::test::vector_memory;

namespace {
constexpr std::uint64_t kMiB = 1ULL << 20;

std::vector<GuestMemory::Region>
regions(std::initializer_list<std::pair<std::uint64_t, std::uint64_t>> ranges) {
    std::vector<GuestMemory::Region> out;
    for (const auto& [start, size] : ranges)
        out.push_back({GuestAddress{start}, size, nullptr});
    return out;
}

// A setup header as the image carries it: 0x7b bytes from offset 0x1f1, with a few fields set.
std::vector<std::byte> setup_header_bytes() {
    setup_header header{};
    header.setup_sects = 27;
    header.boot_flag = 0xaa55;
    header.header = 0x53726448;
    header.version = 0x020f;
    header.loadflags = 0x01;
    header.type_of_loader = 0x00;
    header.cmdline_size = 2047;
    header.init_size = 0x1000000;
    std::vector<std::byte> bytes(sizeof header);
    std::memcpy(bytes.data(), &header, sizeof header);
    return bytes;
}
} // namespace

TEST_CASE("zero page: e820 map of RAM with reserved ranges carved out", "[linux][zero-page]") {
    const auto ram = regions({{0, 3072 * kMiB}, {4096 * kMiB, 1024 * kMiB}});
    const std::vector<E820Entry> reserved{
        {GuestAddress{kEbdaStart}, kLowMemoryEnd - kEbdaStart, E820Type::Reserved},
        {GuestAddress{0x2000000}, 0x1000, E820Type::Acpi},
        {GuestAddress{0xfec00000}, 0x1000, E820Type::Reserved}, // outside RAM: listed as given
    };
    auto map = build_e820_map(ram, reserved);
    REQUIRE(map.has_value());
    const std::vector<E820Entry> expected{
        {GuestAddress{0}, kEbdaStart, E820Type::Ram},
        {GuestAddress{kEbdaStart}, kLowMemoryEnd - kEbdaStart, E820Type::Reserved},
        {GuestAddress{kLowMemoryEnd}, 0x2000000 - kLowMemoryEnd, E820Type::Ram},
        {GuestAddress{0x2000000}, 0x1000, E820Type::Acpi},
        {GuestAddress{0x2001000}, 3072 * kMiB - 0x2001000, E820Type::Ram},
        {GuestAddress{0xfec00000}, 0x1000, E820Type::Reserved},
        {GuestAddress{4096 * kMiB}, 1024 * kMiB, E820Type::Ram},
    };
    CHECK(*map == expected);
}

TEST_CASE("zero page: adjacent RAM regions merge and bad reservations are refused", "[linux][zero-page]") {
    const auto ram = regions({{0, 16 * kMiB}, {16 * kMiB, 16 * kMiB}});
    auto merged = build_e820_map(ram, {});
    REQUIRE(merged.has_value());
    CHECK(*merged == std::vector<E820Entry>{{GuestAddress{0}, 32 * kMiB, E820Type::Ram}});

    const std::vector<E820Entry> overlapping{{GuestAddress{0x1000}, 0x2000, E820Type::Reserved},
                                             {GuestAddress{0x2000}, 0x1000, E820Type::Reserved}};
    auto overlap = build_e820_map(ram, overlapping);
    REQUIRE_FALSE(overlap.has_value());
    CHECK_THAT(overlap.error(), Catch::Contains("overlap"));

    const std::vector<E820Entry> empty{{GuestAddress{0x1000}, 0, E820Type::Reserved}};
    CHECK_FALSE(build_e820_map(ram, empty).has_value());
    const std::vector<E820Entry> wrapping{{GuestAddress{~0ULL - 0xfff}, 0x2000, E820Type::Reserved}};
    CHECK_FALSE(build_e820_map(ram, wrapping).has_value());

    std::vector<E820Entry> many;
    for (std::uint64_t i = 0; i < 70; ++i)
        many.push_back({GuestAddress{0x100000 + i * 0x2000}, 0x1000, E820Type::Reserved});
    auto too_many = build_e820_map(ram, many);
    REQUIRE_FALSE(too_many.has_value());
    CHECK_THAT(too_many.error(), Catch::Contains("141 entries"));
}

TEST_CASE("zero page: standard map reserves the BIOS area", "[linux][zero-page]") {
    const auto memory = vector_memory({{0, 2 * kMiB}});
    auto map = standard_e820_map(memory);
    REQUIRE(map.has_value());
    REQUIRE(map->size() == 3);
    CHECK((*map)[1] == E820Entry{GuestAddress{0x9fc00}, 0x60400, E820Type::Reserved});
}

TEST_CASE("zero page: header copied, loader fields set, 64-bit addresses split", "[linux][zero-page]") {
    const auto header = setup_header_bytes();
    const std::vector<E820Entry> e820{{GuestAddress{0}, 0x9fc00, E820Type::Ram},
                                      {GuestAddress{0x100000}, 0x7ff00000, E820Type::Ram}};
    ZeroPageParams params{.setup_header = header,
                          .kernel = GuestAddress{0x1000000},
                          .command_line = GuestAddress{0x1'2345'6000},
                          .ramdisk = GuestAddress{0x2'0000'1000},
                          .ramdisk_size = 0x1'0000'0200,
                          .acpi_rsdp = 0xe0000,
                          .e820 = e820};
    auto zero_page = build_zero_page(params);
    REQUIRE(zero_page.has_value());
    CHECK(zero_page->hdr.setup_sects == 27);
    CHECK(zero_page->hdr.init_size == 0x1000000);
    CHECK(zero_page->hdr.type_of_loader == 0xff);
    CHECK(zero_page->hdr.vid_mode == 0xffff);
    CHECK(zero_page->hdr.code32_start == 0x1000000);
    CHECK(zero_page->hdr.cmd_line_ptr == 0x23456000);
    CHECK(zero_page->ext_cmd_line_ptr == 0x1);
    CHECK(zero_page->hdr.ramdisk_image == 0x00001000);
    CHECK(zero_page->ext_ramdisk_image == 0x2);
    CHECK(zero_page->hdr.ramdisk_size == 0x200);
    CHECK(zero_page->ext_ramdisk_size == 0x1);
    CHECK(zero_page->acpi_rsdp_addr == 0xe0000);
    REQUIRE(zero_page->e820_entries == 2);
    CHECK(zero_page->e820_table[1].addr == 0x100000);
    CHECK(zero_page->e820_table[1].size == 0x7ff00000);
    CHECK(zero_page->e820_table[1].type == 1);

    params.setup_header = std::span(header).first(0x40);
    auto short_header = build_zero_page(params);
    REQUIRE_FALSE(short_header.has_value());
    CHECK_THAT(short_header.error(), Catch::Contains("setup header is 64 bytes"));
}
