// Lays out the embedded tiny guest in guest memory per guest/abi/boot_abi.hpp: loads its ELF, writes the
// GDT, the identity page tables, one stack per vCPU and the BootInfo block, and returns the register
// state each vCPU starts with. Everything a bad image can get wrong is an error value, not a crash.
#pragma once

#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <vector>

#include "kvm/kvm_uapi.hpp"
#include "memory/guest_memory.hpp"
#include "memory/page_tables.hpp"

namespace vmmlab {

struct TinyGuestParams {
    unsigned vcpus = 1;
    PageSize guest_page = PageSize::k4K;
    std::string command_line;
    std::uint64_t tsc_khz = 0;
    std::uint32_t flags = 0; // abi::kFlag*
};

struct TinyGuestLayout {
    std::uint64_t cr3 = 0;
    std::uint64_t map_limit = 0;     // identity map covers [0, map_limit)
    GuestAddress reserved_end;       // [0, reserved_end) holds GDT, BootInfo, image, tables, stacks
    std::vector<kvm_regs> vcpu_regs; // RIP, RSP, RDI, RSI, RFLAGS of each vCPU
};

inline constexpr std::uint64_t kTinyGuestStackSize = 64 * 1024;

std::expected<TinyGuestLayout, std::string>
prepare_tiny_guest(const GuestMemory& memory, std::span<const std::byte> elf, const TinyGuestParams& params);

} // namespace vmmlab
