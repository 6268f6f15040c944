// The Intel MultiProcessor Specification 1.4 table: an alternative to the ACPI MADT for guests booted with
// acpi=off (or kernels without ACPI). Linux finds the floating pointer "_MP_" by scanning, among others,
// [0xf0000, 0x100000) on 16-byte boundaries; vmmlab puts it at kMpTableAddress = 0xf0000 (reserved in e820,
// after the ACPI tables at 0xe0000), the configuration table right behind it.
//
// Contents (base table only, no extended entries, no OEM table):
//   one processor entry per vCPU (APIC ID = vCPU index, enabled, vCPU 0 the bootstrap processor),
//   bus 0 "ISA", one IO-APIC (enabled, version 0x11 as KVM's in-kernel one reports),
//   IO interrupt entries as the MP spec's default configuration wires an ISA PC: IOAPIC input 0 ExtINT
//   (the 8259s in virtual wire mode), IRQ 0 -> input 2, IRQ n -> input n for n = 1, 3..15 (IRQ 2 is the
//   8259 cascade), all with the ISA bus's conforming polarity and trigger (active high, edge),
//   local interrupts: LINT0 ExtINT and LINT1 NMI on every local APIC.
// Feature byte 2 leaves IMCRP clear: the platform uses virtual wire mode, there is no IMCR to program.
//
// A note for whoever wires interrupts: like the MADT's override, this table says IRQ 0 arrives on IO-APIC
// input 2. KVM's default GSI routing sends GSI n to input n, so the in-kernel PIT lands on input 0; a
// monitor that wants the tables to be literally true installs routing GSI 0 -> IO-APIC pin 2 (QEMU does).
// Linux copes either way (its timer check falls back to the 8259 through ExtINT).
#pragma once

#include <cstdint>
#include <expected>
#include <string>
#include <vector>

#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::x86::mptable {

inline constexpr std::uint64_t kMpTableAddress = 0xf0000;
inline constexpr std::uint64_t kMpTableAreaSize = 0x10000;
inline constexpr unsigned kMaxVcpus = 254; // xAPIC IDs 0..253, the IO-APIC takes the next one

struct MpTableConfig {
    unsigned vcpus = 1;
    // The MP spec wants APIC IDs unique across local and IO APICs: by default the IO-APIC takes the ID
    // after the last vCPU (Linux on x86-64 does not program it from the table).
    int ioapic_id = -1; // -1: vcpus
    std::uint64_t ioapic_address = 0xfec00000;
    std::uint64_t local_apic_address = 0xfee00000;
};

struct MpTable {
    GuestAddress floating_pointer; // 16 bytes, "_MP_"
    GuestAddress config_table;     // "PCMP", right after the floating pointer
    std::uint64_t size = 0;        // both, in bytes
    std::uint16_t entry_count = 0;
};

struct MpTableImage {
    std::vector<std::byte> bytes; // to be copied to MpTable::floating_pointer
    MpTable table;
};

// Pure. Errors: base not 16-byte aligned or not below 4 GiB, vcpus 0 or above kMaxVcpus, an IO-APIC ID
// that collides with a vCPU's APIC ID or exceeds 254.
std::expected<MpTableImage, std::string> build_mp_table(GuestAddress base, const MpTableConfig& config);

// build_mp_table, checked to fit [base, base + area_size) and RAM, then written to guest memory.
std::expected<MpTable, std::string> write_mp_table(const GuestMemory& memory, GuestAddress base,
                                                   std::uint64_t area_size, const MpTableConfig& config);

} // namespace vmmlab::x86::mptable
