// Loads a Linux bzImage (the stock Debian kernel) for the 64-bit boot protocol
// (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL"): the protected-mode kernel is copied into
// guest RAM, a zero page (struct boot_params) describes RAM, the command line and the initrd, and a vCPU
// starts at the kernel's 64-bit entry with RSI pointing at the zero page.
//
// What the caller does with the result (everything else is done here):
//   - identity-map at least [0, LoadedLinux::minimum_identity_map) (the kernel, the zero page and the
//     command line; mapping all of [0, 4 GiB) with 2 MiB leaves takes 6 pages and fits the suggested
//     page-table area [kLinuxPageTableArea, +kLinuxPageTableAreaSize));
//   - load a GDT with a flat 64-bit code and data descriptor and enter long mode (arch/x86/long_mode).
//     The protocol names selectors 0x10 (code) and 0x18 (data); the kernel loads its own GDT as its
//     first act, so the project's flat GDT (code 0x8, data 0x10) works as well;
//   - RIP = entry, RSI = zero_page, interrupts off (RFLAGS = 0x2); RSP need not be set.
//
// Guest-physical layout used here (all below 1 MiB; the tiny guest's own ABI is not involved):
//   0x07000  zero page (4 KiB)
//   0x09000  suggested area for the caller's page tables (28 KiB, up to 0x10000)
//   0x20000  command line (up to 64 KiB)
//   0x9fc00..0xfffff reserved in e820 (ACPI tables at 0xe0000, MP table at 0xf0000)
//   kernel   at the header's pref_address (16 MiB for Debian's), see load_bzimage
//   initrd   at the highest 4 KiB-aligned address below min(initrd_addr_max + 1, end of low RAM)
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <vector>

#include "arch/x86/zero_page.hpp"
#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab {

inline constexpr std::uint64_t kLinuxZeroPageAddress = 0x7000;
inline constexpr std::uint64_t kLinuxPageTableArea = 0x9000;
inline constexpr std::uint64_t kLinuxPageTableAreaSize = 0x7000;
inline constexpr std::uint64_t kLinuxCommandLineAddress = 0x20000;
inline constexpr std::uint64_t kLinuxCommandLineCapacity = 0x10000; // bytes, the terminating NUL included
inline constexpr std::uint64_t kLinuxInitrdAlignment = 0x1000;
inline constexpr std::uint64_t kLinuxMinimumKernelAddress = 0x100000; // nothing of the kernel below 1 MiB
inline constexpr std::uint16_t kLinuxMinimumProtocol = 0x020c;        // 2.12: xloadflags, 64-bit entry
inline constexpr std::uint64_t kLinux64BitEntryOffset = 0x200;

struct BzImageError {
    enum class Kind {
        Truncated,          // shorter than its header, its setup code or the kernel syssize announces
        NotBzImage,         // boot flag 0xaa55 at 0x1fe or "HdrS" at 0x202 missing, or no LOADED_HIGH
        ProtocolTooOld,     // boot protocol below 2.12
        Not64Bit,           // xloadflags lack XLF_KERNEL_64
        BadHeader,          // inconsistent fields (alignment not a power of two, header too short, ...)
        KernelTooLarge,     // the kernel's init_size does not fit in guest RAM where it may go
        InitrdTooLarge,     // no room for the initrd between the kernel and initrd_addr_max / low RAM end
        CommandLineTooLong, // longer than the kernel's cmdline_size or vmmlab's 64 KiB area; or has a NUL
        LowMemoryMissing,   // guest RAM does not cover the zero page or the command line area
    };
    Kind kind;
    std::string message; // one line, e.g. "not a bzImage: boot flag at 0x1fe is 0x0000 (want 0xaa55)"
};

// The setup header fields that matter to a 64-bit boot loader, validated.
struct BzImageHeader {
    std::uint16_t protocol;      // 0x020f = 2.15
    unsigned setup_sectors;      // setup_sects, with 0 read as 4
    std::uint64_t kernel_offset; // (setup_sectors + 1) * 512: where the protected-mode kernel starts
    std::uint64_t kernel_size;   // file bytes from kernel_offset to the end: what is copied
    std::uint8_t loadflags;
    std::uint16_t xloadflags;
    bool relocatable;
    std::uint32_t kernel_alignment;
    std::uint64_t pref_address;
    std::uint32_t init_size;    // linear memory the kernel needs from where it runs, decompression included
    std::uint32_t cmdline_size; // longest command line, without the NUL
    std::uint32_t initrd_addr_max; // highest address the initrd's last byte may occupy
    std::uint64_t header_end;      // 0x202 + the byte at 0x201: one past the setup header in the file
    bool can_load_above_4g() const;
};

// Checks, in this order: length for the header, boot flag, "HdrS", protocol >= 2.12, LOADED_HIGH,
// XLF_KERNEL_64, the header's own consistency, the file holding the setup code and syssize's kernel.
std::expected<BzImageHeader, BzImageError> parse_bzimage(std::span<const std::byte> image);

struct LinuxBootOptions {
    std::string command_line;                       // without a NUL; may be empty
    std::span<const std::byte> initrd;              // empty: no initrd
    std::uint64_t acpi_rsdp = 0;                    // boot_params.acpi_rsdp_addr; 0 = the kernel scans
    std::span<const x86::E820Entry> extra_reserved; // more e820 reservations besides the low hole
};

struct LoadedLinux {
    BzImageHeader header;
    GuestAddress kernel;     // first byte of the protected-mode kernel
    GuestAddress kernel_end; // one past the kernel's footprint: max(load, pref_address) + init_size
    GuestAddress entry;      // kernel + 0x200: RIP of the boot vCPU
    GuestAddress zero_page;  // RSI of the boot vCPU
    GuestAddress command_line;
    std::uint64_t command_line_size; // bytes written, the NUL included
    GuestAddress initrd;             // 0 with initrd_size 0 when there is none
    std::uint64_t initrd_size;
    std::vector<x86::E820Entry> e820;
    std::uint64_t minimum_identity_map; // the caller's identity map must cover [0, this) (2 MiB multiple)
};

// Parses `image`, decides every address, checks every range, and only then writes guest memory: the
// kernel, the zero page, the command line and the initrd. On error guest memory is unchanged.
//
// Kernel placement: at pref_address when [pref_address, + init_size) is RAM (and below 4 GiB unless
// XLF_CAN_BE_LOADED_ABOVE_4G). Otherwise, for a relocatable kernel, at the lowest kernel_alignment-
// aligned address >= 1 MiB where it fits; a relocatable x86-64 kernel still decompresses to
// max(load address, pref_address) (its LOAD_PHYSICAL_ADDR), so that range must be RAM too.
// Non-relocatable kernels go to pref_address or nowhere.
std::expected<LoadedLinux, BzImageError>
load_bzimage(std::span<const std::byte> image, const GuestMemory& memory, const LinuxBootOptions& options);

} // namespace vmmlab
