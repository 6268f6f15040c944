// Lays out a Linux guest in guest memory for the 64-bit boot protocol: the platform's firmware tables, the
// bzImage with its zero page, command line and initrd (boot/bzimage.hpp), an identity map and a flat GDT,
// and returns the registers the boot vCPU starts with. Everything a bad kernel, initrd or command line can
// get wrong is an error value naming the part at fault.
//
// Guest-physical layout (below 1 MiB, reserved in e820 where the kernel must not take it as RAM):
//   0x07000  zero page                          (boot/bzimage.hpp)
//   0x08000  flat GDT: null, code 0x8, data 0x10 (kLinuxGdtAddress; Linux loads its own at once)
//   0x09000  identity map of [0, max(4 GiB, the kernel's footprint)) with 2 MiB leaves (6 pages for 4 GiB)
//   0x20000  command line
//   0xe0000  ACPI tables: RSDP, XSDT, FADT (hardware-reduced), DSDT (\_S5_), MADT with one LAPIC per vCPU
//   0xf0000  MP 1.4 table (for acpi=off), when the vCPU count fits its 8-bit APIC IDs (254 at most)
//   0xffff0  the BIOS reset vector (F000:FFF0): a stub that pulses the i8042 reset line (out 0x64, 0xfe;
//            then hlt in a loop). Linux jumps there in real mode as its last reboot method
//            (machine_real_restart), which 6.1 reaches on a hardware-reduced ACPI platform without EFI
//            unless reboot= names another method
//
// Only the boot vCPU gets these registers: RIP = the kernel's 64-bit entry, RSI = the zero page,
// RFLAGS = 0x2 (interrupts off). The other vCPUs stay as KVM creates them, waiting in the in-kernel
// local APIC for the INIT and SIPI through which Linux starts them (the MADT lists them).
#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>

#include "arch/x86/acpi.hpp"
#include "arch/x86/mptable.hpp"
#include "boot/bzimage.hpp"
#include "kvm/kvm_uapi.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab {

inline constexpr std::uint64_t kLinuxGdtAddress = 0x8000;
inline constexpr std::uint64_t kLinuxResetVectorAddress = 0xffff0;
// mov al, 0xfe; out 0x64, al; hlt; jmp back to the hlt (16-bit code).
inline constexpr std::uint8_t kLinuxResetStub[] = {0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd};
// The identity map covers at least the 32-bit space, so the kernel, the zero page, the command line and the
// local APIC and IO-APIC pages are all mapped whatever the RAM size.
inline constexpr std::uint64_t kLinuxIdentityMapMinimum = std::uint64_t{1} << 32;

struct LinuxGuestParams {
    unsigned vcpus = 1;
    std::span<const std::byte> kernel; // the bzImage file
    std::span<const std::byte> initrd; // empty: none
    std::string command_line;
    bool mp_table = true; // also write the MP table (skipped when vcpus exceeds its limit)
};

struct LinuxGuestLayout {
    LoadedLinux loaded;
    x86::acpi::AcpiTables acpi;
    std::optional<x86::mptable::MpTable> mp_table;
    std::uint64_t cr3 = 0;
    std::uint64_t identity_map_limit = 0; // [0, this) is identity-mapped
    GuestAddress gdt;
    kvm_regs boot_regs{}; // vCPU 0's general registers
};

struct LinuxGuestError {
    enum class Part {
        Kernel,      // the bzImage is not one vmmlab can boot, or does not fit in RAM
        Initrd,      // the initrd does not fit where the kernel can reach it
        CommandLine, // too long for the kernel, or holds a NUL byte
        Platform,    // the firmware tables, page tables or GDT do not fit in this guest's RAM
    };
    Part part;
    std::string message; // one line, without the file's name
};

// Parses the kernel first, so a bad image is refused before anything is written.
std::expected<LinuxGuestLayout, LinuxGuestError> prepare_linux_guest(const GuestMemory& memory,
                                                                     const LinuxGuestParams& params);

} // namespace vmmlab
