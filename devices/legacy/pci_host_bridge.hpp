// PCI configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2) with bus 0 holding one function: the host
// bridge at 00:00.0. Every other bus, device and function reads all ones, which is how PCI says "nothing
// here". Linux finds the mechanism, checks that bus 0 has a host bridge (its sanity check for machines
// without DMI) and scans an otherwise empty bus: no "No config space access function found" error, and no
// `pci=off` on the command line.
//
// Insert it into the PIO bus at kConfigAddressPort (0xcf8) with size kPortCount (8):
//   0xcf8  CONFIG_ADDRESS, 32-bit accesses only: bit 31 enable, 23:16 bus, 15:11 device, 10:8 function,
//          7:2 register; reads back what was written (bits 30:24 and 1:0 read 0). Narrower accesses to
//          0xcf8-0xcfb are not configuration cycles: reads return all ones, writes are dropped (so the
//          bridge does not look like mechanism #2 to a probing guest).
//   0xcfc  CONFIG_DATA, 0xcfc-0xcff: 1, 2 or 4 bytes at (register & 0xfc) + (port - 0xcfc) of the function
//          CONFIG_ADDRESS selects; all ones while the enable bit is clear or for an absent function.
//
// The host bridge's configuration header (type 0): vendor 0x1b36, device 0x0008 (the IDs of QEMU's generic
// "PCIe host bridge": Linux has no driver or quirk for them), class 06/00/00 (host bridge), single function,
// no BARs, no capabilities, no interrupt. Writable: the command register's I/O, memory, bus master, parity
// and SERR enables; every other write is dropped. Thread-safe: CONFIG_ADDRESS is shared by every vCPU, as on
// the chipset (guests serialise address/data pairs themselves, Linux with pci_config_lock).
#pragma once

#include <array>
#include <cstdint>
#include <mutex>

#include "bus/device.hpp"

namespace vmmlab::devices {

class PciHostBridge final : public Device {
public:
    static constexpr std::uint16_t kConfigAddressPort = 0xcf8;
    static constexpr std::uint16_t kConfigDataPort = 0xcfc;
    static constexpr std::uint64_t kPortCount = 8;
    static constexpr std::uint32_t kEnable = 1U << 31;
    static constexpr std::uint16_t kVendorId = 0x1b36;
    static constexpr std::uint16_t kDeviceId = 0x0008;
    static constexpr std::uint16_t kCommandWritable = 0x0147; // I/O, memory, bus master, parity, SERR

    PciHostBridge();

    std::string_view name() const override { return "pci-host-bridge"; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    std::uint32_t config_address() const;

private:
    // Whether CONFIG_ADDRESS is enabled and selects bus 0, device 0, function 0. Called with mutex_ held.
    bool selects_host_bridge() const;

    mutable std::mutex mutex_;
    std::uint32_t address_ = 0;
    std::array<std::uint8_t, 256> config_{};
};

} // namespace vmmlab::devices
