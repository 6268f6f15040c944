// The interface every PIO or MMIO device implements, and what handling an access asks the vCPU to do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace vmmlab {

enum class ExitAction {
    Resume, // re-enter the guest
    Stop,   // the VM is done (the guest asked to power off or end with a status)
    Reset,  // the guest asked for a reboot
    Fatal,  // the monitor cannot go on with this VM
};

class Device {
public:
    virtual ~Device() = default;
    virtual std::string_view name() const = 0;
    // `offset` is relative to the base the device was inserted at; data.size() is the access width.
    // A read fills every byte of `data`.
    virtual ExitAction read(std::uint64_t offset, std::span<std::byte> data) = 0;
    virtual ExitAction write(std::uint64_t offset, std::span<const std::byte> data) = 0;
};

} // namespace vmmlab
