#include "arch/x86/zero_page.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include <fmt/format.h>

namespace vmmlab::x86 {

// The offsets the boot protocol documents (zero-page.rst, boot.rst); the uapi header must agree.
static_assert(sizeof(boot_params) == 4096);
static_assert(offsetof(boot_params, acpi_rsdp_addr) == 0x070);
static_assert(offsetof(boot_params, ext_ramdisk_image) == 0x0c0);
static_assert(offsetof(boot_params, ext_ramdisk_size) == 0x0c4);
static_assert(offsetof(boot_params, ext_cmd_line_ptr) == 0x0c8);
static_assert(offsetof(boot_params, e820_entries) == 0x1e8);
static_assert(offsetof(boot_params, hdr) == 0x1f1);
static_assert(offsetof(boot_params, e820_table) == 0x2d0);
static_assert(offsetof(setup_header, header) == 0x202 - 0x1f1);
static_assert(offsetof(setup_header, version) == 0x206 - 0x1f1);
static_assert(offsetof(setup_header, type_of_loader) == 0x210 - 0x1f1);
static_assert(offsetof(setup_header, cmd_line_ptr) == 0x228 - 0x1f1);
static_assert(offsetof(setup_header, init_size) == 0x260 - 0x1f1);
static_assert(sizeof(setup_header) == 0x26c - 0x1f1);
static_assert(sizeof(boot_e820_entry) == 20);

namespace {
// Protocol 2.10 ends with init_size (0x260..0x263); 2.12 adds nothing after it that a loader must read.
constexpr std::size_t kMinimumSetupHeader = 0x264 - 0x1f1;

std::uint32_t low32(std::uint64_t value) {
    return static_cast<std::uint32_t>(value);
}
std::uint32_t high32(std::uint64_t value) {
    return static_cast<std::uint32_t>(value >> 32);
}
} // namespace

std::expected<std::vector<E820Entry>, std::string> build_e820_map(std::span<const GuestMemory::Region> ram,
                                                                  std::span<const E820Entry> reserved) {
    std::vector<E820Entry> holes(reserved.begin(), reserved.end());
    std::ranges::sort(holes, {}, &E820Entry::start);
    for (std::size_t i = 0; i < holes.size(); ++i) {
        const auto& hole = holes[i];
        if (hole.size == 0 || hole.size - 1 > ~std::uint64_t{0} - hole.start.value)
            return std::unexpected(fmt::format("e820: reserved range {:#x}+{:#x} is empty or wraps",
                                               hole.start.value, hole.size));
        if (i > 0 && holes[i - 1].end() > hole.start)
            return std::unexpected(fmt::format("e820: reserved ranges {:#x}+{:#x} and {:#x}+{:#x} overlap",
                                               holes[i - 1].start.value, holes[i - 1].size, hole.start.value,
                                               hole.size));
    }

    std::vector<E820Entry> map;
    for (const auto& region : ram) {
        std::uint64_t cursor = region.start.value;
        const std::uint64_t end = region.end().value;
        for (const auto& hole : holes) {
            if (hole.end().value <= cursor || hole.start.value >= end) continue;
            if (hole.start.value > cursor)
                map.push_back({GuestAddress{cursor}, hole.start.value - cursor, E820Type::Ram});
            cursor = std::min(hole.end().value, end);
        }
        if (cursor < end) map.push_back({GuestAddress{cursor}, end - cursor, E820Type::Ram});
    }
    map.insert(map.end(), holes.begin(), holes.end());
    std::ranges::sort(map, {}, &E820Entry::start);

    std::vector<E820Entry> merged;
    for (const auto& entry : map) {
        if (!merged.empty() && merged.back().type == entry.type && merged.back().end() == entry.start)
            merged.back().size += entry.size;
        else
            merged.push_back(entry);
    }
    if (merged.size() > kMaxE820Entries)
        return std::unexpected(fmt::format("e820: the map has {} entries; the zero page holds {}",
                                           merged.size(), kMaxE820Entries));
    return merged;
}

std::expected<std::vector<E820Entry>, std::string> standard_e820_map(const GuestMemory& memory) {
    const E820Entry low_hole{GuestAddress{kEbdaStart}, kLowMemoryEnd - kEbdaStart, E820Type::Reserved};
    return build_e820_map(memory.regions(), std::span(&low_hole, 1));
}

std::expected<boot_params, std::string> build_zero_page(const ZeroPageParams& params) {
    if (params.setup_header.size() < kMinimumSetupHeader)
        return std::unexpected(fmt::format("zero page: setup header is {} bytes; protocol 2.12 needs {}",
                                           params.setup_header.size(), kMinimumSetupHeader));
    if (params.e820.size() > kMaxE820Entries)
        return std::unexpected(fmt::format("zero page: {} e820 entries; the zero page holds {}",
                                           params.e820.size(), kMaxE820Entries));

    boot_params zero_page;
    std::memset(&zero_page, 0, sizeof zero_page);
    std::memcpy(&zero_page.hdr, params.setup_header.data(),
                std::min(params.setup_header.size(), sizeof zero_page.hdr));

    auto& header = zero_page.hdr;
    header.type_of_loader = 0xff; // "undefined": no registered boot loader ID
    header.vid_mode = 0xffff;     // "normal" text mode; there is no video anyway
    if (params.kernel.value < (std::uint64_t{1} << 32)) header.code32_start = low32(params.kernel.value);
    header.cmd_line_ptr = low32(params.command_line.value);
    zero_page.ext_cmd_line_ptr = high32(params.command_line.value);
    if (params.ramdisk_size != 0) {
        header.ramdisk_image = low32(params.ramdisk.value);
        zero_page.ext_ramdisk_image = high32(params.ramdisk.value);
        header.ramdisk_size = low32(params.ramdisk_size);
        zero_page.ext_ramdisk_size = high32(params.ramdisk_size);
    } else {
        header.ramdisk_image = 0;
        header.ramdisk_size = 0;
    }
    zero_page.acpi_rsdp_addr = params.acpi_rsdp;

    zero_page.e820_entries = static_cast<std::uint8_t>(params.e820.size());
    for (std::size_t i = 0; i < params.e820.size(); ++i) {
        const auto& entry = params.e820[i];
        zero_page.e820_table[i].addr = entry.start.value;
        zero_page.e820_table[i].size = entry.size;
        zero_page.e820_table[i].type = static_cast<std::uint32_t>(entry.type);
    }
    return zero_page;
}

} // namespace vmmlab::x86
