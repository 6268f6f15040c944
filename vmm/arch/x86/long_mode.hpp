// 64-bit long-mode entry for the tiny guest: the flat GDT the monitor writes into guest memory and the
// special registers that put a vCPU straight into long mode with paging on.
#pragma once

#include <cstdint>

#include "kvm/kvm_uapi.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::x86 {

inline constexpr std::uint16_t kCodeSelector = 0x8;
inline constexpr std::uint16_t kDataSelector = 0x10;

// Null, 64-bit code (selector 0x8), data (0x10), at `gdt`. Throws SystemError if outside RAM.
void write_flat_gdt(const GuestMemory& memory, GuestAddress gdt);

struct LongModeOptions {
    std::uint64_t cr3; // guest-physical address of the PML4
    GuestAddress gdt;  // where write_flat_gdt put the table
    bool osxsave;      // enable XSAVE (CR4.OSXSAVE) so AVX can be switched on through XCR0
};

// Returns `current` (as read from the vCPU) with segments, GDT, CR0/CR3/CR4 and EFER set for 64-bit
// execution. Pure, so unit tests check every bit.
kvm_sregs long_mode_sregs(kvm_sregs current, const LongModeOptions& options);

inline constexpr std::uint64_t kCr0Pe = 1ULL << 0, kCr0Mp = 1ULL << 1, kCr0Et = 1ULL << 4, kCr0Ne = 1ULL << 5,
                               kCr0Wp = 1ULL << 16, kCr0Pg = 1ULL << 31;
inline constexpr std::uint64_t kCr4Pae = 1ULL << 5, kCr4Osfxsr = 1ULL << 9, kCr4Osxmmexcpt = 1ULL << 10,
                               kCr4Osxsave = 1ULL << 18;
inline constexpr std::uint64_t kEferSce = 1ULL << 0, kEferLme = 1ULL << 8, kEferLma = 1ULL << 10,
                               kEferNxe = 1ULL << 11;
// XCR0 components: x87 (always), SSE, AVX.
inline constexpr std::uint64_t kXcr0X87 = 1, kXcr0Sse = 2, kXcr0Avx = 4;

} // namespace vmmlab::x86
