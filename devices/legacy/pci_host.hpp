// PCI configuration mechanism #1 (ports 0xCF8-0xCFF) on bus 0, and the pieces a PCI function is built from.
//
// PciHost is a PIO device of 8 ports (insert it at 0xCF8):
//   0xCF8  CONFIG_ADDRESS, 32-bit accesses only: bit 31 enable, 23:16 bus, 15:11 device, 10:8 function,
//          7:2 register. Narrower accesses to 0xCF8-0xCFB read all ones and are ignored on write (Linux's
//          probe writes a byte to 0xCFB, which must not disturb the address).
//   0xCFC-0xCFF  CONFIG_DATA: 1, 2 or 4 bytes at (register | port - 0xCFC), inside one dword.
// Only bus 0, function 0 of each of the 32 device slots exists; anything else (another bus, another
// function, an empty slot, the enable bit clear) reads all ones, so the vendor id 0xFFFF says "absent",
// and writes to it are ignored. Slot 0 holds the host bridge (vendor 0x8086, device 0x0d57, class 06:00:00).
//
// PciConfigSpace is the 256-byte type-0 header plus capabilities, with a write mask per byte: a guest
// write changes only the bits the mask allows (read-only bits ignore writes). A 64-bit memory BAR is two
// dwords whose masks leave out the size bits, which is exactly what BAR sizing needs: after writing all
// ones the BAR reads back ~(size - 1) with its flag bits.
//
// Threads: PciHost serialises config cycles with a mutex (CONFIG_ADDRESS then CONFIG_DATA from one vCPU
// is not atomic against another vCPU anyway; the guest kernel takes its own lock). Functions are called
// with that mutex held and must not call back into the host.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "bus/device.hpp"

namespace vmmlab::devices {

namespace pci {
// Header offsets.
inline constexpr std::uint16_t kVendorId = 0x00;
inline constexpr std::uint16_t kDeviceId = 0x02;
inline constexpr std::uint16_t kCommand = 0x04;
inline constexpr std::uint16_t kStatus = 0x06;
inline constexpr std::uint16_t kRevision = 0x08;
inline constexpr std::uint16_t kClassCode = 0x09; // 3 bytes: programming interface, subclass, class
inline constexpr std::uint16_t kHeaderType = 0x0e;
inline constexpr std::uint16_t kBar0 = 0x10;
inline constexpr std::uint16_t kSubsystemVendorId = 0x2c;
inline constexpr std::uint16_t kSubsystemId = 0x2e;
inline constexpr std::uint16_t kCapabilityPointer = 0x34;
inline constexpr std::uint16_t kInterruptLine = 0x3c;
inline constexpr std::uint16_t kInterruptPin = 0x3d;

inline constexpr std::uint16_t kCommandIo = 0x0001;
inline constexpr std::uint16_t kCommandMemory = 0x0002;
inline constexpr std::uint16_t kCommandBusMaster = 0x0004;
inline constexpr std::uint16_t kCommandIntxDisable = 0x0400;
inline constexpr std::uint16_t kStatusInterrupt = 0x0008;
inline constexpr std::uint16_t kStatusCapabilities = 0x0010;

inline constexpr std::uint32_t kBarMemory64 = 0x4; // memory BAR, 64-bit, not prefetchable
inline constexpr std::uint8_t kCapabilityMsix = 0x11;
inline constexpr std::uint8_t kCapabilityVendor = 0x09;
inline constexpr std::size_t kConfigSize = 256;
} // namespace pci

class PciConfigSpace {
public:
    PciConfigSpace(std::uint16_t vendor, std::uint16_t device, std::uint32_t class_code,
                   std::uint8_t revision);

    // Guest accesses: `offset` + size inside the 256 bytes (otherwise reads are all ones, writes ignored).
    void read(std::uint16_t offset, std::span<std::byte> data) const;
    void write(std::uint16_t offset, std::span<const std::byte> data);

    // Set-up (not masked): raw values and which bits the guest may change.
    void set_u8(std::uint16_t offset, std::uint8_t value);
    void set_u16(std::uint16_t offset, std::uint16_t value);
    void set_u32(std::uint16_t offset, std::uint32_t value);
    void set_write_mask(std::uint16_t offset, std::size_t length, std::uint8_t mask);
    std::uint8_t u8(std::uint16_t offset) const { return bytes_.at(offset); }
    std::uint16_t u16(std::uint16_t offset) const;
    std::uint32_t u32(std::uint16_t offset) const;

    // BAR `index` (0..4) becomes a 64-bit memory BAR of `size` bytes (a power of two, >= 16) at `address`.
    void add_memory_bar64(unsigned index, std::uint64_t size, std::uint64_t address);
    std::uint64_t bar_address(unsigned index) const;
    // Appends a capability (`body` starts with its id; the next pointer at body[1] is filled in) at the
    // next free dword-aligned offset from 0x40, links it into the list and returns its offset.
    std::uint16_t add_capability(std::span<const std::uint8_t> body);

private:
    std::array<std::uint8_t, pci::kConfigSize> bytes_{};
    std::array<std::uint8_t, pci::kConfigSize> write_mask_{};
    std::uint16_t next_capability_ = 0x40;
    std::uint16_t last_capability_ = 0;
};

// One PCI function's configuration space as the host bridge reaches it.
class PciFunction {
public:
    virtual ~PciFunction() = default;
    // `offset` + data.size() lies inside one dword of the 256-byte space; size is 1, 2 or 4.
    virtual void config_read(std::uint16_t offset, std::span<std::byte> data) = 0;
    virtual void config_write(std::uint16_t offset, std::span<const std::byte> data) = 0;
};

class PciHost final : public Device {
public:
    static constexpr std::uint16_t kBasePort = 0xcf8;
    static constexpr std::uint64_t kPortCount = 8;
    static constexpr unsigned kSlots = 32;

    PciHost();

    // Puts `function` at 00:slot.0. Refuses slot 0 (the host bridge), a slot >= 32 or a taken one.
    bool attach(unsigned slot, PciFunction& function);
    // The first free slot from 1, or kSlots when all are taken.
    unsigned free_slot() const;

    std::string_view name() const override { return "pci-host"; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

private:
    class HostBridge final : public PciFunction {
    public:
        HostBridge();
        void config_read(std::uint16_t offset, std::span<std::byte> data) override;
        void config_write(std::uint16_t offset, std::span<const std::byte> data) override;

    private:
        PciConfigSpace space_;
    };

    // The function addressed by CONFIG_ADDRESS and the byte offset for a data-port access, or null.
    PciFunction* target(std::uint64_t port_offset, std::size_t size, std::uint16_t& config_offset) const;

    std::mutex mutex_;
    std::uint32_t address_ = 0;
    HostBridge bridge_;
    std::array<PciFunction*, kSlots> slots_{};
};

} // namespace vmmlab::devices
