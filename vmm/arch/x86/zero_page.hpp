// The Linux x86 "zero page" (struct boot_params, Documentation/arch/x86/zero-page.rst) and the e820 memory
// map it carries. The loader of a bzImage fills one and hands its guest-physical address to the kernel in
// RSI at the 64-bit entry point.
//
// The struct is the kernel's own uapi definition (<asm/bootparam.h>, packed, 4096 bytes); the
// static_asserts in zero_page.cpp pin the offsets this file relies on.
#pragma once

#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <vector>

#include <asm/bootparam.h>

#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::x86 {

// Types of e820 entries as the kernel (and the ACPI spec's address range types) number them.
enum class E820Type : std::uint32_t {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,     // ACPI tables; the OS may reclaim the range after reading them
    Nvs = 4,      // ACPI non-volatile storage
    Unusable = 5, // bad memory
};

struct E820Entry {
    GuestAddress start;
    std::uint64_t size;
    E820Type type;
    GuestAddress end() const { return start + size; } // one past the last byte
    bool operator==(const E820Entry&) const = default;
};

// The PC's low hole: EBDA, VGA window, option ROMs and BIOS area. Linux expects it reserved; vmmlab puts
// its firmware tables (ACPI at 0xe0000, the MP table at 0xf0000) in it.
inline constexpr std::uint64_t kEbdaStart = 0x9fc00;
inline constexpr std::uint64_t kLowMemoryEnd = 0x100000;                  // 1 MiB
inline constexpr std::size_t kMaxE820Entries = E820_MAX_ENTRIES_ZEROPAGE; // 128

// Builds an e820 map: every byte of `ram` is listed as Ram except where a `reserved` entry covers it;
// the reserved entries are listed with their own types (they may also lie outside RAM). The result is
// sorted by address and neighbouring entries of one type are merged. Refuses reserved entries that are
// empty, wrap, or overlap each other, and a map of more than kMaxE820Entries entries.
std::expected<std::vector<E820Entry>, std::string> build_e820_map(std::span<const GuestMemory::Region> ram,
                                                                  std::span<const E820Entry> reserved);

// The map vmmlab gives Linux: all of `memory` as RAM, with [kEbdaStart, kLowMemoryEnd) reserved.
// With RAM above 3 GiB this yields [0, 0x9fc00) RAM, [0x9fc00, 1 MiB) reserved, [1 MiB, 3 GiB) RAM,
// [4 GiB, ...) RAM: the PCI hole is simply absent from the map.
std::expected<std::vector<E820Entry>, std::string> standard_e820_map(const GuestMemory& memory);

struct ZeroPageParams {
    // The image's setup header: its bytes from offset 0x1f1 up to the end the image states
    // (0x202 + the byte at 0x201). Copied first; the fields below then override parts of it. At most
    // sizeof(setup_header) bytes are used.
    std::span<const std::byte> setup_header;
    GuestAddress kernel;       // where the protected-mode kernel was loaded (hdr.code32_start when < 4 GiB)
    GuestAddress command_line; // NUL-terminated command line; 0 = none
    GuestAddress ramdisk;      // initrd; ignored when ramdisk_size is 0
    std::uint64_t ramdisk_size = 0;
    std::uint64_t acpi_rsdp = 0; // guest-physical address of the RSDP; 0 = let the kernel scan for it
    std::span<const E820Entry> e820;
};

// The zero page the boot protocol asks a boot loader for: zeroed, the image's setup header copied in,
// type_of_loader 0xff ("undefined"), vid_mode 0xffff ("normal"), cmd_line_ptr/ext_cmd_line_ptr,
// ramdisk_image/size (+ their ext_ halves), acpi_rsdp_addr, the e820 table. Errors: more than
// kMaxE820Entries entries, a setup header shorter than the fields the protocol 2.12 defines.
std::expected<boot_params, std::string> build_zero_page(const ZeroPageParams& params);

} // namespace vmmlab::x86
