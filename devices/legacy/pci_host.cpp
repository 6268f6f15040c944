#include "devices/legacy/pci_host.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

namespace vmmlab::devices {

PciConfigSpace::PciConfigSpace(std::uint16_t vendor, std::uint16_t device, std::uint32_t class_code,
                               std::uint8_t revision) {
    set_u16(pci::kVendorId, vendor);
    set_u16(pci::kDeviceId, device);
    set_u8(pci::kRevision, revision);
    set_u8(pci::kClassCode, static_cast<std::uint8_t>(class_code));
    set_u8(pci::kClassCode + 1, static_cast<std::uint8_t>(class_code >> 8));
    set_u8(pci::kClassCode + 2, static_cast<std::uint8_t>(class_code >> 16));
    // Command: I/O, memory, bus master and INTx disable are the guest's to change.
    set_write_mask(pci::kCommand, 1, 0x07);
    set_write_mask(pci::kCommand + 1, 1, 0x04);
    set_write_mask(pci::kInterruptLine, 1, 0xff);
}

void PciConfigSpace::read(std::uint16_t offset, std::span<std::byte> data) const {
    if (std::size_t{offset} + data.size() > bytes_.size()) {
        std::ranges::fill(data, std::byte{0xff});
        return;
    }
    std::memcpy(data.data(), bytes_.data() + offset, data.size());
}

void PciConfigSpace::write(std::uint16_t offset, std::span<const std::byte> data) {
    if (std::size_t{offset} + data.size() > bytes_.size()) return;
    for (std::size_t i = 0; i < data.size(); ++i) {
        const std::uint8_t mask = write_mask_[offset + i];
        auto& byte = bytes_[offset + i];
        byte = static_cast<std::uint8_t>((byte & ~mask) | (std::to_integer<std::uint8_t>(data[i]) & mask));
    }
}

void PciConfigSpace::set_u8(std::uint16_t offset, std::uint8_t value) {
    bytes_.at(offset) = value;
}
void PciConfigSpace::set_u16(std::uint16_t offset, std::uint16_t value) {
    set_u8(offset, static_cast<std::uint8_t>(value));
    set_u8(offset + 1, static_cast<std::uint8_t>(value >> 8));
}
void PciConfigSpace::set_u32(std::uint16_t offset, std::uint32_t value) {
    set_u16(offset, static_cast<std::uint16_t>(value));
    set_u16(offset + 2, static_cast<std::uint16_t>(value >> 16));
}
void PciConfigSpace::set_write_mask(std::uint16_t offset, std::size_t length, std::uint8_t mask) {
    if (std::size_t{offset} + length > write_mask_.size()) throw std::out_of_range("PCI write mask");
    std::fill_n(write_mask_.begin() + offset, length, mask);
}
std::uint16_t PciConfigSpace::u16(std::uint16_t offset) const {
    return static_cast<std::uint16_t>(bytes_.at(offset) | bytes_.at(offset + 1) << 8);
}
std::uint32_t PciConfigSpace::u32(std::uint16_t offset) const {
    return std::uint32_t{u16(offset)} | std::uint32_t{u16(offset + 2)} << 16;
}

void PciConfigSpace::add_memory_bar64(unsigned index, std::uint64_t size, std::uint64_t address) {
    if (index > 4 || size < 16 || !std::has_single_bit(size) || address % size != 0)
        throw std::invalid_argument("PCI BAR: bad index, size or alignment");
    const auto offset = static_cast<std::uint16_t>(pci::kBar0 + 4 * index);
    set_u32(offset, static_cast<std::uint32_t>(address) | pci::kBarMemory64);
    set_u32(offset + 4, static_cast<std::uint32_t>(address >> 32));
    const std::uint64_t mask = ~(size - 1) & ~std::uint64_t{0xf};
    for (unsigned i = 0; i < 8; ++i)
        set_write_mask(static_cast<std::uint16_t>(offset + i), 1, static_cast<std::uint8_t>(mask >> (8 * i)));
}

std::uint64_t PciConfigSpace::bar_address(unsigned index) const {
    const auto offset = static_cast<std::uint16_t>(pci::kBar0 + 4 * index);
    return (std::uint64_t{u32(offset)} & ~std::uint64_t{0xf}) | std::uint64_t{u32(offset + 4)} << 32;
}

std::uint16_t PciConfigSpace::add_capability(std::span<const std::uint8_t> body) {
    const std::uint16_t at = next_capability_;
    if (body.size() < 2 || at + body.size() > bytes_.size())
        throw std::length_error("PCI capability does not fit");
    std::memcpy(bytes_.data() + at, body.data(), body.size());
    bytes_[at + 1] = 0;
    if (last_capability_ == 0) {
        set_u8(pci::kCapabilityPointer, static_cast<std::uint8_t>(at));
        set_u16(pci::kStatus, static_cast<std::uint16_t>(u16(pci::kStatus) | pci::kStatusCapabilities));
    } else {
        bytes_[last_capability_ + 1] = static_cast<std::uint8_t>(at);
    }
    last_capability_ = at;
    next_capability_ = static_cast<std::uint16_t>((at + body.size() + 3) & ~std::size_t{3});
    return at;
}

PciHost::HostBridge::HostBridge() : space_(0x8086, 0x0d57, 0x060000, 0) {
}

void PciHost::HostBridge::config_read(std::uint16_t offset, std::span<std::byte> data) {
    space_.read(offset, data);
}

void PciHost::HostBridge::config_write(std::uint16_t offset, std::span<const std::byte> data) {
    space_.write(offset, data);
}

PciHost::PciHost() {
    slots_[0] = &bridge_;
}

bool PciHost::attach(unsigned slot, PciFunction& function) {
    std::lock_guard lock(mutex_);
    if (slot == 0 || slot >= kSlots || slots_[slot] != nullptr) return false;
    slots_[slot] = &function;
    return true;
}

unsigned PciHost::free_slot() const {
    for (unsigned slot = 1; slot < kSlots; ++slot)
        if (slots_[slot] == nullptr) return slot;
    return kSlots;
}

PciFunction* PciHost::target(std::uint64_t port_offset, std::size_t size,
                             std::uint16_t& config_offset) const {
    if (port_offset < 4 || port_offset + size > 8) return nullptr;
    if (!(address_ & 0x80000000u)) return nullptr;
    const unsigned bus = (address_ >> 16) & 0xff;
    const unsigned slot = (address_ >> 11) & 0x1f;
    const unsigned function = (address_ >> 8) & 0x7;
    if (bus != 0 || function != 0) return nullptr;
    config_offset = static_cast<std::uint16_t>((address_ & 0xfc) + (port_offset - 4));
    return slots_[slot];
}

ExitAction PciHost::read(std::uint64_t offset, std::span<std::byte> data) {
    std::ranges::fill(data, std::byte{0xff});
    std::lock_guard lock(mutex_);
    if (offset == 0 && data.size() == 4) {
        std::memcpy(data.data(), &address_, 4);
        return ExitAction::Resume;
    }
    std::uint16_t config_offset = 0;
    if (PciFunction* function = target(offset, data.size(), config_offset))
        function->config_read(config_offset, data);
    return ExitAction::Resume;
}

ExitAction PciHost::write(std::uint64_t offset, std::span<const std::byte> data) {
    std::lock_guard lock(mutex_);
    if (offset == 0 && data.size() == 4) {
        std::uint32_t value;
        std::memcpy(&value, data.data(), 4);
        address_ = value & 0x80fffffcu; // reserved bits 30:24 and 1:0 read as 0
        return ExitAction::Resume;
    }
    std::uint16_t config_offset = 0;
    if (PciFunction* function = target(offset, data.size(), config_offset))
        function->config_write(config_offset, data);
    return ExitAction::Resume;
}

} // namespace vmmlab::devices
