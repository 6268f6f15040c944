#include "devices/legacy/pci_host_bridge.hpp"

#include <algorithm>
#include <cstring>

namespace vmmlab::devices {

namespace {
constexpr std::uint32_t kAddressMask = 0x80ff'fffc; // enable, bus, device, function, register
constexpr std::uint32_t kBusDeviceFunctionMask = 0x00ff'ff00;
constexpr std::uint64_t kDataOffset = PciHostBridge::kConfigDataPort - PciHostBridge::kConfigAddressPort;
constexpr std::size_t kCommand = 0x04;

void put16(std::array<std::uint8_t, 256>& config, std::size_t offset, std::uint16_t value) {
    config[offset] = static_cast<std::uint8_t>(value);
    config[offset + 1] = static_cast<std::uint8_t>(value >> 8);
}
} // namespace

PciHostBridge::PciHostBridge() {
    put16(config_, 0x00, kVendorId);
    put16(config_, 0x02, kDeviceId);
    config_[0x08] = 0x00;            // revision
    config_[0x09] = 0x00;            // programming interface
    config_[0x0a] = 0x00;            // subclass: host bridge
    config_[0x0b] = 0x06;            // class: bridge
    config_[0x0e] = 0x00;            // header type 0, single function
    put16(config_, 0x2c, kVendorId); // subsystem vendor
    put16(config_, 0x2e, 0x1100);    // subsystem: as QEMU's machines report it
}

std::uint32_t PciHostBridge::config_address() const {
    std::lock_guard lock(mutex_);
    return address_;
}

bool PciHostBridge::selects_host_bridge() const {
    return (address_ & kEnable) != 0 && (address_ & kBusDeviceFunctionMask) == 0;
}

ExitAction PciHostBridge::read(std::uint64_t offset, std::span<std::byte> data) {
    std::ranges::fill(data, std::byte{0xff});
    std::lock_guard lock(mutex_);
    if (offset == 0 && data.size() == 4) {
        std::memcpy(data.data(), &address_, sizeof address_);
    } else if (offset >= kDataOffset && offset + data.size() <= kPortCount && selects_host_bridge()) {
        const std::size_t base = (address_ & 0xfc) + (offset - kDataOffset);
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = std::byte{config_[base + i]};
    }
    return ExitAction::Resume;
}

ExitAction PciHostBridge::write(std::uint64_t offset, std::span<const std::byte> data) {
    std::lock_guard lock(mutex_);
    if (offset == 0 && data.size() == 4) {
        std::uint32_t value = 0;
        std::memcpy(&value, data.data(), sizeof value);
        address_ = value & kAddressMask;
    } else if (offset >= kDataOffset && offset + data.size() <= kPortCount && selects_host_bridge()) {
        const std::size_t base = (address_ & 0xfc) + (offset - kDataOffset);
        for (std::size_t i = 0; i < data.size(); ++i) {
            const std::size_t at = base + i;
            if (at != kCommand && at != kCommand + 1) continue; // read-only everywhere else
            const auto mask = static_cast<std::uint8_t>(kCommandWritable >> (8 * (at - kCommand)));
            config_[at] = static_cast<std::uint8_t>((config_[at] & ~mask) |
                                                    (std::to_integer<std::uint8_t>(data[i]) & mask));
        }
    }
    return ExitAction::Resume;
}

} // namespace vmmlab::devices
