// ACPI tables for a Linux guest on a hardware-reduced platform (ACPI 6.5, chapter 5): RSDP (revision 2),
// XSDT, FADT, MADT and a DSDT whose only content is the \_S5_ sleep-type package Linux needs to power off.
//
// Hardware-reduced ACPI (FADT flag HW_REDUCED_ACPI) means no PM1 event/control blocks, no PM timer, no
// GPEs, no FACS and no SCI handler: Linux then powers off by writing SLP_TYP|SLP_EN to the FADT's
// SLEEP_CONTROL_REG and reboots by writing RESET_VALUE to RESET_REG. Both registers are I/O ports of the
// AcpiPower device (devices/legacy/acpi_power.hpp):
//
//   0x600  SLEEP_CONTROL_REG  8-bit write: bits 4:2 SLP_TYP, bit 5 SLP_EN
//   0x601  SLEEP_STATUS_REG   8-bit: bit 7 WAK_STS (write 1 to clear)
//   0x602  RESET_REG          8-bit write of RESET_VALUE (0x01) resets the machine
//
// (0x600-0x602 sit in no legacy device's range: the COM ports, the RTC, the i8042, PCI config 0xcf8 and
// vmmlab's debug ports 0x510-0x527 are all elsewhere.) In hardware-reduced mode Linux also skips the
// legacy PIC and the PIT (x86 acpi_reduced_hw_init): interrupts go through the IO-APIC, time comes from
// kvmclock/TSC and the local APIC timer.
//
// Placement: the tables go to one area, RSDP first, each table 16-byte aligned. vmmlab uses
// kAcpiTablesAddress = 0xe0000: inside the BIOS area [0xe0000, 0x100000) where Linux scans for
// "RSD PTR " on 16-byte boundaries, and reserved in e820; boot_params.acpi_rsdp_addr points there too.
//
// Legacy devices. On a hardware-reduced platform Linux has no legacy PIC, so it maps no ISA IRQ to an
// IO-APIC input by itself (nr_legacy_irqs() is 0): an IRQ becomes usable only when a device in the
// namespace names it. The DSDT therefore describes the ISA devices vmmlab has, as a PC's firmware does, in
// \_SB_: COM1 (PNP0501: ports 0x3f8-0x3ff, IRQ 4), the keyboard controller (PNP0303: ports 0x60 and 0x64,
// IRQ 1; no PS/2 mouse device, so Linux leaves the aux port alone) and the RTC (PNP0B00: ports 0x70-0x71,
// IRQ 8), each with _HID, _UID and a _CRS of I/O port and IRQ descriptors (edge, active high). Without
// them the serial driver, i8042 and rtc_cmos fail to get their interrupts (request_irq: -EINVAL).
//
// The DSDT's AML, hand-assembled (ACPI 6.5, 20.2 AML grammar):
//   08                NameOp
//   5f 53 35 5f       NameSeg "_S5_"
//   12                PackageOp
//   07                PkgLength: 7 bytes, counting itself, NumElements and the elements
//   04                NumElements: 4
//   0a NN             BytePrefix NN: SLP_TYPa, the value Linux writes into SLP_TYP (5 here)
//   00 00 00          ZeroOp x3: SLP_TYPb (unused on hardware-reduced platforms) and two reserved
// then the devices (legacy_devices_aml):
//   10 PkgLength 5c "_SB_"              Scope (\_SB_)
//     5b 82 PkgLength "COM1"            Device (COM1)
//       08 "_HID" 0c 41 d0 05 01        Name (_HID, EISAID ("PNP0501"))
//       08 "_UID" 01                    Name (_UID, One)
//       08 "_CRS" 11 PkgLength 0a NN    Name (_CRS, Buffer (NN) {
//         47 01 f8 03 f8 03 01 08         IO (Decode16, 0x3f8, 0x3f8, 1, 8)
//         22 10 00                        IRQNoFlags () {4}
//         79 00                           end tag, no checksum })
//     ... PS2K and RTC_ likewise
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <vector>

#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::x86::acpi {

inline constexpr std::uint64_t kAcpiTablesAddress = 0xe0000;
inline constexpr std::uint64_t kAcpiTablesAreaSize = 0x10000; // [0xe0000, 0xf0000); the MP table follows
inline constexpr std::uint16_t kSleepControlPort = 0x600;
inline constexpr std::uint16_t kSleepStatusPort = 0x601;
inline constexpr std::uint16_t kResetPort = 0x602;
inline constexpr std::uint8_t kResetValue = 0x01;
inline constexpr std::uint8_t kS5SleepType = 5;
inline constexpr std::uint64_t kLocalApicAddress = 0xfee00000;
inline constexpr std::uint64_t kIoApicAddress = 0xfec00000;
inline constexpr std::uint8_t kCmosCenturyRegister = 0x32;
inline constexpr unsigned kMaxVcpus = 1024;
inline constexpr unsigned kIoApicPins = 24; // KVM's in-kernel IO-APIC: GSIs 0-23

// FADT flags (ACPI 6.5, table 5.10) and IA-PC boot architecture flags (table 5.11) vmmlab uses.
inline constexpr std::uint32_t kFadtWbinvd = 1U << 0;
inline constexpr std::uint32_t kFadtPowerButton = 1U << 4; // 1: no fixed-feature power button
inline constexpr std::uint32_t kFadtSleepButton = 1U << 5; // 1: no fixed-feature sleep button
inline constexpr std::uint32_t kFadtResetRegSupported = 1U << 10;
inline constexpr std::uint32_t kFadtHardwareReduced = 1U << 20;
inline constexpr std::uint16_t kBootArchLegacyDevices = 1U << 0;
inline constexpr std::uint16_t kBootArch8042 = 1U << 1;
inline constexpr std::uint16_t kBootArchVgaNotPresent = 1U << 2;
inline constexpr std::uint16_t kBootArchCmosRtcNotPresent = 1U << 5;
inline constexpr std::uint32_t kMadtPcatCompat = 1U << 0;

// The PCI memory window of the root bridge: where vmmlab puts BARs (vm/vm.cpp), in the 32-bit hole.
inline constexpr std::uint32_t kPciMmioBase = 0xe0000000;
inline constexpr std::uint32_t kPciMmioSize = 0x10000000;

struct AcpiConfig {
    unsigned vcpus = 1; // one enabled processor entry each, APIC ID = vCPU index (as arch/x86/cpuid sets)
    std::uint16_t sleep_control_port = kSleepControlPort;
    std::uint16_t sleep_status_port = kSleepStatusPort;
    std::uint16_t reset_port = kResetPort;
    std::uint8_t reset_value = kResetValue;
    std::uint8_t s5_sleep_type = kS5SleepType; // 0..7, the SLP_TYP value of \_S5_
    std::uint8_t ioapic_id = 0;                // KVM's in-kernel IO-APIC resets its ID register to 0
    std::uint64_t ioapic_address = kIoApicAddress;
    std::uint32_t ioapic_gsi_base = 0;
    std::uint16_t sci_interrupt = 9; // unused on hardware-reduced platforms; 9 as on every PC
    // PCAT_COMPAT: "the system also has a PC-AT-compatible dual-8259 setup", which KVM's in-kernel irqchip
    // really provides; it tells an OS that uses the IO-APIC to mask the 8259s. Linux in hardware-reduced
    // mode ignores the 8259s either way; the flag keeps the table truthful for other guests.
    bool pcat_compat = true;
    bool i8042 =
        true; // IAPC_BOOT_ARCH 8042 and the PNP0303 device: a keyboard controller (devices/legacy/i8042)
    bool cmos_rtc = true; // the PNP0B00 device; false sets CMOS_RTC_NOT_PRESENT instead
    bool serial = true;   // the PNP0501 device for the 16550 UART at serial_port, IRQ serial_irq (0-15)
    std::uint16_t serial_port = 0x3f8;
    std::uint8_t serial_irq = 4;
    std::uint8_t century_register = kCmosCenturyRegister; // FADT CENTURY: CMOS index of the century
    // The PCI root bridge PCI0 (PNP0A08, compatible PNP0A03): bus 0 only, configuration mechanism #1 at
    // 0xCF8 (no MCFG), and one 32-bit memory window for the BARs. Without it a hardware-reduced platform
    // has no PCI bus: Linux enumerates PCI from ACPI root bridges alone.
    bool pci_root_bridge = true;
    std::uint32_t pci_mmio_base = kPciMmioBase;
    std::uint32_t pci_mmio_size = kPciMmioSize;
    // INTx routing (_PRT): INTA# of slots 1..pci_intx_slots on GSI pci_intx_gsi_base + slot - 1 (vm.cpp
    // puts virtio device k at slot k + 1 with INTx on GSI 16 + k). 0: no _PRT.
    unsigned pci_intx_slots = 8;
    std::uint32_t pci_intx_gsi_base = 16;
};

// Where each table landed (guest-physical) and how long it is.
struct AcpiTables {
    GuestAddress rsdp, xsdt, fadt, madt, dsdt;
    std::uint64_t size = 0; // bytes from `rsdp` to the end of the last table
};

struct AcpiImage {
    std::vector<std::byte> bytes; // to be copied to AcpiTables::rsdp
    AcpiTables tables;
};

// Lays the tables out for guest address `base` (16-byte aligned, tables below 4 GiB). Pure.
// Errors: base unaligned or too high, vcpus 0 or above kMaxVcpus, s5_sleep_type above 7, a serial IRQ
// above 15.
std::expected<AcpiImage, std::string> build_acpi_tables(GuestAddress base, const AcpiConfig& config);

// build_acpi_tables, checked to fit [base, base + area_size) and RAM, then written to guest memory.
std::expected<AcpiTables, std::string> write_acpi_tables(const GuestMemory& memory, GuestAddress base,
                                                         std::uint64_t area_size, const AcpiConfig& config);

// The byte that makes `bytes` (with that byte in place of a zero) sum to 0 modulo 256.
std::uint8_t checksum_byte(std::span<const std::byte> bytes);

// The DSDT body described above: the \_S5_ package, then the \_SB_ scope with the legacy devices (empty
// when the config has none).
std::vector<std::byte> s5_package_aml(std::uint8_t sleep_type);
std::vector<std::byte> legacy_devices_aml(const AcpiConfig& config);

} // namespace vmmlab::x86::acpi
